"""Built-in mask art, the MaskTheFace pack loader and procedural textures."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from masktheface import masks as M
from masktheface import textures as T
from masktheface.canonical import CANONICAL_68, MESH_HULL
from masktheface.datadir import shared_data
from masktheface.spec import BUILTIN_TYPES, EXTRA_TYPES, PLACEMENTS, RANDOM_TYPES, REGION_TYPES

SCALES = (0.125, 0.25)
PACK = shared_data("masktheface_templates", "masks")
needs_pack = pytest.mark.skipif(PACK is None or not (PACK / "masks.cfg").is_file(),
                                reason="MaskTheFace pack not found in the shared data (masktheface_templates/masks)")

ALL = [(n, p) for n in BUILTIN_TYPES for p in PLACEMENTS]


@pytest.fixture(scope="module")
def pack() -> M.MaskPack:
    return M.load_pack(PACK)


def _alpha_at(art: M.MaskArt, pts: np.ndarray) -> np.ndarray:
    """Alpha (0..255) of the art at canonical points (nearest pixel; 0 outside the array)."""
    px = np.rint((np.asarray(pts, np.float64) - art.origin) * art.scale).astype(int)
    h, w = art.bgra.shape[:2]
    out = np.zeros(len(px), int)
    ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    out[ok] = art.bgra[px[ok, 1], px[ok, 0], 3]
    return out


def _fabric_colour(art: M.MaskArt) -> np.ndarray:
    sel = (art.bgra[..., 3] == 255) & (art.fabric == 255)
    return np.median(art.bgra[..., :3][sel].astype(np.float64), axis=0)


# -- built-in art ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,placement", ALL)
@pytest.mark.parametrize("scale", SCALES)
def test_art_is_well_formed(name: str, placement: str, scale: float) -> None:
    art = M.draw_builtin(name, placement, scale)
    h, w = art.bgra.shape[:2]
    assert art.bgra.dtype == np.uint8 and art.bgra.shape == (h, w, 4)
    assert art.fabric.dtype == np.uint8 and art.fabric.shape == (h, w)
    assert art.anchors.dtype == np.float32 and art.anchors.shape == (6, 2)
    assert art.scale == M.quantise_scale(scale) and art.name == name and art.placement == placement
    assert not art.bgra.flags.writeable and not art.fabric.flags.writeable   # cached: read-only

    alpha = art.bgra[..., 3]
    assert (alpha == 255).sum() / art.scale ** 2 > 40_000, "alpha is (nearly) empty (canonical units^2)"
    # anti-aliased: a rim of intermediate values, not a hard 0/255 edge
    assert ((alpha > 0) & (alpha < 255)).sum() > 0.5 * (h + w)
    # fabric only where the art is
    assert not np.any((art.fabric > 0) & (alpha == 0))
    # within the mesh hull (the warp clips everything outside it)
    hull_px = np.rint((MESH_HULL - art.origin) * art.scale * 16).astype(np.int32)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [hull_px], 1, cv2.LINE_8, 4)
    assert alpha[inside == 0].max(initial=0) <= 4

    a, b, c, d, e, f = art.anchors.astype(np.float64)
    assert a[0] < b[0] < c[0] and d[0] < b[0] < f[0]
    assert e[1] > b[1] and b[1] < d[1] < e[1] and b[1] < f[1] < e[1]
    assert abs(a[1] - c[1]) < 1e-3 and abs(d[1] - f[1]) < 1e-3   # symmetric drawings
    assert abs(b[0] - e[0]) < 1e-3
    # every anchor on the drawn mask (or its anti-aliased edge)
    cov = cv2.dilate(alpha, np.ones((5, 5), np.uint8))
    for p in art.anchors:
        u, v = int(round(p[0])), int(round(p[1]))
        assert 0 <= u < w and 0 <= v < h and cov[v, u] > 0, (name, placement, p)


@pytest.mark.parametrize("name", BUILTIN_TYPES)
def test_art_is_centred_and_consistent_across_scales(name: str) -> None:
    """Pixel (u,v) <-> origin + (u,v)/scale: the alpha centroid in canonical units is on the
    symmetry line x=500 and does not move with the scale."""
    cents = []
    for s in (0.125, 0.18, 0.25):
        art = M.draw_builtin(name, "correct", s)
        a = art.bgra[..., 3].astype(np.float64)
        v, u = np.mgrid[0:a.shape[0], 0:a.shape[1]]
        cx = (u * a).sum() / a.sum() / art.scale + art.origin[0]
        cy = (v * a).sum() / a.sum() / art.scale + art.origin[1]
        cents.append((cx, cy))
        assert abs(cx - 500.0) < 0.6 / art.scale, (name, s, cx)
    cents = np.array(cents)
    assert np.ptp(cents[:, 1]) < 6.0


@pytest.mark.parametrize("name", RANDOM_TYPES + EXTRA_TYPES)
def test_masks_cover_nose_mouth_chin_not_eyes(name: str) -> None:
    lm = CANONICAL_68
    eyes = lm[36:48]
    correct = M.draw_builtin(name, "correct", 0.25)
    assert np.all(_alpha_at(correct, lm[[30, 33, 51, 57, 62, 66, 48, 54, 8]]) >= 250)
    assert np.all(_alpha_at(correct, eyes) == 0)
    below = M.draw_builtin(name, "below_nose", 0.25)
    assert np.all(_alpha_at(below, lm[[30, 33]]) == 0), "below_nose must leave the nose tip out"
    assert np.all(_alpha_at(below, lm[[51, 57, 62, 66, 8]]) >= 250)
    assert np.all(_alpha_at(below, eyes) == 0)
    chin = M.draw_builtin(name, "chin", 0.25)
    assert np.all(_alpha_at(chin, lm[[33, 51, 57, 62, 66]]) == 0), "chin must leave the mouth out"
    assert np.all(_alpha_at(chin, lm[[8]]) >= 250)


def test_natural_colours() -> None:
    def col(n: str) -> np.ndarray:
        return _fabric_colour(M.draw_builtin(n, "correct", 0.25))

    for white in ("surgical", "N95", "KN95"):
        b, g, r = col(white)
        assert min(b, g, r) > 200 and max(b, g, r) - min(b, g, r) < 15, white
    b, g, r = col("surgical_blue")
    assert b > r + 50 and b > g + 15, "surgical_blue is not blue"
    b, g, r = col("surgical_green")
    assert g > r + 25 and g > b + 10, "surgical_green is not green"
    lum = col("cloth").mean()
    assert 60 < lum < 160
    assert col("gas").mean() < 90, "the respirator body is dark rubber"
    # straps/filters are not fabric
    gas = M.draw_builtin("gas", "correct", 0.25)
    assert ((gas.fabric == 0) & (gas.bgra[..., 3] == 255)).sum() > 0.1 * (gas.bgra[..., 3] == 255).sum()


def test_no_dark_fringe() -> None:
    """Colour under the anti-aliased rim (and just outside it) is the mask's, not black."""
    art = M.draw_builtin("surgical", "correct", 0.25)
    a = art.bgra[..., 3]
    rim = (a > 0) & (a < 128)
    lum = art.bgra[..., :3].mean(axis=2)
    assert lum[rim].min() > 150
    outside = (a == 0) & (cv2.dilate(a, np.ones((3, 3), np.uint8)) > 0)
    assert lum[outside].min() > 150


def test_region_types_are_the_surgical_outline() -> None:
    for name in REGION_TYPES:
        for placement in PLACEMENTS:
            region = M.draw_builtin(name, placement, 0.25)
            surgical = M.draw_builtin("surgical", placement, 0.25)
            assert np.all(region.fabric[region.bgra[..., 3] > 0] == 255)
            np.testing.assert_allclose(region.canonical_anchors(), surgical.canonical_anchors(), atol=1e-3)
    assert M.draw_builtin("inpaint").bgra.tobytes() == M.draw_builtin("empty").bgra.tobytes()


def test_valve_variant_differs_only_by_its_valve() -> None:
    plain, valve = M.draw_builtin("N95", scale=0.25), M.draw_builtin("N95_valve", scale=0.25)
    assert plain.bgra.shape == valve.bgra.shape
    diff = np.any(plain.bgra != valve.bgra, axis=2)
    assert 0.01 < diff.mean() < 0.15
    assert (valve.fabric == 0).sum() > (plain.fabric == 0).sum()


def test_deterministic_and_cached() -> None:
    first = M.draw_builtin("cloth", "below_nose", 0.2)
    assert M.draw_builtin("CLOTH", "below_nose", 0.2) is first     # same quantised key
    copy = (first.bgra.copy(), first.fabric.copy(), first.anchors.copy(), first.origin)
    M.clear_cache()
    again = M.draw_builtin("cloth", "below_nose", 0.2)
    assert again is not first
    assert again.bgra.tobytes() == copy[0].tobytes() and again.fabric.tobytes() == copy[1].tobytes()
    np.testing.assert_array_equal(again.anchors, copy[2])
    assert again.origin == copy[3]


def test_names_and_errors() -> None:
    assert M.is_builtin("surgical") and M.is_builtin("n95") and M.is_builtin("N95_valve")
    assert M.is_builtin("empty") and not M.is_builtin("bandana") and not M.is_builtin(None)
    assert M.draw_builtin("kn95").name == "KN95"
    assert set(RANDOM_TYPES).isdisjoint(REGION_TYPES)
    with pytest.raises(ValueError, match="unknown built-in"):
        M.draw_builtin("bandana")
    with pytest.raises(ValueError, match="placement"):
        M.draw_builtin("surgical", "forehead")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            M.draw_builtin("surgical", "correct", bad)
    assert M.quantise_scale(0.25) == 0.25 and M.quantise_scale(100.0) == 2.0
    assert M.quantise_scale(M.quantise_scale(0.137)) == M.quantise_scale(0.137)


# -- MaskTheFace packs ---------------------------------------------------------------------------
@needs_pack
def test_load_masktheface_pack(pack: M.MaskPack) -> None:
    assert len(pack.templates) == 21
    for name, t in pack.templates.items():
        h, w = t.bgra.shape[:2]
        assert t.name == name and t.bgra.dtype == np.uint8 and t.bgra.shape[2] == 4
        assert t.bgra[..., 3].min() == 0 and t.bgra[..., 3].max() == 255
        assert t.anchors.shape == (6, 2) and t.anchors.dtype == np.float32
        # anchors are homography correspondences: the original's gas/KN95/N95 side views and
        # surgical front put some up to 12% of the width outside their PNGs
        assert np.all(t.anchors[:, 0] >= -0.15 * w) and np.all(t.anchors[:, 0] <= 1.15 * w)
        assert np.all(t.anchors[:, 1] >= 0) and np.all(t.anchors[:, 1] < h)
    assert set(pack.views("surgical")) == {"front", "left", "right"}
    assert set(pack.views("N95")) == {"front", "left", "right"}
    assert pack.views("bandana") == {}
    assert "surgical_blue" in pack.types() and "surgical_left" not in pack.types()
    np.testing.assert_array_equal(pack.templates["surgical"].anchors[1], [307, 22])
    assert len(pack.textures) > 10
    assert all(Path(p).suffix.lower() in (".png", ".jpg", ".jpeg") for p in pack.textures)


def _write_pack(root: Path, cfg: str, png: np.ndarray | None = None, where: str = "templates/x.png") -> Path:
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if png is not None:
        path = root / "masks" / where
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), png)
    (root / "masks" / "masks.cfg").write_text(cfg)
    return root / "masks"


def _rgba(h: int = 40, w: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    cv2.rectangle(img, (5, 5), (w - 6, h - 6), (200, 180, 120, 255), -1)
    return img


GOOD = """
; a comment
[x]
template:   masks/templates/x.png
mask_a: 5, 8
mask_b: 30, 5
mask_c: 55, 8
mask_d: 5, 30
mask_e: 30, 35
mask_f: 55, 30   ; inline comment

[empty]
"""


def test_pack_in_tmp_resolves_template_paths(tmp_path: Path) -> None:
    root = _write_pack(tmp_path, GOOD, _rgba())
    loaded = M.load_pack(root)
    assert list(loaded.templates) == ["x"] and loaded.textures == ()
    np.testing.assert_array_equal(loaded.templates["x"].anchors[5], [55, 30])
    assert list(M.load_pack(root / "masks.cfg").templates) == ["x"]       # the cfg file itself
    # path relative to the pack itself, and only a basename that lives under templates/
    for rel in ("templates/x.png", "elsewhere/x.png"):
        (root / "masks.cfg").write_text(GOOD.replace("masks/templates/x.png", rel))
        assert "x" in M.load_pack(root).templates


@pytest.mark.parametrize("cfg,match", [
    ("template = x.png\n", "malformed"),                                     # no section header
    (GOOD.replace("mask_e: 30, 35\n", ""), "missing mask_e"),
    (GOOD.replace("mask_b: 30, 5", "mask_b: thirty, 5"), "two numbers"),
    (GOOD.replace("mask_b: 30, 5", "mask_b: 30"), "expected 'x, y'"),
    (GOOD.replace("masks/templates/x.png", "masks/templates/nope.png"), "not found"),
    (GOOD + "\n[x]\ntemplate: x.png\n", "malformed"),                       # duplicate section
    (GOOD.replace("mask_c: 55, 8", "mask_c: 500, 8"), "outside"),
    (GOOD.replace("mask_d: 5, 30", "mask_d: 5, 5").replace("mask_e: 30, 35", "mask_e: 30, 5")
     .replace("mask_f: 55, 30", "mask_f: 55, 5").replace("mask_a: 5, 8", "mask_a: 5, 5")
     .replace("mask_c: 55, 8", "mask_c: 55, 5"), "degenerate"),
    ("[empty]\n[inpaint]\n", "no templates"),
])
def test_malformed_pack(tmp_path: Path, cfg: str, match: str) -> None:
    root = _write_pack(tmp_path, cfg, _rgba())
    with pytest.raises(ValueError, match=match):
        M.load_pack(root)


def test_pack_template_problems(tmp_path: Path) -> None:
    root = _write_pack(tmp_path, GOOD, _rgba()[..., :3])                   # no alpha channel
    with pytest.raises(ValueError, match="alpha"):
        M.load_pack(root)
    (root / "templates" / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="decode"):
        M.load_pack(root)
    with pytest.raises(FileNotFoundError):
        M.load_pack(tmp_path / "nowhere")


# -- textures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", T.PATTERNS)
def test_patterns(name: str) -> None:
    img = T.pattern(name, (64, 96))
    assert img.dtype == np.uint8 and img.shape == (64, 96, 3)
    assert img.std() > 10, "a pattern, not a flat colour"
    assert T.pattern(name, (64, 96)).tobytes() == img.tobytes()
    r1 = T.pattern(name, (64, 96), rng=np.random.default_rng(1))
    r1b = T.pattern(name, (64, 96), rng=np.random.default_rng(1))
    assert r1.tobytes() == r1b.tobytes()
    assert any(T.pattern(name, (64, 96), rng=np.random.default_rng(s)).tobytes() != r1.tobytes()
               for s in range(2, 6))
    # tileable: the wrap-around seam is no harder an edge than any inside the swatch
    f = img.astype(np.float64)
    for axis in (0, 1):
        inner = np.abs(np.diff(f, axis=axis)).mean(axis=(1 - axis, 2)).max()
        seam = np.abs(np.take(f, 0, axis=axis) - np.take(f, -1, axis=axis)).mean()
        assert seam <= 1.1 * inner + 2.0, (name, axis, seam, inner)


def test_pattern_colours_and_errors() -> None:
    img = T.pattern("dots", (48, 48), colors=["#ff0000", (0, 255, 0)])
    counts = {tuple(c) for c in img.reshape(-1, 3)}
    assert (0, 0, 255) in counts and (0, 255, 0) in counts               # '#ff0000' is red: BGR (0,0,255)
    with pytest.raises(ValueError):
        T.pattern("paisley", (8, 8))
    with pytest.raises(ValueError):
        T.pattern("dots", (0, 8))
    with pytest.raises(ValueError):
        T.pattern("dots", (8, 8), colors=["#12345"])


def test_load_texture(tmp_path: Path) -> None:
    gray = (np.arange(30 * 40) % 255).astype(np.uint8).reshape(30, 40)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgba = np.zeros((10, 10, 4), np.uint8)                                 # fully transparent -> white
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    deep = (np.full((8, 8, 3), 65535, np.uint16))
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    uni = tmp_path / "stoff mit ümlaut.v2.png"
    cv2.imencode(".png", np.full((6, 6, 3), 77, np.uint8))[1].tofile(str(uni))

    g = T.load_texture(tmp_path / "g.png")
    assert g.shape == (30, 40, 3) and g.dtype == np.uint8 and np.all(g[..., 0] == gray)
    assert np.all(T.load_texture(tmp_path / "a.png") == 255)
    assert np.all(T.load_texture(tmp_path / "d.png") == 255)
    assert np.all(T.load_texture(uni) == 77)
    assert T.load_texture(tmp_path / "g.png") is g                         # cached
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((50, 3000, 3), np.uint8))
    assert max(T.load_texture(big).shape[:2]) == 1024

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for bad in ("bad.png", "empty.jpg", "missing.png"):
        with pytest.raises(ValueError):
            T.load_texture(tmp_path / bad)
    with pytest.raises(ValueError):
        T.load_texture(tmp_path)                                          # a directory


def test_resolve_texture(tmp_path: Path) -> None:
    assert T.resolve_texture("checks").shape == (256, 256, 3)
    assert T.resolve_texture(" Stripes ", size_hw=(20, 30)).shape == (20, 30, 3)
    p = tmp_path / "my-fabric.png"                                        # dashes in paths are fine
    cv2.imwrite(str(p), np.full((5, 7, 3), 9, np.uint8))
    assert T.resolve_texture(str(p)).shape == (5, 7, 3)
    arr = np.zeros((3, 3, 3), np.uint8)
    assert T.resolve_texture(arr) is arr
    for bad in ("nothing-like-this", ""):
        with pytest.raises(ValueError):
            T.resolve_texture(bad)


@needs_pack
def test_resolve_pack_textures(pack: M.MaskPack) -> None:
    a = T.resolve_texture("check_1", pack)
    assert a.ndim == 3 and a.shape[2] == 3
    assert T.resolve_texture("check/check_1.png", pack) is a
    assert T.resolve_texture("textures/check/check_1.png", pack) is a
    assert T.resolve_texture("masks/textures/check/check_1.png", pack) is a
    assert T.resolve_texture(os.path.join(PACK, "textures", "check", "check_1.png")) is a
    with pytest.raises(ValueError, match="pack"):
        T.resolve_texture("check_99", pack)


@pytest.mark.parametrize("name", ["N95", "N95_valve"])
def test_n95_straps_end_at_the_face_outline(name: str) -> None:
    """Head straps pass behind the head where they meet the face's outline: no strap pixel
    lies beyond the jaw outline (landmarks 0..16) beside the cup's upper half, where they used
    to end in the air."""
    art = M.draw_builtin(name, "correct", 0.25)
    a = art.bgra[..., 3]
    vv, uu = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    x = art.origin[0] + uu / art.scale
    y = art.origin[1] + vv / art.scale
    jaw = CANONICAL_68[0:9].astype(np.float64)                       # left half of the outline
    outline_x = np.interp(y, jaw[:, 1], jaw[:, 0])
    beside = (y >= 380) & (y <= 760) & (x < outline_x - 6) & (x < 400)
    assert a[beside].max() < 64, "a strap reaches beyond the face outline"
