"""Benchmark jobs.mask_dataset against the plain library loop, and project cluster wall times.

    python benchmarks/bench_mask_dataset.py --images 500 --small 100 --repeats 2

On the same LFW images (``../shared/data/lfw/lfw-deepfunneled``, at most 3 per identity):

* ``plain``: one process, ``Masker()`` once, then read file -> ``Masker.process`` for every
  image (the recipe's variants, encoded, with the aligned crop) - the library alone;
* ``ray-N``: ``python -m jobs.mask_dataset`` in a fresh process with a private local Ray of
  N CPUs (N masking actors), reading, masking and writing Parquet.

Every configuration runs on ``--images`` (large) and ``--small`` images, ``--repeats``
times, interleaved so that load from other processes hits all of them alike; medians are
reported.  Figures:

* ``img/s``: images / execution time (plain: the loop after the model load; Ray: the Ray
  Data execution, actor start-up and model loads included, starting Ray excluded) and
  ``wall`` (the whole process);
* ``CPU``: user+system seconds of the process and all its descendants (Ray's GCS, raylet,
  workers), sampled every 0.2 s from /proc and attributed to driver / mask actors /
  read+write tasks / Ray daemons by process title.  On a machine shared with other work,
  CPU time is a far steadier measure than wall time;
* ``marginal`` = (large - small) / (image difference): the cost of one more image, with
  start-up (Ray, worker processes, model loads) removed; ``CPU eff.`` = plain's marginal
  CPU per image / the job's;
* memory: the peak of the summed PSS of the process tree (the object store's shared pages
  count once).

The projection divides the image counts of VGGFace2 (3.31M) and CASIA-WebFace (494k) by
the per-core rate 1000 / (marginal CPU ms per image of the largest Ray run): a core that
is kept busy, Ray's own processes included, perfect scaling, start-up not included.
LFW photos are 250x250; VGGFace2's are larger, so detection there costs more per image
unless ``--boxes`` supplies the loose boxes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402

LFW = shared_data("lfw", "lfw-deepfunneled") or Path("lfw-not-found")
DATASETS = {"VGGFace2": 3_310_000, "CASIA-WebFace": 494_000}
CORES = (16, 64, 256)


# ------------------------------------------------------------------------------ memory

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


_TICK = os.sysconf("SC_CLK_TCK")


def _category(pid: int, root: int) -> str:
    """Which part of the job a process is (by its current title; Ray workers retitle
    themselves ``ray::<task>`` for each task they run)."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "MaskBatch" in cmd:
        return "mask actors"
    if "read_files" in cmd or "Write" in cmd or "ray::IDLE" in cmd or "MapBatches" in cmd:
        return "read/write tasks"
    return "ray daemons"  # raylet, gcs_server, monitors, agents, Ray Data's own actors


def tree_sample(pid: int, cpu: dict[int, float], by_cat: dict[str, float]) -> int:
    """Summed PSS (bytes) of ``pid`` and its descendants; adds each process's CPU seconds
    (user+system) since the last sample to ``by_cat`` under its current category and keeps
    the per-process total in ``cpu`` (PSS: the object store's shared pages count once)."""
    kids = _children()
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                st = f.read().decode(errors="replace")
            fields = st[st.rindex(")") + 2:].split()
            now = (int(fields[11]) + int(fields[12])) / _TICK
            delta = now - cpu.get(p, 0.0)
            if delta > 0:
                cat = _category(p, pid)
                by_cat[cat] = by_cat.get(cat, 0.0) + delta
                cpu[p] = now
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """Run ``cmd``; return stdout, wall seconds, peak tree PSS bytes and tree CPU seconds,
    in total and per process category (sampled every 0.2 s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    peak = [0]
    cpu: dict[int, float] = {}
    by_cat: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_sample(proc.pid, cpu, by_cat))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return {"stdout": out, "wall_s": wall, "peak_bytes": peak[0], "cpu_s": sum(by_cat.values()),
            "cpu_by": by_cat}


# ------------------------------------------------------------------------------ the runs

def pick_images(n: int) -> list[str]:
    """``n`` keys spread over LFW: at most 3 per identity, identities in name order."""
    keys = []
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        keys += [f"{person.name}/{f.name}" for f in sorted(person.iterdir())[:3]]
        if len(keys) >= n:
            break
    return keys[:n]


def plain_child(files: str, recipe: str, seed: int, aligned: int | None) -> dict:
    """The library alone, in this process: read -> Masker.process for every image."""
    from masktheface import dataset as mds
    from masktheface.pipeline import Masker

    t0 = time.perf_counter()
    keys = Path(files).read_text().split("\n")
    keys = [k for k in keys if k]
    variants = mds.plan_variants(recipe)
    masker = Masker()
    t_load = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    t1 = time.perf_counter()
    for k in keys:
        data = (LFW / k).read_bytes()
        res = masker.process(data, k, variants, seed=seed, aligned=aligned)
        for o in res.outputs:
            statuses[o.status] = statuses.get(o.status, 0) + 1
    loop = time.perf_counter() - t1
    return {"images": len(keys), "exec_s": loop, "load_s": t_load, "statuses": statuses}


def measure_plain(files: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child-plain", str(files), "--recipe", args.recipe,
           "--seed", str(args.seed), "--aligned", str(args.aligned)]
    m = run_measured(cmd)
    r = json.loads(m["stdout"].strip().splitlines()[-1])
    return {"exec_s": r["exec_s"], "wall_s": m["wall_s"], "peak_bytes": m["peak_bytes"],
            "cpu_s": m["cpu_s"], "cpu_by": m["cpu_by"], "images": r["images"], "statuses": r["statuses"]}


def measure_ray(files: Path, cpus: int, args, work: Path) -> dict:
    out_dir = work / f"out-ray{cpus}"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "jobs.mask_dataset", "--input", str(LFW), "--files", str(files),
           "--output", str(out_dir), "--recipe", args.recipe, "--seed", str(args.seed),
           "--aligned", str(args.aligned), "--num-cpus", str(cpus), "--no-progress-bars",
           "--max-error-rate", "1", "--log-level", "WARNING", "--read-in", args.read_in]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    m = run_measured(cmd, env=env)
    s = json.loads((out_dir / "_summary.json").read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"exec_s": s["execution_seconds"], "wall_s": m["wall_s"], "peak_bytes": m["peak_bytes"],
            "cpu_s": m["cpu_s"], "cpu_by": m["cpu_by"], "steady_ips": s.get("steady_images_per_s"),
            "images": s["inputs_processed"], "statuses": s["statuses"], "rows": s["rows_written"]}


def fmt_duration(s: float) -> str:
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="images of the large run")
    ap.add_argument("--small", type=int, default=100, help="images of the small run (0: skip; "
                    "the difference between the two gives the marginal cost per image)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="Ray CPU counts to measure")
    ap.add_argument("--recipe", default="vggface2-mini-sm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-in", default="auto", choices=("auto", "tasks", "actors"),
                    help="the job's --read-in (where files are read)")
    ap.add_argument("--aligned", default="160")
    ap.add_argument("--budget-s", type=float, default=1500, help="stop repeating past this many seconds")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child-plain", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    aligned = None if args.aligned.lower() == "none" else int(args.aligned)
    if args.child_plain:
        print(json.dumps(plain_child(args.child_plain, args.recipe, args.seed, aligned)))
        return {}
    if not LFW.is_dir():
        print(f"LFW not found at {LFW} ({DATA_HINT})", file=sys.stderr)
        sys.exit(2)
    work = Path(tempfile.mkdtemp(prefix="bench_mask_dataset_"))
    keys = pick_images(args.images)
    sizes = {"L": len(keys)}
    lists = {"L": work / "files_L.txt"}
    lists["L"].write_text("\n".join(keys) + "\n")
    if args.small:
        sizes["S"] = min(args.small, len(keys) // 2)
        lists["S"] = work / "files_S.txt"
        lists["S"].write_text("\n".join(keys[: sizes["S"]]) + "\n")
    print(f"LFW images: {sizes}, recipe {args.recipe}, aligned {args.aligned}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    names = ["plain"] + [f"ray-{c}" for c in args.cpus]
    results: dict[str, dict[str, list[dict]]] = {n: {k: [] for k in sizes} for n in names}
    t_start = time.perf_counter()
    for rep in range(args.repeats):
        if rep and time.perf_counter() - t_start > args.budget_s:
            print(f"time budget reached after {rep} repeat(s)", flush=True)
            break
        for n in names:
            for size in sizes:
                r = (measure_plain(lists[size], args) if n == "plain"
                     else measure_ray(lists[size], int(n.split("-")[1]), args, work))
                results[n][size].append(r)
                steady = f", steady {r['steady_ips']:5.1f}" if r.get("steady_ips") else ""
                print(f"  repeat {rep + 1} {n:7s} {r['images']:4d} img: exec {r['exec_s']:6.1f} s "
                      f"({r['images'] / r['exec_s']:5.1f} img/s{steady}), wall {r['wall_s']:6.1f} s, "
                      f"CPU {r['cpu_s']:6.1f} s, peak PSS {r['peak_bytes'] / 2**20:5.0f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    rows = {}
    for n in names:
        L = results[n]["L"]
        cpus = 1 if n == "plain" else int(n.split("-")[1])
        row = {"cpus": cpus, "repeats": len(L),
               "images_per_s": med(r["images"] / r["exec_s"] for r in L),
               "wall_images_per_s": med(r["images"] / r["wall_s"] for r in L),
               "cpu_ms_per_image": med(1000 * r["cpu_s"] / r["images"] for r in L),
               "peak_mib": med(r["peak_bytes"] for r in L) / 2**20, "statuses": L[-1]["statuses"]}
        if "S" in sizes:
            S = results[n]["S"]
            d = sizes["L"] - sizes["S"]
            pairs = list(zip(S, L))
            row["marginal_cpu_ms"] = med(1000 * (lg["cpu_s"] - s_["cpu_s"]) / d for s_, lg in pairs)
            row["marginal_images_per_s"] = med(d / max(lg["exec_s"] - s_["exec_s"], 1e-9) for s_, lg in pairs)
            row["fixed_cpu_s"] = med(s_["cpu_s"] - sizes["S"] * (lg["cpu_s"] - s_["cpu_s"]) / d for s_, lg in pairs)
        rows[n] = row
    base = rows["plain"]
    print()
    print(f"{sizes['L']} images.  img/s = images / execution time (plain: the loop after the model load; Ray: "
          "Ray Data execution incl. actor start-up); wall = whole process; CPU = user+system of the "
          "process tree (all Ray processes)")
    hdr = (f"{'run':8s} {'CPUs':>4s} {'img/s':>6s} {'/CPU':>5s} {'vs plain':>8s} {'wall':>6s} "
           f"{'CPU ms/img':>10s} {'peak MiB':>8s}")
    if "S" in sizes:
        hdr += f" {'marg. img/s':>11s} {'marg. CPU ms/img':>16s} {'CPU eff.':>8s} {'fixed CPU s':>11s}"
    print(hdr)
    for n, r in rows.items():
        r["ratio_per_cpu"] = r["images_per_s"] / r["cpus"] / base["images_per_s"]
        line = (f"{n:8s} {r['cpus']:4d} {r['images_per_s']:6.1f} {r['images_per_s'] / r['cpus']:5.1f} "
                f"{r['ratio_per_cpu']:8.0%} {r['wall_images_per_s']:6.1f} {r['cpu_ms_per_image']:10.1f} "
                f"{r['peak_mib']:8.0f}")
        if "S" in sizes:
            r["cpu_efficiency"] = base["marginal_cpu_ms"] / r["marginal_cpu_ms"]
            line += (f" {r['marginal_images_per_s']:11.1f} {r['marginal_cpu_ms']:16.1f} "
                     f"{r['cpu_efficiency']:8.0%} {r['fixed_cpu_s']:11.1f}")
        print(line)
    if "S" in sizes:
        print()
        print("Marginal CPU ms per image by process (large - small run) / image difference; "
              "Ray daemons and the driver cost per second, not per image:")
        cats = ["driver", "mask actors", "read/write tasks", "ray daemons"]
        print(f"{'run':8s} " + " ".join(f"{c:>16s}" for c in cats))
        d = sizes["L"] - sizes["S"]
        for n in names:
            vals = []
            for c in cats:
                vals.append(med(1000 * (lg["cpu_by"].get(c, 0.0) - s_["cpu_by"].get(c, 0.0)) / d
                                for s_, lg in zip(results[n]["S"], results[n]["L"])))
            rows[n]["marginal_cpu_ms_by"] = dict(zip(cats, vals))
            print(f"{n:8s} " + " ".join(f"{v:16.1f}" for v in vals))
    ray_names = [n for n in names if n != "plain"]
    ref = max(ray_names, key=lambda n: rows[n]["cpus"]) if ray_names else "plain"
    if "S" in sizes:
        # a dedicated core spends marginal CPU ms on each image, Ray's own processes included
        rate = 1000.0 / rows[ref]["marginal_cpu_ms"]
        how = f"1000 / marginal CPU ms per image of {ref}"
    else:
        rate = rows[ref]["images_per_s"] / rows[ref]["cpus"]
        how = f"images/s per CPU of {ref}"
    print()
    print(f"Projected wall time at {rate:.1f} img/s per core ({how}; perfect scaling, start-up excluded):")
    print(f"{'data set':15s} {'images':>10s} " + " ".join(f"{c:>9d} cores" for c in CORES))
    proj = {}
    for ds, n_img in DATASETS.items():
        secs = [n_img / (rate * c) for c in CORES]
        proj[ds] = dict(zip(map(str, CORES), secs))
        print(f"{ds:15s} {n_img:>10,d} " + " ".join(f"{fmt_duration(s_):>15s}" for s_ in secs))
    out = {"sizes": sizes, "recipe": args.recipe, "results": rows, "per_core_rate": rate,
           "projection_s": proj, "reference": ref, "raw": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
