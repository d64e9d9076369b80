"""Face verification with masks on either side (the paper's Sec. 5), without Ray.

What ``jobs.evaluate`` runs, as plain objects and functions:

* :class:`VariantEmbedder` - one image in, one embedding per variant out: decode, find the
  face once (the library's primary face; an optional fallback box where no face is
  found), draw each mask exactly as ``Masker.process`` does (same faces, same
  ``variant_rng(seed, key, name)``: the same seed, key and mask type give the same pixels
  as the ``masktheface`` command and ``jobs.mask_dataset``), align every variant from the
  *unmasked* landmarks, embed; or rows of a masked Parquet data set in, embeddings out.
  Never raises for a bad item: every failure is a row with a status.
* :class:`Embeddings` (K images x V variants x D) with :func:`select` / :func:`merge` and a
  byte form for the cache.
* :func:`compute_metrics` - the template-variant x probe-variant grid of 10-fold metrics,
  the fixed-threshold mode, ROC points, status counts, clustering -> a
  :class:`VerificationMetrics` dict, the format ``metrics.json`` holds and
  :mod:`facenet.report` draws.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypedDict

import numpy as np

from masktheface import dataset_schema as S
from masktheface.spec import BUILTIN_TYPES, draw_rng, parse_entry, variant_rng

if TYPE_CHECKING:  # pragma: no cover
    from masktheface.imageio import DecodedImage
    from masktheface.pipeline import Variant

log = logging.getLogger(__name__)

ORIGINAL = S.ORIGINAL
#: the pseudo-variant "one random mask per image", reusing that mask's embedding
MIXED = "mixed"
#: the variants of the paper's LFW-SM grids
PAPER_VARIANTS = ("original", "surgical_green", "surgical_blue", "N95", "cloth")
#: median HOG box of the primary face on LFW-deepfunneled (250x250), as fractions of the
#: image: landmarks are fitted there when the detector finds nothing (LFW is centred)
LFW_CENTRE_BOX = (0.31, 0.36, 0.72, 0.72)
OK = S.OK
#: statuses of an (image, variant) besides the data set's: no embedding came back / the
#: embedder failed / a data-set row without image bytes
NOT_EMBEDDED, EMBED_FAILED, NO_IMAGE = "not_embedded", "embed_failed", "no_image"


# ------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------

def eval_variant(name: str) -> "Variant":
    """A variant name -> the library Variant: ``original`` (no mask) or one mask entry
    (``N95``, ``surgical_green``, ``cloth-checks``, ``surgical-#0473e2``), named as given."""
    from masktheface.pipeline import Variant

    if name == ORIGINAL:
        return Variant(ORIGINAL)
    return Variant(name, (parse_entry(name),))


def check_variants(names: Sequence[str], known_types: Iterable[str] = BUILTIN_TYPES) -> tuple[str, ...]:
    """ValueError for an empty list, a repeat, ``mixed`` (a flag, not a variant) or a name
    that is neither ``original`` nor a drawable mask entry; returns the names."""
    names = tuple(names)
    if not names:
        raise ValueError("no variants given")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated variants in {','.join(names)}")
    if MIXED in names:
        raise ValueError("'mixed' is not a variant to embed; use --mixed")
    known = set(known_types)
    for n in names:
        if n == ORIGINAL:
            continue
        try:
            spec = parse_entry(n)
        except ValueError as e:
            raise ValueError(f"variant {n!r}: {e}") from None
        if spec.mask_type not in known:
            raise ValueError(f"unknown variant {n!r}: neither 'original' nor a mask type "
                             f"({', '.join(sorted(known))})")
    return names


def mixed_choice(seed: int, keys: Sequence[str], masked: Sequence[str]) -> np.ndarray:
    """int (K,) index into ``masked``: each image's one random mask for ``mixed``, from
    ``draw_rng(seed, key, "mixed")`` (independent of which other images are evaluated)."""
    if not masked:
        raise ValueError("--mixed needs at least one masked variant")
    return np.array([int(draw_rng(seed, k, MIXED).integers(len(masked))) for k in keys], np.int64)


# ------------------------------------------------------------------------------------------
# images -> embeddings
# ------------------------------------------------------------------------------------------

@dataclass
class FaceChoice:
    """The face of one image: ``landmarks`` used to align every variant (68 or 5 points,
    None when the embedder aligns itself), ``faces``/``geos`` to draw masks on, ``method``."""

    landmarks: np.ndarray | None
    faces: list = field(default_factory=list)
    geos: list = field(default_factory=list)
    method: str = ""


def _row(key: str, variant: str, status: str, error: str | None = None, method: str = "") -> dict[str, Any]:
    return {S.KEY: key, S.VARIANT: variant, S.STATUS: status, S.ERROR: error, "method": method,
            "embedding": None}


class VariantEmbedder:
    """Everything heavy loads once (a Masker, an embedder sharing its 68-point predictor).

    ``image_rows(key, data)`` -> one row per variant: ``{key, variant, status, error,
    method, embedding float32 (D,) or None}`` (the first four named as in the contract);
    ``stored_rows(rows)`` does the same for rows
    of a masked data set (the contract's ``key, variant, status, image/aligned,
    landmarks``), embedding the stored images instead of drawing masks."""

    def __init__(self, *, model: str, variants: Sequence[str], seed: int = 0, prealigned: bool = False,
                 flip_sum: bool = False, prealigned_detect: bool = True,
                 fallback_box: Sequence[float] | None = None, masker: Any = None, embedder: Any = None) -> None:
        from facenet.embed import load_embedder
        from masktheface.pipeline import Masker

        self.variants = {v: eval_variant(v) for v in variants}
        self.seed = int(seed)
        self.prealigned = bool(prealigned)
        self.fallback_box = tuple(fallback_box) if fallback_box else None
        self.masker = masker or Masker()
        # the embedder shares the masker's 68-point predictor (loaded once, ~1.5 s)
        self.embedder = embedder or load_embedder(
            model, prealigned=prealigned, prealigned_detect=prealigned_detect, flip_sum=flip_sum,
            analyzer=self.masker.analyzer if model == "dlib" else None)
        self.dim = int(self.embedder.dim)

    # -- faces ---------------------------------------------------------------------------------
    def find_face(self, dec: "DecodedImage") -> FaceChoice:
        """The primary face (``masktheface.primary_face``, found as ``Masker.process`` finds
        faces), else the fallback box; for pre-aligned crops the embedder's layout."""
        from masktheface.geometry import analyse, primary_face

        bgr = dec.bgr
        if self.prealigned:
            return self._aligned_face(bgr)
        faces = self.masker.find_faces(bgr, gray=dec.gray)
        geos = [analyse(f.landmarks, bgr.shape) for f in faces]
        i = primary_face(faces, bgr.shape, geos)
        if i is not None:
            # aligned with the plain fit, as the data-set job cuts its crops (its refits chase
            # the edge of a real mask); the masks go where the checked fit says
            return FaceChoice(faces[i].align_landmarks, faces, geos, "detected")
        if self.fallback_box is not None:
            h, w = bgr.shape[:2]
            faces = self.masker.find_faces(bgr, boxes=[np.asarray(self.fallback_box) * [w, h, w, h]])
            return FaceChoice(faces[0].landmarks, faces, [analyse(f.landmarks, bgr.shape) for f in faces],
                              "centre_box")
        return FaceChoice(None)

    def _aligned_face(self, bgr: np.ndarray) -> FaceChoice:
        import cv2

        from masktheface.geometry import analyse

        lm, method = None, "aligned"
        if hasattr(self.embedder, "aligned_landmarks"):
            lm, method = self.embedder.aligned_landmarks(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        faces = []
        if any(v.specs for v in self.variants.values()):  # only masking needs 68 points
            if lm is not None and np.shape(lm) == (68, 2):
                faces = self.masker.find_faces(bgr, landmarks=[lm])
            elif getattr(self.embedder, "layout", None) is not None:
                h, w = bgr.shape[:2]
                faces = self.masker.find_faces(bgr, boxes=[np.asarray(self.embedder.layout.box) * [w, h, w, h]])
        return FaceChoice(lm, faces, [analyse(f.landmarks, bgr.shape) for f in faces], method)

    # -- one image, every variant ----------------------------------------------------------------
    def render(self, dec: "DecodedImage", face: FaceChoice, key: str, name: str) -> tuple[str, str | None, Any]:
        """(status, error, uint8 (H,W,3) BGR or None) of variant ``name``: the masks drawn as
        ``Masker.process`` draws them (all faces, the variant's own random stream)."""
        v = self.variants[name]
        if not v.specs:
            return OK, None, dec.bgr
        if not face.faces:
            return "no_face", "no face to mask", None
        rng = variant_rng(self.seed, key, v.name)
        res = self.masker.mask(dec.bgr, v.specs, rng, face.faces, draw=v.draw, geos=face.geos)
        if res.status != OK:
            return res.status, res.error, None
        return OK, None, self.masker.match_photo(dec, res.image, res.alpha, rng)

    def image_rows(self, key: str, data: bytes | None, read_error: str | None = None) -> list[dict[str, Any]]:
        """One image (encoded bytes, or why it could not be read) -> a row per variant."""
        from masktheface.imageio import ImageDecodeError, decode_image

        names = list(self.variants)
        if read_error is not None or data is None:
            return [_row(key, v, "read_error", read_error or "not read") for v in names]
        try:
            dec = decode_image(data, self.masker.config.max_pixels)
            face = self.find_face(dec)
            if face.landmarks is None and not self.prealigned:
                return [_row(key, v, "no_face", "no face found") for v in names]
            rows, images = [], []
            for v in names:
                status, error, img = self.render(dec, face, key, v)
                rows.append(_row(key, v, status, error, face.method))
                images.append(img)
            return self._embed(rows, images, [face.landmarks] * len(images))
        except ImageDecodeError as e:
            return [_row(key, v, "too_large" if e.code == "too_large" else "decode_error", str(e)) for v in names]
        except Exception as e:  # noqa: BLE001 - last line of defence: a bug becomes rows, not a dead job
            log.exception("evaluating %s failed", key)
            return [_row(key, v, "error", f"{type(e).__name__}: {e}") for v in names]

    def stored_rows(self, rows: Iterable[Mapping[str, Any]], wanted: set[str] | None = None) -> list[dict[str, Any]]:
        """Rows of a masked data set -> a row per (key, variant) asked for.  The stored
        (unmasked) landmarks align every variant (``align_landmarks``, else ``landmarks``);
        without them the face is detected (on the unmasked row that is reliable; on a masked
        one less so)."""
        from masktheface.imageio import ImageDecodeError, decode_image

        col = S.ALIGNED if self.prealigned else S.IMAGE
        out = []
        for r in rows:
            key, variant = str(r[S.KEY]), str(r[S.VARIANT])
            if variant not in self.variants or (wanted is not None and key not in wanted):
                continue
            status, data = r.get(S.STATUS, OK), r.get(col)
            if status != OK or data is None:
                out.append(_row(key, variant, status if status != OK else NO_IMAGE,
                                r.get(S.ERROR) or f"no {col} in the data set row"))
                continue
            try:
                dec = decode_image(bytes(data), self.masker.config.max_pixels)
            except ImageDecodeError as e:
                out.append(_row(key, variant, "decode_error", str(e)))
                continue
            lm = None if self.prealigned else S.align_landmarks_68(r)
            method = "landmarks" if lm is not None else ("aligned" if self.prealigned else "detected")
            if lm is None and not self.prealigned:
                face = self.find_face(dec)
                lm, method = face.landmarks, face.method
                if lm is None:
                    out.append(_row(key, variant, "no_face", "no landmarks stored and no face found"))
                    continue
            out.extend(self._embed([_row(key, variant, OK, None, method)], [dec.bgr], [lm]))
        return out

    def _embed(self, rows: list[dict[str, Any]], images: list, landmarks: list) -> list[dict[str, Any]]:
        idx = [i for i, im in enumerate(images) if im is not None]
        emb = np.full((len(rows), self.dim), np.nan, np.float32)
        if idx:
            lms = [landmarks[i] for i in idx]
            try:
                emb[idx] = self.embedder.embed([images[i] for i in idx], None if all(x is None for x in lms) else lms)
            except Exception as e:  # noqa: BLE001 - the embedder's failure is these rows' status
                log.exception("embedding failed")
                for i in idx:
                    rows[i][S.STATUS], rows[i][S.ERROR] = EMBED_FAILED, f"{type(e).__name__}: {e}"
        for i, r in enumerate(rows):
            if r[S.STATUS] == OK and not np.isfinite(emb[i]).all():
                r[S.STATUS], r[S.ERROR] = EMBED_FAILED, r.get(S.ERROR) or "embedder returned no vector"
            r["embedding"] = emb[i] if r[S.STATUS] == OK else None
        return rows


# ------------------------------------------------------------------------------------------
# embeddings of many images
# ------------------------------------------------------------------------------------------

@dataclass
class Embeddings:
    """``emb`` float32 (K, V, D), NaN where ``status[k, v] != "ok"``; ``keys`` (K,),
    ``variants`` (V,), ``status``/``error``/``method`` object arrays (K, V)."""

    keys: list[str]
    variants: list[str]
    emb: np.ndarray
    status: np.ndarray
    error: np.ndarray
    method: np.ndarray
    seconds: float = 0.0

    @classmethod
    def empty(cls, keys: Sequence[str], variants: Sequence[str], dim: int = 1) -> "Embeddings":
        """Every entry ``not_embedded``."""
        K, V = len(keys), len(variants)
        return cls(list(keys), list(variants), np.full((K, V, dim), np.nan, np.float32),
                   np.full((K, V), NOT_EMBEDDED, object),
                   np.full((K, V), "no row came back for this image and variant", object),
                   np.full((K, V), "", object))

    def fill(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write rows (key, variant, status, error, method, embedding) in place; rows of
        other keys/variants are ignored.  Returns the rows used."""
        ki = {k: i for i, k in enumerate(self.keys)}
        vi = {v: j for j, v in enumerate(self.variants)}
        n = 0
        for r in rows:
            k, v = ki.get(r[S.KEY]), vi.get(r[S.VARIANT])
            if k is None or v is None:
                continue
            if r.get("embedding") is not None:
                e = np.asarray(r["embedding"], np.float32)
                if self.emb.shape[2] != e.size:
                    self.emb = np.full(self.emb.shape[:2] + (e.size,), np.nan, np.float32)
                self.emb[k, v] = e
            self.status[k, v], self.error[k, v], self.method[k, v] = r[S.STATUS], r.get(S.ERROR), r.get("method", "")
            n += 1
        return n

    def to_bytes(self, fingerprint: str) -> bytes:
        """An ``.npz`` (no pickles) tagged with the settings' fingerprint."""
        buf = io.BytesIO()
        err = np.array(["" if e is None else str(e) for e in self.error.ravel()]).reshape(self.error.shape)
        np.savez_compressed(buf, keys=np.array(self.keys), variants=np.array(self.variants), emb=self.emb,
                            status=self.status.astype(str), error=err, method=self.method.astype(str),
                            fingerprint=np.array(fingerprint), seconds=np.array(self.seconds))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, fingerprint: str) -> "Embeddings | None":
        """The cache back, or None when unreadable or made with other settings."""
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            if str(z["fingerprint"]) != fingerprint:
                log.info("embedding cache is from other settings; embedding again")
                return None
            err = z["error"].astype(object)
            err[err == ""] = None
            return cls(z["keys"].tolist(), z["variants"].tolist(), z["emb"], z["status"].astype(object), err,
                       z["method"].astype(object), float(z["seconds"]))
        except Exception:  # noqa: BLE001 - a broken cache is only a cache
            log.warning("embedding cache unreadable; embedding again", exc_info=True)
            return None


def select(E: Embeddings, keys: Sequence[str], variants: Sequence[str]) -> Embeddings:
    """The (keys x variants) part of ``E``; absent entries get status ``not_embedded``."""
    out = Embeddings.empty(keys, variants, E.emb.shape[2])
    out.error[:] = None
    out.seconds = E.seconds
    ki = {k: i for i, k in enumerate(E.keys)}
    vi = {v: j for j, v in enumerate(E.variants)}
    rows = np.array([ki.get(k, -1) for k in keys], np.int64)
    have = rows >= 0
    for j, v in enumerate(variants):
        if v in vi:
            for dst, src in ((out.emb, E.emb), (out.status, E.status), (out.error, E.error), (out.method, E.method)):
                dst[have, j] = src[rows[have], vi[v]]
    return out


def merge(a: Embeddings, b: Embeddings) -> Embeddings:
    """Union of two embedding sets (``b`` wins where both have an entry)."""
    keys = list(dict.fromkeys([*a.keys, *b.keys]))
    variants = list(dict.fromkeys([*a.variants, *b.variants]))
    out, nb = select(a, keys, variants), select(b, keys, variants)
    have = nb.status != NOT_EMBEDDED
    for dst, src in ((out.emb, nb.emb), (out.status, nb.status), (out.error, nb.error), (out.method, nb.method)):
        dst[have] = src[have]
    out.seconds = a.seconds + b.seconds
    return out


# ------------------------------------------------------------------------------------------
# the metrics format
# ------------------------------------------------------------------------------------------

class VerificationMetrics(TypedDict, total=False):
    """What ``metrics.json`` holds (strict JSON: NaN as null) and :mod:`facenet.report`
    draws.  Grids are V x V lists, rows the template variant, columns the probe variant,
    in the order of ``variants``; ``cells[t][p]`` holds the figures of one grid cell."""

    config: dict[str, Any]          # the run's settings
    model: str                      # the model's display name
    far_targets: list[float]        # FAR = FP/(FP+TN) targets
    variants: list[str]             # grid order; the first is the baseline (original)
    n_pairs: int
    n_same: int
    n_images: int
    folds_used: list[int]           # 0-based
    grids: dict[str, list[list[float | None]]]   # see grid_keys()
    cells: dict[str, dict[str, dict[str, Any]]]  # cell_keys() of each (template, probe)
    baseline: dict[str, Any]        # every figure of facenet.metrics.evaluate for base|base
    fixed_threshold: dict[str, Any]  # {"threshold", "chosen_on", "cells": {t: {p: {...}}}}
    roc: dict[str, dict[str, list[float]]]       # "template|probe" -> {"far": [...], "tpr": [...]}
    status_counts: dict[str, dict[str, int]]     # variant -> status -> images
    alignment_methods: dict[str, int]
    failures: list[dict[str, Any]]  # the first 500 (key, variant, status, error)
    n_failures: int
    embed_seconds: float
    clustering: dict[str, Any]      # only with clustering: n_clusters, n_identities, purity, nmi, ...
    figures: list[str]              # PNG names written beside metrics.json
    seconds: float


#: the per-cell figures kept in ``cells`` besides those per FAR target (cell_keys)
CELL_KEYS = ("accuracy", "accuracy_std", "accuracy_all", "threshold", "auc", "eer", "n_pairs", "n_valid",
             "n_missing", "threshold_fit", "accuracy_fit")


def far_labels(far_targets: Iterable[float]) -> list[str]:
    """FAR targets as they appear in keys: ``0.001`` -> ``"0.001"``."""
    from facenet.metrics import target_label

    return [target_label(float(t)) for t in far_targets]


def cell_keys(far_targets: Iterable[float]) -> list[str]:
    """Every key of a ``cells[t][p]`` dict."""
    keys = list(CELL_KEYS)
    for lab in far_labels(far_targets):
        keys += [f"tpr@far={lab}", f"tpr@far={lab}_std", f"acc@far={lab}", f"acc@far={lab}_std",
                 f"far@far={lab}", f"threshold@far={lab}", f"fdr_paper@far={lab}",
                 f"tpr@fdr_paper={lab}", f"acc@fdr_paper={lab}"]
    return keys


def grid_keys(far_targets: Iterable[float]) -> list[str]:
    """Every key of ``grids``: accuracy, accuracy_all, auc, n_missing, the fixed-threshold
    accuracy/tpr/far, and per FAR target tpr@far=, acc@far=, tpr@fdr_paper=."""
    keys = ["accuracy", "accuracy_all", "auc", "n_missing", "fixed_threshold_accuracy",
            "fixed_threshold_tpr", "fixed_threshold_far"]
    for lab in far_labels(far_targets):
        keys += [f"tpr@far={lab}", f"acc@far={lab}", f"tpr@fdr_paper={lab}"]
    return keys


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------

def variant_matrix(E: Embeddings, mixed: bool = False, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    """Names -> float32 (K, D) embeddings, with ``mixed`` (one masked variant per image,
    :func:`mixed_choice`) appended when asked for."""
    names = list(E.variants)
    mats = {v: E.emb[:, j] for j, v in enumerate(E.variants)}
    if mixed:
        masked = [v for v in E.variants if v != ORIGINAL]
        cols = np.array([E.variants.index(masked[c]) for c in mixed_choice(seed, E.keys, masked)], np.int64)
        mats[MIXED] = E.emb[np.arange(len(E.keys)), cols]
        names.append(MIXED)
    return names, mats


def _roc_points(dist: np.ndarray, issame: np.ndarray, max_points: int = 300) -> dict[str, list[float]]:
    from facenet.metrics import roc_sweep

    s = roc_sweep(dist, issame)
    far, tpr = s.far, s.tpr
    if far.size > max_points:  # keep the low-FAR end dense: sample uniformly in log FAR
        lo = max(far[far > 0].min(initial=1e-4), 1e-5)
        pos = np.unique(np.r_[0, np.searchsorted(far, np.geomspace(lo, 1, max_points)), far.size - 1])
        pos = pos[pos < far.size]
        far, tpr = far[pos], tpr[pos]
    return {"far": np.round(far, 6).tolist(), "tpr": np.round(tpr, 6).tolist()}


def _grids(names: Sequence[str], cells: Mapping, fixed: Mapping, far: Sequence[float]) -> dict[str, list]:
    def grid(metric: str, src: Mapping) -> list[list[float]]:
        return [[float(src[t][p].get(metric, np.nan)) for p in names] for t in names]

    out = {}
    for key in grid_keys(far):
        if key.startswith("fixed_threshold_"):
            out[key] = grid(key[len("fixed_threshold_"):], fixed)
        else:
            out[key] = grid(key, cells)
    return out


def _statuses(E: Embeddings) -> tuple[dict, dict, list]:
    counts: dict[str, dict[str, int]] = {}
    for j, v in enumerate(E.variants):
        u, c = np.unique(E.status[:, j].astype(str), return_counts=True)
        counts[v] = {str(a): int(b) for a, b in zip(u, c)}
    u, c = np.unique(E.method[:, 0].astype(str), return_counts=True)
    methods = {str(a) or "none": int(b) for a, b in zip(u, c)}
    failures = [{S.KEY: E.keys[k], S.VARIANT: E.variants[j], S.STATUS: str(E.status[k, j]), S.ERROR: E.error[k, j]}
                for k, j in zip(*np.nonzero(E.status != OK))]
    return counts, methods, failures


def compute_metrics(pairs: Sequence[Any], issame: np.ndarray, folds: np.ndarray, E: Embeddings, *,
                    far: Sequence[float] = (0.001,), mixed: bool = False, seed: int = 0, cluster: bool = False,
                    model: str = "model", config: Any = None) -> tuple[VerificationMetrics, dict | None]:
    """Pairs (``left``/``right`` keys of ``E``), bool (P,) ``issame``, int (P,) ``folds``
    -> (strict-JSON :class:`VerificationMetrics`, cluster arrays for the picture or None).
    The fixed threshold and the clustering use the first variant's own grid cell."""
    from facenet.metrics import evaluate, evaluate_at_threshold, json_safe, squared_l2

    index = {k: i for i, k in enumerate(E.keys)}
    li = np.array([index[p.left] for p in pairs], np.int64)
    ri = np.array([index[p.right] for p in pairs], np.int64)
    names, mats = variant_matrix(E, mixed, seed)
    dists = {(t, p): squared_l2(mats[t][li], mats[p][ri]) for t in names for p in names}
    cells = {t: {p: evaluate(dists[(t, p)], issame, folds, far_targets=far) for p in names} for t in names}
    base = ORIGINAL if ORIGINAL in names else names[0]
    thr = cells[base][base]["threshold_fit"]
    fixed = {t: {p: evaluate_at_threshold(dists[(t, p)], issame, thr) for p in names} for t in names}
    roc = {f"{base}|{p}": _roc_points(dists[(base, p)], issame) for p in names}
    roc.update({f"{p}|{p}": _roc_points(dists[(p, p)], issame) for p in names if p != base})
    counts, methods, failures = _statuses(E)
    keep, fixed_keep = cell_keys(far), ("accuracy", "accuracy_all", "tpr", "far", "fdr_paper", "n_missing")
    out: VerificationMetrics = {
        "config": asdict(config) if is_dataclass(config) else dict(config or {}),
        "model": model, "far_targets": list(far), "variants": names, "n_pairs": int(len(pairs)),
        "n_same": int(np.sum(issame)), "n_images": len(E.keys), "folds_used": sorted({int(f) for f in folds}),
        "grids": _grids(names, cells, fixed, far),
        "cells": {t: {p: {k: cells[t][p][k] for k in keep if k in cells[t][p]} for p in names} for t in names},
        "baseline": dict(cells[base][base]),
        "fixed_threshold": {"threshold": thr, "chosen_on": f"{base}|{base}",
                            "cells": {t: {p: {k: fixed[t][p][k] for k in fixed_keep} for p in names} for t in names}},
        "roc": roc, "status_counts": counts, "alignment_methods": methods,
        "failures": failures[:500], "n_failures": len(failures), "embed_seconds": round(E.seconds, 2),
    }
    extras = None
    if cluster:
        from facenet.cluster import cluster_embeddings

        identities = [k.split("/")[0] for k in E.keys]
        cl = cluster_embeddings(mats[base], identities, thr)
        out["clustering"] = {**{k: v for k, v in cl.items() if k != "labels"}, "variant": base,
                             "linkage": "average", "distance": "squared_l2",
                             "threshold_from": f"threshold_fit of {base}|{base}"}
        extras = {"labels": cl["labels"], "identities": identities, "embeddings": mats[base]}
    return json_safe(out), extras


def model_label(model: str, label: str | None = None) -> str:
    """The model's display name: ``label``, or dlib's ResNet, or the checkpoint's file name."""
    if label:
        return label
    return "dlib ResNet (no-mask network)" if model == "dlib" else os.path.basename(model.rstrip("/"))
