"""The Parquet contract of a masked data set: what ``jobs.mask_dataset`` writes and what
``jobs.evaluate``, ``jobs.export_images`` and training read.

One row per (input image, variant).  Every file of a data set has exactly
:func:`arrow_schema`; readers name columns only through the constants here (``S.KEY``,
``S.IMAGE``, ...), never through string literals of their own, so a renamed or retyped
column is a change in one place that every reader sees.

    from masktheface import dataset_schema as S
    table = S.read_table("out/lfw-sm", columns=S.columns_for("train"))
    S.validate_table(table, S.columns_for("train"))
    ok = table.filter(pyarrow.compute.equal(table[S.STATUS], S.OK))
    lm = S.landmarks_68(ok[S.LANDMARKS][0].as_py())      # float32 (68,2) or None

The primary face
    A photo may hold several faces.  ``box``, ``landmarks``, ``tilt_deg``, ``view``,
    ``mask_type``/``color``/``texture``/``placement`` and the ``aligned`` crop all describe
    the *same* face: the library's primary face (``masktheface.pipeline.primary_face``),
    whose index into ``faces`` is ``primary_face``.  They are None when no face had usable
    geometry (``faces`` still lists every face found).

Landmarks are always those of the *unmasked* face (masks are drawn from them), so a
masked image and its unmasked twin share landmarks and aligned transform.  ``landmarks``
is the checked fit, where the masks go; ``align_landmarks`` the detector's plain fit,
which the ``aligned`` crop is cut with and readers align with (the two differ only
where the fit check refitted: ~3 % of unmasked faces, about half of faces in real masks,
whose refits chase the mask's edge; see ``masktheface.landmarks.Face``).

``pyarrow`` is imported inside the functions that need it: ``import masktheface`` stays
light.  Bump :data:`SCHEMA_VERSION` with any change to the columns; ``mask_dataset``
refuses to resume into an output written with another version.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import pyarrow.fs as pafs

__all__ = [
    "SCHEMA_VERSION", "Column", "COLUMNS", "FACE_FIELDS", "SchemaError",
    "KEY", "IDENTITY", "SOURCE", "VARIANT", "MASKED", "MASK_TYPE", "COLOR", "TEXTURE",
    "PLACEMENT", "SEED", "STATUS", "ERROR", "IMAGE", "FORMAT", "ALIGNED", "ALIGNED_SIZE",
    "WIDTH", "HEIGHT", "FACE_COUNT", "MASKED_FACES", "FACES_FROM", "PRIMARY_FACE", "BOX",
    "LANDMARKS", "TILT_DEG", "VIEW", "FACES", "SECONDS", "RUN_ID", "SOURCE_QUALITY", "ALIGN_LANDMARKS",
    "ADDED_IN",
    "ORIGINAL", "OK", "STATUSES", "ERROR_STATUSES", "FACES_FROM_VALUES",
    "arrow_schema", "face_type", "table_from_rows", "column_names", "columns_for", "validate_table",
    "is_data_file", "data_files", "read_table", "landmarks_68", "align_landmarks_68", "box_4",
    "markdown_table",
]

#: version of the columns below; part of ``mask_dataset``'s resume fingerprint
SCHEMA_VERSION = 4

# -- column names ---------------------------------------------------------------------------
KEY = "key"
IDENTITY = "identity"
SOURCE = "source"
VARIANT = "variant"
MASKED = "masked"
MASK_TYPE = "mask_type"
COLOR = "color"
TEXTURE = "texture"
PLACEMENT = "placement"
SEED = "seed"
STATUS = "status"
ERROR = "error"
IMAGE = "image"
FORMAT = "format"
ALIGNED = "aligned"
ALIGNED_SIZE = "aligned_size"
WIDTH = "width"
HEIGHT = "height"
FACE_COUNT = "face_count"
MASKED_FACES = "masked_faces"
FACES_FROM = "faces_from"
PRIMARY_FACE = "primary_face"
BOX = "box"
LANDMARKS = "landmarks"
TILT_DEG = "tilt_deg"
VIEW = "view"
FACES = "faces"
SECONDS = "seconds"
RUN_ID = "run_id"
SOURCE_QUALITY = "source_quality"
ALIGN_LANDMARKS = "align_landmarks"

# -- values ---------------------------------------------------------------------------------
#: the variant name of the unmasked image
ORIGINAL = "original"
#: the status of a usable row
OK = "ok"
#: every row status: the library's image-level statuses plus the job's own read failure
STATUSES = ("ok", "no_face", "mask_failed", "decode_error", "too_large", "error", "read_error")
#: statuses that always count as errors (``no_face`` only when the job is told so)
ERROR_STATUSES = ("mask_failed", "decode_error", "too_large", "error", "read_error")
#: where the faces came from
FACES_FROM_VALUES = ("detector", "boxes", "landmarks")


class SchemaError(ValueError):
    """A table that does not follow the contract (the message names the columns)."""


@dataclass(frozen=True)
class Column:
    """One column: ``name``, its Arrow type (built lazily from ``pyarrow``), whether it may
    be null, its type as written in the docs, and what it means."""

    name: str
    arrow: Callable[[Any], "pa.DataType"]
    nullable: bool
    type_doc: str
    meaning: str


def _face_type(pa: Any) -> "pa.DataType":
    return pa.struct([(f.name, f.arrow(pa)) for f in FACE_FIELDS])


#: the fields of one entry of ``faces`` (every face found, in detection order)
FACE_FIELDS: tuple[Column, ...] = (
    Column(BOX, lambda pa: pa.list_(pa.float32(), 4), True, "float32[4]", "x0, y0, x1, y1"),
    Column(LANDMARKS, lambda pa: pa.list_(pa.float32(), 136), True, "float32[136]",
           "68 (x, y) points of the unmasked face, row-major"),
    Column(TILT_DEG, lambda pa: pa.float32(), True, "float32", "tilt of the nose line"),
    Column(VIEW, lambda pa: pa.string(), True, "string", "front / left / right"),
    Column(MASK_TYPE, lambda pa: pa.string(), True, "string", "the mask drawn on this face"),
    Column(COLOR, lambda pa: pa.string(), True, "string", "its hex colour"),
    Column(TEXTURE, lambda pa: pa.string(), True, "string", "its texture"),
    Column(PLACEMENT, lambda pa: pa.string(), True, "string", "its placement"),
    Column(STATUS, lambda pa: pa.string(), True, "string", "ok / geometry_failed / warp_failed"),
    Column(ERROR, lambda pa: pa.string(), True, "string", "why, when not ok"),
)

#: every column, in file order
COLUMNS: tuple[Column, ...] = (
    Column(KEY, lambda pa: pa.string(), False, "string",
           "path under the input root (posix, e.g. `n000001/0001_01.jpg`); with the seed it "
           "decides every random draw"),
    Column(IDENTITY, lambda pa: pa.string(), False, "string",
           "folder of the image (`\"\"` for files at the root)"),
    Column(SOURCE, lambda pa: pa.string(), False, "string", "full URI of the input file"),
    Column(VARIANT, lambda pa: pa.string(), False, "string",
           "`original`, `masked`, `N95`, ... (the variant's name)"),
    Column(MASKED, lambda pa: pa.bool_(), False, "bool", "the variant asks for a mask"),
    Column(MASK_TYPE, lambda pa: pa.string(), True, "string?",
           "the mask on the primary face (None: original, or no usable face)"),
    Column(COLOR, lambda pa: pa.string(), True, "string?", "hex colour of that mask, if any"),
    Column(TEXTURE, lambda pa: pa.string(), True, "string?", "texture of that mask, if any"),
    Column(PLACEMENT, lambda pa: pa.string(), True, "string?", "`correct`, `below_nose` or `chin`"),
    Column(SEED, lambda pa: pa.int64(), False, "int64", "the run seed"),
    Column(STATUS, lambda pa: pa.string(), False, "string", "one of " + ", ".join(f"`{s}`" for s in STATUSES)),
    Column(ERROR, lambda pa: pa.string(), True, "string?", "why, when the status is not `ok`"),
    Column(IMAGE, lambda pa: pa.binary(), True, "binary?",
           "the encoded image; None when there is nothing honest to write (undecodable input, "
           "or a masked variant where no face could be masked)"),
    Column(FORMAT, lambda pa: pa.string(), False, "string", "encoding of `image` and `aligned` (`jpg`, `png`, `webp`)"),
    Column(ALIGNED, lambda pa: pa.binary(), True, "binary?",
           "aligned crop of the primary face, made with the transform from its *unmasked* "
           "landmarks (the same for every variant of an input)"),
    Column(ALIGNED_SIZE, lambda pa: pa.int16(), True, "int16?", "160 / 112 (None: no crops asked for)"),
    Column(WIDTH, lambda pa: pa.int32(), True, "int32?", "decoded width (None when undecodable)"),
    Column(HEIGHT, lambda pa: pa.int32(), True, "int32?", "decoded height"),
    Column(FACE_COUNT, lambda pa: pa.int32(), False, "int32", "faces found (or supplied)"),
    Column(MASKED_FACES, lambda pa: pa.int32(), False, "int32", "faces masked in this variant"),
    Column(FACES_FROM, lambda pa: pa.string(), False, "string", "`detector`, `boxes` or `landmarks`"),
    Column(PRIMARY_FACE, lambda pa: pa.int32(), True, "int32?",
           "index into `faces` of the primary face, the one the columns below, `mask_type` "
           "and `aligned` describe (None: no usable face)"),
    Column(BOX, lambda pa: pa.list_(pa.float32(), 4), True, "float32[4]?",
           "the primary face's box x0, y0, x1, y1"),
    Column(LANDMARKS, lambda pa: pa.list_(pa.float32(), 136), True, "float32[136]?",
           "its 68 (x, y) points, unmasked, row-major: `np.asarray(v).reshape(68, 2)`"),
    Column(TILT_DEG, lambda pa: pa.float32(), True, "float32?", "its tilt in degrees"),
    Column(VIEW, lambda pa: pa.string(), True, "string?", "its template view: `front`, `left` or `right`"),
    Column(FACES, lambda pa: pa.list_(_face_type(pa)), False, "list<struct>",
           "every face: " + ", ".join(f"`{f.name}`" for f in FACE_FIELDS)),
    Column(SECONDS, lambda pa: pa.float32(), False, "float32", "processing time of the input (all variants)"),
    Column(RUN_ID, lambda pa: pa.string(), False, "string", "the run that wrote the row"),
    Column(SOURCE_QUALITY, lambda pa: pa.int16(), True, "int16?",
           "the input's JPEG quality (1..100), the libjpeg quality its quantisation table matches "
           "best; None when it is not a JPEG. `image` is re-encoded at `--quality`, so "
           "training's online masks take the photo's compression from here"),
    Column(ALIGN_LANDMARKS, lambda pa: pa.list_(pa.float32(), 136), True, "float32[136]?",
           "the primary face's 68 points that `aligned` is cut with and readers align with: the "
           "detector's plain fit (`landmarks` is the checked fit, where the masks go; they differ "
           "only where the check refitted, as on faces in real masks); None with `landmarks`"),
)

#: columns added after the first version, with the version that added them: a reader asking
#: for one gets nulls from an older data set (:func:`read_table`), never an error
ADDED_IN: dict[str, int] = {SOURCE_QUALITY: 3, ALIGN_LANDMARKS: 4}

_BY_NAME = {c.name: c for c in COLUMNS}

#: the columns each kind of reader needs (``columns_for``): read only these
_PURPOSES: dict[str, tuple[str, ...]] = {
    "resume": (KEY, VARIANT, STATUS),
    "train": (KEY, IDENTITY, VARIANT, STATUS, IMAGE, LANDMARKS, SOURCE_QUALITY, ALIGN_LANDMARKS),
    "evaluate": (KEY, VARIANT, STATUS, IMAGE, ALIGNED, LANDMARKS, ALIGN_LANDMARKS),
    "export": (KEY, VARIANT, STATUS, FORMAT),
}


def column_names() -> tuple[str, ...]:
    """Every column name, in file order."""
    return tuple(c.name for c in COLUMNS)


def columns_for(purpose: str) -> tuple[str, ...]:
    """The columns a reader needs: ``"resume"`` (key, variant, status), ``"train"``,
    ``"evaluate"`` or ``"export"`` (export adds ``image``/``aligned`` as it writes them)."""
    try:
        return _PURPOSES[purpose]
    except KeyError:
        raise ValueError(f"unknown purpose {purpose!r}; one of {', '.join(_PURPOSES)}") from None


def face_type() -> "pa.DataType":
    """The Arrow struct of one entry of ``faces``."""
    import pyarrow as pa

    return _face_type(pa)


def arrow_schema(columns: Iterable[str] | None = None) -> "pa.Schema":
    """The exact schema of every data file, or of the named ``columns`` (in that order)."""
    import pyarrow as pa

    names = column_names() if columns is None else tuple(columns)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise SchemaError(f"not a column of the data set: {', '.join(unknown)}")
    return pa.schema([pa.field(n, _BY_NAME[n].arrow(pa), nullable=_BY_NAME[n].nullable) for n in names])


def validate_table(table: "pa.Table", required: Iterable[str] | None = None) -> None:
    """Raise :class:`SchemaError` unless ``table`` has the ``required`` columns (default:
    all) with the contract's types.  Extra columns are allowed; the values of ``status``
    and ``faces_from`` are checked."""
    import pyarrow.compute as pc

    names = column_names() if required is None else tuple(required)
    want = arrow_schema(names)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise SchemaError(f"missing column(s) {', '.join(missing)}; has {', '.join(table.column_names)}")
    wrong = [f"{f.name}: {table.schema.field(f.name).type} (want {f.type})" for f in want
             if not table.schema.field(f.name).type.equals(f.type)]
    if wrong:
        raise SchemaError("wrong column type(s): " + "; ".join(wrong))
    for col, known in ((STATUS, STATUSES), (FACES_FROM, FACES_FROM_VALUES)):
        if col in names and table.num_rows:
            bad = sorted(set(pc.unique(table.column(col)).to_pylist()) - set(known))
            if bad:
                raise SchemaError(f"unknown {col} value(s) {bad}; known: {', '.join(known)}")


def table_from_rows(rows: Iterable[dict[str, Any]], columns: Iterable[str] | None = None) -> "pa.Table":
    """Row dicts (missing keys are None) -> a table with exactly :func:`arrow_schema`
    (or its ``columns``), so that no batch ever gets a ``null``-typed column."""
    import pyarrow as pa

    schema = arrow_schema(columns)
    rows = list(rows)
    arrays = [pa.array([r.get(f.name) for r in rows], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


# -- files ----------------------------------------------------------------------------------

def is_data_file(relative_path: str) -> bool:
    """True for a data file of the set: ``*.parquet`` with no path part starting with
    ``_`` or ``.`` (``_runs/``, ``_quarantine/``, hidden temporaries are not data; pyarrow's
    datasets and pandas skip the same)."""
    rel = relative_path.replace("\\", "/").strip("/")
    return rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/"))


def data_files(filesystem: "pafs.FileSystem", root: str) -> list[str]:
    """Sorted paths of the data files under ``root`` on ``filesystem`` (``[]`` when it does
    not exist; ``[root]`` when it is one ``.parquet`` file)."""
    import pyarrow.fs as pafs

    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [root] if root.endswith(".parquet") else []
    out = []
    for fi in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if fi.type == pafs.FileType.File and is_data_file(fi.path[len(root):]):
            out.append(fi.path)
    return sorted(out)


def read_table(path: str, columns: Sequence[str] | None = None, *,
               filesystem: "pafs.FileSystem | None" = None, filter: Any = None) -> "pa.Table":
    """Read a data set (a folder/prefix of files or one ``.parquet`` file) into one table
    with the contract's types: only ``columns`` (default all), rows matching ``filter``
    (a ``pyarrow.dataset`` expression, e.g. ``pads.field(S.STATUS) == S.OK``).  Without
    ``filesystem`` the path may be a local path or a URI pyarrow understands."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    if filesystem is None:  # an s3:// endpoint other than AWS needs an explicit filesystem
        if "://" in path:
            filesystem, path = pafs.FileSystem.from_uri(path)
        else:
            filesystem, path = pafs.LocalFileSystem(), os.path.abspath(path)
    files = data_files(filesystem, path)
    schema = arrow_schema(columns)
    if not files:
        return schema.empty_table()
    ds = pads.dataset(files, filesystem=filesystem, format="parquet")
    # a column added in a later version (ADDED_IN) reads as nulls from an older data set
    absent = [n for n in schema.names if n in ADDED_IN and n not in ds.schema.names]
    table = ds.to_table(columns=[n for n in schema.names if n not in absent], filter=filter)
    for n in absent:
        f = schema.field(n)
        table = table.add_column(schema.get_field_index(n), f, pa.nulls(table.num_rows, f.type))
    return table.cast(schema)


# -- cells ----------------------------------------------------------------------------------

def landmarks_68(value: Any) -> np.ndarray | None:
    """A ``landmarks`` cell (136 floats) -> float32 (68,2), or None."""
    if value is None:
        return None
    a = np.asarray(value, np.float32).reshape(-1)
    return a.reshape(68, 2) if a.size == 136 and np.isfinite(a).all() else None


def align_landmarks_68(row: Any) -> np.ndarray | None:
    """The landmarks to align a row's image with (a mapping with the ``align_landmarks``
    and ``landmarks`` cells): ``align_landmarks``, or ``landmarks`` where it is null (a data
    set written before version 4) -> float32 (68,2), or None."""
    lm = landmarks_68(row.get(ALIGN_LANDMARKS))
    return lm if lm is not None else landmarks_68(row.get(LANDMARKS))


def box_4(value: Any) -> np.ndarray | None:
    """A ``box`` cell -> float32 (4,) x0,y0,x1,y1, or None."""
    if value is None:
        return None
    a = np.asarray(value, np.float32).reshape(-1)
    return a if a.size == 4 else None


# -- docs -----------------------------------------------------------------------------------

def markdown_table() -> str:
    """The column table of ``docs/mask_dataset.md`` (a test keeps the docs equal to it)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type_doc} | {c.meaning} |" for c in COLUMNS]
    return "\n".join(lines)
