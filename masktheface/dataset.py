"""Masking a whole data set, without Ray: inputs, recipes, rows, resume.

What ``jobs.mask_dataset`` does around :meth:`masktheface.pipeline.Masker.process`, as
plain functions the job (and a test, a notebook, a single-process loop) calls:

* inputs - :class:`InputItem` (key + identity), :func:`parse_file_list`,
  :func:`parse_boxes` (VGGFace2 ``loose_bb`` CSVs or ``path,x0,y0,x1,y1``),
  :func:`parse_landmarks`, :func:`lookup`, :func:`sample_per_identity`;
* recipes - :func:`plan_variants` turns a recipe name (or ``--variants`` / ``--code``) into
  the library's :class:`~masktheface.pipeline.Variant` list, :func:`check_mask_types`;
* rows - :func:`variant_rows` / :func:`failure_rows`: one row per (input, variant) in the
  Parquet contract (:mod:`masktheface.dataset_schema`), the box/landmarks/mask columns
  always of the library's primary face;
* resume - :func:`plan_resume`, :func:`status_counts`, :func:`distinct_pairs` on the
  key/variant/status columns of what is already written.

Parsers take text, not paths: reading local or ``s3://`` files is the job's business.
``pyarrow`` is imported inside the functions that need it.
"""
from __future__ import annotations

import collections
import csv
import io
import math
import os
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from . import dataset_schema as S
from .imageio import is_image_name
from .spec import BUILTIN_TYPES, MaskSpec, draw_rng, parse_code, parse_entry

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .pipeline import Processed, Variant

#: the four mask types of the paper's simulated-mask sets (VGGFace2-mini-SM, LFW-SM)
SM_TYPES = ("cloth", "surgical_green", "surgical_blue", "N95")
RECIPES = ("vggface2-mini-sm", "lfw-sm", "custom")
#: the variant of the vggface2-mini-sm recipe that holds one mask type drawn per image
MASKED = "masked"

_NAMED_CODE = re.compile(r"^([A-Za-z0-9_.]+)=(.+)$")


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InputItem:
    """One input: ``key`` (posix path under the input root), ``identity`` (its folder's
    name, ``""`` at the root).  Slots, no derived strings: VGGFace2 lists 3.3M of these."""

    key: str
    identity: str

    @classmethod
    def from_key(cls, key: str) -> "InputItem":
        parts = key.split("/")
        return cls(key, parts[-2] if len(parts) >= 2 else "")


def _clean(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def stem_id(name: str) -> str:
    """``n000001/0001_01.jpg`` / ``./n000001/0001_01`` -> ``n000001/0001_01``."""
    name = _clean(name)
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


def lookup(table: Mapping[str, list], key: str) -> list | None:
    """The boxes / landmarks of ``key`` in a table from :func:`parse_boxes` /
    :func:`parse_landmarks` (ids match without extension and below extra root folders)."""
    stem = stem_id(key)
    hit = table.get(stem)
    if hit is None and stem.count("/") > 1:  # root above the identity folders
        hit = table.get("/".join(stem.split("/")[-2:]))
    return hit


def parse_file_list(text: str, input_root: str) -> list[str]:
    """Keys from a list file: one per line, or a CSV whose header names a
    ``key``/``path``/``file``/``NAME_ID`` column.  Paths under ``input_root`` (a URI or a
    local path) are made relative; ``#`` lines and blanks are skipped."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    col = 0
    first = next(csv.reader([lines[0]]))
    names = [c.strip().lower() for c in first]
    if len(first) > 1 or names[0] in ("path", "key", "file", "name_id"):
        for want in ("key", "path", "file", "name_id"):
            if want in names:
                col = names.index(want)
                lines = lines[1:]
                break
    root = input_root.rstrip("/") + "/"
    local_root = None if "://" in input_root else os.path.abspath(input_root) + os.sep
    keys = []
    for row in csv.reader(lines):
        if not row:
            continue
        k = _clean(row[col])
        if k.startswith(root):
            k = k[len(root):]
        elif local_root and k.startswith(local_root):
            k = k[len(local_root):].replace(os.sep, "/")
        keys.append(k.lstrip("/"))
    return keys


def _numbers(cells: Sequence[str]) -> list[float] | None:
    try:
        return [float(c) for c in cells]
    except ValueError:
        return None


def _csv_rows(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]


def parse_boxes(text: str, fmt: str = "auto", source: str = "boxes") -> dict[str, list[list[float]]]:
    """Box CSV -> ``{image id without extension: [[x0,y0,x1,y1], ...]}`` (several rows for
    one image are several faces).  VGGFace2's ``loose_bb_*.csv`` (``NAME_ID,X,Y,W,H``, ids
    like ``n000001/0001_01``) or ``path,x0,y0,x1,y1``.  ``fmt``: ``auto`` (a header naming
    W/H, or ids without an image extension, mean x,y,w,h), ``xywh`` or ``xyxy``."""
    rows = _csv_rows(text)
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
            fmt = "xyxy" if rows and is_image_name(rows[0][0].strip()) else "xywh"
    if fmt not in ("xywh", "xyxy"):
        raise ValueError(f"box format must be auto, xywh or xyxy, not {fmt!r}")
    out: dict[str, list[list[float]]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        vals = _numbers(r[1:5]) if len(r) >= 5 else None
        if vals is None:
            raise ValueError(f"{source}: row {i + 1 + (header is not None)} is not 'id,4 numbers': {r}")
        x0, y0, a, b = vals
        box = [x0, y0, x0 + a, y0 + b] if fmt == "xywh" else [x0, y0, a, b]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{source}: empty box for {r[0]!r}: {box}")
        out[stem_id(r[0])].append(box)
    return _index(out)


def parse_landmarks(text: str, source: str = "landmarks") -> dict[str, list[list[float]]]:
    """Landmark CSV (``path,x0,y0,...,x67,y67``, header optional) ->
    ``{image id without extension: [136 floats per face]}``."""
    out: dict[str, list[list[float]]] = collections.defaultdict(list)
    for i, r in enumerate(_csv_rows(text)):
        vals = _numbers(r[1:])
        if vals is None and i == 0:
            continue  # header
        if vals is None or len(vals) != 136:
            raise ValueError(f"{source}: row {i + 1} needs an id and 136 numbers (68 x,y), "
                             f"got {len(r) - 1} values")
        out[stem_id(r[0])].append(vals)
    return _index(out)


def sample_per_identity(items: Iterable[InputItem], n: int, seed: int) -> list[InputItem]:
    """At most ``n`` inputs per identity, drawn without replacement with
    ``draw_rng(seed, identity, "per-identity")``: adding identities never changes
    another's sample.  Sorted by identity, then key."""
    groups: dict[str, list[InputItem]] = collections.defaultdict(list)
    for it in items:
        groups[it.identity].append(it)
    out: list[InputItem] = []
    for ident in sorted(groups):
        g = sorted(groups[ident], key=lambda it: it.key)
        if len(g) > n:
            idx = draw_rng(seed, ident, "per-identity").choice(len(g), size=n, replace=False)
            g = [g[i] for i in sorted(idx)]
        out.extend(g)
    return out


# ------------------------------------------------------------------------------------------
# recipes
# ------------------------------------------------------------------------------------------

def plan_variants(recipe: str, variants: Sequence[str] = (), codes: Sequence[str] = ()) -> tuple["Variant", ...]:
    """A recipe -> the library Variants every input yields (names unique, specs parsed).

    ``vggface2-mini-sm``: ``original`` + ``masked`` (one of :data:`SM_TYPES` drawn per image
    from the variant's own stream, ``variant_rng(seed, key, "masked")``); ``lfw-sm``:
    ``original`` + each of :data:`SM_TYPES`; ``custom``: one variant per entry of
    ``variants`` (``original`` or one spec entry, named by its label) and per code of
    ``codes`` (``[NAME=]CODE``: one entry drawn per face; unnamed lists are ``masked``,
    ``masked2``, ...)."""
    from .pipeline import Variant

    if recipe == "vggface2-mini-sm":
        return (Variant(S.ORIGINAL), Variant(MASKED, tuple(MaskSpec(t) for t in SM_TYPES), draw="image"))
    if recipe == "lfw-sm":
        return (Variant(S.ORIGINAL),) + tuple(Variant(t, (MaskSpec(t),)) for t in SM_TYPES)
    if recipe != "custom":
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    plans: list[Variant] = []
    for entry in variants:
        if entry.strip().lower() == S.ORIGINAL:
            plans.append(Variant(S.ORIGINAL))
        else:
            spec = parse_entry(entry)
            plans.append(Variant(spec.label, (spec,)))
    n_lists = 0
    for code in codes:
        m = _NAMED_CODE.match(code.strip())
        name, body = (m.group(1), m.group(2)) if m else (None, code)
        specs = parse_code(body)
        if name is None:
            if len(specs) == 1:
                name = specs[0].label
            else:
                n_lists += 1
                name = MASKED if n_lists == 1 else f"{MASKED}{n_lists}"
        plans.append(Variant(name, specs))
    names = [p.name for p in plans]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, repeated: {', '.join(dup)} "
                         "(name a code with --code NAME=CODE)")
    if not plans:
        raise ValueError("the custom recipe needs --variants and/or --code")
    return tuple(plans)


def check_mask_types(variants: Sequence["Variant"], pack_types: Iterable[str] = ()) -> None:
    """ValueError naming the variant and the type, for a mask type nobody can draw (the
    library's built-ins, or a template of a loaded pack)."""
    known = set(BUILTIN_TYPES) | set(pack_types)
    for v in variants:
        for s in v.specs:
            if s.mask_type not in known:
                raise ValueError(f"variant {v.name!r}: unknown mask type {s.mask_type!r}; "
                                 f"known: {', '.join(sorted(known))}")


# ------------------------------------------------------------------------------------------
# rows of the Parquet contract
# ------------------------------------------------------------------------------------------

def _spec_fields(spec: MaskSpec | None) -> dict[str, Any]:
    if spec is None:
        return {S.MASK_TYPE: None, S.COLOR: None, S.TEXTURE: None, S.PLACEMENT: None}
    return {S.MASK_TYPE: spec.mask_type, S.COLOR: spec.color, S.TEXTURE: spec.texture,
            S.PLACEMENT: spec.placement}


def _flat(a: Any, n: int) -> list[float] | None:
    if a is None:
        return None
    v = np.asarray(a, np.float32).reshape(-1)
    return v.tolist() if v.size == n else None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _asked_spec(variant: "Variant") -> MaskSpec | None:
    return variant.specs[0] if len(variant.specs) == 1 else None


def failure_rows(variants: Sequence["Variant"], base: Mapping[str, Any], status: str, error: str,
                 only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per variant for an input that never reached the library (e.g. a file that
    could not be read).  ``base``: the input's own columns (key, identity, source, seed,
    format, run_id, faces_from, aligned_size)."""
    keep = None if only is None else set(only)
    return [{**base, **_spec_fields(_asked_spec(v)), S.VARIANT: v.name, S.MASKED: bool(v.specs),
             S.STATUS: status, S.ERROR: error, S.FACE_COUNT: 0, S.MASKED_FACES: 0, S.FACES: [],
             S.SECONDS: 0.0}
            for v in variants if keep is None or v.name in keep]


def variant_rows(res: "Processed", variants: Sequence["Variant"], base: Mapping[str, Any],
                 only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The rows of one processed input, one per variant (only those in ``only`` when
    given).  ``box``/``landmarks``/``tilt_deg``/``view``/``mask_type``... describe the
    library's primary face, the one ``aligned`` is cut from (``res.primary``); without a
    usable face they are None, except that ``mask_type``... then say what the variant asked
    for when it names one spec."""
    keep = None if only is None else set(only)
    rows = []
    for v, o in zip(variants, res.outputs):
        if keep is not None and v.name not in keep:
            continue
        faces = [{S.BOX: _flat(fr.box, 4), S.LANDMARKS: _flat(fr.landmarks, 136),
                  S.TILT_DEG: _finite(fr.tilt_deg), S.VIEW: fr.view, **_spec_fields(fr.spec),
                  S.STATUS: fr.status, S.ERROR: fr.error} for fr in o.faces]
        p = o.primary_face
        rows.append({
            **base, S.VARIANT: o.variant, S.MASKED: bool(v.specs),
            **_spec_fields(p.spec if p is not None else _asked_spec(v)),
            S.STATUS: o.status, S.ERROR: o.error, S.IMAGE: o.image, S.ALIGNED: o.aligned,
            S.WIDTH: o.width or None, S.HEIGHT: o.height or None, S.FACE_COUNT: res.n_faces,
            S.MASKED_FACES: sum(f.status == "ok" and f.spec is not None for f in o.faces),
            S.PRIMARY_FACE: o.primary,
            S.BOX: _flat(p.box, 4) if p is not None else None,
            S.LANDMARKS: _flat(p.landmarks, 136) if p is not None else None,
            S.TILT_DEG: _finite(p.tilt_deg) if p is not None else None,
            S.VIEW: p.view if p is not None else None,
            S.FACES: faces, S.SECONDS: float(res.seconds), S.SOURCE_QUALITY: res.source_quality,
            S.ALIGN_LANDMARKS: _flat(p.alignment, 136) if p is not None else None,
        })
    return rows


# ------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------

def distinct_pairs(table: "pa.Table") -> "pa.Table":
    """Distinct (key, variant) pairs of a table."""
    if not table.num_rows:
        return table.select([S.KEY, S.VARIANT])
    return table.group_by([S.KEY, S.VARIANT]).aggregate([])


def status_counts(table: "pa.Table") -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(rows per status, rows per variant and status) of a key/variant/status table."""
    statuses: collections.Counter = collections.Counter()
    by_variant: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if table.num_rows:
        g = table.group_by([S.VARIANT, S.STATUS]).aggregate([(S.KEY, "count")])
        for v, st, n in zip(*(g.column(c).to_pylist() for c in (S.VARIANT, S.STATUS, f"{S.KEY}_count"))):
            statuses[st] += n
            by_variant[v][st] += n
    return dict(sorted(statuses.items())), {v: dict(sorted(c.items())) for v, c in sorted(by_variant.items())}


def plan_resume(done: "pa.Table", keys: Sequence[str], names: Sequence[str]
                ) -> tuple[list[bool], dict[str, list[str]]]:
    """Which inputs are finished (every variant in ``names`` has a row in ``done``) and,
    for the partly finished ones, which variants are missing.  Vectorised in Arrow:
    millions of keys stay cheap.  Rows of other variants and duplicates are ignored."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done.num_rows:
        return [False] * len(keys), {}
    d = distinct_pairs(done.filter(pc.is_in(done.column(S.VARIANT), value_set=pa.array(list(names)))))
    g = d.group_by(S.KEY).aggregate([(S.VARIANT, "count")])
    count = g.column(f"{S.VARIANT}_count")
    full = g.filter(pc.equal(count, len(names))).column(S.KEY)
    part = g.filter(pc.less(count, len(names))).column(S.KEY)
    finished = pc.is_in(pa.array(list(keys), pa.string()), value_set=full.combine_chunks()).to_pylist()
    only: dict[str, list[str]] = {}
    if len(part):
        have: dict[str, set[str]] = collections.defaultdict(set)
        sub = d.filter(pc.is_in(d.column(S.KEY), value_set=part.combine_chunks()))
        for k, v in zip(sub.column(S.KEY).to_pylist(), sub.column(S.VARIANT).to_pylist()):
            have[k].add(v)
        wanted = set(keys)
        only = {k: [n for n in names if n not in vs] for k, vs in have.items() if k in wanted}
    return finished, only
