"""facenet.model: every registered network keeps the embedding contract (shape, unit norm,
a gradient on every trainable parameter, eval determinism), the registry, checkpoints
(file, Ray-Train-style directory, fsspec URI), and freezing for fine-tuning.

CPU only, batches of 2-4; Inception-ResNet-v1 at 160 px dominates the run time.
``dlib_resnet`` tests skip until facenet/dlib_resnet.py exists.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facenet import model as fm

OWN_MODELS = ("inception_resnet_v1", "mobilefacenet")
FIXED = ((127.5, 127.5, 127.5), (128.0, 128.0, 128.0))


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    """2 shared cores: keep torch to at most 2 threads here, restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def _build(name: str, **kw) -> nn.Module:
    if name == "dlib_resnet":
        pytest.importorskip("facenet.dlib_resnet", reason="facenet/dlib_resnet.py not written yet")
    torch.manual_seed(0)
    return fm.build_model(name, **kw)


def _images(model: nn.Module, n: int, seed: int = 1) -> torch.Tensor:
    """float32 (n,3,S,S) raw RGB in 0..255, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, model.input_size, model.input_size, generator=g) * 255.0


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


# ---------------------------------------------------------------------------------- contract

@pytest.mark.parametrize("name", fm.list_models())
def test_contract_attributes(name):
    model = _build(name)
    assert model.arch == name
    assert isinstance(model.arch_kwargs, dict) and "pretrained" not in model.arch_kwargs
    assert isinstance(model.input_size, int) and isinstance(model.embedding_dim, int)
    assert model.normalize is True
    mean, std = model.standardization
    assert len(mean) == 3 and len(std) == 3
    assert torch.allclose(model.mean.float(), torch.tensor(mean, dtype=torch.float32))
    assert torch.allclose(model.std.float(), torch.tensor(std, dtype=torch.float32))
    for head in model.head_modules:
        model.get_submodule(head)  # raises if the name is wrong
    rebuilt = fm.build_model(name, **model.arch_kwargs)
    assert sum(p.numel() for p in rebuilt.parameters()) == fm.count_parameters(model)


def test_own_models_sizes_and_standardization():
    irv1, mfn = fm.build_model("inception_resnet_v1"), fm.build_model("mobilefacenet")
    assert (irv1.input_size, irv1.embedding_dim, irv1.standardization) == (160, 512, FIXED)
    assert (mfn.input_size, mfn.embedding_dim, mfn.standardization) == (112, 128, FIXED)
    n_irv1, n_mfn = fm.count_parameters(irv1), fm.count_parameters(mfn)
    print(f"\nparameters: inception_resnet_v1 {n_irv1:,}, mobilefacenet {n_mfn:,}")
    assert 23.0e6 < n_irv1 < 24.0e6      # the published ~23.5M at 512-d
    assert 0.9e6 < n_mfn < 1.1e6         # the paper's 0.99M at 128-d
    assert fm.count_parameters(fm.build_model("mobilefacenet", embedding_dim=512)) == n_mfn + 384 * 512 + 2 * 384


def test_standardization_is_inside_the_model():
    model = _build("mobilefacenet").eval()  # the code is FaceEmbeddingNet's, shared by both
    x = _images(model, 2)
    with torch.no_grad():
        direct = nn.functional.normalize(model.embed_standardized((x - 127.5) / 128.0), dim=1)
        assert torch.allclose(model(x), direct, atol=1e-6)
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(1, 3, model.input_size + 8, model.input_size + 8))


@pytest.mark.parametrize("name", fm.list_models())
def test_forward_shape_unit_norm_no_nan(name):
    model = _build(name).eval()
    with torch.no_grad():
        y = model(_images(model, 2))
        raw = fm.build_model(name, **{**model.arch_kwargs, "normalize": False}).eval()
        raw.load_state_dict(model.state_dict())
        r = raw(_images(model, 2))
    assert y.shape == (2, model.embedding_dim) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(nn.functional.normalize(r, dim=1), y, atol=1e-5)


@pytest.mark.parametrize("name", fm.list_models())
def test_every_trainable_parameter_gets_a_gradient(name):
    model = _no_dropout(_build(name)).train()
    x = _images(model, 4)  # >= 3: batch norm over 2 samples leaves almost no gradient
    y = model(x)
    direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * direction).sum().backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)]
    assert not bad, f"{len(bad)} parameters without a usable gradient, e.g. {bad[:5]}"


@pytest.mark.parametrize("name", fm.list_models())
def test_eval_mode_is_deterministic_and_batch_independent(name):
    model = _build(name).eval()
    x = _images(model, 3)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], single, atol=1e-5)


# ---------------------------------------------------------------------------------- registry

def test_registry_errors_and_decorator():
    assert {"inception_resnet_v1", "mobilefacenet", "dlib_resnet"} <= set(fm.list_models())
    with pytest.raises(ValueError) as e:
        fm.build_model("resnet9000")
    assert all(n in str(e.value) for n in fm.list_models())
    with pytest.raises(TypeError):
        fm.build_model("mobilefacenet", no_such_kwarg=1)
    with pytest.raises(ValueError, match="pretrained"):
        fm.build_model("inception_resnet_v1", pretrained=True)
    with pytest.raises(ValueError, match="already registered"):
        fm.register_model("mobilefacenet")(lambda **kw: None)

    name = f"tiny_{uuid.uuid4().hex[:6]}"
    try:
        @fm.register_model(name)
        def tiny(**kw):
            return fm.MobileFaceNet(**kw)
        m = fm.build_model(name, embedding_dim=16)
        assert name in fm.list_models() and m.arch == name and m.embedding_dim == 16
    finally:
        fm._REGISTRY.pop(name, None)


def test_dlib_resnet_is_registered_lazily_and_loads_pretrained():
    pytest.importorskip("facenet.dlib_resnet", reason="facenet/dlib_resnet.py not written yet")
    model = fm.build_model("dlib_resnet", pretrained=True)
    assert (model.arch, model.input_size, model.embedding_dim) == ("dlib_resnet", 150, 128)
    assert "pretrained" not in model.arch_kwargs
    with torch.no_grad():
        y = model.eval()(_images(model, 2))
    assert torch.isfinite(y).all() and torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------------------------- checkpoints

@dataclasses.dataclass(frozen=True)
class _Cfg:
    model: str = "mobilefacenet"
    lr: float = 0.05
    out: Path = Path("/tmp/x")
    sizes: tuple = (1, 2)


def _trained_a_little(name: str) -> nn.Module:
    """A model whose BN running statistics are no longer the initial ones."""
    model = _build(name).train()
    with torch.no_grad():
        model(_images(model, 4, seed=3))
    return model.eval()


def _assert_plain(obj, where="ckpt"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), where
            _assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)), (where, type(obj))


@pytest.mark.parametrize("name", fm.list_models())
def test_checkpoint_round_trip_file(name, tmp_path):
    model = _trained_a_little(name)
    x = _images(model, 2, seed=4)
    with torch.no_grad():
        want = model(x)
    path = fm.save_checkpoint(tmp_path / "m.pt", model, train_config=_Cfg(), epoch=3, step=120,
                              metrics={"val_acc": np.float32(0.75), "hist": np.arange(3)}, extra={"note": "t"})
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # the temporary file was renamed, nothing left

    ckpt = fm.read_checkpoint(path)
    assert set(ckpt) == set(fm._CHECKPOINT_KEYS)
    _assert_plain(ckpt)
    assert (ckpt["format"], ckpt["arch"], ckpt["epoch"], ckpt["step"]) == (fm.CHECKPOINT_FORMAT, name, 3, 120)
    assert ckpt["input_size"] == model.input_size and ckpt["embedding_dim"] == model.embedding_dim
    assert ckpt["train_config"] == {"model": "mobilefacenet", "lr": 0.05, "out": "/tmp/x", "sizes": (1, 2)}
    assert ckpt["metrics"]["val_acc"] == pytest.approx(0.75) and ckpt["extra"] == {"note": "t"}

    loaded = fm.load_checkpoint(str(path))
    assert not loaded.training and loaded.arch == name and loaded.arch_kwargs == model.arch_kwargs
    assert loaded.checkpoint_meta["epoch"] == 3
    with torch.no_grad():
        assert torch.equal(loaded(x), want)


def test_checkpoint_directory_uri_and_wrappers(tmp_path):
    model = _trained_a_little("mobilefacenet")
    x = _images(model, 2, seed=5)
    with torch.no_grad():
        want = model(x)

    # Ray Train layout: <run>/checkpoint_000003/model.pt, loaded by the directory
    ray_dir = tmp_path / "run" / "checkpoint_000003"
    fm.save_checkpoint(ray_dir / "model.pt", model, epoch=3)
    # an existing directory as the target gets model.pt too; a DataParallel wrapper is unwrapped
    other = tmp_path / "other"
    other.mkdir()
    written = fm.save_checkpoint(other, nn.DataParallel(model), epoch=4)
    assert written == str(other / "model.pt")
    assert not any(k.startswith("module.") for k in fm.read_checkpoint(written)["state_dict"])
    # fsspec: file:// and an in-memory remote (the upload-from-temp-file path, no server)
    mem = f"memory://ckpt-{uuid.uuid4().hex[:8]}/run/checkpoint_000001/model.pt"
    fm.save_checkpoint(mem, model, epoch=1)

    for src in (ray_dir, str(ray_dir) + "/", other, f"file://{ray_dir}/model.pt", mem, mem.rsplit("/", 1)[0]):
        with torch.no_grad():
            assert torch.equal(fm.load_checkpoint(src)(x), want), src


def test_checkpoint_errors(tmp_path):
    model = fm.build_model("mobilefacenet")
    with pytest.raises(FileNotFoundError):
        fm.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty_ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        fm.load_checkpoint(tmp_path / "empty_ckpt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable"):
        fm.read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        fm.read_checkpoint(tmp_path / "other.pt")
    torch.save({"format": fm.CHECKPOINT_FORMAT, "cfg": _Cfg()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="not a readable"):  # weights_only refuses arbitrary objects
        fm.read_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(TypeError, match="metrics.f"):
        fm.save_checkpoint(tmp_path / "bad.pt", model, metrics={"f": object()})
    assert not (tmp_path / "bad.pt").exists()

    # a checkpoint whose record disagrees with the architecture it names
    path = fm.save_checkpoint(tmp_path / "m.pt", model)
    ckpt = fm.read_checkpoint(path)
    ckpt["input_size"] = 160
    torch.save(ckpt, tmp_path / "lying.pt")
    with pytest.raises(ValueError, match="input_size"):
        fm.load_checkpoint(tmp_path / "lying.pt")


# ---------------------------------------------------------------------------------- freezing

@pytest.mark.parametrize("name", OWN_MODELS)
def test_freeze_all_but_head(name):
    model = _no_dropout(_build(name)).train()
    head_params = sum(p.numel() for h in model.head_modules for p in model.get_submodule(h).parameters())
    n = fm.freeze_all_but(model, model.head_modules)
    assert n == head_params == fm.count_parameters(model, trainable_only=True) < fm.count_parameters(model)

    model.train()  # the models keep frozen batch norms in eval mode by themselves
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and not any(p.requires_grad for p in m.parameters())]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    assert model.get_submodule(model.head_modules[-1]).training  # last_bn keeps learning

    params0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    stats0 = _bn_stats(model)
    # the trainer may hand every parameter to the optimiser: weight decay must not move frozen ones
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        y = model(_images(model, 4, seed=10 + step))
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(step))).sum().backward()
        opt.step()

    head = tuple(h + "." for h in model.head_modules)
    for k, p in model.named_parameters():
        if k.startswith(head):
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None and torch.equal(p, params0[k]), k
    assert any(not torch.equal(p, params0[k]) for k, p in model.named_parameters() if k.startswith(head))
    stats1 = _bn_stats(model)
    for k in stats0:
        if k.startswith(head):
            continue
        assert torch.equal(stats0[k], stats1[k]), f"frozen BN statistic {k} moved"
    assert not torch.equal(stats0["last_bn.running_mean"], stats1["last_bn.running_mean"])


def test_freeze_helpers_errors_and_plain_modules():
    model = fm.build_model("mobilefacenet")
    with pytest.raises(ValueError, match="no module"):
        fm.freeze_all_but(model, ["stage9"])
    assert fm.freeze_all_but(model, "last_bn") == 2 * model.embedding_dim  # a single name works
    assert fm.freeze_all_but(model) == fm.count_parameters(model, trainable_only=True)  # default: head

    # set_frozen_bn_eval works on any module (e.g. a wrapped or foreign network)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, affine=False))
    for p in net[1].parameters():
        p.requires_grad_(False)
    net.train()
    assert fm.set_frozen_bn_eval(net) == 1
    assert not net[1].training and net[3].training and net[0].training


@pytest.mark.s3
def test_checkpoint_round_trip_s3(s3_server, s3_bucket, s3_env, tmp_path):
    """Save to and load from a real S3 API (``weed mini`` on 127.0.0.1): explicit
    ``storage_options``, and the ``AWS_*`` environment alone, as evaluate's actors get it."""
    model = _trained_a_little("mobilefacenet")
    x = _images(model, 2, seed=6)
    with torch.no_grad():
        want = model(x)
    ckpt_dir = f"{s3_bucket}/run/checkpoint_000002"
    fm.save_checkpoint(ckpt_dir + "/model.pt", model, epoch=2, storage_options=s3_server.storage_options())
    with torch.no_grad():
        assert torch.equal(fm.load_checkpoint(ckpt_dir, storage_options=s3_server.storage_options())(x), want)
        assert torch.equal(fm.load_checkpoint(ckpt_dir + "/model.pt")(x), want)  # endpoint from the env
    with pytest.raises(FileNotFoundError):
        fm.load_checkpoint(f"{s3_bucket}/run/checkpoint_000009")
