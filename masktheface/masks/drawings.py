"""The built-in mask types, each drawn by our own code on a :class:`~.canvas._Canvas` in
the canonical frame: surgical (white, blue, green), N95 (with or without a valve), KN95,
cloth, gas (a half-face respirator) and the region tools (``empty``, ``inpaint``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .canvas import (
    _MID_X,
    _MOUTH_Y,
    _NOSE_B_Y,
    BGR,
    _Body,
    _Canvas,
    _chaikin,
    _clip01,
    _dashes,
    _ellipse,
    _fibre_noise,
    _loop_straps,
    _mirror,
    _nearest,
    _offset,
    _pushed_jaw,
    _side_falloff,
    _side_x,
    _smoothstep,
    _Strap,
    _stroke,
    _x_at_y,
    _y_at_x,
)

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
