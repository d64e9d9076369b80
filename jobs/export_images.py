"""Export a masked data set (the Parquet of ``jobs.mask_dataset``) to image files.

    python -m jobs.export_images --input s3://out/lfw-sm --output /data/lfw-sm-images --variants N95,original

Layout (local folder or ``s3://``)::

    <output>/<variant>/<key>                 the image (``.<format>`` appended when the
                                             key's extension names another format)
    <output>/aligned/<variant>/<key>         the aligned crop (--aligned)
    <output>/_export.json                    counts

``key`` is the input's path under the data set root, so the identity-folder layout comes
back as it was: ``N95/Aaron_Eckhart/Aaron_Eckhart_0001.jpg``.  Rows without image bytes
(undecodable inputs, masked variants where no face could be masked) have nothing to
export; they are counted per status in ``_export.json``, never dropped silently.

Parquet is scanned in record batches with only the needed columns, and files are written
by a thread pool, so memory stays bounded whatever the data set size.  No Ray: writing
files is I/O; one process with threads keeps a disk or an S3 endpoint busy.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import posixpath
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jobs import cli as job_cli
from jobs import storage
from jobs.cli import UsageError, option
from jobs.progress import ProgressLogger, format_duration, setup_logging
from masktheface import dataset_schema as S

log = logging.getLogger("jobs.export_images")

PROG = "python -m jobs.export_images"
EXPORT_SUMMARY = "_export.json"
ALIGNED_DIR = "aligned"


@dataclass(frozen=True)
class ExportConfig:
    """Write the images of a masked data set back to an image-folder tree."""

    input: str | None = option(None, "the masked data set (folder or s3:// prefix of jobs.mask_dataset)",
                               none_means="required, except with --smoke-test")
    output: str | None = job_cli.output_option("where to write the image folders (outside --input)")
    variants: tuple[str, ...] = job_cli.variants_option((), "only these variants, e.g. N95,original (each "
                                                        "must be in the data set)")
    status: tuple[str, ...] = option((), f"only rows with these statuses ({', '.join(S.STATUSES)})",
                                     metavar="S,S,...")
    aligned: bool = option(True, f"also write the aligned crops under {ALIGNED_DIR}/")
    images: bool = option(True, "write the full images")
    threads: int = option(16, "concurrent file writes")
    batch_rows: int = option(256, "rows per scanned batch")
    smoke_test: bool = job_cli.smoke_test_option("a 3-image data set masked here without Ray, exported")
    log_level: str = job_cli.log_level_option()

    def __post_init__(self) -> None:
        unknown = [s for s in self.status if s not in S.STATUSES]
        if unknown:
            raise UsageError(f"--status {','.join(unknown)}: unknown; one of {', '.join(S.STATUSES)}")
        if not (self.images or self.aligned):
            raise UsageError("--no-images with --no-aligned exports nothing")
        if self.threads < 1 or self.batch_rows < 1:
            raise UsageError("--threads and --batch-rows must be >= 1")


_SAME_FORMAT = {"jpg": {".jpg", ".jpeg"}, "jpeg": {".jpg", ".jpeg"}, "png": {".png"},
                "webp": {".webp"}, "bmp": {".bmp"}, "tif": {".tif", ".tiff"}, "tiff": {".tif", ".tiff"}}


def target_name(key: str, fmt: str) -> str:
    """The file name for an image encoded as ``fmt``: the key itself when its extension
    already says that format (``Aaron/Aaron_0001.jpg``, ``x/UPPER.JPG``), else the key with
    ``.<fmt>`` appended (``x/face.bmp`` -> ``x/face.bmp.jpg``), so that ``face.bmp`` and
    ``face.tif`` of one folder never land on the same file."""
    ext = posixpath.splitext(key)[1].lower()
    if ext in _SAME_FORMAT.get(fmt.lower(), {"." + fmt.lower()}):
        return key
    return f"{key}.{fmt}"


def check(cfg: ExportConfig) -> tuple[Any, str]:
    """Every input problem, before any file is written; -> the data set's (fs, path)."""
    assert cfg.input is not None and cfg.output is not None
    if storage.overlaps(cfg.output, cfg.input):
        raise UsageError(f"--output {cfg.output} and --input {cfg.input} overlap: writing image folders "
                         "into a data set would corrupt it; choose another --output")
    fs, root = storage.filesystem_for(cfg.input)
    if not S.data_files(fs, root):
        raise UsageError(f"--input {cfg.input}: no data files (Parquet of jobs.mask_dataset) there")
    if cfg.variants:
        have = set(S.read_table(root, [S.VARIANT], filesystem=fs).column(S.VARIANT).unique().to_pylist())
        missing = [v for v in cfg.variants if v not in have]
        if missing:
            raise UsageError(f"--variants {','.join(missing)}: not in {cfg.input} (it holds "
                             f"{', '.join(sorted(have))})")
    return fs, root


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the files; return (and write to ``<output>/_export.json``) the counts."""
    import pyarrow.dataset as pads

    t0 = time.perf_counter()
    fs, root = check(cfg)
    assert cfg.output is not None
    out_fs, out_root = storage.filesystem_for(cfg.output)
    storage.ensure_dir(cfg.output)
    columns = list(S.columns_for("export")) + ([S.IMAGE] if cfg.images else []) + ([S.ALIGNED] if cfg.aligned else [])
    flt = None
    if cfg.variants:
        flt = pads.field(S.VARIANT).isin(list(cfg.variants))
    if cfg.status:
        f2 = pads.field(S.STATUS).isin(list(cfg.status))
        flt = f2 if flt is None else (flt & f2)
    scanner = pads.dataset(S.data_files(fs, root), filesystem=fs, format="parquet").scanner(
        columns=columns, filter=flt, batch_size=cfg.batch_rows)
    made_dirs: set[str] = set()
    local = storage.is_local(cfg.output)

    def write(path: str, data: bytes) -> None:
        if local:  # object stores have no folders; locally create each one once
            d = posixpath.dirname(path)
            if d not in made_dirs:
                out_fs.create_dir(d, recursive=True)
                made_dirs.add(d)
        with out_fs.open_output_stream(path) as f:
            f.write(data)

    counts = {"rows": 0, "images": 0, "aligned": 0}
    no_image: collections.Counter = collections.Counter()
    per_variant: collections.Counter = collections.Counter()
    progress = ProgressLogger(what="rows", every_s=30.0, logger=log)
    with concurrent.futures.ThreadPoolExecutor(cfg.threads) as ex:
        for batch in scanner.to_batches():
            pending = []
            for r in batch.to_pylist():
                counts["rows"] += 1
                name = target_name(r[S.KEY], r[S.FORMAT])
                if cfg.images:
                    if r[S.IMAGE] is None:
                        no_image[r[S.STATUS]] += 1
                    else:
                        pending.append(ex.submit(write, f"{out_root}/{r[S.VARIANT]}/{name}", r[S.IMAGE]))
                        counts["images"] += 1
                        per_variant[r[S.VARIANT]] += 1
                if cfg.aligned and r[S.ALIGNED] is not None:
                    pending.append(ex.submit(write, f"{out_root}/{ALIGNED_DIR}/{r[S.VARIANT]}/{name}", r[S.ALIGNED]))
                    counts["aligned"] += 1
            for fut in pending:  # bounded memory: this batch's writes before the next scan
                fut.result()
            progress.update(batch.num_rows)
    summary = {"input": cfg.input, "output": cfg.output, **counts,
               "images_per_variant": dict(sorted(per_variant.items())),
               "rows_without_image": dict(sorted(no_image.items())),
               "seconds": round(time.perf_counter() - t0, 3)}
    storage.write_json(storage.join_uri(cfg.output, EXPORT_SUMMARY), summary)
    return summary


def smoke_config(cfg: ExportConfig, tmp: Path) -> ExportConfig:
    """--smoke-test: mask 3 LFW images (original + N95) with the library, write them as a
    one-file data set through the contract, export that."""
    import pyarrow.parquet as pq

    from masktheface import dataset as mds
    from masktheface.pipeline import Masker

    lfw = job_cli.smoke_data("lfw", "lfw-deepfunneled")
    variants = mds.plan_variants("custom", ("original", "N95"))
    masker, rows = Masker(), []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:3]:
        f = sorted(person.iterdir())[0]
        key = f"{person.name}/{f.name}"
        base = {S.KEY: key, S.IDENTITY: person.name, S.SOURCE: str(f), S.SEED: 0, S.FORMAT: "jpg",
                S.RUN_ID: "smoke", S.FACES_FROM: "detector", S.ALIGNED_SIZE: 160}
        rows += mds.variant_rows(masker.process(f.read_bytes(), key, variants, aligned=160), variants, base)
    (tmp / "data").mkdir()
    pq.write_table(S.table_from_rows(rows), tmp / "data" / "part-smoke.parquet")
    return dataclasses.replace(cfg, input=str(tmp / "data"), output=cfg.output or str(tmp / "images"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m jobs.export_images ...`` -> the counts (raises UsageError)."""
    cfg = job_cli.parse_config(ExportConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level)
    if cfg.smoke_test:
        job_cli.refuse_with_smoke_test(cfg, "input")
        cfg = smoke_config(cfg, Path(tempfile.mkdtemp(prefix="export_smoke_")))
    if not (cfg.input and cfg.output):
        raise UsageError("--input and --output are required (or --smoke-test)")
    return export(cfg)


def summarise(s: dict[str, Any]) -> str:
    """The human summary printed by the command."""
    return "\n".join([
        f"output: {s['output']}  (counts in {EXPORT_SUMMARY})",
        f"{s['images']} images ({job_cli.counts_text(s['images_per_variant'])}) and {s['aligned']} aligned crops "
        f"from {s['rows']} rows; rows without an image: {job_cli.counts_text(s['rows_without_image'])}",
        f"time: {format_duration(s['seconds'])}",
    ])


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.export_images``: exit status 0 / 2 (usage) / 3 (failed run)."""
    return job_cli.run_cli(main, argv, prog=PROG, summarise=summarise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
