"""Export a masked Parquet data set (the output of ``jobs.mask_dataset``) to image files.

    python -m jobs.export_images --input s3://out/lfw-sm --output /data/lfw-sm-images

Layout (local folder or ``s3://``)::

    <output>/<variant>/<key>                 the image (``.<format>`` appended when the
                                             key's extension names another format)
    <output>/aligned/<variant>/<key>         the aligned crop (--aligned)
    <output>/_export.json                    counts

``key`` is the input's path under the data set root, so the identity-folder layout comes
back as it was: ``N95/Aaron_Eckhart/Aaron_Eckhart_0001.jpg``.  Rows without image bytes
(undecodable inputs, masked variants where no face could be masked) have nothing to
export; they are counted per status in ``_export.json``, never dropped silently.

Streaming: Parquet is scanned in record batches with only the needed columns, and the
files are written by a thread pool, so memory stays bounded whatever the data set size.
No Ray: writing files is I/O, one process with threads keeps a disk or an S3 endpoint
busy; run several exports with ``--variants`` for more.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import posixpath
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from jobs import common

log = logging.getLogger("jobs.export_images")

EXPORT_SUMMARY = "_export.json"


@dataclass(frozen=True)
class ExportConfig:
    """Write the images of a masked Parquet data set back to an image-folder tree."""

    input: str = field(metadata={"help": "the Parquet data set (folder or s3:// prefix)"})
    output: str = field(metadata={"help": "folder or s3:// prefix to write the images to"})
    variants: tuple[str, ...] = field(default=(), metadata={
        "help": "only these variants (space-separated; default: all)"})
    status: tuple[str, ...] = field(default=(), metadata={
        "help": "only rows with these statuses (default: every row that has an image)"})
    aligned: bool = field(default=True, metadata={"help": "also write the aligned crops under aligned/"})
    images: bool = field(default=True, metadata={"help": "write the full images"})
    threads: int = field(default=16, metadata={"help": "concurrent file writes"})
    batch_rows: int = field(default=256, metadata={"help": "rows per scanned batch"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})


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


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the files; return (and write to ``<output>/_export.json``) the counts."""
    import pyarrow.dataset as pads

    t0 = time.perf_counter()
    fs, root = common.filesystem_for(cfg.input)
    out_fs, out_root = common.filesystem_for(cfg.output)
    common.ensure_dir(cfg.output)
    # pyarrow skips files and folders starting with "_" or "." (_runs/, _quarantine/)
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    columns = ["key", "variant", "status", "format"] + (["image"] if cfg.images else []) \
        + (["aligned"] if cfg.aligned else [])
    flt = None
    if cfg.variants:
        flt = pads.field("variant").isin(list(cfg.variants))
    if cfg.status:
        f2 = pads.field("status").isin(list(cfg.status))
        flt = f2 if flt is None else (flt & f2)
    scanner = dataset.scanner(columns=columns, filter=flt, batch_size=cfg.batch_rows)

    made_dirs: set[str] = set()
    local = not common.is_s3(cfg.output) and "://" not in cfg.output

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
    progress = common.ProgressLogger(what="rows", every_s=30.0, logger=log)
    with concurrent.futures.ThreadPoolExecutor(max(1, cfg.threads)) as ex:
        pending: list[concurrent.futures.Future] = []
        for batch in scanner.to_batches():
            cols = {name: batch.column(name).to_pylist() for name in columns}
            for i in range(batch.num_rows):
                key, variant, status, fmt = (cols["key"][i], cols["variant"][i], cols["status"][i],
                                             cols["format"][i])
                counts["rows"] += 1
                name = target_name(key, fmt)
                img = cols["image"][i] if cfg.images else None
                crop = cols["aligned"][i] if cfg.aligned else None
                if cfg.images:
                    if img is None:
                        no_image[status] += 1
                    else:
                        pending.append(ex.submit(write, f"{out_root}/{variant}/{name}", img))
                        counts["images"] += 1
                        per_variant[variant] += 1
                if crop is not None:
                    pending.append(ex.submit(write, f"{out_root}/aligned/{variant}/{name}", crop))
                    counts["aligned"] += 1
            # bounded memory: wait for this batch's writes before scanning the next
            for fut in pending:
                fut.result()
            pending.clear()
            progress.update(batch.num_rows)
    summary = {"input": cfg.input, "output": cfg.output, **counts,
               "images_per_variant": dict(sorted(per_variant.items())),
               "rows_without_image": dict(sorted(no_image.items())),
               "seconds": round(time.perf_counter() - t0, 3)}
    common.write_json(common.join_uri(cfg.output, EXPORT_SUMMARY), summary)
    log.info("exported %d image(s) and %d aligned crop(s) from %d row(s) to %s in %s; rows without "
             "an image: %s", counts["images"], counts["aligned"], counts["rows"], cfg.output,
             common.format_duration(summary["seconds"]), dict(no_image) or "none")
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = common.parse_dataclass(ExportConfig, argv, prog="python -m jobs.export_images")
    common.setup_logging(cfg.log_level)
    return export(cfg)


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(main()))
    sys.exit(0)
