"""dlib's face-recognition ResNet rebuilt in PyTorch, its weights read from dlib's own file.

``dlib_face_recognition_resnet_model_v1.dat`` (public domain, shipped by the PyPI package
``face_recognition_models``) is the ``anet_type`` network of dlib's
``examples/dnn_face_recognition_ex.cpp`` written with ``dlib::serialize``.  This module reads
that binary format in pure Python (no dlib, no C++ build) and fills :class:`DlibResNet`, a
plain ``nn.Module`` that computes the same 128-d descriptor (``normalize=False``; max
|difference| to dlib ~1e-6 on LFW chips, see ``tests/test_dlib_resnet.py``) and that can be
fine-tuned and run on a GPU, which dlib-bin cannot.

The network (input 150x150 RGB chip from ``dlib.get_face_chip(img, shape, 150, 0.25)``)::

    stem    conv 7x7/2 (32, no padding) -> affine -> relu -> max_pool 3x3/2 (no padding)
    stage1  3 x ares(32)                                      35x35
    stage2  ares_down(64)  + 3 x ares(64)                     17x17
    stage3  ares_down(128) + 2 x ares(128)                     8x8
    stage4  ares_down(256) + 2 x ares(256) + ares_down(256)    4x4 -> 2x2
    head    mean over HxW -> fc 256->128 without bias

``ares(N)`` is ``relu(x + block(x))``; ``block`` is conv3x3 -> affine -> relu -> conv3x3 ->
affine, where the first conv has stride 2 in ``ares_down``.  dlib's conventions that matter:

* dlib's ``con_``/``max_pool_``/``avg_pool_`` default padding is ``size//2`` for stride 1 and
  **0 for any other stride**: the stride-2 3x3 convs and the 7x7 stem conv are unpadded.
* ``ares_down``'s shortcut is ``avg_pool 2x2/2`` (unpadded) of the block input, and dlib's
  ``add_prev`` adds tensors of different shapes by zero-filling the missing elements (at the
  end of each dimension): the extra channels of the wider block output get nothing from the
  shortcut, and where the pooled shortcut is larger than the strided conv output (8x8 -> 3x3
  vs 4x4, 4x4 -> 1x1 vs 2x2) the block output is zero-padded at the bottom/right.
* ``affine`` is batch norm folded into a per-channel scale and shift (dlib converts
  ``bn_con`` to ``affine_`` for deployment; the running statistics are gone).
* ``input_rgb_image_sized`` standardises as ``(pixel - mean_c) / 256`` with the per-channel
  means stored in the file (122.782, 117.001, 104.298 for R, G, B).

Fine-tuning: the affine layers are :class:`ChannelAffine` modules whose ``weight``/``bias``
are ordinary trainable parameters, i.e. the network behaves like one with *frozen* batch
norm statistics (as torchvision's ``FrozenBatchNorm2d``, but with trainable scale/shift).
We deliberately offer no conversion to ``BatchNorm2d``: the folded mean/variance cannot be
recovered from the file, so a BatchNorm in train mode would normalise with batch statistics
and then apply a scale that was fitted to the *un*-normalised activations - a different
function from the pretrained one at step 0.  Small fine-tuning batches (P x K of a few
dozen) are also where batch statistics are least reliable.

On a GPU: PyTorch lets cuDNN convolutions use TF32 by default
(``torch.backends.cudnn.allow_tf32``), ~1e-3 relative error; set it to False where the
descriptor must match dlib's to 1e-6 rather than to a few 1e-4.  (Not measured here: the
2-core development machine has no GPU.)

File format (read from dlib's ``serialize.h``, ``dnn/core.h``, ``dnn/layers.h``,
``dnn/input.h``, ``dnn/loss.h``, ``dnn/tensor.h``):

* integers: a control byte (bit 7 = negative, low 4 bits = byte count) then the absolute
  value little-endian; bools are the ASCII bytes ``'0'``/``'1'``; strings an integer length
  then the bytes.
* floats/doubles: dlib's ``float_details`` - the integer *mantissa* then the integer
  *exponent* (value = mantissa * 2**exponent; exponents 32000/32001/32002 = +inf/-inf/NaN).
  (serialize.h's header comment says exponent first; the code writes the mantissa first.)
* tensors (``resizable_tensor``): version 2 = int n, k, nr, nc then n*k*nr*nc raw
  little-endian float32; version 1 = the same dims with one ``float_details`` per value.
  ``alias_tensor``: version 1 then n, k, nr, nc (no data).
* ``add_loss_layer``: version, loss details, then the subnetwork.  ``add_layer``: version,
  **the subnetwork**, then its layer details, 3 bools, x_grad, cached_output (+ params_grad
  for version 2); the add_layer directly on the input layer instead ends with grad_final and
  (version 3) the sample expansion factor.  ``add_tag_layer``/``add_skip_layer``: version,
  subnetwork.  So the file holds the loss, then a run of version numbers walking down the
  template nesting, then the input layer, then the layer details from the input upwards.
  ``add_prev_`` does not store its tag id: the nesting (tags, skips) comes from
  :func:`anet_spec`, which mirrors the C++ template aliases.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["DLIB_DAT", "DLIB_MEAN_RGB", "ChannelAffine", "DlibFormatError", "DlibRecord",
           "DlibResNet", "anet_spec", "default_dat_path", "load_dlib_weights", "read_dlib_dat"]

DLIB_DAT = "dlib_face_recognition_resnet_model_v1.dat"
#: input_rgb_image_sized's per-channel means (also read from the file by load_dlib_weights)
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0


def default_dat_path() -> str:
    """Path of ``dlib_face_recognition_resnet_model_v1.dat`` inside ``face_recognition_models``.

    Located through importlib: importing the package itself fails on setuptools >= 81 (it
    imports ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package 'face_recognition_models' is not installed "
                                "(pip install face_recognition_models); it ships " + DLIB_DAT)
    path = os.path.join(next(iter(spec.submodule_search_locations)), "models", DLIB_DAT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{DLIB_DAT} not found at {path}")
    return path


# ------------------------------------------------------------------------------ the spec
# The network as dlib's template nesting, outermost first: one token per layer object.
# ("loss", name) | ("layer", name, expected fields) | ("tag", id) | ("skip", id) | ("input", name)

def _block(n: int, stride: int) -> list[tuple]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>, BN = affine
    return [("layer", "affine", {}), ("layer", "con", {"num_filters": n, "nr": 3, "stride": 1}),
            ("layer", "relu", {}), ("layer", "affine", {}),
            ("layer", "con", {"num_filters": n, "nr": 3, "stride": stride})]


def _ares(n: int) -> list[tuple]:
    # ares = relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [("layer", "relu", {}), ("layer", "add_prev", {"tag": 1}), *_block(n, 1), ("tag", 1)]


def _ares_down(n: int) -> list[tuple]:
    # ares_down = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [("layer", "relu", {}), ("layer", "add_prev", {"tag": 2}),
            ("layer", "avg_pool", {"nr": 2, "stride": 2}), ("skip", 1), ("tag", 2),
            *_block(n, 2), ("tag", 1)]


def anet_spec() -> list[tuple]:
    """The tokens of ``anet_type`` (dnn_face_recognition_ex.cpp), outermost first."""
    levels = (_ares_down(256)                                              # alevel0
              + _ares(256) + _ares(256) + _ares_down(256)                  # alevel1
              + _ares(128) + _ares(128) + _ares_down(128)                  # alevel2
              + _ares(64) + _ares(64) + _ares(64) + _ares_down(64)         # alevel3
              + _ares(32) + _ares(32) + _ares(32))                         # alevel4
    return [("loss", "loss_metric"), ("layer", "fc", {"num_outputs": 128}),
            ("layer", "avg_pool", {"nr": 0}), *levels,
            ("layer", "max_pool", {"nr": 3, "stride": 2}), ("layer", "relu", {}),
            ("layer", "affine", {}), ("layer", "con", {"num_filters": 32, "nr": 7, "stride": 2}),
            ("input", "input_rgb_image_sized")]


# ------------------------------------------------------------------------------ the reader

class DlibFormatError(ValueError):
    """The bytes do not follow dlib's serialisation of the expected network."""


@dataclass
class DlibRecord:
    """One layer object of the file.

    ``index``: position from the input (0 = the input layer; the loss is last).
    ``kind``: the record's own name in the file ("input_rgb_image_sized", "con_4", "affine_",
    "relu_", "max_pool_2", "avg_pool_2", "add_prev_", "fc_2", "loss_metric_2") or "tag" /
    "skip" (which store no name).  ``fields``: its scalar fields; ``tensors``: its numeric
    data as float32 arrays (con: weight (F,C,kh,kw), bias (F,); affine: gamma (C,), beta (C,);
    fc: weight (in,out) as dlib stores it [, bias]).  ``offset``: byte offset of its details
    (of its version number for tags and skips)."""

    index: int
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = -1


class _Reader:
    """dlib::deserialize primitives over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self.b = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos} (wanted {n})")
        out = self.b[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def uint(self) -> int:
        value = self.int()
        if value < 0:
            raise DlibFormatError(f"negative value for an unsigned field at byte {self.pos}")
        return value

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        return self._take(self.uint()).decode("latin-1")

    def float(self) -> float:
        # The legacy text format is recognised by bits 0x70 of the first byte (set for ASCII
        # digits, never in a control byte).  This model is written in the binary format.
        if self.b[self.pos] & 0x70:
            raise DlibFormatError(f"old ASCII float format at byte {self.pos} is not supported")
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(float(mantissa), exponent)

    def tensor(self) -> np.ndarray:
        """A resizable_tensor -> float32 array of shape (n, k, nr, nc)."""
        version = self.int()
        dims = tuple(self.int() for _ in range(4))
        if min(dims) < 0:
            raise DlibFormatError(f"negative tensor dimensions {dims} at byte {self.pos}")
        count = int(np.prod(dims))
        if version == 2:
            arr = np.frombuffer(self._take(4 * count), "<f4").astype(np.float32)
        elif version == 1:  # one float_details per value (old dlib)
            arr = np.array([self.float() for _ in range(count)], np.float32)
        else:
            raise DlibFormatError(f"unknown tensor version {version} at byte {self.pos}")
        return arr.reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"unknown alias_tensor version {version} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _read_con(r: _Reader, rec: DlibRecord) -> None:
    params = r.tensor().reshape(-1)
    f = rec.fields
    f["num_filters"], f["nr"], f["nc"] = r.int(), r.int(), r.int()
    f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"] = (r.int() for _ in range(4))
    filters, biases = r.alias_tensor(), r.alias_tensor()
    f["multipliers"] = tuple(r.float() for _ in range(4))  # lr, wd, bias lr, bias wd
    n_w = int(np.prod(filters))
    if filters[0] != f["num_filters"] or filters[2:] != (f["nr"], f["nc"]) \
            or int(np.prod(biases)) != f["num_filters"] or params.size != n_w + f["num_filters"]:
        raise DlibFormatError(f"con_ shapes disagree: filters {filters}, biases {biases}, "
                              f"{params.size} params")
    rec.tensors["weight"] = params[:n_w].reshape(filters)
    rec.tensors["bias"] = params[n_w:].copy()


def _read_affine(r: _Reader, rec: DlibRecord) -> None:
    params = r.tensor().reshape(-1)
    gamma, beta = r.alias_tensor(), r.alias_tensor()
    rec.fields["mode"] = r.int()  # 0 = CONV_MODE (per channel), 1 = FC_MODE
    n = int(np.prod(gamma))
    if gamma != beta or params.size != 2 * n:
        raise DlibFormatError(f"affine_ shapes disagree: gamma {gamma}, beta {beta}, {params.size} params")
    rec.tensors["gamma"], rec.tensors["beta"] = params[:n].copy(), params[n:].copy()


def _read_pool(r: _Reader, rec: DlibRecord) -> None:
    f = rec.fields
    f["nr"], f["nc"], f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"] = (
        r.int() for _ in range(6))


def _read_fc(r: _Reader, rec: DlibRecord) -> None:
    f = rec.fields
    f["num_outputs"], f["num_inputs"] = r.uint(), r.uint()
    params = r.tensor().reshape(-1)
    weights, _biases = r.alias_tensor(), r.alias_tensor()
    f["bias_mode"] = r.int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    f["multipliers"] = tuple(r.float() for _ in range(4))
    n_in, n_out = f["num_inputs"], f["num_outputs"]
    n_w = n_in * n_out
    want = n_w + (n_out if f["bias_mode"] == 0 else 0)
    if int(np.prod(weights)) != n_w or params.size != want:
        raise DlibFormatError(f"fc_ shapes disagree: weights {weights}, {params.size} params")
    rec.tensors["weight"] = params[:n_w].reshape(n_in, n_out)  # output = input @ weight
    if f["bias_mode"] == 0:
        rec.tensors["bias"] = params[n_w:].copy()


_DETAILS = {"con_4": ("con", _read_con), "affine_": ("affine", _read_affine),
            "relu_": ("relu", None), "max_pool_2": ("max_pool", _read_pool),
            "avg_pool_2": ("avg_pool", _read_pool), "add_prev_": ("add_prev", None),
            "fc_2": ("fc", _read_fc)}


def _check_expected(rec: DlibRecord, expect: dict) -> None:
    f = rec.fields
    got = {"num_filters": f.get("num_filters"), "nr": f.get("nr"), "stride": f.get("stride_y"),
           "num_outputs": f.get("num_outputs"), "tag": f.get("tag")}
    for key, want in expect.items():
        if got.get(key) != want:
            raise DlibFormatError(f"layer {rec.index} ({rec.kind}) at byte {rec.offset}: "
                                  f"{key}={got.get(key)}, the network has {want}")
    if f.get("stride_y") != f.get("stride_x") or f.get("nr", 0) != f.get("nc", 0):
        raise DlibFormatError(f"layer {rec.index} ({rec.kind}): non-square window or stride")


def _read_details(r: _Reader, token: tuple, index: int) -> DlibRecord:
    offset = r.pos
    name = r.string()
    if name not in _DETAILS or _DETAILS[name][0] != token[1]:
        raise DlibFormatError(f"layer {index} at byte {offset}: found {name!r}, the network "
                              f"has a {token[1]} layer here")
    rec = DlibRecord(index, name, offset=offset)
    reader = _DETAILS[name][1]
    if reader is not None:
        reader(r, rec)
    if name == "add_prev_":
        rec.fields["tag"] = token[2]["tag"]  # not stored in the file: from the nesting
    _check_expected(rec, token[2])
    return rec


def _read_input(r: _Reader) -> DlibRecord:
    offset = r.pos
    name = r.string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"expected input_rgb_image_sized at byte {offset}, found {name!r}")
    rec = DlibRecord(0, name, offset=offset)
    rec.fields["mean_rgb"] = tuple(r.float() for _ in range(3))
    rec.fields["nr"], rec.fields["nc"] = r.uint(), r.uint()
    return rec


def _read_loss(r: _Reader) -> DlibRecord:
    if (v := r.int()) != 1:
        raise DlibFormatError(f"unknown add_loss_layer version {v}")
    offset = r.pos
    name = r.string()
    rec = DlibRecord(-1, name, offset=offset)
    if name == "loss_metric_2":
        rec.fields["margin"], rec.fields["dist_thresh"] = r.float(), r.float()
    elif name == "loss_metric_":  # the older record: fixed values
        rec.fields["margin"], rec.fields["dist_thresh"] = 0.1, 0.75
    else:
        raise DlibFormatError(f"expected a loss_metric_ record at byte {offset}, found {name!r}")
    return rec


def _skip_layer_state(r: _Reader, version: int, on_input: bool) -> None:
    """The add_layer bookkeeping after the details (nothing the forward pass needs)."""
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, ..._disabled
        r.bool()
    for _ in range(2):  # x_grad, cached_output
        r.tensor()
    if on_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.int()  # sample expansion factor
    elif version == 2:
        r.tensor()  # params_grad


def read_dlib_dat(path: str | os.PathLike | None = None, spec: list[tuple] | None = None
                  ) -> list[DlibRecord]:
    """Parse a dlib DNN file of the ``anet_type`` network (``spec``, default
    :func:`anet_spec`) -> records in forward order: input first, then every layer, tag and
    skip from the input upwards, the loss last.  Raises :class:`DlibFormatError` when the
    bytes do not match the network, or are not consumed exactly to the end."""
    path = os.fspath(path) if path is not None else default_dat_path()
    spec = spec or anet_spec()
    r = _Reader(Path(path).read_bytes())
    loss = _read_loss(r)
    chain = spec[1:-1]  # outermost layer .. innermost layer (the input is the last token)
    versions: list[int] = []
    offsets: list[int] = []
    for i, token in enumerate(chain):
        offsets.append(r.pos)
        v = r.int()
        on_input = i == len(chain) - 1
        ok = {"layer": (2, 3) if on_input else (1, 2), "tag": (1,), "skip": (1,)}[token[0]]
        if v not in ok:
            raise DlibFormatError(f"{token[0]} {token[1]} at byte {offsets[-1]}: version {v}")
        versions.append(v)
    records = [_read_input(r)]
    # details come back from the innermost layer outwards
    for depth in range(len(chain) - 1, -1, -1):
        token, index = chain[depth], len(chain) - depth
        if token[0] != "layer":
            records.append(DlibRecord(index, token[0], {"id": token[1]}, offset=offsets[depth]))
            continue
        records.append(_read_details(r, token, index))
        _skip_layer_state(r, versions[depth], on_input=depth == len(chain) - 1)
    loss.index = len(records)
    records.append(loss)
    if r.pos != len(r.b):
        raise DlibFormatError(f"{len(r.b) - r.pos} bytes left after the network (of {len(r.b)})")
    return records


# ------------------------------------------------------------------------------ the model

def _dlib_padding(kernel: int, stride: int) -> int:
    """dlib's default padding for con_/max_pool_/avg_pool_: size//2 at stride 1, else 0."""
    return kernel // 2 if stride == 1 else 0


class ChannelAffine(nn.Module):
    """dlib's ``affine_`` (batch norm folded into scale and shift): (N,C,H,W) ->
    x * weight[c] + bias[c].  Both are trainable parameters (frozen-statistics batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return str(self.weight.numel())


def _add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b where shapes differ in C, H or W; missing elements count as 0
    (zero-filled at the end of each dimension)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class DlibResidual(nn.Module):
    """``ares`` (stride 1: relu(x + block(x))) or ``ares_down`` (stride 2: relu(block(x) +
    avg_pool2x2/2(x)), dlib's zero-filled add).  (N,C_in,H,W) -> (N,C_out,H',W')."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride == 1 and in_channels != channels:
            raise ValueError("a stride-1 block keeps the channel count (identity shortcut)")
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, _dlib_padding(3, stride))
        self.affine1 = ChannelAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, _dlib_padding(3, 1))
        self.affine2 = ChannelAffine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = x if self.stride == 1 else F.avg_pool2d(x, 2, 2, _dlib_padding(2, 2))
        return F.relu(_add_zero_filled(y, shortcut))


#: (channels, stride) of every residual block, stage by stage (dlib's alevel4 .. alevel0;
#: alevel1 and alevel0 both have 256 filters and form stage4 here)
STAGES = {"stage1": ((32, 1), (32, 1), (32, 1)),
          "stage2": ((64, 2), (64, 1), (64, 1), (64, 1)),
          "stage3": ((128, 2), (128, 1), (128, 1)),
          "stage4": ((256, 2), (256, 1), (256, 1), (256, 2))}


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: float32 (N,3,150,150) RGB 0..255 (dlib's 150x150 face
    chip) -> float32 (N,embedding_dim), L2-normalised when ``normalize`` (else dlib's raw
    descriptor).  Weights are random until :func:`load_dlib_weights`.

    ``embedding_dim`` other than 128 gives a fresh ``fc`` (load the rest with
    ``load_dlib_weights(model, skip_fc=True)``)."""

    arch = "dlib_resnet"
    input_size = 150
    head_modules = ("stage4", "fc")

    def __init__(self, embedding_dim: int = 128, normalize: bool = True) -> None:
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.arch_kwargs = {"embedding_dim": self.embedding_dim, "normalize": self.normalize}
        self.standardization = (DLIB_MEAN_RGB, (DLIB_SCALE,) * 3)
        self.register_buffer("mean", torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32))
        self.register_buffer("std", torch.full((3,), DLIB_SCALE, dtype=torch.float32))
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 32, 7, 2, _dlib_padding(7, 2)), affine=ChannelAffine(32),
            relu=nn.ReLU(), pool=nn.MaxPool2d(3, 2, _dlib_padding(3, 2))))
        in_ch = 32
        for name, blocks in STAGES.items():
            layers = []
            for ch, stride in blocks:
                layers.append(DlibResidual(in_ch, ch, stride))
                in_ch = ch
            self.add_module(name, nn.Sequential(*layers))
        self.fc = nn.Linear(in_ch, self.embedding_dim, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,150,150) RGB 0..255 -> (N,256) pooled features before ``fc``."""
        x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        x = self.stem(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return x.mean(dim=(2, 3))  # dlib's avg_pool_everything

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.fc(self.features(x))
        return F.normalize(emb, dim=1) if self.normalize else emb

    def dlib_layers(self) -> list[tuple[str, nn.Module]]:
        """Modules with weights, in the file's order (from the input): (name, module)."""
        out: list[tuple[str, nn.Module]] = [("stem.conv", self.stem.conv),
                                            ("stem.affine", self.stem.affine)]
        for stage in STAGES:
            for i, blk in enumerate(getattr(self, stage)):
                p = f"{stage}.{i}"
                out += [(f"{p}.conv1", blk.conv1), (f"{p}.affine1", blk.affine1),
                        (f"{p}.conv2", blk.conv2), (f"{p}.affine2", blk.affine2)]
        out.append(("fc", self.fc))
        return out


def _copy(dst: torch.Tensor, src: np.ndarray, name: str) -> None:
    if tuple(dst.shape) != src.shape:
        raise ValueError(f"{name}: the file has shape {src.shape}, the model {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(torch.from_numpy(np.ascontiguousarray(src)))


def load_dlib_weights(model: DlibResNet, path: str | os.PathLike | None = None, *,
                      skip_fc: bool = False) -> DlibResNet:
    """Fill ``model`` from dlib's ``.dat`` (default: the one in ``face_recognition_models``);
    returns the model.  Also sets the standardisation buffers to the file's exact means.
    ``skip_fc`` leaves the embedding layer as it is (for another ``embedding_dim``)."""
    records = read_dlib_dat(path)
    weighted = [r for r in records if r.kind in ("con_4", "affine_", "fc_2")]
    targets = model.dlib_layers()
    if len(weighted) != len(targets):
        raise ValueError(f"the file has {len(weighted)} weighted layers, the model {len(targets)}")
    for rec, (name, mod) in zip(weighted, targets):
        if rec.kind == "con_4":
            if not isinstance(mod, nn.Conv2d) or mod.stride[0] != rec.fields["stride_y"] \
                    or mod.padding[0] != rec.fields["padding_y"]:
                raise ValueError(f"{name}: the file's conv (stride {rec.fields['stride_y']}, "
                                 f"padding {rec.fields['padding_y']}) does not fit {mod}")
            _copy(mod.weight, rec.tensors["weight"], name)
            _copy(mod.bias, rec.tensors["bias"], name)
        elif rec.kind == "affine_":
            if not isinstance(mod, ChannelAffine) or rec.fields["mode"] != 0:
                raise ValueError(f"{name}: expected a per-channel affine_ for {mod}")
            _copy(mod.weight, rec.tensors["gamma"], name)
            _copy(mod.bias, rec.tensors["beta"], name)
        elif not skip_fc:
            _copy(mod.weight, rec.tensors["weight"].T, name)  # dlib: out = in @ W
    means = records[0].fields["mean_rgb"]
    if max(abs(a - b) for a, b in zip(means, DLIB_MEAN_RGB)) > 1e-3:
        raise ValueError(f"the file's input means {means} differ from {DLIB_MEAN_RGB}")
    with torch.no_grad():
        model.mean.copy_(torch.tensor(means, dtype=torch.float32))
    log.info("loaded %d dlib layers from %s", len(weighted), path or default_dat_path())
    return model
