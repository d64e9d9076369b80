"""Embedding throughput: dlib's own ResNet vs the torch rebuild (``facenet.dlib_resnet``), CPU.

    python benchmarks/bench_dlib_torch.py --chips 64 --repeats 3 --threads 2

Both embed the *same* 150x150 RGB chips (``dlib.get_face_chip`` from 68 landmarks, padding
0.25, of the first LFW images in ``../shared/data/lfw/lfw-deepfunneled``); chip making is not
timed.  dlib: ``face_recognition_model_v1.compute_face_descriptor(chips)`` (its batched chip
API, num_jitters=0).  torch: ``DlibResNet(normalize=False)`` under ``inference_mode`` in
batches of ``--batch``, ``torch.set_num_threads(--threads)``.  The two run interleaved
(dlib, torch, dlib, ...) so that load from other processes hits both alike; the medians are
printed, with their ratio and the max / mean |difference| of the descriptors.  Optionally
``--device cuda`` times the torch model on a GPU as well (dlib-bin has no CUDA).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("MASKTHEFACE_DATA") or ROOT.parent / "shared" / "data")
LFW = DATA / "lfw" / "lfw-deepfunneled"


def make_chips(n: int, models_dir: str) -> list[np.ndarray]:
    """dlib chips (uint8 (150,150,3) RGB) of the largest face of the first LFW images."""
    import cv2
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(os.path.join(models_dir, "shape_predictor_68_face_landmarks.dat"))
    chips: list[np.ndarray] = []
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        img = cv2.imread(str(person / f"{person.name}_0001.jpg"))
        if img is None:
            continue
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        dets = detector(rgb, 0) or detector(rgb, 1)
        if dets:
            shape = predictor(rgb, max(dets, key=lambda r: r.area()))
            chips.append(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        if len(chips) == n:
            break
    return chips


def run_dlib(rec, chips: list[np.ndarray]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = rec.compute_face_descriptor(chips)
    dt = time.perf_counter() - t0
    return dt, np.array([np.asarray(v) for v in out], np.float32)


def run_torch(model, x, batch: int, device: str) -> tuple[float, np.ndarray]:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = torch.cat([model(b.to(device, non_blocking=True)) for b in x.split(batch)])
        if device != "cpu":
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dt, out.float().cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chips", type=int, default=64, help="number of LFW chips (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds each (default 3)")
    ap.add_argument("--batch", type=int, default=32, help="torch batch size (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not LFW.is_dir():
        print(f"LFW not found at {LFW} (set MASKTHEFACE_DATA)", file=sys.stderr)
        return 2

    import dlib
    import torch

    from facenet.dlib_resnet import DlibResNet, default_dat_path, load_dlib_weights

    torch.set_num_threads(args.threads)
    dat = default_dat_path()
    chips = make_chips(args.chips, os.path.dirname(dat))
    rec = dlib.face_recognition_model_v1(dat)
    model = load_dlib_weights(DlibResNet(normalize=False), dat).eval().to(args.device)
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().contiguous()
    if args.device != "cpu":
        x = x.pin_memory()
    # warm-up (allocator, oneDNN primitive caches, cuDNN autotune), not timed
    run_dlib(rec, chips[:4])
    run_torch(model, x[: args.batch], args.batch, args.device)

    t_dlib, t_torch = [], []
    ref = got = None
    for _ in range(args.repeats):
        dt, ref = run_dlib(rec, chips)
        t_dlib.append(dt)
        dt, got = run_torch(model, x, args.batch, args.device)
        t_torch.append(dt)
    n = len(chips)
    ips_dlib = n / statistics.median(t_dlib)
    ips_torch = n / statistics.median(t_torch)
    diff = np.abs(got - ref)
    print(f"{n} chips 150x150, {args.repeats} rounds, medians "
          f"(torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.device}; "
          f"dlib {dlib.__version__})")
    print(f"  dlib  compute_face_descriptor : {ips_dlib:8.1f} img/s")
    print(f"  torch DlibResNet              : {ips_torch:8.1f} img/s")
    print(f"  torch / dlib                  : {ips_torch / ips_dlib:8.2f} x")
    print(f"  max |diff| {diff.max():.3g}, mean |diff| {diff.mean():.3g} "
          f"(mean |descriptor value| {np.abs(ref).mean():.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
