"""Score a face embedder on verification pairs, with masks on either side (the paper's Sec. 5).

    python -m jobs.evaluate --pairs ../shared/data/lfw/pairs.txt \\
        --images ../shared/data/lfw/lfw-deepfunneled --model dlib --output out/lfw_sm

A thin Ray adapter around :mod:`facenet.verify`::

    pairs file -> distinct images -> Ray Data actor pool (EmbedActor = facenet.verify's
    VariantEmbedder: read, decode, find the face once, draw every mask variant, align every
    variant from the UNMASKED landmarks, embed) -> one row per (image, variant) with status
    -> driver: facenet.verify.compute_metrics -> metrics.json, heatmaps, ROC, bar chart,
    clusters, report.md/html (facenet.report)

Each distinct (image, variant) is embedded once; ``OUTPUT/embeddings.npz`` caches them for
a rerun with the same settings (saved every ``--save-every-s`` while embedding, so a rerun
after a killed driver or a lost cluster embeds only what is missing).  An image where
nothing works is a status row; its pairs are *missing*: metrics are over valid pairs and
``accuracy_all`` counts missing pairs as errors.  ``--images`` is a folder/prefix (local
or s3://) of ``Name/Name_0001.jpg`` files, or a masked data set of ``jobs.mask_dataset``
(Parquet; its masked images are used).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from facenet import verify
from jobs import cli as job_cli
from jobs import storage
from jobs.cli import RunFailed, UsageError, option
from jobs.progress import ProgressLogger, format_duration, setup_logging
from masktheface import dataset_schema as S

log = logging.getLogger("jobs.evaluate")

PROG = "python -m jobs.evaluate"
SMOKE_PAIRS = 40


@dataclass(frozen=True)
class EvaluateConfig:
    """Verification metrics of a face embedder on a pairs file, masks on either side."""

    pairs: str | None = option(None, "pairs file (LFW pairs.txt layout, or MFR2's headerless one; local or s3://)",
                               none_means="required, except with --smoke-test")
    images: str | None = option(None, "image root folder/prefix (local or s3://), or a masked data set "
                                "of jobs.mask_dataset (Parquet)", none_means="required, except with --smoke-test")
    output: str | None = job_cli.output_option("output folder")
    model: str = option("dlib", "'dlib' (dlib's ResNet, a no-mask network), 'dlib-torch', or a FaceNet checkpoint")
    variants: tuple[str, ...] = job_cli.variants_option(
        verify.PAPER_VARIANTS, "variants to embed: 'original' and/or mask entries (N95, cloth-checks, ...)")
    mixed: bool = option(False, "add the 'mixed' pseudo-variant (one of the masked variants drawn per image)")
    far: tuple[float, ...] = option((0.001,), "FAR targets, FP/(FP+TN), each in (0, 1)", metavar="F,F,...")
    prealigned: bool = option(False, "images are aligned face crops (MFR2): landmarks fitted in a fixed box")
    prealigned_detect: bool = option(True, "with --prealigned, let the detector try first on each crop")
    limit_pairs: int | None = option(None, "use only N pairs, evenly spaced over the file (after --folds)",
                                     none_means="all")
    folds: tuple[int, ...] = option((), "use only these folds (0-based, whole folds)", metavar="I,J,...")
    seed: int = job_cli.seed_option()
    flip_sum: bool = option(False, "embed mirrored faces too and sum")
    fallback_box: tuple[float, float, float, float] | None = option(
        verify.LFW_CENTRE_BOX, "x0,y0,x1,y1 (fractions of the image) where landmarks are fitted when no face "
        "is detected; 'none' reports no_face instead", metavar="X0,Y0,X1,Y1")
    cluster: bool = option(False, "cluster the original-variant embeddings (paper Fig. 5)")
    compare: str | None = option(None, "metrics.json of another model for the bar chart (paper Fig. 4)")
    label: str | None = option(None, "name of this model in plots", none_means="from --model")
    title: str = option("", "report title")
    reuse_embeddings: bool = option(True, "reuse OUTPUT/embeddings.npz from an identical earlier run")
    save_every_s: float = option(60.0, "while embedding, save what is done to OUTPUT/embeddings.npz this often "
                                 "(seconds; 0: only at the end), so a killed run's rerun starts from there")
    ray_address: str | None = job_cli.ray_address_option()
    num_cpus: int | None = job_cli.num_cpus_option()
    num_actors: int | None = job_cli.num_actors_option("embedding", "one per GPU, else one per CPU")
    actor_cpus: float = job_cli.actor_cpus_option(1.0)
    batch_size: int = job_cli.batch_size_option(8, "images per actor call")
    max_error_rate: float = job_cli.max_error_rate_option(0.5, "(image, variant)s has no embedding")
    smoke_test: bool = job_cli.smoke_test_option(f"{SMOKE_PAIRS} LFW pairs, original x N95")
    log_level: str = job_cli.log_level_option()

    def __post_init__(self) -> None:
        bad = [f for f in self.far if not 0.0 < f < 1.0]
        if not self.far or bad:
            raise UsageError(f"--far wants targets in (0, 1), e.g. 0.001,0.0022; got {','.join(map(str, self.far))}")
        try:
            verify.check_variants(self.variants)
        except ValueError as e:
            raise UsageError(f"--variants: {e}") from None
        if self.mixed and not any(v != verify.ORIGINAL for v in self.variants):
            raise UsageError("--mixed needs at least one masked variant in --variants")
        b = self.fallback_box
        if b is not None and not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            raise UsageError(f"--fallback-box wants x0,y0,x1,y1 fractions with x0<x1, y0<y1, got {b}")
        for name in ("limit_pairs", "num_actors", "batch_size", "num_cpus"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if any(f < 0 for f in self.folds):
            raise UsageError(f"--folds are 0-based fold numbers, got {self.folds}")
        if not 0.0 <= self.max_error_rate <= 1.0 or self.actor_cpus <= 0 or self.save_every_s < 0:
            raise UsageError("--max-error-rate must lie in [0, 1], --actor-cpus be > 0 and --save-every-s >= 0")


# ------------------------------------------------------------------------------------------
# inputs, checked before any work
# ------------------------------------------------------------------------------------------

def is_parquet_source(uri: str) -> bool:
    """True when ``uri`` is a ``.parquet`` file or a folder/prefix holding data files."""
    if uri.rstrip("/").lower().endswith(".parquet"):
        return True
    fs, path = storage.filesystem_for(uri)
    try:
        return bool(S.data_files(fs, path))
    except OSError:
        return False


def load_pairs(cfg: EvaluateConfig) -> tuple[list, np.ndarray, np.ndarray]:
    """-> (pairs, issame bool (P,), folds int (P,)) after --folds / --limit-pairs."""
    from facenet.pairs import pairs_arrays, read_pairs, stratified_folds

    assert cfg.pairs is not None
    try:
        text = None if storage.is_local(cfg.pairs) else storage.read_bytes(cfg.pairs).decode("utf-8")
        pairs = read_pairs(cfg.pairs, text=text)
    except FileNotFoundError:
        raise UsageError(f"--pairs {cfg.pairs}: file not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--pairs {cfg.pairs}: not a pairs file: {e}") from None
    except OSError as e:  # storage: no such bucket, no access
        raise UsageError(f"--pairs {cfg.pairs}: cannot be read: {e}") from None
    one_set = len({p.fold for p in pairs}) == 1  # View 1's DevTest: one set, no folds of its own
    if cfg.folds:
        pairs = [p for p in pairs if p.fold in set(cfg.folds)]
    if cfg.limit_pairs is not None and cfg.limit_pairs < len(pairs):
        # evenly spaced over the file, so a small subset still spans every fold and both
        # classes (LFW lists 300 same pairs before 300 different ones in each fold)
        idx = np.unique(np.linspace(0, len(pairs) - 1, cfg.limit_pairs).round().astype(int))
        pairs = [pairs[i] for i in idx]
    if not pairs:
        raise UsageError(f"no pairs left from {cfg.pairs} (--folds {cfg.folds}, --limit-pairs {cfg.limit_pairs})")
    issame, folds = pairs_arrays(pairs)
    if one_set:  # 10 stratified folds, so thresholds are chosen on held-out pairs as on View 2
        folds = stratified_folds(issame, 10)
    return pairs, issame, folds


def check_images(cfg: EvaluateConfig) -> bool:
    """--images exists; a data set must hold every variant asked for.  -> is it Parquet."""
    assert cfg.images is not None
    if not storage.exists(cfg.images):
        raise UsageError(f"--images {cfg.images}: not found")
    if not is_parquet_source(cfg.images):
        return False
    fs, path = storage.filesystem_for(cfg.images)
    have = set(S.read_table(path, [S.VARIANT], filesystem=fs).column(S.VARIANT).unique().to_pylist())
    missing = [v for v in cfg.variants if v not in have]
    if missing:
        raise UsageError(f"--variants {','.join(missing)}: not in the data set {cfg.images} "
                         f"(it holds {', '.join(sorted(have)) or 'nothing'})")
    return True


def fingerprint(cfg: EvaluateConfig) -> str:
    """What decides an embedding besides its image: source, model, seed, alignment options.
    Variants and keys are not part of it: the cache is per (image, variant)."""
    parts = [cfg.images, cfg.model, cfg.seed, cfg.prealigned, cfg.flip_sum, cfg.fallback_box, "rng:name"]
    if cfg.prealigned:
        parts.append(cfg.prealigned_detect)
    return hashlib.sha256("\n".join(repr(p) for p in parts).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------

class EmbedActor:
    """Ray Data callable class around :class:`facenet.verify.VariantEmbedder`: a batch of
    image keys (folder mode) or data-set rows -> one row per (image, variant)."""

    def __init__(self, *, images: str, parquet: bool, wanted: Sequence[str] | None = None, **embedder: Any) -> None:
        import cv2

        cv2.setNumThreads(1)  # one actor per core; OpenCV's own threads would oversubscribe
        setup_logging("INFO")
        self.images, self.parquet = images, parquet
        self.wanted = set(wanted) if wanted is not None else None
        self.embedder = verify.VariantEmbedder(**embedder)
        self.schema = _schema(self.embedder.dim)

    def __call__(self, batch: dict) -> Any:
        import pyarrow as pa

        if self.parquet:
            cols = list(batch)
            rows = self.embedder.stored_rows(({c: batch[c][i] for c in cols} for i in range(len(batch[S.KEY]))),
                                             self.wanted)
        else:
            rows = []
            for key in map(str, batch[S.KEY]):
                data, err = None, None
                try:
                    data = storage.read_bytes(storage.join_uri(self.images, key))
                except Exception as e:  # noqa: BLE001 - missing file, permission, network: a row
                    err = f"{type(e).__name__}: {e}"
                rows.extend(self.embedder.image_rows(key, data, err))
        cols = {n: [r.get(n) for r in rows] for n in (S.KEY, S.VARIANT, S.STATUS, S.ERROR, "method")}
        cols["embedding"] = [None if r["embedding"] is None else np.asarray(r["embedding"], np.float32) for r in rows]
        return pa.table(cols, schema=self.schema)


def _schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([(S.KEY, pa.string()), (S.VARIANT, pa.string()), (S.STATUS, pa.string()),
                      (S.ERROR, pa.string()), ("method", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


def _model_uses_gpu(model: str) -> bool:
    """A GPU helps a torch model; dlib only when built with CUDA (dlib-bin is not)."""
    if model == "dlib":
        try:
            import dlib
            return bool(getattr(dlib, "DLIB_USE_CUDA", False))
        except ImportError:
            return False
    return True


def embed_images(cfg: EvaluateConfig, keys: Sequence[str], parquet: bool,
                 save: Callable[[verify.Embeddings], None] | None = None) -> verify.Embeddings:
    """Embed every (image, variant) once on a Ray Data actor pool; a status for each.
    ``save(partial)`` is called every ``cfg.save_every_s`` seconds with what has come back
    so far (entries not yet back are ``not_embedded``)."""
    from jobs.raysetup import init_ray

    info = init_ray(cfg.ray_address, cfg.num_cpus)
    import ray  # after init_ray: it decides the auth settings Ray reads at import
    import ray.data

    use_gpu = info.gpus > 0 and _model_uses_gpu(cfg.model)
    # Parquet is read by Ray Data read tasks that need a CPU of their own: a pool holding
    # every CPU deadlocks (measured: the job hangs).  from_items has no read tasks.
    n_actors = cfg.num_actors or (int(info.gpus) if use_gpu else
                                  max(1, int((info.cpus - (1.0 if parquet else 0.0)) // cfg.actor_cpus)))
    log.info("embedding %d images x %d variants (%s) with %d actor(s)%s, source %s", len(keys), len(cfg.variants),
             ",".join(cfg.variants), n_actors, " on GPU" if use_gpu else "", "data set" if parquet else "folder")
    ctor = dict(model=cfg.model, images=cfg.images, variants=list(cfg.variants), seed=cfg.seed,
                prealigned=cfg.prealigned, flip_sum=cfg.flip_sum, prealigned_detect=cfg.prealigned_detect,
                fallback_box=cfg.fallback_box, parquet=parquet, wanted=list(keys) if parquet else None)
    t0 = time.perf_counter()
    if parquet:
        fs, path = storage.filesystem_for(cfg.images)
        ds = ray.data.read_parquet(S.data_files(fs, path), filesystem=fs).select_columns(
            list(S.columns_for("evaluate")))
    else:
        ds = ray.data.from_items([{S.KEY: k} for k in keys],
                                 override_num_blocks=max(1, min(len(keys) // cfg.batch_size, 400)))
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs=ctor, batch_size=cfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cfg.actor_cpus,
                        num_gpus=1 if use_gpu else 0, runtime_env=storage.worker_runtime_env() or None)
    progress = ProgressLogger(total=None if parquet else len(keys) * len(cfg.variants), what="embeddings",
                              every_s=30.0, logger=log)
    E = verify.Embeddings.empty(keys, cfg.variants)
    last_save = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        E.fill(batch.to_pylist())
        progress.update(batch.num_rows)
        if save is not None and cfg.save_every_s and time.monotonic() - last_save >= cfg.save_every_s:
            E.seconds = time.perf_counter() - t0
            save(E)
            last_save = time.monotonic()
    progress.finish()
    E.seconds = time.perf_counter() - t0
    return E


# ------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------

def embeddings_for(cfg: EvaluateConfig, keys: list[str], parquet: bool) -> verify.Embeddings:
    """The (keys x variants) embeddings: from the cache where an earlier run with the same
    settings made them, the rest embedded now (and the cache updated)."""
    fp = fingerprint(cfg)
    path = storage.join_uri(cfg.output, "embeddings.npz")
    cache = None
    if cfg.reuse_embeddings and storage.exists(path):
        cache = verify.Embeddings.from_bytes(storage.read_bytes(path), fp)
    E = verify.select(cache, keys, cfg.variants) if cache is not None else None
    todo = keys if E is None else [k for i, k in enumerate(keys) if (E.status[i] == verify.NOT_EMBEDDED).any()]
    if E is not None:
        log.info("reusing %s: %d of %d images already embedded", path, len(keys) - len(todo), len(keys))
    if todo:
        before = cache

        def save(partial: verify.Embeddings) -> None:
            done = int((partial.status != verify.NOT_EMBEDDED).sum())
            storage.write_bytes(path, (partial if before is None else verify.merge(before, partial)).to_bytes(fp))
            log.info("saved %d embeddings so far to %s", done, path)

        new = embed_images(cfg, todo, parquet, save)
        cache = new if cache is None else verify.merge(cache, new)
        storage.write_bytes(path, cache.to_bytes(fp))
        E = verify.select(cache, keys, cfg.variants)
    assert E is not None
    return E


def write_report(cfg: EvaluateConfig, metrics: dict, clusters: dict | None) -> None:
    """metrics.json, the PNGs and report.md/html into --output."""
    from facenet import report

    compare = storage.read_json(cfg.compare) if cfg.compare else None
    figures = report.make_figures(metrics, compare=compare, clusters=clusters)
    for name, png in figures.items():
        storage.write_bytes(storage.join_uri(cfg.output, name), png)
    metrics["figures"] = sorted(figures)
    storage.write_json(storage.join_uri(cfg.output, "metrics.json"), metrics)
    title = cfg.title or f"Verification of {metrics['model']} on {os.path.basename(cfg.pairs or '')}"
    storage.write_bytes(storage.join_uri(cfg.output, "report.md"), report.render_markdown(metrics, title).encode())
    storage.write_bytes(storage.join_uri(cfg.output, "report.html"), report.render_html(metrics, title).encode())


def run(cfg: EvaluateConfig) -> dict:
    """Validate every input, embed, score, write; returns the metrics dict.  UsageError
    before any work; RunFailed past --max-error-rate (after writing the report)."""
    from facenet.pairs import unique_images

    t0 = time.perf_counter()
    if not (cfg.pairs and cfg.images and cfg.output):
        raise UsageError("--pairs, --images and --output are required (or --smoke-test)")
    pairs, issame, folds = load_pairs(cfg)
    parquet = check_images(cfg)
    if compare := cfg.compare:
        if not storage.exists(compare):
            raise UsageError(f"--compare {compare}: not found")
    keys = unique_images(pairs)
    log.info("%d pairs (%d same) over %d images, folds %s", len(pairs), int(issame.sum()), len(keys),
             sorted(set(folds.tolist())))
    storage.ensure_dir(cfg.output)
    E = embeddings_for(cfg, keys, parquet)
    n_bad = int((E.status != verify.OK).sum())
    rate = n_bad / max(E.status.size, 1)
    log.info("embeddings: %d of %d (image, variant)s failed (%.2f%%) in %s", n_bad, E.status.size, 100 * rate,
             format_duration(E.seconds))
    metrics, clusters = verify.compute_metrics(
        pairs, issame, folds, E, far=cfg.far, mixed=cfg.mixed, seed=cfg.seed, cluster=cfg.cluster,
        model=verify.model_label(cfg.model, cfg.label), config=cfg)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(cfg, metrics, clusters)
    if rate > cfg.max_error_rate:
        raise RunFailed(f"{n_bad} of {E.status.size} (image, variant)s have no embedding ({100 * rate:.1f}% > "
                        f"--max-error-rate {100 * cfg.max_error_rate:.1f}%); see {cfg.output}/metrics.json "
                        "'failures'", metrics)
    return metrics


def smoke_config(cfg: EvaluateConfig) -> EvaluateConfig:
    """--smoke-test: 40 LFW View 2 pairs (both classes, every fold), original x N95."""
    lfw = job_cli.smoke_data("lfw", "pairs.txt").parent
    return dataclasses.replace(cfg, pairs=str(lfw / "pairs.txt"), images=str(lfw / "lfw-deepfunneled"),
                               output=cfg.output or tempfile.mkdtemp(prefix="evaluate-smoke-"),
                               limit_pairs=SMOKE_PAIRS, variants=("original", "N95"))


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m jobs.evaluate ...`` -> the metrics dict (raises UsageError / RunFailed)."""
    cfg = job_cli.parse_config(EvaluateConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level)
    if cfg.smoke_test:
        job_cli.refuse_with_smoke_test(cfg, "pairs", "images", "limit_pairs", "folds")
        cfg = smoke_config(cfg)
    return run(cfg)


def summarise(m: dict) -> str:
    """The human summary printed by the command."""
    base = m["variants"][0]
    b = m["cells"][base][base]
    far = ", ".join(f"TPR@FAR={t:g} {job_cli.percent(b.get(f'tpr@far={lab}'))}"
                    for t, lab in zip(m["far_targets"], verify.far_labels(m["far_targets"])))
    def acc(tp: tuple[str, str]) -> float:
        v = m["cells"][tp[0]][tp[1]].get("accuracy")
        return 2.0 if v is None else float(v)  # null (no valid pair) never counts as lowest

    worst = min(((t, p) for t in m["variants"] for p in m["variants"]), key=acc)
    out = m["config"].get("output")
    return "\n".join([
        f"output: {out}  (metrics.json, report.md, report.html, {len(m.get('figures', []))} figures)",
        f"{m['n_pairs']} pairs over {m['n_images']} images x {len(m['variants'])} variants; "
        f"{m['n_failures']} (image, variant)s failed",
        f"{base} x {base}: accuracy {job_cli.percent(b.get('accuracy'))}, {far}",
        f"lowest: {worst[0]} x {worst[1]}: accuracy {job_cli.percent(m['cells'][worst[0]][worst[1]].get('accuracy'))}",
        f"time: {format_duration(m.get('seconds'))}",
    ])


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.evaluate``: exit status 0 / 2 (usage) / 3 (failed run)."""
    return job_cli.run_cli(main, argv, prog=PROG, summarise=summarise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
