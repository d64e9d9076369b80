"""facenet.sampler.PKSampler: properties of the P×K plans."""

from __future__ import annotations

import numpy as np
import pytest

from facenet.sampler import PKSampler


def _labels(seed: int = 0, n_ids: int = 40, lo: int = 1, hi: int = 15, heavy: int = 0) -> np.ndarray:
    """Shuffled labels: n_ids identities with lo..hi-1 images, plus one with ``heavy``."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(lo, hi, size=n_ids)
    if heavy:
        counts = np.r_[counts, heavy]
    labels = np.repeat(np.arange(counts.size), counts)
    return labels[rng.permutation(labels.size)]


def _ranks(labels, P, K, world, **kw) -> list[PKSampler]:
    return [PKSampler(labels, P, K, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("K", [2, 4])
def test_batch_shape_and_k_per_identity(world, K):
    labels = _labels(1)
    for s in _ranks(labels, 3, K, world, seed=5):
        batches = s.batches(0)
        assert len(batches) == len(s) > 0
        for b in batches:
            assert b.shape == (3 * K,) and b.dtype == np.int64
            ids = labels[b].reshape(3, K)
            assert (ids == ids[:, :1]).all()                 # identity-major blocks of K
            assert len(set(ids[:, 0])) == 3                  # P distinct identities


def test_ranks_are_disjoint_and_equally_long():
    labels = _labels(2, n_ids=60)
    samplers = _ranks(labels, 4, 3, 3, seed=9, steps_per_epoch=None)
    plans = [s.batches(4) for s in samplers]
    assert len({len(p) for p in plans}) == 1
    for step in zip(*plans):
        ids = [set(labels[b]) for b in step]
        assert sum(len(i) for i in ids) == len(set().union(*ids)) == 12
    # each rank's share is the same slice of one global plan
    g = samplers[0].global_plan(4)
    for r, p in enumerate(plans):
        np.testing.assert_array_equal(np.stack(p), g[:, 4 * r:4 * (r + 1)].reshape(len(p), -1))


def test_deterministic_and_epochs_differ():
    labels = _labels(3)
    a = PKSampler(labels, 4, 4, seed=1).batches(2)
    b = PKSampler(labels, 4, 4, seed=1).batches(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    c = PKSampler(labels, 4, 4, seed=1).batches(3)
    d = PKSampler(labels, 4, 4, seed=2).batches(2)
    assert not np.array_equal(np.stack(a), np.stack(c))
    assert not np.array_equal(np.stack(a), np.stack(d))


def test_epoch_visits_every_identity_and_image():
    labels = _labels(4, n_ids=50, lo=1, hi=12)
    counts = np.bincount(labels)
    s = PKSampler(labels, 4, 3, seed=0, world_size=2, rank=0)
    assert s.stats["capped_identities"] == 0
    plan = s.global_plan(0).reshape(-1)
    seen_ids = set(labels[plan])
    assert seen_ids == set(np.flatnonzero(counts >= 2))
    # every image of every usable identity is used, and only the < G fill slots and the
    # cyclic completion of last chunks repeat images
    usable = np.flatnonzero(counts[labels] >= 2)
    assert set(plan) == set(usable)
    fill = s.stats["fill_slots_per_round"]
    assert fill < s.G
    expected = sum(-(-c // 3) * 3 for c in counts[counts >= 2]) + 3 * fill
    assert plan.size == expected == len(s) * s.G * 3


def test_small_identities_repeat_skip_or_error():
    labels = np.repeat(np.arange(8), [1, 1, 2, 3, 6, 6, 6, 6])
    s = PKSampler(labels, 2, 4, seed=0)
    assert s.skipped == {"identities": 2, "images": 2}
    assert s.stats["n_repeated_identities"] == 2 and s.stats["n_identities"] == 6
    plan = s.global_plan(0)
    for step in plan:
        for chunk in step:
            n_img = np.sum(labels == labels[chunk[0]])
            _, reps = np.unique(chunk, return_counts=True)
            if n_img >= 4:
                assert reps.max() == 1                       # K distinct images
            else:
                assert reps.max() - reps.min() <= 1 and len(reps) == n_img  # balanced cycling
    skip = PKSampler(labels, 2, 4, undersized="skip")
    assert skip.skipped == {"identities": 4, "images": 7}
    assert set(labels[np.concatenate(skip.batches(0))]) == {4, 5, 6, 7}
    with pytest.raises(ValueError, match="fewer than K=4"):
        PKSampler(labels, 2, 4, undersized="error")


def test_bad_arguments():
    labels = _labels(5, n_ids=10, lo=2, hi=6)
    with pytest.raises(ValueError, match="P must be >= 2"):
        PKSampler(labels, 1, 4)
    with pytest.raises(ValueError, match="K must be >= 2"):
        PKSampler(labels, 2, 1)
    with pytest.raises(ValueError, match="only 10 usable"):
        PKSampler(labels, 6, 2, world_size=2)               # 12 identities per step
    with pytest.raises(ValueError, match="rank"):
        PKSampler(labels, 2, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="undersized"):
        PKSampler(labels, 2, 2, undersized="pad")
    with pytest.raises(ValueError, match="groups"):
        PKSampler(labels, 2, 2, groups=np.zeros(3))
    PKSampler(labels, 5, 2, world_size=2)                   # exactly enough identities


def test_steps_per_epoch_override():
    labels = _labels(6)
    nat = PKSampler(labels, 4, 4, seed=3)
    short = PKSampler(labels, 4, 4, seed=3, steps_per_epoch=3)
    long = PKSampler(labels, 4, 4, seed=3, steps_per_epoch=2 * len(nat) + 1)
    assert len(short) == len(short.batches(1)) == 3
    assert len(long) == len(long.batches(1)) == 2 * len(nat) + 1
    # the first round of an override is the natural plan
    np.testing.assert_array_equal(np.stack(long.batches(1)[: len(nat)]), np.stack(nat.batches(1)))
    np.testing.assert_array_equal(np.stack(short.batches(1)), np.stack(nat.batches(1)[:3]))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        PKSampler(labels, 4, 4, steps_per_epoch=0)


def test_heavy_identity_is_capped_at_one_chunk_per_step():
    labels = _labels(7, n_ids=20, lo=2, hi=5, heavy=200)
    s = PKSampler(labels, 2, 4, seed=0, world_size=2)
    heavy = labels.max()
    assert s.stats["capped_identities"] == 1 and s.stats["dropped_images_per_round"] > 0
    plan = s.global_plan(0)
    per_step = (labels[plan[:, :, 0]] == heavy).sum(1)
    assert per_step.max() == 1 and per_step.sum() == len(s)  # in every step, once
    used = plan[labels[plan[:, :, 0]] == heavy].reshape(-1)
    assert len(set(used)) == used.size == len(s) * 4          # no image twice


def test_two_image_identities_with_large_world():
    # the smallest legal problem: every identity has 2 images and a step needs all of them
    labels = np.repeat(np.arange(6), 2)
    plans = [s.batches(0) for s in _ranks(labels, 2, 2, 3)]
    assert [len(p) for p in plans] == [1, 1, 1]
    assert sorted(np.concatenate([p[0] for p in plans]).tolist()) == list(range(12))


def test_groups_prefer_distinct_source_photos():
    # 6 identities x 4 photos x (original, masked): K=4 chunks hold 4 different photos
    n_ids, photos = 6, 4
    labels = np.repeat(np.arange(n_ids), photos * 2)
    groups = np.repeat(np.arange(n_ids * photos), 2)
    s = PKSampler(labels, 3, 4, seed=0, groups=groups)
    for b in s.batches(0):
        for chunk in b.reshape(3, 4):
            assert len(set(groups[chunk])) == 4
    # without groups a chunk often holds both twins of a photo
    plain = PKSampler(labels, 3, 4, seed=0)
    twins = sum(len(set(groups[c])) < 4 for b in plain.batches(0) for c in b.reshape(3, 4))
    assert twins > 0


def test_string_labels_and_indices_into_them():
    labels = np.array(["bob", "ann", "bob", "cy", "ann", "cy", "dee"], dtype=object)
    s = PKSampler(labels, 3, 2, seed=0)
    assert s.skipped == {"identities": 1, "images": 1}
    (b,) = s.batches(0)
    names = labels[b].reshape(3, 2)
    assert (names[:, 0] == names[:, 1]).all() and set(names[:, 0]) == {"ann", "bob", "cy"}
