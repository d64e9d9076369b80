"""Contact sheet of the built-in masks (every type x placement) on a sketched canonical face,
plus the procedural textures (default look, then two random draws).

    PYTHONPATH=. python tools/preview_masks.py [--scale 0.4] [--out /tmp/masks_contact.png]

Red dots are the six anchors a..f; the grey outline is MESH_HULL.  Not used by the library.
"""
from __future__ import annotations

import argparse
import logging

import cv2
import numpy as np

from masktheface.canonical import CANONICAL_68, MESH_HULL
from masktheface.masks import draw_builtin, quantise_scale
from masktheface.spec import BUILTIN_TYPES, PLACEMENTS
from masktheface.textures import PATTERNS, pattern

log = logging.getLogger("preview_masks")

VIEW = (0.0, 250.0, 1000.0, 1150.0)   # canonical box shown per tile


def face_tile(scale: float) -> np.ndarray:
    """A sketched face in the canonical frame: uint8 (h,w,3) BGR."""
    x0, y0, x1, y1 = VIEW
    w, h = int((x1 - x0) * scale), int((y1 - y0) * scale)
    img = np.full((h, w, 3), (200, 205, 210), np.uint8)

    def px(p: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(p) - [x0, y0]) * scale * 16).astype(np.int32)

    jaw = CANONICAL_68[0:17]
    top = np.array([[900, 400], [880, 200], [700, 80], [500, 60], [300, 80], [120, 200], [100, 400]], np.float32)
    cv2.fillPoly(img, [px(np.vstack([jaw, top]))], (120, 150, 200), cv2.LINE_AA, 4)
    cv2.polylines(img, [px(MESH_HULL)], True, (160, 160, 160), 1, cv2.LINE_AA, 4)
    for a, b in ((36, 42), (42, 48), (48, 60), (27, 31), (31, 36), (17, 22), (22, 27)):
        cv2.polylines(img, [px(CANONICAL_68[a:b])], a >= 36, (60, 70, 90), 1, cv2.LINE_AA, 4)
    return img


def composite(tile: np.ndarray, art, scale: float) -> np.ndarray:
    """Paste art (straight BGRA) onto the tile at its canonical origin (same scale)."""
    out = tile.astype(np.float32)
    ox = int(round((art.origin[0] - VIEW[0]) * scale))
    oy = int(round((art.origin[1] - VIEW[1]) * scale))
    h, w = art.bgra.shape[:2]
    region = out[oy:oy + h, ox:ox + w]
    a = art.bgra[: region.shape[0], : region.shape[1], 3:4].astype(np.float32) / 255
    region[:] = region * (1 - a) + art.bgra[: region.shape[0], : region.shape[1], :3] * a
    for p in art.anchors:
        c = (int(round(p[0] + ox)), int(round(p[1] + oy)))
        cv2.circle(out, c, 2, (0, 0, 255), -1, cv2.LINE_AA)
    return np.clip(out, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.4)
    ap.add_argument("--out", default="/tmp/masks_contact.png")
    ap.add_argument("--types", default=",".join(BUILTIN_TYPES))
    ap.add_argument("--no-anchors", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = quantise_scale(args.scale)   # the art comes at the quantised scale
    base = face_tile(s)
    rows = []
    for name in args.types.split(","):
        tiles = []
        for placement in PLACEMENTS:
            art = draw_builtin(name, placement, s)
            if args.no_anchors:
                art = type(art)(art.bgra, art.fabric, art.origin, art.scale, art.anchors[:0], art.name, art.placement)
            t = composite(base, art, art.scale)
            cv2.putText(t, f"{name} {placement}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(t)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    th = 96
    for seed in (None, 1, 2):
        rng = None if seed is None else np.random.default_rng(seed)
        strip = np.hstack([pattern(p, (th, th), rng=rng) for p in PATTERNS])
        pad = np.full((th, sheet.shape[1], 3), 255, np.uint8)
        pad[:, : strip.shape[1]] = strip[:, : sheet.shape[1]]
        sheet = np.vstack([sheet, pad])
    cv2.imwrite(args.out, sheet)
    log.info("wrote %s (%dx%d)", args.out, sheet.shape[1], sheet.shape[0])


if __name__ == "__main__":
    main()
