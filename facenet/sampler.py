"""P×K batch plans for triplet training: P identities × K images per worker and step.

A *global step* holds ``G = P × world_size`` distinct identities; rank ``r`` gets the
identities in columns ``[r P, (r+1) P)`` of it, so workers see disjoint identities and,
with global mining, the loss sees all ``G`` of them.  Every rank builds the same global
plan from ``(seed, epoch)`` and keeps its own columns: no communication, the same number
of batches everywhere.

What an epoch is
----------------
Each identity's images are shuffled (with ``groups``: first one image of every source
photo, then the second ones, ... so a chunk prefers different photos over the masked
and unmasked twins of one photo) and cut into *chunks* of K: ``c_i = ceil(n_i / K)``
chunks, the last one completed cyclically from the identity's first images (distinct
from it when ``n_i >= K``).  An identity appears at most once per step, so the epoch
has ``S`` steps with ``S`` the **largest** number for which the chunks, capped at ``S``
per identity, fill ``S × G`` slots but for fewer than ``G``:
``sum_i min(c_i, S) > S G - G``.  Hence

* every chunk of an identity with at most ``S`` chunks -- every image -- is used exactly
  once per epoch (for a balanced data set: each image once);
* an identity with more than ``S`` chunks contributes only ``S`` random chunks (it is in
  every step); the dropped images are counted in :attr:`PKSampler.stats`;
* the ``< G`` empty slots of the last round are filled with a random chunk of a random
  identity absent from that step (counted: ``fill_slots``).

Chunks are laid out column by column into the ``(S, G)`` grid (consecutive chunks of one
identity fall into different steps), then the steps and each step's columns are shuffled.
``steps_per_epoch`` overrides ``S``: the plan is truncated, or extended with further
independently drawn rounds of the natural plan.  ``len(sampler)`` is the number of
batches per epoch, the same for every epoch and rank.

Identities with fewer than K images (``undersized``): ``"repeat"`` (default) fills the
chunk by cycling through its images (each used ``floor`` or ``ceil(K / n_i)`` times);
``"skip"`` excludes them; ``"error"`` raises.  Identities with one image cannot give a
positive pair: they are excluded under ``"repeat"`` and ``"skip"`` and raise under
``"error"``.  Exclusions are counted in :attr:`PKSampler.skipped` and logged, never
silent.  The sampler only sees labels: masked and unmasked twins of a photo must carry
the same identity label (and the same ``groups`` value).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["PKSampler", "UNDERSIZED_POLICIES"]

log = logging.getLogger(__name__)

UNDERSIZED_POLICIES = ("repeat", "skip", "error")
_STREAM = zlib.crc32(b"facenet.sampler")  # keeps this stream apart from other seed users


class PKSampler:
    """Deterministic P×K index plans for one rank of ``world_size``.

    ``labels`` (N,) identity labels (any hashable values); ``P`` identities per batch on
    this rank (the global step has ``P * world_size``), ``K`` images per identity;
    ``groups`` optional (N,) source-photo ids (see module doc).  ``batches(epoch)`` ->
    list of int64 ``(P*K,)`` index arrays into ``labels``, identity-major (K consecutive
    indices per identity).

    Attributes: ``skipped`` {"identities", "images"} excluded for having too few images;
    ``stats`` (counts of the plan, see :meth:`__init__`); ``steps_per_epoch``.
    """

    def __init__(self, labels: ArrayLike, P: int, K: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, steps_per_epoch: int | None = None,
                 groups: ArrayLike | Sequence[Any] | None = None,
                 undersized: str = "repeat") -> None:
        self.P, self.K, self.seed = int(P), int(K), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self._check_args(steps_per_epoch, undersized)
        lab = np.asarray(labels)
        if lab.ndim != 1:
            raise ValueError(f"PKSampler: labels must be 1-D, got shape {lab.shape}")
        _, ident = np.unique(lab, return_inverse=True)
        counts = np.bincount(ident) if lab.size else np.zeros(0, np.int64)
        keep_id = self._eligible(counts, undersized)
        self.skipped = {"identities": int((~keep_id).sum()), "images": int(counts[~keep_id].sum())}
        if self.skipped["identities"]:
            log.warning("PKSampler: %d identities (%d images) excluded: fewer than %d images",
                        self.skipped["identities"], self.skipped["images"],
                        2 if undersized == "repeat" else self.K)
        self._index_images(ident, keep_id, counts, groups, len(lab))
        self.G = self.P * self.world_size
        if self.n_ids < self.G:
            raise ValueError(
                f"PKSampler: a step needs P*world_size = {self.P}*{self.world_size} = {self.G} distinct "
                f"identities, only {self.n_ids} usable (with >= {2 if undersized == 'repeat' else self.K} "
                f"images; {self.skipped['identities']} excluded)")
        self.natural_steps = self._natural_steps()
        self.steps_per_epoch = int(steps_per_epoch) if steps_per_epoch else self.natural_steps
        self.stats = self._plan_stats()

    # ------------------------------------------------------------------ setup

    def _check_args(self, steps_per_epoch: int | None, undersized: str) -> None:
        if self.P < 2:
            raise ValueError(f"PKSampler: P must be >= 2 identities per batch, got {self.P}")
        if self.K < 2:
            raise ValueError(f"PKSampler: K must be >= 2 images per identity, got {self.K}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"PKSampler: bad rank {self.rank} of world_size {self.world_size}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"PKSampler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if undersized not in UNDERSIZED_POLICIES:
            raise ValueError(f"PKSampler: undersized must be one of {UNDERSIZED_POLICIES}, got {undersized!r}")

    def _eligible(self, counts: np.ndarray, undersized: str) -> np.ndarray:
        """bool (n_labels,): identities that take part."""
        if undersized == "error" and (counts < self.K).any():
            small = np.flatnonzero(counts < self.K)
            raise ValueError(f"PKSampler: {small.size} identities have fewer than K={self.K} images "
                             f"(e.g. label indices {small[:5].tolist()} with {counts[small[:5]].tolist()})")
        return counts >= (2 if undersized == "repeat" else self.K)

    def _index_images(self, ident: np.ndarray, keep_id: np.ndarray, counts: np.ndarray,
                      groups: Any, n: int) -> None:
        """Per-image arrays of the usable images, identities re-densified to 0..n_ids-1."""
        keep = keep_id[ident] if n else np.zeros(0, bool)
        self.images = np.flatnonzero(keep)                        # (M,) indices into labels
        dense = np.cumsum(keep_id) - 1
        self.img_id = dense[ident[keep]]                          # (M,) 0..n_ids-1
        self.n_ids = int(keep_id.sum())
        self.id_count = counts[keep_id]                           # (n_ids,)
        self.id_start = np.concatenate([[0], np.cumsum(self.id_count)[:-1]]).astype(np.int64)
        self.id_chunks = -(-self.id_count // self.K)              # ceil(n_i / K)
        self.img_group = None
        if groups is not None:
            g = np.asarray(groups)
            if g.shape != (n,):
                raise ValueError(f"PKSampler: groups must have the shape of labels ({n},), got {g.shape}")
            self.img_group = np.unique(g, return_inverse=True)[1][keep]

    def _natural_steps(self) -> int:
        """Largest S with sum_i min(c_i, S) > S*G - G (binary search; the left side
        minus S*G is concave in S, so the condition holds on an interval from 0)."""
        c, G = self.id_chunks, self.G

        def fits(S: int) -> bool:
            return int(np.minimum(c, S).sum()) > S * G - G

        lo, hi = 1, int(c.sum()) + 1  # fits(lo) since n_ids >= G; not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def _plan_stats(self) -> dict[str, int]:
        S, c = self.natural_steps, self.id_chunks
        used = np.minimum(c, S)
        return {
            "n_identities": self.n_ids, "n_images": int(self.images.size),
            "n_skipped_identities": self.skipped["identities"], "n_skipped_images": self.skipped["images"],
            "n_repeated_identities": int((self.id_count < self.K).sum()),
            "natural_steps_per_epoch": S, "steps_per_epoch": self.steps_per_epoch,
            "capped_identities": int((c > S).sum()),
            "dropped_images_per_round": int(np.maximum(self.id_count - used * self.K, 0)[c > S].sum()),
            "fill_slots_per_round": int(S * self.G - used.sum()),
        }

    # ------------------------------------------------------------------ plans

    def __len__(self) -> int:
        return self.steps_per_epoch

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``: ``len(self)`` int64 arrays of shape (P*K,)."""
        mine = self.global_plan(epoch)[:, self.rank * self.P:(self.rank + 1) * self.P]
        return list(mine.reshape(len(mine), self.P * self.K))

    def global_plan(self, epoch: int) -> np.ndarray:
        """int64 (steps, G, K) indices of every rank's identities (rank r: columns
        r*P..(r+1)*P), deterministic from (seed, epoch)."""
        rounds, have, sub = [], 0, 0
        while have < self.steps_per_epoch:
            rounds.append(self._round(np.random.default_rng(
                [self.seed & 0xFFFFFFFF, int(epoch), sub, _STREAM])))
            have += len(rounds[-1])
            sub += 1
        return np.concatenate(rounds)[: self.steps_per_epoch]

    def _image_order(self, rng: np.random.Generator) -> np.ndarray:
        """Positions into ``self.images`` sorted by identity, each identity's images in
        random order (with groups: one image per source photo first)."""
        u = rng.random(self.images.size)
        if self.img_group is None:
            return np.lexsort((u, self.img_id))
        by_group = np.lexsort((u, self.img_group, self.img_id))
        gid, grp = self.img_id[by_group], self.img_group[by_group]
        new_run = np.r_[True, (gid[1:] != gid[:-1]) | (grp[1:] != grp[:-1])]
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(gid.size), 0))
        occ = np.empty_like(by_group)
        occ[by_group] = np.arange(gid.size) - run_start  # rank of each image within its photo
        return np.lexsort((u, occ, self.img_id))

    def _round(self, rng: np.random.Generator) -> np.ndarray:
        """One natural epoch: int64 (S, G, K)."""
        S, G = self.natural_steps, self.G
        cell_id, cell_chunk = self._layout(rng, S, G)
        order = np.argsort(rng.random((S, G)), axis=1)                 # shuffle each step
        cell_id = np.take_along_axis(cell_id, order, 1)
        cell_chunk = np.take_along_axis(cell_chunk, order, 1)
        steps = rng.permutation(S)                                     # shuffle the steps
        cell_id, cell_chunk = cell_id[steps], cell_chunk[steps]
        sorted_images = self.images[self._image_order(rng)]
        slot = cell_chunk[..., None] * self.K + np.arange(self.K)      # (S, G, K)
        pos = self.id_start[cell_id][..., None] + slot % self.id_count[cell_id][..., None]
        return sorted_images[pos].astype(np.int64)

    def _layout(self, rng: np.random.Generator, S: int, G: int) -> tuple[np.ndarray, np.ndarray]:
        """(S, G) identity and chunk number of every slot: identities in random order,
        each with its first min(c_i, S) chunks, written column by column; then the empty
        slots filled with identities absent from their step."""
        perm = rng.permutation(self.n_ids)
        n_app = np.minimum(self.id_chunks[perm], S)
        app_id = np.repeat(perm, n_app)
        app_chunk = np.arange(app_id.size) - np.repeat(np.cumsum(n_app) - n_app, n_app)
        cell_id = np.full(S * G, -1, np.int64)
        cell_chunk = np.zeros(S * G, np.int64)
        cell_id[: app_id.size], cell_chunk[: app_id.size] = app_id, app_chunk
        # slot t is step t % S, column t // S: an identity's <= S consecutive chunks
        # land in distinct steps
        cell_id = cell_id.reshape(G, S).T.copy()
        cell_chunk = cell_chunk.reshape(G, S).T.copy()
        for s, g in zip(*np.nonzero(cell_id < 0)):
            cell_id[s, g] = self._absent_identity(rng, cell_id[s])
            cell_chunk[s, g] = rng.integers(self.id_chunks[cell_id[s, g]])
        return cell_id, cell_chunk

    def _absent_identity(self, rng: np.random.Generator, row: np.ndarray) -> int:
        """A uniform identity not in ``row`` (rejection; exact fallback when few remain)."""
        for _ in range(32):
            i = int(rng.integers(self.n_ids))
            if not (row == i).any():
                return i
        return int(rng.choice(np.setdiff1d(np.arange(self.n_ids), row)))
