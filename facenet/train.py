"""One training step, one epoch, validation: FaceNet with triplet loss, no Ray.

The distributed context is injected (``rank``, ``world_size``, ``gather``), with
single-process defaults, so everything here runs in a plain CPU test; ``jobs.train_facenet``
is the thin Ray Train adapter around it.

Conventions
-----------
* Batches are float32 (N,3,S,S) RGB 0..255; the model standardises them itself.
* A *global* batch is P identities x K images split over the workers (``facenet.sampler``);
  with ``global_mining`` the loss sees every worker's embeddings (``facenet.losses``), as a
  single process on the concatenated batch would.
* The learning rate follows :func:`lr_at`: ``paper`` is the step schedule of the paper's
  FaceNet retraining (the base rate for the first third of the steps, /10 for the second,
  /100 for the last: 0.05 / 0.005 / 0.0005), ``cosine`` anneals to 1 % of the base rate,
  ``constant`` keeps it; an optional linear warm-up precedes each.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: the files of a training state (:func:`save_state`)
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"

OPTIMIZERS = ("sgd", "adam", "adagrad")
SCHEDULES = ("paper", "cosine", "constant")
TRAINABLE = ("all", "head")
MINING = ("batch_hard", "semi_hard", "batch_all", "random_violating")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the training arithmetic (stored in every checkpoint).

    ``model``/``model_kwargs``: a ``facenet.model`` registry entry; ``pretrained`` loads
    its shipped weights where it has some (``dlib_resnet``).  ``P``x``K``: identities x
    images of one *global* batch.  ``trainable``: ``all`` or ``head`` (only the model's
    ``head_modules``: the last stage and the embedding layer, for fine-tuning)."""

    model: str = field(default="dlib_resnet", metadata={
        "help": "facenet.model registry name (inception_resnet_v1, mobilefacenet, dlib_resnet)"})
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": False})
    pretrained: bool = field(default=True, metadata={"help": "start from the model's shipped weights (dlib_resnet)"})
    epochs: int = field(default=3, metadata={"help": "epochs"})
    steps_per_epoch: int = field(default=0, metadata={
        "help": "steps per epoch (0 = one pass over the identities)"})
    P: int = field(default=8, metadata={"help": "identities per global batch", "flag": "--P"})
    K: int = field(default=4, metadata={"help": "images per identity in a batch", "flag": "--K"})
    margin: float = field(default=0.2, metadata={"help": "triplet margin alpha on squared L2 distances"})
    mining: str = field(default="semi_hard", metadata={"help": f"triplet mining: {', '.join(MINING)}"})
    global_mining: bool = field(default=True, metadata={"help": "mine over every worker's embeddings (all-gather)"})
    optimizer: str = field(default="sgd", metadata={"help": f"optimiser: {', '.join(OPTIMIZERS)}"})
    lr: float = field(default=0.05, metadata={"help": "base learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay"})
    schedule: str = field(default="paper", metadata={
        "help": f"learning-rate schedule: {', '.join(SCHEDULES)} (paper: /10 after each third)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    trainable: str = field(default="all", metadata={
        "help": "all, or head (only the last stage and the embedding layer)"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, online masks and initialisation"})

    def __post_init__(self) -> None:
        checks = [(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
                  (self.trainable in TRAINABLE, f"trainable must be one of {TRAINABLE}"),
                  (self.mining in MINING, f"mining must be one of {MINING}"),
                  (self.epochs >= 1, "epochs must be >= 1"),
                  (self.P >= 2, "P (identities per batch) must be >= 2"),
                  (self.K >= 2, "K (images per identity) must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.margin >= 0, "margin must be >= 0"),
                  (self.steps_per_epoch >= 0, "steps_per_epoch must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of (0-based) ``step`` out of ``total_steps``."""
    total = max(int(total_steps), 1)
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(max(step, 0) / total, 1.0)
    if cfg.schedule == "paper":
        return cfg.lr * (1.0 if frac < 1 / 3 else 0.1 if frac < 2 / 3 else 0.01)
    if cfg.schedule == "cosine":
        floor = 0.01 * cfg.lr
        return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * frac))
    return cfg.lr


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_for_training(cfg: TrainConfig) -> nn.Module:
    """The registry model of ``cfg`` (pretrained where asked), frozen per ``cfg.trainable``."""
    from facenet import model as fmodel
    kw = dict(cfg.model_kwargs)
    if cfg.pretrained and cfg.model == "dlib_resnet":
        kw["pretrained"] = True
    net = fmodel.build_model(cfg.model, **kw)
    if cfg.trainable == "head":
        n = fmodel.freeze_all_but(net, net.head_modules)
        log.info("fine-tuning %s: %d trainable parameters in %s", cfg.model, n, ", ".join(net.head_modules))
    return net


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, cfg: TrainConfig, *, lr: float | None = None,
               gather: Callable | None = None, world_size: int = 1,
               generator: torch.Generator | None = None, scaler=None) -> dict[str, float]:
    """One optimiser step on this worker's share of a global P×K batch.

    ``images`` float32 (B,3,S,S) RGB 0..255 on the model's device, ``labels`` int64 (B,).
    ``gather``/``world_size``: the global-mining hook of :func:`facenet.losses.triplet_loss`
    (None: mine the local batch).  Returns the loss statistics plus ``lr`` and ``grad_norm``.
    """
    from facenet.losses import triplet_loss
    from facenet.model import set_frozen_bn_eval
    model.train()
    set_frozen_bn_eval(model)  # fine-tuning the head must not drift the frozen body's BN statistics
    if lr is not None:
        for g in optimizer.param_groups:
            g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    use_amp = scaler is not None and images.is_cuda
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=use_amp):
        emb = model(images)
    loss, stats = triplet_loss(emb.float(), labels, margin=cfg.margin, mining=cfg.mining,
                               gather=gather, generator=generator)
    if gather is not None and world_size > 1:
        # DDP averages gradients over the W workers; the loss over the global batch is the
        # same on every worker and each holds the graph of its own rows only, so the
        # average is 1/W of the single-process gradient: scale back (facenet.losses).
        loss = loss * world_size
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    if cfg.grad_clip > 0:
        gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    else:
        gn = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) if params else 0.0
    optimizer.step()
    out = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    out.update(lr=float(optimizer.param_groups[0]["lr"]), grad_norm=gn)
    return out


@torch.no_grad()
def embed(model: nn.Module, batches, device: torch.device | str = "cpu", flip_sum: bool = False) -> np.ndarray:
    """An iterable of float32 (n,3,S,S) RGB 0..255 arrays -> float32 (N,D) unit rows."""
    model.eval()
    out = []
    for x in batches:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        v = model(t)
        if flip_sum:
            v = v + model(torch.flip(t, dims=[3]))
        out.append(torch.nn.functional.normalize(v.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class ValidationSet:
    """Pairs for a verification figure during training.  ``crops`` float32 (N,3,S,S) RGB
    0..255 (made once), ``pairs`` int64 (M,2) indices into them, ``issame`` bool (M,);
    ``name`` labels the metrics (e.g. ``val`` or ``val_masked``)."""

    name: str
    crops: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray


def validate(model: nn.Module, vset: ValidationSet, device: torch.device | str = "cpu",
             batch_size: int = 64, far: float = 1e-3) -> dict[str, float]:
    """Max accuracy (10-fold), TPR@FAR and AUC of ``vset`` with ``facenet.metrics``:
    ``{name}_accuracy``, ``{name}_tpr@far=…``, ``{name}_auc``."""
    from facenet import metrics
    emb = embed(model, (vset.crops[i:i + batch_size] for i in range(0, len(vset.crops), batch_size)), device)
    a, b = emb[vset.pairs[:, 0]], emb[vset.pairs[:, 1]]
    dist = ((a - b) ** 2).sum(1)
    r = metrics.evaluate(dist, vset.issame, n_folds=min(10, max(2, len(dist) // 20)), far_targets=(far,))
    lab = metrics.target_label(far)
    return {f"{vset.name}_accuracy": float(r["accuracy"]), f"{vset.name}_tpr@far={lab}": float(r[f"tpr@far={lab}"]),
            f"{vset.name}_auc": float(r["auc"])}


def holdout_validation(held, alignment: str, size: int, n_pairs: int, mask_type: str | None,
                       seed: int = 0) -> list[ValidationSet]:
    """Held-out identities (``facenet.data.FaceRecords``, their unmasked rows) ->
    ``[val]`` pairs drawn with the seed, plus ``val_<mask_type>`` where the probe side of
    the same pairs wears that mask (template unmasked, as the paper's grid)."""
    from facenet import data as fdata

    only_orig = [i for i, v in enumerate(held.variants) if v == fdata.ORIGINAL]
    held = held.subset(only_orig) if only_orig else held
    pairs, same = fdata.make_pairs(held.labels, n_pairs, seed)
    crops = fdata.SampleLoader(held, alignment, size, seed=seed).batch(np.arange(len(held)), train=False)
    out = [ValidationSet("val", crops, pairs, same)]
    if mask_type:
        aug = fdata.AugmentConfig(mask_prob=1.0, mask_types=(mask_type,), flip=False)
        mcrops = fdata.SampleLoader(held, alignment, size, augment=aug, seed=seed).batch(np.arange(len(held)))
        probe_masked = pairs.copy()
        probe_masked[:, 1] += len(held)  # the masked copy of the probe image
        out.append(ValidationSet(f"val_{mask_type}", np.concatenate([crops, mcrops]), probe_masked, same))
    return out


def save_state(dirpath: str, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, *,
               epoch: int, step_in_epoch: int, step: int, metrics: Mapping[str, Any], history: list) -> None:
    """A resumable training state in ``dirpath``: ``model.pt`` (a ``facenet.model``
    checkpoint that evaluate reads as it is) and ``train_state.pt`` (optimiser, position,
    metrics history)."""
    import json
    import os

    from facenet import model as fmodel
    fmodel.save_checkpoint(os.path.join(dirpath, MODEL_FILE), model, train_config=cfg.to_dict(), epoch=epoch,
                           step=step, metrics=dict(metrics))
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                "step": step, "history": json.dumps(history)}, os.path.join(dirpath, STATE_FILE))


def load_state(dirpath: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int, int, list]:
    """:func:`save_state`'s folder -> model and optimiser filled;
    returns (epoch, step in that epoch, global step, history)."""
    import json
    import os

    from facenet import model as fmodel
    model.load_state_dict(fmodel.read_checkpoint(os.path.join(dirpath, MODEL_FILE))["state_dict"])
    st = torch.load(os.path.join(dirpath, STATE_FILE), weights_only=True)
    optimizer.load_state_dict(st["optimizer"])
    return int(st["epoch"]), int(st["step_in_epoch"]), int(st["step"]), json.loads(st["history"])


class EpochMeter:
    """Running means of step statistics plus samples/s over an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, stats: Mapping[str, float], samples: int) -> None:
        for k, v in stats.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1
        self.samples += int(samples)

    def result(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        out.update(steps=self.n, samples=self.samples, seconds=dt, samples_per_s=self.samples / dt)
        return out


def _prefetched(loader, plan: Sequence[np.ndarray], epoch: int, depth: int):
    """Yield ``loader.batch(plan[j], epoch, train=True)`` for j = 0, 1, ... in order.

    ``depth`` > 0: one background thread loads up to ``depth`` batches beyond the one being
    consumed, so loading overlaps the consumer's step; a failed load re-raises its own
    exception (``Future.result``) here, at the batch it belongs to.  When the consumer
    stops (done, an exception, a closed generator), batches not started are cancelled and
    the thread is joined: nothing keeps running after this generator is closed.  ``depth``
    0: loaded in the calling thread, one at a time."""
    if depth <= 0:
        for index in plan:
            yield loader.batch(index, epoch=epoch, train=True)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="facenet-prefetch")
    pending: deque = deque()
    try:
        nxt = 0
        for j in range(len(plan)):
            while nxt < len(plan) and nxt <= j + depth:
                pending.append(pool.submit(loader.batch, plan[nxt], epoch=epoch, train=True))
                nxt += 1
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # at most the batch in progress finishes


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, plan: Sequence[np.ndarray],
              labels: np.ndarray, cfg: TrainConfig, epoch: int, *, step0: int, total_steps: int,
              device: torch.device | str = "cpu", gather: Callable | None = None, world_size: int = 1,
              scaler=None, on_step: Callable[[int, dict], None] | None = None,
              prefetch: int = 1) -> dict[str, float]:
    """Train over ``plan`` (this worker's index batches for ``epoch``) with ``loader``
    (a :class:`facenet.data.SampleLoader`); returns the epoch's mean statistics.
    ``on_step(global_step, stats)`` is called after every step (checkpoints every N steps).

    ``prefetch``: while step j trains, a background thread loads batches j+1 .. j+prefetch
    (0: load each batch just before its step).  It changes when batches are loaded, not what
    they hold (each sample is seeded by itself) nor the step's arithmetic, so losses and
    weights are the same with and without it.  A load error is raised here, at its step;
    the thread is gone when this returns or raises."""
    meter = EpochMeter()
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + epoch)  # same on every worker
    batches = _prefetched(loader, plan, epoch, int(prefetch))
    try:
        for j, (index, xb) in enumerate(zip(plan, batches)):
            step = step0 + j
            x = torch.from_numpy(xb).to(device)
            y = torch.from_numpy(np.asarray(labels)[index]).to(device)
            stats = train_step(model, optimizer, x, y, cfg, lr=lr_at(cfg, step, total_steps), gather=gather,
                               world_size=world_size, generator=gen, scaler=scaler)
            meter.add(stats, len(index))
            if on_step is not None:
                on_step(step + 1, stats)
    finally:
        batches.close()  # stops and joins the prefetch thread, also when a step raised
    return meter.result()
