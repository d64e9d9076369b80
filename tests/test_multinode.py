"""The jobs on a real multi-node Ray (a head and worker nodes, each its own ``ray start``)
with faults injected: a worker node's raylet killed by PID mid-run (a lost machine), a job
driver killed (a crashed client).  Every input and output is on the S3 server, so no node's
local disk is assumed shared.  What each test checks is that nothing is lost and nothing is
duplicated: every input x variant exactly once, the right epoch count, embeddings reused.

The cluster (``ray_cluster`` in conftest): head with 0 CPUs (drivers attach there, as on our
cloud clusters), worker nodes ``w1``/``w2`` with 2 CPUs each; a lost node is replaced by a
fresh one the way an autoscaler would (``ensure_workers``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from raycluster import RayCluster, kill_driver, start_driver

from masktheface import dataset_schema as S

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
WORKER_CPUS = 2


# ---------------------------------------------------------------------------------- helpers

def ensure_workers(cluster: RayCluster, n: int = 2) -> list[str]:
    """Live worker nodes, topped up to ``n`` with fresh ones (the autoscaler's job)."""
    alive = [name for name, node in cluster.nodes.items() if not node.head and not node.killed]
    i = len(cluster.nodes)
    while len(alive) < n:
        name = f"w{i}"
        i += 1
        cluster.add_node(name, WORKER_CPUS)
        alive.append(name)
    return alive


def wait_for(ok: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log_path: Path | None = None, state: Callable[[], object] = lambda: "") -> None:
    """Poll ``ok`` until true; fail when the driver exits first or on timeout, with the
    driver's log and ``state()`` (what the cluster looked like) in the message."""
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}; {state()}\n"
                                 f"{_text(log_path)[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; {state()}\n{_text(log_path)[-4000:]}")
        time.sleep(0.5)


def _text(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except OSError:
        return ""


def finish(proc: subprocess.Popen, log_path: Path, timeout: float) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_driver(proc)
        raise AssertionError(f"the driver did not finish in {timeout:.0f} s:\n{_text(log_path)[-4000:]}") from None
    if proc.stdout:
        proc.stdout.close()
    return rc, _text(log_path)


def run_job(cluster: RayCluster, args: list[str], env: dict[str, str], log_path: Path,
            timeout: float) -> tuple[int, str]:
    return finish(start_driver([sys.executable, "-m", *args], env, log_path, cwd=ROOT), log_path, timeout)


def nodes_running(cluster: RayCluster, actor_class: str) -> set[str]:
    return {a["node"] for a in cluster.actors(actor_class) if a.get("state") == "ALIVE" and a.get("node")}


def upload(fs: pafs.FileSystem, bucket_uri: str, prefix: str, files: dict[str, Path]) -> None:
    bucket = bucket_uri.removeprefix("s3://")
    for key, path in files.items():
        with fs.open_output_stream(f"{bucket}/{prefix}/{key}") as f:
            f.write(path.read_bytes())


def lfw_files(lfw_images_dir: Path, people: int, per_person: int) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for person in sorted(p for p in lfw_images_dir.iterdir() if p.is_dir()):
        imgs = sorted(person.iterdir())
        if len(imgs) >= per_person:
            out.update({f"{person.name}/{f.name}": f for f in imgs[:per_person]})
            people -= 1
            if not people:
                break
    return out


def progress(log_text: str) -> int:
    """Images done, from the driver's last ``N/M images`` progress line."""
    found = re.findall(r"(\d+)/\d+ images", log_text)
    return int(found[-1]) if found else 0


# ---------------------------------------------------------------------------------- mask_dataset

def test_mask_dataset_survives_a_lost_node(ray_cluster, s3_server, s3_bucket, lfw_images_dir, tmp_path):
    """Masking runs on the worker nodes; the raylet of one that is masking is killed mid-run
    and a replacement joins.  The job (or, if it failed, its rerun into the same output) ends with
    every input x variant exactly once on S3, and the summary shows work on every node."""
    cluster = ray_cluster
    ensure_workers(cluster)
    files = lfw_files(lfw_images_dir, people=28, per_person=2)
    upload(s3_server.filesystem(), s3_bucket, "in", files)
    out = f"{s3_bucket}/masked"
    args = ["jobs.mask_dataset", "--input", f"{s3_bucket}/in", "--output", out, "--recipe", "custom",
            "--variants", "original,N95", "--batch-size", "2", "--rows-per-file", "8",
            "--progress-every-s", "1", "--no-progress-bars"]
    env = cluster.driver_env(s3_server.env())
    log_path = tmp_path / "mask-1.log"
    proc = start_driver([sys.executable, "-m", *args, "--run-id", "first"], env, log_path, cwd=ROOT)
    # kill a node that is masking right now, once some work is done (under load, one
    # node's actors may start well after the other's: any node with live actors will do)
    wait_for(lambda: nodes_running(cluster, "MapWorker") and progress(_text(log_path)) >= 8,
             240, "masking actors at work and 8 images done", proc, log_path,
             lambda: [(a["class_name"], a["node"], a["state"]) for a in cluster.actors()])
    victim = sorted(nodes_running(cluster, "MapWorker"))[-1]
    done_before = progress(_text(log_path))
    cluster.kill_raylet(victim)
    ensure_workers(cluster)
    rc, text = finish(proc, log_path, 600)
    runs = 1
    if rc != 0:  # the job may give up on a lost node; the rerun must complete it
        rc, text2 = run_job(cluster, args + ["--run-id", "second"], env, tmp_path / "mask-2.log", 600)
        text += text2
        runs = 2
    assert rc == 0, text[-4000:]
    assert done_before < len(files), "the node was lost after the work was done: no fault was tested"

    fs, root = s3_server.filesystem(), out.removeprefix("s3://")
    table = pa.concat_tables([pq.read_table(f, filesystem=fs).select([S.KEY, S.VARIANT, S.STATUS])
                              for f in S.data_files(fs, root)])
    pairs = list(zip(table.column(S.KEY).to_pylist(), table.column(S.VARIANT).to_pylist()))
    assert len(pairs) == len(set(pairs)) == 2 * len(files)  # exactly once
    assert set(pairs) == {(k, v) for k in files for v in ("original", "N95")}
    summary = json.loads(fs.open_input_stream(f"{root}/_runs/first.json").read())
    worked = {cluster.node_name(n) for n, k in summary["images_by_node"].items() if k}
    assert victim in worked and len(worked - {None}) >= 2, summary["images_by_node"]  # work on every node
    last = json.loads(fs.open_input_stream(f"{root}/_summary.json").read())
    assert last["missing"] == 0 and last["duplicates"] == 0
    print(f"mask_dataset: {len(files)} images x 2 variants; {victim} lost after {done_before} images; "
          f"runs {runs}; images by node {summary['images_by_node']}")


# ---------------------------------------------------------------------------------- train_facenet

#: Ray Train's record of the checkpoints it registered: what a restarted run resumes from
SNAPSHOT = "checkpoint_manager_snapshot.json"


def registered_step(fs: pafs.FileSystem, run_root: str) -> int:
    """The training step of the newest checkpoint Ray Train has registered (0: none yet).
    A checkpoint folder can exist before it is registered; only registered ones count."""
    try:
        snap = json.loads(fs.open_input_stream(f"{run_root}/{SNAPSHOT}").read())
    except (OSError, ValueError):
        return 0
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("step", 0))


def test_train_survives_a_lost_node_and_a_killed_driver(ray_cluster, s3_server, s3_bucket, glint_dir, tmp_path):
    """Two Ray Train workers spread over two nodes, checkpoints on S3.  A worker node is lost
    mid-epoch: training restarts from the last checkpoint (FailureConfig) on what is left.
    Then the driver is killed: the same command again resumes from the last checkpoint.
    The run ends with the right epoch and step counts, and its history shows both."""
    cluster = ray_cluster
    ensure_workers(cluster)
    epochs, steps = 2, 4
    args = ["jobs.train_facenet", "--smoke-test", "--output", f"{s3_bucket}/train", "--name", "mn",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--checkpoint-every", "1",
            "--placement-strategy", "SPREAD", "--max-failures", "2", "--val-pairs", "40"]
    env = cluster.driver_env(s3_server.env())
    fs = s3_server.filesystem()
    run_root = f"{s3_bucket.removeprefix('s3://')}/train/mn"

    log1 = tmp_path / "train-1.log"
    t0 = time.monotonic()
    marks = {}
    proc = start_driver([sys.executable, "-m", *args], env, log1, cwd=ROOT)
    workers = [n for n in cluster.nodes if not cluster.nodes[n].head and not cluster.nodes[n].killed]
    wait_for(lambda: nodes_running(cluster, "RayTrainWorker") >= set(workers) and registered_step(fs, run_root),
             300, "train workers on both nodes and a first checkpoint", proc, log1,
             lambda: [(a["class_name"], a["node"], a["state"]) for a in cluster.actors()])
    victim = sorted(nodes_running(cluster, "RayTrainWorker"))[-1]
    marks["first checkpoint"] = time.monotonic() - t0
    cluster.kill_raylet(victim)
    at_loss = registered_step(fs, run_root)
    ensure_workers(cluster)
    marks["node replaced"] = time.monotonic() - t0
    # the restarted group registers a newer checkpoint; then the driver dies (a crashed client)
    wait_for(lambda: registered_step(fs, run_root) > at_loss, 300, "a checkpoint after the restart", proc, log1)
    assert proc.poll() is None, "the driver finished before it could be killed: no fault was tested"
    kill_driver(proc)
    marks["driver killed"] = time.monotonic() - t0
    at_kill = registered_step(fs, run_root)
    assert at_kill < epochs * steps, "the driver was killed after training ended: no fault was tested"
    wait_for(lambda: not nodes_running(cluster, "RayTrainWorker"), 120, "the killed driver's workers to go")

    marks["workers gone"] = time.monotonic() - t0
    rc, text2 = run_job(cluster, args, env, tmp_path / "train-2.log", 600)
    marks["rerun done"] = time.monotonic() - t0
    assert rc == 0, text2[-4000:]
    history = [json.loads(line) for line in fs.open_input_stream(f"{run_root}/metrics.jsonl").read().splitlines()]
    resumes = [h["step"] for h in history if h.get("kind") == "resume"]
    epochs_done = [h["epoch"] for h in history if h.get("kind") == "epoch"]
    # one resume after the lost node, one after the killed driver, each from the newest
    # registered checkpoint, never from zero
    assert len(resumes) == 2 and resumes[0] >= at_loss > 0 and resumes[1] == at_kill > resumes[0], \
        (resumes, at_loss, at_kill)
    assert epochs_done == list(range(1, epochs + 1)), epochs_done
    assert history[-1]["step"] == epochs * steps
    summary = json.loads(fs.open_input_stream(f"{run_root}/_summary.json").read())
    assert summary["metrics"]["epoch"] == epochs and summary["metrics"]["step"] == epochs * steps
    assert fs.get_file_info(f"{run_root}/model.pt").type == pafs.FileType.File
    print(f"train: {victim} lost at step {at_loss}, driver killed at step {at_kill}; resumed at {resumes}; "
          f"epochs {epochs_done}; seconds {({k: round(v) for k, v in marks.items()})}")


# ---------------------------------------------------------------------------------- evaluate

def _pairs_file(files: list[str]) -> str:
    """LFW pairs.txt layout: 1 fold of matched (same person) and mismatched pairs."""
    by_person: dict[str, list[str]] = {}
    for k in files:
        by_person.setdefault(k.split("/")[0], []).append(k)
    people = sorted(by_person)
    same = [(p, 1, 2) for p in people]
    diff = [(a, 1, b, 1) for a, b in zip(people, people[1:] + people[:1])]
    n = min(len(same), len(diff))
    lines = [f"1\t{n}"] + ["\t".join(map(str, s)) for s in same[:n]] + ["\t".join(map(str, d)) for d in diff[:n]]
    return "\n".join(lines) + "\n"


def test_evaluate_reuses_embeddings_after_a_lost_node_and_a_killed_driver(ray_cluster, s3_server, s3_bucket,
                                                                        lfw_images_dir, tmp_path):
    """Embedding on the worker nodes; one that is embedding is lost mid-run (actors restart on the
    replacement); the driver is then killed.  The rerun embeds only what the killed run had
    not saved (the cache is written while embedding) and every pair is scored."""
    cluster = ray_cluster
    ensure_workers(cluster)
    files = lfw_files(lfw_images_dir, people=24, per_person=2)
    upload(s3_server.filesystem(), s3_bucket, "lfw", files)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(_pairs_file(list(files)))
    args = ["jobs.evaluate", "--pairs", str(pairs), "--images", f"{s3_bucket}/lfw", "--output",
            f"{s3_bucket}/eval", "--variants", "original,N95", "--batch-size", "2", "--save-every-s", "2"]
    env = cluster.driver_env(s3_server.env())
    fs = s3_server.filesystem()
    cache = f"{s3_bucket.removeprefix('s3://')}/eval/embeddings.npz"
    log1 = tmp_path / "eval-1.log"
    proc = start_driver([sys.executable, "-m", *args], env, log1, cwd=ROOT)

    def saved() -> int:
        found = re.findall(r"saved (\d+) embeddings so far", _text(log1))
        return int(found[-1]) if found else 0

    wait_for(lambda: nodes_running(cluster, "MapWorker") and saved() > 0, 300,
             "embedding actors at work and a first save", proc, log1)
    cluster.kill_raylet(sorted(nodes_running(cluster, "MapWorker"))[-1])
    ensure_workers(cluster)
    at_kill = saved()
    wait_for(lambda: saved() > at_kill, 300, "embeddings saved after the lost node", proc, log1)
    assert proc.poll() is None, "the driver finished before it could be killed: no fault was tested"
    kill_driver(proc)
    done_before = saved()
    assert fs.get_file_info(cache).type == pafs.FileType.File
    total = 2 * len(files)
    assert done_before < total, "the driver was killed after everything was embedded: no fault was tested"

    rc, text = run_job(cluster, args, env, tmp_path / "eval-2.log", 600)
    assert rc == 0, text[-4000:]
    m = re.search(r"reusing \S+: (\d+) of (\d+) images already embedded", text)
    assert m, text[-3000:]
    reused_images = int(m.group(1))
    assert reused_images >= 1
    metrics = json.loads(fs.open_input_stream(f"{s3_bucket.removeprefix('s3://')}/eval/metrics.json").read())
    assert metrics  # scored
    print(f"evaluate: {len(files)} images x 2 variants; {done_before} embeddings saved before the driver was "
          f"killed; the rerun reused {reused_images} images")
    shutil.rmtree(tmp_path, ignore_errors=True)
