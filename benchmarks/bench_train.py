"""Training throughput: the plain torch loop with a serial / prefetching / threaded loader,
and the plain loop against the Ray Train job with 1 and 2 workers.

    python benchmarks/bench_train.py --model mobilefacenet --steps 12 --repeats 2
    python benchmarks/bench_train.py --steps 8 --repeats 2 --parts loader     # no Ray

Same model, same P×K global batch, same data (glint_subset, loaded once per run), same
per-step work (:func:`facenet.train.run_epoch`: load + crop + augment, forward, triplet
loss, backward, step):

``loader`` part - one process, no Ray, torch with ``--torch-threads`` (2), the loader varied:

* ``serial``: ``prefetch=0``, ``threads=0`` (each batch loaded sample by sample, then its step);
* ``prefetch``: the next batch loads in a background thread while the step runs;
* ``prefetch+2thr``: that, with the batch's samples loaded by 2 threads (the job's default);
* ``masked ...``: the same three with online masks (``mask_prob`` 0.5), where loading costs most.

Each prints training samples/s and its ratio to the serial configuration with the same
masks, and ``load only``: samples/s of ``SampleLoader.batch`` over the same plan without
training (what the loader alone delivers; with prefetch a worker's rate tends to
min(loader, step) instead of 1/(1/loader + 1/step)).

``ray`` part - ``plain`` (the loop with the job's loader defaults) against ``ray-N``:
:func:`jobs.train_facenet.run` with N workers on a private local Ray
(2 CPUs; each worker reserves 2/N of them, and Ray gives it as many torch threads, so
every configuration uses both cores): samples/s is the job's own ``train_samples_per_s_global`` of the last epoch,
so start-up (Ray, workers, the process group) is *excluded*; it is reported apart.

Each configuration repeats ``--repeats`` times interleaved; medians are printed with the
ratio to the baseline measured in the same run.  On 2 shared cores, ``ray-2`` competes with
Ray's own daemons for the cores: the figure that carries to a cluster is ``ray-1`` /
``plain`` (the per-worker overhead of Ray Train).  ``daemon CPU`` says how much of the CPU
the job's Ray processes used went to Ray's own daemons (GCS, raylet, dashboard and its
agents) rather than to the workers, over the whole job (start-up included).
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


#: the loader configurations of the ``loader`` part: (name, mask_prob, threads, prefetch)
LOADER_CONFIGS = (("serial", 0.0, 0, 0), ("prefetch", 0.0, 0, 1), ("prefetch+2thr", 0.0, 2, 1),
                  ("masked serial", 0.5, 0, 0), ("masked prefetch", 0.5, 0, 1), ("masked prefetch+2thr", 0.5, 2, 1))


def plain(args, records, mask_prob: float = 0.0, threads: int | None = None,
          prefetch: int | None = None) -> tuple[float, float]:
    """(training samples/s, load-only samples/s) of the library loop in this process;
    ``threads``/``prefetch`` None: the job's defaults (``--loader-threads``, ``--prefetch``)."""
    import torch

    from facenet import data as fdata
    from facenet.sampler import PKSampler
    from facenet.train import TrainConfig, build_for_training, make_optimizer, run_epoch
    from jobs.train_facenet import TrainJobConfig

    threads = TrainJobConfig.loader_threads if threads is None else threads
    prefetch = TrainJobConfig.prefetch if prefetch is None else prefetch
    torch.set_num_threads(args.torch_threads)
    cfg = TrainConfig(model=args.model, pretrained=False, P=args.P, K=args.K, optimizer="adam", lr=1e-3,
                      mining="batch_hard", steps_per_epoch=args.steps)
    net = build_for_training(cfg)
    opt = make_optimizer(net.parameters(), cfg)
    loader = fdata.SampleLoader(records, fdata.alignment_for(args.model), net.input_size,
                                fdata.AugmentConfig(mask_prob=mask_prob, jitter=0.02), seed=0, threads=threads)
    plan = PKSampler(records.labels, cfg.P, cfg.K, seed=0, steps_per_epoch=args.steps).batches(0)
    run_epoch(net, opt, loader, plan[:1], records.labels, cfg, 0, step0=0, total_steps=args.steps,
              prefetch=prefetch)  # warm-up (and the masker's build)
    res = run_epoch(net, opt, loader, plan, records.labels, cfg, 0, step0=0, total_steps=args.steps,
                    prefetch=prefetch)
    t0 = time.perf_counter()
    for index in plan:
        loader.batch(index, epoch=1)
    load = sum(len(i) for i in plan) / (time.perf_counter() - t0)
    return res["samples_per_s"], load


def loader_part(args, records) -> None:
    """The ``loader`` part: every configuration of :data:`LOADER_CONFIGS`, interleaved."""
    rates: dict[str, list[float]] = {c[0]: [] for c in LOADER_CONFIGS}
    loads: dict[str, list[float]] = {c[0]: [] for c in LOADER_CONFIGS}
    for _ in range(args.repeats):
        for name, mask_prob, threads, prefetch in LOADER_CONFIGS:
            r, load = plain(args, records, mask_prob, threads, prefetch)
            rates[name].append(r)
            loads[name].append(load)
    print(f"\nloader: {args.model}, batch {args.P}x{args.K}, {args.steps} steps, {args.torch_threads} torch "
          f"thread(s), medians of {args.repeats}; ratios against the serial loader with the same masks")
    print(f"{'config':22} {'samples/s':>10} {'x serial':>9} {'load only/s':>12} {'x serial':>9}")
    for name, mask_prob, _, _ in LOADER_CONFIGS:
        base = "masked serial" if mask_prob else "serial"
        m, b = statistics.median(rates[name]), statistics.median(rates[base])
        lm, lb = statistics.median(loads[name]), statistics.median(loads[base])
        print(f"{name:22} {m:10.2f} {m / b:9.3f} {lm:12.1f} {lm / lb:9.2f}")


#: Ray's own processes, by what their command line contains (the rest of Ray's processes
#: are workers: the train workers, the controller, idle pool workers)
RAY_DAEMONS = ("gcs_server", "raylet", "dashboard", "agent", "log_monitor", "monitor.py", "runtime_env")


class CpuSampler:
    """CPU seconds used by Ray's daemons and by Ray's worker processes while a job runs:
    /proc sampled every ``every`` s, each process's last seen utime+stime kept (processes
    exit at shutdown, so a single reading at the end would miss them).  Linux only."""

    def __init__(self, every: float = 0.5) -> None:
        import threading
        self.every, self.seen = every, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read(pid: str) -> tuple[str, float] | None:
        import os
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            return None
        return cmd, (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        import os
        while not self.stop.wait(self.every):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                got = self._read(pid)
                if got and ("ray" in got[0] or "gcs_server" in got[0]):
                    self.seen[pid] = got

    def __enter__(self) -> "CpuSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def seconds(self) -> tuple[float, float]:
        """(daemons, workers) CPU seconds."""
        daemons = sum(t for cmd, t in self.seen.values() if any(d in cmd for d in RAY_DAEMONS))
        workers = sum(t for cmd, t in self.seen.values() if "ray::" in cmd or "default_worker" in cmd)
        return daemons, workers


def ray_job(args, workers: int) -> tuple[float, float, float, float]:
    """(samples/s of the last epoch, wall seconds of the whole job, CPU seconds of Ray's
    daemons, CPU seconds of Ray's worker processes)."""
    from jobs import train_facenet

    sampler = CpuSampler().__enter__()
    t0 = time.perf_counter()
    storage = tempfile.mkdtemp(prefix="bench-train-")
    out = train_facenet.main(["--folders", str(_glint()), "--model", args.model, "--no-pretrained",
                              "--epochs", "2", "--steps-per-epoch", str(args.steps), "--P", str(args.P),
                              "--K", str(args.K), "--optimizer", "adam", "--lr", "0.001", "--mining", "batch_hard",
                              "--num-workers", str(workers), "--cpus-per-worker", str(2 // workers),
                              "--output", storage, "--name", f"w{workers}",
                              "--val-holdout", "0", "--max-per-identity", "12", "--num-cpus", "2",
                              "--log-level", "WARNING"])
    wall = time.perf_counter() - t0
    sampler.__exit__(None, None, None)
    daemons, work = sampler.seconds()
    return float(out["metrics"]["samples_per_s_global"]), wall, daemons, work


def ray_part(args, records) -> None:
    """The ``ray`` part: the plain loop against the job with 1 and 2 workers."""
    rates: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    walls: dict[str, list[float]] = {"ray-1": [], "ray-2": []}
    daemon_share: dict[str, list[float]] = {"ray-1": [], "ray-2": []}
    for _ in range(args.repeats):
        rates["plain"].append(plain(args, records)[0])
        for w in (1, 2):
            r, wall, daemons, work = ray_job(args, w)
            rates[f"ray-{w}"].append(r)
            walls[f"ray-{w}"].append(wall)
            daemon_share[f"ray-{w}"].append(daemons / (daemons + work) if daemons + work else float("nan"))
    base = statistics.median(rates["plain"])
    print(f"\n{args.model}, global batch {args.P}x{args.K}, {args.steps} steps/epoch, medians of {args.repeats}")
    print(f"{'config':8} {'samples/s':>10} {'x plain':>8} {'job wall s':>11} {'daemon CPU':>11}")
    for k, v in rates.items():
        m = statistics.median(v)
        wall = f"{statistics.median(walls[k]):11.1f}" if k in walls else " " * 11
        share = f"{100 * statistics.median(daemon_share[k]):10.1f}%" if k in daemon_share else ""
        print(f"{k:8} {m:10.2f} {m / base:8.2f} {wall} {share}")
    print("daemon CPU: share of the job's Ray CPU seconds used by Ray's own processes (GCS, raylet, "
          "dashboard, agents), whole job")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--steps", type=int, default=12, help="steps per measured epoch")
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--parts", default="loader,ray", help="comma list of: loader, ray")
    p.add_argument("--torch-threads", type=int, default=2,
                   help="torch threads of the plain loop (1 when other work holds a core: two OpenMP threads "
                        "on one free core spin against each other)")
    args = p.parse_args()
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - {"loader", "ray"}:
        p.error(f"--parts: loader and/or ray, not {args.parts!r}")
    from facenet import data as fdata
    records = fdata.records_from_folder(str(_glint()), max_per_identity=12, prealigned=True)
    if "loader" in parts:
        loader_part(args, records)
    if "ray" in parts:
        ray_part(args, records)


if __name__ == "__main__":
    main()
