"""Is another build of dlib faster than the one installed (the ``dlib-bin`` wheel)?

Times what masking spends most of its time in, HOG detection (gray, no upsampling, the
default's first pass) and the 68-point fit, on the same LFW images, for the dlib this
interpreter imports and for another build whose compiled module lies in ``--other`` (a
folder holding ``_dlib_pybind11*.so`` and a copy of the ``dlib`` package folder).  The two
run as child processes taking turns, ``--repeats`` rounds each; medians, ms per image.

Building one from the source package (here: dlib 20.0.0, gcc 12, ``-O3 -mavx``)::

    pip download dlib==20.0.0 --no-deps --no-binary :all: -d /tmp/dl
    tar xzf /tmp/dl/dlib-20.0.0.tar.gz -C /tmp && mkdir /tmp/dlib-20.0.0/build && cd $_
    cmake ../tools/python -DCMAKE_BUILD_TYPE=Release -DUSE_AVX_INSTRUCTIONS=ON \\
        -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=/tmp/dlib_avx && make -j2        # ~12 min on 2 cores
    cp -r $(python -c 'import dlib, os; print(os.path.dirname(dlib.__file__))') /tmp/dlib_avx/
    python benchmarks/bench_dlib_build.py --other /tmp/dlib_avx --n 200

Figures: README ("Install").
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402


def measure(n: int) -> dict:
    """In this process: ms per image of HOG (gray, 1x) and of one 68-point fit per face."""
    import cv2
    import dlib

    from masktheface.landmarks import model_path

    data = shared_data()
    files = sorted(glob.glob(str(data / "lfw" / "lfw-deepfunneled" / "*" / "*.jpg")))
    files = files[:: max(1, len(files) // n)][:n]
    imgs = [cv2.imread(f) for f in files]
    grays = [cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in imgs]
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat"))
    t = time.perf_counter()
    boxes = [det.run(g, 0, 0.0)[0] for g in grays]
    hog = time.perf_counter() - t
    pairs = [(img, r) for img, rs in zip(imgs, boxes) for r in rs]
    t = time.perf_counter()
    for img, r in pairs:
        sp(img, r)
    fit = time.perf_counter() - t
    return {"module": sys.modules["_dlib_pybind11"].__file__, "hog_ms": 1e3 * hog / len(imgs),
            "fit_ms": 1e3 * fit / max(len(pairs), 1), "faces": len(pairs)}


def child(n: int, path: str | None) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "--child", "--n", str(n)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", help="folder holding another build (_dlib_pybind11*.so + dlib/)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if shared_data() is None:
        sys.exit(f"needs the shared data sets ({DATA_HINT})")
    if args.child:
        print(json.dumps(measure(args.n)))
        return
    builds = {"installed": None}
    if args.other:
        builds["other"] = args.other
    runs: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(args.repeats):          # turns, so that a busy machine loads both alike
        for name, path in builds.items():
            runs[name].append(child(args.n, path))
    base = None
    print(f"{args.n} LFW images, {args.repeats} rounds, medians, ms per image (fit: per face)")
    for name, rs in runs.items():
        hog = statistics.median(r["hog_ms"] for r in rs)
        fit = statistics.median(r["fit_ms"] for r in rs)
        base = base or (hog, fit)
        print(f"{name:10s} HOG {hog:6.2f} ({hog / base[0]:.2f}x installed)  "
              f"fit {fit:5.2f} ({fit / base[1]:.2f}x)  {rs[0]['faces']} faces  {rs[0]['module']}")


if __name__ == "__main__":
    main()
