"""Face recall and time per image of the detection modes on issue 10's test sets.

Sets come from ``tools/detection_sets.py`` (tight crops of LFW/CelebA faces, LFW crowds,
downscaled group photos).  For every configuration it reports, per set: truth faces
found (IoU >= 0.3 with a truth box), faces that ``upsample=1`` finds that it also finds,
the other detections (not on a truth face), images with no face at all, and ms per image
(detection + 68 landmarks + the face check, one core).  Faces that fail the face check
count as not found.  ``reference`` is the original MaskTheFace's way:
dlib HOG upsampled once on the full-size RGB image.

    PYTHONPATH=. python tools/detection_sets.py --out /tmp/mtf_sets
    PYTHONPATH=. python benchmarks/bench_detection.py --sets /tmp/mtf_sets [--configs auto,1,reference,cnn]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from masktheface.geometry import box_iou  # noqa: E402
from masktheface.landmarks import FaceAnalyzer  # noqa: E402


def _matched(truth: list, found: list) -> int:
    """Truth boxes with a found box of IoU >= 0.3 (each found box used once)."""
    used: set[int] = set()
    hits = 0
    for t in truth:
        best = max(((box_iou(t, f), j) for j, f in enumerate(found) if j not in used), default=(0.0, -1))
        if best[0] >= 0.3:
            used.add(best[1])
            hits += 1
    return hits


def _analyzer(config: str) -> FaceAnalyzer:
    if config == "reference":
        return FaceAnalyzer(upsample="1", max_detect_side=100_000, min_face=0, verify=False)
    if config == "cnn":
        return FaceAnalyzer(detector="cnn", upsample="0")
    return FaceAnalyzer(upsample=config)


def run(folder: Path, config: str, limit: int | None) -> tuple[dict, float]:
    truth = json.loads((folder / "truth.json").read_text())
    names = sorted(truth)[:limit]
    an = _analyzer(config)
    found, t = {}, 0.0
    for name in names:
        rgb = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        faces = an.faces(rgb)
        t += time.perf_counter() - t0
        # faces that failed the face check are reported as non-faces, not masked: not found
        found[name] = [np.asarray(f.box, np.float64).tolist() for f in faces if f.plausible]
    return found, 1000.0 * t / max(len(names), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", required=True, help="folder written by tools/detection_sets.py")
    ap.add_argument("--configs", default="auto,1,reference", help="comma list: auto, 0, 1, 2, reference, cnn")
    ap.add_argument("--only", default="crops,crowds,groups", help="comma list of sets")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    args = ap.parse_args()
    configs = args.configs.split(",")
    for s in args.only.split(","):
        folder = Path(args.sets) / s
        truth = json.loads((folder / "truth.json").read_text())
        results = {c: run(folder, c, args.limit) for c in configs}
        names = sorted(results[configs[0]][0])
        n_truth = sum(len(truth[n]) for n in names)
        up1 = results.get("1", (None,))[0]
        print(f"\n{s}: {len(names)} images, {n_truth} truth faces")
        print(f"{'config':10s} {'truth found':>14s} {'of upsample=1':>14s} {'other dets':>10s} "
              f"{'no-face imgs':>12s} {'ms/img':>8s}")
        for c in configs:
            found, ms = results[c]
            hit = sum(_matched(truth[n], found[n]) for n in names)
            other = sum(len(found[n]) - _matched(truth[n], found[n]) for n in names)
            vs = (f"{sum(_matched(up1[n], found[n]) for n in names)}/{sum(len(up1[n]) for n in names)}"
                  if up1 is not None else "-")
            empty = sum(not found[n] for n in names)
            print(f"{c:10s} {hit:>6d}/{n_truth:<7d} {vs:>14s} {other:>10d} {empty:>12d} {ms:8.1f}")


if __name__ == "__main__":
    main()
