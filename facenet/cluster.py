"""Clustering of face embeddings and its scores, pure numpy (the paper's Fig. 5 on MFR2).

* :func:`pairwise_sq_l2` - all squared L2 distances, float64 (N,N).
* :func:`average_linkage` - agglomerative clustering (UPGMA: the distance between two
  clusters is the mean of their pairwise distances), merging while the closest pair of
  clusters is within ``threshold``.  With ``threshold`` = the verification threshold of the
  same embedder, "same cluster" means "on average accepted as the same person".
  O(N^2) memory, O(N^3) time worst case: meant for a few thousand faces (MFR2 has 269).
* :func:`purity`, :func:`nmi` - agreement with the true identities.

Same results as scikit-learn's ``AgglomerativeClustering(linkage="average",
metric="precomputed", distance_threshold=t, n_clusters=None)`` and
``normalized_mutual_info_score`` (tested), without making scikit-learn a dependency.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pairwise_sq_l2(x: np.ndarray) -> np.ndarray:
    """float (N,D) -> float64 (N,N) squared Euclidean distances, exact zeros on the diagonal."""
    x = np.asarray(x, np.float64)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def average_linkage(dist: np.ndarray, threshold: float) -> np.ndarray:
    """Precomputed float (N,N) symmetric distances -> int64 (N,) cluster labels 0..K-1.

    Clusters merge, closest pair first, while their average-linkage distance is
    ``<= threshold`` (scikit-learn merges below ``distance_threshold``; equality differs
    only on exact ties).  Labels are numbered by first appearance in input order.
    """
    d = np.array(dist, np.float64, copy=True)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"dist must be square, got {d.shape}")
    if n == 0:
        return np.zeros(0, np.int64)
    size = np.ones(n, np.float64)
    active = np.ones(n, bool)
    owner = np.arange(n)  # current cluster (representative index) of each point
    np.fill_diagonal(d, np.inf)
    # each active row's nearest cluster; after a merge only rows that pointed at i or j
    # are rescanned, the others just compare with the merged column
    nn_idx = d.argmin(1)
    nn_val = d[np.arange(n), nn_idx]
    for _ in range(n - 1):
        cand = np.where(active, nn_val, np.inf)
        i = int(np.argmin(cand))
        if not np.isfinite(cand[i]) or cand[i] > threshold:
            break
        j = int(nn_idx[i])
        # Lance-Williams update for average linkage: new row = size-weighted mean
        new = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i, :] = new
        d[:, i] = new
        d[i, i] = np.inf
        d[j, :] = np.inf
        d[:, j] = np.inf
        size[i] += size[j]
        active[j] = False
        owner[owner == j] = i
        nn_val[j] = np.inf
        stale = active & ((nn_idx == i) | (nn_idx == j))
        stale[i] = True
        for k in np.flatnonzero(stale):
            nn_idx[k] = int(np.argmin(d[k]))
            nn_val[k] = d[k, nn_idx[k]]
        closer = active & ~stale & (d[:, i] < nn_val)
        nn_idx[closer] = i
        nn_val[closer] = d[closer, i]
    _, labels = np.unique(owner, return_inverse=True)
    # renumber by first appearance so labels do not depend on merge order
    first = {}
    out = np.empty(n, np.int64)
    for k, lab in enumerate(labels):
        out[k] = first.setdefault(int(lab), len(first))
    return out


def _contingency(truth: Sequence, pred: Sequence) -> np.ndarray:
    _, t = np.unique(np.asarray(truth), return_inverse=True)
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), np.int64)
    np.add.at(table, (t, p), 1)
    return table


def purity(truth: Sequence, pred: Sequence) -> float:
    """Fraction of items whose cluster's majority identity is their own; nan when empty."""
    c = _contingency(truth, pred)
    n = c.sum()
    return float(c.max(0).sum() / n) if n else float("nan")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(truth: Sequence, pred: Sequence) -> float:
    """Normalised mutual information, ``MI / mean(H(truth), H(pred))`` (scikit-learn's default
    "arithmetic" normalisation); 1.0 when both labelings are a single class, nan when empty."""
    c = _contingency(truth, pred).astype(np.float64)
    n = c.sum()
    if n == 0:
        return float("nan")
    ht, hp = _entropy(c.sum(1)), _entropy(c.sum(0))
    if ht == 0.0 and hp == 0.0:
        return 1.0
    pij = c / n
    outer = np.outer(c.sum(1), c.sum(0)) / (n * n)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / outer[nz])).sum())
    denom = (ht + hp) / 2.0
    return float(max(mi, 0.0) / denom) if denom > 0 else 0.0


def cluster_embeddings(emb: np.ndarray, identities: Sequence[str], threshold: float) -> dict:
    """Cluster unit embeddings float (N,D) by average linkage on squared L2 at ``threshold``;
    -> ``{"labels", "n_clusters", "n_identities", "purity", "nmi", "threshold", "n"}``.
    Rows with NaN (failed embeddings) are left out and counted in ``n_missing``."""
    emb = np.asarray(emb, np.float64)
    ids = np.asarray(list(identities))
    ok = np.isfinite(emb).all(1)
    labels = np.full(emb.shape[0], -1, np.int64)
    lab = average_linkage(pairwise_sq_l2(emb[ok]), threshold) if ok.any() else np.zeros(0, np.int64)
    labels[ok] = lab
    return {
        "labels": labels,
        "n": int(ok.sum()),
        "n_missing": int((~ok).sum()),
        "n_clusters": int(lab.max() + 1) if lab.size else 0,
        "n_identities": int(len(set(ids[ok].tolist()))),
        "purity": purity(ids[ok], lab),
        "nmi": nmi(ids[ok], lab),
        "threshold": float(threshold),
    }
