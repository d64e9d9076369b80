"""Mask a whole face data set with Ray Data into Parquet (local paths or ``s3://``).

    python -m jobs.mask_dataset --input s3://data/vggface2/train --output s3://out/vggface2-mini-sm \\
        --recipe vggface2-mini-sm --per-identity 42 --boxes s3://data/vggface2/loose_bb_train.csv

A thin adapter around the library: the inputs, recipes, rows and resume plan come from
:mod:`masktheface.dataset`, the columns from :mod:`masktheface.dataset_schema` (the
contract every reader uses), each image is :meth:`Masker.process`'d in an actor
(:mod:`jobs.mask_stages`), the output folder is kept by :mod:`jobs.output_folder`::

    list inputs (driver) -> skip finished ones (resume) -> from_arrow(input table)
      -> [read_files tasks, s3:// only] -> MaskBatch actors -> write_parquet(part-<run id>-...)

Every input appears once per variant with a status (checked by reading back this run's
key/variant columns); a rerun into the same output resumes, one with other settings is
refused (``--overwrite`` starts over); past ``--max-error-rate`` the job fails (exit
status 3) after writing everything and the summary ``<output>/_runs/<run id>.json``
(also ``_summary.json``).  Same seed and key: same bytes, on any machine.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from jobs import cli as job_cli
from jobs import output_folder, storage
from jobs.cli import RunFailed, UsageError, option
from jobs.progress import format_duration, setup_logging
from masktheface import dataset as mds
from masktheface import dataset_schema as S
from masktheface.imageio import IMAGE_EXTENSIONS

log = logging.getLogger("jobs.mask_dataset")

PROG = "python -m jobs.mask_dataset"
SMOKE_IMAGES = 12


class MaskDatasetError(RunFailed):
    """The run did not produce what it promised (rows missing or duplicated)."""


class ErrorRateExceeded(MaskDatasetError):
    """Raised after the output and the summary are written; ``summary`` holds the figures."""


@dataclass(frozen=True)
class MaskDatasetConfig:
    """Mask a face data set (identity-folder layout, local or s3://) into Parquet."""

    input: str | None = option(None, "input root: a folder or s3://bucket/prefix",
                               none_means="required, except with --smoke-test")
    output: str | None = job_cli.output_option("output")
    recipe: Literal["vggface2-mini-sm", "lfw-sm", "custom"] = option(
        "vggface2-mini-sm", "which variants each input yields (custom: --variants and/or --code)")
    variants: tuple[str, ...] = job_cli.variants_option((), "custom recipe: one variant per entry, "
                                                    "'original' or a mask entry, e.g. original,N95,surgical-#0473e2")
    code: tuple[str, ...] = option((), cli=False)  # repeatable --code (codes hold commas), added in parse_args
    files: str | None = option(None, "a list of files to process (one key per line, or a CSV with a "
                               "key/path/file/NAME_ID column), relative to --input; the root is then not listed",
                               none_means="every image under --input")
    per_identity: int | None = option(None, "sample this many images per identity (seeded)", none_means="all")
    max_images: int | None = option(None, "process at most this many inputs", none_means="all")
    boxes: str | None = option(None, "CSV of face boxes (VGGFace2 NAME_ID,X,Y,W,H or path,x0,y0,x1,y1); "
                               "skips detection for the images it lists")
    boxes_format: Literal["auto", "xywh", "xyxy"] = option(
        "auto", "box columns; auto: a header naming W/H, or ids without an extension (VGGFace2), mean xywh")
    landmarks: str | None = option(None, "CSV of 68-point landmarks (path,x0,y0,...,x67,y67); skips "
                                   "detection and fitting")
    aligned: Literal[160, 112] | None = option(160, "aligned crop size (160 FaceNet, 112 five-point) or none")
    seed: int = job_cli.seed_option()
    image_format: Literal["jpg", "png", "webp"] = option("jpg", "encoding of the images and crops")
    quality: int = option(95, "JPEG/WebP quality, 1-100")
    detector: Literal["hog", "cnn"] = option("hog", "face detector: dlib's HOG (CPU, fast) or its CNN "
                                             "(mmod; ~17x slower on CPU, finds more small and turned faces)")
    upsample: Literal["auto", "0", "1", "2"] = option(
        "auto", "detector upsampling: auto = none first, once more only where nothing was found; "
        "1 or 2 = always (finds faces down to ~40 px, 4-16x slower); 0 = never")
    max_detect_side: int = option(800, "detect on a copy downscaled to this longest side")
    pack: str | None = option(None, "a MaskTheFace-format template pack folder (masks.cfg + PNGs)",
                              none_means="the built-in masks")
    clean: bool = option(False, "the clean look: no scene tint, grain, JPEG matching, shadow, creases or fit "
                         "variation (about a quarter less time per image)")
    overwrite: bool = option(False, "delete this job's earlier output (data files, _runs/, _summary.json) first")
    rows_per_file: int = option(2000, "rows per Parquet file (min_rows_per_file)")
    read_in: Literal["auto", "tasks", "actors"] = option(
        "auto", "where files are read: in read tasks (overlap with masking: best for s3://) or in the "
        "masking actors (one object-store hop less: best for local disks); auto picks by the input")
    read_threads: int = option(8, "concurrent file reads per read task")
    max_file_bytes: int = option(64 * 2**20, "larger files become too_large rows")
    ray_address: str | None = job_cli.ray_address_option()
    num_cpus: int | None = job_cli.num_cpus_option()
    num_actors: int | None = job_cli.num_actors_option("masking", "one per cluster CPU")
    actor_cpus: float = job_cli.actor_cpus_option(0.8)
    read_cpus: float = option(0.1, "CPUs reserved per read/write task", group=job_cli.RAY_GROUP)
    batch_size: int = job_cli.batch_size_option(32, "inputs per read task and per actor call")
    max_error_rate: float = job_cli.max_error_rate_option(0.05, "this run's rows has an error status "
                                                      f"({', '.join(S.ERROR_STATUSES)})")
    count_no_face_as_error: bool = option(False, "count no_face rows as errors too", group=job_cli.RUN_GROUP)
    progress_every_s: float = option(30.0, "seconds between progress lines", group=job_cli.RUN_GROUP)
    progress_bars: bool = option(True, "Ray Data's progress bars", group=job_cli.RUN_GROUP)
    run_id: str | None = option(None, "name of this run", group=job_cli.RUN_GROUP, none_means="UTC time + random")
    smoke_test: bool = job_cli.smoke_test_option(f"{SMOKE_IMAGES} LFW images, all five lfw-sm variants")
    log_level: str = job_cli.log_level_option()

    def __post_init__(self) -> None:
        if (self.code or self.variants) and self.recipe != "custom":
            raise UsageError("--code/--variants need --recipe custom")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise UsageError(f"--max-error-rate must lie in [0, 1], got {self.max_error_rate}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must lie in 1..100, got {self.quality}")
        for name in ("rows_per_file", "batch_size", "read_threads", "max_file_bytes", "max_detect_side",
                     "per_identity", "num_actors", "max_images", "num_cpus"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.actor_cpus <= 0 or self.read_cpus <= 0:
            raise UsageError("--actor-cpus and --read-cpus must be > 0")
        if self.run_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.run_id):
            raise UsageError(f"--run-id may hold letters, digits, '_' and '-' only: {self.run_id!r}")

    @property
    def error_statuses(self) -> tuple[str, ...]:
        return S.ERROR_STATUSES + (("no_face",) if self.count_no_face_as_error else ())


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> MaskDatasetConfig:
    """The command line: the convention of :mod:`jobs.cli`, plus ``--code`` (repeatable,
    because a code is itself a comma-separated list)."""
    parser = job_cli.build_parser(MaskDatasetConfig, prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", dest="code", action="append", default=[], metavar="[NAME=]CODE",
                        help="custom recipe: one variant per --code (repeatable); CODE is the library's "
                             "spec syntax, e.g. 'surgical-#0473e2,N95,cloth-checks' (one entry drawn per "
                             "face); NAME defaults to the spec label, or 'masked' for a list")
    ns = parser.parse_args(argv)
    return job_cli.config_from_args(MaskDatasetConfig, ns, code=tuple(ns.code))


def plan(cfg: MaskDatasetConfig) -> tuple[Any, ...]:
    """The library Variants of the config, every mask type checked (before any work)."""
    try:
        variants = mds.plan_variants(cfg.recipe, cfg.variants, cfg.code)
        pack_types: tuple[str, ...] = ()
        if cfg.pack:
            from masktheface.masks import load_pack
            pack_types = tuple(load_pack(cfg.pack).templates)
        mds.check_mask_types(variants, pack_types)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    return variants


def fingerprint(cfg: MaskDatasetConfig, variants: Sequence[Any]) -> dict[str, Any]:
    """The settings that decide the output bytes: a resumed run must match them."""
    return {
        "schema_version": S.SCHEMA_VERSION,
        "variants": [[v.name, [s.label for s in v.specs], v.draw] for v in variants],
        "seed": int(cfg.seed), "aligned": cfg.aligned, "image_format": cfg.image_format,
        "quality": int(cfg.quality), "detector": cfg.detector, "upsample": cfg.upsample,
        "max_detect_side": int(cfg.max_detect_side), "pack": cfg.pack,
        **({"realism": False} if cfg.clean else {}),   # absent when on: outputs from before the flag resume
    }


# ------------------------------------------------------------------------------------------
# inputs and the output folder (driver, before any Ray work)
# ------------------------------------------------------------------------------------------

def _read_text(uri: str, flag: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{flag} {uri}: file not found") from None


def list_inputs(cfg: MaskDatasetConfig) -> tuple[list[mds.InputItem], int]:
    """(every input, sorted by key, no duplicates, after --per-identity and --max-images;
    how many were listed before those)."""
    assert cfg.input is not None
    if not storage.exists(cfg.input):
        raise UsageError(f"--input {cfg.input}: not found")
    if cfg.files:
        keys = mds.parse_file_list(_read_text(cfg.files, "--files"), cfg.input)
    else:
        _, root = storage.filesystem_for(cfg.input)
        prefix = "s3://" if storage.is_s3(cfg.input) else ""
        keys = [u[len(prefix):][len(root):].lstrip("/") for u in storage.list_files(cfg.input, IMAGE_EXTENSIONS)]
    items = [mds.InputItem.from_key(k) for k in sorted(set(keys))]
    listed = len(items)
    if cfg.per_identity:
        items = mds.sample_per_identity(items, cfg.per_identity, cfg.seed)
    if cfg.max_images is not None:
        items = items[: cfg.max_images]
    if not items:
        raise UsageError(f"no images under {cfg.input}" + (f" listed in {cfg.files}" if cfg.files else ""))
    return items, listed


def face_tables(cfg: MaskDatasetConfig) -> tuple[dict | None, dict | None]:
    """(--boxes, --landmarks) parsed, or None each."""
    try:
        boxes = mds.parse_boxes(_read_text(cfg.boxes, "--boxes"), cfg.boxes_format, cfg.boxes) if cfg.boxes else None
        lms = mds.parse_landmarks(_read_text(cfg.landmarks, "--landmarks"), cfg.landmarks) if cfg.landmarks else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    return boxes, lms


def prepare_output(cfg: MaskDatasetConfig, fp: dict[str, Any]) -> tuple[Any, str]:
    """Check the output against the input and earlier runs (or clear it); -> (fs, root)."""
    assert cfg.input is not None and cfg.output is not None
    try:
        storage.ensure_dir(cfg.output)
    except FileNotFoundError as e:
        raise UsageError(f"--output: {e}") from None
    fs, root = storage.filesystem_for(cfg.output)
    if cfg.overwrite:
        n = output_folder.clear_output(fs, root)
        log.info("--overwrite: deleted %d file(s) of earlier runs under %s", n, cfg.output)
    else:
        why = output_folder.settings_conflict(output_folder.previous_runs(fs, root), fp)
        if why:
            raise UsageError(f"{cfg.output}: {why}; resume with the same settings, pass --overwrite, "
                             "or choose another --output")
    return fs, root


# ------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------

def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run(cfg: MaskDatasetConfig) -> dict[str, Any]:
    """Run the job for a parsed config; returns the summary (also written to the output).
    UsageError before any work; ErrorRateExceeded / MaskDatasetError after writing."""
    from jobs import mask_stages

    t_start = time.perf_counter()
    if not cfg.input or not cfg.output:
        raise UsageError("--input and --output are required (or --smoke-test)")
    run_id = cfg.run_id or _new_run_id()
    variants = plan(cfg)
    names = [v.name for v in variants]
    fp = fingerprint(cfg, variants)
    # an output inside the input would be listed as input next time; an input inside the
    # output would be scanned (and with --overwrite, deleted) as output
    if storage.inside(cfg.input, cfg.output) or (storage.inside(cfg.output, cfg.input) and not cfg.files):
        raise UsageError(f"--output {cfg.output} and --input {cfg.input} overlap; write the data set elsewhere")
    items, listed = list_inputs(cfg)
    boxes, lms = face_tables(cfg)
    out_fs, out_root = prepare_output(cfg, fp)
    log.info("%d inputs (%d identities); variants: %s", len(items), len({it.identity for it in items}),
             ", ".join(names))

    # resume: a partly finished input (a write cut between its rows) is recomputed whole -
    # the same bytes, since every draw depends on seed, key and the variant's name - and
    # only its missing variants are kept
    done, quarantined = output_folder.read_done(out_fs, out_root)
    finished, only = mds.plan_resume(done, [it.key for it in items], names)
    todo = [it for it, f in zip(items, finished) if not f]
    log.info("resume: %d of %d inputs already done, %d to process", len(items) - len(todo), len(items), len(todo))
    summary: dict[str, Any] = {
        "run_id": run_id, "input": cfg.input, "output": cfg.output, "config": dataclasses.asdict(cfg),
        "fingerprint": fp, "variants": names, "inputs": len(items), "inputs_listed": listed,
        "inputs_skipped": len(items) - len(todo),
        "inputs_processed": len(todo), "rows_expected": sum(len(only.get(it.key, names)) for it in todo),
        "boxes_matched": sum(1 for it in items if mds.lookup(boxes, it.key)) if boxes else None,
        "landmarks_matched": sum(1 for it in items if mds.lookup(lms, it.key)) if lms else None,
        "quarantined": quarantined, "error_statuses": list(cfg.error_statuses),
        "max_error_rate": cfg.max_error_rate, "ray": None, "files_written": [],
        "execution_seconds": 0.0, "ray_seconds": 0.0, "steady_images_per_s": None, "images_by_node": {},
    }
    new = S.arrow_schema(S.columns_for("resume")).empty_table()
    if todo:
        read_in = cfg.read_in if cfg.read_in != "auto" else ("tasks" if storage.is_s3(cfg.input) else "actors")
        in_fs, _ = storage.filesystem_for(cfg.input)
        settings = mask_stages.MaskSettings(
            tuple(variants), int(cfg.seed), cfg.aligned, cfg.image_format, int(cfg.quality), run_id,
            {"detector": cfg.detector, "upsample": cfg.upsample, "max_detect_side": cfg.max_detect_side,
             "pack": cfg.pack, "realism": not cfg.clean},
            {"filesystem": in_fs, "threads": cfg.read_threads, "max_bytes": cfg.max_file_bytes}
            if read_in == "actors" else None)
        t_ray = time.perf_counter()
        ex = mask_stages.execute(cfg, settings, mask_stages.input_table(todo, boxes, lms, only, cfg.input),
                                 out_fs, out_root)
        new, _ = output_folder.read_done(out_fs, out_root, files=ex.files, quarantine=False)
        summary.update(ray=dataclasses.asdict(ex.ray), files_written=[os.path.basename(f) for f in ex.files],
                       execution_seconds=round(ex.seconds, 3), ray_seconds=round(time.perf_counter() - t_ray, 3),
                       steady_images_per_s=round(ex.steady, 3) if ex.steady else None,
                       images_by_node=ex.by_node)
    summary.update(tally(cfg, items, names, done, new, summary))
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    storage.write_json(storage.join_uri(cfg.output, output_folder.RUNS_DIR, f"{run_id}.json"), summary)
    storage.write_json(storage.join_uri(cfg.output, output_folder.SUMMARY_NAME), summary)
    check(cfg, summary)
    return summary


def tally(cfg: MaskDatasetConfig, items: Sequence[mds.InputItem], names: Sequence[str], done: Any,
          new: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Counts of this run's rows and of the whole output; every (input, variant) asked
    for must now have a row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    statuses, by_variant = mds.status_counts(new)
    rows = new.num_rows
    errors = sum(v for k, v in statuses.items() if k in cfg.error_statuses)
    everything = pa.concat_tables([done, new])
    pairs = mds.distinct_pairs(everything)
    present = pairs.filter(pc.and_(
        pc.is_in(pairs.column(S.KEY), value_set=pa.array([it.key for it in items], pa.string())),
        pc.is_in(pairs.column(S.VARIANT), value_set=pa.array(list(names), pa.string())))).num_rows
    secs = summary["execution_seconds"]
    return {
        "rows_written": rows, "statuses": statuses, "by_variant": by_variant, "error_rows": errors,
        "error_rate": round(errors / rows, 6) if rows else 0.0,
        "duplicates": rows - mds.distinct_pairs(new).num_rows,
        "missing": len(items) * len(names) - present,
        "images_per_s": round(summary["inputs_processed"] / secs, 3) if secs > 0 else None,
        "rows_per_s": round(rows / secs, 3) if secs > 0 else None,
        "cumulative": {"rows": everything.num_rows, "inputs": len(set(pairs.column(S.KEY).to_pylist())),
                       "statuses": mds.status_counts(everything)[0]},
    }


def check(cfg: MaskDatasetConfig, summary: dict[str, Any]) -> None:
    """Raise when the run did not deliver: rows missing or duplicated, or too many errors."""
    rows, errors = summary["rows_written"], summary["error_rows"]
    if rows != summary["rows_expected"] or summary["duplicates"] or summary["missing"]:
        raise MaskDatasetError(
            f"output incomplete: wrote {rows} rows, expected {summary['rows_expected']}; "
            f"{summary['duplicates']} duplicate(s), {summary['missing']} (input, variant) pair(s) missing; "
            "rerun to resume", summary)
    if rows and errors / rows > cfg.max_error_rate:
        worst = ", ".join(f"{k}={v}" for k, v in summary["statuses"].items() if k in cfg.error_statuses)
        raise ErrorRateExceeded(
            f"error rate {errors / rows:.2%} ({errors} of {rows} rows: {worst}) exceeds --max-error-rate "
            f"{cfg.max_error_rate:.2%}; everything was written to {cfg.output} (see "
            f"{output_folder.RUNS_DIR}/{summary['run_id']}.json and the status/error columns)", summary)


def smoke_config(cfg: MaskDatasetConfig, tmp: Path) -> MaskDatasetConfig:
    """--smoke-test: 12 LFW images (2 per identity) x the lfw-sm variants, one actor, tiny
    files; a UsageError when the data is not there (never a run on made-up pictures)."""
    lfw = job_cli.smoke_data("lfw", "lfw-deepfunneled")
    keys: list[str] = []
    for ident in sorted(p.name for p in lfw.iterdir() if p.is_dir()):
        keys += [f"{ident}/{f.name}" for f in sorted((lfw / ident).iterdir())[:2]]
        if len(keys) >= SMOKE_IMAGES:
            break
    files = tmp / "smoke_files.txt"
    files.write_text("\n".join(keys[:SMOKE_IMAGES]) + "\n")
    return dataclasses.replace(
        cfg, input=str(lfw), files=str(files), output=cfg.output or str(tmp / "output"), recipe="lfw-sm",
        num_actors=1, rows_per_file=20, progress_every_s=5.0, progress_bars=False, batch_size=4,
        num_cpus=cfg.num_cpus or min(2, os.cpu_count() or 1))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run, return the summary dict (raises UsageError / RunFailed)."""
    cfg = parse_args(argv)
    setup_logging(cfg.log_level)
    if cfg.smoke_test:
        job_cli.refuse_with_smoke_test(cfg, "input", "files", "boxes", "landmarks", "per_identity")
        cfg = smoke_config(cfg, Path(tempfile.mkdtemp(prefix="mask_dataset_smoke_")))
        log.info("smoke test: input %s, output %s", cfg.input, cfg.output)
    return run(cfg)


def summarise(s: dict[str, Any]) -> str:
    """The human summary printed by the command."""
    lines = [f"output: {s['output']}  (run {s['run_id']}; summary in {output_folder.RUNS_DIR}/{s['run_id']}.json)",
             f"inputs: {s['inputs']} ({s['inputs_skipped']} already done, {s['inputs_processed']} processed) "
             f"x {len(s['variants'])} variants ({', '.join(s['variants'])})",
             f"rows written: {s['rows_written']}: {job_cli.counts_text(s['statuses'])}; "
             f"error rate {job_cli.percent(s['error_rate'])}"]
    rate = s.get("images_per_s")
    lines.append(f"time: {format_duration(s['wall_seconds'])}" + (f", {rate:.1f} images/s" if rate else ""))
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.mask_dataset``: exit status 0 / 2 (usage) / 3 (failed run)."""
    return job_cli.run_cli(main, argv, prog=PROG, summarise=summarise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
