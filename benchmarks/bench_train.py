"""Training throughput: a plain torch loop against the Ray Train job with 1 and 2 workers.

    python benchmarks/bench_train.py --model mobilefacenet --steps 12 --repeats 2

Same model, same P×K global batch, same data (glint_subset, loaded once per run), same
per-step work (:func:`facenet.train.run_epoch`: load + crop + augment, forward, triplet
loss, backward, step):

* ``plain``: one process, no Ray, torch with 2 threads;
* ``ray-N``: :func:`jobs.train_facenet.run` with N workers on a private local Ray
  (2 CPUs; each worker reserves 2/N of them, and Ray gives it as many torch threads, so
  every configuration uses both cores): samples/s is the job's own ``train_samples_per_s_global`` of the last epoch,
  so start-up (Ray, workers, the process group) is *excluded*; it is reported apart.

Each configuration repeats ``--repeats`` times interleaved; medians are printed with the
ratio to ``plain`` measured in the same run.  On 2 shared cores, ``ray-2`` competes with
Ray's own daemons for the cores: the figure that carries to a cluster is ``ray-1`` /
``plain`` (the per-worker overhead of Ray Train).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402


def _glint() -> Path:
    g = shared_data("glint_subset", "datasets", "celebrity_images")
    if g is None:
        sys.exit(f"glint_subset not found; {DATA_HINT}")
    return g


def plain(args, records) -> float:
    """samples/s of the library loop in this process."""
    import torch

    from facenet import data as fdata
    from facenet.sampler import PKSampler
    from facenet.train import TrainConfig, build_for_training, make_optimizer, run_epoch

    torch.set_num_threads(2)
    cfg = TrainConfig(model=args.model, pretrained=False, P=args.P, K=args.K, optimizer="adam", lr=1e-3,
                      mining="batch_hard", steps_per_epoch=args.steps)
    net = build_for_training(cfg)
    opt = make_optimizer(net.parameters(), cfg)
    loader = fdata.SampleLoader(records, fdata.alignment_for(args.model), net.input_size, seed=0)
    plan = PKSampler(records.labels, cfg.P, cfg.K, seed=0, steps_per_epoch=args.steps).batches(0)
    run_epoch(net, opt, loader, plan[:1], records.labels, cfg, 0, step0=0, total_steps=args.steps)  # warm-up
    res = run_epoch(net, opt, loader, plan, records.labels, cfg, 0, step0=0, total_steps=args.steps)
    return res["samples_per_s"]


def ray_job(args, workers: int) -> tuple[float, float]:
    """(samples/s of the last epoch, wall seconds of the whole job)."""
    from jobs import train_facenet

    t0 = time.perf_counter()
    storage = tempfile.mkdtemp(prefix="bench-train-")
    out = train_facenet.main(["--folders", str(_glint()), "--model", args.model, "--no-pretrained",
                              "--epochs", "2", "--steps-per-epoch", str(args.steps), "--P", str(args.P),
                              "--K", str(args.K), "--optimizer", "adam", "--lr", "0.001", "--mining", "batch_hard",
                              "--num-workers", str(workers), "--cpus-per-worker", str(2 // workers),
                              "--output", storage, "--name", f"w{workers}",
                              "--val-holdout", "0", "--max-per-identity", "12", "--num-cpus", "2",
                              "--log-level", "WARNING"])
    return float(out["metrics"]["samples_per_s_global"]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--steps", type=int, default=12, help="steps per measured epoch")
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from facenet import data as fdata
    records = fdata.records_from_folder(str(_glint()), max_per_identity=12, prealigned=True)
    rates: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    walls: dict[str, list[float]] = {"ray-1": [], "ray-2": []}
    for _ in range(args.repeats):
        rates["plain"].append(plain(args, records))
        for w in (1, 2):
            r, wall = ray_job(args, w)
            rates[f"ray-{w}"].append(r)
            walls[f"ray-{w}"].append(wall)
    base = statistics.median(rates["plain"])
    print(f"\n{args.model}, global batch {args.P}x{args.K}, {args.steps} steps/epoch, medians of {args.repeats}")
    print(f"{'config':8} {'samples/s':>10} {'x plain':>8} {'job wall s':>11}")
    for k, v in rates.items():
        m = statistics.median(v)
        wall = f"{statistics.median(walls[k]):11.1f}" if k in walls else " " * 11
        print(f"{k:8} {m:10.2f} {m / base:8.2f} {wall}")


if __name__ == "__main__":
    main()
