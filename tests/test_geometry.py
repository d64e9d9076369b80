"""Pure geometry and spec parsing: hand-made landmark sets, no dlib, no data."""
import numpy as np
import pytest

from masktheface import align, geometry
from masktheface.canonical import CANONICAL_68, MIRROR_68, mesh_vertices
from masktheface.render import WarpError, mesh_triangles, warp_mesh
from masktheface.spec import MaskSpec, SpecError, draw_rng, item_rng, normalise_type, parse_code, parse_hex, variant_rng


def _rot(pts, deg, centre=(500, 600)):
    t = np.radians(deg)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (pts - centre) @ R.T + centre


def test_canonical_is_symmetric_and_mirror_is_involution():
    assert np.array_equal(MIRROR_68[MIRROR_68], np.arange(68))
    m = CANONICAL_68[MIRROR_68].copy()
    m[:, 0] = 1000 - m[:, 0]
    assert np.allclose(m, CANONICAL_68, atol=1e-3)


def test_six_points_on_the_mean_face():
    g = geometry.analyse(CANONICAL_68)
    a, b, c, d, e, f = g.six
    assert g.status == "ok" and not g.approximate and g.view == "front"
    assert a[0] < b[0] < c[0] and d[0] < e[0] < f[0]
    assert abs(a[1] - b[1]) < 1 and abs(c[1] - b[1]) < 1  # a, b, c on one horizontal line
    assert e[1] > d[1] > b[1]
    assert np.allclose(e, CANONICAL_68[8], atol=2)
    assert abs(g.tilt_deg) < 1e-6


@pytest.mark.parametrize("deg", [-30, -10, 10, 30])
def test_roll_is_not_tilt(deg):
    g = geometry.analyse(_rot(CANONICAL_68, deg))
    assert abs(g.tilt_deg) < 1e-3
    assert abs(g.roll_deg - deg) < 1e-3
    # six points rotate with the face
    assert np.allclose(g.six, _rot(geometry.analyse(CANONICAL_68).six, deg), atol=1.0)


def test_turned_face_has_tilt_and_view():
    lm = CANONICAL_68.copy()
    lm[30:36, 0] += 150   # nose tip swings to the image right: the head turns right
    lm[29, 0] += 100
    g = geometry.analyse(lm)
    assert g.tilt_deg > geometry.VIEW_TILT_DEG and g.view == "right"
    lm2 = CANONICAL_68.copy()
    lm2[30:36, 0] -= 150
    lm2[29, 0] -= 100
    assert geometry.analyse(lm2).view == "left"


def test_odd_landmarks_never_raise():
    bad = np.full((68, 2), np.nan)
    assert geometry.analyse(bad).status == "geometry_failed"
    tiny = CANONICAL_68 * 0.005
    assert geometry.analyse(tiny).status == "geometry_failed"
    flat = CANONICAL_68.copy()
    flat[:, 1] = 500
    g = geometry.analyse(flat)
    assert g.status == "geometry_failed"
    off = CANONICAL_68 + 5000
    assert geometry.analyse(off, (250, 250, 3)).status == "geometry_failed"
    # a partial face at the border is still fine
    assert geometry.analyse(CANONICAL_68 * 0.25 - [20, 0], (300, 300, 3)).status == "ok"


def test_mesh_covers_every_vertex_and_folds_are_rejected():
    tris = mesh_triangles()
    assert set(np.unique(tris)) == set(range(len(mesh_vertices(CANONICAL_68))))
    art = np.full((300, 260, 4), 255, np.uint8)
    lm = CANONICAL_68 * 0.25
    w = warp_mesh(art, (0.0, 0.0), 0.25, lm, (400, 400, 3))
    assert w.alpha.max() == pytest.approx(1.0)
    mirrored = lm.copy()
    mirrored[:, 0] = 250 - mirrored[:, 0]  # left/right swapped without mirroring indices: a fold
    with pytest.raises(WarpError):
        warp_mesh(art, (0.0, 0.0), 0.25, mirrored, (400, 400, 3))


def test_aligned_transforms():
    lm = CANONICAL_68 * 0.2 + 30
    M = align.transform_112(lm)
    five = align.five_points(lm)
    mapped = five @ M[:, :2].T + M[:, 2]
    assert np.abs(mapped - align.ARCFACE_112).max() < 6
    M160 = align.transform_160(lm)
    box = lm.min(0) @ M160[:, :2].T + M160[:, 2], lm.max(0) @ M160[:, :2].T + M160[:, 2]
    assert 0 < box[0].min() and box[1].max() < 160
    with pytest.raises(ValueError):
        align.align_transform(lm, 128)


def test_parse_code_and_specs():
    specs = parse_code("surgical-#0473e2, N95, cloth-checks, cloth-/data/my-fab-ric.png")
    assert [s.mask_type for s in specs] == ["surgical", "N95", "cloth", "cloth"]
    assert specs[0].color == "#0473e2" and specs[2].texture == "checks"
    assert specs[3].texture == "/data/my-fab-ric.png"
    assert parse_code("[KN95,n95]")[1].mask_type == "N95"
    assert parse_hex("#fff") == (255, 255, 255)
    assert parse_hex("0473e2") == (0xE2, 0x73, 0x04)
    for bad in ("", "surgical,", "surgical-#12345g", "-checks", "N95-"):
        with pytest.raises(SpecError):
            parse_code(bad)
    with pytest.raises(SpecError):
        MaskSpec("cloth", color_weight=1.5)
    with pytest.raises(SpecError):
        MaskSpec("cloth", placement="forehead")
    assert MaskSpec("cloth", texture="/x/y/fab ric.png", placement="chin").label == "cloth-fab_ric-chin"


def test_item_rng_is_stable():
    a = item_rng(7, "id/ä b.c.jpg", 1).integers(1 << 30, size=4)
    b = item_rng(7, "id/ä b.c.jpg", 1).integers(1 << 30, size=4)
    c = item_rng(7, "id/ä b.c.jpg", 2).integers(1 << 30, size=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


_PINNED_VARIANT, _PINNED_DRAW = 1052930910, 981232291


def test_named_streams_are_stable_and_distinct():
    def draw(rng):
        return tuple(rng.integers(1 << 30, size=4))

    key = "id/ä b.c.jpg"
    assert draw(variant_rng(7, key, "N95")) == draw(variant_rng(7, key, "N95"))
    streams = {draw(variant_rng(7, key, "N95")), draw(variant_rng(7, key, "cloth")),
               draw(variant_rng(8, key, "N95")), draw(variant_rng(7, key + "x", "N95")),
               draw(draw_rng(7, key, "N95")), draw(draw_rng(7, key, "mixed")), draw(item_rng(7, key))}
    assert len(streams) == 7
    # pinned: a change here silently changes every data set and evaluation drawn so far
    assert int(variant_rng(0, "a/b.jpg", "masked").integers(1 << 30)) == _PINNED_VARIANT
    assert int(draw_rng(0, "a/b.jpg", "mixed").integers(1 << 30)) == _PINNED_DRAW


def test_type_names_are_canonicalised():
    assert normalise_type("n95_valve") == "N95_valve" and normalise_type(" KN95 ") == "KN95"
    assert normalise_type("white") == "surgical" and normalise_type("my_pack_Mask") == "my_pack_Mask"
    assert parse_code("n95_VALVE")[0].mask_type == "N95_valve"


def test_primary_face_is_usable_large_and_central():
    shape = (250, 250, 3)
    centred = (90, 90, 160, 160)          # 70 px, in the middle
    bystander = (0, 0, 90, 90)            # 90 px, in the corner
    big_near = (60, 60, 180, 180)         # 120 px, near the middle
    ok = geometry.analyse(CANONICAL_68)
    bad = geometry.analyse(np.full((68, 2), np.nan))
    assert geometry.primary_face([bystander, centred], shape) == 1
    assert geometry.primary_face([centred, big_near], shape) == 1
    assert geometry.primary_face([centred], shape) == 0
    assert geometry.primary_face([], shape) is None
    # a failed fit is never primary, however large; no usable face -> None
    assert geometry.primary_face([big_near, centred], shape, [bad, ok]) == 1
    assert geometry.primary_face([big_near], shape, [bad]) is None
    with pytest.raises(ValueError):
        geometry.primary_face([big_near], shape, [])
    # a detection the face check rejected (Face.plausible False) never qualifies either
    from types import SimpleNamespace
    patch = SimpleNamespace(box=big_near, plausible=False)
    face = SimpleNamespace(box=centred, plausible=True)
    assert geometry.primary_face([patch, face], shape, [ok, ok]) == 1
    assert geometry.primary_face([patch], shape) is None


def test_box_iou():
    assert geometry.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert geometry.box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert geometry.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert geometry.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
