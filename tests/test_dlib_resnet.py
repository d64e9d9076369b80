"""facenet.dlib_resnet: the .dat reader, the torch network, and its equivalence with dlib.

The equivalence test embeds >= 100 LFW chips (dlib's own 150x150 ``get_face_chip`` from 68
landmarks) with dlib's ``face_recognition_model_v1`` and with the torch model, and requires
max |difference| <= 1e-3 per coordinate (measured: ~5e-7).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facenet import dlib_resnet as dr
from facenet.dlib_resnet import DlibResNet, load_dlib_weights, read_dlib_dat

N_CHIPS = 100
TOL = 1e-3


@pytest.fixture(scope="module")
def dat_path() -> str:
    try:
        return dr.default_dat_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def records(dat_path: str) -> list[dr.DlibRecord]:
    return read_dlib_dat(dat_path)


@pytest.fixture(scope="module")
def torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def pretrained(dat_path: str) -> DlibResNet:
    return load_dlib_weights(DlibResNet(normalize=False), dat_path).eval()


# ------------------------------------------------------------------------------ the reader

def test_reader_primitives():
    # ints: control byte (sign bit 0x80, byte count) + little-endian magnitude
    r = dr._Reader(bytes([0x00, 0x01, 0x05, 0x81, 0x05, 0x02, 0x34, 0x12]))
    assert (r.int(), r.int(), r.int(), r.int()) == (0, 5, -5, 0x1234)
    # floats: mantissa then exponent (the float32 0.04 and 0.6 of the file's loss_metric_2)
    r = dr._Reader(bytes.fromhex("030ad7a3811c" "039a99998118"))
    assert r.float() == float(np.float32(0.04)) and r.float() == float(np.float32(0.6))
    r = dr._Reader(bytes([0x00, 0x02, 0x00, 0x7D, 0x00, 0x02, 0x01, 0x7D]))  # exp 32000/32001
    assert r.float() == math.inf and r.float() == -math.inf
    # a version-2 tensor: dims n,k,nr,nc then raw float32
    body = bytes([0x01, 0x02]) + bytes([0x01, 1, 0x01, 2, 0x01, 1, 0x01, 1])
    t = dr._Reader(body + np.array([1.5, -2.0], "<f4").tobytes()).tensor()
    assert t.shape == (1, 2, 1, 1) and t.ravel().tolist() == [1.5, -2.0]
    with pytest.raises(dr.DlibFormatError):
        dr._Reader(bytes([0x01])).int()  # truncated


def test_parser_consumes_the_file_exactly(records, dat_path):
    """read_dlib_dat raises unless every byte is consumed; check the layer inventory too."""
    kinds = [r.kind for r in records]
    assert kinds[0] == "input_rgb_image_sized" and kinds[-1] == "loss_metric_2"
    assert kinds.count("con_4") == 29 and kinds.count("affine_") == 29
    assert kinds.count("relu_") == 29 and kinds.count("add_prev_") == 14
    assert kinds.count("avg_pool_2") == 5 and kinds.count("max_pool_2") == 1
    assert kinds.count("fc_2") == 1 and kinds.count("tag") == 18 and kinds.count("skip") == 4
    assert [r.index for r in records] == list(range(len(records)))
    inp = records[0].fields
    assert (inp["nr"], inp["nc"]) == (150, 150)
    assert np.allclose(inp["mean_rgb"], dr.DLIB_MEAN_RGB, atol=1e-4)
    fc = records[-2]
    assert fc.kind == "fc_2" and fc.tensors["weight"].shape == (256, 128) and "bias" not in fc.tensors
    loss = records[-1].fields
    assert loss["margin"] == pytest.approx(0.04) and loss["dist_thresh"] == pytest.approx(0.6)
    # the weights account for the file: 22.4 MB of float32 in 22.47 MB
    n_float = sum(a.size for r in records for a in r.tensors.values())
    assert n_float == sum(p.numel() for p in DlibResNet().parameters()) == 5_614_592
    assert 0 < os.path.getsize(dat_path) - 4 * n_float < 100_000
    convs = [r.fields for r in records if r.kind == "con_4"]
    # dlib's padding rule: size//2 at stride 1, none otherwise
    assert all(c["padding_y"] == (c["nr"] // 2 if c["stride_y"] == 1 else 0) for c in convs)


def test_parser_rejects_truncated_and_trailing_bytes(dat_path, tmp_path: Path):
    data = Path(dat_path).read_bytes()
    (tmp_path / "short.dat").write_bytes(data[:-3])
    (tmp_path / "long.dat").write_bytes(data + b"\x00")
    with pytest.raises(dr.DlibFormatError, match="end of file"):
        read_dlib_dat(tmp_path / "short.dat")
    with pytest.raises(dr.DlibFormatError, match="bytes left"):
        read_dlib_dat(tmp_path / "long.dat")


# ------------------------------------------------------------------------------ the model

def test_zero_filled_add_is_dlibs_add_prev():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = dr._add_zero_filled(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert torch.all(out[:, :2, :3, :3] == 3) and torch.all(out[:, 2:, :3, :3] == 1)
    assert torch.all(out[:, :2, 3, :] == 2) and torch.all(out[:, 2:, 3, :] == 0)


def test_model_contract_shapes_norm_and_gradients(torch_threads):
    torch.manual_seed(0)
    m = DlibResNet()
    assert (m.arch, m.input_size, m.embedding_dim, m.normalize) == ("dlib_resnet", 150, 128, True)
    assert m.arch_kwargs == {"embedding_dim": 128, "normalize": True}
    assert m.standardization == (dr.DLIB_MEAN_RGB, (256.0, 256.0, 256.0))
    assert set(m.head_modules) <= {n for n, _ in m.named_children()}
    assert torch.allclose(m.mean, torch.tensor(dr.DLIB_MEAN_RGB)) and torch.all(m.std == 256)
    x = torch.rand(2, 3, 150, 150) * 255
    y = m(x)
    assert y.shape == (2, 128) and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)
    (y * torch.randn_like(y)).sum().backward()  # touches every output coordinate
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    assert DlibResNet(**m.arch_kwargs).state_dict().keys() == m.state_dict().keys()
    small = DlibResNet(embedding_dim=64, normalize=False)
    assert small(x[:1]).shape == (1, 64)


def test_load_weights_skip_fc_for_other_dims(dat_path):
    m = DlibResNet(embedding_dim=64)
    before = m.fc.weight.detach().clone()
    load_dlib_weights(m, dat_path, skip_fc=True)
    assert torch.equal(m.fc.weight, before)
    with pytest.raises(ValueError, match="fc"):
        load_dlib_weights(DlibResNet(embedding_dim=64), dat_path)


# ------------------------------------------------------------------------------ vs dlib

def _lfw_chips(root: Path, n: int, dat_path: str) -> list[np.ndarray]:
    """dlib's 150x150 RGB chips (68 landmarks, padding 0.25) of the largest face of the
    first LFW images (one per person, in name order) until ``n`` chips."""
    import cv2
    import dlib

    models = os.path.dirname(dat_path)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
    chips = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        img = cv2.imread(str(person / f"{person.name}_0001.jpg"))
        if img is None:
            continue
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        dets = detector(rgb, 0) or detector(rgb, 1)
        if not dets:
            continue
        shape = predictor(rgb, max(dets, key=lambda r: r.area()))
        chips.append(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        if len(chips) == n:
            break
    return chips


@pytest.fixture(scope="module")
def lfw_chips(lfw_images_dir: Path, dat_path: str) -> list[np.ndarray]:
    chips = _lfw_chips(lfw_images_dir, N_CHIPS, dat_path)
    if len(chips) < N_CHIPS:
        pytest.fail(f"only {len(chips)} LFW chips found")
    return chips


def test_torch_matches_dlib_on_lfw_chips(lfw_chips, pretrained, dat_path, torch_threads):
    import dlib

    rec = dlib.face_recognition_model_v1(dat_path)
    ref = np.array([np.asarray(v) for v in rec.compute_face_descriptor(lfw_chips)], np.float32)
    x = torch.from_numpy(np.stack(lfw_chips)).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        got = torch.cat([pretrained(b) for b in x.split(25)]).numpy()
    assert got.shape == ref.shape == (N_CHIPS, 128)
    diff = np.abs(got - ref)
    print(f"dlib vs torch on {N_CHIPS} LFW chips: max |diff| {diff.max():.3g}, "
          f"mean {diff.mean():.3g} (mean |value| {np.abs(ref).mean():.3g})")
    assert diff.max() <= TOL
    # and the normalised output is dlib's descriptor, L2-normalised
    pretrained.normalize = True
    try:
        with torch.inference_mode():
            unit = pretrained(x[:10]).numpy()
    finally:
        pretrained.normalize = False
    assert np.abs(unit - ref[:10] / np.linalg.norm(ref[:10], axis=1, keepdims=True)).max() <= TOL
