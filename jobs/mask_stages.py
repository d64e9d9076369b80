"""The Ray Data stages of ``jobs.mask_dataset``: thin adapters that unpack a batch, call
the library (:meth:`Masker.process`, :mod:`masktheface.dataset`) and pack the result.

    from_arrow(input table) -> map_batches(read_files)   [s3:// only; local files are read
                                                           in the actors]
      -> map_batches(MaskBatch, actor pool)  one row per (input, variant), the fixed schema
      -> write_parquet(part-<run id>-...)
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from jobs import storage
from jobs.progress import ProgressLogger
from masktheface import dataset as mds
from masktheface import dataset_schema as S

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import pyarrow.fs as pafs

    from masktheface.pipeline import Variant

log = logging.getLogger("jobs.mask_dataset")

#: the columns of the table the driver hands to the first stage (one row per input)
_INPUT_COLUMNS = ("key", "identity", "source", "path", "boxes", "landmarks", "only")


def input_schema() -> "pa.Schema":
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("identity", pa.string()), ("source", pa.string()),
        ("path", pa.string()),                          # filesystem path (no scheme)
        ("boxes", pa.list_(pa.float32())),             # flattened (k,4); None: detect
        ("landmarks", pa.list_(pa.float32())),         # flattened (k,68,2); None: fit
        ("only", pa.list_(pa.string())),               # variants still missing; None: all
    ])


def input_table(items: Sequence[mds.InputItem], boxes: Mapping[str, list] | None,
                landmarks: Mapping[str, list] | None, only: Mapping[str, list[str]],
                input_uri: str) -> "pa.Table":
    """The driver's table of inputs (``boxes``/``landmarks`` from :mod:`masktheface.dataset`)."""
    import pyarrow as pa

    _, root = storage.filesystem_for(input_uri)
    scheme = "s3://" if storage.is_s3(input_uri) else ""
    cols: dict[str, list] = {n: [] for n in _INPUT_COLUMNS}
    for it in items:
        path = f"{root}/{it.key}"
        b = mds.lookup(boxes, it.key) if boxes else None
        lm = mds.lookup(landmarks, it.key) if landmarks else None
        for name, value in (("key", it.key), ("identity", it.identity), ("source", scheme + path),
                            ("path", path), ("boxes", [v for box in b for v in box] if b else None),
                            ("landmarks", [v for pts in lm for v in pts] if lm else None),
                            ("only", only.get(it.key))):
            cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=input_schema())


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
        except Exception as e:  # noqa: BLE001 - missing, permission, network: a row, not a dead job
            return None, f"cannot read {path}: {type(e).__name__}: {e}"

    if threads > 1 and len(paths) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(paths))) as ex:
            got = list(ex.map(one, paths))
    else:
        got = [one(p) for p in paths]
    batch = batch.append_column("data", pa.array([g[0] for g in got], pa.binary()))
    return batch.append_column("read_error", pa.array([g[1] for g in got], pa.string()))


@dataclass(frozen=True)
class MaskSettings:
    """What every MaskBatch actor needs (one small picklable object)."""

    variants: tuple["Variant", ...]
    seed: int
    aligned: int | None
    image_format: str
    quality: int
    run_id: str
    masker: Mapping[str, Any]                 # MaskerConfig keyword arguments
    read: Mapping[str, Any] | None = None     # read_files kwargs when the actor reads itself


class MaskBatch:
    """The actor: builds a Masker once; each call turns a batch of inputs into one output
    row per (input, variant) with the contract's schema."""

    def __init__(self, settings: MaskSettings, counter: Any = None) -> None:
        from masktheface.pipeline import Masker, MaskerConfig

        t0 = time.perf_counter()
        self.s = settings
        self.masker = Masker(MaskerConfig(**dict(settings.masker)))
        self.counter = counter
        self.node = _node_id()
        log.info("MaskBatch actor ready in %.1f s (pid %d)", time.perf_counter() - t0, os.getpid())

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import numpy as np

        s = self.s
        if s.read is not None:
            batch = read_files(batch, **s.read)
        rows: list[dict[str, Any]] = []
        statuses: collections.Counter = collections.Counter()
        inputs = batch.to_pylist()
        for r in inputs:
            boxes = landmarks = None
            faces_from = "detector"
            if r.get("landmarks"):
                landmarks = list(np.asarray(r["landmarks"], np.float32).reshape(-1, 68, 2))
                faces_from = "landmarks"
            elif r.get("boxes"):
                boxes = np.asarray(r["boxes"], np.float32).reshape(-1, 4).tolist()
                faces_from = "boxes"
            base = {S.KEY: r["key"], S.IDENTITY: r["identity"], S.SOURCE: r["source"], S.SEED: s.seed,
                    S.FORMAT: s.image_format, S.RUN_ID: s.run_id, S.FACES_FROM: faces_from,
                    S.ALIGNED_SIZE: s.aligned}
            if r.get("data") is None:
                err = r.get("read_error") or "not read"
                status = "too_large" if err.startswith("too_large:") else "read_error"
                new = mds.failure_rows(s.variants, base, status, err, r.get("only"))
            else:
                res = self.masker.process(r["data"], r["key"], s.variants, seed=s.seed, aligned=s.aligned,
                                          fmt=s.image_format, quality=s.quality, boxes=boxes, landmarks=landmarks)
                new = mds.variant_rows(res, s.variants, base, r.get("only"))
            statuses.update(row[S.STATUS] for row in new)
            rows.extend(new)
        if self.counter is not None:
            try:  # fire and forget: progress must never slow down or break the job
                self.counter.add.remote(len(inputs), dict(statuses), self.node)
            except Exception:  # noqa: BLE001  # pragma: no cover
                log.debug("progress counter unreachable", exc_info=True)
        return S.table_from_rows(rows)


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - only for the per-node tally
        return ""


class ProgressCounter:
    """A tiny Ray actor (num_cpus=0) the MaskBatch actors report to, so the driver can log
    images/s and ETA while Ray Data runs.  It also times the steady state: images after
    the first reported batch over the time since (actor start-up and model loads, paid
    once per actor, excluded), and counts the images each Ray node processed (work redone
    after a lost node counts again, on the node that redid it)."""

    def __init__(self) -> None:
        self.inputs = 0
        self.statuses: collections.Counter = collections.Counter()
        self.nodes: collections.Counter = collections.Counter()
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def add(self, n: int, statuses: Mapping[str, int], node: str = "") -> None:
        self.inputs += int(n)
        self.statuses.update(statuses)
        self.nodes[node] += int(n)
        now = time.time()
        if self.first is None:
            self.first = (now, self.inputs)
        self.last = (now, self.inputs)

    def get(self) -> tuple[int, dict[str, int]]:
        return self.inputs, dict(self.statuses)

    def by_node(self) -> dict[str, int]:
        return dict(self.nodes)

    def steady_rate(self) -> float | None:
        # a run of a few batches has no steady state worth the name
        if self.first is None or self.last is None or self.last[0] - self.first[0] < 2.0:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def filename_provider(run_id: str) -> Any:
    """``part-<run id>-<write uuid>_<task>.parquet``: unique per run, so a rerun never
    touches earlier files (Ray's default write mode appends, ``overwrite`` would delete)."""
    from ray.data.datasource import FilenameProvider

    class RunFilenames(FilenameProvider):
        def __init__(self) -> None:
            super().__init__(file_format="parquet")

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            # Ray insists on the full write UUID in the name (and no dot in the stem); it
            # appends "-<i>" per file of a task
            return f"part-{run_id}-{write_uuid}_{task_index:06d}.parquet"

    return RunFilenames()


def _log_progress(counter: Any, total: int, every_s: float, stop: threading.Event,
                  error_statuses: Sequence[str]) -> None:
    import ray

    p = ProgressLogger(total=total, what="images", every_s=0.0, logger=log)
    last = 0
    while not stop.wait(every_s):
        try:
            n, st = ray.get(counter.get.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the counter is best effort
            continue
        if n != last:
            p.done, last = n, n
            errors = sum(v for k, v in st.items() if k in error_statuses)
            rows = sum(st.values())
            log.info("%s; rows %d, error rows %d (%.2f%%)", p.message(), rows, errors,
                     100.0 * errors / rows if rows else 0.0)


@dataclass(frozen=True)
class Execution:
    """How the Ray part went: the Ray used, this run's files, seconds from the first block
    to the last file, the steady images/s (None on short runs), images processed per Ray
    node id (best effort: {} when the counter was lost)."""

    ray: Any
    files: list[str]
    seconds: float
    steady: float | None
    by_node: dict[str, int] = dataclasses.field(default_factory=dict)


def execute(cfg: Any, settings: MaskSettings, table: "pa.Table", out_fs: "pafs.FileSystem",
            out_root: str) -> Execution:
    """from_arrow -> [read_files] -> MaskBatch actors -> write_parquet, with a progress
    thread.  ``cfg``: the job's MaskDatasetConfig (Ray sizing, progress)."""
    from jobs.output_folder import run_files
    from jobs.raysetup import ray_context

    n_inputs = table.num_rows
    with ray_context(cfg.ray_address, cfg.num_cpus) as info:
        import ray  # after ray_context: it decides the auth settings Ray reads at import

        ctx = ray.data.DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = bool(cfg.progress_bars)
        # an actor without a batch to work on only costs its model load
        n_actors = cfg.num_actors or max(1, int(info.cpus))
        n_actors = max(1, min(n_actors, math.ceil(n_inputs / cfg.batch_size)))
        # small input blocks stream well (reads follow the actors' pace) without flooding
        # the object store with tiny objects on millions of inputs
        per_block = min(4096, max(cfg.batch_size, math.ceil(n_inputs / (n_actors * 4))))
        # the counter lives beside the driver (the head, on a cluster): a lost worker node
        # must not take the job's progress and per-node tally with it.  Hard affinity: it
        # needs no resources, and a soft one was seen to spill to a worker node under load
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        counter = ray.remote(num_cpus=0)(ProgressCounter).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        ds = ray.data.from_arrow([table.slice(i, per_block) for i in range(0, n_inputs, per_block)])
        if settings.read is None:
            in_fs, _ = storage.filesystem_for(cfg.input)
            ds = ds.map_batches(read_files, batch_format="pyarrow", batch_size=cfg.batch_size,
                                num_cpus=cfg.read_cpus, fn_kwargs={"filesystem": in_fs, "threads": cfg.read_threads,
                                                                   "max_bytes": cfg.max_file_bytes})
        ds = ds.map_batches(MaskBatch, batch_format="pyarrow", batch_size=cfg.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cfg.actor_cpus,
                            fn_constructor_args=(settings, counter))
        log.info("Ray %s (%g CPUs): %d masking actor(s) x %.2f CPU, blocks of <= %d inputs, files read in %s",
                 info.mode, info.cpus, n_actors, cfg.actor_cpus, per_block,
                 "tasks" if settings.read is None else "actors")
        stop = threading.Event()
        progress = threading.Thread(target=_log_progress, daemon=True,
                                    args=(counter, n_inputs, cfg.progress_every_s, stop, cfg.error_statuses))
        progress.start()
        t0 = time.perf_counter()
        try:
            ds.write_parquet(out_root, filesystem=out_fs, filename_provider=filename_provider(settings.run_id),
                             min_rows_per_file=cfg.rows_per_file, ray_remote_args={"num_cpus": cfg.read_cpus})
            seconds = time.perf_counter() - t0
            try:
                steady = ray.get(counter.steady_rate.remote(), timeout=30)
                by_node = ray.get(counter.by_node.remote(), timeout=30)
            except Exception as e:  # noqa: BLE001  # pragma: no cover - best effort
                log.warning("progress counter unreachable at the end (%s): no steady rate or per-node tally", e)
                steady, by_node = None, {}
        finally:
            ctx.enable_progress_bars = bars
            stop.set()
            progress.join(timeout=5)
            ray.kill(counter)
    return Execution(info, run_files(out_fs, out_root, settings.run_id), seconds, steady, by_node)
