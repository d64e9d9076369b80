"""Warping, styling, shading and compositing of masks onto faces (pure numpy/OpenCV).

Two warps:

* ``mesh`` (built-in masks): art drawn once in the canonical frame is carried onto the
  face by a piecewise-affine map over a landmark triangle mesh, so the mask follows jaw,
  nose and chin continuously under any pose (no front/left/right switching).  The inverse
  map is built in one vectorised pass (triangle-id raster + per-triangle affine) and the
  art is sampled once with ``cv2.remap``.
* ``homography`` (MaskTheFace template packs): the template's six anchors onto the face's
  six key points, with the left/right view picked by tilt as the original does.

Colour and texture are applied to the art in canonical/template space before warping, so a
pattern bends with the mask.  Brightness follows the face: a global gain from the face's
luminance and a low-frequency shading field from the skin under the mask.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .canonical import CANONICAL_68, CANONICAL_VERTICES, mesh_vertices

log = logging.getLogger(__name__)


class WarpError(ValueError):
    """The warped mask failed a sanity check (a smear, a fold, off the image)."""


@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """int32 (T,3) Delaunay triangles over the canonical mesh vertices (computed once)."""
    pts = CANONICAL_VERTICES.astype(np.float64)
    subdiv = cv2.Subdiv2D((int(pts[:, 0].min()) - 10, int(pts[:, 1].min()) - 10,
                           int(np.ptp(pts[:, 0])) + 20, int(np.ptp(pts[:, 1])) + 20))
    for p in pts:
        subdiv.insert((float(p[0]), float(p[1])))
    tris = []
    for t in subdiv.getTriangleList().reshape(-1, 3, 2):
        idx = [int(np.argmin(((pts - v) ** 2).sum(1))) for v in t]
        if len(set(idx)) == 3 and np.allclose(pts[idx], t, atol=1e-3):
            tris.append(idx)
    return np.array(tris, np.int32)


def _affines(src: np.ndarray, dst: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """float (V,2) src/dst vertices, (T,3) triangles -> float64 (T,2,3) affines dst -> src."""
    d = dst[tris]  # (T,3,2)
    s = src[tris]
    D = np.concatenate([d, np.ones((len(tris), 3, 1))], axis=2)  # (T,3,3) rows [x y 1]
    # solve D @ X = s for X (T,3,2); X^T is the 2x3 affine
    det = np.linalg.det(D)
    ok = np.abs(det) > 1e-9
    X = np.zeros((len(tris), 3, 2))
    X[ok] = np.linalg.solve(D[ok], s[ok])
    return np.transpose(X, (0, 2, 1))


@dataclass(frozen=True)
class Warped:
    """A mask warped into an image region: ``bgra`` float32 (h,w,4) (alpha in [0,1]) for the
    region whose top-left pixel is (x0, y0)."""

    bgra: np.ndarray
    x0: int
    y0: int

    @property
    def alpha(self) -> np.ndarray:
        return self.bgra[..., 3]


def _roi(points: np.ndarray, shape: tuple[int, ...], pad: int = 2) -> tuple[int, int, int, int] | None:
    h, w = shape[:2]
    x0 = max(int(np.floor(points[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(points[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(points[:, 0].max())) + pad, w)
    y1 = min(int(np.ceil(points[:, 1].max())) + pad, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def warp_mesh(art_bgra: np.ndarray, origin: tuple[float, float], scale: float,
              landmarks: np.ndarray, image_shape: tuple[int, ...],
              max_folded: float = 0.25) -> Warped:
    """Carry canonical-frame art onto a face.

    art_bgra uint8 (h,w,4) whose pixel (u,v) is canonical ``origin + (u,v)/scale``;
    landmarks float (68,2) image coords -> Warped over the face's region of the image.
    Raises WarpError when more than ``max_folded`` of the mesh area folds over (extreme
    poses, broken landmarks) or nothing of the mesh lies in the image.
    """
    tris = mesh_triangles()
    dst = mesh_vertices(landmarks).astype(np.float64)
    src = (CANONICAL_VERTICES.astype(np.float64) - np.asarray(origin, np.float64)) * scale
    # a folded triangle has its orientation flipped between the frames
    def signed(v: np.ndarray) -> np.ndarray:
        a, b, c = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    s_src, s_dst = signed(src), signed(dst)
    total = np.abs(s_dst).sum()
    folded = np.abs(s_dst[np.sign(s_src) != np.sign(s_dst)]).sum() / max(total, 1e-9)
    if folded > max_folded:
        raise WarpError(f"mask mesh folds over ({folded:.0%} of its area): pose too extreme")
    roi = _roi(dst, image_shape)
    if roi is None:
        raise WarpError("the face's mask region lies outside the image")
    x0, y0, x1, y1 = roi
    w, h = x1 - x0, y1 - y0
    # triangle-id raster at 1/16 px precision; folded triangles are drawn first so that
    # correctly oriented ones win where they overlap
    ids = np.full((h, w), -1, np.int16)
    order = np.argsort(np.sign(s_src) == np.sign(s_dst), kind="stable")
    fixed = np.round((dst - [x0, y0]) * 16).astype(np.int32)
    for t in order:
        cv2.fillConvexPoly(ids, fixed[tris[t]], int(t), lineType=cv2.LINE_8, shift=4)
    A = _affines(src, dst, tris).astype(np.float32)  # (T,2,3)
    inside = ids >= 0
    ys, xs = np.nonzero(inside)
    t = ids[inside]
    px = xs.astype(np.float32) + x0
    py = ys.astype(np.float32) + y0
    mapx = np.full((h, w), -10.0, np.float32)
    mapy = np.full((h, w), -10.0, np.float32)
    mapx[inside] = A[t, 0, 0] * px + A[t, 0, 1] * py + A[t, 0, 2]
    mapy[inside] = A[t, 1, 0] * px + A[t, 1, 1] * py + A[t, 1, 2]
    out = cv2.remap(art_bgra, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=(0, 0, 0, 0))
    bgra = out.astype(np.float32)
    bgra[..., 3] *= 1.0 / 255.0
    return Warped(bgra, x0, y0)


def warp_homography(template_bgra: np.ndarray, anchors: np.ndarray, six: np.ndarray,
                    image_shape: tuple[int, ...]) -> Warped:
    """MaskTheFace-style: template uint8 (h,w,4) with anchors float (6,2) a..f onto the face's
    six key points float (6,2) -> Warped."""
    H, _ = cv2.findHomography(np.asarray(anchors, np.float64), np.asarray(six, np.float64), 0)
    if H is None or not np.all(np.isfinite(H)):
        raise WarpError("no homography from the template anchors to the face")
    th, tw = template_bgra.shape[:2]
    corners = cv2.perspectiveTransform(
        np.array([[[0, 0], [tw, 0], [tw, th], [0, th]]], np.float64), H)[0]
    if not np.all(np.isfinite(corners)):
        raise WarpError("template maps to infinity")
    roi = _roi(corners, image_shape)
    if roi is None:
        raise WarpError("the warped template lies outside the image")
    x0, y0, x1, y1 = roi
    T = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ H
    out = cv2.warpPerspective(template_bgra, T, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    bgra = out.astype(np.float32)
    bgra[..., 3] *= 1.0 / 255.0
    return Warped(bgra, x0, y0)


def check_warp(w: Warped, face_box: np.ndarray, image_shape: tuple[int, ...],
               min_ratio: float = 0.12, max_ratio: float = 1.6) -> float:
    """Sanity check of a warped mask: its alpha area against the face box must be plausible.
    Returns the covered area in pixels; raises WarpError for a smear or a sliver.  The
    bounds are fractions of the box area (see :func:`expected_ratio_bounds` for bounds
    that follow the mask type and placement)."""
    area = float(w.alpha.sum())
    bw = max(float(face_box[2] - face_box[0]), 1.0)
    bh = max(float(face_box[3] - face_box[1]), 1.0)
    ratio = area / (bw * bh)
    if not np.isfinite(ratio) or ratio < min_ratio or ratio > max_ratio:
        raise WarpError(f"warped mask covers {ratio:.2f}x the face box (expected "
                        f"{min_ratio:.2f}-{max_ratio:.2f}): rejected as a smear")
    return area


#: a mesh-warped mask may cover this factor less / more of its face's landmark box than its
#: art covers of the canonical face (pose and landmark jitter stay well inside; a smear or
#: a sliver does not)
RATIO_SLACK = (0.45, 2.2)


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """float (68,2) -> float32 (4,) x0,y0,x1,y1 extent of the landmarks."""
    lm = np.asarray(landmarks, np.float32)
    return np.array([*lm.min(0), *lm.max(0)], np.float32)


def expected_ratio_bounds(art_alpha: np.ndarray, art_scale: float) -> tuple[float, float]:
    """Bounds of ``alpha area / landmark-box area`` for one art (uint8 or float alpha, drawn at
    ``art_scale`` px per canonical unit): its own canonical ratio times :data:`RATIO_SLACK`.
    A chin placement covers ~1/3 of what correct wear covers; one fixed bound for all (the
    old 0.12 of the detector box) rejected valid chin masks on small faces."""
    a = np.asarray(art_alpha, np.float32)
    area = float(a.sum()) / (255.0 if a.max() > 1.0 else 1.0) / (art_scale * art_scale)
    x0, y0, x1, y1 = landmark_box(CANONICAL_68)
    ratio = area / float((x1 - x0) * (y1 - y0))
    return ratio * RATIO_SLACK[0], ratio * RATIO_SLACK[1]


# -- styling -----------------------------------------------------------------------------
def _luma(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299


def style_art(bgra: np.ndarray, fabric: np.ndarray | None, color_bgr: tuple[int, int, int] | None,
              color_weight: float, texture_bgr: np.ndarray | None, texture_weight: float) -> np.ndarray:
    """Tint and/or texture art (uint8 (h,w,4), fabric uint8 (h,w) or None = everywhere)
    keeping its own shading (pleats, folds): the new colour is modulated by the art's
    luminance relative to the fabric's mean.  Returns uint8 (h,w,4)."""
    if color_bgr is None and texture_bgr is None:
        return bgra
    rgb = bgra[..., :3].astype(np.float32)
    a = bgra[..., 3]
    fab = (np.full(a.shape, 1.0, np.float32) if fabric is None else fabric.astype(np.float32) / 255.0)
    fab = fab * (a > 0)
    lum = _luma(rgb)
    m = float(lum[fab > 0.5].mean()) if np.any(fab > 0.5) else float(lum[a > 0].mean() if np.any(a > 0) else 1.0)
    rel = np.clip(lum / max(m, 1.0), 0.0, 1.6)[..., None]
    out = rgb
    if texture_bgr is not None:
        tex = _tile(texture_bgr, rgb.shape[:2]).astype(np.float32)
        w = (texture_weight * fab)[..., None]
        out = out * (1 - w) + tex * rel * w
    if color_bgr is not None:
        w = (color_weight * fab)[..., None]
        out = out * (1 - w) + np.asarray(color_bgr, np.float32) * rel * w
    res = bgra.copy()
    res[..., :3] = np.clip(out, 0, 255).astype(np.uint8)
    return res


def _tile(tex: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Texture uint8 (h,w,3) scaled so that the art shows ~3 repeats across, tiled to ``shape``."""
    H, W = shape
    th, tw = tex.shape[:2]
    target_w = max(8, W // 3)
    s = target_w / float(tw)
    t = cv2.resize(tex, (max(1, round(tw * s)), max(1, round(th * s))), interpolation=cv2.INTER_AREA)
    reps = (H // t.shape[0] + 1, W // t.shape[1] + 1, 1)
    return np.tile(t, reps)[:H, :W]


def shade(w: Warped, image_bgr: np.ndarray, face_box: np.ndarray, strength: float = 0.6) -> None:
    """Match the mask's brightness to the face, in place.

    Global gain: the face box's mean luminance against a mid-grey reference, softened
    (a dark photo gives a darker mask, but a white mask must stay whiter than skin).
    Local shading: the low-frequency luminance of the skin under the mask relative to its
    mean (shadows, directional light) multiplied in with ``strength``.
    """
    h, wd = w.bgra.shape[:2]
    region = image_bgr[w.y0:w.y0 + h, w.x0:w.x0 + wd]
    gray = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY) if region.ndim == 3 else region
    x0, y0, x1, y1 = (int(v) for v in face_box)
    fb = image_bgr[max(y0, 0):max(y1, 1), max(x0, 0):max(x1, 1)]
    face_l = float(fb.mean()) if fb.size else 128.0
    gain = float(np.clip((face_l / 140.0) ** 0.5, 0.45, 1.1))
    alpha = w.alpha
    cover = alpha > 0.5
    field = np.ones((h, wd), np.float32)
    if cover.sum() > 16 and strength > 0:
        # a 4x4 grid of cell means: lighting varies at that scale, while finer detail
        # (teeth, lips, beard) must not show through the fabric
        low = cv2.resize(cv2.resize(gray, (4, 4), interpolation=cv2.INTER_AREA), (wd, h),
                         interpolation=cv2.INTER_CUBIC).astype(np.float32)
        mean = float(low[cover].mean())
        if mean > 1.0:
            field = 1.0 + strength * (np.clip(low / mean, 0.7, 1.3) - 1.0)
    w.bgra[..., :3] *= (gain * field)[..., None]


def composite(image_bgr: np.ndarray, w: Warped) -> None:
    """Alpha-blend a warped mask into uint8 (H,W,3) ``image_bgr`` in place."""
    h, wd = w.bgra.shape[:2]
    region = image_bgr[w.y0:w.y0 + h, w.x0:w.x0 + wd]
    a = w.bgra[..., 3:4]
    blended = region.astype(np.float32) * (1.0 - a) + w.bgra[..., :3] * a
    region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def fill_region(image_bgr: np.ndarray, w: Warped, how: str) -> None:
    """Region tools: ``empty`` blanks the region (black), ``inpaint`` fills it from its
    surroundings (Telea).  In place."""
    h, wd = w.bgra.shape[:2]
    region = image_bgr[w.y0:w.y0 + h, w.x0:w.x0 + wd]
    if how == "empty":
        w.bgra[..., :3] = 0.0
        composite(image_bgr, w)
        return
    hole = (w.alpha > 0.05).astype(np.uint8) * 255
    radius = max(3, int(min(h, wd) * 0.05))
    filled = cv2.inpaint(np.ascontiguousarray(region), hole, radius, cv2.INPAINT_TELEA)
    a = w.alpha[..., None]
    region[...] = np.clip(region * (1 - a) + filled * a + 0.5, 0, 255).astype(np.uint8)


def paste_alpha(canvas: np.ndarray, w: Warped) -> None:
    """Union a warped mask's alpha into a float32 (H,W) canvas (max), in place."""
    h, wd = w.bgra.shape[:2]
    view = canvas[w.y0:w.y0 + h, w.x0:w.x0 + wd]
    np.maximum(view, w.alpha, out=view)
