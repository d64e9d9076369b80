"""Realism figures of masked photos (issue 10): chroma following, detail ratio, shadow ring,
fit variation.

Works on any folder of masked images that have, beside each image ``<name>.<ext>``, the
mask's alpha ``<name>_alpha.png`` and the faces ``<name>.json`` (what ``masktheface
--write_alpha --write_metadata`` writes; for real photos of people in masks, draw the alpha
by hand and give the 68 landmarks in the same JSON layout).  Per image, for its first face
with status ok:

* mask L*, a*, b* (CIE Lab, mean over the mask's interior, alpha > 0.95 eroded) and the
  face's skin (between the lower eyelids and the nose bridge) -> over the folder, the
  Pearson correlation of mask and skin for L* (brightness following) and the mean of the
  a* and b* correlations (chroma following), per mask type, averaged over types weighted by
  their image counts;
* detail ratio: robust high-pass level (1.4826 x MAD of luma minus its 1 px blur) inside
  the mask / the same on the visible skin;
* blocking ratio: JPEG blocking (mean step across the 8 px grid / within blocks) inside the
  mask / the same on the face left visible (1.0: the mask carries the photo's artefacts);
* shadow ring: mean luma in a band 1..3 % of the face width outside the mask edge / the
  same 4..8 % out (1.0: no shadow; < 1: a darker ring);
* fit: where the mask's top edge crosses the nose line, as a fraction of nasion (27) ->
  nose tip (30), and where its bottom crosses the lip (57) -> chin (8) line, extended; mean
  and standard deviation over the folder.

    PYTHONPATH=. python tools/realism_stats.py FOLDER [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from masktheface.imageio import IMAGE_EXTENSIONS
from masktheface.realism import _highpass_sd, _luma, skin_region

log = logging.getLogger("realism_stats")


def _edge_crossing(alpha: np.ndarray, p0: np.ndarray, p1: np.ndarray, first: bool) -> float | None:
    """Fraction t along p0 -> p1 (sampled over t in [-0.5, 2]) where alpha first (or last)
    exceeds 0.5."""
    ts = np.linspace(-0.5, 2.0, 251)
    pts = p0[None] + ts[:, None] * (p1 - p0)[None]
    h, w = alpha.shape
    xy = np.round(pts).astype(int)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    on = np.zeros(len(ts), bool)
    on[ok] = alpha[xy[ok, 1], xy[ok, 0]] > 0.5
    idx = np.nonzero(on)[0]
    if len(idx) == 0:
        return None
    return float(ts[idx[0] if first else idx[-1]])


def blockiness(luma: np.ndarray, where: np.ndarray) -> float:
    """JPEG blocking: mean |step| between neighbouring pixels across the 8 px block grid /
    the same within blocks, over pixel pairs both inside ``where`` (1.0: no blocking)."""
    f = luma.astype(np.float32)
    across, within = [], []
    for d, ok, axis in ((np.abs(np.diff(f, axis=1)), where[:, 1:] & where[:, :-1], 1),
                        (np.abs(np.diff(f, axis=0)), where[1:] & where[:-1], 0)):
        edge = (np.arange(d.shape[axis]) + 1) % 8 == 0
        edge = edge[None, :] if axis == 1 else edge[:, None]
        across.append(d[ok & edge])
        within.append(d[ok & ~edge])
    a, b = np.concatenate(across), np.concatenate(within)
    return float(a.mean() / max(b.mean(), 1e-6)) if len(a) >= 20 and len(b) >= 20 else float("nan")


def image_stats(bgr: np.ndarray, alpha: np.ndarray, lm: np.ndarray) -> dict | None:
    """uint8 (H,W,3) BGR, float (H,W) alpha in [0,1], float (68,2) landmarks -> figures."""
    face_w = float(np.linalg.norm(lm[16] - lm[0]))
    core = cv2.erode((alpha > 0.95).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    x0, y0, x1, y1 = skin_region(lm, bgr.shape)
    skin = np.zeros(alpha.shape, bool)
    skin[y0:y1, x0:x1] = True
    skin &= alpha < 0.05
    if core.sum() < 30 or skin.sum() < 12 or face_w < 20:
        return None
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    luma = _luma(bgr.astype(np.float32))
    outside = (alpha < 0.02).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, 3) / face_w
    near = (dist > 0.01) & (dist <= 0.03)
    far = (dist > 0.04) & (dist <= 0.08)
    ring = float(luma[near].mean() / max(luma[far].mean(), 1.0)) if near.any() and far.any() else float("nan")
    top = _edge_crossing(alpha, lm[27], lm[30], first=True)
    bottom = _edge_crossing(alpha, lm[57], lm[8], first=False)
    return {
        "mask_lab": lab[core].mean(0).tolist(), "skin_lab": lab[skin].mean(0).tolist(),
        "detail_ratio": _highpass_sd(luma, core) / max(_highpass_sd(luma, skin), 1e-6),
        "blocking_ratio": blockiness(luma, core) / max(blockiness(luma, _face_skin(alpha, lm)), 1e-6),
        "ring": ring, "top": top, "bottom": bottom,
    }


def _face_skin(alpha: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The face left visible: inside the jaw and brow outline, outside the mask (and its
    soft edge)."""
    hull = cv2.convexHull(np.round(np.vstack([lm[0:17], lm[17:27]])).astype(np.int32))
    face = np.zeros(alpha.shape, np.uint8)
    cv2.fillConvexPoly(face, hull, 1)
    return (face > 0) & (cv2.dilate((alpha > 0.02).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0)


def folder_stats(folder: Path) -> dict:
    per_type: dict[str, list[dict]] = defaultdict(list)
    for meta_path in sorted(folder.rglob("*.json")):
        stem = meta_path.with_suffix("")
        alpha_path = Path(f"{stem}_alpha.png")
        img_path = next((Path(f"{stem}{e}") for e in IMAGE_EXTENSIONS if Path(f"{stem}{e}").is_file()), None)
        if img_path is None or not alpha_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        face = next((f for f in meta.get("faces", []) if f.get("status") == "ok" and f.get("spec")), None)
        if face is None:
            continue
        bgr = cv2.imread(str(img_path))
        alpha = cv2.imread(str(alpha_path), cv2.IMREAD_GRAYSCALE)
        if bgr is None or alpha is None:
            continue
        st = image_stats(bgr, alpha.astype(np.float32) / 255.0, np.asarray(face["landmarks"], np.float64))
        if st is not None:
            per_type[face["spec"]["mask_type"]].append(st)
    return summarise(per_type)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarise(per_type: dict[str, list[dict]]) -> dict:
    """Per-type correlations weighted by count; pooled detail ratio, ring and fit figures."""
    rows = [r for rs in per_type.values() for r in rs]
    if not rows:
        return {"images": 0}
    w_l = w_c = n_w = 0.0
    for rs in per_type.values():
        if len(rs) < 3:
            continue
        m = np.array([r["mask_lab"] for r in rs])
        s = np.array([r["skin_lab"] for r in rs])
        cl = _corr(m[:, 0], s[:, 0])
        cc = np.nanmean([_corr(m[:, 1], s[:, 1]), _corr(m[:, 2], s[:, 2])])
        if np.isfinite(cl) and np.isfinite(cc):
            w_l += cl * len(rs)
            w_c += cc * len(rs)
            n_w += len(rs)

    def col(key: str) -> np.ndarray:
        v = np.array([r[key] for r in rows if r[key] is not None], np.float64)
        return v[np.isfinite(v)]

    top, bottom, detail, ring = col("top"), col("bottom"), col("detail_ratio"), col("ring")
    blocking = col("blocking_ratio")
    return {
        "images": len(rows), "types": {k: len(v) for k, v in per_type.items()},
        "brightness_corr": round(w_l / n_w, 3) if n_w else None,
        "chroma_corr": round(w_c / n_w, 3) if n_w else None,
        "detail_ratio_median": round(float(np.median(detail)), 3),
        "detail_ratio_iqr": [round(float(q), 3) for q in np.percentile(detail, [25, 75])],
        "blocking_ratio_median": round(float(np.median(blocking)), 3) if len(blocking) else None,
        "ring_mean": round(float(ring.mean()), 4) if len(ring) else None,
        "top_mean": round(float(top.mean()), 3) if len(top) else None,
        "top_sd": round(float(top.std()), 3) if len(top) else None,
        "bottom_mean": round(float(bottom.mean()), 3) if len(bottom) else None,
        "bottom_sd": round(float(bottom.std()), 3) if len(bottom) else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = folder_stats(Path(args.folder))
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
