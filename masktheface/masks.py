"""The built-in mask library (drawn by our own code) and the MaskTheFace template-pack loader.

Built-in masks are vector drawings in the canonical face frame of
:mod:`masktheface.canonical` (a mean frontal face, jaw 0/16 at x=100/900, chin near
y=1044).  They are drawn once per (type, placement, scale) in frontal pose and cached;
the renderer carries them onto each face with a piecewise-affine landmark warp, so pose
is the warp's business, not ours.

How a mask is drawn (:func:`draw_builtin`):

1. The *body* (fabric, pleats, seams, valves, filters) is painted in the canonical frame
   on a supersampled canvas of premultiplied float layers (colour, alpha, fabric).
   Shapes are polygons filled with ``cv2.fillPoly(..., LINE_AA, shift)``; shading is an
   analytic per-pixel field (pleat shadows, dome, side fall-off), so it is smooth at any
   resolution.
2. For the incorrect-wear placements the body is moved by a smooth warp of the frame: the
   horizontal position is kept *relative to the jaw width at that height* and heights are
   remapped linearly, so a mask pulled down to the chin narrows with the jaw and still
   hugs the face outline.
3. Straps and ear loops are drawn after that warp, from the (moved) attachment points to
   fixed points at the ears / head, so a mask on the chin still hangs from the ears.
4. Everything is clipped to :data:`masktheface.canonical.MESH_HULL` (the warp cannot
   carry art outside it), downsampled with ``INTER_AREA`` *in premultiplied form* and
   un-premultiplied, then the colour is bled under transparent pixels: straight alpha
   with no dark fringe when the renderer interpolates.

The six key points a..f of an art follow MaskTheFace's template convention: a / c the
top-left / top-right corners of the mask, b its top centre (on the nose line), d / f the
left / right edges at mouth height, e its bottom centre (under the chin).

MaskTheFace packs (``masks.cfg`` + RGBA PNGs, each template with six anchors) are loaded
by :func:`load_pack`; they are warped by a homography, as in the original.
"""
from __future__ import annotations

import configparser
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .canonical import CANONICAL_68, MESH_HULL
from .imageio import IMAGE_EXTENSIONS
from .spec import BUILTIN_TYPES, PLACEMENTS

log = logging.getLogger(__name__)

_BY_LOWER = {n.lower(): n for n in BUILTIN_TYPES}

# -- the canonical frame ------------------------------------------------------------------
#: canonical box that every drawing is made in (contains MESH_HULL with a margin)
_FRAME_X0, _FRAME_Y0, _FRAME_X1, _FRAME_Y1 = 30.0, 340.0, 970.0, 1110.0
_MID_X = 500.0
_JAW = CANONICAL_68[0:17].astype(np.float64)
#: centre from which outlines are pushed out of the jaw line: the same centre the mesh's
#: outer ring uses (canonical.ring_points), so "k times the jaw" lines up with the warp
_CENTRE = np.array([_MID_X, float((CANONICAL_68[30, 1] + (CANONICAL_68[0, 1] + CANONICAL_68[16, 1]) / 2
                                   + CANONICAL_68[8, 1]) / 3.0)])
_CHIN_Y = float(CANONICAL_68[8, 1])
_NOSE_B_Y = float((CANONICAL_68[28, 1] + CANONICAL_68[29, 1]) / 2.0)   # paper's b, ~470
_MOUTH_Y = 780.0                                                       # paper's d/f height

#: (top-centre y, bottom-centre y) of the mask body per placement (None: the type's own)
_PLACEMENT_SPAN: dict[str, tuple[float, float] | None] = {
    "correct": None,
    "below_nose": (680.0, 1082.0),   # top between nose tip (647) and upper lip (726)
    "chin": (862.0, 1096.0),         # top just under the lower lip (840)
}

_SHIFT = 4                      # cv2 sub-pixel bits: coordinates in 1/16 px
_ONE = float(1 << _SHIFT)

BGR = tuple[float, float, float]


# -- public data types --------------------------------------------------------------------
@dataclass(frozen=True)
class MaskArt:
    """One built-in mask drawn in the canonical frame.

    ``bgra``: uint8 (H,W,4), straight (not premultiplied) alpha, anti-aliased edges, colour
    bled under transparent pixels.  ``fabric``: uint8 (H,W), 255 where colour/texture may
    be applied (0 on straps, valves, filters, metal; 0 wherever alpha is 0).  Pixel (u,v)
    sits at canonical ``origin + (u, v) / scale``.  ``anchors``: float32 (6,2), the key
    points a..f in pixel coordinates of this art.  Arrays are read-only (they are cached).
    """

    bgra: np.ndarray
    fabric: np.ndarray
    origin: tuple[float, float]
    scale: float
    anchors: np.ndarray
    name: str
    placement: str

    def canonical_anchors(self) -> np.ndarray:
        """float32 (6,2): the anchors a..f in canonical coordinates."""
        return (np.asarray(self.origin, np.float32) + self.anchors / np.float32(self.scale)).astype(np.float32)


@dataclass(frozen=True)
class Template:
    """One MaskTheFace template: uint8 (h,w,4) BGRA and its anchors a..f, float32 (6,2) px."""

    name: str
    bgra: np.ndarray
    anchors: np.ndarray


@dataclass(frozen=True)
class MaskPack:
    """A MaskTheFace-format pack: templates by their ``masks.cfg`` section name (e.g.
    ``"surgical"``, ``"surgical_left"``, ``"N95_right"``) and the texture images found
    under ``root/textures`` (recursive, sorted)."""

    root: str
    templates: dict[str, Template] = field(repr=False)
    textures: tuple[str, ...] = field(repr=False)

    def views(self, mask_type: str) -> dict[str, Template]:
        """``{"front": .., "left": .., "right": ..}`` for the views of ``mask_type`` present."""
        out: dict[str, Template] = {}
        for view, name in (("front", mask_type), ("left", f"{mask_type}_left"), ("right", f"{mask_type}_right")):
            if name in self.templates:
                out[view] = self.templates[name]
        return out

    def types(self) -> tuple[str, ...]:
        """Front-view names (templates that are not ``*_left`` / ``*_right``)."""
        return tuple(n for n in self.templates if not n.endswith(("_left", "_right")))


# -- small geometry helpers -----------------------------------------------------------------
def _pushed_jaw(k: float | np.ndarray) -> np.ndarray:
    """float64 (17,2): the jaw line pushed out of the face centre by factor k (scalar or (17,))."""
    k = np.broadcast_to(np.asarray(k, np.float64), (17,))[:, None]
    return _CENTRE + (_JAW - _CENTRE) * k


def _k_for_bottom(bottom_y: float) -> float:
    """Push factor whose pushed chin lies at ``bottom_y``."""
    return (bottom_y - _CENTRE[1]) / (_CHIN_Y - _CENTRE[1])


def _half_width(y: np.ndarray, k: float) -> np.ndarray:
    """float64 (...): half-width of the jaw pushed by k at heights y (0 below its chin)."""
    left = _pushed_jaw(k)[0:9]                    # y increases monotonically along 0..8
    return _MID_X - np.interp(y, left[:, 1], left[:, 0])


def _side_x(y: float, k: float | np.ndarray) -> float:
    """Left x of the (possibly variably) pushed jaw at height y."""
    left = _pushed_jaw(k)[0:9]
    return float(np.interp(y, left[:, 1], left[:, 0]))


def _mirror(pts: np.ndarray) -> np.ndarray:
    out = np.array(pts, np.float64, copy=True)
    out[..., 0] = 2 * _MID_X - out[..., 0]
    return out


def _chaikin(poly: np.ndarray, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Corner-cutting smoothing of a polygon / polyline (float (N,2) -> float (M,2))."""
    p = np.asarray(poly, np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        new = np.empty((2 * len(a), 2))
        new[0::2] = 0.75 * a + 0.25 * q
        new[1::2] = 0.25 * a + 0.75 * q
        p = new if closed else np.vstack([p[:1], new, p[-1:]])
    return p


def _bezier(p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], n: int = 24) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control p1 -> float (n,2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(v, np.float64) for v in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _normals(pts: np.ndarray, closed: bool) -> np.ndarray:
    """Unit normals (left of the direction of travel) of a polyline, float (N,2)."""
    if closed:
        d = np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)
    else:
        d = np.gradient(pts, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    return np.stack([d[:, 1], -d[:, 0]], axis=1)


def _offset(poly: np.ndarray, dist: float) -> np.ndarray:
    """Closed polygon -> the polygon whose edges lie ``dist`` inside it (mitred corners,
    limited to 4x); dist < 0 grows it.  Exact for convex polygons, good for smooth ones."""
    p = np.asarray(poly, np.float64)
    edge = np.roll(p, -1, axis=0) - p                      # edge i: p[i] -> p[i+1]
    edge /= np.maximum(np.linalg.norm(edge, axis=1, keepdims=True), 1e-12)
    n = np.stack([edge[:, 1], -edge[:, 0]], axis=1)        # one side of each edge
    # signed area (y down): pick the normal side that points inside
    area = 0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    n *= -1.0 if area > 0 else 1.0
    n_prev, n_next = np.roll(n, 1, axis=0), n
    m = n_prev + n_next
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    cos_half = np.clip(np.sum(m * n_next, axis=1, keepdims=True), 0.25, 1.0)
    return p + m * (dist / cos_half)


def _stroke(pts: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Open polyline -> closed polygon of the given width (gentle curves only: no self-cuts)."""
    p = np.asarray(pts, np.float64)
    n = _normals(p, closed=False) * (np.asarray(width, np.float64).reshape(-1, 1) / 2.0)
    return np.vstack([p + n, (p - n)[::-1]])


def _dashes(pts: np.ndarray, width: float, dash: float, gap: float) -> list[np.ndarray]:
    """Open polyline -> dash polygons (stitching) by arc length."""
    p = np.asarray(pts, np.float64)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    out = []
    start = gap / 2
    while start + dash <= s[-1]:
        ts = np.linspace(start, start + dash, 4)
        q = np.stack([np.interp(ts, s, p[:, 0]), np.interp(ts, s, p[:, 1])], axis=1)
        out.append(_stroke(q, width))
        start += dash + gap
    return out


def _ellipse(centre: Sequence[float], axes: Sequence[float], n: int = 72, power: float = 2.0,
             angle_deg: float = 0.0) -> np.ndarray:
    """Superellipse |x/a|^p + |y/b|^p = 1 as a polygon, float (n,2)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = axes[0] * np.sign(c) * np.abs(c) ** (2.0 / power)
    y = axes[1] * np.sign(s) * np.abs(s) ** (2.0 / power)
    if angle_deg:
        r = math.radians(angle_deg)
        x, y = x * math.cos(r) - y * math.sin(r), x * math.sin(r) + y * math.cos(r)
    return np.stack([x + centre[0], y + centre[1]], axis=1)


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = _clip01((x - e0) / (e1 - e0))
    return t * t * (3 - 2 * t)


def _y_at_x(poly: np.ndarray, x: float, top: bool = True) -> float:
    """Topmost (or bottommost) crossing of a closed polygon with the vertical line at x."""
    p = np.asarray(poly, np.float64)
    q = np.roll(p, -1, axis=0)
    hit = ((p[:, 0] - x) * (q[:, 0] - x) <= 0) & (p[:, 0] != q[:, 0])
    if not hit.any():
        raise ValueError(f"the outline does not cross x={x}")
    p, q = p[hit], q[hit]
    ys = p[:, 1] + (x - p[:, 0]) * (q[:, 1] - p[:, 1]) / (q[:, 0] - p[:, 0])
    return float(ys.min() if top else ys.max())


def _x_at_y(poly: np.ndarray, y: float, left: bool = True) -> float:
    """Leftmost (or rightmost) crossing of a closed polygon with the horizontal line at y."""
    p = np.asarray(poly, np.float64)
    return _y_at_x(p[:, ::-1], y, top=left)


def _nearest(poly: np.ndarray, pt: Sequence[float]) -> np.ndarray:
    p = np.asarray(poly, np.float64)
    return p[int(np.argmin(np.linalg.norm(p - np.asarray(pt, np.float64), axis=1)))]


# -- the canvas -------------------------------------------------------------------------------
class _Canvas:
    """Premultiplied float32 layers (colour 0..255, alpha 0..1, fabric 0..1 <= alpha) over a
    pixel grid; pixel (u,v) sits at canonical ``origin + (u,v) / scale``."""

    def __init__(self, origin: tuple[float, float], scale: float, width: int, height: int) -> None:
        self.origin = np.asarray(origin, np.float64)
        self.scale = float(scale)
        self.w, self.h = int(width), int(height)
        self.col = np.zeros((self.h, self.w, 3), np.float32)
        self.alpha = np.zeros((self.h, self.w), np.float32)
        self.fab = np.zeros((self.h, self.w), np.float32)

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) float32 (h,w): canonical coordinates of the pixel centres."""
        xs = (self.origin[0] + np.arange(self.w) / self.scale).astype(np.float32)
        ys = (self.origin[1] + np.arange(self.h) / self.scale).astype(np.float32)
        return np.meshgrid(xs, ys)

    def blank_like(self) -> "_Canvas":
        return _Canvas(tuple(self.origin), self.scale, self.w, self.h)

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Canonical float (N,2) -> float pixel coordinates (N,2)."""
        return (np.asarray(pts, np.float64) - self.origin) * self.scale

    def coverage(self, polys: np.ndarray | Sequence[np.ndarray]) -> "_Cov":
        """Anti-aliased coverage in [0,1] of polygons (even-odd rule), over their bounding box."""
        if isinstance(polys, np.ndarray):
            polys = [polys]
        px = [self.to_px(p) for p in polys if len(p) >= 3]
        if not px:
            return _Cov(np.zeros((0, 0), np.float32), (slice(0, 0), slice(0, 0)))
        allp = np.vstack(px)
        x0 = int(np.clip(np.floor(allp[:, 0].min()) - 1, 0, self.w))
        x1 = int(np.clip(np.ceil(allp[:, 0].max()) + 2, 0, self.w))
        y0 = int(np.clip(np.floor(allp[:, 1].min()) - 1, 0, self.h))
        y1 = int(np.clip(np.ceil(allp[:, 1].max()) + 2, 0, self.h))
        m = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
        if m.size:
            fixed = [np.round((p - [x0, y0]) * _ONE).astype(np.int32) for p in px]
            cv2.fillPoly(m, fixed, 255, cv2.LINE_AA, _SHIFT)
        return _Cov(m.astype(np.float32) * np.float32(1 / 255), (slice(y0, y1), slice(x0, x1)))

    def paint(self, cov: "_Cov", colour: BGR | np.ndarray, fabric: bool, opacity: float = 1.0) -> None:
        """Paint a colour (BGR triple or float (h,w,3) field over the whole canvas) with
        coverage ``cov``; fabric=False paints over (removes) fabric underneath."""
        if cov.arr.size == 0:
            return
        sl = cov.sl
        a = cov.arr if opacity == 1.0 else cov.arr * np.float32(opacity)
        col = np.asarray(colour, np.float32)
        col = col[sl] if col.ndim == 3 else col.reshape(1, 1, 3)
        inv = 1.0 - a
        self.col[sl] = self.col[sl] * inv[..., None] + a[..., None] * col
        self.alpha[sl] = self.alpha[sl] * inv + a
        self.fab[sl] = self.fab[sl] * inv + (a if fabric else 0.0)

    def shade_over(self, cov: "_Cov", factor: float | np.ndarray) -> None:
        """Multiply the colour already there by ``factor`` (scalar or (h,w) field) where
        covered -- seams, shadows and highlights on a surface; alpha and fabric unchanged."""
        if cov.arr.size == 0:
            return
        sl = cov.sl
        f = np.asarray(factor, np.float32)
        f = f[sl] if f.ndim == 2 else f
        self.col[sl] *= (1.0 + (f - 1.0) * cov.arr)[..., None]

    def over(self, top: "_Canvas") -> None:
        """Composite another canvas of the same grid over this one."""
        inv = 1.0 - top.alpha
        self.col = top.col + self.col * inv[..., None]
        self.alpha = top.alpha + self.alpha * inv
        self.fab = top.fab + self.fab * inv


@dataclass(frozen=True)
class _Cov:
    """Coverage float32 (h',w') in [0,1] of a shape over the canvas window ``sl``."""

    arr: np.ndarray
    sl: tuple[slice, slice]


@dataclass
class _Strap:
    """A strap / ear loop: from an attachment point on the mask body (moves with the
    placement) to a fixed point at the ear or head, bowed by ``bend`` (canonical offset of
    the Bezier control point from the chord's midpoint)."""

    start: tuple[float, float]
    end: tuple[float, float]
    bend: tuple[float, float]
    width: float
    colour: BGR
    over: bool = True            # drawn over the body (True) or under it


@dataclass
class _Body:
    """What a type's drawing function returns besides the painted body."""

    anchors: np.ndarray          # float64 (6,2) canonical a..f
    straps: list[_Strap]
    staples: list[tuple[float, float]] = field(default_factory=list)   # N95 strap staples


# -- shared shading --------------------------------------------------------------------------
def _fibre_noise(c: _Canvas, amount: float, seed: int, cell: float = 6.0) -> np.ndarray:
    """Deterministic fine fibre noise, float32 (h,w) around 1.0 (cell in canonical units).

    Drawn on a fixed canonical lattice so that it looks the same at every scale."""
    rng = np.random.default_rng(seed)
    gw, gh = int((_FRAME_X1 - _FRAME_X0) / cell) + 2, int((_FRAME_Y1 - _FRAME_Y0) / cell) + 2
    lattice = rng.standard_normal((gh, gw)).astype(np.float32)
    X, Y = c.grid
    mx = ((X - _FRAME_X0) / cell).astype(np.float32)
    my = ((Y - _FRAME_Y0) / cell).astype(np.float32)
    n = cv2.remap(lattice, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return 1.0 + np.float32(amount) * n


def _side_falloff(X: np.ndarray, half: float, amount: float, power: float = 3.0) -> np.ndarray:
    """Surface turning away from the camera towards the cheeks: darker at the sides."""
    return 1.0 - amount * _clip01(np.abs(X - _MID_X) / half) ** power


def _loop_straps(top: np.ndarray, bottom: np.ndarray, colour: BGR, width: float = 11.0) -> list[_Strap]:
    """Elastic ear loops from the four corners (left corners given; right mirrored)."""
    ear_top, ear_low = (18.0, 468.0), (22.0, 540.0)
    left = [
        _Strap(tuple(top), ear_top, (-10.0, -14.0), width, colour),
        _Strap(tuple(bottom), ear_low, (-34.0, 30.0), width, colour),
    ]
    return left + [_Strap(tuple(_mirror(np.array(s.start))), tuple(_mirror(np.array(s.end))),
                          (-s.bend[0], s.bend[1]), s.width, s.colour, s.over) for s in left]


# -- surgical ----------------------------------------------------------------------------------
_SURGICAL_COLOURS: dict[str, BGR] = {
    "surgical": (236.0, 238.0, 239.0),        # off-white non-woven
    "surgical_blue": (222.0, 184.0, 128.0),   # the usual light "medical" blue
    "surgical_green": (172.0, 206.0, 150.0),  # light mint green
}
_LOOP_WHITE: BGR = (242.0, 243.0, 243.0)


def _surgical_outline() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (closed outline float (N,2), top-left corner, bottom-left corner) of a pleated
    surgical mask worn correctly."""
    def top(x: np.ndarray) -> np.ndarray:
        dx = np.abs(np.asarray(x, np.float64) - _MID_X)
        # the nose wire bends the top edge into a soft tent over the nose, then the edge
        # runs down over the cheeks to the corner below the eye
        return _NOSE_B_Y + 40.0 * (1 - np.exp(-(dx / 115.0) ** 2)) + 14.0 * (dx / 400.0) ** 2

    # sides follow the face outline, standing out more towards the chin (the mask leaves the
    # face there to go under the chin)
    k = np.ones(17)
    k[0:9] = 1.0 + 0.06 * (np.clip(np.arange(9) - 1, 0, None) / 7.0) ** 1.5
    k[9:17] = k[7::-1]
    jaw = _pushed_jaw(k)
    y = 520.0
    for _ in range(20):                      # corner: where the top edge meets the side
        y = float(top(_side_x(y, k)))
    x_corner = _side_x(y, k)
    top_xs = np.linspace(x_corner, 2 * _MID_X - x_corner, 41)
    top_edge = np.stack([top_xs, top(top_xs)], axis=1)
    right = jaw[16:7:-1]
    right = right[right[:, 1] > y + 25]
    left = jaw[1:8]
    left = left[left[:, 1] > y + 25][::-1]
    outline = np.vstack([top_edge, right, left])
    outline = _chaikin(outline, 3)
    bottom_corner = jaw[4] + np.array([6.0, 2.0])
    return outline, np.array([x_corner, y]), bottom_corner


def _draw_surgical(c: _Canvas, name: str) -> _Body:
    base = np.asarray(_SURGICAL_COLOURS.get(name, _SURGICAL_COLOURS["surgical"]), np.float32)
    outline, corner, low_corner = _surgical_outline()
    X, Y = c.grid
    dx = np.abs(X - _MID_X)
    # soft overall form: a slight vertical gradient and darker towards the cheeks
    shade = (1.0 - 0.05 * ((Y - 700.0) / 380.0) ** 2) * _side_falloff(X, 430.0, 0.12)
    # three pleats fanning out from the pinched side hems to the open centre
    side_y = np.array([612.0, 690.0, 768.0])
    mid_y = np.array([640.0, 758.0, 876.0])
    t = _clip01(dx / 420.0) ** 2
    for ys, ym in zip(side_y, mid_y):
        fold = ym + (ys - ym) * t
        d = Y - fold
        strength = 1.0 - 0.35 * t
        # a pleat opened over the mouth and chin throws a softer, wider shadow than where
        # it is stitched flat at the side
        width = 13.0 + 9.0 * (1.0 - t) * (ym > 700.0)
        shadow = 0.15 * _smoothstep(-2.0, 2.5, d) * np.exp(-np.maximum(d, 0) / width)
        light = 0.05 * np.exp(-((d + 16.0) / 12.0) ** 2)
        shade = shade * (1.0 - shadow * strength + light * strength)
    # 3D: the opened pleats bulge over the mouth and chin (lit from the front and above) and
    # the fabric turns away under the chin, darker towards its bottom edge
    shade *= 1.0 + 0.05 * np.exp(-((X - _MID_X) / 230.0) ** 2 - ((Y - 800.0) / 130.0) ** 2)
    low = outline[outline[:, 1] > _MOUTH_Y]                  # the U of the sides and the chin
    low = low[np.argsort(low[:, 0])]
    bottom = np.interp(X[0], low[:, 0], low[:, 1]).astype(np.float32)[None, :]
    shade *= 1.0 - 0.1 * _smoothstep(-70.0, 0.0, Y - bottom) * _clip01(1.0 - dx / 380.0)
    shade *= _fibre_noise(c, 0.012, seed=11, cell=5.0)
    c.paint(c.coverage(outline), base * shade[..., None], fabric=True)

    # welded edge: a faint line following the outline a little inside
    seam = [_offset(outline, 14.0), _offset(outline, 18.0)]
    c.shade_over(c.coverage(seam), 0.93)
    # side binding strips (the pleats are stitched flat there)
    for sgn in (-1, 1):
        ys = np.linspace(corner[1] + 30, low_corner[1] - 20, 20)
        xs = np.array([_x_at_y(outline, yy, left=(sgn < 0)) for yy in ys]) - sgn * 46.0
        line = np.stack([xs, ys], axis=1)
        c.shade_over(c.coverage(_stroke(line, 4.0)), 0.92)
        band = np.vstack([np.stack([xs + sgn * 46.0, ys], 1), np.stack([xs, ys], 1)[::-1]])
        c.shade_over(c.coverage(band), 1.025)
    # nose wire: a raised ridge along the top edge over the nose
    wx = np.linspace(_MID_X - 105, _MID_X + 105, 31)
    wy = np.array([_y_at_x(outline, x) for x in wx]) + 15.0
    wire = np.stack([wx, wy], 1)
    c.shade_over(c.coverage(_stroke(wire + [0, 6.0], 7.0)), 0.9)
    c.shade_over(c.coverage(_stroke(wire, 9.0)), 1.05)

    b = np.array([_MID_X, _y_at_x(outline, _MID_X)])
    e = np.array([_MID_X, _y_at_x(outline, _MID_X, top=False)])
    a = _nearest(outline, corner)
    d = np.array([_x_at_y(outline, _MOUTH_Y), _MOUTH_Y])
    anchors = np.stack([a, b, _mirror(a), d, e, _mirror(d)])
    straps = _loop_straps(a + [4.0, 6.0], _nearest(outline, low_corner) + [6.0, -6.0], _LOOP_WHITE)
    return _Body(anchors, straps)


def _draw_region(c: _Canvas, name: str) -> _Body:
    """empty / inpaint: the correct-wear surgical outline as a flat alpha region."""
    outline, corner, _ = _surgical_outline()
    c.paint(c.coverage(outline), (128.0, 128.0, 128.0), fabric=True)
    b = np.array([_MID_X, _y_at_x(outline, _MID_X)])
    e = np.array([_MID_X, _y_at_x(outline, _MID_X, top=False)])
    a = _nearest(outline, corner)
    d = np.array([_x_at_y(outline, _MOUTH_Y), _MOUTH_Y])
    return _Body(np.stack([a, b, _mirror(a), d, e, _mirror(d)]), [])



def _outline_anchors(outline: np.ndarray, corner: np.ndarray | None = None) -> np.ndarray:
    """Six key points of an outline: a = given top-left corner (or the left edge a fifth of
    the way down), b / e = top / bottom on the nose line, d = left edge at mouth height;
    c, f mirrored.  float64 (6,2) canonical."""
    b = np.array([_MID_X, _y_at_x(outline, _MID_X)])
    e = np.array([_MID_X, _y_at_x(outline, _MID_X, top=False)])
    if corner is None:
        ya = b[1] + 0.2 * (e[1] - b[1])
        a = np.array([_x_at_y(outline, ya), ya])
    else:
        a = _nearest(outline, corner)
    d = np.array([_x_at_y(outline, _MOUTH_Y), _MOUTH_Y])
    return np.stack([a, b, _mirror(a), d, e, _mirror(d)])


def _symmetric(left_half: np.ndarray) -> np.ndarray:
    """Left half of an outline from top centre (x=500) to bottom centre, clockwise on screen
    once mirrored -> closed symmetric polygon."""
    half = np.asarray(left_half, np.float64)
    right = _mirror(half[1:-1])[::-1]
    return np.vstack([half, right])


# -- N95 ---------------------------------------------------------------------------------------
_N95_WHITE: BGR = (236.0, 238.0, 238.0)
_STRAP_TAN: BGR = (150.0, 212.0, 234.0)      # braided head straps, light yellow-beige
_METAL: BGR = (200.0, 201.0, 198.0)


def _n95_outline() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 160, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    cy, ax = 758.0, 332.0
    up = s < 0
    p_up, p_lo = 2.3, 2.5
    pw = np.where(up, p_up, p_lo)
    by = np.where(up, 306.0, 304.0)
    x = ax * np.sign(c) * np.abs(c) ** (2.0 / pw)
    y = by * np.sign(s) * np.abs(s) ** (2.0 / pw)
    # egg shape: narrower over the nose than over the chin
    x *= 1.0 - 0.16 * np.clip(-s, 0, 1) ** 2
    return np.stack([x + _MID_X, y + cy], axis=1)


def _draw_n95(c: _Canvas, name: str) -> _Body:
    base = np.asarray(_N95_WHITE, np.float32)
    outline = _n95_outline()
    X, Y = c.grid
    # moulded dome: bright in the middle, falling off towards the rim, lit a little from above
    r2 = ((X - _MID_X) / 332.0) ** 2 + ((Y - 760.0) / 305.0) ** 2
    dome = 0.86 + 0.14 * np.sqrt(_clip01(1.0 - r2))
    shade = dome * (1.0 + 0.03 * _clip01((820.0 - Y) / 300.0)) * _fibre_noise(c, 0.008, seed=23, cell=4.0)
    c.paint(c.coverage(outline), base * shade[..., None], fabric=True)
    # the flat welded rim and its crease
    rim = [outline, _offset(outline, 20.0)]
    c.shade_over(c.coverage(rim), 1.02)
    c.shade_over(c.coverage([_offset(outline, 20.0), _offset(outline, 24.0)]), 0.9)
    # aluminium nose clip along the top
    xs = np.linspace(_MID_X - 100, _MID_X + 100, 31)
    ys = np.array([_y_at_x(outline, x) for x in xs]) + 34.0
    clip = np.stack([xs, ys], 1)
    metal = np.asarray(_METAL, np.float32)
    c.shade_over(c.coverage(_stroke(clip + [0.0, 5.0], 28.0)), 0.85)
    c.paint(c.coverage(_stroke(clip, 26.0)), metal * 0.9, fabric=False)
    c.paint(c.coverage(_stroke(clip - [0.0, 3.0], 16.0)), metal, fabric=False)
    c.paint(c.coverage(_stroke(clip - [0.0, 6.0], 4.0)), metal * 1.15, fabric=False)

    body = _Body(_outline_anchors(outline), [])
    if name == "N95_valve":
        _draw_valve_n95(c)
    # head straps, stapled to the sides of the cup
    up_y, low_y = 612.0, 905.0
    up = np.array([_x_at_y(outline, up_y) + 34.0, up_y])
    low = np.array([_x_at_y(outline, low_y) + 30.0, low_y])
    # the straps run back over the head and under the ears: seen from the front they pass
    # behind the head where they reach the face's outline (jaw landmarks 0 and 4..5), so they
    # end there instead of in the air beyond it
    left = [
        _Strap(tuple(up), (114.0, 430.0), (-6.0, 12.0), 26.0, _STRAP_TAN),
        _Strap(tuple(low), (212.0, 876.0), (0.0, -4.0), 26.0, _STRAP_TAN),
    ]
    body.straps = left + [_Strap(tuple(_mirror(np.array(s.start))), tuple(_mirror(np.array(s.end))),
                                 (-s.bend[0], s.bend[1]), s.width, s.colour) for s in left]
    body.staples = [tuple(up + [6.0, 0.0]), tuple(low + [6.0, 0.0]),
                    tuple(_mirror(up + [6.0, 0.0])), tuple(_mirror(low + [6.0, 0.0]))]
    return body


def _draw_valve_n95(c: _Canvas) -> None:
    """Exhalation valve: a rounded plastic cover with a slotted cap, at the front."""
    X, Y = c.grid
    cx, cy = _MID_X, 812.0
    shadow = _ellipse((cx + 4.0, cy + 10.0), (100.0, 88.0), 64, 3.0)
    c.shade_over(c.coverage(shadow), 0.72)
    plastic = np.asarray((226.0, 228.0, 229.0), np.float32)
    r2 = ((X - cx) / 95.0) ** 2 + ((Y - cy) / 84.0) ** 2
    shade = (0.84 + 0.16 * np.sqrt(_clip01(1 - r2)))[..., None]
    c.paint(c.coverage(_ellipse((cx, cy), (94.0, 82.0), 64, 3.2)), plastic * shade, fabric=False)
    c.paint(c.coverage(_ellipse((cx, cy), (70.0, 58.0), 64, 3.0)), plastic * 0.9 * shade, fabric=False)
    for dy in (-30.0, -10.0, 10.0, 30.0):
        slot = np.array([[cx - 50.0, cy + dy], [cx + 50.0, cy + dy]])
        c.paint(c.coverage(_stroke(np.linspace(slot[0], slot[1], 8), 8.0)), (120.0, 121.0, 123.0), fabric=False)


# -- KN95 --------------------------------------------------------------------------------------
_KN95_WHITE: BGR = (238.0, 239.0, 240.0)


def _kn95_outline() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top_corner = np.array([140.0, 566.0])
    low_corner = np.array([158.0, 796.0])
    half = np.array([
        [500.0, 461.0], [455.0, 468.0], [380.0, 486.0], [300.0, 510.0], [215.0, 538.0],
        top_corner, [128.0, 620.0], [127.0, 690.0], [136.0, 750.0], low_corner,
        [200.0, 872.0], [262.0, 944.0], [336.0, 1006.0], [420.0, 1046.0], [500.0, 1063.0],
    ])
    outline = _chaikin(_symmetric(half), 3)
    return outline, top_corner, low_corner


def _draw_kn95(c: _Canvas, name: str) -> _Body:
    base = np.asarray(_KN95_WHITE, np.float32)
    outline, top_corner, low_corner = _kn95_outline()
    X, Y = c.grid
    dx = np.abs(X - _MID_X)
    # two flat panels folded along the centre seam: each turns away towards its cheek; a
    # soft highlight on the ridge
    shade = 1.0 - 0.16 * _clip01(dx / 380.0) ** 1.6
    shade = shade + 0.04 * np.exp(-(dx / 30.0) ** 2) - 0.03 * _clip01((Y - 900.0) / 160.0)
    shade *= _fibre_noise(c, 0.014, seed=31, cell=4.0)
    c.paint(c.coverage(outline), base * shade[..., None], fabric=True)
    # welded edge: a band of embossed dots just inside the outline
    ring = _offset(outline, 13.0)
    L = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ring, axis=0), axis=1))])
    ts = np.arange(0.0, L[-1], 11.0)
    dots = np.stack([np.interp(ts, L, ring[:, 0]), np.interp(ts, L, ring[:, 1])], 1)
    c.shade_over(c.coverage([_ellipse(p, (2.6, 2.6), 10) for p in dots]), 0.84)
    c.shade_over(c.coverage([_offset(outline, 20.0), _offset(outline, 23.0)]), 0.93)
    # vertical centre seam: pressed weld line with a row of embossed dots either side
    top_y, bot_y = _y_at_x(outline, _MID_X) + 4.0, _y_at_x(outline, _MID_X, top=False) - 4.0
    ys = np.linspace(top_y, bot_y, 40)
    seam = np.stack([np.full_like(ys, _MID_X), ys], 1)
    c.shade_over(c.coverage(_stroke(seam, 5.0)), 0.8)
    c.shade_over(c.coverage(_stroke(seam, 20.0)), 0.95)
    side_dots = [
        _ellipse((_MID_X + sx, y), (2.4, 2.4), 10)
        for y in np.arange(top_y + 12.0, bot_y - 8.0, 11.0) for sx in (-11.0, 11.0)
    ]
    c.shade_over(c.coverage(side_dots), 0.86)
    # the nose wire shows as a faint ridge under the top edge
    wx = np.linspace(_MID_X - 120, _MID_X + 120, 25)
    wy = np.array([_y_at_x(outline, x) for x in wx]) + 32.0
    c.shade_over(c.coverage(_stroke(np.stack([wx, wy], 1), 8.0)), 0.94)

    anchors = _outline_anchors(outline, top_corner)
    straps = _loop_straps(_nearest(outline, top_corner) + [8.0, 4.0],
                          _nearest(outline, low_corner) + [8.0, -4.0], _LOOP_WHITE, 10.0)
    return _Body(anchors, straps)


# -- cloth -------------------------------------------------------------------------------------
_CLOTH: BGR = (100.0, 97.0, 95.0)           # heather charcoal-grey cotton
_ELASTIC_DARK: BGR = (58.0, 58.0, 60.0)


def _cloth_outline() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def top(x: np.ndarray) -> np.ndarray:
        dx = np.abs(np.asarray(x, np.float64) - _MID_X)
        # a contoured mask: the centre seam rises over the nose
        return 464.0 + 58.0 * (1 - np.exp(-(dx / 140.0) ** 2)) + 10.0 * (dx / 400.0) ** 2

    k = np.ones(17)
    k[0:9] = 1.0 + 0.065 * (np.clip(np.arange(9) - 1, 0, None) / 7.0) ** 1.3
    k[9:17] = k[7::-1]
    jaw = _pushed_jaw(k)
    y = 540.0
    for _ in range(20):
        y = float(top(_side_x(y, k)))
    xc = _side_x(y, k) + 6.0
    xs = np.linspace(xc, 2 * _MID_X - xc, 41)
    top_edge = np.stack([xs, top(xs)], 1)
    right = jaw[16:7:-1]
    right = right[right[:, 1] > y + 40]
    left = jaw[1:8]
    left = left[left[:, 1] > y + 40][::-1]
    outline = _chaikin(np.vstack([top_edge, right, left]), 4)
    return outline, np.array([xc, y]), jaw[4] + [8.0, 0.0]


def _draw_cloth(c: _Canvas, name: str) -> _Body:
    base = np.asarray(_CLOTH, np.float32)
    outline, corner, low_corner = _cloth_outline()
    X, Y = c.grid
    dx = np.abs(X - _MID_X)
    shade = (1.0 - 0.06 * ((Y - 720.0) / 360.0) ** 2) * _side_falloff(X, 430.0, 0.16, 2.5)
    # the two halves puff out either side of the centre seam
    shade = shade * (1.0 + 0.05 * np.exp(-((dx - 40.0) / 45.0) ** 2) - 0.10 * np.exp(-(dx / 9.0) ** 2))
    # soft tension wrinkles running from the ear-loop corners towards the middle
    for p0, p1 in (((140.0, 560.0), (330.0, 660.0)), ((165.0, 800.0), (320.0, 760.0))):
        for sgn in (1.0, -1.0):
            a = np.array([_MID_X + sgn * (p0[0] - _MID_X), p0[1]])
            b = np.array([_MID_X + sgn * (p1[0] - _MID_X), p1[1]])
            d = b - a
            L = float(np.hypot(*d))
            t = ((X - a[0]) * d[0] + (Y - a[1]) * d[1]) / L
            perp = np.abs((X - a[0]) * d[1] - (Y - a[1]) * d[0]) / L
            along = _clip01(1.0 - t / L) * (t > 0)
            shade = shade * (1.0 - 0.07 * along * np.exp(-(perp / 14.0) ** 2))
    # woven cotton: fine two-way grain plus heather noise
    # (faded out where its 3.7-unit period would alias on the working grid)
    weave_amp = 0.02 * float(np.clip((2 * np.pi / 1.7 * c.scale - 2.5) / 2.5, 0.0, 1.0))
    weave = 1.0 + weave_amp * np.sin(X * 1.7) * np.sin(Y * 1.7)
    shade = shade * weave * _fibre_noise(c, 0.03, seed=41, cell=3.0)
    c.paint(c.coverage(outline), base * shade[..., None], fabric=True)
    # top-stitching around the edge and the side channels that hold the ear loops
    ring = _offset(outline, 16.0)
    c.shade_over(c.coverage(_dashes(np.vstack([ring, ring[:1]]), 3.5, 13.0, 8.0)), 0.72)
    for sgn in (-1.0, 1.0):
        ys = np.linspace(corner[1] + 40, low_corner[1] - 30, 20)
        xs = np.array([_x_at_y(outline, yy, left=(sgn < 0)) for yy in ys]) - sgn * 48.0
        c.shade_over(c.coverage(_dashes(np.stack([xs, ys], 1), 3.5, 13.0, 8.0)), 0.72)
    # the centre seam itself
    ys = np.linspace(_y_at_x(outline, _MID_X) + 3, _y_at_x(outline, _MID_X, top=False) - 3, 40)
    c.shade_over(c.coverage(_stroke(np.stack([np.full_like(ys, _MID_X), ys], 1), 4.0)), 0.7)

    anchors = _outline_anchors(outline, corner)
    straps = _loop_straps(_nearest(outline, corner) + [6.0, 10.0],
                          _nearest(outline, low_corner) + [8.0, -8.0], _ELASTIC_DARK, 13.0)
    return _Body(anchors, straps)


# -- gas (half-face respirator) ---------------------------------------------------------------
_RUBBER: BGR = (62.0, 63.0, 66.0)
_FRAME: BGR = (44.0, 44.0, 46.0)
_CARTRIDGE: BGR = (150.0, 150.0, 148.0)
_HARNESS: BGR = (104.0, 80.0, 62.0)          # blue-grey elastic


def _gas_outline() -> np.ndarray:
    half = np.array([
        [500.0, 440.0], [468.0, 446.0], [440.0, 462.0], [412.0, 492.0], [382.0, 540.0],
        [350.0, 600.0], [318.0, 662.0], [292.0, 724.0], [276.0, 790.0], [278.0, 860.0],
        [300.0, 930.0], [345.0, 992.0], [415.0, 1040.0], [500.0, 1058.0],
    ])
    return _chaikin(_symmetric(half), 3)


def _draw_gas(c: _Canvas, name: str) -> _Body:
    outline = _gas_outline()
    X, Y = c.grid
    dx = np.abs(X - _MID_X)
    rubber = np.asarray(_RUBBER, np.float32)
    # moulded elastomer: a rounded body with a soft sheen down the nose ridge
    shade = 1.0 - 0.25 * _clip01(dx / 260.0) ** 2
    shade = shade + 0.22 * np.exp(-(dx / 45.0) ** 2) * _clip01((760.0 - Y) / 250.0)
    shade = shade + 0.10 * np.exp(-(((X - _MID_X) / 200.0) ** 2 + ((Y - 930.0) / 60.0) ** 2))
    shade *= _fibre_noise(c, 0.02, seed=53, cell=8.0)
    c.paint(c.coverage(outline), rubber * shade[..., None], fabric=True)
    c.shade_over(c.coverage([outline, _offset(outline, 12.0)]), 1.25)
    # rigid frame (yoke) joining the two cartridge bayonets across the front
    frame_poly = _chaikin(np.array([[300.0, 760.0], [420.0, 736.0], [580.0, 736.0], [700.0, 760.0],
                                    [700.0, 842.0], [580.0, 878.0], [420.0, 878.0], [300.0, 842.0]]), 3)
    frame = np.asarray(_FRAME, np.float32)
    fshade = (1.0 + 0.15 * _clip01((800.0 - Y) / 60.0) - 0.1 * _clip01(dx / 200.0))[..., None]
    c.paint(c.coverage(frame_poly), frame * fshade, fabric=False)
    # exhalation valve cover in the middle, slotted
    cx, cy = _MID_X, 826.0
    valve = np.asarray((92.0, 92.0, 95.0), np.float32)
    vr = np.sqrt(((X - cx) / 66.0) ** 2 + ((Y - cy) / 58.0) ** 2)
    c.paint(c.coverage(_ellipse((cx, cy), (66.0, 58.0), 64, 3.0)), valve * (1.1 - 0.25 * _clip01(vr))[..., None],
            fabric=False)
    for dy in (-24.0, -8.0, 8.0, 24.0):
        c.paint(c.coverage(_stroke(np.linspace([cx - 40.0, cy + dy], [cx + 40.0, cy + dy], 8), 7.0)),
                (38.0, 38.0, 40.0), fabric=False)
    # two round cartridges at the sides, turned outwards (seen as ellipses)
    for sgn in (-1.0, 1.0):
        _draw_cartridge(c, np.array([_MID_X + sgn * 236.0, 800.0]), sgn)
    anchors = _outline_anchors(outline)
    left = [
        _Strap((420.0, 600.0), (10.0, 360.0), (10.0, 40.0), 30.0, _HARNESS, over=False),
        _Strap((318.0, 940.0), (80.0, 930.0), (0.0, 10.0), 30.0, _HARNESS, over=False),
    ]
    straps = left + [_Strap(tuple(_mirror(np.array(s.start))), tuple(_mirror(np.array(s.end))),
                            (-s.bend[0], s.bend[1]), s.width, s.colour, s.over) for s in left]
    return _Body(anchors, straps)


def _draw_cartridge(c: _Canvas, centre: np.ndarray, sgn: float) -> None:
    X, Y = c.grid
    housing = np.asarray(_CARTRIDGE, np.float32)
    ax, ay = 100.0, 122.0
    # the cylinder's side, visible towards the face (darker), then the front face
    side = _ellipse(centre - [sgn * 22.0, -4.0], (ax, ay), 96)
    c.paint(c.coverage(side), housing * 0.45, fabric=False)
    r = np.sqrt(((X - centre[0]) / ax) ** 2 + ((Y - centre[1]) / ay) ** 2)
    # concentric grooves and a lit upper-outer rim
    face_shade = 0.92 + 0.1 * np.cos(r * 17.0) * (r > 0.3) * (r < 0.86) - 0.12 * _clip01((r - 0.86) / 0.14)
    face_shade = face_shade + 0.08 * _clip01((centre[1] - Y) / ay)
    c.paint(c.coverage(_ellipse(centre, (ax, ay), 96)), housing * face_shade[..., None], fabric=False)
    c.paint(c.coverage(_ellipse(centre, (ax * 0.26, ay * 0.26), 48)), housing * 0.7, fabric=False)
    c.paint(c.coverage(_ellipse(centre, (ax * 0.16, ay * 0.16), 48)), housing * 0.95, fabric=False)


# -- type registry ---------------------------------------------------------------------------
_DRAWERS: dict[str, Callable[[_Canvas, str], _Body]] = {
    "surgical": _draw_surgical,
    "surgical_blue": _draw_surgical,
    "surgical_green": _draw_surgical,
    "N95": _draw_n95,
    "N95_valve": _draw_n95,
    "KN95": _draw_kn95,
    "cloth": _draw_cloth,
    "gas": _draw_gas,
    "empty": _draw_region,
    "inpaint": _draw_region,
}


# -- placement warp ----------------------------------------------------------------------------
class _PlacementMap:
    """Moves a correct-wear body to another placement.

    A point keeps its horizontal position relative to the jaw half-width at its height
    (u = (x-500)/W(y)); heights map linearly from the body's [top, bottom] span to the
    placement's.  The source jaw is pushed so its chin is the body's bottom, the target so
    its chin is the placement's bottom; both half-widths vanish at the bottom together.
    """

    def __init__(self, src_span: tuple[float, float], dst_span: tuple[float, float]) -> None:
        self.s0, self.s1 = src_span
        self.d0, self.d1 = dst_span
        self.ks = _k_for_bottom(self.s1)
        self.kd = _k_for_bottom(self.d1)

    def forward(self, pts: np.ndarray) -> np.ndarray:
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        y2 = self.d0 + (p[:, 1] - self.s0) * (self.d1 - self.d0) / (self.s1 - self.s0)
        ws, wd = _half_width(p[:, 1], self.ks), _half_width(y2, self.kd)
        ratio = np.where(ws > 1e-6, wd / np.maximum(ws, 1e-6), 0.0)
        return np.stack([_MID_X + (p[:, 0] - _MID_X) * ratio, y2], axis=1)

    def inverse_grid(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target canonical grids -> source canonical coordinates (float32, same shape)."""
        ys = self.s0 + (Y.astype(np.float64) - self.d0) * (self.s1 - self.s0) / (self.d1 - self.d0)
        wd = _half_width(Y.astype(np.float64), self.kd)
        ws = _half_width(ys, self.ks)
        xs = np.where(wd > 1e-3, _MID_X + (X - _MID_X) * ws / np.maximum(wd, 1e-3), -1e5)
        return xs.astype(np.float32), ys.astype(np.float32)


def _remap(body: _Canvas, pm: _PlacementMap) -> _Canvas:
    X, Y = body.grid
    xs, ys = pm.inverse_grid(X, Y)
    mx = ((xs - body.origin[0]) * body.scale).astype(np.float32)
    my = ((ys - body.origin[1]) * body.scale).astype(np.float32)
    out = body.blank_like()
    stack = np.dstack([body.col, body.alpha, body.fab])
    moved = cv2.remap(stack, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out.col, out.alpha, out.fab = (np.ascontiguousarray(moved[..., :3]), np.ascontiguousarray(moved[..., 3]),
                                   np.ascontiguousarray(moved[..., 4]))
    return out


def _draw_strap(c: _Canvas, s: _Strap, start: np.ndarray) -> None:
    end = np.asarray(s.end, np.float64)
    mid = (start + end) / 2 + np.asarray(s.bend)
    curve = _bezier(start, mid, end, 32)
    base = np.asarray(s.colour, np.float32)
    # a flat band / round cord: slightly darker edges, lit middle
    c.paint(c.coverage(_stroke(curve, s.width)), base * 0.86, fabric=False)
    c.paint(c.coverage(_stroke(curve + [0.0, -s.width * 0.08], s.width * 0.7)), base, fabric=False)


# -- drawing entry points -------------------------------------------------------------------------
def quantise_scale(scale: float) -> float:
    """Snap a scale to a geometric ladder (2^(1/8) steps, 1/64..2) so the cache stays small."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    q = 2.0 ** (round(math.log2(scale) * 8.0) / 8.0)
    return float(min(max(q, 1.0 / 64.0), 2.0))


def canonical_name(name: str) -> str:
    """The built-in's canonical spelling (case-insensitive); ValueError if not built in."""
    try:
        return _BY_LOWER[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown built-in mask {name!r}; known: {', '.join(BUILTIN_TYPES)}") from None


def is_builtin(name: object) -> bool:
    """True for the names :func:`draw_builtin` draws (``spec.BUILTIN_TYPES``, any case)."""
    return isinstance(name, str) and name.lower() in _BY_LOWER


def draw_builtin(mask_type: str, placement: str = "correct", scale: float = 0.25) -> MaskArt:
    """Draw a built-in mask in the canonical frame at ``scale`` pixels per canonical unit
    (quantised, see :func:`quantise_scale`).  Cached per (type, placement, scale) in a
    256 MB LRU; the returned arrays are read-only.  One scale an octave is drawn (~30-60 ms),
    the others are resampled from the next drawn one above (~1-4 ms): a folder of faces of
    every size, or a run over all types, no longer spends most of its first seconds drawing."""
    name = canonical_name(mask_type)
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")
    q = quantise_scale(scale)
    art = _CACHE.get((name, placement, q))
    if art is None:
        top = _drawn_scale(q)
        art = _draw(name, placement, q) if top == q else _resample(draw_builtin(name, placement, top), q)
        art = _CACHE.put((name, placement, q), art)
    return art


#: of the ladder's 8 scales an octave, every this-many-th is drawn (one an octave); the ones
#: between are resampled from the next drawn scale above (:func:`_resample`)
DRAW_EVERY = 8


def _drawn_scale(q: float) -> float:
    """The ladder scale that art at quantised scale ``q`` comes from: itself, or the next
    drawn one above it (a whole number of :data:`DRAW_EVERY` steps, at most 2)."""
    step = round(math.log2(q) * 8.0)
    return float(min(2.0 ** (-(-step // DRAW_EVERY) * DRAW_EVERY / 8.0), 2.0))


class _ArtCache:
    """LRU cache of drawn art bounded by bytes, not entries: one art at scale 2 is ~15 MB,
    at the usual 0.1-0.3 well under 1 MB.  Thread-safe; two threads may draw the same key
    once each (drawing is deterministic, the first stored wins)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, float], MaskArt] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, float]) -> MaskArt | None:
        with self._lock:
            art = self._items.get(key)
            if art is not None:
                self._items.move_to_end(key)
            return art

    def put(self, key: tuple[str, str, float], art: MaskArt) -> MaskArt:
        with self._lock:
            if key in self._items:
                return self._items[key]
            self._items[key] = art
            self._bytes += art.bgra.nbytes + art.fabric.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.bgra.nbytes + old.fabric.nbytes
            return art

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_CACHE = _ArtCache(max_bytes=256 * 2 ** 20)


def clear_cache() -> None:
    """Forget all drawn art (tests; memory)."""
    _CACHE.clear()


def _as_points(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, np.float64).reshape(-1, 2)


def _draw(name: str, placement: str, scale: float) -> MaskArt:
    # supersample (an integer factor k, then INTER_AREA): at least 2x below scale 1, and
    # enough that thin details (pleat lines, seams, 10-unit loops) get >= 0.5 px per unit
    k = max(2, math.ceil(0.5 / scale)) if scale < 1.0 else 1
    out_w = int(math.ceil((_FRAME_X1 - _FRAME_X0) * scale)) + 1
    out_h = int(math.ceil((_FRAME_Y1 - _FRAME_Y0) * scale)) + 1
    ws = scale * k
    # an INTER_AREA block of k pixels is centred (k-1)/2 working pixels after its first one
    w_origin = (_FRAME_X0 - (k - 1) / (2 * ws), _FRAME_Y0 - (k - 1) / (2 * ws))
    body = _Canvas(w_origin, ws, out_w * k, out_h * k)
    info = _DRAWERS[name](body, name)

    anchors = info.anchors.astype(np.float64)
    span = _PLACEMENT_SPAN[placement]
    move: Callable[[np.ndarray], np.ndarray] = _as_points  # correct wear: nothing moves
    if span is not None:
        pm = _PlacementMap((float(anchors[1, 1]), float(anchors[4, 1])), span)
        body = _remap(body, pm)
        move = pm.forward
        anchors = pm.forward(anchors)

    canvas = body.blank_like()
    for s in info.straps:
        if not s.over:
            _draw_strap(canvas, s, move(np.array(s.start))[0])
    canvas.over(body)
    for s in info.straps:
        if s.over:
            _draw_strap(canvas, s, move(np.array(s.start))[0])
    for p in info.staples:
        q = move(np.array(p))[0]
        canvas.paint(canvas.coverage(_ellipse(q, (9.0, 4.0), 16)), (175.0, 176.0, 178.0), fabric=False)

    _clip_to_hull(canvas, scale)
    return _finish(canvas, k, out_w, out_h, scale, anchors, name, placement)


def _clip_to_hull(c: _Canvas, scale: float) -> None:
    """Clip a canvas's layers (in place) to the mesh hull shrunk by a little more than one
    pixel at output ``scale``, so that the downsampled edge cannot leak outside it."""
    cov = c.coverage(_offset(MESH_HULL.astype(np.float64), 1.5 / scale))
    hull = np.zeros_like(c.alpha)
    hull[cov.sl] = cov.arr
    c.col *= hull[..., None]
    c.alpha *= hull
    c.fab *= hull


def _finish(c: _Canvas, k: int, out_w: int, out_h: int, scale: float, anchors: np.ndarray,
            name: str, placement: str) -> MaskArt:
    """Downsample premultiplied layers, un-premultiply, bleed colour, crop, freeze."""
    if k > 1:
        size = (out_w, out_h)
        col = cv2.resize(c.col, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(c.alpha, size, interpolation=cv2.INTER_AREA)
        fab = cv2.resize(c.fab, size, interpolation=cv2.INTER_AREA)
    else:
        col, alpha, fab = c.col, c.alpha, c.fab
    return _freeze(col, alpha, fab, (_FRAME_X0, _FRAME_Y0), scale, anchors, name, placement)


def _resample(art: MaskArt, scale: float) -> MaskArt:
    """``art`` brought to a smaller ``scale`` (by a factor of 0.55 or more): its premultiplied
    layers area-averaged, as :func:`_finish` downsamples a drawing, clipped to the hull as a
    drawing is, and frozen alike.  ~1-4 ms against ~30-60 ms for a drawing."""
    f = scale / art.scale
    a = art.bgra[..., 3].astype(np.float32) * np.float32(1.0 / 255.0)
    col = art.bgra[..., :3].astype(np.float32) * a[..., None]
    fab = art.fabric.astype(np.float32) * np.float32(1.0 / 255.0) * a
    # cv2.resize with fx (no dsize) maps output pixel x onto input (x + 0.5) / f - 0.5
    shift = 0.5 / scale - 0.5 / art.scale
    c = _Canvas((art.origin[0] + shift, art.origin[1] + shift), scale, 0, 0)
    c.col, c.alpha, c.fab = (cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) for x in (col, a, fab))
    c.h, c.w = c.alpha.shape
    _clip_to_hull(c, scale)        # the drawing's own clip is fewer than 1.5 px inside at this scale
    return _freeze(c.col, c.alpha, c.fab, tuple(c.origin), scale, art.canonical_anchors().astype(np.float64),
                   art.name, art.placement)


def _freeze(col: np.ndarray, alpha: np.ndarray, fab: np.ndarray, origin0: tuple[float, float],
            scale: float, anchors: np.ndarray, name: str, placement: str) -> MaskArt:
    """Premultiplied float layers whose pixel (0, 0) sits at canonical ``origin0`` ->
    read-only :class:`MaskArt` (un-premultiplied, colour bled, cropped); ``anchors``
    canonical (6,2)."""
    out_h, out_w = alpha.shape[:2]
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    solid = a8 > 0
    straight = col / np.maximum(alpha, 1e-6)[..., None]
    straight = _bleed(straight, alpha, solid)
    fabric = np.where(solid, np.rint(255.0 * _clip01(fab / np.maximum(alpha, 1e-6))), 0).astype(np.uint8)

    ys, xs = np.nonzero(solid)
    if len(xs) == 0:
        raise RuntimeError(f"drawing {name}/{placement} at scale {scale} produced no pixels")
    x0, x1 = max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, out_w)
    y0, y1 = max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, out_h)
    bgra = np.dstack([np.clip(np.rint(straight), 0, 255).astype(np.uint8), a8])[y0:y1, x0:x1].copy()
    fabric = fabric[y0:y1, x0:x1].copy()
    origin = (origin0[0] + x0 / scale, origin0[1] + y0 / scale)
    anchors_px = ((anchors - np.asarray(origin)) * scale).astype(np.float32)
    for arr in (bgra, fabric, anchors_px):
        arr.setflags(write=False)
    return MaskArt(bgra, fabric, origin, scale, anchors_px, name, placement)


def _bleed(straight: np.ndarray, alpha: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Fill the colour of transparent pixels from nearby opaque ones (normalised blur), so a
    bilinear warp of straight alpha never mixes in black at the edges."""
    out = straight.copy()
    w = (alpha * solid).astype(np.float32)
    if not solid.any():
        return out
    premul = straight * w[..., None]
    fill = np.zeros_like(straight)
    have = np.zeros(alpha.shape, bool)
    for sigma in (1.5, 4.0, 12.0):
        num = cv2.GaussianBlur(premul, (0, 0), sigma)
        den = cv2.GaussianBlur(w, (0, 0), sigma)
        ok = (den > 1e-4) & ~have
        fill[ok] = num[ok] / den[ok][:, None]
        have |= ok
    mean = premul.reshape(-1, 3).sum(0) / max(float(w.sum()), 1e-6)
    fill[~have] = mean
    out[~solid] = fill[~solid]
    return out


# -- MaskTheFace packs ------------------------------------------------------------------------------
_ANCHOR_KEYS = tuple(f"mask_{c}" for c in "abcdef")
#: anchors are homography correspondences, not pixels: they may lie outside their PNG (the
#: original pack has 8 templates with points up to 12% of the width outside); further out
#: than this fraction of the size is taken for a typo
_ANCHOR_SLACK = 0.5


def read_image_unchanged(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file as stored (works with non-ASCII paths); None if undecodable."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def _to_bgra8(img: np.ndarray, where: str) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
    elif img.dtype != np.uint8:
        raise ValueError(f"{where}: unsupported pixel type {img.dtype}")
    img = img.astype(np.uint8)
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"{where}: a template needs an alpha channel (RGBA PNG), got shape {img.shape}")
    return img


def _resolve_template(root: Path, rel: str) -> Path | None:
    """``template:`` paths are relative to the pack's parent in the original
    (``masks/templates/x.png``); try that, the pack itself, and the basename under
    ``templates/``."""
    p = Path(rel.strip().strip('"').strip("'"))
    candidates = [p] if p.is_absolute() else [root.parent / p, root / p]
    candidates += [root / "templates" / p.name, root / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _parse_point(value: str, where: str) -> tuple[float, float]:
    parts = [s for s in value.replace(";", ",").split(",") if s.strip()]
    if len(parts) != 2:
        raise ValueError(f"{where}: expected 'x, y', got {value!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{where}: expected two numbers 'x, y', got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{where}: non-finite point {value!r}")
    return x, y


def load_pack(root: str | os.PathLike) -> MaskPack:
    """Load a MaskTheFace-format pack: ``root/masks.cfg`` (or the cfg file itself), its
    RGBA templates and the texture images under ``root/textures``.

    Sections without a ``template`` key (the original's ``empty``/``inpaint`` region tools)
    are skipped.  Raises FileNotFoundError when there is no masks.cfg and ValueError on a
    malformed cfg, a missing or alpha-less template or anchors far outside the image.
    """
    root_p = Path(root)
    cfg_path = root_p if root_p.is_file() else root_p / "masks.cfg"
    root_p = cfg_path.parent
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no masks.cfg in {str(root)!r}")
    parser = configparser.ConfigParser(interpolation=None, strict=True, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(cfg_path.read_text(encoding="utf-8-sig"), source=str(cfg_path))
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {cfg_path}: {e}") from e

    templates: dict[str, Template] = {}
    for name in parser.sections():
        sec = parser[name]
        where = f"{cfg_path} [{name}]"
        if "template" not in sec:
            log.debug("%s: no template, skipped (region tool)", where)
            continue
        missing = [key for key in _ANCHOR_KEYS if key not in sec]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        anchors = np.array([_parse_point(sec[key], f"{where} {key}") for key in _ANCHOR_KEYS], np.float32)
        path = _resolve_template(root_p, sec["template"])
        if path is None:
            raise ValueError(f"{where}: template {sec['template']!r} not found")
        img = read_image_unchanged(path)
        if img is None:
            raise ValueError(f"{where}: cannot decode template {str(path)!r}")
        bgra = _to_bgra8(img, f"{where} {path.name}")
        h, w = bgra.shape[:2]
        slack_x, slack_y = _ANCHOR_SLACK * w, _ANCHOR_SLACK * h
        if (np.any(anchors[:, 0] < -slack_x) or np.any(anchors[:, 0] > w - 1 + slack_x)
                or np.any(anchors[:, 1] < -slack_y) or np.any(anchors[:, 1] > h - 1 + slack_y)):
            raise ValueError(f"{where}: anchors {anchors.tolist()} lie far outside the {w}x{h} template")
        if cv2.contourArea(cv2.convexHull(anchors)) < 1e-3 * w * h:
            raise ValueError(f"{where}: anchors {anchors.tolist()} are degenerate (collinear)")
        bgra.setflags(write=False)
        anchors.setflags(write=False)
        templates[name] = Template(name, bgra, anchors)
    if not templates:
        raise ValueError(f"{cfg_path}: no templates")

    tex_dir = root_p / "textures"
    textures = tuple(sorted(
        str(p) for p in tex_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )) if tex_dir.is_dir() else ()
    log.info("loaded mask pack %s: %d templates, %d textures", root_p, len(templates), len(textures))
    return MaskPack(str(root_p), templates, textures)
