"""Score a face embedder on verification pairs, with masks on either side (the paper's Sec. 5).

    python -m jobs.evaluate --pairs ../shared/data/lfw/pairs.txt \\
        --images ../shared/data/lfw/lfw-deepfunneled --model dlib --output out/lfw_sm

Pipeline::

    pairs file -> distinct images -> Ray Data actor pool (per image: read, decode, find the
    face once, draw every mask variant with masktheface, align every variant from the
    UNMASKED landmarks, embed) -> one row per (image, variant) with status
    -> driver: distances for template variant x probe variant -> 10-fold metrics ->
    metrics.json, heatmaps, ROC, bar chart, clusters, report.md/html

Each distinct (image, variant) is embedded exactly once.  An image where nothing works (file
missing, undecodable, no face, mask failed, embedding failed) gets a status row; pairs that
touch it are *missing*: metrics are computed over valid pairs and ``accuracy_all`` counts
missing pairs as errors (the reference FaceNet code skips them silently).

``--images`` is a folder/prefix (local or s3://) holding ``Name/Name_0001.jpg`` files, or the
Parquet written by ``jobs.mask_dataset`` (a ``.parquet`` file or a folder of them, rows
``key, variant, image, aligned, status, landmarks``): then the masked images come from that
data set instead of being drawn here.  ``--prealigned`` treats images as aligned crops
(MFR2's 160x160): no detection, see :class:`facenet.embed.AlignedLayout`.

Variants: ``original`` is the image as it is; any other name is a masktheface mask code
entry (``surgical_green``, ``N95``, ``cloth``, ``cloth-checks``...).  ``--mixed`` adds the
pseudo-variant ``mixed``: for each image one of the masked variants, drawn per image from
the seed (the paper's "random mask" set), reusing that variant's embedding.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jobs import common

log = logging.getLogger("jobs.evaluate")

ORIGINAL = "original"
MIXED = "mixed"
PAPER_VARIANTS = ("original", "surgical_green", "surgical_blue", "N95", "cloth")
#: median HOG box of the primary face on LFW-deepfunneled (250x250), as fractions of the
#: image: landmarks are fitted there when the detector finds nothing (LFW is centred)
LFW_CENTRE_BOX = (0.31, 0.36, 0.72, 0.72)
OK = "ok"


@dataclass(frozen=True)
class EvaluateConfig:
    """Verification metrics of a face embedder on a pairs file, masks on either side."""

    pairs: str = field(metadata={"help": "pairs file (LFW pairs.txt layout, or MFR2's headerless one)"})
    images: str = field(metadata={"help": "image root folder/prefix (local or s3://), or the Parquet of jobs.mask_dataset"})
    output: str = field(metadata={"help": "output folder (local or s3://)"})
    model: str = field(default="dlib", metadata={"help": "'dlib' (dlib ResNet, no-mask network) or a FaceNet checkpoint"})
    far: tuple[float, ...] = field(default=(0.001,), metadata={"help": "FAR targets (FP/(FP+TN))"})
    variants: str = field(default=",".join(PAPER_VARIANTS), metadata={"help": "comma-separated variants: original and/or mask types"})
    mixed: bool = field(default=False, metadata={"help": "add the 'mixed' pseudo-variant (one random mask per image)"})
    prealigned: bool = field(default=False, metadata={"help": "images are aligned face crops (MFR2): landmarks fitted in a fixed box"})
    prealigned_detect: bool = field(default=True, metadata={"help": "with --prealigned, let the detector try first on each crop"})
    limit_pairs: int | None = field(default=None, metadata={"help": "use only N pairs, evenly spaced over the file (after --folds)"})
    folds: tuple[int, ...] = field(default=(), metadata={"help": "use only these folds (0-based, whole folds)"})
    seed: int = field(default=0, metadata={"help": "run seed for mask drawing and the mixed variant"})
    flip_sum: bool = field(default=False, metadata={"help": "embed mirrored faces too and sum"})
    fallback_box: str = field(
        default=",".join(map(str, LFW_CENTRE_BOX)), metadata={"help": "box x0,y0,x1,y1 (fractions of the image) where landmarks are fitted when no face is detected; 'none' = report no_face"})
    cluster: bool = field(default=False, metadata={"help": "cluster the original-variant embeddings (paper Fig. 5)"})
    compare: str | None = field(default=None, metadata={"help": "metrics.json of another model for the bar chart (paper Fig. 4)"})
    label: str | None = field(default=None, metadata={"help": "name of this model in plots (default: the model)"})
    title: str = field(default="", metadata={"help": "report title"})
    actors: int = field(default=0, metadata={"help": "embedding actors (0 = one per GPU, else one per CPU)"})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs reserved per actor"})
    batch_size: int = field(default=8, metadata={"help": "images per actor batch"})
    max_error_rate: float = field(default=0.5, metadata={"help": "fail when more (image, variant)s than this fraction have no embedding"})
    reuse_embeddings: bool = field(default=True, metadata={"help": "reuse OUTPUT/embeddings.npz from an identical earlier run"})
    address: str | None = field(default=None, metadata={"help": "Ray address (default: $RAY_ADDRESS or a local Ray)"})
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs for a local Ray"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})

    @property
    def variant_list(self) -> tuple[str, ...]:
        names = tuple(v.strip() for v in self.variants.split(",") if v.strip())
        if not names:
            raise ValueError("no variants given")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variants in {self.variants!r}")
        if MIXED in names:
            raise ValueError("'mixed' is not a variant to embed; use --mixed")
        return names

    @property
    def fallback(self) -> tuple[float, ...] | None:
        """--fallback-box parsed: four fractions, or None."""
        text = (self.fallback_box or "").strip().lower()
        if text in ("", "none", "null"):
            return None
        box = tuple(float(v) for v in text.split(","))
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(f"--fallback-box wants x0,y0,x1,y1 fractions with x0<x1, y0<y1, got {self.fallback_box!r}")
        return box

    @property
    def masked_variants(self) -> tuple[str, ...]:
        return tuple(v for v in self.variant_list if v != ORIGINAL)


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------

def is_parquet_source(uri: str) -> bool:
    """True when ``uri`` is a .parquet file or a folder/prefix that holds .parquet files."""
    if uri.rstrip("/").lower().endswith(".parquet"):
        return True
    try:
        return bool(common.list_files(uri, [".parquet"]))
    except (FileNotFoundError, OSError):
        return False


def load_pairs(cfg: EvaluateConfig):
    """-> (pairs, issame bool (P,), folds int (P,)) after --folds / --limit-pairs."""
    from facenet.pairs import pairs_arrays, read_pairs

    pairs = read_pairs(cfg.pairs)
    if cfg.folds:
        keep = set(int(f) for f in cfg.folds)
        pairs = [p for p in pairs if p.fold in keep]
    if cfg.limit_pairs is not None and cfg.limit_pairs < len(pairs):
        # evenly spaced over the file, so a small subset still spans every fold and both
        # classes (LFW lists 300 same pairs before 300 different ones in each fold)
        idx = np.unique(np.linspace(0, len(pairs) - 1, max(int(cfg.limit_pairs), 1)).round().astype(int))
        pairs = [pairs[i] for i in idx]
    if not pairs:
        raise ValueError(f"no pairs left from {cfg.pairs} (folds={cfg.folds}, limit={cfg.limit_pairs})")
    issame, folds = pairs_arrays(pairs)
    return pairs, issame, folds


def variant_spec(name: str):
    """Variant name -> MaskSpec (None for the original)."""
    if name == ORIGINAL:
        return None
    from masktheface.spec import parse_entry
    return parse_entry(name)


def variant_rng(seed: int, key: str, name: str) -> np.random.Generator:
    """Mask randomness for (image, variant): independent of which other variants are asked for."""
    from masktheface.spec import item_rng
    return item_rng(seed, key, zlib.crc32(name.encode("utf-8")))


def mixed_choice(seed: int, keys: Sequence[str], masked: Sequence[str]) -> np.ndarray:
    """int (K,) index into ``masked``: the one random mask of each image for 'mixed'."""
    from masktheface.spec import item_rng
    if not masked:
        raise ValueError("--mixed needs at least one masked variant")
    return np.array([int(item_rng(seed, k, 0x6D6978).integers(len(masked))) for k in keys], np.int64)


# ------------------------------------------------------------------------------------------
# The actor: everything heavy loads once
# ------------------------------------------------------------------------------------------

def _schema(dim: int):
    import pyarrow as pa
    return pa.schema([("key", pa.string()), ("variant", pa.string()), ("status", pa.string()),
                      ("error", pa.string()), ("method", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim))])


def _parse_landmarks(value: Any) -> np.ndarray | None:
    """A Parquet ``landmarks`` cell (flat 136 floats, (68,2), or a list of faces) -> (68,2) of
    the largest face, or None."""
    if value is None:
        return None
    try:
        a = np.asarray(value, np.float32)
    except (ValueError, TypeError):  # nested lists come back from Arrow as object arrays
        try:
            a = np.concatenate([np.asarray(v, np.float32).ravel() for v in value])
        except Exception:
            try:
                a = np.concatenate([np.asarray(x, np.float32).ravel() for v in value for x in v])
            except Exception:
                return None
    if a.size == 0 or a.size % 136:
        return None
    faces = a.reshape(-1, 68, 2)
    spans = [(f[:, 0].max() - f[:, 0].min()) * (f[:, 1].max() - f[:, 1].min()) for f in faces]
    return faces[int(np.argmax(spans))]


class EmbedActor:
    """Ray Data callable class: batch of image keys (folder mode) or Parquet rows -> one row per
    (image, variant) with status and embedding.  Loads the masker and the embedder once."""

    def __init__(self, *, model: str, images: str, variants: Sequence[str], seed: int,
                 prealigned: bool, flip_sum: bool, prealigned_detect: bool = True, fallback_box: Sequence[float] | None,
                 parquet: bool = False, wanted: Sequence[str] | None = None) -> None:
        import cv2

        from facenet.embed import load_embedder
        from masktheface.pipeline import Masker, MaskerConfig

        cv2.setNumThreads(1)  # one actor per core; OpenCV's own threads would oversubscribe
        common.setup_logging("INFO")
        self.images = images
        self.variants = tuple(variants)
        self.specs = {v: variant_spec(v) for v in self.variants}
        self.seed = int(seed)
        self.prealigned = bool(prealigned)
        self.fallback_box = tuple(fallback_box) if fallback_box else None
        self.parquet = parquet
        self.wanted = set(wanted) if wanted is not None else None
        self.masker = Masker(MaskerConfig())
        # the embedder shares the masker's 68-point predictor (loaded once, ~1.5 s)
        self.embedder = load_embedder(model, prealigned=prealigned, prealigned_detect=prealigned_detect,
                                      flip_sum=flip_sum,
                                      analyzer=self.masker.analyzer if model == "dlib" else None)
        self.dim = int(self.embedder.dim)
        self.schema = _schema(self.dim)

    # -- faces -------------------------------------------------------------------------------
    def _face(self, bgr: np.ndarray):
        """-> (landmarks (68,2) or (5,2) used for alignment, faces to mask, method) or Nones."""
        from facenet.embed import primary_face

        if self.prealigned:
            import cv2
            if hasattr(self.embedder, "aligned_landmarks"):
                lm, method = self.embedder.aligned_landmarks(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            else:
                lm, method = None, "aligned"
            faces = []
            if any(spec is not None for spec in self.specs.values()):  # only masking needs 68 points
                if lm is not None and np.shape(lm) == (68, 2):
                    faces = self.masker.find_faces(bgr, landmarks=[lm])
                elif getattr(self.embedder, "layout", None) is not None:
                    h, w = bgr.shape[:2]
                    faces = self.masker.find_faces(bgr, boxes=[np.asarray(self.embedder.layout.box) * [w, h, w, h]])
            return lm, faces, method
        faces = self.masker.find_faces(bgr)
        if faces:
            f = faces[primary_face([x.box for x in faces], bgr.shape)]
            return f.landmarks, faces, "detected"
        if self.fallback_box is not None:
            h, w = bgr.shape[:2]
            box = np.asarray(self.fallback_box) * np.array([w, h, w, h])
            faces = self.masker.find_faces(bgr, boxes=[box])
            return faces[0].landmarks, faces, "centre_box"
        return None, [], ""

    # -- one image, every variant ------------------------------------------------------------------
    def _image_rows(self, key: str, data: bytes | None, read_error: str | None) -> list[dict]:
        from masktheface.imageio import ImageDecodeError, decode_image

        def fail(status: str, error: str, variants=self.variants, method: str = "") -> list[dict]:
            return [dict(key=key, variant=v, status=status, error=error, method=method, embedding=None)
                    for v in variants]

        if read_error is not None:
            return fail("read_error", read_error)
        try:
            bgr = decode_image(data).bgr
        except ImageDecodeError as e:
            return fail("decode_error", str(e))
        try:
            lm, faces, method = self._face(bgr)
        except Exception as e:
            log.exception("face finding failed on %s", key)
            return fail("error", f"{type(e).__name__}: {e}")
        if lm is None and not self.prealigned:
            return fail("no_face", "no face found")
        rows, images = [], []
        for v in self.variants:
            spec = self.specs[v]
            if spec is None:
                rows.append(dict(key=key, variant=v, status=OK, error=None, method=method))
                images.append(bgr)
                continue
            if not faces:
                rows.append(dict(key=key, variant=v, status="no_face", error="no face to mask", method=method))
                images.append(None)
                continue
            res = self.masker.mask(bgr, spec, variant_rng(self.seed, key, v), faces=faces)
            if res.status != OK:
                rows.append(dict(key=key, variant=v, status=res.status, error=res.error, method=method))
                images.append(None)
            else:
                rows.append(dict(key=key, variant=v, status=OK, error=None, method=method))
                images.append(res.image)
        return self._embed(rows, images, [lm] * len(images))

    def _embed(self, rows: list[dict], images: list, landmarks: list) -> list[dict]:
        idx = [i for i, im in enumerate(images) if im is not None]
        emb = np.full((len(rows), self.dim), np.nan, np.float32)
        if idx:
            try:
                lms = [landmarks[i] for i in idx]
                emb[idx] = self.embedder.embed([images[i] for i in idx],
                                               None if all(x is None for x in lms) else lms)
            except Exception as e:
                log.exception("embedding failed")
                for i in idx:
                    rows[i].update(status="embed_failed", error=f"{type(e).__name__}: {e}")
        for i, r in enumerate(rows):
            if r["status"] == OK and not np.isfinite(emb[i]).all():
                r.update(status="embed_failed", error=r.get("error") or "embedder returned no vector")
            r["embedding"] = emb[i] if r["status"] == OK else None
        return rows

    # -- Parquet rows (masked images made by jobs.mask_dataset) --------------------------------------
    def _parquet_rows(self, batch: dict) -> list[dict]:
        from masktheface.imageio import ImageDecodeError, decode_image

        out = []
        n = len(batch["key"])
        col = "aligned" if self.prealigned else "image"
        for i in range(n):
            key, variant = str(batch["key"][i]), str(batch["variant"][i])
            if variant not in self.variants or (self.wanted is not None and key not in self.wanted):
                continue
            status = str(batch["status"][i]) if "status" in batch else OK
            data = batch[col][i] if col in batch else None
            if status != OK or data is None:
                out.append(dict(key=key, variant=variant, status=status if status != OK else "no_image",
                                error="no image in the data set row", method="", embedding=None))
                continue
            try:
                bgr = decode_image(bytes(data)).bgr
            except ImageDecodeError as e:
                out.append(dict(key=key, variant=variant, status="decode_error", error=str(e), method="", embedding=None))
                continue
            lm = None if self.prealigned else _parse_landmarks(batch["landmarks"][i] if "landmarks" in batch else None)
            method = "landmarks" if lm is not None else ("aligned" if self.prealigned else "detected")
            row = dict(key=key, variant=variant, status=OK, error=None, method=method)
            if lm is None and not self.prealigned:
                lm, _, method = self._face(bgr)  # no stored landmarks: detect (unmasked rows only are reliable)
                row["method"] = method
                if lm is None:
                    row.update(status="no_face", error="no landmarks stored and no face found")
                    out.append({**row, "embedding": None})
                    continue
            out.extend(self._embed([row], [bgr], [lm]))
        return out

    def __call__(self, batch: dict):
        import pyarrow as pa

        rows: list[dict] = []
        if self.parquet:
            rows = self._parquet_rows(batch)
        else:
            for key in batch["key"]:
                key = str(key)
                data, err = None, None
                try:
                    data = common.read_bytes(common.join_uri(self.images, key))
                except Exception as e:  # missing file, permission, network: a row, not a dead job
                    err = f"{type(e).__name__}: {e}"
                try:
                    rows.extend(self._image_rows(key, data, err))
                except Exception as e:  # last line of defence
                    log.exception("evaluating %s failed", key)
                    rows.extend(dict(key=key, variant=v, status="error", error=f"{type(e).__name__}: {e}",
                                     method="", embedding=None) for v in self.variants)
        cols = {name: [r.get(name) for r in rows] for name in ("key", "variant", "status", "error", "method")}
        cols["embedding"] = [None if r["embedding"] is None else np.asarray(r["embedding"], np.float32)
                             for r in rows]
        return pa.table(cols, schema=self.schema)


# ------------------------------------------------------------------------------------------
# Embedding with Ray Data
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

    def ok(self) -> np.ndarray:
        return self.status == OK

    def save(self, path: str, fingerprint: str) -> None:
        import io
        buf = io.BytesIO()
        np.savez_compressed(buf, keys=np.array(self.keys), variants=np.array(self.variants), emb=self.emb,
                            status=self.status.astype(str), error=np.where(self.error == None, "", self.error).astype(str),  # noqa: E711
                            method=self.method.astype(str), fingerprint=np.array(fingerprint),
                            seconds=np.array(self.seconds))
        common.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str, fingerprint: str) -> "Embeddings | None":
        import io
        try:
            z = np.load(io.BytesIO(common.read_bytes(path)), allow_pickle=False)
        except Exception:
            return None
        if str(z["fingerprint"]) != fingerprint:
            log.info("%s is from a different run configuration; embedding again", path)
            return None
        err = z["error"].astype(object)
        err[err == ""] = None
        return cls(z["keys"].tolist(), z["variants"].tolist(), z["emb"], z["status"].astype(object), err,
                   z["method"].astype(object), float(z["seconds"]))


def fingerprint(cfg: EvaluateConfig) -> str:
    """What determines an embedding besides its image: source, model, seed, alignment
    options.  Variants and keys are not part of it: the cache is per (image, variant)."""
    h = hashlib.sha256()
    parts = [cfg.images, cfg.model, cfg.seed, cfg.prealigned, cfg.flip_sum, cfg.fallback]
    if cfg.prealigned:
        parts.append(cfg.prealigned_detect)
    for part in parts:
        h.update(repr(part).encode("utf-8"))
    return h.hexdigest()


def select(E: Embeddings, keys: Sequence[str], variants: Sequence[str]) -> Embeddings:
    """The (keys x variants) part of ``E``; absent entries get status "not_embedded"."""
    K, V = len(keys), len(variants)
    ki = {k: i for i, k in enumerate(E.keys)}
    vi = {v: j for j, v in enumerate(E.variants)}
    out = Embeddings(list(keys), list(variants), np.full((K, V, E.emb.shape[2]), np.nan, np.float32),
                     np.full((K, V), "not_embedded", object), np.full((K, V), None, object),
                     np.full((K, V), "", object), E.seconds)
    rows = np.array([ki.get(k, -1) for k in keys])
    for j, v in enumerate(variants):
        if v not in vi:
            continue
        have = rows >= 0
        out.emb[have, j] = E.emb[rows[have], vi[v]]
        out.status[have, j] = E.status[rows[have], vi[v]]
        out.error[have, j] = E.error[rows[have], vi[v]]
        out.method[have, j] = E.method[rows[have], vi[v]]
    return out


def merge(a: Embeddings, b: Embeddings) -> Embeddings:
    """Union of two embedding sets (``b`` wins where both have an entry)."""
    keys = list(dict.fromkeys([*a.keys, *b.keys]))
    variants = list(dict.fromkeys([*a.variants, *b.variants]))
    out = select(a, keys, variants)
    nb = select(b, keys, variants)
    have = nb.status != "not_embedded"
    out.emb[have], out.status[have], out.error[have], out.method[have] = (
        nb.emb[have], nb.status[have], nb.error[have], nb.method[have])
    out.seconds = a.seconds + b.seconds
    return out


def embed_images(cfg: EvaluateConfig, keys: Sequence[str]) -> Embeddings:
    """Embed every (image, variant) once on a Ray Data actor pool; statuses for all."""
    import ray
    import ray.data

    info = common.init_ray(cfg.address, cfg.num_cpus)
    keys = list(keys)
    variants = list(cfg.variant_list)
    parquet = is_parquet_source(cfg.images)
    use_gpu = info.gpus > 0 and _model_uses_gpu(cfg.model)
    if cfg.actors:
        n_actors = cfg.actors
    elif use_gpu:
        n_actors = int(info.gpus)
    else:
        # Parquet is read by Ray Data read tasks that need a CPU of their own: a pool holding
        # every CPU deadlocks (measured: the job hangs).  from_items has no read tasks.
        spare = 1.0 if parquet else 0.0
        n_actors = max(1, int((info.cpus - spare) // max(cfg.cpus_per_actor, 1e-3)))
    log.info("embedding %d images x %d variants (%s) with %d actor(s)%s, source %s", len(keys), len(variants),
             ",".join(variants), n_actors, " on GPU" if use_gpu else "", "parquet" if parquet else "folder")
    ctor = dict(model=cfg.model, images=cfg.images, variants=variants, seed=cfg.seed, prealigned=cfg.prealigned,
                flip_sum=cfg.flip_sum, prealigned_detect=cfg.prealigned_detect, fallback_box=cfg.fallback,
                parquet=parquet)
    t0 = time.perf_counter()
    if parquet:
        fs, path = common.filesystem_for(cfg.images)
        ds = ray.data.read_parquet(path, filesystem=fs)
        ctor["wanted"] = keys
        total = None
    else:
        ds = ray.data.from_items([{"key": k} for k in keys],
                                 override_num_blocks=max(1, min(len(keys) // max(cfg.batch_size, 1), 400)))
        total = len(keys) * len(variants)
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=ctor, batch_size=cfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cfg.cpus_per_actor,
                        num_gpus=1 if use_gpu else 0,
                        runtime_env=common.worker_runtime_env() or None)
    progress = common.ProgressLogger(total=total, what="embeddings", every_s=30.0, logger=log)
    index = {k: i for i, k in enumerate(keys)}
    vindex = {v: j for j, v in enumerate(variants)}
    K, V = len(keys), len(variants)
    emb = None
    status = np.full((K, V), "not_embedded", object)
    error = np.full((K, V), "no row came back for this image and variant", object)
    method = np.full((K, V), "", object)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if emb is None:
            dim = batch.schema.field("embedding").type.list_size
            emb = np.full((K, V, dim), np.nan, np.float32)
        d = batch.to_pydict()
        for i in range(batch.num_rows):
            k, v = index.get(d["key"][i]), vindex.get(d["variant"][i])
            if k is None or v is None:
                continue
            status[k, v], error[k, v], method[k, v] = d["status"][i], d["error"][i], d["method"][i]
            if d["embedding"][i] is not None:
                emb[k, v] = d["embedding"][i]
        progress.update(batch.num_rows)
    progress.finish()
    if emb is None:
        emb = np.full((K, V, 1), np.nan, np.float32)
    return Embeddings(keys, variants, emb, status, error, method, time.perf_counter() - t0)


def _model_uses_gpu(model: str) -> bool:
    """A GPU helps a torch model; dlib only when built with CUDA (dlib-bin is not)."""
    if model == "dlib":
        try:
            import dlib
            return bool(getattr(dlib, "DLIB_USE_CUDA", False))
        except ImportError:
            return False
    return True


# ------------------------------------------------------------------------------------------
# Metrics on the driver
# ------------------------------------------------------------------------------------------

GRID_KEYS = ("accuracy", "accuracy_std", "accuracy_all", "threshold", "auc", "eer", "n_pairs", "n_valid",
             "n_missing", "threshold_fit", "accuracy_fit")


def _cell_summary(res: dict, far_labels: Sequence[str]) -> dict:
    keep = list(GRID_KEYS)
    for lab in far_labels:
        keep += [f"tpr@far={lab}", f"tpr@far={lab}_std", f"acc@far={lab}", f"acc@far={lab}_std",
                 f"far@far={lab}", f"threshold@far={lab}", f"fdr_paper@far={lab}",
                 f"tpr@fdr_paper={lab}", f"acc@fdr_paper={lab}"]
    return {k: res[k] for k in keep if k in res}


def _roc_points(dist: np.ndarray, issame: np.ndarray, max_points: int = 300) -> dict:
    from facenet.metrics import roc_sweep
    s = roc_sweep(dist, issame)
    far, tpr = s.far, s.tpr
    if far.size > max_points:  # keep the low-FAR end dense: sample uniformly in log FAR
        pos = np.unique(np.r_[0, np.searchsorted(far, np.geomspace(max(far[far > 0].min(initial=1e-4), 1e-5), 1, max_points)), far.size - 1])
        pos = pos[pos < far.size]
        far, tpr = far[pos], tpr[pos]
    return {"far": np.round(far, 6).tolist(), "tpr": np.round(tpr, 6).tolist()}


def variant_matrix(E: Embeddings, cfg: EvaluateConfig) -> tuple[list[str], dict[str, np.ndarray]]:
    """Names -> float32 (K, D) embeddings, including 'mixed' when asked for."""
    names = list(E.variants)
    mats = {v: E.emb[:, j] for j, v in enumerate(E.variants)}
    if cfg.mixed:
        masked = [v for v in E.variants if v != ORIGINAL]
        choice = mixed_choice(cfg.seed, E.keys, masked)
        cols = np.array([E.variants.index(masked[c]) for c in choice])
        mats[MIXED] = E.emb[np.arange(len(E.keys)), cols]
        names.append(MIXED)
    return names, mats


def compute_metrics(cfg: EvaluateConfig, pairs, issame: np.ndarray, folds: np.ndarray,
                    E: Embeddings) -> tuple[dict, dict | None]:
    """Template variant x probe variant grid of 10-fold metrics, fixed-threshold mode, ROC
    points, status counts and (optionally) clustering -> (strict-JSON metrics, cluster
    arrays for the picture or None)."""
    from facenet.metrics import evaluate, evaluate_at_threshold, json_safe, squared_l2, target_label

    far_labels = [target_label(t) for t in cfg.far]
    index = {k: i for i, k in enumerate(E.keys)}
    li = np.array([index[p.left] for p in pairs])
    ri = np.array([index[p.right] for p in pairs])
    names, mats = variant_matrix(E, cfg)
    cells: dict[str, dict[str, dict]] = {}
    dists: dict[tuple[str, str], np.ndarray] = {}
    for t in names:
        cells[t] = {}
        for p in names:
            d = squared_l2(mats[t][li], mats[p][ri])
            dists[(t, p)] = d
            cells[t][p] = evaluate(d, issame, folds, far_targets=cfg.far)
    base = ORIGINAL if ORIGINAL in names else names[0]
    thr = cells[base][base]["threshold_fit"]
    fixed = {t: {p: evaluate_at_threshold(dists[(t, p)], issame, thr) for p in names} for t in names}

    def grid(metric: str, src=cells) -> list[list[float]]:
        return [[float(src[t][p].get(metric, np.nan)) for p in names] for t in names]

    grids = {"accuracy": grid("accuracy"), "accuracy_all": grid("accuracy_all"), "auc": grid("auc"),
             "n_missing": grid("n_missing"),
             "fixed_threshold_accuracy": grid("accuracy", fixed), "fixed_threshold_tpr": grid("tpr", fixed),
             "fixed_threshold_far": grid("far", fixed)}
    for lab in far_labels:
        grids[f"tpr@far={lab}"] = grid(f"tpr@far={lab}")
        grids[f"acc@far={lab}"] = grid(f"acc@far={lab}")
        grids[f"tpr@fdr_paper={lab}"] = grid(f"tpr@fdr_paper={lab}")
    roc = {f"{base}|{p}": _roc_points(dists[(base, p)], issame) for p in names}
    for p in names:
        if p != base:
            roc[f"{p}|{p}"] = _roc_points(dists[(p, p)], issame)

    counts: dict[str, dict[str, int]] = {}
    for j, v in enumerate(E.variants):
        u, c = np.unique(E.status[:, j].astype(str), return_counts=True)
        counts[v] = {str(a): int(b) for a, b in zip(u, c)}
    methods: dict[str, int] = {}
    u, c = np.unique(E.method[:, 0].astype(str), return_counts=True)
    methods = {str(a) or "none": int(b) for a, b in zip(u, c)}
    failures = [{"key": E.keys[k], "variant": E.variants[j], "status": str(E.status[k, j]), "error": E.error[k, j]}
                for k, j in zip(*np.nonzero(E.status != OK))]

    out = {
        "config": {**asdict(cfg), "variant_list": list(E.variants)},
        "model": cfg.label or ("dlib ResNet (no-mask network)" if cfg.model == "dlib" else os.path.basename(cfg.model)),
        "far_targets": list(cfg.far),
        "variants": names,
        "n_pairs": int(len(pairs)),
        "n_same": int(issame.sum()),
        "n_images": len(E.keys),
        "folds_used": sorted(set(int(f) for f in folds)),
        "grids": grids,
        "cells": {t: {p: _cell_summary(cells[t][p], far_labels) for p in names} for t in names},
        "baseline": {k: v for k, v in cells[base][base].items()},
        "fixed_threshold": {"threshold": thr, "chosen_on": f"{base}|{base}",
                            "cells": {t: {p: {k: fixed[t][p][k] for k in ("accuracy", "accuracy_all", "tpr", "far", "fdr_paper", "n_missing")}
                                          for p in names} for t in names}},
        "roc": roc,
        "status_counts": counts,
        "alignment_methods": methods,
        "failures": failures[:500],
        "n_failures": len(failures),
        "embed_seconds": round(E.seconds, 2),
    }
    if cfg.cluster:
        from facenet.cluster import cluster_embeddings
        identities = [k.split("/")[0] for k in E.keys]
        cl = cluster_embeddings(mats[base], identities, thr)
        out["clustering"] = {**{k: v for k, v in cl.items() if k != "labels"}, "variant": base,
                             "linkage": "average", "distance": "squared_l2",
                             "threshold_from": f"threshold_fit of {base}|{base}"}
        extras = {"labels": cl["labels"], "identities": identities, "embeddings": mats[base]}
    else:
        extras = None
    return json_safe(out), extras


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def run(cfg: EvaluateConfig) -> dict:
    from facenet import report
    from facenet.pairs import unique_images

    common.setup_logging(cfg.log_level)
    t0 = time.perf_counter()
    pairs, issame, folds = load_pairs(cfg)
    keys = unique_images(pairs)
    log.info("%d pairs (%d same) over %d images, folds %s", len(pairs), int(issame.sum()), len(keys),
             sorted(set(folds.tolist())))
    common.ensure_dir(cfg.output)
    # resumable: (image, variant)s embedded by an earlier run with the same settings are
    # reused, so a bigger subset (more folds) only embeds what is new
    fp = fingerprint(cfg)
    emb_path = common.join_uri(cfg.output, "embeddings.npz")
    cache = Embeddings.load(emb_path, fp) if cfg.reuse_embeddings and common.exists(emb_path) else None
    variants = list(cfg.variant_list)
    E = select(cache, keys, variants) if cache is not None else None
    todo = keys if E is None else [k for i, k in enumerate(keys) if (E.status[i] == "not_embedded").any()]
    if E is not None:
        log.info("reusing %s: %d of %d images already embedded", emb_path, len(keys) - len(todo), len(keys))
    if todo:
        new = embed_images(cfg, todo)
        cache = new if cache is None else merge(cache, new)
        cache.save(emb_path, fp)
        E = select(cache, keys, variants)
    n_bad = int((E.status != OK).sum())
    rate = n_bad / max(E.status.size, 1)
    log.info("embeddings: %d of %d (image, variant)s failed (%.2f%%) in %s", n_bad, E.status.size, 100 * rate,
             common.format_duration(E.seconds))
    metrics, clusters = compute_metrics(cfg, pairs, issame, folds, E)
    compare = common.read_json(cfg.compare) if cfg.compare else None
    figures = report.make_figures(metrics, compare=compare, clusters=clusters)
    for name, png in figures.items():
        common.write_bytes(common.join_uri(cfg.output, name), png)
    metrics["figures"] = sorted(figures)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    common.write_json(common.join_uri(cfg.output, "metrics.json"), metrics)
    title = cfg.title or f"Verification of {metrics['model']} on {os.path.basename(cfg.pairs)}"
    common.write_bytes(common.join_uri(cfg.output, "report.md"), report.render_markdown(metrics, title).encode())
    common.write_bytes(common.join_uri(cfg.output, "report.html"), report.render_html(metrics, title).encode())
    base = metrics["variants"][0]
    b = metrics["cells"][base][base]
    log.info("%s|%s: accuracy %s, %s", base, base, b.get("accuracy"),
             ", ".join(f"TPR@FAR={t:g} {b.get(f'tpr@far={t:g}')}" for t in cfg.far))
    if rate > cfg.max_error_rate:
        raise RuntimeError(f"{n_bad} of {E.status.size} (image, variant)s have no embedding ({100 * rate:.1f}% > "
                           f"--max-error-rate {100 * cfg.max_error_rate:.1f}%); see {cfg.output}/metrics.json 'failures'")
    return metrics


def _smoke_argv(argv: list[str]) -> list[str]:
    """``--smoke-test``: 40 LFW View 2 pairs (both classes, every fold), original x N95,
    into a temporary folder unless ``--output`` is given; flags given alongside win."""
    import tempfile

    data = Path(os.environ.get("MASKTHEFACE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    lfw = data / "lfw"
    if not (lfw / "pairs.txt").is_file():
        raise SystemExit(f"--smoke-test needs LFW at {lfw} (set MASKTHEFACE_DATA): evaluation "
                         "needs real faces")
    defaults = {"--pairs": str(lfw / "pairs.txt"), "--images": str(lfw / "lfw-deepfunneled"),
                "--output": tempfile.mkdtemp(prefix="evaluate-smoke-"), "--limit-pairs": "40",
                "--variants": "original,N95"}
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra = [x for k, v in defaults.items() if k not in given for x in (k, v)]
    return extra + argv


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry: ``python -m jobs.evaluate ...`` -> the metrics dict
    (``--smoke-test``: a tiny end-to-end run on LFW in seconds)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke-test" in argv:
        argv = _smoke_argv([a for a in argv if a != "--smoke-test"])
    cfg = common.parse_dataclass(EvaluateConfig, argv, prog="python -m jobs.evaluate")
    return run(cfg)


if __name__ == "__main__":  # pragma: no cover
    main()
