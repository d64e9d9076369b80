"""jobs.train_facenet on a real local Ray: a 2-worker run that learns, survival of a killed
worker (the fault drill flag).  Real faces (glint_subset); CPU only.  A lost node and a killed
driver (resume by rerunning the same command) are tested on a multi-node Ray in
tests/test_multinode.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def glint(data_dir):
    root = data_dir / "glint_subset" / "datasets" / "celebrity_images"
    if not root.is_dir():
        pytest.skip(f"glint_subset not found at {root}")
    return root


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return ["--smoke-test", "--output", str(tmp), "--name", name, "--num-cpus", "2", *extra]


def test_two_workers_learn(ray_session, glint, tmp_path):
    from facenet.model import load_checkpoint
    from jobs import train_facenet

    out = train_facenet.main(_args(tmp_path, "learn"))
    hist = _history(tmp_path / "learn")
    assert [h["kind"] for h in hist] == ["start", "epoch", "epoch", "epoch"]
    start, first, end = hist[0], hist[1], hist[-1]
    assert end["epoch"] == 3
    # 15 steps from scratch move the loss (and the held-out figures) by noise only (see
    # docs/training.md): check that training ran and changed the network, and that the
    # held-out figures were measured before and after
    import math
    assert all(math.isfinite(h["train_loss"]) and h["train_steps"] == 5 for h in hist[1:]), hist
    assert first["train_n_triplets"] > 0
    for h in (start, end):
        assert 0.0 <= h["val_accuracy"] <= 1.0 and 0.0 <= h["val_N95_auc"] <= 1.0
    model = load_checkpoint(out["model"])
    assert model.arch == "mobilefacenet" and model.input_size == 112
    import torch

    from facenet.model import build_model
    torch.manual_seed(0)  # the job's initialisation (seed 0)
    fresh = build_model("mobilefacenet")
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, fresh.state_dict()[k])]
    assert moved, "training did not change the network"


def test_killed_worker_restarts_from_checkpoint_on_s3(ray_session, glint, s3_bucket, s3_env):
    """Checkpoints, metrics and the exported model on the S3 server; a worker killed at
    step 4 restarts the group from a registered checkpoint (one every step: a checkpoint
    reported just before the kill may not be registered yet) and training ends at epoch 2."""
    from facenet.model import load_checkpoint
    from jobs import storage, train_facenet

    out = train_facenet.main(["--smoke-test", "--output", s3_bucket, "--name", "fault", "--epochs", "2",
                              "--checkpoint-every", "1", "--kill-worker-at-step", "4", "--max-failures", "1"])
    run_dir = storage.join_uri(s3_bucket, "fault")
    assert storage.exists(storage.join_uri(run_dir, "_fault_injected"))
    text = storage.read_bytes(storage.join_uri(run_dir, "metrics.jsonl")).decode()
    hist = [json.loads(line) for line in text.splitlines()]
    assert [h["epoch"] for h in hist if h["kind"] == "epoch"] == [1, 2], hist
    assert any(h["kind"] == "resume" for h in hist), hist
    assert out["metrics"]["epoch"] == 2 and out["model"].startswith("s3://")
    assert load_checkpoint(out["model"]).arch == "mobilefacenet"
