"""From a drawing to the art the renderer warps: placements, straps, the clip to the mesh
hull, downsampling, the scale ladder and the cache (:func:`draw_builtin`)."""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..canonical import MESH_HULL
from ..spec import BUILTIN_TYPES, PLACEMENTS
from .canvas import (
    _FRAME_X0,
    _FRAME_X1,
    _FRAME_Y0,
    _FRAME_Y1,
    _MID_X,
    _PLACEMENT_SPAN,
    _bezier,
    _Canvas,
    _clip01,
    _ellipse,
    _half_width,
    _k_for_bottom,
    _offset,
    _Strap,
    _stroke,
)
from .drawings import _DRAWERS

_BY_LOWER = {n.lower(): n for n in BUILTIN_TYPES}

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
