"""Realism effects (masktheface.realism): seeded, switchable, and doing what they claim."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from masktheface import realism
from masktheface.canonical import CANONICAL_68
from masktheface.datadir import DATA_HINT, shared_data
from masktheface.pipeline import Masker, MaskerConfig
from masktheface.spec import MaskSpec

DATA = shared_data()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "lfw").is_dir(),
                                reason=f"real faces not found ({DATA_HINT})")
BUSH = "lfw/lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg"


@pytest.fixture(scope="module")
def real() -> Masker:
    return Masker(MaskerConfig(realism=True))


@pytest.fixture(scope="module")
def clean() -> Masker:
    return Masker(MaskerConfig(realism=False))


def test_look_is_seeded_and_clean_is_nothing():
    a = realism.draw_look(np.random.default_rng(5))
    assert a == realism.draw_look(np.random.default_rng(5))
    assert a != realism.draw_look(np.random.default_rng(6))
    assert realism.CLEAN.clean and not a.clean
    assert realism.draw_look(np.random.default_rng(5), "chin").height == 0.0   # placements keep their height


def test_vary_fit_moves_the_top_and_keeps_the_chin():
    lm = CANONICAL_68.astype(np.float32) * 0.2
    moved = realism.vary_fit(lm, realism.Look(height=0.15, skew=0.05))
    nose = lm[30] - lm[27]
    np.testing.assert_allclose(moved[27] - lm[27], 0.15 * nose + 0.05 * np.linalg.norm(nose) * np.array(
        [-nose[1], nose[0]]) / np.linalg.norm(nose), atol=1e-3)
    np.testing.assert_array_equal(moved[5:12], lm[5:12])           # jaw below the mouth, chin
    np.testing.assert_array_equal(realism.vary_fit(lm, realism.CLEAN), lm)


@needs_data
def test_realism_is_reproducible_and_switchable(real, clean):
    bgr = cv2.imread(str(DATA / BUSH))
    a = real.mask(bgr, MaskSpec("surgical"), np.random.default_rng(1))
    b = real.mask(bgr, MaskSpec("surgical"), np.random.default_rng(1))
    c = real.mask(bgr, MaskSpec("surgical"), np.random.default_rng(2))
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    flat = clean.mask(bgr, MaskSpec("surgical"), np.random.default_rng(1))
    outside = flat.alpha == 0
    assert np.array_equal(flat.image[outside], bgr[outside])        # the clean look touches nothing else
    changed = np.abs(a.image.astype(int) - bgr).max(axis=2) > 2
    assert changed[a.alpha == 0].sum() > 50                         # the shadow ring falls outside the mask
    assert (a.image[a.alpha == 0].astype(int) <= bgr[a.alpha == 0].astype(int) + 1).all()  # only darker


@needs_data
def test_fit_heights_vary_over_draws(real):
    bgr = cv2.imread(str(DATA / BUSH))
    tops = []
    for seed in range(6):
        res = real.mask(bgr, MaskSpec("surgical"), np.random.default_rng(seed))
        lm = res.faces[0].landmarks
        ts = np.linspace(-0.5, 1.5, 201)
        pts = np.round(lm[27] + ts[:, None] * (lm[30] - lm[27])).astype(int)
        on = res.alpha[pts[:, 1], pts[:, 0]] > 0.5
        tops.append(float(ts[np.argmax(on)]))
        assert res.alpha[int(lm[30, 1]) + 2, int(lm[30, 0])] > 0.5      # the nose tip stays covered
    assert np.ptp(tops) > 0.08


@needs_data
def test_grain_matches_a_noisy_photo(real, clean):
    bgr = cv2.imread(str(DATA / BUSH))
    noisy = np.clip(bgr + np.random.default_rng(0).normal(0, 9, bgr.shape), 0, 255).astype(np.uint8)

    def ratio(res):
        luma = realism._luma(res.image.astype(np.float32))
        core = cv2.erode((res.alpha > 0.95).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        skin = np.zeros_like(core)
        x0, y0, x1, y1 = realism.skin_region(res.faces[0].landmarks, bgr.shape)
        skin[y0:y1, x0:x1] = True
        return realism._highpass_sd(luma, core) / realism._highpass_sd(luma, skin & (res.alpha < 0.05))

    r_real = ratio(real.mask(noisy, MaskSpec("surgical_blue"), np.random.default_rng(3)))
    r_clean = ratio(clean.mask(noisy, MaskSpec("surgical_blue"), np.random.default_rng(3)))
    assert r_clean < 0.6                 # a clean sticker glows on a noisy photo
    assert 0.7 < r_real < 1.3


@needs_data
def test_mask_takes_the_light_tint(real):
    bgr = cv2.imread(str(DATA / BUSH)).astype(np.float32)
    warm = np.clip(bgr * [0.8, 1.0, 1.2], 0, 255).astype(np.uint8)     # orange light (BGR)
    cool = np.clip(bgr * [1.2, 1.0, 0.8], 0, 255).astype(np.uint8)     # blue light

    def mask_bgr(img):
        res = real.mask(img, MaskSpec("surgical"), np.random.default_rng(4))
        return res.image[res.alpha > 0.95].astype(np.float32).mean(0)

    w, c = mask_bgr(warm), mask_bgr(cool)
    assert w[2] - w[0] > c[2] - c[0] + 5          # redder under the warm light, bluer under the cool


def test_jpeg_quality_is_read_from_the_header():
    from masktheface.imageio import jpeg_quality
    img = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    for q in (10, 40, 75, 95, 100):
        assert jpeg_quality(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()) == q
    assert jpeg_quality(cv2.imencode(".png", img)[1].tobytes()) is None
    assert jpeg_quality(b"\xff\xd8\xff") is None and jpeg_quality(b"") is None


def test_compression_matching_touches_only_the_mask_and_is_seeded():
    rng = np.random.default_rng(1)
    img = np.full((64, 80, 3), 150, np.uint8)
    img[20:44, 24:56] = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    alpha = np.zeros((64, 80), np.float32)
    alpha[20:44, 24:56] = 1.0
    a = realism.match_compression(img, alpha, 30, np.random.default_rng(3))
    b = realism.match_compression(img, alpha, 30, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, img)
    assert np.array_equal(a[alpha == 0], img[alpha == 0])           # nothing outside the mask changes
    assert realism.match_compression(img, alpha, None) is img        # not a JPEG
    assert realism.match_compression(img, alpha, 95) is img          # artefacts below the output's own


@needs_data
def test_masks_carry_the_photos_jpeg_blocking(real, clean):
    """A photo saved at JPEG quality 30: the clean mask is smoother across the 8 px block
    grid than the face around it; with realism the mask's blocking is of the face's order
    (tools/realism_stats.blockiness, mask / visible face)."""
    from masktheface.pipeline import Variant
    from masktheface.realism import _luma
    from tools.realism_stats import _face_skin, blockiness
    bgr = cv2.imread(str(DATA / BUSH))
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes()
    ratios = {}
    for name, m in (("clean", clean), ("real", real)):
        p = m.process(data, "bush.jpg", [Variant("s", (MaskSpec("surgical"),))], seed=2, fmt="png", keep_alpha=True)
        o = p.outputs[0]
        out = cv2.imdecode(np.frombuffer(o.image, np.uint8), cv2.IMREAD_COLOR)
        core = cv2.erode((o.alpha > 0.95).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        luma = _luma(out.astype(np.float32))
        ratios[name] = blockiness(luma, core) / blockiness(luma, _face_skin(o.alpha, o.faces[0].landmarks))
    # measured: clean 0.81, realism 1.25 (PNG output, so no blocking but the photo's own)
    assert ratios["real"] - ratios["clean"] > 0.25 and 0.85 <= ratios["real"] <= 1.4, ratios


def test_light_tint_follows_warm_light_but_not_a_ruddy_skin():
    from masktheface.realism import SKIN_RATIO, light_tint

    typical = SKIN_RATIO * 120.0
    assert np.allclose(light_tint(typical), 1.0, atol=1e-3)
    # warm light (blue-yellow): the tint takes it whole
    warm = light_tint(typical * np.array([0.92, 1.0, 1.08]))
    assert warm[0] < 0.93 and warm[2] > 1.07
    # a ruddy face (less green than a typical skin, same light): a white mask must not turn
    # pink, so only GREEN_MAGENTA_KEEP (0.35) of it is taken as light
    ruddy = light_tint(typical * np.array([1.0, 0.9, 1.0]))
    full = np.array([1.0, 0.9, 1.0]) / np.mean([1.0, 0.9, 1.0])
    assert abs(ruddy[1] - 1.0) < 0.4 * abs(full[1] - 1.0)
    assert ruddy[1] < 1.0 and ruddy[0] == pytest.approx(ruddy[2], abs=1e-3)


def test_light_tint_needs_the_scene_to_agree_along_blue_yellow():
    from masktheface.realism import _BLUE_YELLOW, SCENE_BIAS, SKIN_RATIO, light_tint

    pale = SKIN_RATIO * 120.0 * np.array([1.15, 1.0, 0.87])         # bluer than a typical skin
    grey = np.exp(SCENE_BIAS * _BLUE_YELLOW) * 150.0                   # a scene with the usual lean
    assert light_tint(pale)[0] > 1.05                                  # alone: read as cool light
    assert np.allclose(light_tint(pale, grey), 1.0, atol=0.02)        # the scene says neutral
    cool_scene = grey * np.array([1.1, 1.0, 0.9])
    both = light_tint(pale, cool_scene)
    assert 1.02 < both[0] < light_tint(pale)[0] + 1e-6                 # both cool: the smaller reading
    warm_scene = grey * np.array([0.9, 1.0, 1.1])
    assert light_tint(pale, warm_scene)[0] == pytest.approx(light_tint(pale, grey)[0], abs=1e-6)


def test_scene_light_leaves_the_face_out():
    from masktheface.realism import scene_light

    img = np.full((200, 200, 3), 100, np.uint8)
    img[50:150, 60:140] = (40, 80, 200)                               # an orange face
    lm = np.stack(np.meshgrid(np.linspace(62, 138, 17), np.linspace(52, 148, 4)), -1).reshape(-1, 2)[:68]
    assert np.allclose(scene_light(img, lm), 100, atol=1.0)
    assert scene_light(img[..., 0], lm) is None
    assert scene_light(img[45:155, 55:145], lm - [55, 45]) is None    # a tight crop: nothing left


@needs_data
def test_ear_loops_go_under_hair(real, clean):
    # Bush, with everything beyond his face outline painted dark brown (hair over the ears)
    # or painted his own skin colour: the loops past the outline vanish under the hair and
    # stay on the skin; the clean look keeps them either way
    bgr = cv2.imread(str(DATA / BUSH))
    lm = real.find_faces(bgr)[0].landmarks
    face = np.zeros(bgr.shape[:2], np.uint8)
    ol = realism.stand_off(lm)                     # the outline the mask body reaches
    lift = 0.35 * (ol[30] - ol[27])
    cv2.fillPoly(face, [np.round(np.vstack([ol[0:17], ol[26:16:-1] - lift])).astype(np.int32)], 1)
    # past the outline by more than the body's margin (realism.OUTLINE_MARGIN, 3 px here)
    beyond = cv2.dilate(face, np.ones((9, 9), np.uint8)) == 0
    x0, y0, x1, y1 = realism.skin_region(lm, bgr.shape)
    skin_colour = np.median(bgr[y0:y1, x0:x1].reshape(-1, 3), 0)
    hair, ears = bgr.copy(), bgr.copy()
    hair[beyond] = (30, 45, 70)
    ears[beyond] = skin_colour

    def loops(m, img):
        res = m.mask(img, MaskSpec("surgical"), np.random.default_rng(2), faces=m.find_faces(bgr))
        return float(res.alpha[beyond].sum())

    assert loops(clean, hair) > 5 and loops(clean, ears) > 5
    assert loops(real, hair) < 0.1 * loops(clean, hair)
    assert loops(real, ears) > 0.7 * loops(clean, ears)


def test_a_turned_face_s_mask_stands_off_the_far_cheek():
    lm = CANONICAL_68.astype(np.float32) * 0.2
    assert np.array_equal(realism.stand_off(lm), lm)          # frontal: nothing moves
    turned = lm.copy()
    turned[27:36, 0] += 0.12 * (lm[16, 0] - lm[0, 0])          # the nose towards side 16
    out = realism.stand_off(turned)
    moved = np.flatnonzero(np.abs(out - turned).sum(1) > 1e-4)
    assert set(moved) <= set(range(9, 16)) and {11, 12, 13} <= set(moved)
    assert (out[moved, 0] > turned[moved, 0]).all()             # outwards, past the outline
    assert out[8].tolist() == turned[8].tolist()                # the chin stays
    assert np.array_equal(realism.vary_fit(turned, realism.CLEAN), turned)


def test_creases_are_seeded_smooth_and_differ_per_face():
    a = realism.Look(tint=0.6, grain=1.1, shadow=0.2, seed=5)
    b = realism.Look(tint=0.6, grain=1.1, shadow=0.2, seed=6)
    fa, fb = realism.crumple((90, 140), a), realism.crumple((90, 140), b)
    assert np.array_equal(fa, realism.crumple((90, 140), a))          # seeded
    assert not np.allclose(fa, fb)                                     # every face its own
    assert abs(float(fa.mean()) - 1.0) < 0.02 and 0.01 < float(fa.std()) < 0.08
    # low frequency: a 1 px blur barely changes it (the grain is matched separately)
    assert np.abs(fa - cv2.GaussianBlur(fa, (0, 0), 1.0)).mean() < 0.005
    assert np.array_equal(realism.crumple((90, 140), realism.CLEAN), np.ones((90, 140), np.float32))
