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
    * by embedding: CelebA and glint against DevTest and MFR2.  Each identity is the mean
      of the **raw** dlib descriptors of its first ``max_images`` images (aligned by
      :class:`facenet.embed.DlibEmbedder`: ``prealigned=True`` for the aligned crops of MFR2
      and glint, the detector for LFW and CelebA).  A (training, evaluation) pair whose
      images are closer than dlib's 0.6 on average (mean pairwise distance) is flagged, and
      the training identity is dropped.

Why raw descriptors: dlib's 0.6 is a distance between its raw descriptors, whose norm is
about 1.4 here (measured and written to the report), not 1.  ``DlibEmbedder.embed`` returns
unit rows, on which 0.6 would correspond to ~0.85 raw, i.e. it would flag nearly every pair
of different people.  So the raw descriptors are computed from the embedder's own chips
(same alignment, same network file; their unit rows equal ``embed_chips`` - checked at run
time).  The distance between identity means is a lower bound on the mean pairwise distance
(Jensen), so it pre-selects the candidate pairs; the rule is the mean pairwise distance
(thresholding the means themselves flagged every CelebA and glint identity: averaging
pulls means toward the population mean).

Usage::

    python tools/identity_overlap.py --output docs/results/mask_network [--workers 2]

writes ``overlap.json`` (lists, counts, flagged pairs, the ``drop`` list, settings, wall
time) and ``overlap.md``.  Importable: :func:`training_identities`, :func:`overlap`.
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
    not normalised), ``tried[key]`` images attempted, ``status`` counts over all images."""

    raw: dict[str, np.ndarray] = field(default_factory=dict)
    tried: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    unit_check: float = 0.0  # max |unit(raw) - DlibEmbedder.embed_chips| seen

    def keys_with_faces(self) -> list[str]:
        return [k for k, v in self.raw.items() if len(v)]

    def means(self, keys: Sequence[str]) -> np.ndarray:
        """float64 (len(keys), 128): mean raw descriptor per identity."""
        return np.stack([self.raw[k].astype(np.float64).mean(0) for k in keys]) if keys else np.zeros((0, 128))

    def merge(self, other: "IdentityEmbeddings") -> None:
        self.raw.update(other.raw)
        self.tried.update(other.tried)
        for mine, theirs in ((self.status, other.status), (self.methods, other.methods)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.unit_check = max(self.unit_check, other.unit_check)


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
        out.raw[key], out.tried[key] = raw, len(paths)
        return out


_WORKER: RawDescriber | None = None


def _describe_job(job: tuple[str, list[Path], bool]) -> IdentityEmbeddings:
    global _WORKER
    if _WORKER is None:
        _WORKER = RawDescriber()
    key, paths, prealigned = job
    return _WORKER.describe(paths, prealigned, key)


def embed_identities(groups: Mapping[str, Identities], *, max_images: int = 8,
                     workers: int = 1, describer: RawDescriber | None = None) -> IdentityEmbeddings:
    """``{source: {identity: paths}}`` -> raw descriptors of the first ``max_images``
    images of each, keyed ``"source:identity"``.  ``workers > 1`` uses processes
    (each loads the models once)."""
    jobs = [(f"{src}:{name}", list(paths[:max_images]), PREALIGNED[src])
            for src, ids in groups.items() for name, paths in ids.items()]
    total = IdentityEmbeddings()
    t0 = time.perf_counter()

    def progress(i: int) -> None:
        if i % 50 == 0 or i == len(jobs):
            log.info("embedded %d/%d identities (%.0f s)", i, len(jobs), time.perf_counter() - t0)

    if workers <= 1:
        d = describer or RawDescriber()
        for i, (key, paths, pre) in enumerate(jobs, 1):
            total.merge(d.describe(paths, pre, key))
            progress(i)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, part in enumerate(pool.map(_describe_job, jobs, chunksize=4), 1):
                total.merge(part)
                progress(i)
    return total


# ------------------------------------------------------------------------------ distances

def pair_table(emb: IdentityEmbeddings, train_keys: Sequence[str], eval_keys: Sequence[str]
               ) -> np.ndarray:
    """float64 (T, E): Euclidean distance between mean raw descriptors."""
    a, b = emb.means(train_keys), emb.means(eval_keys)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def describe_pair(emb: IdentityEmbeddings, t: str, e: str, centroid: float) -> dict:
    """One pair's numbers: centroid distance (the thresholded one), mean and min distance
    over image pairs (raw), the centroid distance of unit rows (what ``embed`` gives)."""
    a, b = emb.raw[t].astype(np.float64), emb.raw[e].astype(np.float64)
    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    ua = (a / np.linalg.norm(a, axis=1, keepdims=True)).mean(0)
    ub = (b / np.linalg.norm(b, axis=1, keepdims=True)).mean(0)
    return {"training": t, "evaluation": e, "distance": round(float(centroid), 4),
            "mean_pair_distance": round(float(d.mean()), 4), "min_pair_distance": round(float(d.min()), 4),
            "unit_centroid_distance": round(float(np.linalg.norm(ua - ub)), 4),
            "images": [len(a), len(b)]}


def close_pairs(emb: IdentityEmbeddings, train_keys: Sequence[str], eval_keys: Sequence[str],
                threshold: float = DLIB_THRESHOLD, closest: int = 10) -> tuple[list[dict], list[dict]]:
    """(every pair with centroid distance < ``threshold``, the ``closest`` pairs), each
    sorted by distance; identities without any embedded image are left out."""
    tk = [k for k in train_keys if len(emb.raw.get(k, ()))]
    ek = [k for k in eval_keys if len(emb.raw.get(k, ()))]
    if not tk or not ek:
        return [], []
    dist = pair_table(emb, tk, ek)
    order = np.argsort(dist, axis=None, kind="stable")
    flat = [np.unravel_index(i, dist.shape) for i in order]
    below = [describe_pair(emb, tk[i], ek[j], dist[i, j]) for i, j in flat if dist[i, j] < threshold]
    top = [describe_pair(emb, tk[i], ek[j], dist[i, j]) for i, j in flat[:closest]]
    return below, top


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
                      closest: int, workers: int) -> dict:
    """Embed the chosen training sources and every evaluation source; flagged pairs."""
    groups = {s: train[s] for s in embed_sources} | dict(ev)
    emb = embed_identities(groups, max_images=max_images, workers=workers)
    tkeys = [f"{s}:{n}" for s in embed_sources for n in train[s]]
    ekeys = [f"{s}:{n}" for s in ev for n in ev[s]]
    flagged, top = close_pairs(emb, tkeys, ekeys, threshold, closest)
    # CelebA and glint are different collections: a person in both is two training labels
    internal = []
    if "celeba" in embed_sources and "glint" in embed_sources:
        internal, _ = close_pairs(emb, [k for k in tkeys if k.startswith("celeba:")],
                                  [k for k in tkeys if k.startswith("glint:")], threshold, 0)
    per_source = {}
    for s in groups:
        keys = [f"{s}:{n}" for n in groups[s]]
        per_source[s] = {"identities": len(keys), "images_tried": sum(emb.tried[k] for k in keys),
                         "images_embedded": sum(len(emb.raw[k]) for k in keys),
                         "identities_without_face": sorted(k for k in keys if not len(emb.raw[k]))}
    return {"flagged": flagged, "closest": top, "training_internal": internal,
            "per_source": per_source, "status": emb.status, "alignment": emb.methods,
            "raw_norm": norm_stats(emb), "unit_check_max_abs": emb.unit_check}


#: how a pair is judged (written into the settings and the report)
DISTANCE_TEXT = ("mean Euclidean distance over all image pairs of raw (unnormalised) dlib ResNet descriptors "
                 "(dlib's 0.6 'on average'); pairs are pre-selected by the distance between identity means, "
                 "which is never larger (Jensen), so the pre-selection loses none")


def decide(train: Mapping[str, Mapping[str, Any]], names: dict, emb: dict, embed_sources: Sequence[str],
           threshold: float) -> tuple[list[str], dict[str, list[str]], dict]:
    """(drop list, reasons, kept) from the name checks and the embedded pairs: a training
    identity is dropped for a name match, for a mean pairwise distance below ``threshold``
    to an evaluated identity, or when none of its images could be embedded (unchecked)."""
    reasons: dict[str, list[str]] = {}
    for n in names["lfw_devtrain_vs_devtest_exact"]:
        reasons.setdefault(f"lfw:{n}", []).append(f"name in lfw_devtest:{n}")
    for m in names["matches"]:
        reasons.setdefault(m["training"], []).append(f"name matches {m['evaluation']}")
    for p in emb["flagged"]:
        if p["mean_pair_distance"] < threshold:
            reasons.setdefault(p["training"], []).append(
                f"mean pair distance {p['mean_pair_distance']:.3f} to {p['evaluation']}")
    for s in embed_sources:
        for k in emb["per_source"][s]["identities_without_face"]:
            reasons.setdefault(k, []).append("no embeddable image: unchecked")
    drop = sorted(reasons)
    kept = {s: {n: (c if isinstance(c, int) else len(c)) for n, c in ids.items() if f"{s}:{n}" not in reasons}
            for s, ids in train.items()}
    return drop, reasons, kept


def redecide(result: dict, threshold: float | None = None) -> dict:
    """An earlier :func:`overlap` result judged again with :func:`decide` (no embedding)."""
    thr = result["settings"]["threshold"] if threshold is None else threshold
    drop, reasons, kept = decide(result["training"], result["name_checks"], result["embedding"],
                                 result["settings"]["embedded_training_sources"], thr)
    out = dict(result, drop=drop, drop_reasons={k: reasons[k] for k in drop}, kept=kept, kept_counts=_counts(kept))
    out["settings"] = dict(result["settings"], threshold=thr, distance=DISTANCE_TEXT)
    return out


def overlap(data_root: str | os.PathLike | None = None, *, max_images: int = 8,
            threshold: float = DLIB_THRESHOLD, closest: int = 10, workers: int = 1,
            embed_lfw_train: bool = False) -> dict:
    """The whole check; returns what ``overlap.json`` holds (see module docstring).

    ``drop`` lists ``"source:identity"`` training identities to leave out: name matches,
    embedding-flagged pairs, and CelebA/glint identities with no embeddable image (they
    could not be checked).  ``kept`` has the remaining identities and image counts.
    ``embed_lfw_train`` also embeds the LFW DevTrain people (they are named, so by default
    they are checked by name only).
    """
    t0 = time.perf_counter()
    root = Path(data_root) if data_root is not None else default_data_root()
    train, ev = training_identities(root), evaluation_identities(root)
    names = _name_checks(train, ev)
    embed_sources = (["lfw"] if embed_lfw_train else []) + ["celeba", "glint"]
    emb = _embedding_checks(train, ev, embed_sources=embed_sources, max_images=max_images,
                            threshold=threshold, closest=closest, workers=workers)
    drop, reasons, kept = decide(train, names, emb, embed_sources, threshold)
    return {
        "settings": {"data_root": str(root), "max_images_per_identity": max_images,
                     "threshold": threshold, "closest": closest, "workers": workers,
                     "embedded_training_sources": embed_sources,
                     "distance": DISTANCE_TEXT,
                     "embedder": {s: f"facenet.embed.DlibEmbedder(prealigned={PREALIGNED[s]})"
                                  for s in [*embed_sources, *ev]},
                     "mfr2_images": "no-mask rows of mfr2_labels.txt only",
                     "lfw_devtest_images": "images used by pairsDevTest.txt first, then the person's others"},
        "training": {s: {n: len(p) for n, p in ids.items()} for s, ids in train.items()},
        "training_counts": _counts({s: {n: len(p) for n, p in ids.items()} for s, ids in train.items()}),
        "evaluation_counts": _counts({s: {n: len(p) for n, p in ids.items()} for s, ids in ev.items()}),
        "name_checks": names,
        "embedding": emb,
        "drop": drop,
        "drop_reasons": {k: reasons[k] for k in drop},
        "kept": kept,
        "kept_counts": _counts(kept),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }


def _counts(lists: Mapping[str, Mapping[str, int]]) -> dict:
    return {s: {"identities": len(ids), "images": int(sum(ids.values()))} for s, ids in lists.items()}


# ------------------------------------------------------------------------------ report

def _pair_rows(pairs: Sequence[dict]) -> list[str]:
    rows = ["| training | evaluation | centroid dist. | mean pair dist. | min pair dist. "
            "| unit-centroid dist. | images |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {p['training']} | {p['evaluation']} | {p['distance']:.3f} | {p['mean_pair_distance']:.3f} | "
             f"{p['min_pair_distance']:.3f} | {p['unit_centroid_distance']:.3f} | {p['images'][0]} / {p['images'][1]} |"
             for p in pairs]
    return rows


def render_markdown(r: dict) -> str:
    """The short human report (``overlap.md``) of an :func:`overlap` result."""
    s, e, names = r["settings"], r["embedding"], r["name_checks"]
    matches = ", ".join(f"{m['training']} = {m['evaluation']}" for m in names["matches"])
    norm = e["raw_norm"]
    lines = [
        "# Training identities vs evaluation identities (issue 9)", "",
        f"Command: `{r.get('command', 'python tools/identity_overlap.py')}`  ",
        f"Wall time: {r['wall_time_s']:.0f} s on this machine (2 shared cores, {s['workers']} worker(s)).", "",
        "Data: LFW, CelebA, Glint and MFR2 are research-only sets (see `../shared/data/SOURCES.md`).", "",
        "## Identities", "",
        "| source | identities | images | dropped | kept identities | kept images |", "|---|---|---|---|---|---|"]
    for src, c in r["training_counts"].items():
        k = r["kept_counts"][src]
        lines.append(f"| {src} (training) | {c['identities']} | {c['images']} | {c['identities'] - k['identities']} "
                     f"| {k['identities']} | {k['images']} |")
    for src, c in r["evaluation_counts"].items():
        lines.append(f"| {src} (evaluation) | {c['identities']} | {c['images']} | | | |")
    lines += ["", "## Checks", "",
              f"- LFW DevTrain vs DevTest, exact names: {len(names['lfw_devtrain_vs_devtest_exact'])} shared.",
              f"- Named training sources (LFW DevTrain, glint) vs DevTest/MFR2 by normalised name: "
              f"{len(names['matches'])} match(es)" + (f": {matches}." if matches else "."),
              f"- By embedding ({', '.join(s['embedded_training_sources'])} vs DevTest and MFR2): "
              f"{len(e['flagged'])} pair(s) with identity means closer than {s['threshold']}, "
              f"{sum(p['mean_pair_distance'] < s['threshold'] for p in e['flagged'])} of them closer than "
              f"{s['threshold']} on average over their image pairs (these drop the training identity).",
              "", "Distance: " + s["distance"] + f", first {s['max_images_per_identity']} images per identity "
              f"(MFR2: unmasked only). Raw descriptor norms: median {norm.get('median', float('nan')):.3f} "
              f"(p5 {norm.get('p5', float('nan')):.3f}, p95 {norm.get('p95', float('nan')):.3f}, n={norm['n']}), "
              "so dlib's 0.6, defined on raw descriptors, is applied to raw distances; on the unit rows "
              "`DlibEmbedder.embed` returns it would be far too loose. Identity means sit closer together "
              "than single images (averaging shrinks them toward the population mean): thresholding them "
              "at 0.6 flagged every CelebA and glint identity against some DevTest identity, so the rule "
              "is the mean pairwise distance, dlib's 0.6 on average.", ""]
    close = [p for p in e["flagged"] if p["mean_pair_distance"] < s["threshold"]]
    if close:
        lines += ["### Pairs closer than the threshold on average (training identity dropped)", "",
                  *_pair_rows(sorted(close, key=lambda p: p["mean_pair_distance"])), ""]
    lines += [f"### Closest {len(e['closest'])} pairs", "", *_pair_rows(e["closest"]), ""]
    lines += ["## Dropped from training", ""]
    lines += [f"- `{k}`: {'; '.join(v)}" for k, v in r["drop_reasons"].items()] or ["- none"]
    info = names["training_internal"] + e["training_internal"]
    lines += ["", "## Same person under two training labels (not a leak; not dropped)", ""]
    lines += [f"- {p['training']} ~ {p['evaluation']}" + (f" ({p['distance']:.3f})" if "distance" in p else " (name)")
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
    ap.add_argument("--closest", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="processes (each loads dlib's models)")
    ap.add_argument("--redecide", action="store_true",
                    help="judge OUTPUT/overlap.json again (threshold, rule) without embedding anything")
    ap.add_argument("--embed-lfw-train", action="store_true",
                    help="also embed LFW DevTrain (named: checked by name by default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.redecide:
        result = redecide(json.loads((args.output / "overlap.json").read_text()), args.threshold)
        result["redecided"] = "python tools/identity_overlap.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        write_outputs(result, args.output)
        log.info("dropped %d training identities", len(result["drop"]))
        return result
    result = overlap(args.data_root, max_images=args.max_images, threshold=args.threshold,
                     closest=args.closest, workers=args.workers, embed_lfw_train=args.embed_lfw_train)
    result["command"] = "python tools/identity_overlap.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    js, md = write_outputs(result, args.output)
    log.info("dropped %d training identities; wrote %s and %s (%.0f s)",
             len(result["drop"]), js, md, result["wall_time_s"])
    return result


if __name__ == "__main__":
    main()
