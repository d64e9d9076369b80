"""Exact 10-fold sweep (facenet.metrics.evaluate) vs the reference FaceNet grid loop.

The reference is davidsandberg/facenet ``lfw.py``/``facenet.py``: ``calculate_roc`` with
``thresholds = np.arange(0, 4, 0.01)`` (400 thresholds), ``KFold(n_splits=10,
shuffle=False)`` (contiguous folds, which :func:`contiguous_folds` reproduces), and for
each fold ``calculate_accuracy`` (predict same iff ``dist < threshold``, one vectorised
comparison per threshold) over the training folds to pick the best threshold, then over
the test fold for every threshold (its ROC) and at the best one.  Its train/test slicing
is hoisted out of the threshold loop (the original re-slices per threshold), so the
baseline is, if anything, faster than the original.

Two data sets, both ``n`` seeded synthetic pair distances in [0, 4] (squared L2 on unit
vectors), half same pairs:

* ``continuous`` – float distances.  Every grid threshold's partition ``{d < g}`` is
  also one of the sweep's candidates (``{d <= largest distance below g}``), so the
  sweep's best training accuracy is >= the grid's in every fold.  It is strictly larger
  whenever no grid point falls in an optimal gap between consecutive distances, which
  at 1M pairs (gaps ~1e-6 wide against a 0.01 grid) is almost always.
* ``on-grid`` – the same distances snapped to the grid's cell centres ``(k + 0.5) *
  0.01``.  Now every partition the sweep can make is also a grid partition, so the
  best training accuracies are equal, both pick the same partition, and the held-out
  accuracies are identical fold by fold.

Our side runs the whole :func:`facenet.metrics.evaluate` (max accuracy, TPR/ACC@FAR,
the paper's FDR column, AUC, EER), i.e. more work than the reference does.

Run: ``python benchmarks/bench_sweep.py [--n 1000000] [--repeats 3] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from facenet.metrics import best_accuracy, contiguous_folds, evaluate, roc_sweep  # noqa: E402

GRID = np.arange(0, 4, 0.01)  # the reference's thresholds


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dist float64 (n,), issame bool (n,))``: overlapping same/different distributions."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    dist = np.where(issame, rng.normal(0.9, 0.3, n), rng.normal(1.6, 0.3, n))
    return np.clip(dist, 0.0, 3.999), issame


def calculate_accuracy(threshold: float, dist: np.ndarray, actual_issame: np.ndarray) -> tuple[float, float, float]:
    """davidsandberg/facenet's ``calculate_accuracy``, verbatim in substance."""
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def reference_roc(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> dict[str, np.ndarray]:
    """``calculate_roc``: per fold, best grid threshold on 9 folds, scored on the 10th."""
    n_folds, n_t = int(folds.max()) + 1, GRID.shape[0]
    tprs, fprs = np.zeros((n_folds, n_t)), np.zeros((n_folds, n_t))
    accuracy, train_best, thresholds = np.zeros(n_folds), np.zeros(n_folds), np.zeros(n_folds)
    for k in range(n_folds):
        train, test = folds != k, folds == k
        d_tr, y_tr, d_te, y_te = dist[train], issame[train], dist[test], issame[test]
        acc_train = np.zeros(n_t)
        for j, threshold in enumerate(GRID):
            _, _, acc_train[j] = calculate_accuracy(threshold, d_tr, y_tr)
        best = int(np.argmax(acc_train))
        for j, threshold in enumerate(GRID):
            tprs[k, j], fprs[k, j], _ = calculate_accuracy(threshold, d_te, y_te)
        _, _, accuracy[k] = calculate_accuracy(GRID[best], d_te, y_te)
        train_best[k], thresholds[k] = acc_train[best], GRID[best]
    return {"accuracy": accuracy, "train_best": train_best, "threshold": thresholds}


def ours_train_best(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Best training accuracy per fold from the exact sweep (for the comparison only)."""
    return np.array([best_accuracy(roc_sweep(dist[folds != k], issame[folds != k])).accuracy for k in range(10)])


def run_case(name: str, dist: np.ndarray, issame: np.ndarray, repeats: int) -> dict[str, Any]:
    folds = contiguous_folds(dist.shape[0], 10)
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = evaluate(dist, issame, folds=folds, far_targets=(1e-3,))
        t1 = time.perf_counter()
        ref = reference_roc(dist, issame, folds)
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_ref.append(t2 - t1)
    ours_med, ref_med = statistics.median(t_ours), statistics.median(t_ref)

    train_ours = ours_train_best(dist, issame, folds)
    gain = train_ours - ref["train_best"]
    held_ours = np.array(ours["per_fold"]["accuracy"])
    print(f"\n[{name}] n={dist.shape[0]:,} pairs, 10 folds, {repeats} repeats")
    print(f"  ours  evaluate():             {', '.join(f'{t:.3f}' for t in t_ours)} s  median {ours_med:.3f} s")
    print(f"  reference 400-threshold loop: {', '.join(f'{t:.2f}' for t in t_ref)} s  median {ref_med:.2f} s")
    print(f"  speed-up (median ref / median ours): {ref_med / ours_med:.1f}x")
    print("  best TRAINING accuracy per fold (ours = exact optimum, ref = best grid point):")
    print(f"    ours: {' '.join(f'{a:.6f}' for a in train_ours)}")
    print(f"    ref : {' '.join(f'{a:.6f}' for a in ref['train_best'])}")
    print(f"    ours >= ref in every fold: {bool((gain >= 0).all())}; "
          f"equal in {int((gain == 0).sum())}/10 folds; max gain {gain.max():.2e} "
          f"({int(round(gain.max() * 0.9 * dist.shape[0]))} pairs)")
    print(f"  held-out accuracy mean ± std: ours {ours['accuracy']:.6f} ± {ours['accuracy_std']:.6f}, "
          f"ref {ref['accuracy'].mean():.6f} ± {ref['accuracy'].std():.6f}; "
          f"identical per fold: {bool(np.array_equal(held_ours, ref['accuracy']))}")
    print(f"  thresholds (fold 0): ours {ours['per_fold']['threshold'][0]:.6f}, ref {ref['threshold'][0]:.2f}; "
          f"ours also reports TPR@FAR=0.1% {ours['tpr@far=0.001']:.4f}, AUC {ours['auc']:.4f}, EER {ours['eer']:.4f}")
    return {
        "case": name,
        "ours_s": ours_med,
        "ref_s": ref_med,
        "speedup": ref_med / ours_med,
        "ours_ge_ref": bool((gain >= 0).all()),
        "folds_equal": int((gain == 0).sum()),
        "held_out_identical": bool(np.array_equal(held_ours, ref["accuracy"])),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of synthetic pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    dist, issame = synthetic(args.n, args.seed)
    on_grid = (np.floor(dist / 0.01) + 0.5) * 0.01  # cell centres: never equal to a grid value
    results = [
        run_case("continuous", dist, issame, args.repeats),
        run_case("on-grid", on_grid, issame, args.repeats),
    ]
    return {"n": args.n, "repeats": args.repeats, "results": results}


if __name__ == "__main__":
    main()
