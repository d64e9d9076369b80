"""facenet.train and facenet.data without Ray: schedule, optimisers, crops, records, online
masks, a training step that moves the right parameters."""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
import traceback
from dataclasses import replace

import numpy as np
import pytest
import torch

from facenet import data as fdata
from facenet import train as ftrain
from facenet.train import TrainConfig, lr_at

torch.set_num_threads(2)


def _glint(data_dir):
    root = data_dir / "glint_subset" / "datasets" / "celebrity_images"
    if not root.is_dir():
        pytest.skip(f"glint_subset not found at {root}")
    return root


@pytest.fixture(scope="module")
def small_glint(tmp_path_factory, data_dir):
    """6 identities x 5 aligned crops copied to a temp tree."""
    root = _glint(data_dir)
    dst = tmp_path_factory.mktemp("glint")
    for ident in sorted(os.listdir(root))[:6]:
        (dst / ident).mkdir()
        for f in sorted(os.listdir(root / ident))[:5]:
            shutil.copy(root / ident / f, dst / ident / f)
    return dst


@pytest.fixture(scope="module")
def records(small_glint):
    return fdata.records_from_folder(str(small_glint), prealigned=True)


def test_paper_schedule_thirds_and_cosine():
    cfg = TrainConfig(lr=0.05, schedule="paper")
    assert [lr_at(cfg, s, 90) for s in (0, 29, 30, 59, 60, 89)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])
    cos = TrainConfig(lr=0.1, schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(0.1)
    assert lr_at(cos, 100, 100) == pytest.approx(0.001)
    warm = TrainConfig(lr=0.1, schedule="constant", warmup_steps=4)
    assert [lr_at(warm, s, 100) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


@pytest.mark.parametrize("bad", [dict(optimizer="rmsprop"), dict(schedule="step"), dict(P=1), dict(K=1),
                                 dict(mining="hardest"), dict(trainable="some"), dict(epochs=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adagrad", torch.optim.Adagrad)])
def test_optimizers(name, cls):
    lin = torch.nn.Linear(3, 2)
    assert isinstance(ftrain.make_optimizer(lin.parameters(), TrainConfig(optimizer=name)), cls)


def test_online_masks_carry_the_photos_compression(records):
    """A data set's ``source_quality`` (its images are re-encodings) reaches the online masks:
    at quality 20 the mask region shows its blocks, at 100 it is left alone; the eyes (no
    mask there) are untouched either way."""
    from dataclasses import replace

    aug = fdata.AugmentConfig(mask_prob=1.0, flip=False, jitter=0.0)
    low, high = (fdata.SampleLoader(replace(records, qualities=[q] * len(records)), "arcface", 112, aug,
                                    seed=3).batch([0], epoch=0)[0] for q in (20, 100))
    assert np.abs(low[:, 85:100, 40:72] - high[:, 85:100, 40:72]).mean() > 0.005   # the mask's mouth band
    np.testing.assert_array_equal(low[:, 30:50], high[:, 30:50])                      # the eyes
    # the clean look (--clean): no realism, so neither the compression nor the tint,
    # grain and shadow of the default look; the mask is still drawn over the mouth
    clean = fdata.AugmentConfig(mask_prob=1.0, flip=False, jitter=0.0, clean=True)
    c20, c100 = (fdata.SampleLoader(replace(records, qualities=[q] * len(records)), "arcface", 112, clean,
                                    seed=3).batch([0], epoch=0)[0] for q in (20, 100))
    np.testing.assert_array_equal(c20, c100)
    assert np.abs(c100 - high)[:, 85:100, 40:72].mean() > 0.005
    sub = replace(records, qualities=list(range(len(records)))).subset([2, 0])
    assert sub.qualities == [2, 0] and fdata.concat_records([sub, records]).qualities[:2] == [2, 0]


def test_records_from_folder_counts_everything(records, small_glint):
    n_files = sum(len(os.listdir(small_glint / d)) for d in os.listdir(small_glint))
    assert len(records) + sum(records.skipped.values()) == n_files
    assert records.n_identities == 6 or records.skipped
    assert records.landmarks.shape == (len(records), 68, 2)
    assert set(records.variants) == {"original"}


@pytest.mark.parametrize("alignment, size", [("dlib_chip", 150), ("facenet", 160), ("arcface", 112)])
def test_face_crop_shapes(records, alignment, size):
    from masktheface.imageio import decode_image
    crop = fdata.face_crop(decode_image(records.images[0]).bgr, records.landmarks[0], alignment, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    assert crop.std() > 10  # a face, not a smear


def test_loader_deterministic_and_online_masks_cover_the_mouth(records):
    loader = fdata.SampleLoader(records, "arcface", 112, fdata.AugmentConfig(mask_prob=1.0, flip=False), seed=3)
    a = loader.batch([0, 1], epoch=0)
    b = loader.batch([0, 1], epoch=0)
    assert a.shape == (2, 3, 112, 112) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    plain = fdata.SampleLoader(records, "arcface", 112, fdata.AugmentConfig(flip=False), seed=3).batch([0], epoch=0)
    diff = np.abs(a[0] - plain[0]).mean(0)
    # ArcFace template: eyes at y~52, mouth at y~92 -> the mask changes the mouth band, not the eyes
    assert diff[85:100, 40:72].mean() > 20 * max(diff[40:55, 30:82].mean(), 0.1)
    assert loader.counts.get("online_masked", 0) >= 1


def test_crops_follow_the_alignment_landmarks(records):
    """A record's crop is cut with its ``align`` points (a data set's ``align_landmarks``,
    the detector's plain fit); ``landmarks`` (where online masks go) do not move it."""
    from masktheface.imageio import decode_image

    shifted = records.landmarks + np.float32([6.0, 4.0])
    moved = replace(records, align=shifted)
    off = fdata.AugmentConfig(flip=False)
    crop = fdata.SampleLoader(moved, "facenet", 160, off, seed=3).load(0, train=False)
    expect = fdata.face_crop(decode_image(records.images[0]).bgr, shifted[0], "facenet", 160)
    np.testing.assert_array_equal(crop, expect)
    same = fdata.SampleLoader(replace(records, align=None), "facenet", 160, off, seed=3).load(0, train=False)
    assert np.abs(crop.astype(int) - same).mean() > 5
    # the points travel with the records through subset, concat and identity filters
    sub = moved.subset([1, 0])
    np.testing.assert_array_equal(sub.alignment(0), shifted[1])
    both = fdata.concat_records([records, moved])
    np.testing.assert_array_equal(both.alignment(len(records)), shifted[0])
    np.testing.assert_array_equal(both.alignment(0), records.landmarks[0])
    kept = moved.without_identities({records.identities[0]}, min_images=1)
    assert kept.align is not None and len(kept.align) == len(kept)


def test_make_pairs_balanced():
    labels = np.repeat(np.arange(5), 4)
    pairs, same = fdata.make_pairs(labels, 40, seed=1)
    assert same.sum() == 20 and len(pairs) == 40
    assert all((labels[a] == labels[b]) == s for (a, b), s in zip(pairs, same))


def test_split_identities_disjoint(records):
    tr, held = records.split_identities(2, seed=0)
    assert held.n_identities == 2 and not set(tr.identities) & set(held.identities)
    assert len(tr) + len(held) == len(records)


def test_train_step_moves_only_the_head(records):
    pytest.importorskip("facenet.model")
    pytest.importorskip("facenet.losses")
    cfg = TrainConfig(model="mobilefacenet", pretrained=False, trainable="head", P=3, K=2, lr=0.1,
                      optimizer="sgd", mining="batch_hard", margin=0.5)
    net = ftrain.build_for_training(cfg)
    head = tuple(net.head_modules)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    bn_before = {n: b.clone() for n, b in net.named_buffers() if "running_mean" in n}
    opt = ftrain.make_optimizer(net.parameters(), cfg)
    loader = fdata.SampleLoader(records, "arcface", 112, seed=0)
    idx = [int(np.flatnonzero(records.labels == lbl)[k]) for lbl in range(3) for k in range(2)]
    x = torch.from_numpy(loader.batch(idx))
    y = torch.from_numpy(records.labels[idx])
    stats = ftrain.train_step(net, opt, x, y, cfg, lr=0.1)
    assert np.isfinite(stats["loss"]) and stats["lr"] == pytest.approx(0.1)
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved, "the step changed nothing"
    assert all(n.split(".")[0] in head for n in moved), sorted(moved)[:5]
    for n, b in net.named_buffers():
        if n in bn_before and n.split(".")[0] not in head:
            assert torch.equal(b, bn_before[n]), n


def test_without_identities_counts_what_it_leaves_out(records):
    gone = {records.identities[0], records.identities[1]}
    rest = records.without_identities(gone)
    assert not gone & set(rest.identities)
    assert len(rest) + rest.skipped["excluded_identity"] == len(records)


def test_holdout_validation_pairs_unmasked_and_masked(records):
    sets = ftrain.holdout_validation(records, "arcface", 112, 40, "N95", seed=2)
    assert [v.name for v in sets] == ["val", "val_N95"]
    plain, masked = sets
    assert plain.crops.shape == (len(records), 3, 112, 112) and masked.crops.shape[0] == 2 * len(records)
    np.testing.assert_array_equal(plain.pairs[:, 0], masked.pairs[:, 0])  # templates stay unmasked
    assert (masked.pairs[:, 1] >= len(records)).all() and plain.issame.sum() == 20


def test_state_round_trip(tmp_path):
    pytest.importorskip("facenet.model")
    cfg = TrainConfig(model="mobilefacenet", pretrained=False, optimizer="adam")
    net = ftrain.build_for_training(cfg)
    opt = ftrain.make_optimizer(net.parameters(), cfg)
    ftrain.save_state(str(tmp_path), net, opt, cfg, epoch=2, step_in_epoch=3, step=13,
                      metrics={"loss": 0.5}, history=[{"epoch": 1}])
    net2 = ftrain.build_for_training(cfg)
    opt2 = ftrain.make_optimizer(net2.parameters(), cfg)
    assert ftrain.load_state(str(tmp_path), net2, opt2) == (2, 3, 13, [{"epoch": 1}])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Threaded loading and prefetch: same bytes, same training, errors surface, no thread left
# ------------------------------------------------------------------------------------------

def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("facenet-prefetch", "facenet-loader"))]


def test_threaded_loader_is_bit_identical_to_serial(records):
    aug = fdata.AugmentConfig(mask_prob=0.5, jitter=0.05, flip=True)
    serial = fdata.SampleLoader(records, "arcface", 112, aug, seed=7)
    threaded = fdata.SampleLoader(records, "arcface", 112, aug, seed=7, threads=4)
    idx = np.random.default_rng(1).integers(0, len(records), 24)  # repeats included
    a = serial.batch(idx, epoch=2)
    b = threaded.batch(idx, epoch=2)
    np.testing.assert_array_equal(a, b)
    # order does not matter either: each item draws from (seed, epoch, index, key) alone
    np.testing.assert_array_equal(threaded.batch(idx[::-1], epoch=2), a[::-1])
    assert serial.counts.get("online_masked", 0) >= 1
    assert 2 * serial.counts["online_masked"] == threaded.counts["online_masked"]  # two batches
    assert 1 <= threaded.maskers_built <= 4  # one per thread at most, never one shared
    assert not _our_threads()


def test_threaded_loader_raises_the_failing_samples_error(records):
    bad = records.subset(np.arange(len(records)))
    bad.images[3] = b"not an image"
    idx = [0, 1, 2, 3, 4, 5]
    with pytest.raises(Exception) as serial_err:
        fdata.SampleLoader(bad, "arcface", 112).batch(idx)
    with pytest.raises(type(serial_err.value), match=re.escape(str(serial_err.value))):
        fdata.SampleLoader(bad, "arcface", 112, threads=3).batch(idx)
    assert not _our_threads()


def _mobilefacenet_run(records, *, prefetch: int, threads: int, steps: int = 3):
    # head only: a full backward costs seconds a step on 2 shared cores; what prefetch could
    # change (which batch, which samples, the generator's draws) shows in the head as well
    cfg = TrainConfig(model="mobilefacenet", pretrained=False, trainable="head", P=3, K=2, optimizer="sgd",
                      lr=0.05, mining="random_violating", margin=0.5, seed=4)
    torch.manual_seed(0)
    net = ftrain.build_for_training(cfg)
    opt = ftrain.make_optimizer(net.parameters(), cfg)
    loader = fdata.SampleLoader(records, "arcface", 112, fdata.AugmentConfig(mask_prob=0.5, jitter=0.02),
                                seed=cfg.seed, threads=threads)
    from facenet.sampler import PKSampler
    plan = PKSampler(records.labels, cfg.P, cfg.K, seed=cfg.seed, steps_per_epoch=steps).batches(1)
    seen = []
    res = ftrain.run_epoch(net, opt, loader, plan, records.labels, cfg, 1, step0=steps, total_steps=3 * steps,
                           on_step=lambda s, st: seen.append((s, st)), prefetch=prefetch)
    return res, seen, net.state_dict()


@pytest.fixture
def one_torch_thread():
    """torch on one thread: with a loader thread beside it, two OpenMP threads on 2 shared
    cores spin against each other (a step takes seconds instead of a fraction of one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_run_epoch_with_prefetch_and_threads_trains_identically(records, one_torch_thread):
    base, base_steps, base_w = _mobilefacenet_run(records, prefetch=0, threads=0)
    fast, fast_steps, fast_w = _mobilefacenet_run(records, prefetch=2, threads=3)
    timing = {"seconds", "samples_per_s"}
    assert {k: v for k, v in base.items() if k not in timing} == {k: v for k, v in fast.items() if k not in timing}
    assert base_steps == fast_steps and [s for s, _ in base_steps] == [4, 5, 6]
    assert base_w.keys() == fast_w.keys()
    for k in base_w:
        assert torch.equal(base_w[k], fast_w[k]), k
    assert not _our_threads()


class _Tiny(torch.nn.Module):
    """A linear embedding of (B,3,4,4) inputs: run_epoch's plumbing without a real network."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(48, 8)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _FlakyLoader:
    """batch() of random (n,3,4,4) arrays; raises at batch ``fail_at`` (its call count)."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.delay = delay

    def batch(self, index, epoch=0, train=True):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls - 1 == self.fail_at:
            raise OSError(f"record store gone at batch {self.fail_at}")
        return np.random.default_rng(int(index[0])).random((len(index), 3, 4, 4), dtype=np.float32)


def _tiny_epoch(loader, on_step=None, prefetch: int = 1, n: int = 5):
    cfg = TrainConfig(model="tiny", pretrained=False, P=2, K=2, optimizer="sgd", lr=0.01, mining="batch_all")
    net = _Tiny()
    plan = [np.array([4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3]) for j in range(n)]
    labels = np.tile([0, 0, 1, 1], n)
    return ftrain.run_epoch(net, ftrain.make_optimizer(net.parameters(), cfg), loader, plan, labels, cfg, 0,
                            step0=0, total_steps=n, on_step=on_step, prefetch=prefetch)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_run_epoch_load_error_surfaces_at_its_step(prefetch):
    steps = []
    with pytest.raises(OSError, match="record store gone at batch 2") as err:
        _tiny_epoch(_FlakyLoader(fail_at=2), on_step=lambda s, st: steps.append(s), prefetch=prefetch)
    # the original exception, raised from the loader's own frame
    assert traceback.extract_tb(err.value.__traceback__)[-1].name == "batch"
    assert steps == [1, 2]  # the steps before the failing batch ran, as without prefetch
    assert not _our_threads()


def test_run_epoch_step_error_stops_the_prefetch_thread():
    loader = _FlakyLoader(delay=0.05)

    def boom(step, stats):
        if step == 2:
            raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        _tiny_epoch(loader, on_step=boom, prefetch=2, n=20)
    assert not _our_threads()
    assert loader.calls <= 2 + 2 + 1  # the batches trained, the ones queued ahead, at most one more
    res = _tiny_epoch(_FlakyLoader(), prefetch=2)
    assert res["steps"] == 5 and not _our_threads()
