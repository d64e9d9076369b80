"""Mask a whole face data set with Ray Data into Parquet (local paths or ``s3://``).

    python -m jobs.mask_dataset --input s3://data/vggface2/train --output s3://out/vggface2-mini-sm \\
        --recipe vggface2-mini-sm --per-identity 42 --boxes loose_bb_train.csv --seed 0

The job is a thin adapter around :meth:`masktheface.pipeline.Masker.process`::

    list inputs (driver) -> skip finished ones (resume) -> from_arrow(input table)
      -> map_batches(read_files)          tasks, a fraction of a CPU, threaded reads;
                                          a file that cannot be read becomes a row
      -> map_batches(MaskBatch)           actor pool, the Masker (dlib) built once per actor;
                                          one row per (input, variant), fixed schema
      -> write_parquet(<output>/part-<run id>-<task>.parquet)

and a run summary ``<output>/_runs/<run id>.json`` (also copied to ``_summary.json``).

Inputs
    ``--input`` is a root in the identity-folder layout (``<identity>/<image>``): every image
    under it (sorted; ``--files`` to give a list instead, ``--per-identity N`` to sample N
    per identity with the seed, ``--max-images`` to cap).  ``key`` is the path relative to
    the root (``n000001/0001_01.jpg``), ``identity`` its parent folder's name.  ``--boxes``
    (VGGFace2 ``NAME_ID,X,Y,W,H`` or ``path,x0,y0,x1,y1``) or ``--landmarks``
    (``path,x0,y0,...,x67,y67``) skip face detection for the images they list.

Recipes (variants per input)
    ``vggface2-mini-sm``: ``original`` + ``masked`` (one of cloth, surgical_green,
    surgical_blue, N95 drawn per image from the seed and the key); ``lfw-sm``: ``original``
    + ``cloth``, ``surgical_green``, ``surgical_blue``, ``N95``; ``custom``: ``--variants
    original,N95,surgical-#0473e2`` (one variant per entry) and/or ``--code [NAME=]CODE``
    (repeatable; one variant per code, a spec drawn per face as in MaskTheFace).

Output schema (:data:`SCHEMA`, identical in every file; one row per input and variant)
    ========================  =====================  ==========================================
    column                    type                   meaning
    ========================  =====================  ==========================================
    key                       string                 path under the input root (posix); seeds the RNG
    identity                  string                 parent folder of the image ("" at the root)
    source                    string                 full URI of the input file
    variant                   string                 "original", "masked", "N95", ...
    masked                    bool                   the variant asks for a mask
    mask_type                 string?                primary face's mask (None: original / no face)
    color                     string?                hex colour of that mask, if any
    texture                   string?                texture of that mask, if any
    placement                 string?                correct / below_nose / chin
    seed                      int64                  the run seed
    status                    string                 ok, no_face, mask_failed, decode_error,
                                                     too_large, error, read_error
    error                     string?                why, when status != ok
    image                     binary?                encoded image (None when nothing honest to
                                                     write: undecodable, or a masked variant
                                                     without a masked face)
    format                    string                 encoding of image/aligned ("jpg", "png", ...)
    aligned                   binary?                aligned crop of the primary face, made from
                                                     the *unmasked* landmarks (same for every variant)
    aligned_size              int16?                 160 / 112 (None: not asked for)
    width, height             int32?                 decoded size (None when undecodable)
    face_count                int32                  faces found (or supplied)
    masked_faces              int32                  faces masked in this variant
    faces_from                string                 "detector", "boxes" or "landmarks"
    box                       fixed_size_list<float32>[4]?   primary (largest) face x0,y0,x1,y1
    landmarks                 fixed_size_list<float32>[136]? its 68 (x,y) points, row-major
    tilt_deg                  float32?               its tilt; view: "front"/"left"/"right"
    view                      string?
    faces                     list<struct>           every face: box, landmarks, tilt_deg, view,
                                                     mask_type, color, texture, placement,
                                                     status, error
    seconds                   float32                processing time of the input (all variants)
    run_id                    string                 the run that wrote the row
    ========================  =====================  ==========================================

Guarantees
    * every input appears once per requested variant with a status (checked after the
      write by reading back this run's key/variant columns);
    * rerunning into the same output resumes: only the key/variant columns of the
      existing files are read, finished inputs are skipped, new files get the run id in
      their names (nothing is overwritten or appended to); ``--overwrite`` starts over.
      A rerun with settings that change the pixels (recipe, seed, format, ...) is refused;
    * the job raises :class:`ErrorRateExceeded` after writing everything and the summary
      when the share of rows with an error status exceeds ``--max-error-rate``;
    * deterministic: the same seed and key give the same bytes, on a rerun, a retried
      task or another machine.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import argparse
import csv
import io
import logging
import math
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

from jobs import common

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import pyarrow.fs as pafs

log = logging.getLogger("jobs.mask_dataset")

#: statuses produced by the library (image level) plus the job's own read failure
STATUSES = ("ok", "no_face", "mask_failed", "decode_error", "too_large", "error", "read_error")
#: statuses that always count as errors for --max-error-rate (no_face only with --no-face-is-error)
ERROR_STATUSES = ("mask_failed", "decode_error", "too_large", "error", "read_error")

#: the four mask types of the paper's simulated-mask sets
SM_TYPES = ("cloth", "surgical_green", "surgical_blue", "N95")
RECIPES = ("vggface2-mini-sm", "lfw-sm", "custom")

#: the RNG stream (after seed and key) used to draw the vggface2-mini-sm mask per image;
#: the library uses streams 0..len(variants)-1 for the variants themselves
_DRAW_STREAM = 1 << 20

#: files under the output that the job owns (everything else there is left alone)
RUNS_DIR = "_runs"
SUMMARY_NAME = "_summary.json"
QUARANTINE_DIR = "_quarantine"


class MaskDatasetError(RuntimeError):
    """A run that cannot start or did not produce what it promised."""


class ErrorRateExceeded(MaskDatasetError):
    """Raised after the output and the summary are written; ``summary`` holds the figures."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------

def _help(text: str, **kw: Any) -> dict[str, Any]:
    return {"help": text, **kw}


@dataclass(frozen=True)
class MaskDatasetConfig:
    """Mask a face data set (identity-folder layout, local or s3://) into Parquet."""

    input: str | None = field(default=None, metadata=_help("input root: a folder or s3://bucket/prefix"))
    output: str | None = field(default=None, metadata=_help("output folder or s3://bucket/prefix"))
    recipe: Literal["vggface2-mini-sm", "lfw-sm", "custom"] = field(
        default="vggface2-mini-sm", metadata=_help("which variants each input yields"))
    code: tuple[str, ...] = field(default=(), metadata={"cli": False})
    variants: tuple[str, ...] = field(default=(), metadata={"cli": False})
    files: str | None = field(default=None, metadata=_help(
        "a list of files to process (one key per line, or a CSV with a path/key/NAME_ID column), "
        "relative to --input; the input root is then not listed"))
    per_identity: int | None = field(default=None, metadata=_help(
        "sample this many images per identity (seeded; all when fewer)"))
    max_images: int | None = field(default=None, metadata=_help("process at most this many inputs"))
    boxes: str | None = field(default=None, metadata=_help(
        "CSV of face boxes (VGGFace2 NAME_ID,X,Y,W,H or path,x0,y0,x1,y1); skips detection"))
    boxes_format: Literal["auto", "xywh", "xyxy"] = field(default="auto", metadata=_help(
        "box columns; auto: a header with W/H means xywh, else ids without an extension "
        "(VGGFace2) mean xywh"))
    landmarks: str | None = field(default=None, metadata=_help(
        "CSV of 68-point landmarks (path,x0,y0,...,x67,y67); skips detection and fitting"))
    aligned: Literal[160, 112] | None = field(default=160, metadata=_help(
        "aligned crop size (160 FaceNet, 112 five-point) or none"))
    seed: int = field(default=0, metadata=_help("run seed; every draw derives from it and the key"))
    image_format: Literal["jpg", "png", "webp"] = field(default="jpg", metadata=_help("image encoding"))
    quality: int = field(default=95, metadata=_help("JPEG/WebP quality"))
    max_error_rate: float = field(default=0.05, metadata=_help(
        "fail (after writing) when more than this share of this run's rows has an error status"))
    no_face_is_error: bool = field(default=False, metadata=_help("count no_face rows as errors"))
    rows_per_file: int = field(default=2000, metadata=_help("rows per Parquet file (min_rows_per_file)"))
    batch_size: int = field(default=32, metadata=_help(
        "inputs per read task and per actor call (fewer, larger calls cost Ray less per image)"))
    num_actors: int | None = field(default=None, metadata=_help(
        "masking actors (default: one per cluster CPU)"))
    actor_cpus: float = field(default=0.8, metadata=_help(
        "CPUs reserved per actor; below 1 so read and write tasks can run beside a full pool"))
    read_cpus: float = field(default=0.1, metadata=_help("CPUs reserved per read/write task"))
    read_threads: int = field(default=8, metadata=_help("concurrent file reads per read task"))
    max_file_bytes: int = field(default=64 * 2**20, metadata=_help("larger files are too_large rows"))
    read_in: Literal["auto", "tasks", "actors"] = field(default="auto", metadata=_help(
        "where files are read: in separate read tasks (reads overlap with masking: best for "
        "s3://), in the masking actors (one object-store hop less per image: best for local "
        "disks); auto picks tasks for s3:// and actors otherwise"))
    detector: Literal["hog", "cnn"] = field(default="hog", metadata=_help("face detector"))
    upsample: Literal["auto", "0", "1", "2"] = field(default="auto", metadata=_help("detector upsampling"))
    max_detect_side: int = field(default=800, metadata=_help("detect on a copy downscaled to this side"))
    pack: str | None = field(default=None, metadata=_help("a MaskTheFace-format template pack folder"))
    overwrite: bool = field(default=False, metadata=_help(
        "delete this job's earlier output (Parquet parts, _runs/, _summary.json) first"))
    ray_address: str | None = field(default=None, metadata=_help(
        "Ray to connect to (default: $RAY_ADDRESS, else a private local Ray)"))
    num_cpus: int | None = field(default=None, metadata=_help("CPUs of a local Ray (default: all)"))
    progress_every_s: float = field(default=30.0, metadata=_help("seconds between progress lines"))
    progress_bars: bool = field(default=True, metadata=_help("Ray Data's progress bars"))
    run_id: str | None = field(default=None, metadata=_help("name of this run (default: time + random)"))
    smoke_test: bool = field(default=False, metadata=_help(
        "a tiny end-to-end run (12 images; LFW from ../shared/data when present, else "
        "synthetic pictures; a temporary output unless --output is given)"))
    log_level: str = field(default="INFO", metadata=_help("logging level"))

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, not {self.recipe!r}")
        if (self.code or self.variants) and self.recipe != "custom":
            raise ValueError("--code/--variants need --recipe custom")
        if self.recipe == "custom" and not (self.code or self.variants):
            raise ValueError("--recipe custom needs --variants and/or --code")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must lie in [0, 1], got {self.max_error_rate}")
        for name in ("rows_per_file", "batch_size", "read_threads", "max_file_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.per_identity is not None and self.per_identity < 1:
            raise ValueError("per_identity must be >= 1")
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError("num_actors must be >= 1")
        if self.actor_cpus <= 0 or self.read_cpus <= 0:
            raise ValueError("actor_cpus and read_cpus must be > 0")
        if self.run_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.run_id):
            raise ValueError(f"run_id may hold letters, digits, '_' and '-' only: {self.run_id!r}")

    @property
    def error_statuses(self) -> tuple[str, ...]:
        return ERROR_STATUSES + (("no_face",) if self.no_face_is_error else ())


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per config field (jobs.common), plus the two
    list-valued recipe flags, which need their own syntax."""
    p = argparse.ArgumentParser(
        prog="python -m jobs.mask_dataset", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_dataclass_args(p, MaskDatasetConfig)
    p.add_argument("--code", dest="code", action="append", default=[], metavar="[NAME=]CODE",
                   help="custom recipe: one variant per --code (repeatable); CODE is the library's "
                        "spec syntax, e.g. 'surgical-#0473e2,N95,cloth-checks' (one entry drawn "
                        "per face); NAME defaults to the spec label, or 'masked' for a list")
    p.add_argument("--variants", dest="variants", default=None, metavar="LIST",
                   help="custom recipe: comma-separated variants, each 'original' or one spec "
                        "entry, e.g. 'original,N95,surgical-#0473e2,cloth-checks'")
    return p


def parse_args(argv: Sequence[str] | None = None) -> MaskDatasetConfig:
    ns = build_parser().parse_args(argv)
    variants = tuple(v.strip() for v in (ns.variants or "").split(",") if v.strip())
    return common.dataclass_from_args(MaskDatasetConfig, ns, code=tuple(ns.code), variants=variants)


# ----------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VariantPlan:
    """A variant as the job sees it: ``specs`` empty = the unmasked original;
    ``draw_per_image``: one spec is drawn per image (seed, key) instead of per face."""

    name: str
    specs: tuple = ()
    draw_per_image: bool = False


_NAME_RE = re.compile(r"^([A-Za-z0-9_.]+)=(.+)$")


def plan_variants(cfg: MaskDatasetConfig) -> tuple[VariantPlan, ...]:
    """Config -> the variants every input yields (names unique, specs validated)."""
    from masktheface.spec import MaskSpec, parse_code, parse_entry

    if cfg.recipe == "vggface2-mini-sm":
        return (VariantPlan("original"), VariantPlan("masked", tuple(MaskSpec(t) for t in SM_TYPES), True))
    if cfg.recipe == "lfw-sm":
        return (VariantPlan("original"),) + tuple(VariantPlan(t, (MaskSpec(t),)) for t in SM_TYPES)
    plans: list[VariantPlan] = []
    for entry in cfg.variants:
        if entry.lower() == "original":
            plans.append(VariantPlan("original"))
        else:
            spec = parse_entry(entry)
            plans.append(VariantPlan(spec.label, (spec,)))
    n_masked = 0
    for code in cfg.code:
        m = _NAME_RE.match(code.strip())
        name, body = (m.group(1), m.group(2)) if m else (None, code)
        specs = parse_code(body)
        if name is None:
            if len(specs) == 1:
                name = specs[0].label
            else:
                n_masked += 1
                name = "masked" if n_masked == 1 else f"masked{n_masked}"
        plans.append(VariantPlan(name, specs))
    names = [p.name for p in plans]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, repeated: {', '.join(dup)} "
                         "(name a code with --code NAME=CODE)")
    return tuple(plans)


def check_mask_types(plans: Sequence[VariantPlan], pack_types: Iterable[str] = ()) -> None:
    """Fail fast (on the driver, before any Ray work) on a mask type nobody can draw."""
    from masktheface.masks import is_builtin
    from masktheface.spec import REGION_TYPES

    known = set(pack_types)
    for p in plans:
        for s in p.specs:
            if not (is_builtin(s.mask_type) or s.mask_type in REGION_TYPES or s.mask_type in known):
                raise ValueError(f"variant {p.name!r}: unknown mask type {s.mask_type!r}")


def variants_for(plans: Sequence[VariantPlan], seed: int, key: str) -> list:
    """The library Variants for one input; a per-image draw uses its own RNG stream."""
    from masktheface.pipeline import Variant
    from masktheface.spec import choose, item_rng

    out = []
    for p in plans:
        specs = p.specs
        if p.draw_per_image and len(specs) > 1:
            specs = (choose(specs, item_rng(seed, key, _DRAW_STREAM)),)
        out.append(Variant(p.name, tuple(specs)))
    return out


def fingerprint(cfg: MaskDatasetConfig, plans: Sequence[VariantPlan]) -> dict[str, Any]:
    """The settings that decide the output bytes: a resumed run must match them."""
    return {
        "variants": [[p.name, [s.label for s in p.specs], p.draw_per_image] for p in plans],
        "seed": int(cfg.seed), "aligned": cfg.aligned, "image_format": cfg.image_format,
        "quality": int(cfg.quality), "detector": cfg.detector, "upsample": cfg.upsample,
        "max_detect_side": int(cfg.max_detect_side), "pack": cfg.pack,
    }


# ----------------------------------------------------------------------------------------
# the fixed output schema
# ----------------------------------------------------------------------------------------

def face_type() -> "pa.DataType":
    import pyarrow as pa

    return pa.struct([
        ("box", pa.list_(pa.float32(), 4)),
        ("landmarks", pa.list_(pa.float32(), 136)),
        ("tilt_deg", pa.float32()),
        ("view", pa.string()),
        ("mask_type", pa.string()),
        ("color", pa.string()),
        ("texture", pa.string()),
        ("placement", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ])


def output_schema() -> "pa.Schema":
    """The schema of every output file (see the module docstring)."""
    import pyarrow as pa

    f = pa.field
    return pa.schema([
        f("key", pa.string(), nullable=False),
        f("identity", pa.string(), nullable=False),
        f("source", pa.string(), nullable=False),
        f("variant", pa.string(), nullable=False),
        f("masked", pa.bool_(), nullable=False),
        f("mask_type", pa.string()),
        f("color", pa.string()),
        f("texture", pa.string()),
        f("placement", pa.string()),
        f("seed", pa.int64(), nullable=False),
        f("status", pa.string(), nullable=False),
        f("error", pa.string()),
        f("image", pa.binary()),
        f("format", pa.string(), nullable=False),
        f("aligned", pa.binary()),
        f("aligned_size", pa.int16()),
        f("width", pa.int32()),
        f("height", pa.int32()),
        f("face_count", pa.int32(), nullable=False),
        f("masked_faces", pa.int32(), nullable=False),
        f("faces_from", pa.string(), nullable=False),
        f("box", pa.list_(pa.float32(), 4)),
        f("landmarks", pa.list_(pa.float32(), 136)),
        f("tilt_deg", pa.float32()),
        f("view", pa.string()),
        f("faces", pa.list_(face_type()), nullable=False),
        f("seconds", pa.float32(), nullable=False),
        f("run_id", pa.string(), nullable=False),
    ])


def input_schema() -> "pa.Schema":
    """What the driver hands to the read step (one row per input)."""
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("identity", pa.string()), ("source", pa.string()),
        ("path", pa.string()),                          # filesystem path (no scheme)
        ("boxes", pa.list_(pa.float32())),             # flattened (k,4), None: detect
        ("landmarks", pa.list_(pa.float32())),         # flattened (k,68,2), None: fit
        ("only", pa.list_(pa.string())),               # variants still missing; None: all
    ])


# ----------------------------------------------------------------------------------------
# Ray Data stages (thin: unpack, call the library, pack)
# ----------------------------------------------------------------------------------------

def read_files(batch: "pa.Table", filesystem: "pafs.FileSystem", threads: int = 8,
               max_bytes: int = 64 * 2**20) -> "pa.Table":
    """Input rows -> the same rows + ``data`` (binary) and ``read_error`` (string).

    A file that cannot be read gives ``data=None`` and the reason, never an exception
    (Ray Data's readers abort the whole job on one bad file).  Files larger than
    ``max_bytes`` are not read (``read_error`` starts with ``too_large:``)."""
    import pyarrow as pa

    paths = batch.column("path").to_pylist()

    def one(path: str) -> tuple[bytes | None, str | None]:
        try:
            with filesystem.open_input_stream(path) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                return None, f"too_large: file larger than {max_bytes} bytes"
            return data, None
        except Exception as e:  # missing, permission, network: a row, not a dead job
            return None, f"cannot read {path}: {type(e).__name__}: {e}"

    if threads > 1 and len(paths) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(paths))) as ex:
            got = list(ex.map(one, paths))
    else:
        got = [one(p) for p in paths]
    batch = batch.append_column("data", pa.array([g[0] for g in got], pa.binary()))
    return batch.append_column("read_error", pa.array([g[1] for g in got], pa.string()))


class _Columns:
    """Row-by-row accumulator that becomes a table with the fixed output schema."""

    def __init__(self) -> None:
        self.schema = output_schema()
        self.cols: dict[str, list] = {name: [] for name in self.schema.names}

    def add(self, **row: Any) -> None:
        for name, values in self.cols.items():
            values.append(row.get(name))

    def table(self) -> "pa.Table":
        import pyarrow as pa

        arrays = [pa.array(self.cols[f.name], f.type) for f in self.schema]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _spec_fields(spec) -> dict[str, Any]:
    if spec is None:
        return {"mask_type": None, "color": None, "texture": None, "placement": None}
    return {"mask_type": spec.mask_type, "color": spec.color, "texture": spec.texture,
            "placement": spec.placement}


def _flat(a, n: int) -> list[float] | None:
    import numpy as np

    if a is None:
        return None
    v = np.asarray(a, np.float32).reshape(-1)
    return v.tolist() if v.size == n else None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


class MaskBatch:
    """The actor: builds a Masker once; each call turns a batch of read inputs into one
    output row per (input, variant) with the fixed :func:`output_schema`."""

    def __init__(self, plans: Sequence[VariantPlan], *, seed: int, aligned: int | None,
                 image_format: str, quality: int, run_id: str, masker_kwargs: Mapping[str, Any],
                 counter: Any = None, read: Mapping[str, Any] | None = None) -> None:
        from masktheface.pipeline import Masker, MaskerConfig

        # read=None: batches arrive with their bytes (read tasks); else the read_files
        # keyword arguments, and the actor reads each batch itself
        self.read = dict(read) if read is not None else None

        t0 = time.perf_counter()
        self.masker = Masker(MaskerConfig(**dict(masker_kwargs)))
        self.plans = tuple(plans)
        self.seed, self.aligned, self.fmt, self.quality = int(seed), aligned, image_format, int(quality)
        self.run_id = run_id
        self.counter = counter
        log.info("MaskBatch actor ready in %.1f s (pid %d)", time.perf_counter() - t0, os.getpid())

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import numpy as np

        out = _Columns()
        statuses: collections.Counter = collections.Counter()
        if self.read is not None:
            batch = read_files(batch, **self.read)
        rows = batch.to_pylist()
        for r in rows:
            key = r["key"]
            variants = variants_for(self.plans, self.seed, key)
            only = set(r["only"]) if r.get("only") is not None else None
            boxes = landmarks = None
            faces_from = "detector"
            if r.get("landmarks"):
                landmarks = list(np.asarray(r["landmarks"], np.float32).reshape(-1, 68, 2))
                faces_from = "landmarks"
            elif r.get("boxes"):
                boxes = np.asarray(r["boxes"], np.float32).reshape(-1, 4).tolist()
                faces_from = "boxes"
            base = {"key": key, "identity": r["identity"], "source": r["source"], "seed": self.seed,
                    "format": self.fmt, "run_id": self.run_id, "faces_from": faces_from,
                    "aligned_size": self.aligned}
            if r.get("data") is None:
                err = r.get("read_error") or "not read"
                status = "too_large" if err.startswith("too_large:") else "read_error"
                for v in variants:
                    if only is not None and v.name not in only:
                        continue
                    spec = v.specs[0] if len(v.specs) == 1 else None
                    out.add(**base, **_spec_fields(spec), variant=v.name, masked=bool(v.specs),
                            status=status, error=err, face_count=0, masked_faces=0, faces=[],
                            seconds=0.0)
                    statuses[status] += 1
                continue
            res = self.masker.process(r["data"], key, variants, seed=self.seed, aligned=self.aligned,
                                      fmt=self.fmt, quality=self.quality, boxes=boxes, landmarks=landmarks)
            for v, o in zip(variants, res.outputs):
                if only is not None and v.name not in only:
                    continue
                out.add(**base, **self._pack(v, o), seconds=float(res.seconds), face_count=res.n_faces)
                statuses[o.status] += 1
        if self.counter is not None:
            try:  # fire and forget: progress must never slow down or break the job
                self.counter.add.remote(len(rows), dict(statuses))
            except Exception:  # pragma: no cover
                pass
        return out.table()

    @staticmethod
    def _pack(variant, o) -> dict[str, Any]:
        faces = []
        for fr in o.faces:
            faces.append({"box": _flat(fr.box, 4), "landmarks": _flat(fr.landmarks, 136),
                          "tilt_deg": _finite(fr.tilt_deg), "view": fr.view, **_spec_fields(fr.spec),
                          "status": fr.status, "error": fr.error})
        primary = None
        if o.faces:  # the largest face: the one the aligned crop is made from
            primary = max(o.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        spec = primary.spec if primary is not None else (variant.specs[0] if len(variant.specs) == 1 else None)
        return {
            "variant": o.variant, "masked": bool(variant.specs), **_spec_fields(spec),
            "status": o.status, "error": o.error, "image": o.image, "aligned": o.aligned,
            "width": o.width or None, "height": o.height or None,
            "masked_faces": sum(f.status == "ok" and f.spec is not None for f in o.faces),
            "box": _flat(primary.box, 4) if primary is not None else None,
            "landmarks": _flat(primary.landmarks, 136) if primary is not None else None,
            "tilt_deg": _finite(primary.tilt_deg) if primary is not None else None,
            "view": primary.view if primary is not None else None,
            "faces": faces,
        }


class ProgressCounter:
    """A tiny Ray actor (num_cpus=0) the MaskBatch actors report to, so the driver can log
    images/s and ETA while Ray Data runs.  It also times the steady state: images after
    the first reported batch over the time since (actor start-up and model loads, paid
    once per actor, excluded)."""

    def __init__(self) -> None:
        self.inputs = 0
        self.statuses: collections.Counter = collections.Counter()
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def add(self, n: int, statuses: Mapping[str, int]) -> None:
        self.inputs += int(n)
        self.statuses.update(statuses)
        now = time.time()
        if self.first is None:
            self.first = (now, self.inputs)
        self.last = (now, self.inputs)

    def get(self) -> tuple[int, dict[str, int]]:
        return self.inputs, dict(self.statuses)

    def steady_rate(self) -> float | None:
        # a run of a few batches has no steady state worth the name
        if self.first is None or self.last is None or self.last[0] - self.first[0] < 2.0:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


class RunFilenames:
    """``part-<run id>-<task>.parquet``: unique per run, so a rerun never touches earlier
    files (Ray's default write mode appends, and ``overwrite`` would delete them)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        # Ray insists on the full write UUID in the name (and no dot in the stem); it
        # appends "-<i>" per file of a task
        return f"part-{self.run_id}-{write_uuid}_{task_index:06d}.parquet"


def _filename_provider(run_id: str):
    from ray.data.datasource import FilenameProvider

    class _Provider(RunFilenames, FilenameProvider):
        def __init__(self, run_id: str) -> None:
            FilenameProvider.__init__(self, file_format="parquet")
            RunFilenames.__init__(self, run_id)

    return _Provider(run_id)


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InputItem:
    """One input: ``key`` relative to the input root, ``identity`` its folder's name.
    (Slots and no derived strings: VGGFace2 lists 3.3M of these on the driver.)"""

    key: str
    identity: str


def _identity(key: str) -> str:
    parts = key.split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _stem_id(name: str) -> str:
    """``n000001/0001_01.jpg`` / ``./n000001/0001_01`` -> ``n000001/0001_01``."""
    from masktheface.imageio import is_image_name

    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return posixpath.splitext(name)[0] if is_image_name(name) else name


def _index(table: Mapping[str, list]) -> dict[str, list]:
    """Also index ids with folders above the identity by their last two components
    (``/data/vggface2/train/n000001/0001_01`` -> ``n000001/0001_01``)."""
    out = dict(table)
    for k, v in table.items():
        parts = k.strip("/").split("/")
        if len(parts) > 2:
            out.setdefault("/".join(parts[-2:]), v)
    return out


def list_inputs(cfg: MaskDatasetConfig) -> list[InputItem]:
    """Every input as (key, identity), sorted by key, no duplicates."""
    from masktheface.imageio import IMAGE_EXTENSIONS

    assert cfg.input is not None
    _, root = common.filesystem_for(cfg.input)
    s3 = common.is_s3(cfg.input)
    if cfg.files:
        try:
            keys = read_file_list(cfg.files, cfg.input)
        except FileNotFoundError:
            raise FileNotFoundError(f"--files {cfg.files}") from None
    else:
        keys = []
        for u in common.list_files(cfg.input, IMAGE_EXTENSIONS):
            p = u[len("s3://"):] if s3 else u
            keys.append(p[len(root):].lstrip("/"))
    keys = sorted(set(keys))
    return [InputItem(k, _identity(k)) for k in keys]


def read_file_list(uri: str, input_root: str) -> list[str]:
    """Keys from a list file: one per line, or a CSV with a header naming a
    ``path``/``key``/``file``/``NAME_ID`` column.  Absolute URIs under the input root are
    made relative; ``#`` lines and blanks are skipped."""
    text = common.read_bytes(uri).decode("utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    col = 0
    first = next(csv.reader([lines[0]]))
    if len(first) > 1 or first[0].strip().lower() in ("path", "key", "file", "name_id"):
        names = [c.strip().lower() for c in first]
        for want in ("key", "path", "file", "name_id"):
            if want in names:
                col = names.index(want)
                lines = lines[1:]
                break
    root = input_root.rstrip("/") + "/"
    local_root = None if common.is_s3(input_root) else os.path.abspath(input_root) + os.sep
    keys = []
    for row in csv.reader(lines):
        if not row:
            continue
        k = row[col].strip().replace("\\", "/")
        while k.startswith("./"):
            k = k[2:]
        if k.startswith(root):
            k = k[len(root):]
        elif local_root and k.startswith(local_root):
            k = k[len(local_root):].replace(os.sep, "/")
        keys.append(k.lstrip("/"))
    return keys


def sample_per_identity(items: Sequence[InputItem], n: int, seed: int) -> list[InputItem]:
    """At most ``n`` inputs per identity, drawn without replacement from a generator
    seeded by (seed, identity): adding identities never changes another's sample."""
    from masktheface.spec import item_rng

    groups: dict[str, list[InputItem]] = collections.defaultdict(list)
    for it in items:
        groups[it.identity].append(it)
    out: list[InputItem] = []
    for ident in sorted(groups):
        g = sorted(groups[ident], key=lambda it: it.key)
        if len(g) > n:
            idx = item_rng(seed, "per-identity:" + ident).choice(len(g), size=n, replace=False)
            g = [g[i] for i in sorted(idx)]
        out.extend(g)
    return out


def _numbers(cells: Sequence[str]) -> list[float] | None:
    try:
        return [float(c) for c in cells]
    except ValueError:
        return None


def read_boxes(uri: str, fmt: str = "auto") -> dict[str, list[list[float]]]:
    """Box CSV -> {image id without extension: [[x0,y0,x1,y1], ...]} (several rows for one
    image are several faces).  VGGFace2's ``loose_bb_*.csv`` (``NAME_ID,X,Y,W,H``, ids like
    ``n000001/0001_01``) or ``path,x0,y0,x1,y1``."""
    text = common.read_bytes(uri).decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        return {}
    header = None
    if _numbers(rows[0][1:5]) is None:
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    if fmt == "auto":
        if header is not None:
            fmt = "xywh" if {"w", "h"} <= set(header) or {"width", "height"} <= set(header) else "xyxy"
        else:
            from masktheface.imageio import is_image_name
            fmt = "xyxy" if rows and is_image_name(rows[0][0].strip()) else "xywh"
    out: dict[str, list[list[float]]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        vals = _numbers(r[1:5]) if len(r) >= 5 else None
        if vals is None:
            raise ValueError(f"{uri}: row {i + 1 + (header is not None)} is not 'id,4 numbers': {r}")
        x0, y0, a, b = vals
        box = [x0, y0, x0 + a, y0 + b] if fmt == "xywh" else [x0, y0, a, b]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{uri}: empty box for {r[0]!r}: {box}")
        out[_stem_id(r[0])].append(box)
    return _index(out)


def read_landmarks(uri: str) -> dict[str, list[list[float]]]:
    """Landmark CSV (``path,x0,y0,...,x67,y67``, header optional) ->
    {image id without extension: [136 floats per face]}."""
    text = common.read_bytes(uri).decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    out: dict[str, list[list[float]]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        vals = _numbers(r[1:])
        if vals is None and i == 0:
            continue  # header
        if vals is None or len(vals) != 136:
            raise ValueError(f"{uri}: row {i + 1} needs an id and 136 numbers (68 x,y), "
                             f"got {len(r) - 1} values")
        out[_stem_id(r[0])].append(vals)
    return _index(out)


def _lookup(table: Mapping[str, list], key: str) -> list | None:
    stem = _stem_id(key)
    hit = table.get(stem)
    if hit is None and stem.count("/") > 1:  # root above the identity folders
        hit = table.get("/".join(stem.split("/")[-2:]))
    return hit


# ----------------------------------------------------------------------------------------
# the output folder: resume, overwrite, quarantine
# ----------------------------------------------------------------------------------------

def _output_parquet_files(fs, root: str) -> list[str]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    out = []
    for fi in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = fi.path[len(root):].lstrip("/")
        if fi.type != pafs.FileType.File or not rel.endswith(".parquet"):
            continue
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue  # _runs/, _quarantine/, hidden temporaries
        out.append(fi.path)
    return sorted(out)


def read_done(fs, root: str, columns: Sequence[str] = ("key", "variant", "status"),
              files: Sequence[str] | None = None, quarantine: bool = True) -> tuple["pa.Table", list[str]]:
    """Only ``columns`` of every Parquet file under the output (cheap: column chunks).
    An unreadable file (a write killed half-way) is moved to ``_quarantine/`` so that the
    data set stays readable and its inputs are redone; returns (table, quarantined)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _output_parquet_files(fs, root) if files is None else list(files)
    schema = pa.schema([output_schema().field(c) for c in columns])

    def one(path: str):
        try:
            return pq.read_table(path, columns=list(columns), filesystem=fs).cast(schema), None
        except Exception as e:
            return None, f"{path}: {type(e).__name__}: {e}"

    tables, bad = [], []
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        for (t, err), path in zip(ex.map(one, files), files):
            if t is not None:
                tables.append(t)
            else:
                bad.append((path, err))
    moved = []
    for path, err in bad:
        if not quarantine:
            raise MaskDatasetError(f"unreadable Parquet file {err}")
        target = f"{root}/{QUARANTINE_DIR}/{path[len(root):].lstrip('/')}.corrupt"
        log.warning("unreadable Parquet file moved to %s (its inputs will be redone): %s", target, err)
        fs.create_dir(posixpath.dirname(target), recursive=True)
        fs.move(path, target)
        moved.append(target)
    if not tables:
        return schema.empty_table(), moved
    return pa.concat_tables(tables), moved


def clear_output(fs, root: str) -> int:
    """Delete what this job wrote under ``root`` (Parquet parts, _runs/, _quarantine/,
    _summary.json); anything else there is left alone.  Returns the files deleted."""
    import pyarrow.fs as pafs

    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    n = 0
    for path in _output_parquet_files(fs, root):
        fs.delete_file(path)
        n += 1
    for d in (RUNS_DIR, QUARANTINE_DIR):
        if fs.get_file_info(f"{root}/{d}").type == pafs.FileType.Directory:
            n += len([f for f in fs.get_file_info(pafs.FileSelector(f"{root}/{d}", recursive=True))
                      if f.type == pafs.FileType.File])
            fs.delete_dir(f"{root}/{d}")
    if fs.get_file_info(f"{root}/{SUMMARY_NAME}").type == pafs.FileType.File:
        fs.delete_file(f"{root}/{SUMMARY_NAME}")
        n += 1
    return n


def previous_runs(fs, root: str) -> list[dict[str, Any]]:
    import json

    import pyarrow.fs as pafs

    d = f"{root}/{RUNS_DIR}"
    if fs.get_file_info(d).type != pafs.FileType.Directory:
        return []
    runs = []
    for fi in sorted(fs.get_file_info(pafs.FileSelector(d)), key=lambda f: f.path):
        if fi.type == pafs.FileType.File and fi.path.endswith(".json"):
            with fs.open_input_stream(fi.path) as f:
                runs.append(json.loads(f.read().decode("utf-8")))
    return runs


def _counts(table: "pa.Table") -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(rows per status, rows per variant and status), counted in Arrow."""
    statuses: collections.Counter = collections.Counter()
    by_variant: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if table.num_rows:
        g = table.group_by(["variant", "status"]).aggregate([("key", "count")])
        for v, st, n in zip(*(g.column(c).to_pylist() for c in ("variant", "status", "key_count"))):
            statuses[st] += n
            by_variant[v][st] += n
    return dict(sorted(statuses.items())), {v: dict(sorted(c.items())) for v, c in sorted(by_variant.items())}


def _distinct_pairs(table: "pa.Table") -> "pa.Table":
    """Distinct (key, variant) pairs of a table."""
    return table.group_by(["key", "variant"]).aggregate([]) if table.num_rows else table.select(["key", "variant"])


def plan_resume(done: "pa.Table", keys: Sequence[str], names: Sequence[str]
                ) -> tuple[list[bool], dict[str, list[str]]]:
    """Which inputs are finished (every variant has a row) and which variants are missing
    for the partly finished ones.  Vectorised in Arrow: millions of keys stay cheap."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done.num_rows:
        return [False] * len(keys), {}
    d = _distinct_pairs(done.filter(pc.is_in(done.column("variant"), value_set=pa.array(list(names)))))
    g = d.group_by("key").aggregate([("variant", "count")])
    full = g.filter(pc.equal(g.column("variant_count"), len(names))).column("key")
    part = g.filter(pc.less(g.column("variant_count"), len(names))).column("key")
    key_arr = pa.array(list(keys), pa.string())
    finished = pc.is_in(key_arr, value_set=full.combine_chunks()).to_pylist()
    only: dict[str, list[str]] = {}
    if len(part):
        have: dict[str, set[str]] = collections.defaultdict(set)
        sub = d.filter(pc.is_in(d.column("key"), value_set=part.combine_chunks()))
        for k, v in zip(sub.column("key").to_pylist(), sub.column("variant").to_pylist()):
            have[k].add(v)
        wanted = set(keys)
        only = {k: [n for n in names if n not in vs] for k, vs in have.items() if k in wanted}
    return finished, only


# ----------------------------------------------------------------------------------------
# smoke test
# ----------------------------------------------------------------------------------------

def _shared_lfw() -> Path | None:
    base = os.environ.get("MASKTHEFACE_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    p = Path(base) / "lfw" / "lfw-deepfunneled"
    return p if p.is_dir() else None


def _synthetic_inputs(folder: Path, n: int = 6) -> None:
    """A few pictures without real faces, for a smoke test where no data set is around."""
    import cv2
    import numpy as np

    for i in range(n):
        img = np.full((120, 160, 3), (40 * i % 255, 120, 200), np.uint8)
        cv2.circle(img, (80, 60), 30 + 3 * i, (90, 150, 220), -1)
        d = folder / f"person_{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"img_{i:02d}.jpg"), img)


def smoke_config(cfg: MaskDatasetConfig, tmp: Path) -> MaskDatasetConfig:
    """Fill a --smoke-test config: 12 inputs at most, one actor, tiny files."""
    changes: dict[str, Any] = {"max_images": min(cfg.max_images or 12, 12), "num_actors": 1,
                               "rows_per_file": 20, "progress_every_s": 5.0, "progress_bars": False,
                               "batch_size": 4}
    if cfg.input is None:
        lfw = _shared_lfw()
        if lfw is not None:
            keys: list[str] = []
            for ident in sorted(p.name for p in lfw.iterdir()):
                keys += [f"{ident}/{f.name}" for f in sorted((lfw / ident).iterdir())[:2]]
                if len(keys) >= 12:
                    break
            files = tmp / "smoke_files.txt"
            files.write_text("\n".join(keys) + "\n")
            changes.update(input=str(lfw), files=str(files))
        else:
            _synthetic_inputs(tmp / "input")
            changes.update(input=str(tmp / "input"), max_error_rate=1.0)
    if cfg.output is None:
        changes["output"] = str(tmp / "output")
    if cfg.num_cpus is None:
        changes["num_cpus"] = min(2, os.cpu_count() or 1)
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------

def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _input_table(items: Sequence[InputItem], boxes: Mapping[str, list] | None,
                 landmarks: Mapping[str, list] | None, only: Mapping[str, list[str]],
                 input_uri: str) -> "pa.Table":
    import pyarrow as pa

    _, root = common.filesystem_for(input_uri)
    scheme = "s3://" if common.is_s3(input_uri) else ""
    cols: dict[str, list] = {n: [] for n in input_schema().names}
    for it in items:
        path = f"{root}/{it.key}"
        cols["key"].append(it.key)
        cols["identity"].append(it.identity)
        cols["source"].append(scheme + path)
        cols["path"].append(path)
        b = _lookup(boxes, it.key) if boxes else None
        cols["boxes"].append([v for box in b for v in box] if b else None)
        lm = _lookup(landmarks, it.key) if landmarks else None
        cols["landmarks"].append([v for pts in lm for v in pts] if lm else None)
        cols["only"].append(only.get(it.key))
    return pa.Table.from_pydict(cols, schema=input_schema())


def _log_progress(counter, total: int, every_s: float, stop: threading.Event, error_statuses) -> None:
    import ray

    p = common.ProgressLogger(total=total, what="images", every_s=0.0, logger=log)
    last = 0
    while not stop.wait(every_s):
        try:
            n, st = ray.get(counter.get.remote(), timeout=30)
        except Exception:  # the counter is best effort
            continue
        if n != last:
            p.done, last = n, n
            errors = sum(v for k, v in st.items() if k in error_statuses)
            rows = sum(st.values())
            p.logger.info("%s; rows %d, error rows %d (%.2f%%)", p.message(), rows, errors,
                          100.0 * errors / rows if rows else 0.0)


def run(cfg: MaskDatasetConfig) -> dict[str, Any]:
    """Run the job for a (validated) config; returns the summary (also written to the
    output).  Raises ErrorRateExceeded past --max-error-rate, after writing."""
    import pyarrow as pa

    t_start = time.perf_counter()
    if not cfg.input or not cfg.output:
        raise MaskDatasetError("--input and --output are required (or --smoke-test)")
    run_id = cfg.run_id or _new_run_id()
    plans = plan_variants(cfg)
    pack_types: tuple[str, ...] = ()
    if cfg.pack:
        from masktheface.masks import load_pack
        pack_types = tuple(load_pack(cfg.pack).templates)
    check_mask_types(plans, pack_types)
    names = [p.name for p in plans]
    fp = fingerprint(cfg, plans)

    # -- inputs
    t0 = time.perf_counter()
    try:
        items = list_inputs(cfg)
    except FileNotFoundError as e:
        raise MaskDatasetError(f"input not found: {e}") from None
    n_listed = len(items)
    if cfg.per_identity:
        items = sample_per_identity(items, cfg.per_identity, cfg.seed)
    if cfg.max_images is not None:
        items = items[: cfg.max_images]
    if not items:
        raise MaskDatasetError(f"no images under {cfg.input}" + (f" listed in {cfg.files}" if cfg.files else ""))
    try:
        boxes = read_boxes(cfg.boxes, cfg.boxes_format) if cfg.boxes else None
        lms = read_landmarks(cfg.landmarks) if cfg.landmarks else None
    except FileNotFoundError as e:
        raise MaskDatasetError(f"box/landmark file not found: {e}") from None
    log.info("%d inputs (%d listed, %d identities) in %.1f s; variants: %s", len(items), n_listed,
             len({it.identity for it in items}), time.perf_counter() - t0, ", ".join(names))

    # -- the output: refuse mixed settings, or start over
    out_fs, out_root = common.filesystem_for(cfg.output)
    _, in_root = common.filesystem_for(cfg.input)
    if not common.is_s3(cfg.output) and not common.is_s3(cfg.input):
        if os.path.commonpath([out_root, in_root]) == in_root and not cfg.files:
            raise MaskDatasetError(f"output {cfg.output} lies inside the input tree {cfg.input}")
    common.ensure_dir(cfg.output)
    if cfg.overwrite:
        n = clear_output(out_fs, out_root)
        log.info("--overwrite: deleted %d file(s) of earlier runs under %s", n, cfg.output)
    else:
        for prev in previous_runs(out_fs, out_root):
            if prev.get("fingerprint") != fp:
                diff = sorted(k for k in fp if (prev.get("fingerprint") or {}).get(k) != fp[k])
                raise MaskDatasetError(
                    f"{cfg.output} holds run {prev.get('run_id')} made with other settings "
                    f"({', '.join(diff)}); resume with the same settings, pass --overwrite, "
                    "or choose another --output")

    # -- resume: what is already there
    done_tbl, quarantined = read_done(out_fs, out_root)
    # a partly finished input (a write cut between its rows) is recomputed whole - the
    # same bytes, since the draws depend on the variant's index - and only its missing
    # variants are kept
    finished, only = plan_resume(done_tbl, [it.key for it in items], names)
    todo = [it for it, f in zip(items, finished) if not f]
    skipped = len(items) - len(todo)
    expected_rows = sum(len(only.get(it.key, names)) for it in todo)
    log.info("resume: %d of %d inputs already done, %d to process (%d rows)", skipped, len(items),
             len(todo), expected_rows)

    summary: dict[str, Any] = {
        "run_id": run_id, "input": cfg.input, "output": cfg.output,
        "config": dataclasses.asdict(cfg), "fingerprint": fp, "variants": names,
        "inputs": len(items), "inputs_listed": n_listed, "inputs_skipped": skipped,
        "inputs_processed": len(todo), "rows_expected": expected_rows,
        "boxes_matched": sum(1 for it in items if boxes and _lookup(boxes, it.key)) if boxes else None,
        "landmarks_matched": sum(1 for it in items if lms and _lookup(lms, it.key)) if lms else None,
        "quarantined": quarantined, "error_statuses": list(cfg.error_statuses),
        "max_error_rate": cfg.max_error_rate,
    }

    ray_s = exec_s = 0.0
    steady = None
    files: list[str] = []
    new_tbl = pa.schema([output_schema().field(c) for c in ("key", "variant", "status")]).empty_table()
    if todo:
        t_ray = time.perf_counter()
        ray_info, files, exec_s, steady = _execute(cfg, run_id, plans, todo, boxes, lms, only, out_fs, out_root)
        ray_s = time.perf_counter() - t_ray
        new_tbl, _ = read_done(out_fs, out_root, files=files, quarantine=False)
        summary["ray"] = dataclasses.asdict(ray_info)
    import pyarrow.compute as pc

    statuses, by_variant = _counts(new_tbl)
    rows = new_tbl.num_rows
    errors = sum(v for k, v in statuses.items() if k in cfg.error_statuses)
    dup_new = rows - _distinct_pairs(new_tbl).num_rows
    all_tbl = pa.concat_tables([done_tbl, new_tbl])
    all_pairs = _distinct_pairs(all_tbl)
    # every (input, variant) asked for in this run must now have a row
    present = all_pairs.filter(pc.and_(
        pc.is_in(all_pairs.column("key"), value_set=pa.array([it.key for it in items], pa.string())),
        pc.is_in(all_pairs.column("variant"), value_set=pa.array(names, pa.string())))).num_rows
    missing = len(items) * len(names) - present
    cum_statuses, _ = _counts(all_tbl)
    summary.update({
        "rows_written": rows, "files_written": [posixpath.basename(f) for f in files],
        "statuses": statuses, "by_variant": by_variant,
        "error_rows": errors, "error_rate": round(errors / rows, 6) if rows else 0.0,
        "duplicates": dup_new, "missing": missing,
        # execution: from the first block to the last file written (actor start-up included,
        # Ray start-up not); ray_seconds adds starting/connecting to Ray
        "execution_seconds": round(exec_s, 3), "ray_seconds": round(ray_s, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "images_per_s": round(len(todo) / exec_s, 3) if exec_s > 0 else None,
        "rows_per_s": round(rows / exec_s, 3) if exec_s > 0 else None,
        # after the first batch came back: the rate a long run converges to
        "steady_images_per_s": round(steady, 3) if steady else None,
        "cumulative": {"rows": all_tbl.num_rows,
                       "inputs": pc.count_distinct(all_pairs.column("key")).as_py() if all_pairs.num_rows else 0,
                       "statuses": cum_statuses},
    })
    common.write_json(common.join_uri(cfg.output, RUNS_DIR, f"{run_id}.json"), summary)
    common.write_json(common.join_uri(cfg.output, SUMMARY_NAME), summary)
    log.info("run %s: %d rows in %d file(s), %s; %.1f images/s; wall %s", run_id, rows, len(files),
             statuses, summary["images_per_s"] or 0.0, common.format_duration(summary["wall_seconds"]))
    if rows != expected_rows or dup_new or missing:
        raise MaskDatasetError(
            f"output incomplete: wrote {rows} rows, expected {expected_rows}; {dup_new} duplicate(s), "
            f"{missing} (input, variant) pair(s) missing; rerun to resume")
    if rows and errors / rows > cfg.max_error_rate:
        worst = ", ".join(f"{k}={v}" for k, v in statuses.items() if k in cfg.error_statuses)
        raise ErrorRateExceeded(
            f"error rate {errors / rows:.2%} ({errors} of {rows} rows: {worst}) exceeds "
            f"--max-error-rate {cfg.max_error_rate:.2%}; everything was written to {cfg.output} "
            f"(see {RUNS_DIR}/{run_id}.json and the status/error columns)", summary)
    return summary


def _execute(cfg: MaskDatasetConfig, run_id: str, plans, todo: Sequence[InputItem], boxes, lms,
             only: Mapping[str, list[str]], out_fs, out_root: str):
    """The Ray Data part: from_arrow -> read -> MaskBatch actors -> write_parquet."""
    import ray

    in_fs, _ = common.filesystem_for(cfg.input)
    with common.ray_context(cfg.ray_address, cfg.num_cpus) as info:
        ctx = ray.data.DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = bool(cfg.progress_bars)
        n_actors = cfg.num_actors or max(1, int(info.cpus))
        # an actor without a batch to work on only costs its model load
        n_actors = max(1, min(n_actors, math.ceil(len(todo) / cfg.batch_size)))
        table = _input_table(todo, boxes, lms, only, cfg.input)
        # small input blocks stream well (reads follow the actors' pace) without
        # flooding the object store with tiny objects on millions of inputs
        per_block = min(4096, max(cfg.batch_size, math.ceil(len(todo) / (n_actors * 4))))
        blocks = [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        ds = ray.data.from_arrow(blocks)
        read_kwargs = {"filesystem": in_fs, "threads": cfg.read_threads, "max_bytes": cfg.max_file_bytes}
        read_in = cfg.read_in if cfg.read_in != "auto" else ("tasks" if common.is_s3(cfg.input) else "actors")
        if read_in == "tasks":
            ds = ds.map_batches(read_files, batch_format="pyarrow", batch_size=cfg.batch_size,
                                num_cpus=cfg.read_cpus, fn_kwargs=read_kwargs)
        masker_kwargs = {"detector": cfg.detector, "upsample": cfg.upsample,
                         "max_detect_side": cfg.max_detect_side, "pack": cfg.pack}
        ds = ds.map_batches(
            MaskBatch, batch_format="pyarrow", batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cfg.actor_cpus,
            fn_constructor_args=(tuple(plans),),
            fn_constructor_kwargs={"seed": cfg.seed, "aligned": cfg.aligned, "image_format": cfg.image_format,
                                   "quality": cfg.quality, "run_id": run_id,
                                   "masker_kwargs": masker_kwargs, "counter": counter,
                                   "read": read_kwargs if read_in == "actors" else None})
        log.info("Ray %s (%g CPUs): %d masking actor(s) x %.2f CPU, %d input block(s) of <= %d, "
                 "files read in %s", info.mode, info.cpus, n_actors, cfg.actor_cpus, len(blocks),
                 per_block, read_in)
        stop = threading.Event()
        logger = threading.Thread(target=_log_progress, daemon=True,
                                  args=(counter, len(todo), cfg.progress_every_s, stop, cfg.error_statuses))
        logger.start()
        t_exec = time.perf_counter()
        try:
            ds.write_parquet(out_root, filesystem=out_fs, filename_provider=_filename_provider(run_id),
                             min_rows_per_file=cfg.rows_per_file,
                             ray_remote_args={"num_cpus": cfg.read_cpus})
            exec_s = time.perf_counter() - t_exec
            try:
                steady = ray.get(counter.steady_rate.remote(), timeout=30)
            except Exception:  # pragma: no cover - best effort
                steady = None
        finally:
            ctx.enable_progress_bars = bars
            stop.set()
            logger.join(timeout=5)
            ray.kill(counter)
    files = [f for f in _output_parquet_files(out_fs, out_root)
             if posixpath.basename(f).startswith(f"part-{run_id}-")]
    return info, files, exec_s, steady


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run, return the summary dict (raises on failure)."""
    cfg = parse_args(argv)
    common.setup_logging(cfg.log_level)
    if cfg.smoke_test:
        tmp = Path(tempfile.mkdtemp(prefix="mask_dataset_smoke_"))
        cfg = smoke_config(cfg, tmp)
        log.info("smoke test: input %s, output %s", cfg.input, cfg.output)
    return run(cfg)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.mask_dataset``: prints the summary's key figures as JSON."""
    import json

    try:
        summary = main(argv)
    except ErrorRateExceeded as e:
        print(f"mask_dataset: error: {e}", file=sys.stderr)
        return 3
    except (MaskDatasetError, ValueError, FileNotFoundError) as e:
        print(f"mask_dataset: error: {e}", file=sys.stderr)
        return 2
    keys = ("run_id", "output", "inputs", "inputs_skipped", "inputs_processed", "rows_written",
            "statuses", "error_rate", "images_per_s", "wall_seconds")
    print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
