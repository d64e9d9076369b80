"""End to end, as a user times it: whole commands on one core over the same LFW images,
start-up (imports, model loading) and file reading/writing included.

* reference: this script's ``--as-reference`` mode, the original MaskTheFace's way
  (``bench_masktheface.reference_pipeline``: HOG upsampled once, a template PNG per face,
  homography, alpha blend) over a folder, writing a JPEG per image with a face;
* ours: ``masktheface --path DIR --output OUT --mask_type surgical_blue`` (defaults: detection
  ``auto``, realism on, ``--workers auto``, which is one worker on the one core it is pinned to).

Each command runs pinned to one core (``taskset -c 0``, one math thread); the two take turns
``--repeats`` times and the medians are compared.  Faces: outputs written by each.

    python benchmarks/bench_cli.py --n 600 --repeats 2
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402


def as_reference(path: str, output: str) -> None:
    """The reference as a command: every image under ``path`` -> ``output`` (same tree)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_masktheface import reference_pipeline
    files = sorted(glob.glob(os.path.join(path, "**", "*.jpg"), recursive=True))
    outs = [os.path.join(output, os.path.relpath(f, path)) for f in files]
    for o in {os.path.dirname(o) for o in outs}:
        os.makedirs(o, exist_ok=True)
    for i in range(0, len(files), 50):  # bounded memory, as a folder run would be
        reference_pipeline([Path(f).read_bytes() for f in files[i:i + 50]], outs[i:i + 50])


def _one_core(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    t = time.perf_counter()
    subprocess.run(pin + cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _count(folder: str) -> int:
    return sum(len([f for f in fs if f.endswith(".jpg")]) for _, _, fs in os.walk(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="LFW images (every k-th of the sorted list)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--as-reference", nargs=2, metavar=("PATH", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_reference:
        return as_reference(*args.as_reference)
    lfw = shared_data("lfw")
    if not lfw:
        sys.exit(f"needs the shared data sets ({DATA_HINT})")
    files = sorted(glob.glob(str(lfw / "lfw-deepfunneled" / "*" / "*.jpg")))
    files = files[:: max(1, len(files) // args.n)][: args.n]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        src = Path(tmp) / "in"
        for f in files:
            dst = src / Path(f).parent.name / Path(f).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        cmds = {"reference": [sys.executable, __file__, "--as-reference", str(src), f"{tmp}/ref"],
                "masktheface": [sys.executable, "-m", "masktheface.cli", "--path", str(src), "--output",
                                f"{tmp}/ours", "--mask_type", "surgical_blue", "--no-progress"]}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        counts = {}
        for r in range(args.repeats):
            for name, cmd in (cmds.items() if r % 2 == 0 else reversed(cmds.items())):
                out = cmd[-1] if name == "reference" else cmd[cmd.index("--output") + 1]
                shutil.rmtree(out, ignore_errors=True)
                times[name].append(_one_core(cmd))
                counts[name] = _count(out)
                print(f"  {name:12s} run {r + 1}: {times[name][-1]:7.1f} s, {counts[name]} images written",
                      flush=True)
    n = len(files)
    t_ref, t_ours = statistics.median(times["reference"]), statistics.median(times["masktheface"])
    print(f"{n} LFW images, one core each, start-up included, median of {args.repeats}")
    print(f"{'command':14s} {'seconds':>8s} {'img/s':>7s} {'images written':>15s}")
    for name, t in (("reference", t_ref), ("masktheface", t_ours)):
        print(f"{name:14s} {t:8.1f} {n / t:7.2f} {counts[name]:15d}")
    print(f"masktheface / reference: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
