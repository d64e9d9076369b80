"""The output folder of ``jobs.mask_dataset`` (local or ``s3://``): what is already done,
half-written files, earlier runs, starting over.  Ray-free: ``pyarrow.fs`` only.

Layout (data files as :func:`masktheface.dataset_schema.is_data_file` says)::

    <output>/part-<run id>-<write uuid>_<task>-<i>.parquet   the rows (one file set per run)
    <output>/_runs/<run id>.json                             every run's summary
    <output>/_summary.json                                   the latest run's summary
    <output>/_quarantine/<file>.corrupt                      unreadable files moved aside

Everything else under the output is left alone.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import posixpath
from typing import TYPE_CHECKING, Any, Sequence

from masktheface import dataset_schema as S

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

RUNS_DIR = "_runs"
SUMMARY_NAME = "_summary.json"
QUARANTINE_DIR = "_quarantine"


class UnreadableOutput(RuntimeError):
    """A data file that cannot be read where moving it aside is not allowed."""


def run_files(fs: "pafs.FileSystem", root: str, run_id: str) -> list[str]:
    """The data files written by run ``run_id``."""
    return [f for f in S.data_files(fs, root) if posixpath.basename(f).startswith(f"part-{run_id}-")]


def read_done(fs: "pafs.FileSystem", root: str, files: Sequence[str] | None = None,
              quarantine: bool = True) -> tuple["pa.Table", list[str]]:
    """The key/variant/status columns of every data file under ``root`` (cheap: column
    chunks only).  An unreadable file (a write killed half-way) is moved to
    ``_quarantine/`` so the data set stays readable and its inputs are redone; with
    ``quarantine=False`` it raises :class:`UnreadableOutput`.  -> (table, moved paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(S.columns_for("resume"))
    schema = S.arrow_schema(columns)
    files = S.data_files(fs, root) if files is None else list(files)

    def one(path: str) -> tuple[Any, str | None]:
        try:
            return pq.read_table(path, columns=columns, filesystem=fs).cast(schema), None
        except Exception as e:  # noqa: BLE001 - any unreadable file is handled the same way
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
            raise UnreadableOutput(f"unreadable Parquet file {err}")
        target = f"{root}/{QUARANTINE_DIR}/{path[len(root):].lstrip('/')}.corrupt"
        log.warning("unreadable Parquet file moved to %s (its inputs will be redone): %s", target, err)
        fs.create_dir(posixpath.dirname(target), recursive=True)
        fs.move(path, target)
        moved.append(target)
    if not tables:
        return schema.empty_table(), moved
    return pa.concat_tables(tables), moved


def clear_output(fs: "pafs.FileSystem", root: str) -> int:
    """Delete what the job wrote under ``root`` (data files, ``_runs/``, ``_quarantine/``,
    ``_summary.json``); anything else is left alone.  Returns the files deleted."""
    import pyarrow.fs as pafs

    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    n = 0
    for path in S.data_files(fs, root):
        fs.delete_file(path)
        n += 1
    for d in (RUNS_DIR, QUARANTINE_DIR):
        if fs.get_file_info(f"{root}/{d}").type == pafs.FileType.Directory:
            n += sum(1 for f in fs.get_file_info(pafs.FileSelector(f"{root}/{d}", recursive=True))
                     if f.type == pafs.FileType.File)
            fs.delete_dir(f"{root}/{d}")
    if fs.get_file_info(f"{root}/{SUMMARY_NAME}").type == pafs.FileType.File:
        fs.delete_file(f"{root}/{SUMMARY_NAME}")
        n += 1
    return n


def previous_runs(fs: "pafs.FileSystem", root: str) -> list[dict[str, Any]]:
    """The summaries in ``_runs/``, oldest first."""
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


def settings_conflict(runs: Sequence[dict[str, Any]], fingerprint: dict[str, Any]) -> str | None:
    """Why the output cannot be resumed with ``fingerprint`` (the first earlier run made
    with other settings, and which settings), or None."""
    for prev in runs:
        old = prev.get("fingerprint") or {}
        if old != fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(old) if old.get(k) != fingerprint.get(k))
            return f"run {prev.get('run_id')} was made with other settings ({', '.join(diff)})"
    return None
