"""Before/after contact sheet of the built-in masks on photos that are not from the face
data sets: for each photo, the clean look (``--clean``, before the realism work) above the
default look (scene tint, grain and blur matched to the skin, shadow ring, fit variation),
one column per mask type, the photo itself on the left.

    python tools/contact_sheet.py --out docs/images/contact_sheet.jpg

Photos (``../shared/data/photos``): astronaut.png (NASA, public domain, as shipped in
scikit-image) and obama.jpg / biden.jpg (official portraits, US government works) by
default; any image files can be given with ``--photos``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface import Masker, MaskerConfig, MaskSpec  # noqa: E402
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402
from masktheface.geometry import primary_face  # noqa: E402

TYPES = ("surgical", "surgical_blue", "N95", "KN95", "cloth", "gas")
PHOTOS = ("astronaut.png", "obama.jpg", "biden.jpg")


def _tile(img: np.ndarray, box, side: int) -> np.ndarray:
    """The face box grown to show chin, neck and ears, as a ``side`` px square."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2 + 0.15 * (y1 - y0), 0.85 * max(x1 - x0, y1 - y0)
    src = np.float32([[cx - r, cy - r], [cx + r, cy - r], [cx - r, cy + r]])
    dst = np.float32([[0, 0], [side, 0], [0, side]])
    return cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (side, side), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def sheet(paths: list[Path], side: int = 200, seed: int = 3) -> np.ndarray:
    clean, real = Masker(MaskerConfig(realism=False)), Masker()
    rows = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {path}")
        faces = real.find_faces(img)
        i = primary_face(faces, img.shape[:2])
        if i is None:
            raise SystemExit(f"no usable face in {path}")
        box = faces[i].box
        blank = np.full((side, side, 3), 255, np.uint8)
        for masker, name in ((clean, "clean"), (real, "realism")):
            tiles = [_label(_tile(img, box, side), path.name) if name == "clean" else _label(blank, "")]
            for t in TYPES:
                res = masker.mask(img, MaskSpec(t), rng=np.random.default_rng(seed), faces=faces)
                tiles.append(_label(_tile(res.image, box, side), f"{t} ({name})"))
            rows.append(np.hstack(tiles))
    return np.vstack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="*", help="image files (default: the photos named above)")
    ap.add_argument("--side", type=int, default=200, help="tile side, px")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "contact_sheet.jpg"))
    a = ap.parse_args()
    if a.photos:
        paths = [Path(p) for p in a.photos]
    else:
        photos = shared_data("photos")
        if not photos:
            raise SystemExit(f"needs the shared photos ({DATA_HINT})")
        paths = [photos / p for p in PHOTOS]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet(paths, a.side, a.seed), [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(out)


if __name__ == "__main__":
    main()
