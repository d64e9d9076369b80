"""Fabric textures: procedural patterns drawn by our own code, and texture image files.

``pattern(name, (H, W))`` draws a tileable swatch, uint8 (H,W,3) BGR: the pattern repeats a
whole number of times across each side, so ``np.tile`` of the swatch has no seams (up to
one-pixel rounding for the scattered patterns).  With an ``rng`` the palette, period and
phase are drawn at random (deterministically from that generator); without one the
default look is returned.  ``resolve_texture`` maps a spec string (a pattern name, a file
path, or a texture of a MaskTheFace pack) to an array; file loads are cached.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import cv2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .masks import MaskPack

log = logging.getLogger(__name__)

PATTERNS: tuple[str, ...] = ("checks", "stripes", "dots", "houndstooth", "camo", "floral")

Color = Union[str, Sequence[int], Sequence[float]]

# Natural palettes, BGR.  The first is each pattern's default.
_PALETTES: dict[str, list[list[tuple[int, int, int]]]] = {
    "checks": [  # gingham: ground, thread colour (the crossings get the full colour)
        [(244, 244, 240), (110, 62, 35)],    # navy gingham
        [(242, 244, 246), (52, 44, 196)],    # red gingham
        [(235, 240, 242), (60, 110, 40)],    # green
        [(40, 36, 34), (45, 40, 175)],       # buffalo check (black / red)
    ],
    "stripes": [
        [(110, 62, 35), (240, 240, 236)],                      # navy / white breton
        [(70, 70, 72), (190, 190, 192), (235, 235, 235)],      # greys
        [(60, 70, 150), (225, 232, 240), (140, 100, 60)],      # brick / cream / denim
        [(90, 130, 60), (230, 236, 238)],                      # green / white
    ],
    "dots": [  # ground, dot
        [(110, 62, 35), (242, 242, 242)],
        [(38, 36, 36), (240, 240, 240)],
        [(60, 50, 170), (240, 244, 246)],
        [(235, 240, 245), (140, 90, 50)],
    ],
    "houndstooth": [
        [(36, 36, 38), (232, 234, 234)],
        [(40, 40, 90), (220, 230, 236)],
        [(70, 50, 40), (200, 215, 225)],
    ],
    "camo": [  # base, then layers on top
        [(95, 130, 140), (50, 90, 70), (50, 75, 100), (32, 34, 34)],      # woodland
        [(150, 185, 200), (110, 150, 170), (80, 110, 130), (60, 80, 95)],  # desert
        [(150, 150, 150), (110, 110, 110), (70, 70, 72), (210, 210, 210)],  # urban
    ],
    "floral": [  # ground, petals..., centre, leaf
        [(220, 238, 245), (150, 120, 230), (210, 140, 110), (60, 200, 245), (80, 140, 90)],
        [(70, 40, 30), (200, 190, 245), (245, 245, 245), (70, 190, 240), (90, 130, 70)],
        [(180, 215, 235), (70, 80, 200), (120, 170, 240), (50, 60, 120), (70, 120, 80)],
    ],
}
#: how many colours each pattern uses (a shorter ``colors`` list is padded from the default)


def parse_color(c: Color) -> tuple[int, int, int]:
    """'#rrggbb' / 'rrggbb' (RGB, as written on the web) or a BGR triple -> BGR ints."""
    if isinstance(c, str):
        s = c.strip().lstrip("#")
        if len(s) == 3:
            s = "".join(ch * 2 for ch in s)
        if len(s) != 6:
            raise ValueError(f"bad colour {c!r}: expected #rrggbb")
        try:
            r, g, b = int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
        except ValueError:
            raise ValueError(f"bad colour {c!r}: expected #rrggbb") from None
        return b, g, r
    vals = [int(round(float(v))) for v in c]
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals):
        raise ValueError(f"bad colour {c!r}: expected a BGR triple in 0..255")
    return vals[0], vals[1], vals[2]


def _palette(name: str, rng: np.random.Generator | None, colors: Sequence[Color] | None) -> np.ndarray:
    options = _PALETTES[name]
    pal = options[int(rng.integers(len(options)))] if rng is not None else options[0]
    out = [tuple(float(v) for v in p) for p in pal]
    if colors:
        for i, c in enumerate(list(colors)[: len(out)]):
            out[i] = tuple(float(v) for v in parse_color(c))
    return np.array(out, np.float32)


def _repeats(length: int, period: float) -> float:
    """A period close to ``period`` that divides ``length`` a whole number of times."""
    return length / max(1, round(length / period))


def _band(coord: np.ndarray, period: float, duty: float, phase: float = 0.0) -> np.ndarray:
    """Anti-aliased periodic band: coverage of [0, duty*period) in each period, float32 in [0,1].

    ``coord`` holds pixel-centre coordinates in pixels; the signed distance to the nearest
    band edge (in pixels) drives a one-pixel ramp."""
    u = np.mod(coord - phase, period)
    w = duty * period
    inside = np.minimum(u, w - u)
    outside = -np.minimum(u - w, period - u)
    sd = np.where(u < w, inside, outside)
    return np.clip(sd + 0.5, 0.0, 1.0).astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _mix(base: np.ndarray, colour: np.ndarray, cov: np.ndarray) -> np.ndarray:
    return base * (1 - cov[..., None]) + colour.reshape(1, 1, 3) * cov[..., None]


def _checks(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    cell = max(4.0, min(h, w) / 8.0) * (float(rng.uniform(0.7, 1.4)) if rng is not None else 1.0)
    px, py = _repeats(w, 2 * cell), _repeats(h, 2 * cell)
    X, Y = _grid(h, w)
    phase = float(rng.uniform(0, px)) if rng is not None else 0.0
    vx = _band(X, px, 0.5, phase)
    vy = _band(Y, py, 0.5, phase * py / px)
    # gingham: each band tints half way; where two cross, the full thread colour shows
    ground, thread = pal[0], pal[1]
    half = 0.5 * (ground + thread)
    img = np.broadcast_to(ground, (h, w, 3)).astype(np.float32)
    img = _mix(img, half, np.maximum(vx, vy))
    return _mix(img, thread, vx * vy)


def _stripes(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    period = max(6.0, min(h, w) / 5.0) * (float(rng.uniform(0.6, 1.5)) if rng is not None else 1.0)
    orient = int(rng.integers(3)) if rng is not None else 2     # 0 vertical, 1 horizontal, 2 diagonal
    X, Y = _grid(h, w)
    if orient == 0:
        t, p = X, _repeats(w, period)
    elif orient == 1:
        t, p = Y, _repeats(h, period)
    else:
        # 45 degrees, tileable: one period along x and along y each divide the swatch
        p = _repeats(w, period * 1.41421356)
        py = _repeats(h, period * 1.41421356)
        t = X + Y * (p / py)
    n = len(pal)
    img = np.broadcast_to(pal[0], (h, w, 3)).astype(np.float32)
    # colour i covers [i/n, 1) of the period: layering gives n bands of equal width
    for i in range(1, n):
        cov = _band(t, p, 1.0 - i / n, phase=p * i / n)
        img = _mix(img, pal[i], cov)
    return img


def _dots(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    cell = max(6.0, min(h, w) / 6.0) * (float(rng.uniform(0.7, 1.4)) if rng is not None else 1.0)
    px, py = _repeats(w, cell), _repeats(h, cell)
    r = 0.22 * min(px, py) * (float(rng.uniform(0.8, 1.25)) if rng is not None else 1.0)
    X, Y = _grid(h, w)
    # two interleaved lattices (staggered polka dots)
    u, v = np.mod(X, px), np.mod(Y, py)
    d1 = np.hypot(np.minimum(u, px - u), np.minimum(v, py - v))
    d2 = np.hypot(u - px / 2, v - py / 2)
    cov = np.clip(r - np.minimum(d1, d2) + 0.5, 0.0, 1.0)
    img = np.broadcast_to(pal[0], (h, w, 3)).astype(np.float32)
    return _mix(img, pal[1], cov)


def _houndstooth(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    # a 2/2 twill of 4 dark + 4 light threads both ways *is* houndstooth: 8x8 thread repeat
    unit = max(1.0, min(h, w) / 48.0) * (float(rng.uniform(0.7, 1.5)) if rng is not None else 1.0)
    nx = max(1, round(w / (8 * unit)))
    ny = max(1, round(h / (8 * unit)))
    ss = 4
    X, Y = _grid(h * ss, w * ss)
    i = np.floor(X / (w * ss) * nx * 8).astype(np.int32)
    j = np.floor(Y / (h * ss) * ny * 8).astype(np.int32)
    warp_dark = (i % 8) < 4
    weft_dark = (j % 8) < 4
    shows_warp = ((i + j) % 4) < 2
    dark = np.where(shows_warp, warp_dark, weft_dark).astype(np.float32)
    dark = cv2.resize(dark, (w, h), interpolation=cv2.INTER_AREA)
    img = np.broadcast_to(pal[1], (h, w, 3)).astype(np.float32)
    return _mix(img, pal[0], dark)


def _periodic_noise(h: int, w: int, feature: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth, exactly periodic noise (Gaussian-filtered white noise in Fourier space),
    float32 (h,w), zero mean, unit std."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    sigma_f = 1.0 / (2 * np.pi * max(feature, 1.0) / 2.5)
    filt = np.exp(-(fx ** 2 + fy ** 2) / (2 * sigma_f ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * filt))
    field -= field.mean()
    return (field / max(field.std(), 1e-9)).astype(np.float32)


def _camo(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    g = rng if rng is not None else np.random.default_rng(20240611)
    feature = max(4.0, min(h, w) / 5.0) * (float(g.uniform(0.7, 1.3)) if rng is not None else 1.0)
    img = np.broadcast_to(pal[0], (h, w, 3)).astype(np.float32)
    for colour, thresh in zip(pal[1:], (0.1, 0.45, 0.95)):
        f = _periodic_noise(h, w, feature, g)
        # ~1.5 px ramp at the blob edges: the gradient of f is ~ 1/feature per pixel
        cov = np.clip((f - thresh) * feature / 2.0 + 0.5, 0.0, 1.0)
        img = _mix(img, colour, cov)
    return img


def _floral(h: int, w: int, pal: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    g = rng if rng is not None else np.random.default_rng(7)
    ss = 2                               # drawn at 2x, area-downsampled: smooth petals
    H, W = h * ss, w * ss
    cell = max(10.0, min(h, w) / 4.0) * (float(g.uniform(0.8, 1.3)) if rng is not None else 1.0)
    nx, ny = max(1, round(w / cell)), max(1, round(h / cell))
    cx, cy = W / nx, H / ny
    ground, petals, centre, leaf = pal[0], pal[1:-2], pal[-2], pal[-1]
    img = np.empty((H, W, 3), np.float32)
    img[:] = ground
    shift = 4
    one = 1 << shift

    def ellipse(c: tuple[float, float], axes: tuple[float, float], angle: float, colour: np.ndarray) -> None:
        # drawn at every wrap-around offset so the swatch tiles
        for ox in (-W, 0, W):
            for oy in (-H, 0, H):
                cv2.ellipse(img, (int((c[0] + ox) * one), int((c[1] + oy) * one)),
                            (max(1, int(axes[0] * one)), max(1, int(axes[1] * one))), angle, 0, 360,
                            tuple(float(v) for v in colour), -1, cv2.LINE_AA, shift)

    for j in range(ny):
        for i in range(nx):
            x = (i + 0.5 + (0.5 if j % 2 else 0.0) + g.uniform(-0.2, 0.2)) * cx
            y = (j + 0.5 + g.uniform(-0.2, 0.2)) * cy
            size = min(cx, cy) * g.uniform(0.28, 0.36)
            rot = g.uniform(0, 72)
            colour = petals[int(g.integers(len(petals)))]
            la = rot + g.uniform(20, 50)
            lx = x + np.cos(np.radians(la)) * size * 1.3
            ly = y + np.sin(np.radians(la)) * size * 1.3
            ellipse((lx, ly), (size * 0.55, size * 0.22), la, leaf)
            for k in range(5):
                a = np.radians(rot + 72 * k)
                px_, py_ = x + np.cos(a) * size * 0.55, y + np.sin(a) * size * 0.55
                ellipse((px_, py_), (size * 0.52, size * 0.32), np.degrees(a), colour)
            ellipse((x, y), (size * 0.24, size * 0.24), 0, centre)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


_DRAW = {"checks": _checks, "stripes": _stripes, "dots": _dots, "houndstooth": _houndstooth,
         "camo": _camo, "floral": _floral}


def pattern(name: str, size_hw: tuple[int, int] = (256, 256), rng: np.random.Generator | None = None,
            colors: Sequence[Color] | None = None) -> np.ndarray:
    """Draw a procedural fabric pattern -> uint8 (H,W,3) BGR, tileable.

    ``colors``: '#rrggbb' strings or BGR triples replacing the palette's first colours
    (ground first).  ``rng``: random palette / period / phase; None gives the default look
    (cached, so the array returned is then read-only).
    """
    key = str(name).strip().lower()
    if key not in _DRAW:
        raise ValueError(f"unknown pattern {name!r}; known: {', '.join(PATTERNS)}")
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"pattern size must be positive, got {size_hw!r}")
    if rng is None:
        cols = tuple(parse_color(c) for c in colors) if colors else None
        return _pattern_default(key, h, w, cols)
    return _render(key, h, w, rng, colors)


def _render(key: str, h: int, w: int, rng: np.random.Generator | None, colors: Sequence[Color] | None) -> np.ndarray:
    pal = _palette(key, rng, colors)
    img = _DRAW[key](h, w, pal, rng)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _pattern_default(key: str, h: int, w: int, colors: tuple[tuple[int, int, int], ...] | None) -> np.ndarray:
    img = _render(key, h, w, None, colors)
    img.setflags(write=False)
    return img


# -- files -------------------------------------------------------------------------------------
def load_texture(path: str | os.PathLike, max_side: int = 1024) -> np.ndarray:
    """Read a texture image -> uint8 (H,W,3) BGR (read-only, cached per file version).

    Grayscale is expanded, 16-bit scaled, transparency composited over white, and images
    larger than ``max_side`` are area-downscaled (the renderer tiles textures at a few
    hundred pixels at most).  ValueError when the file is missing or not a readable image.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise ValueError(f"texture {str(path)!r} cannot be read: {e.strerror or e}") from None
    if not p.is_file():
        raise ValueError(f"texture {str(path)!r} is not a file")
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, int(max_side))


@lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int, size: int, max_side: int) -> np.ndarray:
    from .masks import read_image_unchanged  # one decoder for templates and textures

    img = read_image_unchanged(path)
    if img is None or img.size == 0:
        raise ValueError(f"texture {path!r} is not a readable image")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        a = img[..., 3:4].astype(np.float32) / 255.0
        img = np.rint(img[..., :3].astype(np.float32) * a + 255.0 * (1 - a)).astype(np.uint8)
    elif img.shape[2] != 3:
        raise ValueError(f"texture {path!r}: unsupported channel count {img.shape[2]}")
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    log.debug("loaded texture %s %s", path, img.shape)
    return img


def resolve_texture(spec: str | os.PathLike | np.ndarray, pack: "MaskPack | None" = None,
                    size_hw: tuple[int, int] = (256, 256), rng: np.random.Generator | None = None) -> np.ndarray:
    """A texture spec -> uint8 (H,W,3) BGR.

    ``spec`` is a built-in pattern name (``"checks"``), an image path, or, with a pack, a
    path relative to the pack (``textures/check/check_1.png``, or the original's
    ``masks/textures/...``) or a pack texture's file name with or without extension
    (``check_1``).  An array passes through (validated).  ValueError when nothing matches.
    """
    if isinstance(spec, np.ndarray):
        if spec.dtype != np.uint8 or spec.ndim != 3 or spec.shape[2] != 3:
            raise ValueError(f"texture array must be uint8 (H,W,3), got {spec.dtype} {spec.shape}")
        return spec
    s = os.fspath(spec).strip()
    if not s:
        raise ValueError("empty texture spec")
    if s.lower() in _DRAW:
        return pattern(s.lower(), size_hw, rng)
    candidates = [Path(s).expanduser()]
    if pack is not None:
        root = Path(pack.root)
        candidates += [root / s, root.parent / s]
    for c in candidates:
        if c.is_file():
            return load_texture(c)
    if pack is not None:
        want = s.replace("\\", "/").lower()
        tex_root = Path(pack.root) / "textures"
        for t in pack.textures:
            tp = Path(t)
            names = {tp.name.lower(), tp.stem.lower()}
            for base in (Path(pack.root), tex_root):
                if tp.is_relative_to(base):
                    rel = tp.relative_to(base).as_posix().lower()
                    names |= {rel, rel.rsplit(".", 1)[0]}
            if want in names:
                return load_texture(tp)
    raise ValueError(f"unknown texture {s!r}: not a pattern ({', '.join(PATTERNS)}) "
                     f"nor a readable image file{' in the pack' if pack is not None else ''}")
