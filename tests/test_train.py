"""facenet.train and facenet.data without Ray: schedule, optimisers, crops, records, online
masks, a training step that moves the right parameters."""
from __future__ import annotations

import os
import shutil

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
