"""Build the face-detection test sets of issue 10 from the shared data (never committed).

Three sets, each a folder of images plus ``truth.json`` (file -> list of face boxes
x0,y0,x1,y1 in that image's pixels):

* ``crops``: LFW and CelebA faces cropped *tightly* (the landmark box -- jaw, brows, chin --
  with a margin of -20..+12 %, cutting into the face as some sets do, squared) and resized
  to 100..270 px, as face data sets ship them (masked-face and web-face sets).
  Truth: the landmark box mapped into the crop.
* ``crowds``: LFW images tiled into grids ("crowds") at several cell sizes, so faces run
  from ~25 px to ~110 px; truth: each tile's main face (found with HOG upsampled once on
  the 250 px original) mapped into the crowd.
* ``groups``: the group photos of ``photos/`` (multiface, two_people, obama_and_biden) at
  several downscales; truth: the faces that HOG upsampled once finds on the full-size
  photo, scaled (so "truth" here is the exhaustive detector at the best resolution).

    PYTHONPATH=. python tools/detection_sets.py --out /tmp/mtf_sets [--n-crops 300]

The folders hold data-set derivatives (research-only terms): keep them out of the repo.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from masktheface.datadir import DATA_HINT, shared_data
from masktheface.geometry import primary_face
from masktheface.landmarks import FaceAnalyzer

log = logging.getLogger("detection_sets")

CROP_SIZES = (100, 130, 160, 200, 240, 270)
CELL_SIZES = (60, 80, 100, 130, 170, 220)
GROUPS = {"multiface.jpg": (1.0, 0.75, 0.5), "two_people.jpg": (0.6, 0.35, 0.25),
          "knn_examples/test/obama_and_biden.jpg": (0.5, 0.3, 0.2)}


def _landmark_box(lm: np.ndarray) -> np.ndarray:
    """float (68,2) -> the tight face box: jaw sides, brow top, chin bottom."""
    return np.array([lm[0:17, 0].min(), lm[17:27, 1].min(), lm[0:17, 0].max(), lm[0:17, 1].max()], np.float64)


def _main_face(an: FaceAnalyzer, bgr: np.ndarray):
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    faces = an.faces(rgb)
    i = primary_face(faces, bgr.shape)
    return None if i is None else faces[i]


def build_crops(data: Path, out: Path, n: int, rng: np.random.Generator, an: FaceAnalyzer) -> None:
    files = sorted(glob.glob(str(data / "lfw/lfw-deepfunneled/*/*.jpg")))
    celeb = sorted(glob.glob(str(data / "celeba_subset/*/*.jpg")))
    pick = ([files[i] for i in rng.choice(len(files), n // 2, replace=False)]
            + [celeb[i] for i in rng.choice(len(celeb), n - n // 2, replace=False)])
    truth = {}
    out.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(pick):
        bgr = cv2.imread(f)
        face = _main_face(an, bgr)
        if face is None:
            continue
        x0, y0, x1, y1 = _landmark_box(face.landmarks)
        margin = rng.uniform(-0.2, 0.12)
        side = max(x1 - x0, y1 - y0) * (1.0 + margin)
        cx, cy = (x0 + x1) / 2 + rng.uniform(-0.03, 0.03) * side, (y0 + y1) / 2 + rng.uniform(-0.03, 0.03) * side
        size = int(rng.choice(CROP_SIZES))
        s = size / side
        M = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
        crop = cv2.warpAffine(bgr, M, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)
        name = f"{'lfw' if 'lfw' in f else 'celeba'}_{k:04d}_{size}_m{round(margin * 100):+03d}.jpg"
        cv2.imwrite(str(out / name), crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
        box = np.array([x0, y0, x1, y1]) * s + [M[0, 2], M[1, 2], M[0, 2], M[1, 2]]
        truth[name] = [np.clip(box, 0, size - 1).round(1).tolist()]
    (out / "truth.json").write_text(json.dumps(truth, indent=0))
    log.info("crops: %d images in %s", len(truth), out)


def build_crowds(data: Path, out: Path, n: int, rng: np.random.Generator, an: FaceAnalyzer) -> None:
    files = sorted(glob.glob(str(data / "lfw/lfw-deepfunneled/*/*.jpg")))
    truth = {}
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        # rows of different tile sizes: a few large faces beside many small ones, as in a
        # group photo (uniform crowds every 3rd image)
        width = int(rng.choice((800, 1000, 1200)))
        mixed = k % 3 != 0
        rows_cells, height = [], 0
        uniform = int(CELL_SIZES[k % len(CELL_SIZES)])
        while True:
            cell = int(rng.choice(CELL_SIZES)) if mixed else uniform
            if height + cell > 900 and rows_cells:
                break
            rows_cells.append(cell)
            height += cell
        canvas = np.full((height, width, 3), 128, np.uint8)
        boxes, y = [], 0
        for cell in rows_cells:
            for c in range(width // cell):
                bgr = cv2.imread(files[int(rng.integers(len(files)))])
                face = _main_face(an, bgr)
                tile = cv2.resize(bgr, (cell, cell), interpolation=cv2.INTER_AREA)
                canvas[y:y + cell, c * cell:(c + 1) * cell] = tile
                if face is not None:
                    s = cell / 250.0
                    boxes.append((np.asarray(face.box, np.float64) * s + [c * cell, y] * 2).round(1).tolist())
            y += cell
        cell = min(rows_cells)
        name = f"crowd_{k:03d}_{'mixed' if mixed else 'cell'}{cell}.jpg"
        cv2.imwrite(str(out / name), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
        truth[name] = boxes
    (out / "truth.json").write_text(json.dumps(truth, indent=0))
    log.info("crowds: %d images in %s", len(truth), out)


def build_groups(data: Path, out: Path, an: FaceAnalyzer) -> None:
    truth = {}
    out.mkdir(parents=True, exist_ok=True)
    full = FaceAnalyzer(upsample="1", max_detect_side=4000)
    for rel, scales in GROUPS.items():
        bgr = cv2.imread(str(data / "photos" / rel))
        boxes = [b for b, _ in full.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))]
        for s in scales:
            img = cv2.resize(bgr, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s != 1.0 else bgr
            name = f"{Path(rel).stem}_{int(s * 100):03d}.jpg"
            cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            truth[name] = [(np.asarray(b, np.float64) * s).round(1).tolist() for b in boxes]
    (out / "truth.json").write_text(json.dumps(truth, indent=0))
    log.info("groups: %d images in %s", len(truth), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (outside the repository)")
    ap.add_argument("--n-crops", type=int, default=300)
    ap.add_argument("--n-crowds", type=int, default=12)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--sets", default="crops,crowds,groups", help="comma list of the sets to build")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = shared_data("lfw")
    if data is None:
        raise SystemExit(f"needs the shared data sets ({DATA_HINT})")
    data = data.parent
    an = FaceAnalyzer(upsample="1")
    out = Path(args.out)
    sets = args.sets.split(",")
    # one generator per set: rebuilding one set leaves the others as they were
    if "crops" in sets:
        build_crops(data, out / "crops", args.n_crops, np.random.default_rng([args.seed, 1]), an)
    if "crowds" in sets:
        build_crowds(data, out / "crowds", args.n_crowds, np.random.default_rng([args.seed, 2]), an)
    if "groups" in sets:
        build_groups(data, out / "groups", an)


if __name__ == "__main__":
    main()
