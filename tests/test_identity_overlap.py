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


def test_close_pairs_on_synthetic_descriptors():
    """Centroid distances against a brute-force loop; the threshold is strict (<)."""
    rng = np.random.default_rng(0)
    emb = io.IdentityEmbeddings()
    centres = {"t:a": 0.0, "t:b": 0.55, "e:x": 0.0, "e:y": 0.8}
    for k, shift in centres.items():
        base = np.zeros(128)
        base[0] = shift
        emb.raw[k] = (base + rng.normal(0, 0.01, (3, 128))).astype(np.float32)
    flagged, top = io.close_pairs(emb, ["t:a", "t:b"], ["e:x", "e:y"], threshold=0.6, closest=10)
    brute = {(t, e): np.linalg.norm(emb.raw[t].mean(0) - emb.raw[e].mean(0))
             for t in ("t:a", "t:b") for e in ("e:x", "e:y")}
    assert [(p["training"], p["evaluation"]) for p in top] == sorted(brute, key=brute.get)
    assert {(p["training"], p["evaluation"]) for p in flagged} == {k for k, d in brute.items() if d < 0.6}
    for p in top:
        assert p["distance"] == pytest.approx(brute[(p["training"], p["evaluation"])], abs=1e-3)
        assert p["distance"] <= p["mean_pair_distance"] + 1e-4  # Jensen


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
    flagged, top = io.close_pairs(emb, keys, ["glint:Tom Hanks", "mfr2:SimonCowell"], closest=4)
    pairs = {(p["training"], p["evaluation"]): p["distance"] for p in top}
    flagged_pairs = {(p["training"], p["evaluation"]) for p in flagged}
    assert pairs[("glint:Tom Hanks", "glint:Tom Hanks")] == pytest.approx(0.0, abs=1e-4)
    # the same person in another data set (glint crops vs MFR2 crops) is caught by embedding
    assert flagged_pairs == {("glint:Tom Hanks", "glint:Tom Hanks"), ("glint:Simon Cowell", "mfr2:SimonCowell")}
    assert pairs[("glint:Simon Cowell", "glint:Tom Hanks")] > 0.6
    # raw descriptors are not unit length (why 0.6 is applied to raw distances)
    assert io.norm_stats(emb)["median"] > 1.1
