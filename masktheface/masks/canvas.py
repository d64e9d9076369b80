"""The drawing board of the built-in masks: the canonical frame, geometry helpers, the
premultiplied canvas and the shading every mask type shares."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import cv2
import numpy as np

from ..canonical import CANONICAL_68

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
