"""Face-verification metrics on pair distances: pure numpy, no Ray, no torch.

The pipeline is ``embeddings -> distances -> sweep -> operating points -> 10-fold summary``:

* :func:`l2_normalize`, :func:`squared_l2`, :func:`cosine_distance` turn two
  ``(N, D)`` embedding matrices into one ``(N,)`` distance vector.  A row that
  contains NaN (an image whose embedding failed) gives a NaN distance; the
  evaluation counts such pairs as *missing* instead of dropping them.
* :func:`roc_sweep` sorts the distances once and evaluates **every** distinct
  threshold exactly (O(n log n)), instead of a fixed grid such as the reference
  FaceNet code's ``np.arange(0, 4, 0.01)``.
* :func:`best_accuracy`, :func:`tpr_at_far`, :func:`acc_at_far`,
  :func:`tpr_at_fdr`, :func:`auc`, :func:`eer` read operating points off a sweep.
* :func:`evaluate` does the paper's (and davidsandberg/facenet's) 10-fold
  cross-validation: the threshold is chosen on nine folds and scored on the
  tenth; results are mean ± std over folds.  :func:`evaluate_at_threshold` is the
  paper's fixed-threshold mode (a threshold chosen on one set applied unchanged
  to another).

Conventions (the same everywhere in this module)
------------------------------------------------
* A pair is predicted "same" iff ``dist <= threshold``.  Pairs with equal
  distances therefore always share a prediction (ties are never split).
* ``FAR = FP / (FP + TN)`` (false accept rate, the standard definition, as in
  davidsandberg/facenet's ``calculate_val``).  The MaskTheFace paper writes its
  "FAR" as ``FP / (TP + FP)``, which is a false *discovery* rate; it is reported
  separately and labelled ``fdr_paper`` so the two are never confused.
* Undefined ratios are ``nan``: TPR without same pairs, FAR without different
  pairs, accuracy without pairs, AUC/EER unless both classes are present.  The
  one exception is FDR when nothing is accepted: ``0`` (no discoveries, no false
  discoveries; the usual Benjamini-Hochberg convention), so that "accept
  nothing" always satisfies an FDR target.
* The "accept nothing" operating point has threshold ``-inf`` (like
  scikit-learn's ``+inf`` on scores): it accepts nothing on *any* data, so a
  threshold chosen there on training folds also accepts nothing on the held-out
  fold.  It is always present in a sweep, so an unreachable FAR target gives
  TPR 0 at threshold ``-inf`` rather than an exception.
* Ties between operating points of equal merit go to the **smallest**
  threshold (the first ``argmax``), as davidsandberg/facenet's ``np.argmax``
  over an ascending grid does; for TPR@FAR this is also the point with the
  lowest FAR among those with the best TPR.
* A chosen operating point's threshold is the midpoint of the gap between the
  training distance it accepts last and the next larger one (see
  :meth:`Sweep.point`); accept-all is ``+inf``.  Counts on the data it was
  chosen on are the same for any threshold in that gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "OperatingPoint",
    "Sweep",
    "acc_at_far",
    "auc",
    "best_accuracy",
    "confusion_at",
    "contiguous_folds",
    "cosine_distance",
    "eer",
    "evaluate",
    "evaluate_at_threshold",
    "json_safe",
    "l2_normalize",
    "roc_sweep",
    "squared_l2",
    "target_label",
    "tpr_at_far",
    "tpr_at_fdr",
]


# --------------------------------------------------------------------------- distances


def l2_normalize(x: ArrayLike, axis: int = -1, eps: float = 1e-12) -> NDArray[np.float64]:
    """Scale vectors to unit L2 norm.

    ``float (..., D) -> float64 (..., D)``.  A zero vector stays zero (its norm is
    clamped to ``eps`` rather than dividing by zero); a NaN row stays NaN so a
    failed embedding keeps propagating as "missing".
    """
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def squared_l2(a: ArrayLike, b: ArrayLike, normalize: bool = True) -> NDArray[np.float64]:
    """Row-wise squared Euclidean distance, the paper's (and FaceNet's) metric.

    ``float (N, D), float (N, D) -> float64 (N,)`` in ``[0, 4]`` when
    ``normalize`` (rows are L2-normalised first, as FaceNet embeddings are);
    inputs broadcast, e.g. ``(1, D)`` against ``(N, D)``.  NaN rows give NaN.

    Computed as ``sum((a - b)**2)`` rather than ``2 - 2 cos`` because the
    latter cancels catastrophically for near-identical embeddings and can go
    slightly negative.
    """
    a = l2_normalize(a) if normalize else np.asarray(a, dtype=np.float64)
    b = l2_normalize(b) if normalize else np.asarray(b, dtype=np.float64)
    diff = a - b
    return np.einsum("...d,...d->...", diff, diff)


def cosine_distance(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Row-wise cosine distance ``1 - cos(a, b)``.

    ``float (N, D), float (N, D) -> float64 (N,)`` in ``[0, 2]``.  On unit
    vectors ``squared_l2 == 2 * cosine_distance``, so both rank pairs
    identically; only threshold values differ.  Clipped to ``[0, 2]`` because
    rounding can push ``1 - cos`` a few ulps outside.  NaN rows give NaN.
    """
    cos = np.einsum("...d,...d->...", l2_normalize(a), l2_normalize(b))
    return np.clip(1.0 - cos, 0.0, 2.0)


# --------------------------------------------------------------------------- counts


def _ratio(num: ArrayLike, den: ArrayLike) -> NDArray[np.float64]:
    """``num / den`` with ``nan`` where ``den == 0`` and no warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _fdr(tp: ArrayLike, fp: ArrayLike) -> NDArray[np.float64]:
    """``FP / (TP + FP)``, defined as 0 when nothing is accepted (see module doc)."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    out = np.zeros(np.broadcast(tp, fp).shape)
    np.divide(fp, tp + fp, out=out, where=(tp + fp) != 0)
    return out


def _midpoint(lo: float, hi: float) -> float:
    """A threshold strictly inside ``[lo, hi)``: the midpoint, ``-inf``/``+inf`` at open ends."""
    if lo == -math.inf:
        return -math.inf
    if hi == math.inf:
        return math.inf
    mid = lo / 2.0 + hi / 2.0  # halves first: lo + hi can overflow
    # Adjacent floats: the midpoint may round up onto hi, which would change the partition.
    return mid if lo <= mid < hi else lo


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts at one threshold (predict "same" iff ``dist <= threshold``)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def tpr(self) -> float:
        """TP / (TP + FN), the verification rate (VAL); nan without same pairs."""
        return float(_ratio(self.tp, self.tp + self.fn))

    @property
    def far(self) -> float:
        """FP / (FP + TN), the standard false accept rate; nan without different pairs."""
        return float(_ratio(self.fp, self.fp + self.tn))

    @property
    def fdr(self) -> float:
        """FP / (TP + FP), the paper's "FAR" formula (a false discovery rate); 0 if none accepted."""
        return float(_fdr(self.tp, self.fp))

    @property
    def accuracy(self) -> float:
        """(TP + TN) / N; nan without pairs."""
        return float(_ratio(self.tp + self.tn, self.n))


@dataclass(frozen=True, eq=False)
class Sweep:
    """Confusion counts at every distinct threshold of a set of pair distances.

    All arrays have shape ``(K + 1,)`` where ``K`` is the number of distinct
    distances: entry 0 is the "accept nothing" point (threshold ``-inf``), entry
    ``i >= 1`` is threshold = the ``i``-th smallest distinct distance, and the
    last entry accepts every pair.  ``thresholds`` is strictly increasing;
    ``tp`` and ``fp`` are non-decreasing.
    """

    thresholds: NDArray[np.float64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    tn: NDArray[np.int64]
    fn: NDArray[np.int64]

    @property
    def n_pos(self) -> int:
        """Number of same pairs."""
        return int(self.tp[0] + self.fn[0])

    @property
    def n_neg(self) -> int:
        """Number of different pairs."""
        return int(self.fp[0] + self.tn[0])

    @property
    def tpr(self) -> NDArray[np.float64]:
        """``(K+1,)`` TP / (TP + FN); nan without same pairs."""
        return _ratio(self.tp, self.n_pos)

    @property
    def far(self) -> NDArray[np.float64]:
        """``(K+1,)`` FP / (FP + TN); nan without different pairs."""
        return _ratio(self.fp, self.n_neg)

    @property
    def fdr(self) -> NDArray[np.float64]:
        """``(K+1,)`` FP / (TP + FP), the paper's formula; 0 where nothing is accepted."""
        return _fdr(self.tp, self.fp)

    @property
    def accuracy(self) -> NDArray[np.float64]:
        """``(K+1,)`` (TP + TN) / N; nan without pairs."""
        return _ratio(self.tp + self.tn, self.n_pos + self.n_neg)

    def point(self, i: int) -> OperatingPoint:
        """The operating point at index ``i``, with its decision threshold.

        Every threshold in ``[thresholds[i], thresholds[i + 1])`` gives these
        counts on this data; the one returned is the midpoint of that gap
        (``-inf`` for accept-nothing, ``+inf`` for accept-all).  Why not
        ``thresholds[i]`` itself: it sits exactly on a training pair, so when
        carried to held-out data it rejects every same pair just above the
        training boundary (on perfectly separated data 10-fold accuracy came
        out 0.99 instead of 1.0).  The midpoint is the max-margin choice, and
        still never splits tied distances.
        """
        lo = float(self.thresholds[i])
        hi = float(self.thresholds[i + 1]) if i + 1 < self.thresholds.shape[0] else math.inf
        return OperatingPoint(
            threshold=_midpoint(lo, hi),
            tp=int(self.tp[i]),
            fp=int(self.fp[i]),
            tn=int(self.tn[i]),
            fn=int(self.fn[i]),
        )


def _as_dist_issame(dist: ArrayLike, issame: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Validate and convert to ``float64 (N,)`` and ``bool (N,)``.

    Shape or label errors are programming errors and raise ``ValueError``;
    data conditions (NaN, one class only, empty) never do.
    """
    d = np.asarray(dist, dtype=np.float64)
    y_raw = np.asarray(issame)
    if d.ndim > 1 or y_raw.ndim > 1:
        raise ValueError(f"dist and issame must be 1-D, got shapes {d.shape} and {y_raw.shape}")
    d, y_raw = d.reshape(-1), y_raw.reshape(-1)
    if y_raw.dtype != np.bool_:
        # Accept 0/1 labels, but not e.g. probabilities that would silently threshold at 0.
        if y_raw.size and not np.isin(y_raw, (0, 1)).all():
            raise ValueError("issame must be boolean or 0/1")
        y_raw = y_raw.astype(bool)
    if d.shape != y_raw.shape:
        raise ValueError(f"dist and issame differ in length: {d.shape[0]} vs {y_raw.shape[0]}")
    return d, y_raw


def _sweep_sorted(d: NDArray[np.float64], y: NDArray[np.bool_]) -> Sweep:
    """:func:`roc_sweep` on distances already sorted ascending (no NaN)."""
    n = d.shape[0]
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    if n:
        # Last index of every run of equal distances: a threshold equal to a tied
        # value accepts the whole run, so counts are read at run ends only.
        last = np.flatnonzero(np.r_[d[1:] != d[:-1], True])
        tp_cum = np.cumsum(y, dtype=np.int64)
        tp = np.r_[np.int64(0), tp_cum[last]]
        fp = np.r_[np.int64(0), (last + 1) - tp_cum[last]]
        thresholds = np.r_[-np.inf, d[last]]
    else:
        tp = fp = np.zeros(1, dtype=np.int64)
        thresholds = np.array([-np.inf])
    return Sweep(thresholds=thresholds, tp=tp, fp=fp, tn=n_neg - fp, fn=n_pos - tp)


def roc_sweep(dist: ArrayLike, issame: ArrayLike) -> Sweep:
    """Exact confusion counts at every distinct threshold, O(n log n).

    ``dist float (N,), issame bool (N,) -> Sweep`` with ``K + 1`` points, ``K``
    the number of distinct finite-or-infinite distances.  NaN distances are
    ignored here (callers that care count them: :func:`evaluate` reports them as
    ``n_missing``).  Works for empty input and for a single class.
    """
    d, y = _as_dist_issame(dist, issame)
    valid = ~np.isnan(d)
    d, y = d[valid], y[valid]
    # Order inside a run of tied distances is irrelevant (counts are read at run
    # ends), so the fast unstable sort is enough (~5x faster than kind="stable").
    order = np.argsort(d)
    return _sweep_sorted(d[order], y[order])


def confusion_at(dist: ArrayLike, issame: ArrayLike, threshold: float) -> OperatingPoint:
    """Confusion counts at one threshold, ``float (N,), bool (N,) -> OperatingPoint``.

    NaN distances are ignored (``nan <= t`` is False, but a missing pair is
    neither accepted nor rejected, so it is excluded from every count).
    """
    d, y = _as_dist_issame(dist, issame)
    valid = ~np.isnan(d)
    d, y = d[valid], y[valid]
    accept = d <= threshold
    tp = int(np.count_nonzero(accept & y))
    fp = int(np.count_nonzero(accept & ~y))
    n_pos = int(np.count_nonzero(y))
    return OperatingPoint(
        threshold=float(threshold), tp=tp, fp=fp, tn=d.shape[0] - n_pos - fp, fn=n_pos - tp
    )


# --------------------------------------------------------------------------- operating points


def _first_argmax(values: NDArray[np.float64]) -> int:
    """Index of the first maximum ignoring NaN; 0 when all NaN (the accept-nothing point)."""
    if np.isnan(values).all():
        return 0
    return int(np.nanargmax(values))


def best_accuracy(sweep: Sweep) -> OperatingPoint:
    """The operating point of maximum accuracy (smallest threshold among ties).

    Without pairs the accuracy is nan and the accept-nothing point is returned.
    """
    acc = sweep.accuracy
    return sweep.point(_first_argmax(acc))


def _check_target(name: str, target: float) -> float:
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {target}")
    return target


def tpr_at_far(sweep: Sweep, far_target: float) -> OperatingPoint:
    """The largest TPR with ``FAR <= far_target`` (FAR = FP / (FP + TN)).

    Returns the whole operating point: ``.tpr`` is TPR@FAR (VAL@FAR), ``.threshold``
    the threshold used, ``.far`` the FAR achieved, ``.accuracy`` ACC@FAR.  Among
    thresholds with that TPR the smallest (lowest FAR) is chosen.  The
    accept-nothing point always qualifies, so when no pair can be accepted
    within the target the result is TPR 0 at threshold ``-inf``.  Without
    different pairs no false accept is possible and every threshold qualifies
    (so TPR is 1); without same pairs TPR is nan at threshold ``-inf``.
    """
    far_target = _check_target("far_target", far_target)
    # FP/n_neg is non-decreasing in the threshold, so the feasible points are a prefix.
    far = sweep.far if sweep.n_neg else np.zeros(sweep.thresholds.shape)
    feasible = far <= far_target
    tpr = np.where(feasible, sweep.tpr, np.nan)
    return sweep.point(_first_argmax(tpr))


def acc_at_far(sweep: Sweep, far_target: float) -> float:
    """Accuracy at the :func:`tpr_at_far` operating point (the paper's ACC@FAR)."""
    return tpr_at_far(sweep, far_target).accuracy


def tpr_at_fdr(sweep: Sweep, fdr_target: float) -> OperatingPoint:
    """The largest TPR with ``FP / (TP + FP) <= fdr_target`` (the paper's "FAR" formula).

    Same tie-breaking and edge cases as :func:`tpr_at_far`.  Unlike FAR, the FDR
    is not monotone in the threshold, so the feasible set need not be a prefix;
    every point is checked.
    """
    fdr_target = _check_target("fdr_target", fdr_target)
    tpr = np.where(sweep.fdr <= fdr_target, sweep.tpr, np.nan)
    return sweep.point(_first_argmax(tpr))


def auc(sweep: Sweep) -> float:
    """Area under the ROC curve (TPR against FAR), trapezoidal over every sweep point.

    Equal to ``sklearn.metrics.roc_auc_score(issame, -dist)`` (ties count half).
    nan unless both classes are present.
    """
    if sweep.n_pos == 0 or sweep.n_neg == 0:
        return float("nan")
    far, tpr = sweep.far, sweep.tpr
    return float(np.sum(np.diff(far) * (tpr[1:] + tpr[:-1]) / 2.0))


def eer(sweep: Sweep) -> tuple[float, float]:
    """Equal error rate and its threshold: ``(rate, threshold)``.

    The point where FAR equals FRR = 1 - TPR on the ROC polyline (linear
    interpolation between consecutive sweep points, as davidsandberg/facenet's
    ``brentq`` on ``interp1d`` does).  The threshold is interpolated between the
    two bracketing sweep thresholds (the upper one when the bracket starts at
    ``-inf``, which cannot be interpolated).  ``(nan, nan)`` unless both classes are present.
    """
    if sweep.n_pos == 0 or sweep.n_neg == 0:
        return float("nan"), float("nan")
    far, frr = sweep.far, 1.0 - sweep.tpr
    gap = frr - far  # 1 at accept-nothing, -1 at accept-all, non-increasing
    i = int(np.argmax(gap <= 0.0))
    if gap[i] == 0.0 or i == 0:
        return float(far[i]), float(sweep.thresholds[i])
    w = gap[i - 1] / (gap[i - 1] - gap[i])
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    t0, t1 = sweep.thresholds[i - 1], sweep.thresholds[i]
    threshold = t1 if np.isinf(t0) else t0 + w * (t1 - t0)
    return float(rate), float(threshold)


# --------------------------------------------------------------------------- cross-validation


def contiguous_folds(n: int, n_folds: int = 10) -> NDArray[np.int64]:
    """Fold labels for ``n`` items in ``n_folds`` contiguous, near-equal chunks.

    ``-> int64 (n,)``; chunk sizes differ by at most one, larger chunks first
    (``np.array_split``'s rule), e.g. 848 -> 8 x 85 + 2 x 84.  For LFW's
    ``pairs.txt`` (6000 pairs in file order) this reproduces its 10 folds of 600.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)


def target_label(target: float) -> str:
    """How a rate target is written in result keys: ``0.001 -> "0.001"``, ``0.0022 -> "0.0022"``."""
    return format(float(target), "g")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0, as numpy and the reference code) ignoring nan."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # inf - inf inside std gives nan, intended
        return float(v.mean()), float(v.std())


def evaluate(
    dist: ArrayLike,
    issame: ArrayLike,
    folds: ArrayLike | None = None,
    n_folds: int = 10,
    far_targets: Sequence[float] | float = (1e-3,),
    seed: int | None = None,
    fdr_targets: Sequence[float] | float | None = None,
) -> dict[str, Any]:
    """Verification metrics with k-fold threshold selection, as the paper reports them.

    Parameters
    ----------
    dist : float (N,)
        Pair distances (smaller = more alike).  NaN marks a missing pair (an
        embedding failed): it is excluded from every rate and counted in
        ``n_missing``, and ``accuracy_all`` counts it as an error.
    issame : bool (N,)
        Ground truth.
    folds : int (N,), optional
        Fold label of each pair (e.g. from :func:`facenet.pairs.pairs_arrays`).
        When omitted, ``n_folds`` folds are made: contiguous chunks in input
        order (:func:`contiguous_folds`, LFW's own layout) if ``seed`` is None,
        else the same chunk sizes randomly permuted with ``seed``.
    far_targets : FAR targets for TPR@FAR / ACC@FAR (FAR = FP / (FP + TN)).
    fdr_targets : targets for the paper's formula FP / (TP + FP); defaults to
        ``far_targets`` so that the paper's column can be set beside ours.

    Returns
    -------
    A dict of plain Python ``float``/``int``/``list`` values (``json.dumps``
    accepts it; :func:`json_safe` makes it strict JSON).  For each fold the
    threshold is chosen on the other folds' valid pairs and scored on the fold's
    valid pairs; ``X`` is the mean over scored folds and ``X_std`` the
    population std (ddof=0) over folds where ``X`` is defined (not nan):

    * ``accuracy``, ``threshold``: max-accuracy threshold, held-out accuracy.
    * ``accuracy_all``: the same but each fold's missing pairs count as
      errors (``correct / all pairs in the fold``); a fold whose pairs are all
      missing scores 0 here.
    * per FAR target ``f`` (label :func:`target_label`): ``tpr@far=f``,
      ``acc@far=f``, ``far@far=f`` (FAR achieved on the held-out fold),
      ``threshold@far=f``, ``fdr_paper@far=f`` (FP / (TP + FP) at that point).
    * per FDR target ``g``: ``tpr@fdr_paper=g``, ``acc@fdr_paper=g``,
      ``fdr_paper@fdr_paper=g``, ``far@fdr_paper=g``, ``threshold@fdr_paper=g``.
    * On all valid pairs at once (no held-out data; for ROC summaries and for
      choosing a threshold to carry to another set with
      :func:`evaluate_at_threshold`): ``auc``, ``eer``, ``eer_threshold``,
      ``accuracy_fit``, ``threshold_fit``, ``tpr_fit@far=f``,
      ``threshold_fit@far=f``.
    * Counts: ``n_pairs`` (all, incl. missing), ``n_valid``, ``n_missing``,
      ``n_same``, ``n_diff`` (all pairs), ``n_same_valid``, ``n_diff_valid``,
      ``n_folds`` (folds scored), ``n_folds_skipped`` (folds with no valid
      held-out pairs or no valid training pairs), ``far_targets``,
      ``fdr_targets``, and ``per_fold`` (a dict of per-fold lists, nan for a
      skipped fold, in sorted fold-label order, with ``fold`` the labels).

    Edge cases give values, never exceptions: without pairs everything is nan;
    one class only makes TPR or FAR (and AUC, EER) nan; a FAR target that
    admits no pair gives TPR 0 at threshold ``-inf`` for that fold (then the
    mean threshold is ``-inf`` too: a faithful "nothing can be accepted");
    accept-all (e.g. no different pairs to train on) is ``+inf``.  Thresholds
    are gap midpoints (see :meth:`Sweep.point`).
    """
    d, y = _as_dist_issame(dist, issame)
    n = d.shape[0]
    far_targets = [_check_target("far_target", t) for t in np.atleast_1d(far_targets)]
    fdr_targets = (
        far_targets
        if fdr_targets is None
        else [_check_target("fdr_target", t) for t in np.atleast_1d(fdr_targets)]
    )

    if folds is None:
        f = contiguous_folds(n, n_folds)
        if seed is not None:
            f = np.random.default_rng(seed).permutation(f)
        fold_ids = np.arange(n_folds, dtype=np.int64)
    else:
        f = np.asarray(folds).reshape(-1)
        if f.shape[0] != n:
            raise ValueError(f"folds has {f.shape[0]} labels for {n} pairs")
        fold_ids = np.unique(f)

    missing = np.isnan(d)
    valid = ~missing
    # Sort once; every fold's training set is a mask of the sorted arrays, and a
    # masked sorted array is still sorted, so no fold sorts again.
    order = np.argsort(np.where(valid, d, np.inf))
    order = order[valid[order]]
    d_s, y_s, f_s = d[order], y[order], f[order]

    far_l = [target_label(t) for t in far_targets]
    fdr_l = [target_label(t) for t in fdr_targets]
    per_fold_keys = ["accuracy", "accuracy_all", "threshold"]
    for lab in far_l:
        per_fold_keys += [f"{m}@far={lab}" for m in ("tpr", "acc", "far", "fdr_paper", "threshold")]
    for lab in fdr_l:
        per_fold_keys += [f"{m}@fdr_paper={lab}" for m in ("tpr", "acc", "fdr_paper", "far", "threshold")]
    per_fold: dict[str, list[float]] = {k: [] for k in per_fold_keys}
    n_scored = 0

    for k in fold_ids:
        row = dict.fromkeys(per_fold_keys, float("nan"))
        n_fold_all = int(np.count_nonzero(f == k))
        test = f_s == k
        n_test = int(np.count_nonzero(test))
        n_train = d_s.shape[0] - n_test
        if n_test == 0 and n_fold_all > 0:
            row["accuracy_all"] = 0.0  # every pair of the fold is missing: all errors
        if n_test > 0 and n_train > 0:
            n_scored += 1
            train = _sweep_sorted(d_s[~test], y_s[~test])
            d_te, y_te = d_s[test], y_s[test]

            op = confusion_at(d_te, y_te, best_accuracy(train).threshold)
            row["threshold"] = op.threshold
            row["accuracy"] = op.accuracy
            row["accuracy_all"] = (op.tp + op.tn) / n_fold_all
            # one operating point per target, chosen on the training folds, scored held out
            for kind, pick, targets, labels in (("far", tpr_at_far, far_targets, far_l),
                                                ("fdr_paper", tpr_at_fdr, fdr_targets, fdr_l)):
                for t, lab in zip(targets, labels):
                    op = confusion_at(d_te, y_te, pick(train, t).threshold)
                    for name, value in (("tpr", op.tpr), ("acc", op.accuracy), ("far", op.far),
                                        ("fdr_paper", op.fdr), ("threshold", op.threshold)):
                        row[f"{name}@{kind}={lab}"] = value
        for key, value in row.items():
            per_fold[key].append(float(value))

    n_same = int(np.count_nonzero(y))
    out: dict[str, Any] = {}
    for key in per_fold_keys:
        out[key], out[f"{key}_std"] = _mean_std(per_fold[key])

    whole = _sweep_sorted(d_s, y_s)
    out["auc"] = auc(whole)
    out["eer"], out["eer_threshold"] = eer(whole)
    best = best_accuracy(whole)
    out["accuracy_fit"], out["threshold_fit"] = best.accuracy, best.threshold
    for t, lab in zip(far_targets, far_l):
        op = tpr_at_far(whole, t)
        out[f"tpr_fit@far={lab}"], out[f"threshold_fit@far={lab}"] = op.tpr, op.threshold

    n_valid = int(d_s.shape[0])
    n_same_valid = int(np.count_nonzero(y_s))
    out.update(
        n_pairs=n,
        n_valid=n_valid,
        n_missing=n - n_valid,
        n_same=n_same,
        n_diff=n - n_same,
        n_same_valid=n_same_valid,
        n_diff_valid=n_valid - n_same_valid,
        n_folds=n_scored,
        n_folds_skipped=int(fold_ids.shape[0]) - n_scored,
        far_targets=list(far_targets),
        fdr_targets=list(fdr_targets),
        per_fold={"fold": fold_ids.tolist(), **per_fold},
    )
    return out


def evaluate_at_threshold(dist: ArrayLike, issame: ArrayLike, threshold: float) -> dict[str, Any]:
    """Metrics at a threshold chosen elsewhere (the paper's fixed-threshold mode).

    ``float (N,), bool (N,), float -> dict``: e.g. ``threshold_fit`` from
    :func:`evaluate` on unmasked LFW, applied unchanged to a masked variant.
    Keys: ``threshold``, ``accuracy``, ``tpr``, ``far``, ``fdr_paper`` (over
    valid pairs), ``accuracy_all`` (missing pairs count as errors), ``tp``,
    ``fp``, ``tn``, ``fn``, ``n_pairs``, ``n_valid``, ``n_missing``, ``n_same``,
    ``n_diff``.  Undefined rates are nan (see module doc); never raises on data.
    """
    d, y = _as_dist_issame(dist, issame)
    op = confusion_at(d, y, threshold)
    n = d.shape[0]
    n_same = int(np.count_nonzero(y))
    return {
        "threshold": float(threshold),
        "accuracy": op.accuracy,
        "accuracy_all": float(_ratio(op.tp + op.tn, n)),
        "tpr": op.tpr,
        "far": op.far,
        "fdr_paper": op.fdr,
        "tp": op.tp,
        "fp": op.fp,
        "tn": op.tn,
        "fn": op.fn,
        "n_pairs": n,
        "n_valid": op.n,
        "n_missing": n - op.n,
        "n_same": n_same,
        "n_diff": n - n_same,
    }


def json_safe(obj: Any) -> Any:
    """Copy of a result with non-finite floats replaced by ``None`` (strict JSON).

    ``json.dumps`` writes nan/inf as ``NaN``/``Infinity``, which Python reads back
    but strict parsers (browsers, ``jq``) reject.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
