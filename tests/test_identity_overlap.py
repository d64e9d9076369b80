"""tools/identity_overlap.py: name matching, the identity lists, and the embedding check on a
handful of real identities (skipped without ../shared/data).  No Ray."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import data_path
from tools import identity_overlap as io


def test_normalise_name_and_name_overlaps():
    assert io.normalise_name("Simon Cowell") == io.normalise_name("SimonCowell") == "simoncowell"
    assert io.normalise_name("Zoë_Saldaña") == "zoesaldana"
    hits = io.name_overlaps({"glint": ["Simon Cowell", "Tom Hanks"]},
                            {"mfr2": ["SimonCowell"], "lfw_devtest": ["Simon_Cowell", "Tom_Cruise"]})
    assert {(h["training"], h["evaluation"]) for h in hits} == {
        ("glint:Simon Cowell", "mfr2:SimonCowell"), ("glint:Simon Cowell", "lfw_devtest:Simon_Cowell")}


def test_pair_distances_and_rules_against_brute_force(tmp_path):
    """Centroid, mean and min pair distances against loops; both flagging rules are strict
    (<); the descriptor cache round-trips."""
    rng = np.random.default_rng(0)
    emb = io.IdentityEmbeddings()
    # t:a ~ e:x (same centre); t:b's images sit +-0.7 either side of a centre 0.3 from e:x:
    # image pairs ~0.76 apart, means 0.3 apart, so only the centroid rule catches it;
    # t:c is far from everyone
    centre = {"t:a": (0.0, 0.0), "t:b": (0.3, 0.0), "t:c": (2.0, 0.0), "e:x": (0.0, 0.0), "e:y": (0.8, 0.0)}
    side = {"t:a": [0.0, 0.0, 0.0], "t:b": [0.7, -0.7, 0.7, -0.7], "t:c": [0.0, 0.0], "e:x": [0.0, 0.0],
            "e:y": [0.0]}
    for k, (x, y) in centre.items():
        v = np.zeros((len(side[k]), 128))
        v[:, 0], v[:, 1] = x, y + np.array(side[k])
        emb.raw[k] = (v + rng.normal(0, 0.001, v.shape)).astype(np.float32)
        emb.paths[k] = [f"{k}/{i}.jpg" for i in range(len(v))]
    tk, ek = ["t:a", "t:b", "t:c"], ["e:x", "e:y"]
    pd = io.pair_distances(emb, tk, ek)
    for i, t in enumerate(tk):
        for j, e in enumerate(ek):
            d = [np.linalg.norm(a.astype(np.float64) - b) for a in emb.raw[t] for b in emb.raw[e]]
            assert pd.mean_pair[i, j] == pytest.approx(np.mean(d), abs=1e-6)
            assert pd.min_pair[i, j] == pytest.approx(np.min(d), abs=1e-6)
            assert pd.centroid[i, j] == pytest.approx(
                np.linalg.norm(emb.raw[t].mean(0) - emb.raw[e].mean(0)), abs=1e-5)
            assert pd.centroid[i, j] <= pd.mean_pair[i, j] + 1e-9  # Jensen
    out = io.close_pairs(emb, tk, ek, threshold=0.6, centroid_threshold=0.4, closest=10)
    want = {(t, e) for i, t in enumerate(tk) for j, e in enumerate(ek)
            if pd.mean_pair[i, j] < 0.6 or pd.centroid[i, j] < 0.4}
    assert {(p["training"], p["evaluation"]) for p in out["flagged"]} == want
    assert want == {("t:a", "e:x"), ("t:b", "e:x")}
    assert pd.mean_pair[1, 0] > 0.6 > 0.4 > pd.centroid[1, 0]
    means = [p["mean_pair_distance"] for p in out["closest_mean_pair"]]
    assert means == sorted(means) and len(means) == 6
    emb.save(tmp_path / "c.npz")
    back = io.IdentityEmbeddings.load(tmp_path / "c.npz")
    assert back.paths == emb.paths and all(np.array_equal(back.raw[k], emb.raw[k]) for k in emb.raw)


def test_identity_lists_on_real_data():
    root = data_path()
    train, ev = io.training_identities(root), io.evaluation_identities(root)
    assert all(len(p) >= 2 for p in train["lfw"].values())
    assert not set(train["lfw"]) & set(ev["lfw_devtest"])  # LFW View 1 is disjoint by name
    assert len(train["glint"]) == 24 and len(train["celeba"]) >= 1
    assert all("no-mask" not in str(p) for ps in ev["mfr2"].values() for p in ps)
    assert all(p.is_file() for ps in ev["mfr2"].values() for p in ps)


@pytest.fixture(scope="module")
def few_embedded():
    """3 images each: glint's Simon Cowell and Tom Hanks, MFR2's unmasked Simon Cowell."""
    root = data_path()
    train, ev = io.training_identities(root), io.evaluation_identities(root)
    groups = {"glint": {n: train["glint"][n] for n in ("Simon Cowell", "Tom Hanks")},
              "mfr2": {"SimonCowell": ev["mfr2"]["SimonCowell"]}}
    return io.embed_identities(groups, max_images=3)


def test_embedding_check_flags_self_and_same_person_not_others(few_embedded):
    emb = few_embedded
    assert emb.unit_check < 1e-5  # unit rows of the raw descriptors == DlibEmbedder's output
    keys = ["glint:Simon Cowell", "glint:Tom Hanks"]
    out = io.close_pairs(emb, keys, ["glint:Tom Hanks", "mfr2:SimonCowell"], closest=4)
    pairs = {(p["training"], p["evaluation"]): p for p in out["closest_mean_pair"]}
    flagged_pairs = {(p["training"], p["evaluation"]) for p in out["flagged"]}
    assert pairs[("glint:Tom Hanks", "glint:Tom Hanks")]["centroid_distance"] == pytest.approx(0.0, abs=1e-4)
    # the same person in another data set (glint crops vs MFR2 crops) is caught by embedding
    assert flagged_pairs == {("glint:Tom Hanks", "glint:Tom Hanks"), ("glint:Simon Cowell", "mfr2:SimonCowell")}
    assert pairs[("glint:Simon Cowell", "glint:Tom Hanks")]["mean_pair_distance"] > 0.6
    assert pairs[("glint:Simon Cowell", "glint:Tom Hanks")]["centroid_distance"] > 0.4
    # raw descriptors are not unit length (why 0.6 is applied to raw distances)
    assert io.norm_stats(emb)["median"] > 1.1


def test_decide_and_redecide():
    """Name matches, either embedding rule and unembeddable identities drop; redecide
    only tightens."""
    flagged = [
        {"training": "celeba:c1", "evaluation": "mfr2:X", "mean_pair_distance": 0.55, "centroid_distance": 0.45},
        {"training": "celeba:c2", "evaluation": "mfr2:X", "mean_pair_distance": 0.70, "centroid_distance": 0.35},
    ]
    result = {
        "settings": {"data_root": "/d", "max_images_per_identity": 8, "threshold": 0.6, "centroid_threshold": 0.4,
                     "closest": 10, "workers": 1, "embedded_training_sources": ["celeba", "glint"]},
        "training": {"lfw": {"A_B": 2}, "celeba": {"c1": 10, "c2": 10, "c3": 10, "c4": 10},
                     "glint": {"Simon Cowell": 30}},
        "evaluation_counts": {"lfw_devtest": {}, "mfr2": {}},
        "name_checks": {"lfw_devtrain_vs_devtest_exact": [],
                        "matches": [{"training": "glint:Simon Cowell", "evaluation": "mfr2:SimonCowell"}]},
        "embedding": {"flagged": flagged, "per_source": {"celeba": {"identities_without_face": ["celeba:c4"]},
                                                         "glint": {"identities_without_face": []}}},
    }
    drop, reasons, kept = io.decide(result["training"], result["name_checks"], result["embedding"],
                                    ["celeba", "glint"], 0.6, 0.4)
    assert drop == ["celeba:c1", "celeba:c2", "celeba:c4", "glint:Simon Cowell"]
    assert kept == {"lfw": {"A_B": 2}, "celeba": {"c3": 10}, "glint": {}}
    tighter = io.redecide(result, threshold=0.5)  # c1's mean pair 0.55 no longer counts
    assert tighter["drop"] == ["celeba:c2", "celeba:c4", "glint:Simon Cowell"]
    assert tighter["kept_counts"]["celeba"] == {"identities": 2, "images": 20}
    with pytest.raises(ValueError):
        io.redecide(result, threshold=0.7)
