"""The ``masktheface`` command: mask one image or a whole folder tree.

Flags follow the original MaskTheFace (``--path --mask_type --pattern --pattern_weight
--color --color_weight --code --verbose --write_original_image``) plus ``--output --seed
--workers --format --quality --aligned --manifest --placement --draw --pack --detector
--upsample --min_face --min_confidence --write_alpha --write_metadata --name_drawn --clean``.
Every input file gets one manifest row (path, status, faces, outputs, error); nothing is
dropped silently.  Outputs of a folder go to ``<folder>_masked`` beside it (or ``--output``);
outputs of a single file are written next to it, as ``<stem>_<variant>.<ext>`` (or into
``--output``).  Nothing is ever written into the shared data folder
(:mod:`masktheface.datadir`).  Bad flags (unknown mask type, missing texture file, quality
or worker count out of range, ...) are reported before any image is read.

Exit status: 0 when at least one image was masked, 1 when nothing could be processed, 2
for usage errors.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .align import ALIGN_SIZES
from .datadir import inside_shared_data
from .imageio import IMAGE_EXTENSIONS, encode_image, is_image_name
from .landmarks import UPSAMPLE_CHOICES
from .spec import BUILTIN_TYPES, PLACEMENTS, RANDOM_TYPES, MaskSpec, SpecError, normalise_type, parse_code

log = logging.getLogger("masktheface")

FORMATS = ("same", "jpg", "png", "webp", "bmp", "tif")
#: failed files named in the final summary
SHOW_FAILURES = 5


class UsageError(ValueError):
    """A flag combination that cannot work; reported before any image is read (exit 2)."""


def _int_in(lo: int, hi: int | None = None):
    """argparse type: an int in [lo, hi] (argparse turns the error into exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is not in {lo}..{hi}" if hi is not None else f"{v} is below {lo}")
        return v
    parse.__name__ = "int"
    return parse


#: ``--workers auto`` starts at most one worker per this many inputs: a worker spends ~1 s
#: loading dlib's models, the time of ~25-50 images ...
AUTO_IMAGES_PER_WORKER = 32
#: ... and at most one per this much free memory: a worker holds ~190 MB on LFW-size images
#: (models, art caches), more on large photos
AUTO_WORKER_BYTES = 512 * 2 ** 20


def _workers(text: str) -> str | int:
    """argparse type of ``--workers``: "auto" or an int >= 1."""
    return "auto" if text.strip().lower() == "auto" else _int_in(1)(text)


_workers.__name__ = "workers"


def auto_workers(n_inputs: int) -> int:
    """``--workers auto``: the CPUs this process may run on (its affinity: ``taskset`` and
    container limits count), at most one per :data:`AUTO_IMAGES_PER_WORKER` inputs and one
    per :data:`AUTO_WORKER_BYTES` of free memory, >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        by_memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // AUTO_WORKER_BYTES
    except (AttributeError, ValueError, OSError):  # no such sysconf here
        by_memory = cpus
    return max(1, min(cpus, n_inputs // AUTO_IMAGES_PER_WORKER, by_memory))


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default once, and only when there is one (no "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not argparse.SUPPRESS
        # flags (store_true/false) have nothing worth showing; "default" already in the text wins
        if shown and action.nargs != 0 and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="masktheface", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 when at least one image was masked, 1 when nothing "
                                       "could be processed, 2 for usage errors.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--path", required=True, help="an image file or a folder (searched recursively)")
    p.add_argument("--output", help="output folder (default: <folder>_masked beside an input folder; "
                                    "the file's own folder for a single file)")
    p.add_argument("--mask_type", default="surgical",
                   help=f"one of {', '.join(BUILTIN_TYPES)}, a pack template name, "
                        f"'random' (drawn per face from {', '.join(RANDOM_TYPES)}) or 'all' (one output "
                        "for each of those)")
    p.add_argument("--pattern", default=None, help="texture: a built-in pattern name or an image file")
    p.add_argument("--pattern_weight", type=float, default=0.5, help="texture intensity in [0,1]")
    p.add_argument("--color", default=None, help="hex colour, e.g. #0473e2")
    p.add_argument("--color_weight", type=float, default=0.5, help="colour intensity in [0,1]")
    p.add_argument("--code", default=None,
                   help="comma-separated 'type[-#hex|-texture]' entries, one drawn at random per face "
                        "(overrides --mask_type/--pattern/--color)")
    p.add_argument("--placement", default="correct", choices=PLACEMENTS, help="how the mask is worn")
    p.add_argument("--draw", default="face", choices=("face", "image"),
                   help="with several types: draw one per face, or one per image for all its faces")
    p.add_argument("--pack", default=None, help="a MaskTheFace-format template pack (masks.cfg + PNGs)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each image's draws derive from it and its path")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="local worker processes: a number >= 1, or 'auto': one per CPU this process may "
                        f"use, at most one per {AUTO_IMAGES_PER_WORKER} images (each loads the models, ~1 s) "
                        f"and one per {AUTO_WORKER_BYTES // 2 ** 20} MB of free memory")
    p.add_argument("--format", default="same", choices=FORMATS, help="output image format")
    p.add_argument("--quality", type=_int_in(1, 100), default=95,
                   help="JPEG/WebP quality, 1..100 (PNG is always written losslessly, zlib level 1)")
    p.add_argument("--aligned", type=int, choices=ALIGN_SIZES, default=None,
                   help="also write aligned crops (from the unmasked landmarks)")
    p.add_argument("--manifest", default=None, help="write one row per input (.csv or .jsonl)")
    p.add_argument("--write_original_image", action="store_true", help="also write the unmasked image")
    p.add_argument("--name_drawn", action="store_true",
                   help="name outputs after the mask drawn (img_N95.jpg, img_cloth+KN95.jpg for two faces "
                        "with different masks) instead of the request (img_random.jpg); the manifest's "
                        "'drawn' column lists them either way")
    p.add_argument("--write_alpha", action="store_true",
                   help="also write each masked output's mask alpha as <name>_alpha.png (0-255)")
    p.add_argument("--write_metadata", action="store_true",
                   help="also write <name>.json per output: every face's box, 68 landmarks (and the "
                        "68 its aligned crop is cut with), six key points, tilt, view, mask spec and status")
    p.add_argument("--detector", default="hog", choices=("hog", "cnn"),
                   help="dlib face detector: HOG (fast, frontal faces) or the CNN (mmod; ~17x slower, "
                        "finds turned and small faces)")
    p.add_argument("--upsample", default="auto", choices=UPSAMPLE_CHOICES,
                   help="detector upsampling: 'auto' upsamples once only where the first pass finds "
                        "nothing; 1/2 always (finds smaller faces, slower)")
    p.add_argument("--min_face", type=_int_in(1), default=20,
                   help="ignore detected faces whose box is smaller than this many pixels")
    p.add_argument("--min_confidence", type=float, default=None,
                   help="ignore detections scoring below this (HOG/CNN score; default: the detector's own "
                        "threshold, 0; detections under 0.5 also get a face check that reports non-faces "
                        "as 'not_a_face' instead of masking them)")
    p.add_argument("--clean", action="store_true",
                   help="the clean look: no scene tint, grain/blur matching, shadow ring or fit variation")
    p.add_argument("--verbose", action="store_true", help="log every image")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@dataclass(frozen=True)
class Job:
    """What every worker needs to process files (picklable)."""

    variants: tuple
    seed: int
    fmt: str
    quality: int
    aligned: int | None
    pack: str | None
    detector: str
    upsample: str
    write_original: bool
    write_alpha: bool = False
    write_metadata: bool = False
    min_face: int = 20
    min_score: float | None = None
    name_drawn: bool = False
    realism: bool = True


def _variants(args: argparse.Namespace, pack=None) -> tuple:
    """The flags -> Variants, every spec checked (type known, texture readable): a mistake
    is a usage error here, not a failure on every face later."""
    from .pipeline import Variant

    kw = dict(color_weight=args.color_weight, texture_weight=args.pattern_weight, placement=args.placement)
    if args.code:
        specs = parse_code(args.code, **kw)
        variants: tuple = (Variant("masked", specs, args.draw),)
    else:
        mtype = normalise_type(args.mask_type)
        types = RANDOM_TYPES if mtype in ("random", "all") else (mtype,)
        specs = tuple(MaskSpec(t, args.color, args.color_weight, args.pattern, args.pattern_weight, args.placement)
                      for t in types)
        if mtype == "all":
            variants = tuple(Variant(s.label, (s,)) for s in specs)
        else:
            variants = (Variant(specs[0].label if len(specs) == 1 else "random", specs, args.draw),)
    _check_specs(specs, pack)
    return variants


def _check_specs(specs: Sequence[MaskSpec], pack) -> None:
    from .textures import resolve_texture

    pack_types = tuple(pack.templates) if pack is not None else ()
    for s in specs:
        if s.mask_type not in BUILTIN_TYPES and s.mask_type not in pack_types:
            raise UsageError(f"unknown mask type {s.mask_type!r}; known: {', '.join(BUILTIN_TYPES + pack_types)}")
        if s.texture is not None:
            try:
                resolve_texture(s.texture, pack)
            except (ValueError, OSError) as e:
                raise UsageError(f"mask {s.label!r}: {e}") from None


def _output_root(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """(folder the output keys are relative to, output folder) for a resolved input path;
    UsageError when the outputs would land in the input tree or in the shared data."""
    base = root if root.is_dir() else root.parent
    if args.output:
        out_root = Path(args.output).expanduser().resolve()
    elif root.is_dir():
        out_root = base.parent / f"{base.name}_masked"
    else:
        out_root = base  # a single file: its outputs go next to it (<stem>_<variant>.<ext>)
    if root.is_dir() and (out_root == root or root in out_root.parents):
        raise UsageError(f"output {out_root} lies inside the input tree {root}; choose an --output outside it")
    for what, p in (("output", out_root), ("manifest", Path(args.manifest) if args.manifest else None)):
        if p is not None and inside_shared_data(p):
            raise UsageError(f"the {what} {p.expanduser().resolve()} lies in the shared data folder, which is "
                             "never written to; choose an --output (and --manifest) elsewhere")
    return base, out_root


def iter_inputs(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Image files under ``root`` (or root itself), sorted, skipping the output tree."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if exclude is not None:
            dirnames[:] = [n for n in dirnames if (d / n).resolve() != exclude]
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_name(name):
                yield d / name


# -- workers ---------------------------------------------------------------------------------
_MASKER = None
_JOB: Job | None = None


def _init_worker(job: Job) -> None:
    global _MASKER, _JOB
    from .pipeline import Masker, MaskerConfig

    _JOB = job
    _MASKER = Masker(MaskerConfig(detector=job.detector, upsample=job.upsample, pack=job.pack,
                                  min_face=job.min_face, min_score=job.min_score, realism=job.realism))


def _process_one(item: tuple[str, str, str]) -> dict:
    """(input path, key, output stem path) -> manifest row; writes the outputs."""
    from .pipeline import Variant

    src, key, stem = item
    job = _JOB
    assert job is not None and _MASKER is not None
    ext = Path(src).suffix.lower().lstrip(".")
    fmt = ext if job.fmt == "same" else job.fmt
    if fmt not in ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"):
        fmt = "jpg"
    row = {"path": src, "status": "error", "error": None, "faces": 0, "masked": 0, "outputs": [], "drawn": [],
           "seconds": 0.0}
    try:
        data = Path(src).read_bytes()
    except OSError as e:
        row["error"] = f"cannot read file: {e}"
        return row
    variants = job.variants + ((Variant("original"),) if job.write_original else ())
    res = _MASKER.process(data, key, variants, seed=job.seed, aligned=job.aligned, fmt=fmt, quality=job.quality,
                          keep_alpha=job.write_alpha)
    row.update(status=res.status, error=res.error, faces=res.n_faces, seconds=round(res.seconds, 4))
    outs = []
    try:
        for o in res.outputs:
            if o.image is None:
                continue
            drawn = drawn_label(o)
            if o.variant != "original":
                row["drawn"].append(f"{o.variant}={drawn}")
            name = drawn if job.name_drawn and o.variant != "original" else o.variant
            target = Path(f"{stem}_{name}.{fmt}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(o.image)
            outs.append(str(target))
            if o.aligned is not None:
                t2 = Path(f"{stem}_{name}_aligned{job.aligned}.{fmt}")
                t2.write_bytes(o.aligned)
                outs.append(str(t2))
            if job.write_alpha and o.alpha is not None:
                t3 = Path(f"{stem}_{name}_alpha.png")
                t3.write_bytes(encode_image((np.clip(o.alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "png"))
                outs.append(str(t3))
            if job.write_metadata:
                t4 = Path(f"{stem}_{name}.json")
                t4.write_text(json.dumps(_metadata(src, o), ensure_ascii=False), encoding="utf-8")
                outs.append(str(t4))
            if o.variant != "original":
                row["masked"] += sum(f.status == "ok" and f.spec is not None for f in o.faces)
    except OSError as e:  # a full disk or a bad name fails this row, not the run
        row.update(status="error", error=f"cannot write output: {e}")
    row["outputs"] = outs
    return row


def drawn_label(o) -> str:
    """What an output shows: the labels of the masks drawn on its faces (``MaskSpec.label``,
    e.g. ``N95`` or ``cloth-checks``), distinct, in face order, joined by ``+``; the variant's
    name when no face got a mask (the original)."""
    labels = [f.spec.label for f in o.faces if f.status == "ok" and f.spec is not None]
    return "+".join(dict.fromkeys(labels)) or o.variant


def _metadata(src: str, o) -> dict:
    """One output's faces as plain JSON (coordinates in the output image's pixels)."""
    def arr(a) -> list:
        return [[round(float(v), 2) for v in p] for p in np.asarray(a, np.float64)]

    return {
        "source": src, "variant": o.variant, "drawn": drawn_label(o), "status": o.status, "error": o.error,
        "width": o.width, "height": o.height,
        "faces": [{
            "box": [round(float(v), 2) for v in f.box], "landmarks": arr(f.landmarks),
            # the points --aligned crops are cut with (the detector's plain fit; = landmarks
            # unless the fit check refitted)
            "align_landmarks": arr(f.alignment),
            "six_points": None if not np.all(np.isfinite(f.six)) else arr(f.six),
            "tilt_deg": None if not np.isfinite(f.tilt_deg) else round(float(f.tilt_deg), 2),
            "view": f.view, "status": f.status, "error": f.error,
            "spec": None if f.spec is None else dataclasses.asdict(f.spec),
        } for f in o.faces],
    }


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "status", "faces", "masked", "outputs", "drawn", "seconds",
                                          "error"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "outputs": ";".join(r["outputs"]), "drawn": ";".join(r["drawn"])})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.path).expanduser()
    if not root.exists():
        print(f"masktheface: error: path does not exist: {root}", file=sys.stderr)
        return 2
    root = root.resolve()
    try:
        base, out_root = _output_root(root, args)
        pack = None
        if args.pack:
            from .masks import load_pack
            pack = load_pack(args.pack)
        variants = _variants(args, pack)
    except (SpecError, ValueError, OSError) as e:
        print(f"masktheface: error: {e}", file=sys.stderr)
        return 2
    files = list(iter_inputs(root, out_root))
    if not files:
        print(f"masktheface: error: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}", file=sys.stderr)
        return 1
    items = []
    for f in files:
        rel = f.relative_to(base)
        items.append((str(f), rel.as_posix(), str(out_root / rel.parent / rel.stem)))
    job = Job(variants, args.seed, args.format, args.quality, args.aligned, args.pack, args.detector,
              args.upsample, args.write_original_image, args.write_alpha, args.write_metadata,
              args.min_face, args.min_confidence, args.name_drawn, not args.clean)
    t0 = time.perf_counter()
    rows: list[dict] = []
    from tqdm import tqdm

    bar = tqdm(total=len(items), unit="img", disable=not args.progress, file=sys.stderr)
    workers = auto_workers(len(items)) if args.workers == "auto" else int(args.workers)
    if workers == 1:
        _init_worker(job)
        it: Iterator[dict] = map(_process_one, items)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(job,))
        it = pool.imap(_process_one, items, chunksize=4)
    try:
        for row in it:
            rows.append(row)
            bar.update(1)
            if args.verbose:
                log.info("%s: %s faces=%d masked=%d %s", row["path"], row["status"], row["faces"],
                         row["masked"], row["error"] or "")
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t0
    counts = Counter(r["status"] for r in rows)
    if args.manifest:
        _write_manifest(Path(args.manifest), rows)
    failed = [r for r in rows if r["status"] not in ("ok", "no_face")]
    summary = {
        "images": len(rows), "faces": sum(r["faces"] for r in rows), "masked_faces": sum(r["masked"] for r in rows),
        "no_face_images": counts.get("no_face", 0), "errors": len(failed),
        "statuses": dict(counts), "seconds": round(wall, 2),
        "images_per_s": round(len(rows) / wall, 1) if wall > 0 else None, "workers": workers,
        "output": str(out_root),
        # the first few failures, so a user sees which files failed and why without a manifest
        "failed": [{k: r[k] for k in ("path", "status", "error")} for r in failed[:SHOW_FAILURES]],
    }
    for r in failed[:SHOW_FAILURES]:
        print(f"masktheface: {r['status']}: {r['path']}: {r['error']}", file=sys.stderr)
    if len(failed) > SHOW_FAILURES:
        where = f"all in {args.manifest}" if args.manifest else "--manifest lists them all"
        print(f"masktheface: ... and {len(failed) - SHOW_FAILURES} more failed files ({where})", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if counts.get("ok", 0) > 0 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
