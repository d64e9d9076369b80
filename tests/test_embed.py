"""facenet.embed (dlib ResNet embedder, pre-aligned path, torch adapter) and facenet.cluster.

Real faces from ../shared/data (skipped when absent); no Ray.
"""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from facenet import cluster  # noqa: E402
from facenet.embed import (  # noqa: E402
    FIVE_FROM_68,
    AlignedLayout,
    DlibEmbedder,
    Embedder,
    TorchEmbedder,
    _unit_rows,
)

# First same and different pairs of LFW View 2, fold 1 (pairs.txt lines 2-4 and 302-304).
SAME = [("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"),
        ("Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg"),
        ("Akhmed_Zakayev/Akhmed_Zakayev_0002.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg")]
DIFF = [("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", "Dean_Barker/Dean_Barker_0001.jpg"),
        ("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", "Giancarlo_Fisichella/Giancarlo_Fisichella_0001.jpg"),
        ("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", "Mikhail_Gorbachev/Mikhail_Gorbachev_0001.jpg")]


@pytest.fixture(scope="module")
def embedder() -> DlibEmbedder:
    return DlibEmbedder()


def _read(root, key):
    img = cv2.imread(str(root / key))
    assert img is not None, key
    return img


def test_protocol_and_normalisation():
    assert isinstance(DlibEmbedder.__new__(DlibEmbedder), Embedder)
    x = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]])
    y = _unit_rows(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert (y[1] == 0).all() and np.isnan(y[2]).all()


def test_embeds_the_library_primary_face(embedder, photos_dir):
    # one rule: the face embedded is the one the masker crops (masktheface.geometry.primary_face)
    from masktheface.geometry import analyse, primary_face
    from masktheface.pipeline import Masker, Variant

    data = (photos_dir / "two_people.jpg").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    lm, method = embedder.find_landmarks(rgb)
    faces = embedder.analyzer.faces(rgb)
    i = primary_face(faces, rgb.shape, [analyse(f.landmarks, rgb.shape) for f in faces])
    assert method == "detected" and len(faces) == 2 and np.array_equal(lm, faces[i].landmarks)
    p = Masker(analyzer=embedder.analyzer).process(data, "two_people.jpg", [Variant("original")], aligned=160)
    assert p.primary == i and p.outputs[0].primary == i
    np.testing.assert_allclose(p.outputs[0].primary_face.landmarks, lm)


def test_embedding_shape_norm_determinism(embedder, lfw_images_dir):
    imgs = [_read(lfw_images_dir, k) for pair in SAME[:2] for k in pair]
    res = embedder.embed_with_status(imgs)
    assert res.embeddings.shape == (4, 128) and res.embeddings.dtype == np.float32
    assert res.status == ("ok",) * 4 and set(res.method) == {"detected"}
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)
    again = embedder.embed(imgs)
    np.testing.assert_array_equal(again, res.embeddings)


def test_same_person_closer_than_different(embedder, lfw_images_dir):
    def dist(pair):
        e = embedder.embed([_read(lfw_images_dir, k) for k in pair])
        return float(((e[0] - e[1]) ** 2).sum())

    same = [dist(p) for p in SAME]
    diff = [dist(p) for p in DIFF]
    assert max(same) < min(diff), (same, diff)


def test_given_landmarks_skip_detection_and_align_masked_twin(embedder, lfw_images_dir):
    from masktheface.pipeline import Masker, MaskerConfig
    from masktheface.spec import MaskSpec, item_rng

    img = _read(lfw_images_dir, SAME[0][0])
    masker = Masker(MaskerConfig(), analyzer=embedder.analyzer)
    faces = masker.find_faces(img)
    lm = faces[0].landmarks
    masked = masker.mask(img, MaskSpec("N95"), item_rng(0, "k"), faces=faces)
    assert masked.status == "ok"
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    rgb_m = cv2.cvtColor(masked.image, cv2.COLOR_BGR2RGB)
    # the same (unmasked) landmarks give the same chip geometry: the top (eyes) is unchanged
    chip, chip_m = embedder.chip(rgb, lm), embedder.chip(rgb_m, lm)
    np.testing.assert_array_equal(chip[:40], chip_m[:40])
    res = embedder.embed_with_status([img, masked.image], [lm, lm])
    assert res.method == ("landmarks", "landmarks")
    d_twin = float(((res.embeddings[0] - res.embeddings[1]) ** 2).sum())
    other = embedder.embed([_read(lfw_images_dir, DIFF[0][1])])[0]
    assert d_twin < float(((res.embeddings[0] - other) ** 2).sum())
    # five dlib points work too (dlib's 5-point chip)
    five = embedder.embed([img], [lm[list(FIVE_FROM_68)]])
    assert np.isfinite(five).all()


def test_failures_are_rows_not_exceptions(embedder):
    blank = np.full((120, 120, 3), 128, np.uint8)
    res = embedder.embed_with_status([blank, np.zeros((4, 4), np.float32)])
    assert res.status == ("no_face", "bad_image")
    assert np.isnan(res.embeddings).all()
    bad_lm = embedder.embed_with_status([blank], [np.zeros((3, 2))])
    assert bad_lm.status == ("error",) and "landmarks" in bad_lm.error[0]
    # a fallback box turns "no face" into a (low-quality) embedding, and says so
    fb = DlibEmbedder(fallback_box=(0.3, 0.3, 0.7, 0.7), analyzer=embedder.analyzer)
    res = fb.embed_with_status([blank])
    assert res.status == ("ok",) and res.method == ("centre_box",)


def test_flip_sum(embedder, lfw_images_dir):
    img = _read(lfw_images_dir, SAME[0][0])
    flip = DlibEmbedder(flip_sum=True, analyzer=embedder.analyzer)
    a, b = embedder.embed([img])[0], flip.embed([img])[0]
    assert abs(np.linalg.norm(b) - 1) < 1e-5
    assert 0 < float(((a - b) ** 2).sum()) < 0.05


def test_prealigned_mfr2(mfr2_dir):
    # Dunbar 2 and 4 unmasked, 1 in a surgical mask; Alvi 3 unmasked (mfr2_labels.txt)
    keys = ["AdrianDunbar/AdrianDunbar_0002.png", "AdrianDunbar/AdrianDunbar_0004.png",
            "AdrianDunbar/AdrianDunbar_0001.png", "ArifAlvi/ArifAlvi_0003.png"]
    imgs = [_read(mfr2_dir, k) for k in keys]
    emb = DlibEmbedder(prealigned=True)
    res = emb.embed_with_status(imgs)
    assert res.status == ("ok",) * 4
    assert set(res.method) <= {"aligned_detected", "aligned_landmarks", "aligned_fixed"}
    e = res.embeddings
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    d = lambda i, j: float(((e[i] - e[j]) ** 2).sum())  # noqa: E731
    # the unmasked same-person pair is the closest (the masked crop is what the no-mask
    # network gets wrong, as in the paper; it is only checked for being finite)
    assert d(0, 1) < min(d(0, 3), d(1, 3))
    # the masked crop: the fit check refits it (its real mask hides the mouth and jaw), and
    # recognition aligns with the detector's plain fit instead (Face.align_landmarks)
    rgb = cv2.cvtColor(imgs[2], cv2.COLOR_BGR2RGB)
    (face,) = emb.analyzer.faces(rgb)
    assert face.refits >= 1 and np.abs(face.first_fit - face.landmarks).mean() > 2
    lm, method = emb.aligned_landmarks(rgb)
    assert method == "aligned_detected"
    np.testing.assert_array_equal(lm, face.first_fit)
    # no detection, landmarks in the layout box: plausible on these crops
    nodet = DlibEmbedder(prealigned=True, prealigned_detect=False, analyzer=emb.analyzer)
    assert set(nodet.embed_with_status(imgs).method) == {"aligned_landmarks"}
    # an impossible plausibility test forces the fixed five points
    fixed = DlibEmbedder(prealigned=True, prealigned_detect=False, analyzer=emb.analyzer,
                         layout=AlignedLayout(max_residual=-1.0))
    res = fixed.embed_with_status(imgs)
    assert set(res.method) == {"aligned_fixed"} and np.isfinite(res.embeddings).all()


def test_torch_embedder_explains_what_is_missing(tmp_path):
    with pytest.raises((RuntimeError, FileNotFoundError)) as info:
        TorchEmbedder(str(tmp_path / "nope.pt"))
    assert "facenet" in str(info.value) or "nope.pt" in str(info.value)


# ---------------------------------------------------------------------------- clustering

def test_average_linkage_matches_sklearn():
    skc = pytest.importorskip("sklearn.cluster")
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(10):
        x = rng.normal(size=(50, 3))
        x[:20] += 4
        d = cluster.pairwise_sq_l2(x)
        t = float(rng.uniform(1, 40))
        ours = cluster.average_linkage(d, t)
        ref = skc.AgglomerativeClustering(n_clusters=None, distance_threshold=t, metric="precomputed",
                                          linkage="average").fit(d).labels_
        assert skm.adjusted_rand_score(ref, ours) == 1.0, trial
        truth = rng.integers(0, 4, 50)
        assert cluster.nmi(truth, ours) == pytest.approx(skm.normalized_mutual_info_score(truth, ours), abs=1e-12)


def test_cluster_scores_by_hand():
    assert cluster.purity(["a", "a", "b", "b"], [0, 0, 1, 1]) == 1.0
    assert cluster.purity(["a", "a", "b", "b"], [0, 0, 0, 0]) == 0.5
    assert cluster.nmi(["a", "a", "b", "b"], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert cluster.nmi(["a", "b", "a", "b"], [0, 0, 1, 1]) == pytest.approx(0.0)
    assert cluster.average_linkage(np.zeros((0, 0)), 1.0).shape == (0,)
    # two tight pairs far apart: two clusters; threshold above their distance: one
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    d = cluster.pairwise_sq_l2(x)
    assert cluster.average_linkage(d, 1.0).tolist() == [0, 0, 1, 1]
    assert cluster.average_linkage(d, 100.0).tolist() == [0, 0, 0, 0]
    res = cluster.cluster_embeddings(np.r_[x, [[np.nan]]], ["a", "a", "b", "b", "c"], 1.0)
    assert res["n_missing"] == 1 and res["n_clusters"] == 2 and res["purity"] == 1.0
