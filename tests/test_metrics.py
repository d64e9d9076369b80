"""facenet.metrics against naive references: brute-force threshold loops, scikit-learn,
hand-computed tiny cases, and a plain re-implementation of 10-fold selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from facenet.metrics import (
    OperatingPoint,
    Sweep,
    acc_at_far,
    auc,
    best_accuracy,
    confusion_at,
    contiguous_folds,
    cosine_distance,
    eer,
    evaluate,
    evaluate_at_threshold,
    json_safe,
    l2_normalize,
    roc_sweep,
    squared_l2,
    target_label,
    tpr_at_far,
    tpr_at_fdr,
)

# Every 0/0 must be handled on purpose: a stray divide warning is a bug here.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NAN = float("nan")


def _data(seed: int, n: int, decimals: int | None = None, p_same: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded overlapping distance distributions; rounding to ``decimals`` makes heavy ties."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < p_same
    d = np.where(y, rng.normal(0.9, 0.35, n), rng.normal(1.5, 0.35, n)).clip(0.0, 4.0)
    if decimals is not None:
        d = np.round(d, decimals)
    return d, y


# --------------------------------------------------------------------------- naive references


def brute_point(d: np.ndarray, y: np.ndarray, t: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) at threshold t by explicit comparison (NaN excluded)."""
    keep = ~np.isnan(d)
    d, y = d[keep], y[keep]
    tp = fp = tn = fn = 0
    for di, yi in zip(d.tolist(), y.tolist()):
        accept = di <= t
        tp += accept and yi
        fp += accept and not yi
        tn += (not accept) and (not yi)
        fn += (not accept) and yi
    return tp, fp, tn, fn


def brute_sweep(d: np.ndarray, y: np.ndarray) -> tuple[list[float], list[tuple[int, int, int, int]]]:
    """Every candidate threshold (accept-nothing plus each distinct distance), O(n^2)."""
    cands = [-math.inf] + sorted(set(d[~np.isnan(d)].tolist()))
    return cands, [brute_point(d, y, t) for t in cands]


def _rate(a: float, b: float) -> float:
    return a / b if b else NAN


def brute_select(d: np.ndarray, y: np.ndarray, kind: str, target: float = 0.0) -> float:
    """Threshold picked by a plain loop: the first (smallest) candidate of best merit,
    moved to the middle of the gap before the next candidate (-inf/+inf at the ends)."""
    cands, counts = brute_sweep(d, y)
    best_i, best_v = 0, -1.0
    for i, (tp, fp, tn, fn) in enumerate(counts):
        if kind == "acc":
            v = _rate(tp + tn, tp + fp + tn + fn)
        else:
            if kind == "far":
                ok = (fp / (fp + tn) if fp + tn else 0.0) <= target
            else:  # paper's formula, 0 when nothing accepted
                ok = (fp / (tp + fp) if tp + fp else 0.0) <= target
            v = _rate(tp, tp + fn) if ok else NAN
        if not math.isnan(v) and v > best_v:
            best_i, best_v = i, v
    if best_i == 0:
        return -math.inf
    if best_i == len(cands) - 1:
        return math.inf
    return (cands[best_i] + cands[best_i + 1]) / 2


# --------------------------------------------------------------------------- distances


def test_l2_normalize_and_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)) * 3.0, rng.normal(size=(50, 8))
    an = l2_normalize(a)
    assert np.allclose(np.linalg.norm(an, axis=1), 1.0)
    assert np.array_equal(l2_normalize(np.zeros((1, 4))), np.zeros((1, 4)))  # zero stays zero, no warning

    loop = np.array([np.sum((x / np.linalg.norm(x) - z / np.linalg.norm(z)) ** 2) for x, z in zip(a, b)])
    assert np.allclose(squared_l2(a, b), loop)
    assert np.allclose(squared_l2(a, b), 2.0 * cosine_distance(a, b))
    assert np.allclose(squared_l2(an, b, normalize=False), np.sum((an - b) ** 2, axis=1))
    assert squared_l2(a, a).max() < 1e-24 and cosine_distance(a, a).min() >= 0.0
    assert np.allclose(squared_l2(a, -a), 4.0) and np.allclose(cosine_distance(a, -a), 2.0)
    # Broadcasting one template against many probes.
    assert np.allclose(squared_l2(a[:1], b), squared_l2(np.repeat(a[:1], 50, 0), b))
    # A failed embedding (NaN row) gives a NaN distance, which evaluate counts as missing.
    a[3] = np.nan
    assert np.isnan(squared_l2(a, b)[3]) and np.isnan(cosine_distance(a, b)[3])
    assert np.isfinite(np.delete(squared_l2(a, b), 3)).all()


# --------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_matches_brute_force(seed: int, decimals: int | None) -> None:
    d, y = _data(seed, 150, decimals)
    sw = roc_sweep(d, y)
    cands, counts = brute_sweep(d, y)
    assert sw.thresholds.tolist() == cands
    assert list(zip(sw.tp.tolist(), sw.fp.tolist(), sw.tn.tolist(), sw.fn.tolist())) == counts
    assert (np.diff(sw.thresholds) > 0).all()


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", [3, 4])
def test_sweep_matches_sklearn(seed: int, decimals: int | None) -> None:
    d, y = _data(seed, 2000, decimals, p_same=0.3)
    sw = roc_sweep(d, y)
    fpr, tpr, thr = roc_curve(y, -d, drop_intermediate=False)  # score = -distance
    assert np.array_equal(sw.thresholds, -thr)  # sklearn's +inf first <-> our -inf
    assert np.allclose(sw.far, fpr) and np.allclose(sw.tpr, tpr)
    assert auc(sw) == pytest.approx(roc_auc_score(y, -d), abs=1e-12)


def test_operating_points_match_brute_force() -> None:
    for seed, decimals in [(5, None), (6, 1), (7, 2), (8, 0)]:
        d, y = _data(seed, 120, decimals)
        sw = roc_sweep(d, y)
        assert best_accuracy(sw).threshold == pytest.approx(brute_select(d, y, "acc"))
        op = best_accuracy(sw)
        assert (op.tp, op.fp, op.tn, op.fn) == brute_point(d, y, op.threshold)
        for target in (0.0, 1e-3, 0.02, 0.1, 0.29, 0.5, 1.0):
            assert tpr_at_far(sw, target).threshold == pytest.approx(brute_select(d, y, "far", target))
            assert tpr_at_far(sw, target).far <= target
            assert tpr_at_fdr(sw, target).threshold == pytest.approx(brute_select(d, y, "fdr", target))
            assert tpr_at_fdr(sw, target).fdr <= target
            assert acc_at_far(sw, target) == tpr_at_far(sw, target).accuracy


def _eer_from_sklearn(d: np.ndarray, y: np.ndarray) -> float:
    """EER by walking sklearn's ROC segments one by one (independent of our sweep)."""
    fpr, tpr, _ = roc_curve(y, -d, drop_intermediate=False)
    for i in range(1, len(fpr)):
        g0, g1 = 1 - tpr[i - 1] - fpr[i - 1], 1 - tpr[i] - fpr[i]
        if g1 <= 0:
            if g1 == 0:
                return float(fpr[i])
            w = g0 / (g0 - g1)
            return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
    raise AssertionError("ROC never crosses FAR = FRR")


@pytest.mark.parametrize("decimals", [None, 1])
def test_eer_matches_segment_walk(decimals: int | None) -> None:
    d, y = _data(9, 1000, decimals)
    rate, threshold = eer(roc_sweep(d, y))
    assert rate == pytest.approx(_eer_from_sklearn(d, y), abs=1e-12)
    # At the EER threshold FAR and FRR straddle the rate.
    op = confusion_at(d, y, threshold)
    assert min(op.far, 1 - op.tpr) - 0.01 <= rate <= max(op.far, 1 - op.tpr) + 0.01


# --------------------------------------------------------------------------- hand-computed cases


def test_ties_hand_computed() -> None:
    # 0.2 is shared by a same and a different pair: one threshold accepts both.
    sw = roc_sweep([0.3, 0.2, 0.1, 0.2], [False, True, True, False])
    assert sw.thresholds.tolist() == [-math.inf, 0.1, 0.2, 0.3]
    assert sw.tp.tolist() == [0, 1, 2, 2] and sw.fp.tolist() == [0, 0, 1, 2]
    assert sw.tn.tolist() == [2, 2, 1, 0] and sw.fn.tolist() == [2, 1, 0, 0]
    # Accuracy 3/4 at both 0.1 and 0.2: the smaller wins, moved to the gap's middle.
    assert best_accuracy(sw) == OperatingPoint(pytest.approx(0.15), 1, 0, 2, 1)
    assert auc(sw) == 0.875  # (0,0)-(0,.5)-(.5,1)-(1,1)
    assert eer(sw) == (0.25, pytest.approx(0.15))  # halfway along (0,.5)-(.5,1)
    assert tpr_at_far(sw, 0.0) == OperatingPoint(pytest.approx(0.15), 1, 0, 2, 1)
    assert tpr_at_far(sw, 0.5).tpr == 1.0
    assert tpr_at_fdr(sw, 0.3).threshold == pytest.approx(0.15)  # at 0.2: FP/(TP+FP) = 1/3 > 0.3
    assert tpr_at_fdr(sw, 0.34).threshold == pytest.approx(0.25)  # 1/3 <= 0.34 reaches TPR 1


def test_threshold_between_adjacent_floats() -> None:
    # No float lies strictly between these two: the threshold must stay on the lower one.
    lo = 1.0
    hi = float(np.nextafter(lo, 2.0))
    sw = roc_sweep([lo, hi], [True, False])
    op = best_accuracy(sw)
    assert op.threshold == lo
    assert confusion_at([lo, hi], [True, False], op.threshold).accuracy == 1.0


def test_far_target_never_reached() -> None:
    # The closest pair is a different pair: FAR 0 allows accepting nothing.
    sw = roc_sweep([0.1, 0.2, 0.3], [False, True, True])
    op = tpr_at_far(sw, 1e-3)
    assert op == OperatingPoint(-math.inf, 0, 0, 1, 2)
    assert (op.tpr, op.far, op.fdr) == (0.0, 0.0, 0.0)
    assert op.accuracy == pytest.approx(1 / 3)
    assert tpr_at_fdr(sw, 0.1).threshold == -math.inf
    # A -inf threshold accepts nothing on any other data either.
    assert confusion_at([-1e300, 0.0], [True, False], op.threshold) == OperatingPoint(-math.inf, 0, 0, 1, 1)


def test_one_class_and_empty() -> None:
    same = roc_sweep([0.5, 0.2, 0.5], [True, True, True])
    assert np.isnan(same.far).all() and auc(same) != auc(same) and np.isnan(eer(same)).all()
    assert best_accuracy(same) == OperatingPoint(math.inf, 3, 0, 0, 0)  # accept all
    assert tpr_at_far(same, 0.0).tpr == 1.0  # no different pairs: no false accept possible

    diff = roc_sweep([0.5, 0.2], [False, False])
    assert np.isnan(diff.tpr).all()
    assert best_accuracy(diff) == OperatingPoint(-math.inf, 0, 0, 2, 0)
    assert math.isnan(tpr_at_far(diff, 0.1).tpr) and tpr_at_far(diff, 0.1).threshold == -math.inf

    empty = roc_sweep([], [])
    assert empty.thresholds.tolist() == [-math.inf] and empty.tp.tolist() == [0]
    assert math.isnan(best_accuracy(empty).accuracy) and math.isnan(auc(empty))

    nan_only = roc_sweep([NAN, NAN], [True, False])  # NaN = missing: ignored by the sweep
    assert nan_only.n_pos == nan_only.n_neg == 0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        roc_sweep([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="boolean or 0/1"):
        roc_sweep([0.1, 0.2], [0.3, 1.0])
    with pytest.raises(ValueError, match="far_target"):
        tpr_at_far(roc_sweep([0.1], [1]), 1.5)
    assert roc_sweep([0.1, 0.2], [1, 0]).tp.tolist() == [0, 1, 1]  # 0/1 labels accepted


def test_perfect_separation() -> None:
    d = np.r_[np.linspace(0.1, 0.5, 50), np.linspace(1.0, 2.0, 50)]
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    folds = np.tile(np.arange(10), 10)
    r = evaluate(d, y, folds=folds)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["tpr@far=0.001"] == 1.0


# --------------------------------------------------------------------------- 10-fold evaluation


def naive_cv(d: np.ndarray, y: np.ndarray, folds: np.ndarray, kind: str, target: float = 0.0) -> dict[str, list[float]]:
    """The reference procedure written plainly: choose on 9 folds, score the 10th."""
    out: dict[str, list[float]] = {"threshold": [], "accuracy": [], "tpr": [], "far": [], "fdr": []}
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        t = brute_select(d[tr], y[tr], kind, target)
        tp, fp, tn, fn = brute_point(d[te], y[te], t)
        out["threshold"].append(t)
        out["accuracy"].append(_rate(tp + tn, tp + fp + tn + fn))
        out["tpr"].append(_rate(tp, tp + fn))
        out["far"].append(_rate(fp, fp + tn))
        out["fdr"].append(fp / (tp + fp) if tp + fp else 0.0)
    return out


@pytest.mark.parametrize(("seed", "decimals"), [(10, None), (11, 2), (12, 1)])
def test_ten_fold_matches_naive(seed: int, decimals: int | None) -> None:
    d, y = _data(seed, 400, decimals)
    folds = contiguous_folds(400)
    r = evaluate(d, y, far_targets=(0.01, 0.1), fdr_targets=(0.05,))
    pf = r["per_fold"]
    assert pf["fold"] == list(range(10))

    ref = naive_cv(d, y, folds, "acc")
    assert pf["threshold"] == pytest.approx(ref["threshold"])
    assert pf["accuracy"] == pytest.approx(ref["accuracy"])
    assert r["accuracy"] == pytest.approx(np.mean(ref["accuracy"]))
    assert r["accuracy_std"] == pytest.approx(np.std(ref["accuracy"]))
    assert r["threshold"] == pytest.approx(np.mean(ref["threshold"]))
    assert r["accuracy_all"] == r["accuracy"]  # nothing missing

    for target in (0.01, 0.1):
        lab = target_label(target)
        ref = naive_cv(d, y, folds, "far", target)
        assert pf[f"threshold@far={lab}"] == pytest.approx(ref["threshold"])
        assert pf[f"tpr@far={lab}"] == pytest.approx(ref["tpr"])
        assert pf[f"far@far={lab}"] == pytest.approx(ref["far"])
        assert pf[f"fdr_paper@far={lab}"] == pytest.approx(ref["fdr"])
        assert pf[f"acc@far={lab}"] == pytest.approx(ref["accuracy"])
        assert r[f"tpr@far={lab}"] == pytest.approx(np.mean(ref["tpr"]))
        assert r[f"tpr@far={lab}_std"] == pytest.approx(np.std(ref["tpr"]))
        assert r[f"acc@far={lab}"] == pytest.approx(np.mean(ref["accuracy"]))

    ref = naive_cv(d, y, folds, "fdr", 0.05)
    assert pf["threshold@fdr_paper=0.05"] == pytest.approx(ref["threshold"])
    assert r["tpr@fdr_paper=0.05"] == pytest.approx(np.mean(ref["tpr"]))
    assert r["fdr_paper@fdr_paper=0.05"] == pytest.approx(np.mean(ref["fdr"]))

    # Whole-set figures agree with the sweep functions and with sklearn.
    assert r["auc"] == pytest.approx(roc_auc_score(y, -d))
    assert r["threshold_fit"] == pytest.approx(brute_select(d, y, "acc"))
    assert (r["n_pairs"], r["n_same"], r["n_missing"], r["n_folds"]) == (400, int(y.sum()), 0, 10)


def test_fold_assignment() -> None:
    assert np.bincount(contiguous_folds(6000)).tolist() == [600] * 10
    assert np.bincount(contiguous_folds(848)).tolist() == [85] * 8 + [84] * 2
    d, y = _data(13, 300)
    # folds=None is the same as passing contiguous folds; a seed permutes them reproducibly.
    assert evaluate(d, y) == evaluate(d, y, folds=contiguous_folds(300))
    shuffled = np.random.default_rng(7).permutation(contiguous_folds(300))
    assert evaluate(d, y, seed=7) == evaluate(d, y, folds=shuffled)
    assert evaluate(d, y, seed=7)["accuracy"] != evaluate(d, y)["accuracy"]
    # String fold labels work too.
    labels = np.array(["a", "b", "c"])[np.arange(300) % 3]
    assert evaluate(d, y, folds=labels)["per_fold"]["fold"] == ["a", "b", "c"]


def test_missing_pairs_counted_not_dropped() -> None:
    d, y = _data(14, 200)
    folds = contiguous_folds(200)
    d_nan = d.copy()
    gone = np.array([0, 1, 2, 50, 199])
    d_nan[gone] = np.nan
    r = evaluate(d_nan, y, folds=folds)
    keep = np.setdiff1d(np.arange(200), gone)
    r_valid = evaluate(d[keep], y[keep], folds=folds[keep])
    # Metrics over valid pairs are exactly those of the valid subset ...
    for key in ("accuracy", "accuracy_std", "threshold", "tpr@far=0.001", "auc", "eer"):
        assert r[key] == r_valid[key]
    assert (r["n_pairs"], r["n_valid"], r["n_missing"]) == (200, 195, 5)
    assert r["n_same"] == int(y.sum()) and r["n_same_valid"] == int(y[keep].sum())
    # ... and accuracy_all counts each missing pair as an error in its fold.
    acc_valid = np.array(r_valid["per_fold"]["accuracy"])
    n_valid_fold = np.bincount(folds[keep], minlength=10)
    expected = acc_valid * n_valid_fold / 20.0
    assert r["per_fold"]["accuracy_all"] == pytest.approx(expected.tolist())
    assert r["accuracy_all"] < r["accuracy"]


def test_empty_and_degenerate_folds() -> None:
    d, y = _data(15, 100)
    folds = contiguous_folds(100)
    d[folds == 3] = np.nan  # every pair of fold 3 failed to embed
    r = evaluate(d, y, folds=folds)
    assert (r["n_folds"], r["n_folds_skipped"]) == (9, 1)
    assert math.isnan(r["per_fold"]["accuracy"][3])
    assert r["per_fold"]["accuracy_all"][3] == 0.0  # all missing: all errors
    assert r["accuracy"] == pytest.approx(np.nanmean(r["per_fold"]["accuracy"]))

    # More folds than pairs: folds without pairs are skipped.
    r = evaluate(d[:5], y[:5], n_folds=10)
    assert r["n_folds_skipped"] >= 5

    # One fold: no training data for any fold, so nothing is cross-validated,
    # but whole-set figures still exist.
    d, y = _data(16, 50)
    r = evaluate(d, y, folds=np.zeros(50, int))
    assert (r["n_folds"], r["n_folds_skipped"]) == (0, 1)
    assert math.isnan(r["accuracy"]) and not math.isnan(r["auc"])

    r = evaluate([], [])
    assert r["n_pairs"] == 0 and r["n_folds"] == 0 and math.isnan(r["accuracy"]) and math.isnan(r["auc"])


def test_one_class_evaluate() -> None:
    d = np.linspace(0.1, 1.0, 40)
    r = evaluate(d, np.ones(40, bool))
    assert r["accuracy"] == 1.0 and r["tpr@far=0.001"] == 1.0 and r["threshold"] == math.inf
    assert math.isnan(r["far@far=0.001"]) and math.isnan(r["auc"]) and math.isnan(r["eer"])
    r = evaluate(d, np.zeros(40, bool))
    assert r["accuracy"] == 1.0 and r["threshold"] == -math.inf
    assert math.isnan(r["tpr@far=0.001"]) and r["far@far=0.001"] == 0.0


def test_far_never_reached_in_cv() -> None:
    # In every fold the closest training pair is a different pair.
    d = np.r_[np.zeros(10), np.linspace(0.5, 1.0, 90)]
    y = np.r_[np.zeros(10, bool), np.ones(90, bool)]
    folds = np.tile(np.arange(10), 10)
    r = evaluate(d, y, folds=folds, far_targets=(0.0,))
    assert r["tpr@far=0"] == 0.0 and r["threshold@far=0"] == -math.inf and r["far@far=0"] == 0.0
    assert r["fdr_paper@far=0"] == 0.0


def test_evaluate_at_threshold() -> None:
    d = [0.1, 0.2, 0.3, 0.4, NAN, NAN]
    y = [True, False, True, False, True, False]
    r = evaluate_at_threshold(d, y, 0.25)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 1, 1, 1)
    assert (r["accuracy"], r["tpr"], r["far"], r["fdr_paper"]) == (0.5, 0.5, 0.5, 0.5)
    assert r["accuracy_all"] == pytest.approx(2 / 6)
    assert (r["n_pairs"], r["n_valid"], r["n_missing"], r["n_same"]) == (6, 4, 2, 3)
    # The threshold fitted on one set carries to another unchanged.
    a, ya = _data(17, 500)
    fit = evaluate(a, ya)
    r = evaluate_at_threshold(a, ya, fit["threshold_fit"])
    assert r["accuracy"] == fit["accuracy_fit"]
    assert math.isnan(evaluate_at_threshold([], [], 1.0)["accuracy"])


def test_result_is_plain_json() -> None:
    d, y = _data(18, 300)
    d[5] = np.nan
    r = evaluate(d, y, far_targets=(1e-3, 0.0022))
    for key in ("accuracy", "accuracy_std", "threshold", "tpr@far=0.001", "acc@far=0.0022", "far@far=0.0022",
                "fdr_paper@far=0.001", "tpr@fdr_paper=0.0022", "auc", "eer", "n_pairs", "n_same", "n_missing"):
        assert key in r

    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return type(v) in (float, int, str, bool)

    assert plain(r)
    assert json.loads(json.dumps(r))["n_missing"] == 1
    strict = json.dumps(json_safe(evaluate(d, np.ones(300, bool))), allow_nan=False)
    assert json.loads(strict)["auc"] is None


def test_sweep_is_frozen() -> None:
    sw = roc_sweep([0.1], [True])
    assert isinstance(sw, Sweep)
    with pytest.raises(AttributeError):
        sw.tp = None  # type: ignore[misc]
