"""Triplet loss with online mining, on one process or across workers (global mining).

Distances are **squared** L2 between embeddings (the models L2-normalise them, so
distances lie in [0, 4]); the margin ``alpha`` defaults to FaceNet's 0.2.  A triplet
``(a, p, n)`` has ``label[a] == label[p]``, ``a != p`` and ``label[n] != label[a]``; its
hinge loss is ``max(0, d(a,p) - d(a,n) + margin)``, or ``softplus(d(a,p) - d(a,n))`` with
``soft_margin=True`` (Hermans et al. 2017).  A triplet is *active* when it violates the
margin (``d(a,n) - d(a,p) < margin``, i.e. the hinge is > 0).

Mining modes (all vectorised; indices are chosen on detached distances, the loss is
then taken on the differentiable ones):

``batch_hard`` (Hermans et al., "In Defense of the Triplet Loss")
    One triplet per anchor: its farthest positive and its closest negative.  Loss: the
    mean over anchors.
``semi_hard`` (FaceNet; the rule of TF-Addons' ``triplet_semihard_loss``)
    One triplet per ordered anchor-positive pair ``(a, p)``, both orders: the negative
    with the *smallest* ``d(a,n)`` among those with ``d(a,n) > d(a,p)`` (the hardest
    semi-hard negative when one lies inside the margin; if the nearest such negative is
    beyond the margin the triplet's loss is 0).  When no negative is farther than the
    positive (every negative is "hard"), the fallback is the *largest* ``d(a,n)``, the
    easiest of the hard ones (counted in ``n_fallback``).  Deterministic, no generator.
    Loss: the mean over all pairs, inactive ones included.
``batch_all``
    Every valid triplet.  Loss: the sum over active triplets divided by their number (0
    when none is active); with ``soft_margin`` the mean over all valid triplets.
``random_violating`` (davidsandberg/facenet ``train_tripletloss.select_triplets``)
    For every ordered anchor-positive pair, a negative drawn uniformly among those with
    ``d(a,n) - d(a,p) < margin``; pairs without such a negative give no triplet (counted
    in ``n_unmatched_pairs``).  The reference code takes each unordered pair once with the
    earlier image as anchor; both orders are used here, which makes the loss symmetric
    in ``a, p``.  The draw consumes exactly one ``torch.rand(n_pairs)`` of ``generator``
    (None: torch's global generator).  Loss: the mean over the chosen triplets.

Memory.  ``N`` embeddings (the global batch), ``T`` ordered anchor-positive pairs (for a
P×K batch ``T = N (K-1)``): the distance matrix and label masks are O(N²); the pair modes
(``semi_hard``, ``random_violating``, ``batch_all``) scan ``(T, N)`` in row chunks of at
most ``chunk_elements`` (default 2**24: ~100 MB of float32 and bool temporaries), so
nothing O(N³) is ever held; ``batch_all`` keeps O(N²) weight matrices instead of its
O(N·T) triplets (its gradient is linear in the distances with triplet-count weights).
Example: N = 1800, K = 40 gives T = 70,200 and 8 chunks of 2**24.

Global mining (see :func:`all_gather_embeddings`).  ``gather(emb, labels) -> (all_emb,
all_labels, local_slice)`` returns the global batch whose ``local_slice`` rows are this
worker's ``emb`` *with its graph* and the other rows constants.  Every worker then
computes the loss over **all global anchors**: the same value on every worker (same
inputs, same code, and for ``random_violating`` a generator in the same state on every
worker, e.g. seeded from (seed, epoch) and advanced once per step), and each worker's
backward yields exactly the single-process gradient's share that flows through its own
rows -- as anchor, positive *and* negative.  Summing those shares over workers gives the
single-process gradient of the concatenated batch; DDP *averages* (divides by W), so
**the caller multiplies the loss by W before backward** (``facenet.train.train_step``
does), or passes ``grad_scale=W`` to :func:`all_gather_embeddings`, never both.  Using
only local anchors instead would not be exact: gradients reaching this worker's rows
as positives/negatives of other workers' anchors would be lost.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MINING_MODES",
    "GatherFn",
    "Triplets",
    "all_gather_embeddings",
    "identity_gather",
    "label_masks",
    "mine_triplets",
    "pairwise_sq_dists",
    "triplet_loss",
]

log = logging.getLogger(__name__)

MINING_MODES = ("batch_hard", "semi_hard", "batch_all", "random_violating")
DEFAULT_CHUNK_ELEMENTS = 2**24

GatherFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor, slice]"]


class Triplets(NamedTuple):
    """Index triplets into the (global) batch, int64 (T,) each, plus mining counts."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    n_pairs: int = 0  # anchor-positive pairs considered (pair modes), anchors (batch_hard)
    n_fallback: int = 0  # semi_hard: pairs with no negative farther than the positive
    n_unmatched: int = 0  # random_violating: pairs with no margin-violating negative


# ----------------------------------------------------------------------------- gather


def identity_gather(emb: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, slice]:
    """Single process: the global batch is the local one.  (B,D), (B,) -> same, slice(0,B)."""
    return emb, labels, slice(0, emb.shape[0])


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _all_gather_padded(x: Tensor, sizes: list[int], group: Any) -> list[Tensor]:
    """all_gather of (n_r, ...) tensors whose first dims differ: pad to max(sizes), trim."""
    m = max(sizes)
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
    xp = torch.cat([x, pad]) if pad.shape[0] else x.contiguous()
    bufs = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(bufs, xp, group=group)
    return [b[:n] for b, n in zip(bufs, sizes)]


def all_gather_embeddings(emb: Tensor, labels: Tensor, *, group: Any = None,
                          grad_scale: float = 1.0) -> tuple[Tensor, Tensor, slice]:
    """The global batch of every worker's embeddings and labels (a ``gather`` for
    :func:`triplet_loss`).

    ``emb`` (B_r, D) float with its graph, ``labels`` (B_r,) int -> ``all_emb`` (N, D)
    ordered by rank, ``all_labels`` int64 (N,), ``local_slice`` (this rank's rows).
    ``dist.all_gather`` into plain buffers, then this rank's slot is replaced by ``emb``
    itself, so gradients reach exactly the local rows (the other rows are constants).
    Ranks may have different batch sizes (the sizes are exchanged first and the tensors
    padded; one extra tiny collective per call).  Without an initialised process group
    (or with one worker) this is :func:`identity_gather`.

    ``grad_scale`` multiplies the gradient reaching ``emb`` (the value is unchanged).
    Leave it at 1 when the caller multiplies the loss by the world size before DDP's
    gradient averaging (the convention of ``facenet.train``); pass W instead to get
    the exact single-process gradient without touching the loss.  See the module doc.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return identity_gather(emb, labels)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    labels = torch.as_tensor(labels, device=emb.device).to(torch.int64)
    n_local = torch.tensor([emb.shape[0]], device=emb.device, dtype=torch.int64)
    n_bufs = [torch.empty_like(n_local) for _ in range(world)]
    dist.all_gather(n_bufs, n_local, group=group)
    sizes = [int(n) for n in torch.cat(n_bufs).tolist()]
    embs = _all_gather_padded(emb.detach(), sizes, group)
    labs = _all_gather_padded(labels, sizes, group)
    embs[rank] = _ScaleGrad.apply(emb, float(grad_scale)) if grad_scale != 1.0 else emb
    start = sum(sizes[:rank])
    return torch.cat(embs), torch.cat(labs), slice(start, start + sizes[rank])


# ----------------------------------------------------------------------------- distances


def pairwise_sq_dists(emb: Tensor) -> Tensor:
    """(N, D) -> (N, N) squared L2 distances, float32 (float64 kept), differentiable.

    Computed as ``|x|² + |y|² - 2 x·y`` with autocast off (a half-precision Gram matrix
    loses the small differences mining depends on), clamped at 0, exact 0 diagonal."""
    x = emb if emb.dtype in (torch.float32, torch.float64) else emb.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        sq = (x * x).sum(1)
        d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return d.clamp_min(0.0).masked_fill(eye, 0.0)


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """int (N,) -> (positive, negative) bool (N, N): same label and not the diagonal;
    different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _chunks(n_rows: int, n_cols: int, chunk_elements: int) -> list[slice]:
    """Row slices of a (n_rows, n_cols) scan, each at most ``chunk_elements`` elements."""
    step = max(1, chunk_elements // max(1, n_cols))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _pairs(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Ordered anchor-positive pairs whose anchor has a negative: int64 (T,), (T,)."""
    has_neg = neg.any(1)
    a, p = (pos & has_neg[:, None]).nonzero(as_tuple=True)
    return a, p


# ----------------------------------------------------------------------------- mining


def _mine_batch_hard(dd: Tensor, pos: Tensor, neg: Tensor) -> Triplets:
    """Per anchor with a positive and a negative: farthest positive, closest negative."""
    ok = pos.any(1) & neg.any(1)
    a = ok.nonzero(as_tuple=True)[0]
    inf = torch.tensor(float("inf"), dtype=dd.dtype, device=dd.device)
    p = torch.where(pos[a], dd[a], -inf).argmax(1)
    n = torch.where(neg[a], dd[a], inf).argmin(1)
    return Triplets(a, p, n, n_pairs=int(a.numel()))


def _mine_semi_hard(dd: Tensor, pos: Tensor, neg: Tensor, chunk_elements: int) -> Triplets:
    """Per pair: nearest negative farther than the positive, else the farthest negative."""
    a, p = _pairs(pos, neg)
    n = torch.empty_like(a)
    n_fallback = 0
    inf = torch.tensor(float("inf"), dtype=dd.dtype, device=dd.device)
    for sl in _chunks(a.numel(), dd.shape[0], chunk_elements):
        rows, negm, dap = dd[a[sl]], neg[a[sl]], dd[a[sl], p[sl]]
        outside = negm & (rows > dap[:, None])
        has_out = outside.any(1)
        far = torch.where(outside, rows, inf).argmin(1)
        near = torch.where(negm, rows, -inf).argmax(1)
        n[sl] = torch.where(has_out, far, near)
        n_fallback += int((~has_out).sum())
    return Triplets(a, p, n, n_pairs=int(a.numel()), n_fallback=n_fallback)


def _mine_random_violating(dd: Tensor, pos: Tensor, neg: Tensor, margin: float,
                           generator: torch.Generator | None, chunk_elements: int) -> Triplets:
    """Per pair: a uniform draw among negatives with d(a,n) - d(a,p) < margin.

    One uniform ``u`` per pair picks the ``floor(u * count)``-th violating negative (in
    index order), so the draw does not depend on the chunking."""
    a, p = _pairs(pos, neg)
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(a.numel(), generator=generator, device=gdev, dtype=torch.float64).to(dd.device)
    n = torch.full_like(a, -1)
    for sl in _chunks(a.numel(), dd.shape[0], chunk_elements):
        rows, negm, dap = dd[a[sl]], neg[a[sl]], dd[a[sl], p[sl]]
        viol = negm & (rows - dap[:, None] < margin)
        count = viol.sum(1)
        k = torch.minimum((u[sl] * count).floor().long(), (count - 1).clamp_min(0))
        # index of the (k+1)-th violating column = number of columns whose running count <= k
        idx = (viol.cumsum(1) <= k[:, None]).sum(1)
        n[sl] = torch.where(count > 0, idx, -1)
    keep = n >= 0
    return Triplets(a[keep], p[keep], n[keep], n_pairs=int(a.numel()),
                    n_unmatched=int((~keep).sum()))


def mine_triplets(dist: Tensor, labels: Tensor, mining: str, *, margin: float = 0.2,
                  generator: torch.Generator | None = None,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Triplets:
    """Choose triplets for ``batch_hard``, ``semi_hard`` or ``random_violating``.

    ``dist`` (N, N) squared distances (detached inside), ``labels`` int (N,) ->
    :class:`Triplets` of int64 (T,) indices into the N rows.  ``batch_all`` has no
    explicit triplet list (see :func:`triplet_loss`)."""
    pos, neg = label_masks(labels.to(dist.device))
    return _mine(dist.detach(), pos, neg, mining, margin, generator, chunk_elements)


def _mine(dd: Tensor, pos: Tensor, neg: Tensor, mining: str, margin: float,
          generator: torch.Generator | None, chunk_elements: int) -> Triplets:
    if mining == "batch_hard":
        return _mine_batch_hard(dd, pos, neg)
    if mining == "semi_hard":
        return _mine_semi_hard(dd, pos, neg, chunk_elements)
    if mining == "random_violating":
        return _mine_random_violating(dd, pos, neg, margin, generator, chunk_elements)
    raise ValueError(f"mine_triplets: unknown mining {mining!r} (one of batch_hard, semi_hard, random_violating)")


# ----------------------------------------------------------------------------- loss


def _hinge(x: Tensor, margin: float, soft: bool) -> Tensor:
    """``x = d(a,p) - d(a,n)`` -> per-triplet loss."""
    return F.softplus(x) if soft else F.relu(x + margin)


def _batch_all(d: Tensor, pos: Tensor, neg: Tensor, margin: float, soft: bool,
               chunk_elements: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Every valid triplet, scanned as (pairs, N) chunks.

    The loss ``sum_{active} (d_ap - d_an + m)`` is linear in the distances, with weights
    ``w_ap`` = active negatives of the pair and ``W_an`` = active positives of the anchor
    (with soft margin the weights are sigmoids and a detached value carries the softplus
    sum); so the graph is O(N²) whatever the number of triplets."""
    dd = d.detach()
    a, p = _pairs(pos, neg)
    w_pair = dd.new_zeros(a.numel())
    w_neg = torch.zeros_like(dd)
    value = dd.new_zeros(())
    n_active = dd.new_zeros(())
    for sl in _chunks(a.numel(), dd.shape[0], chunk_elements):
        negm, x = neg[a[sl]], dd[a[sl], p[sl]][:, None] - dd[a[sl]]  # x = d_ap - d_an
        active = negm & (x + margin > 0)
        n_active += active.sum()
        if soft:
            w = torch.sigmoid(x) * negm
            value += (F.softplus(x) * negm).sum()
        else:
            w = active.to(dd.dtype)
            value += ((x + margin) * w).sum()
        w_pair[sl] = w.sum(1)
        w_neg.index_add_(0, a[sl], w)
    n_neg = neg.sum(1).to(dd.dtype)
    n_triplets = (n_neg[a]).sum()
    linear = (w_pair * d[a, p]).sum() - (w_neg * d).sum()
    if soft:
        denom = n_triplets.clamp_min(1)
        loss = (value + linear - linear.detach()) / denom
    else:
        loss = (linear + margin * n_active) / n_active.clamp_min(1)
    den = n_triplets.clamp_min(1)
    extra = {
        "n_triplets": n_triplets, "n_active": n_active, "n_pairs": dd.new_tensor(float(a.numel())),
        # triplet-weighted means: each pair's d_ap counts once per negative, and so on
        "mean_pos_dist": (dd[a, p] * n_neg[a]).sum() / den,
        "mean_neg_dist": (dd * neg * pos.sum(1, keepdim=True)).sum() / den,
    }
    # with no pair the weights are all 0 and ``loss`` is 0, still attached to the graph
    return loss, extra


def _loss_on_triplets(d: Tensor, t: Triplets, margin: float, soft: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean per-triplet loss over ``t`` (0, keeping the graph, when there are none)."""
    dap, dan = d[t.anchor, t.positive], d[t.anchor, t.negative]
    per = _hinge(dap - dan, margin, soft)
    n = per.numel()
    loss = per.mean() if n else 0.0 * d.sum()
    dap_, dan_ = dap.detach(), dan.detach()
    extra = {
        "n_triplets": d.new_tensor(float(n)),
        "n_active": (dap_ - dan_ + margin > 0).sum().to(d.dtype),
        "n_pairs": d.new_tensor(float(t.n_pairs)),
        "mean_pos_dist": dap_.mean() if n else d.new_zeros(()),
        "mean_neg_dist": dan_.mean() if n else d.new_zeros(()),
    }
    return loss, extra


def triplet_loss(emb: Tensor, labels: Any, *, margin: float = 0.2, mining: str = "batch_hard",
                 gather: GatherFn | None = None, generator: torch.Generator | None = None,
                 soft_margin: bool = False,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, dict[str, float]]:
    """Triplet loss with online mining on squared L2 distances.

    ``emb`` float (B, D) (L2-normalised by the models; half precision is computed in
    float32), ``labels`` int (B,) tensor or array.  ``gather`` (default
    :func:`identity_gather`) turns the local batch into the global one for global mining;
    with :func:`all_gather_embeddings` multiply the returned loss by the world size
    before ``backward`` under DDP (module doc).  ``generator`` drives
    ``random_violating`` (the only random mode).

    Returns ``(loss, stats)``: a scalar tensor and python floats --
    ``loss``; ``n_triplets`` (triplets the loss considers: anchors for batch_hard, pairs
    for semi_hard, chosen triplets for random_violating, valid triplets for batch_all);
    ``n_active`` and ``active_fraction`` (those violating the margin; 0 when there are no
    triplets); ``mean_pos_dist`` / ``mean_neg_dist`` over the considered triplets;
    ``batch_pos_dist`` / ``batch_neg_dist`` over all positive / negative pairs of the
    (global) batch, independent of mining; ``n_embeddings`` (N, global), ``n_identities``,
    ``n_pairs`` (ordered anchor-positive pairs, anchors for batch_hard),
    ``n_skipped_anchors`` (rows without a positive or without a negative in the batch;
    they anchor nothing), ``n_fallback`` (semi_hard), ``n_unmatched_pairs``
    (random_violating).
    """
    if mining not in MINING_MODES:
        raise ValueError(f"triplet_loss: unknown mining {mining!r}; one of {', '.join(MINING_MODES)}")
    labels = torch.as_tensor(labels, device=emb.device)
    if emb.ndim != 2 or labels.shape != (emb.shape[0],):
        raise ValueError(f"triplet_loss: emb (B,D) and labels (B,) expected, "
                         f"got {tuple(emb.shape)} and {tuple(labels.shape)}")
    all_emb, all_labels, _ = (gather or identity_gather)(emb, labels)
    all_labels = torch.as_tensor(all_labels, device=all_emb.device)
    d = pairwise_sq_dists(all_emb)
    pos, neg = label_masks(all_labels)
    if mining == "batch_all":
        loss, extra = _batch_all(d, pos, neg, margin, soft_margin, chunk_elements)
        extra.update(n_fallback=d.new_zeros(()), n_unmatched_pairs=d.new_zeros(()))
    else:
        t = _mine(d.detach(), pos, neg, mining, margin, generator, chunk_elements)
        loss, extra = _loss_on_triplets(d, t, margin, soft_margin)
        extra.update(n_fallback=d.new_tensor(float(t.n_fallback)), n_unmatched_pairs=d.new_tensor(float(t.n_unmatched)))
    return loss, _stats(loss, d.detach(), pos, neg, all_labels, extra)


def _stats(loss: Tensor, dd: Tensor, pos: Tensor, neg: Tensor, labels: Tensor,
           extra: dict[str, Tensor]) -> dict[str, float]:
    """Stack every statistic and convert once (one device sync per step)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    vals = {
        "loss": loss.detach(),
        **extra,
        "batch_pos_dist": (dd * pos).sum() / n_pos.clamp_min(1),
        "batch_neg_dist": (dd * neg).sum() / n_neg.clamp_min(1),
        "n_embeddings": dd.new_tensor(float(dd.shape[0])),
        "n_identities": torch.unique(labels).numel() * dd.new_ones(()),
        "n_skipped_anchors": (~(pos.any(1) & neg.any(1))).sum(),
    }
    keys = list(vals)
    out = dict(zip(keys, torch.stack([v.to(torch.float64).reshape(()) for v in vals.values()]).tolist()))
    out["active_fraction"] = out["n_active"] / out["n_triplets"] if out["n_triplets"] else 0.0
    return out
