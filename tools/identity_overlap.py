"""Training identities for the mask-network experiment (issue 9), checked against the
evaluation identities so that no evaluated person is trained on.

Training sources (``source:identity`` keys in the output)
    ``lfw``     LFW View 1 ``peopleDevTrain.txt`` people with at least 2 images;
    ``celeba``  ``celeba_subset/celeba_NNNNN`` (anonymous, loose 200x200 crops);
    ``glint``   ``glint_subset/datasets/celebrity_images/<Name>`` (named, aligned 112x112).
Evaluation sources
    ``lfw_devtest``  every name in LFW View 1 ``pairsDevTest.txt``;
    ``mfr2``         MFR2 people, their *unmasked* images only (``mfr2_labels.txt``).

Checks
    * by name: LFW DevTrain against DevTest (exact LFW names; disjoint by LFW's
      protocol, checked anyway) and against MFR2, glint against DevTest and MFR2, all by
      normalised name (accents stripped, lower case, letters and digits only:
      ``Simon Cowell`` == ``SimonCowell`` == ``Simon_Cowell``);
    * by embedding: CelebA and glint against DevTest and MFR2, on the **raw** dlib
      descriptors of the first ``max_images`` images of each identity (aligned by
      :class:`facenet.embed.DlibEmbedder`: ``prealigned=True`` for the aligned crops of MFR2
      and glint, the detector for LFW and CelebA).  A (training, evaluation) pair is
      flagged, and the training identity dropped, when

      - the mean distance over its image pairs is below dlib's 0.6 (the issue's "closer than
        dlib's 0.6 threshold on average"; 0.6 is calibrated on single image pairs), or
      - the distance between the two identity means is below ``CENTROID_THRESHOLD`` (0.4).

Why raw descriptors: dlib's 0.6 is a distance between its raw descriptors, whose norm is
about 1.46 here (measured, written to the report), not 1.  ``DlibEmbedder.embed`` returns
unit rows, on which 0.6 would correspond to ~0.87 raw and flag nearly every pair of
different people.  So the raw descriptors are computed from the embedder's own chips
(same alignment, same network file; their unit rows equal ``embed_chips`` - checked).

Why not 0.6 on the distance between identity means: averaging removes each identity's
spread (E|a-b|^2 = |mean_a - mean_b|^2 + tr Cov_a + tr Cov_b), so mean-to-mean distances of
*different* people sit well below their image-pair distances: in the full run about 7,500
of the 278,384 (training, evaluation) pairs had means closer than 0.6, covering all 274
CelebA and glint identities.  The mean-to-mean distance is still the cleaner same-person signal (it
averages the noise out), so it is kept as a second rule, at 0.4: every known same person
across data sets (the six glint/DevTest/MFR2 name matches) had means 0.21-0.38 apart, while
one of them (Leonardo DiCaprio, glint vs LFW) averaged 0.635 over image pairs.

Usage::

    python tools/identity_overlap.py --output docs/results/mask_network [--workers 2] [--cache F.npz]

writes ``overlap.json`` (lists, counts, flagged pairs, the ``drop`` list, settings, wall
time) and ``overlap.md``; ``--redecide`` judges an existing ``overlap.json`` again with
tighter thresholds (no embedding); ``--cache`` keeps the descriptors for reruns.
Importable: :func:`training_identities`, :func:`overlap`, :func:`decide`, :func:`redecide`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger("identity_overlap")

ROOT = Path(__file__).resolve().parents[1]
#: dlib's same-person threshold on its raw 128-d descriptors (dlib's face_recognition example)
DLIB_THRESHOLD = 0.6
#: second rule, on the distance between identity means (see the module docstring)
CENTROID_THRESHOLD = 0.4
#: image folders per source, relative to the data root
LFW_IMAGES = Path("lfw", "lfw-deepfunneled")
CELEBA = Path("celeba_subset")
GLINT = Path("glint_subset", "datasets", "celebrity_images")
MFR2 = Path("mfr2")
#: sources whose images are aligned crops (``DlibEmbedder(prealigned=True)``)
PREALIGNED = {"glint": True, "mfr2": True, "celeba": False, "lfw": False, "lfw_devtest": False}
_IMAGE_EXT = (".jpg", ".jpeg", ".png")

Identities = dict[str, list[Path]]


def default_data_root() -> Path:
    """``$MASKTHEFACE_DATA`` or ``<repo>/../shared/data`` (the tests' lookup)."""
    return Path(os.environ.get("MASKTHEFACE_DATA") or ROOT.parent / "shared" / "data").resolve()


def normalise_name(name: str) -> str:
    """``"Zoë_Saldaña" -> "zoesaldana"``: accents off, lower case, letters and digits only."""
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", ascii_.lower())


# ------------------------------------------------------------------------------ listing

def read_people(path: Path) -> dict[str, int]:
    """LFW ``people*.txt`` (View 1: a count line, then ``name<TAB>n_images``) -> {name: n}."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        tok = line.split()
        if len(tok) == 2 and not tok[0].isdigit():
            out[tok[0]] = int(tok[1])
    return out


def _images_in(folder: Path) -> list[Path]:
    """Image files of one identity folder, in a stable order (numeric stems numerically)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXT]
    return sorted(files, key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))


def training_identities(data_root: str | os.PathLike) -> dict[str, Identities]:
    """Every training identity before the overlap check: ``{source: {identity: [image
    paths]}}`` for ``lfw`` (DevTrain people with >= 2 images; paths ``Name/Name_%04d.jpg``
    that exist), ``celeba`` and ``glint`` (every image file in the identity folder)."""
    root = Path(data_root)
    lfw: Identities = {}
    for name, n in read_people(root / "lfw" / "peopleDevTrain.txt").items():
        if n < 2:
            continue
        paths = [root / LFW_IMAGES / name / f"{name}_{i:04d}.jpg" for i in range(1, n + 1)]
        lfw[name] = [p for p in paths if p.is_file()]
        if len(lfw[name]) != n:
            log.warning("lfw %s: %d of %d listed images exist", name, len(lfw[name]), n)
    celeba = {d.name: _images_in(d) for d in sorted((root / CELEBA).iterdir()) if d.is_dir()}
    glint = {d.name: _images_in(d) for d in sorted((root / GLINT).iterdir()) if d.is_dir()}
    return {"lfw": lfw, "celeba": celeba, "glint": glint}


def evaluation_identities(data_root: str | os.PathLike) -> dict[str, Identities]:
    """``{"lfw_devtest": {name: [paths]}, "mfr2": {name: [unmasked paths]}}``.  DevTest
    lists the images its pairs use first, then the person's other LFW images."""
    from facenet.pairs import read_pairs

    root = Path(data_root)
    used: dict[str, list[str]] = {}
    for p in read_pairs(root / "lfw" / "pairsDevTest.txt"):
        for rel in (p.left, p.right):
            used.setdefault(rel.split("/")[0], []).append(rel)
    devtest: Identities = {}
    for name, rels in used.items():
        first = [root / LFW_IMAGES / r for r in dict.fromkeys(rels)]
        rest = [q for q in _images_in(root / LFW_IMAGES / name) if q not in first]
        devtest[name] = [q for q in first if q.is_file()] + rest
    mfr2: Identities = {}
    for line in (root / MFR2 / "mfr2_labels.txt").read_text().splitlines():
        tok = [t.strip() for t in line.split(",")]
        if len(tok) == 3 and tok[2] == "no-mask":
            path = root / MFR2 / tok[0] / f"{tok[0]}_{int(tok[1]):04d}.png"
            if path.is_file():
                mfr2.setdefault(tok[0], []).append(path)
            else:
                log.warning("mfr2: listed image missing: %s", path)
    return {"lfw_devtest": devtest, "mfr2": dict(sorted(mfr2.items()))}


def name_overlaps(train: Mapping[str, Iterable[str]],
                  evaluation: Mapping[str, Iterable[str]]) -> list[dict]:
    """Same-person matches by normalised name between named training sources and the
    evaluation sources: ``[{"training": "glint:Simon Cowell", "evaluation": "mfr2:SimonCowell"}]``.
    (CelebA is anonymous: leave it out of ``train``.)"""
    index: dict[str, list[str]] = {}
    for src, names in evaluation.items():
        for n in names:
            index.setdefault(normalise_name(n), []).append(f"{src}:{n}")
    hits = []
    for src, names in train.items():
        for n in names:
            for e in index.get(normalise_name(n), []):
                hits.append({"training": f"{src}:{n}", "evaluation": e})
    return hits


# ------------------------------------------------------------------------------ embedding

@dataclass
class IdentityEmbeddings:
    """Raw dlib descriptors of some identities: ``raw[key]`` float32 (n_ok, 128) (raw,
    not normalised), ``paths[key]`` the images attempted, ``status``/``methods`` counts."""

    raw: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    unit_check: float = 0.0  # max |unit(raw) - DlibEmbedder.embed_chips| seen
    reused: int = 0  # identities taken from a cache rather than embedded in this run

    def means(self, keys: Sequence[str]) -> np.ndarray:
        """float64 (len(keys), 128): mean raw descriptor per identity."""
        return np.stack([self.raw[k].astype(np.float64).mean(0) for k in keys]) if keys else np.zeros((0, 128))

    def merge(self, other: "IdentityEmbeddings") -> None:
        self.raw.update(other.raw)
        self.paths.update(other.paths)
        for mine, theirs in ((self.status, other.status), (self.methods, other.methods)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.unit_check = max(self.unit_check, other.unit_check)

    def save(self, path: Path) -> None:
        """One ``.npz``: descriptors, offsets, and the rest as JSON (a cache for reruns)."""
        keys = list(self.raw)
        sizes = np.array([len(self.raw[k]) for k in keys], np.int64)
        meta = {"keys": keys, "paths": [self.paths[k] for k in keys], "status": self.status,
                "methods": self.methods, "unit_check": self.unit_check}
        flat = np.concatenate([self.raw[k] for k in keys]) if keys else np.zeros((0, 128), np.float32)
        np.savez(path, raw=flat, sizes=sizes, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> "IdentityEmbeddings":
        with np.load(path) as z:
            meta, flat, sizes = json.loads(str(z["meta"])), z["raw"], z["sizes"]
        parts = np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []
        out = cls(dict(zip(meta["keys"], parts)), dict(zip(meta["keys"], meta["paths"])),
                  meta["status"], meta["methods"], meta["unit_check"])
        return out


class RawDescriber:
    """dlib's ResNet descriptor, raw: chips from :class:`facenet.embed.DlibEmbedder`
    (its alignment, per source), descriptors from the same ``.dat`` without the unit
    normalisation the embedder applies.  Heavy (model + predictor): one per process."""

    def __init__(self) -> None:
        import dlib

        from facenet.embed import DLIB_MODEL, DlibEmbedder
        from masktheface.landmarks import model_path

        self.embedders = {True: DlibEmbedder(prealigned=True), False: DlibEmbedder()}
        # one 68-point predictor for both embedders
        self.embedders[True]._analyzer = self.embedders[False].analyzer
        self._rec = dlib.face_recognition_model_v1(model_path(DLIB_MODEL))

    def describe(self, paths: Sequence[Path], prealigned: bool, key: str) -> IdentityEmbeddings:
        """Images of one identity -> its raw descriptors (failed images counted, left out)."""
        from masktheface.imageio import ImageDecodeError, decode_image

        emb = self.embedders[bool(prealigned)]
        out = IdentityEmbeddings()
        chips = []
        for p in paths:
            try:
                bgr = decode_image(Path(p).read_bytes()).bgr
            except (OSError, ImageDecodeError) as e:
                log.warning("%s: cannot read %s: %s", key, p, e)
                out.status["bad_image"] = out.status.get("bad_image", 0) + 1
                continue
            chip, status, method, _ = emb.prepare(bgr)
            out.status[status] = out.status.get(status, 0) + 1
            if chip is not None:
                out.methods[method] = out.methods.get(method, 0) + 1
                chips.append(np.ascontiguousarray(chip))
        raw = (np.asarray(self._rec.compute_face_descriptor(chips), np.float32).reshape(-1, 128)
               if chips else np.zeros((0, 128), np.float32))
        if chips:  # the unit rows must be exactly what the project's embedder returns
            ref = emb.embed_chips(chips[:1])
            out.unit_check = float(np.abs(raw[:1] / np.linalg.norm(raw[:1]) - ref).max())
        out.raw[key], out.paths[key] = raw, [str(p) for p in paths]
        return out


_WORKER: RawDescriber | None = None


def _describe_job(job: tuple[str, list[Path], bool]) -> IdentityEmbeddings:
    global _WORKER
    if _WORKER is None:
        _WORKER = RawDescriber()
    key, paths, prealigned = job
    return _WORKER.describe(paths, prealigned, key)


def embed_identities(groups: Mapping[str, Identities], *, max_images: int = 8, workers: int = 1,
                     describer: RawDescriber | None = None, cache: Path | None = None) -> IdentityEmbeddings:
    """``{source: {identity: paths}}`` -> raw descriptors of the first ``max_images``
    images of each, keyed ``"source:identity"``.  ``workers > 1`` uses processes (each
    loads the models once).  ``cache``: an ``.npz`` reused for identities whose image
    list is unchanged, rewritten afterwards (status counts then cover the whole cache)."""
    jobs = [(f"{src}:{name}", list(paths[:max_images]), PREALIGNED[src])
            for src, ids in groups.items() for name, paths in ids.items()]
    total = IdentityEmbeddings()
    if cache is not None and Path(cache).is_file():
        old = IdentityEmbeddings.load(Path(cache))
        wanted = {k: [str(p) for p in ps] for k, ps, _ in jobs}
        if all(old.paths.get(k) == v for k, v in wanted.items() if k in old.paths):
            total = old  # same images: keep its descriptors and counts
        jobs = [j for j in jobs if total.paths.get(j[0]) != wanted[j[0]]]
        total.reused = len(wanted) - len(jobs)
        log.info("cache %s: %d identities reused, %d to embed", cache, len(wanted) - len(jobs), len(jobs))
    t0 = time.perf_counter()
    parts: Iterable[IdentityEmbeddings]
    if workers <= 1 or len(jobs) < 2:
        d = describer or (RawDescriber() if jobs else None)
        parts = (d.describe(paths, pre, key) for key, paths, pre in jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        parts = pool.map(_describe_job, jobs, chunksize=4)
    try:
        for i, part in enumerate(parts, 1):
            total.merge(part)
            if i % 50 == 0 or i == len(jobs):
                log.info("embedded %d/%d identities (%.0f s)", i, len(jobs), time.perf_counter() - t0)
    finally:
        if workers > 1 and len(jobs) >= 2:
            pool.shutdown()
    if cache is not None and jobs:
        total.save(Path(cache))
    return total


# ------------------------------------------------------------------------------ distances

@dataclass(frozen=True)
class PairDistances:
    """Identity-pair distances, float64 (T, E) each, on raw descriptors: ``centroid`` between
    mean descriptors; ``mean_pair`` / ``min_pair`` over every (training image, evaluation
    image) pair.  ``centroid <= mean_pair`` always (Jensen)."""

    train_keys: list[str]
    eval_keys: list[str]
    centroid: np.ndarray
    mean_pair: np.ndarray
    min_pair: np.ndarray


def pair_distances(emb: IdentityEmbeddings, train_keys: Sequence[str],
                   eval_keys: Sequence[str]) -> PairDistances:
    """Distances between every training and evaluation identity that has descriptors."""
    tk = [k for k in train_keys if len(emb.raw.get(k, ()))]
    ek = [k for k in eval_keys if len(emb.raw.get(k, ()))]
    a, b = emb.means(tk), emb.means(ek)
    centroid = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0))
    mean_pair, min_pair = np.zeros_like(centroid), np.zeros_like(centroid)
    if ek:
        imgs = np.concatenate([emb.raw[k] for k in ek]).astype(np.float64)  # (NB, 128)
        sizes = np.array([len(emb.raw[k]) for k in ek])
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        sq = (imgs * imgs).sum(1)
        for i, k in enumerate(tk):  # one training identity at a time: (n_t, NB) distances
            x = emb.raw[k].astype(np.float64)
            d = np.sqrt(np.maximum((x * x).sum(1)[:, None] + sq[None] - 2.0 * x @ imgs.T, 0.0))
            mean_pair[i] = np.add.reduceat(d.sum(0), starts) / (len(x) * sizes)
            min_pair[i] = np.minimum.reduceat(d.min(0), starts)
    return PairDistances(tk, ek, centroid, mean_pair, min_pair)


def describe_pair(emb: IdentityEmbeddings, pd: PairDistances, i: int, j: int) -> dict:
    """One pair's numbers (raw distances) and the centroid distance of unit rows (what
    ``DlibEmbedder.embed`` gives), for the report."""
    t, e = pd.train_keys[i], pd.eval_keys[j]
    ua = emb.raw[t] / np.linalg.norm(emb.raw[t], axis=1, keepdims=True)
    ub = emb.raw[e] / np.linalg.norm(emb.raw[e], axis=1, keepdims=True)
    return {"training": t, "evaluation": e, "mean_pair_distance": round(float(pd.mean_pair[i, j]), 4),
            "centroid_distance": round(float(pd.centroid[i, j]), 4),
            "min_pair_distance": round(float(pd.min_pair[i, j]), 4),
            "unit_centroid_distance": round(float(np.linalg.norm(ua.mean(0) - ub.mean(0))), 4),
            "images": [len(ua), len(ub)]}


def close_pairs(emb: IdentityEmbeddings, train_keys: Sequence[str], eval_keys: Sequence[str], *,
                threshold: float = DLIB_THRESHOLD, centroid_threshold: float = CENTROID_THRESHOLD,
                closest: int = 10) -> dict:
    """``flagged``: pairs with mean pairwise distance < ``threshold`` or centroid distance
    < ``centroid_threshold``; ``closest_mean_pair`` / ``closest_centroid``: the ``closest``
    pairs by each; ``below``: how many pairs fall under each statistic at a few
    thresholds.  Lists sorted by mean pairwise distance (or centroid)."""
    pd = pair_distances(emb, train_keys, eval_keys)
    if not pd.train_keys or not pd.eval_keys:
        return {"flagged": [], "closest_mean_pair": [], "closest_centroid": [], "below": {}, "pairs": 0}
    hit = (pd.mean_pair < threshold) | (pd.centroid < centroid_threshold)
    by_mean = [np.unravel_index(i, hit.shape) for i in np.argsort(pd.mean_pair, axis=None, kind="stable")]
    by_centroid = [np.unravel_index(i, hit.shape) for i in np.argsort(pd.centroid, axis=None, kind="stable")]
    flagged = [describe_pair(emb, pd, i, j) for i, j in by_mean if hit[i, j]]
    below = {f"{name}<{t}": int((m < t).sum()) for name, m in (("mean_pair", pd.mean_pair), ("centroid", pd.centroid))
             for t in (0.4, 0.5, 0.6)}
    return {"flagged": flagged, "pairs": int(hit.size), "below": below,
            "closest_mean_pair": [describe_pair(emb, pd, i, j) for i, j in by_mean[:closest]],
            "closest_centroid": [describe_pair(emb, pd, i, j) for i, j in by_centroid[:closest]]}


def norm_stats(emb: IdentityEmbeddings) -> dict:
    """Norms of the raw descriptors (why the threshold is applied to raw distances)."""
    n = np.concatenate([np.linalg.norm(v, axis=1) for v in emb.raw.values() if len(v)] or [np.zeros(0)])
    if not len(n):
        return {"n": 0}
    q = np.percentile(n, [0, 5, 50, 95, 100])
    return {"n": int(len(n)), "mean": round(float(n.mean()), 4),
            **{k: round(float(v), 4) for k, v in zip(("min", "p5", "median", "p95", "max"), q)}}


# ------------------------------------------------------------------------------ the check

def _name_checks(train: Mapping[str, Identities], ev: Mapping[str, Identities]) -> dict:
    """LFW DevTrain vs DevTest by exact name, named training sources vs the evaluation
    sources by normalised name, and glint vs LFW DevTrain (a person under two training
    labels: not a leak, reported for the trainer)."""
    exact = sorted(set(train["lfw"]) & set(ev["lfw_devtest"]))
    named = name_overlaps({"lfw": train["lfw"], "glint": train["glint"]}, ev)
    internal = name_overlaps({"glint": train["glint"]}, {"lfw": train["lfw"]})
    return {"lfw_devtrain_vs_devtest_exact": exact, "matches": named, "training_internal": internal}


def _embedding_checks(train: Mapping[str, Identities], ev: Mapping[str, Identities], *,
                      embed_sources: Sequence[str], max_images: int, threshold: float,
                      centroid_threshold: float, closest: int, workers: int, cache: Path | None,
                      known: Sequence[dict] = ()) -> dict:
    """Embed the chosen training sources and every evaluation source; flagged pairs, and
    the distances of ``known`` same-person pairs (name matches) as a calibration check."""
    groups = {s: train[s] for s in embed_sources} | dict(ev)
    emb = embed_identities(groups, max_images=max_images, workers=workers, cache=cache)
    tkeys = [f"{s}:{n}" for s in embed_sources for n in train[s]]
    ekeys = [f"{s}:{n}" for s in ev for n in ev[s]]
    out = close_pairs(emb, tkeys, ekeys, threshold=threshold, centroid_threshold=centroid_threshold,
                      closest=closest)
    # CelebA and glint are different collections: a person in both is two training labels
    out["training_internal"] = []
    if "celeba" in embed_sources and "glint" in embed_sources:
        out["training_internal"] = close_pairs(
            emb, [k for k in tkeys if k.startswith("celeba:")], [k for k in tkeys if k.startswith("glint:")],
            threshold=threshold, centroid_threshold=centroid_threshold, closest=0)["flagged"]
    out["per_source"] = {}
    for s in groups:
        keys = [f"{s}:{n}" for n in groups[s]]
        out["per_source"][s] = {
            "identities": len(keys), "images_tried": sum(len(emb.paths[k]) for k in keys),
            "images_embedded": sum(len(emb.raw[k]) for k in keys),
            "identities_without_face": sorted(k for k in keys if not len(emb.raw[k]))}
    out["known_same_person"] = []
    for m in known:  # what the two rules say about pairs known (by name) to be one person
        t, e = m["training"], m["evaluation"]
        if len(emb.raw.get(t, ())) and len(emb.raw.get(e, ())):
            out["known_same_person"].append(describe_pair(emb, pair_distances(emb, [t], [e]), 0, 0))
    out.update(status=emb.status, alignment=emb.methods, raw_norm=norm_stats(emb),
               unit_check_max_abs=emb.unit_check, reused_from_cache=emb.reused)
    return out


def overlap(data_root: str | os.PathLike | None = None, *, max_images: int = 8,
            threshold: float = DLIB_THRESHOLD, centroid_threshold: float = CENTROID_THRESHOLD,
            closest: int = 10, workers: int = 1, embed_lfw_train: bool = False,
            cache: str | os.PathLike | None = None) -> dict:
    """The whole check; returns what ``overlap.json`` holds (see module docstring).

    ``drop`` lists ``"source:identity"`` training identities to leave out: name matches,
    embedding-flagged pairs, and CelebA/glint identities with no embeddable image (they
    could not be checked).  ``kept`` has the remaining identities and image counts.
    ``embed_lfw_train`` also embeds the LFW DevTrain people (they are named, so by default
    they are checked by name only).  ``cache``: ``.npz`` of descriptors kept between runs.
    """
    t0 = time.perf_counter()
    root = Path(data_root) if data_root is not None else default_data_root()
    train, ev = training_identities(root), evaluation_identities(root)
    names = _name_checks(train, ev)
    embed_sources = (["lfw"] if embed_lfw_train else []) + ["celeba", "glint"]
    emb = _embedding_checks(train, ev, embed_sources=embed_sources, max_images=max_images,
                            threshold=threshold, centroid_threshold=centroid_threshold, closest=closest,
                            workers=workers, cache=Path(cache) if cache else None, known=names["matches"])
    counts = {s: {n: len(p) for n, p in ids.items()} for s, ids in train.items()}
    drop, reasons, kept = decide(counts, names, emb, embed_sources, threshold, centroid_threshold)
    return {
        "settings": _settings(root, max_images, threshold, centroid_threshold, closest, workers, embed_sources, ev),
        "training": counts,
        "training_counts": _counts(counts),
        "evaluation_counts": _counts({s: {n: len(p) for n, p in ids.items()} for s, ids in ev.items()}),
        "name_checks": names,
        "embedding": emb,
        "drop": drop,
        "drop_reasons": reasons,
        "kept": kept,
        "kept_counts": _counts(kept),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }


def decide(train: Mapping[str, Mapping[str, int]], names: dict, emb: dict, embed_sources: Sequence[str],
           threshold: float, centroid_threshold: float) -> tuple[list[str], dict[str, list[str]], dict]:
    """(drop list, reasons, kept ``{source: {identity: n_images}}``): a training identity is
    dropped for a name match, for an embedded pair under either rule (mean pair distance <
    ``threshold`` or centroid distance < ``centroid_threshold``), or when none of its
    images could be embedded (unchecked)."""
    reasons: dict[str, list[str]] = {}
    for n in names["lfw_devtrain_vs_devtest_exact"]:
        reasons.setdefault(f"lfw:{n}", []).append(f"name in lfw_devtest:{n}")
    for m in names["matches"]:
        reasons.setdefault(m["training"], []).append(f"name matches {m['evaluation']}")
    for p in emb["flagged"]:
        if p["mean_pair_distance"] < threshold or p["centroid_distance"] < centroid_threshold:
            reasons.setdefault(p["training"], []).append(
                f"embedding: mean pair {p['mean_pair_distance']:.3f}, centroid {p['centroid_distance']:.3f} "
                f"from {p['evaluation']}")
    for s in embed_sources:
        for k in emb["per_source"][s]["identities_without_face"]:
            reasons.setdefault(k, []).append("no embeddable image: unchecked")
    drop = sorted(reasons)
    kept = {s: {n: c for n, c in ids.items() if f"{s}:{n}" not in reasons} for s, ids in train.items()}
    return drop, {k: reasons[k] for k in drop}, kept


def redecide(result: dict, threshold: float | None = None, centroid_threshold: float | None = None) -> dict:
    """An earlier :func:`overlap` result judged again with other thresholds, without
    embedding.  Only the pairs it flagged are known, so thresholds can only be tightened;
    to loosen them rerun with the descriptor ``cache`` (seconds)."""
    st = result["settings"]
    thr = st["threshold"] if threshold is None else threshold
    cthr = st["centroid_threshold"] if centroid_threshold is None else centroid_threshold
    if thr > st["threshold"] or cthr > st["centroid_threshold"]:
        raise ValueError("redecide can only tighten the thresholds; rerun with --cache to loosen them")
    emb = dict(result["embedding"])
    emb["flagged"] = [p for p in emb["flagged"] if p["mean_pair_distance"] < thr or p["centroid_distance"] < cthr]
    drop, reasons, kept = decide(result["training"], result["name_checks"], emb, st["embedded_training_sources"],
                                 thr, cthr)
    settings = _settings(Path(st["data_root"]), st["max_images_per_identity"], thr, cthr, st["closest"],
                         st["workers"], st["embedded_training_sources"], result["evaluation_counts"])
    return dict(result, settings=settings, embedding=emb, drop=drop, drop_reasons=reasons, kept=kept,
                kept_counts=_counts(kept))


def _settings(root: Path, max_images: int, threshold: float, centroid_threshold: float, closest: int,
              workers: int, embed_sources: Sequence[str], ev: Mapping[str, Any]) -> dict:
    return {"data_root": str(root), "max_images_per_identity": max_images,
            "threshold": threshold, "centroid_threshold": centroid_threshold, "closest": closest,
            "workers": workers, "embedded_training_sources": list(embed_sources),
            "distance": "raw (unnormalised) dlib ResNet descriptors, Euclidean; a pair is flagged when "
                        f"the mean distance over its image pairs is < {threshold} (dlib's threshold, "
                        f"on average) or the distance between identity means is < {centroid_threshold}",
            "embedder": {s: f"facenet.embed.DlibEmbedder(prealigned={PREALIGNED[s]})"
                         for s in [*embed_sources, *ev]},
            "mfr2_images": "no-mask rows of mfr2_labels.txt only",
            "lfw_devtest_images": "images used by pairsDevTest.txt first, then the person's others",
            "images_order": "first max_images per identity (LFW by number, CelebA by file name, glint by number)"}


def _counts(lists: Mapping[str, Mapping[str, int]]) -> dict:
    return {s: {"identities": len(ids), "images": int(sum(ids.values()))} for s, ids in lists.items()}


# ------------------------------------------------------------------------------ report

def _pair_rows(pairs: Sequence[dict]) -> list[str]:
    rows = ["| training | evaluation | mean pair dist. | centroid dist. | min pair dist. "
            "| unit-centroid dist. | images |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {p['training']} | {p['evaluation']} | {p['mean_pair_distance']:.3f} | "
             f"{p['centroid_distance']:.3f} | {p['min_pair_distance']:.3f} | {p['unit_centroid_distance']:.3f} "
             f"| {p['images'][0]} / {p['images'][1]} |" for p in pairs]
    return rows


def _identity_table(r: dict) -> list[str]:
    lines = ["| source | identities | images | dropped | kept identities | kept images |",
             "|---|---|---|---|---|---|"]
    for src, c in r["training_counts"].items():
        k = r["kept_counts"][src]
        lines.append(f"| {src} (training) | {c['identities']} | {c['images']} | "
                     f"{c['identities'] - k['identities']} | {k['identities']} | {k['images']} |")
    for src, c in r["evaluation_counts"].items():
        used = r["embedding"]["per_source"].get(src, {})
        lines.append(f"| {src} (evaluation) | {c['identities']} | {c['images']} "
                     f"(embedded {used.get('images_embedded', '-')}) | | | |")
    return lines


def _checks_text(r: dict) -> list[str]:
    s, e, names = r["settings"], r["embedding"], r["name_checks"]
    matches = ", ".join(f"{m['training']} = {m['evaluation']}" for m in names["matches"])
    below = e["below"]
    norm = {"median": float("nan"), "p5": float("nan"), "p95": float("nan")} | e["raw_norm"]
    trained = sorted({p["training"] for p in e["flagged"]})
    return [
        f"- LFW DevTrain vs DevTest, exact names: {len(names['lfw_devtrain_vs_devtest_exact'])} shared.",
        "- Named training sources (LFW DevTrain, glint) vs DevTest/MFR2 by normalised name: "
        f"{len(names['matches'])} match(es)" + (f": {matches}." if matches else "."),
        f"- By embedding ({', '.join(s['embedded_training_sources'])} vs DevTest and MFR2, {e['pairs']} "
        f"identity pairs): {len(e['flagged'])} pair(s) flagged, {len(trained)} training identities.", "",
        f"Rule: {s['distance']}. First {s['max_images_per_identity']} images per identity (MFR2: unmasked "
        "only; DevTest: the images its pairs use first).", "",
        f"Raw dlib descriptor norms: median {norm['median']:.3f} (p5 {norm['p5']:.3f}, "
        f"p95 {norm['p95']:.3f}, n={norm['n']}). dlib's 0.6 is defined on these raw "
        "descriptors, so it is applied to raw distances: on the unit rows `DlibEmbedder.embed` returns it "
        f"would mean ~{0.6 * norm['median']:.2f} raw. Mean-to-mean distances are not thresholded at 0.6: "
        "averaging removes each identity's spread, so different people's means sit closer than their images "
        f"(pairs below 0.4 / 0.5 / 0.6: centroid {below.get('centroid<0.4')} / {below.get('centroid<0.5')} / "
        f"{below.get('centroid<0.6')}, mean pair {below.get('mean_pair<0.4')} / {below.get('mean_pair<0.5')} / "
        f"{below.get('mean_pair<0.6')}). " + _known_text(e.get("known_same_person", [])), ""]


def _known_text(known: Sequence[dict]) -> str:
    if not known:
        return ""
    c = [p["centroid_distance"] for p in known]
    m = [p["mean_pair_distance"] for p in known]
    return (f"The {len(known)} pairs known to be one person (name matches across data sets) had means "
            f"{min(c):.2f}-{max(c):.2f} apart and mean pair distances {min(m):.2f}-{max(m):.2f} "
            f"({sum(x < 0.6 for x in m)} of {len(m)} below 0.6), hence the second rule on means.")


def render_markdown(r: dict) -> str:
    """The short human report (``overlap.md``) of an :func:`overlap` result."""
    s, e, names = r["settings"], r["embedding"], r["name_checks"]
    partners: dict[str, int] = {}
    for p in e["flagged"]:
        partners[p["training"]] = partners.get(p["training"], 0) + 1
    hubs = sorted(partners.items(), key=lambda kv: -kv[1])[:5]
    lines = [
        "# Training identities vs evaluation identities (issue 9)", "",
        f"Command: `{r.get('command', 'python tools/identity_overlap.py')}`  ",
        *([f"Re-judged (no embedding): `{r['redecided']}`  "] if r.get("redecided") else []),
        f"Wall time: {r['wall_time_s']:.0f} s on this machine (2 shared cores, {s['workers']} worker process(es))"
        + (f"; descriptors of {e['reused_from_cache']} identities came from a cache, their embedding is not in it."
           if e.get("reused_from_cache") else "."),
        "", "Data: LFW, CelebA, Glint and MFR2 are research-only sets (see `../shared/data/SOURCES.md`).", "",
        "## Identities", "", *_identity_table(r), "", "## Checks", "", *_checks_text(r),
        "Training identities with the most flagged partners: "
        + (", ".join(f"{k} ({v})" for k, v in hubs) if hubs else "none")
        + ". A flag means the same person cannot be ruled out, not that it is the same person: "
          "dropping costs training data, not validity.", "",
        f"### Closest {len(e['closest_mean_pair'])} pairs by mean pair distance", "",
        *_pair_rows(e["closest_mean_pair"]), "",
        f"### Closest {len(e['closest_centroid'])} pairs by centroid distance", "",
        *_pair_rows(e["closest_centroid"]), "",
        "The full flagged list (with every distance) is `embedding.flagged` in `overlap.json`.", "",
        f"## Dropped from training ({len(r['drop'])})", ""]
    lines += [f"- `{k}`: {'; '.join(v[:2])}" + (f" (+{len(v) - 2} more)" if len(v) > 2 else "")
              for k, v in r["drop_reasons"].items()] or ["- none"]
    info = names["training_internal"] + e["training_internal"]
    lines += ["", "## Same person under two training labels (not a leak; not dropped)", ""]
    lines += [f"- {p['training']} ~ {p['evaluation']}"
              + (f" (mean pair {p['mean_pair_distance']:.3f})" if "mean_pair_distance" in p else " (name)")
              for p in info] or ["- none found"]
    lines += ["", "Per-image status: " + ", ".join(f"{k} {v}" for k, v in sorted(e["status"].items()))
              + "; alignment: " + ", ".join(f"{k} {v}" for k, v in sorted(e["alignment"].items())) + ".", ""]
    return "\n".join(lines)


def write_outputs(result: dict, output: Path) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    js, md = output / "overlap.json", output / "overlap.md"
    js.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    md.write_text(render_markdown(result))
    return js, md


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=None, help="default: $MASKTHEFACE_DATA or ../shared/data")
    ap.add_argument("--output", type=Path, required=True, help="folder for overlap.json and overlap.md")
    ap.add_argument("--max-images", type=int, default=8, help="images embedded per identity (default 8)")
    ap.add_argument("--threshold", type=float, default=DLIB_THRESHOLD)
    ap.add_argument("--centroid-threshold", type=float, default=CENTROID_THRESHOLD)
    ap.add_argument("--closest", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=None,
                    help="descriptor cache (.npz, outside the output folder) reused by reruns")
    ap.add_argument("--workers", type=int, default=1, help="processes (each loads dlib's models)")
    ap.add_argument("--redecide", action="store_true",
                    help="judge OUTPUT/overlap.json again with tighter thresholds, embedding nothing")
    ap.add_argument("--embed-lfw-train", action="store_true",
                    help="also embed LFW DevTrain (named: checked by name by default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cmd = "python tools/identity_overlap.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.redecide:
        try:
            result = redecide(json.loads((args.output / "overlap.json").read_text()), args.threshold,
                              args.centroid_threshold)
        except (OSError, ValueError, KeyError) as e:
            ap.error(f"--redecide: {e}")
        result["redecided"] = cmd
        write_outputs(result, args.output)
        log.info("dropped %d training identities", len(result["drop"]))
        return result
    result = overlap(args.data_root, max_images=args.max_images, threshold=args.threshold,
                     centroid_threshold=args.centroid_threshold, closest=args.closest, workers=args.workers,
                     embed_lfw_train=args.embed_lfw_train, cache=args.cache)
    result["command"] = cmd
    js, md = write_outputs(result, args.output)
    log.info("dropped %d training identities; wrote %s and %s (%.0f s)",
             len(result["drop"]), js, md, result["wall_time_s"])
    return result


if __name__ == "__main__":
    main()
