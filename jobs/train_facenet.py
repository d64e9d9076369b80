"""Train FaceNet with triplet loss, data-parallel with Ray Train.

    python -m jobs.train_facenet --smoke-test          # 2 CPU workers, a few steps on glint_subset
    python -m jobs.train_facenet --data out/lfw-train-sm --variants original,N95,cloth \\
        --model dlib_resnet --trainable head --epochs 6 --name masknet --output out/train
    python -m jobs.train_facenet --folders ../shared/data/celeba_subset --mask-prob 0.5 ...

The job is a thin adapter around :mod:`facenet.train`::

    driver: load records (Parquet of jobs.mask_dataset and/or image folders), check them,
            hold out validation identities, ray.put them
    TorchTrainer(num_workers, use_gpu) -> train_loop_per_worker:
      [1] shard   - this worker's P×K index batches (facenet.sampler, disjoint identities)
      [2] prepare - ray.train.torch.prepare_model (DDP; gloo on CPU, NCCL on GPU)
      [3] step    - facenet.train.run_epoch (global triplet mining over all workers)
      [4] report  - metrics (+ a checkpoint from rank 0) every epoch and every N steps
    driver: export the last checkpoint's model.pt where jobs.evaluate --model reads it

A rerun with the same ``--name`` and ``--output`` resumes from the last checkpoint (mid-
epoch included); ``--max-failures`` restarts killed workers from it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from facenet.train import MODEL_FILE, TrainConfig
from jobs import storage
from jobs.cli import (
    RAY_GROUP,
    RUN_GROUP,
    RunFailed,
    UsageError,
    log_level_option,
    num_cpus_option,
    option,
    ray_address_option,
    refuse_with_smoke_test,
    run_cli,
    smoke_data,
    smoke_test_option,
    variants_option,
)
from jobs.progress import setup_logging
from jobs.raysetup import ray_context

log = logging.getLogger("jobs.train_facenet")

PROG = "python -m jobs.train_facenet"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainJobConfig(TrainConfig):
    """Train FaceNet (triplet loss, online P×K mining) on masked and unmasked faces with Ray
    Train.  The training arithmetic is :class:`facenet.train.TrainConfig` (inherited: model,
    epochs, P, K, mining, optimiser, schedule, ...); these fields say where the data, the
    workers and the checkpoints are."""

    data: tuple[str, ...] = option((), "Parquet data sets written by jobs.mask_dataset (local or s3://)",
                                   metavar="URI,...")
    folders: tuple[str, ...] = option((), "identity-folder image trees (<identity>/<image>; unmasked, landmarks "
                                      "found with dlib)", metavar="DIR,...")
    variants: tuple[str, ...] = variants_option((), "variants of --data to train on (empty: all)")
    exclude_identities: str | None = option(None, "a file of identities (one per line) to leave out of training, "
                                            "e.g. those too close to an evaluation set", none_means="none")
    prealigned: bool = option(False, "--folders hold aligned face crops: landmarks fitted in a fixed box where "
                              "HOG misses")
    max_per_identity: int = option(0, "use at most N images per identity of --folders (0: all)")
    val_holdout: int = option(4, "identities held out of training; validation pairs come from them (0: no validation)")
    val_pairs: int = option(200, "validation pairs drawn from the held-out identities")
    val_mask: str = option("N95", "mask type on the probe side of the masked validation pairs ('none': unmasked only)")
    mask_prob: float = option(0.0, "online masks: chance that an unmasked image gets a random mask while loading")
    mask_types: tuple[str, ...] = option(("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth"),
                                         "mask types drawn for online masks", metavar="A,B,...")
    clean: bool = option(False, "online masks in the clean look: no scene tint, grain, JPEG matching, "
                         "shadow, creases or fit variation (as jobs.mask_dataset --clean)")
    jitter: float = option(0.02, "random crop shift, as a fraction of the crop side")
    name: str = option("facenet", "run name: a rerun with the same name and output resumes from its last checkpoint")
    output: str = option("out/train", "storage of runs: checkpoints, metrics and the model go to OUTPUT/NAME "
                         "(a folder or s3://bucket/prefix)")
    export: str | None = option(None, "where to write the final model.pt", none_means="OUTPUT/NAME/model.pt")
    num_workers: int = option(2, "Ray Train workers (data-parallel)", group=RAY_GROUP)
    use_gpu: bool = option(False, "one GPU per worker (bf16 autocast, channels_last)", group=RAY_GROUP)
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker", group=RAY_GROUP)
    loader_threads: int = option(2, "threads per worker that load the samples of a batch (decode, crop, online "
                                 "masks; 0 or 1: one after the other)", group=RAY_GROUP)
    prefetch: int = option(1, "batches each worker loads ahead in the background while it trains (0: off)",
                           group=RAY_GROUP)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = option(
        "PACK", "how workers are placed on nodes: PACK fills few nodes (fast all-gather), SPREAD puts them "
        "on different nodes where it can (a lost node takes fewer workers)", group=RAY_GROUP)
    max_failures: int = option(1, "restarts from the last checkpoint after a worker dies", group=RUN_GROUP)
    keep: int = option(2, "checkpoints to keep", group=RUN_GROUP)
    checkpoint_every: int = option(0, "also checkpoint every N steps (0: once per epoch)", group=RUN_GROUP)
    kill_worker_at_step: int = option(0, "fault drill: the last worker kills its own process at this global step, "
                                      "once per run folder (0: off)", group=RUN_GROUP)
    ray_address: str | None = ray_address_option()
    num_cpus: int | None = num_cpus_option()
    smoke_test: bool = smoke_test_option("2 CPU workers, MobileFaceNet from scratch, a few steps on glint_subset")
    log_level: str = log_level_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [(self.num_workers >= 1, "--num-workers must be >= 1"),
                  (0.0 <= self.mask_prob <= 1.0, "--mask-prob must be within 0..1"),
                  (self.val_holdout >= 0 and self.val_pairs >= 2, "--val-holdout >= 0 and --val-pairs >= 2"),
                  (self.cpus_per_worker > 0, "--cpus-per-worker must be > 0"),
                  (self.loader_threads >= 0 and self.prefetch >= 0, "--loader-threads and --prefetch must be >= 0"),
                  (self.keep >= 1, "--keep must be >= 1"), (bool(self.name.strip()), "--name must not be empty")]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        from masktheface.spec import RANDOM_TYPES
        bad = [t for t in self.mask_types + ((self.val_mask,) if self.val_mask != "none" else ())
               if t not in RANDOM_TYPES]
        if bad:
            raise UsageError(f"unknown mask type(s) {bad}; known: {', '.join(RANDOM_TYPES)}")

    def train_config(self) -> TrainConfig:
        """The training arithmetic alone (what checkpoints store)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


# ------------------------------------------------------------------------------------------
# Driver side: records, validation, checks before any work
# ------------------------------------------------------------------------------------------

def load_records(job: TrainJobConfig):
    """The training records of ``--data`` and ``--folders`` (facenet.data.FaceRecords)."""
    from facenet import data as fdata
    from masktheface import dataset_schema as S

    parts = []
    for uri in job.data:
        fs, path = storage.filesystem_for(uri)
        table = S.read_table(path, S.columns_for("train"), filesystem=fs)
        if table.num_rows == 0:
            raise UsageError(f"--data {uri}: no data files (Parquet of jobs.mask_dataset) found")
        try:
            parts.append(fdata.records_from_table(table, job.variants or None, min_images=1))
        except ValueError as e:
            raise UsageError(f"--data {uri}: {e}") from e
    for folder in job.folders:
        if not os.path.isdir(folder):
            raise UsageError(f"--folders {folder}: not a folder")
        parts.append(fdata.records_from_folder(folder, max_per_identity=job.max_per_identity or None,
                                               prealigned=job.prealigned, min_images=1))
    if not parts:
        raise UsageError("give training data: --data PARQUET and/or --folders DIR (or --smoke-test)")
    rec = fdata.concat_records(parts)
    excluded: set[str] = set()
    if job.exclude_identities:
        try:
            excluded = {line.strip() for line in open(job.exclude_identities, encoding="utf-8") if line.strip()}
        except OSError as e:
            raise UsageError(f"--exclude-identities {job.exclude_identities}: {e}") from None
    return rec.without_identities(excluded)


def check_sampling(records, P: int, K: int, world_size: int) -> None:
    """Errors a user can fix, before Ray starts a worker."""
    n_ids = records.n_identities
    if n_ids < P:
        raise UsageError(f"P={P} identities per batch but the training set has only {n_ids} "
                                f"identities with 2+ images; lower --P")
    if P % world_size:
        raise UsageError(f"P={P} must be a multiple of --num-workers={world_size} (each worker "
                                "takes P/W identities of every global batch)")


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------

def _restore(model, optimizer):
    """-> (epoch, step_in_epoch, global step, history) from ray.train.get_checkpoint(), or zeros."""
    import ray.train

    from facenet.train import load_state
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, 0, 0, []
    # Each worker downloads into its own folder: as_directory() shares one folder per node,
    # and a second worker's download rewrites the files the first is still reading (seen in
    # CI as a "corrupted" checkpoint zip on resume).
    with tempfile.TemporaryDirectory(prefix="restore-") as d:
        epoch, skip, step, history = load_state(ckpt.to_directory(d), model, optimizer)
    log.info("resumed at epoch %d step %d (global step %d)", epoch, skip, step)
    return epoch, skip, step, history


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from facenet import data as fdata
    from facenet.losses import all_gather_embeddings
    from facenet.sampler import PKSampler
    from facenet.train import TrainConfig, build_for_training, make_optimizer, run_epoch, save_state, validate

    cfg = TrainConfig(**config["train"])
    os.environ.update(config["s3_env"])  # rank 0 writes metrics.jsonl to the run folder, maybe on S3
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    records = ray.get(config["records"])
    vsets = ray.get(config["validation"]) if rank == 0 else []
    device = ray.train.torch.get_device()

    model = build_for_training(cfg)
    optimizer = make_optimizer(model.parameters(), cfg)
    epoch0, skip, step, history = _restore(model, optimizer)
    if step:
        history.append({"kind": "resume", "epoch": epoch0, "step": step})
        if rank == 0:  # on record at once, even when nothing is left to train
            _write_history(config["run_dir"], history)
    raw = model
    model = ray.train.torch.prepare_model(model)                                   # [2] prepare
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = fdata.SampleLoader(records, config["alignment"], raw.input_size,
                                fdata.AugmentConfig(**config["augment"]), seed=cfg.seed,
                                threads=config["loader_threads"])
    # [1] shard: P identities of every global batch split over the workers (P/W each, disjoint)
    sampler = PKSampler(records.labels, cfg.P // world, cfg.K, seed=cfg.seed, rank=rank, world_size=world,
                        steps_per_epoch=cfg.steps_per_epoch or None, groups=records.groups)
    per_epoch = len(sampler)
    total = per_epoch * cfg.epochs
    gather = all_gather_embeddings if (cfg.global_mining and world > 1) else None
    scaler = True if (cfg.amp and device.type == "cuda") else None
    every = int(config["checkpoint_every"])

    def report(metrics: dict, epoch: int, step_in_epoch: int, gstep: int) -> None:          # [4] report
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                save_state(d, raw, optimizer, cfg, epoch=epoch, step_in_epoch=step_in_epoch, step=gstep,
                           metrics=metrics, history=history)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)

    if rank == 0 and not history and vsets:  # the starting point, to judge what training did
        start = {"epoch": 0, "step": 0, "kind": "start"}
        for v in vsets:
            start.update(validate(raw, v, device))
        history.append(start)
        log.info("before training: %s", _short(start))
    for epoch in range(epoch0, cfg.epochs):
        plan = sampler.batches(epoch)[skip:]
        start = step

        def on_step(gstep: int, stats: dict, epoch=epoch, start=start, skip=skip, plan=plan) -> None:
            if config["kill_at"] and gstep == config["kill_at"] and rank == world - 1:
                _kill_once(config["run_dir"])
            if every and gstep % every == 0 and gstep - start < len(plan):
                report({**stats, "epoch": epoch, "step": gstep, "kind": "step"}, epoch, skip + gstep - start, gstep)

        t0 = time.perf_counter()
        stats = run_epoch(model, optimizer, loader, plan, records.labels, cfg, epoch, step0=step,   # [3] step
                          total_steps=total, device=device, gather=gather, world_size=world,
                          scaler=scaler, on_step=on_step, prefetch=config["prefetch"])
        step += len(plan)
        skip = 0
        metrics = {f"train_{k}": v for k, v in stats.items()}
        metrics.update(epoch=epoch + 1, step=step, kind="epoch", epoch_seconds=time.perf_counter() - t0,
                       samples_per_s_global=stats.get("samples_per_s", 0.0) * world,
                       eta_s=(cfg.epochs - epoch - 1) * (time.perf_counter() - t0))
        if rank == 0:
            for v in vsets:
                metrics.update(validate(raw, v, device))
            history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, _short(metrics))
            _write_history(config["run_dir"], history)
        report(metrics, epoch + 1, 0, step)


def _kill_once(run_dir: str) -> None:
    """Fault injection: SIGKILL this worker's process unless it was done before for this run."""
    import signal
    marker = storage.join_uri(run_dir, "_fault_injected")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"killed a worker\n")
    log.warning("fault injection: killing worker process %d", os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def _short(m: dict) -> str:
    keys = ("train_loss", "train_active_fraction", "samples_per_s_global")
    parts = [f"{k}={m[k]:.3g}" for k in keys if k in m]
    parts += [f"{k}={v:.3f}" for k, v in m.items() if k.startswith("val") and isinstance(v, float)]
    return " ".join(parts)


def _write_history(run_dir: str, history: list) -> None:
    text = "".join(json.dumps(h, default=str) + "\n" for h in history)
    storage.write_bytes(storage.join_uri(run_dir, METRICS_FILE), text.encode())


# ------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------

def run(job: TrainJobConfig) -> dict[str, Any]:
    from facenet import data as fdata
    from facenet.model import build_model
    from facenet.train import holdout_validation

    setup_logging(job.log_level)
    t0 = time.perf_counter()
    cfg = job.train_config()
    probe = build_model(cfg.model, **dict(cfg.model_kwargs))
    alignment, size = fdata.alignment_for(cfg.model), probe.input_size
    del probe
    records = load_records(job)
    train, held = records.split_identities(job.val_holdout, cfg.seed) if job.val_holdout else (records, None)
    check_sampling(train, cfg.P, cfg.K, job.num_workers)
    log.info("training set: %s", json.dumps(train.summary()))
    vsets = []
    if held is not None and len(held):
        vsets = holdout_validation(held, alignment, size, job.val_pairs,
                                   None if job.val_mask == "none" else job.val_mask, cfg.seed)
    if "://" not in job.output:  # workers do not share the driver's working directory
        job = dataclasses.replace(job, output=os.path.abspath(job.output))
    run_dir = storage.join_uri(job.output, job.name)

    # a private local Ray gets its dashboard: Ray Train's placement-group cleaner polls the
    # state API it serves, and warns every second without it
    with ray_context(job.ray_address, job.num_cpus, include_dashboard=True):
        # imported once Ray is up: ray.train reads the token-auth mode that init_ray sets
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer

        storage_fs, storage_path = storage.filesystem_for(job.output)
        config = {"train": cfg.to_dict(), "records": ray.put(train), "validation": ray.put(vsets),
                  "alignment": alignment, "run_dir": run_dir, "checkpoint_every": job.checkpoint_every,
                  "kill_at": job.kill_worker_at_step, "s3_env": storage.s3_env_vars(),
                  "loader_threads": job.loader_threads, "prefetch": job.prefetch,
                  "augment": dataclasses.asdict(fdata.AugmentConfig(
                      mask_prob=job.mask_prob, mask_types=job.mask_types, jitter=job.jitter,
                      clean=job.clean))}
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu,
                                                   resources_per_worker={"CPU": job.cpus_per_worker},
                                                   placement_strategy=job.placement_strategy),
            run_config=ray.train.RunConfig(
                name=job.name, storage_path=storage_path,
                storage_filesystem=storage_fs if storage.is_s3(job.output) else None,
                failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep)))
        result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        raise RunFailed(f"training failed: {result.error or 'no checkpoint was written'}")
    export = job.export or storage.join_uri(run_dir, MODEL_FILE)
    with result.checkpoint.as_directory() as d:
        storage.write_bytes(export, open(os.path.join(d, MODEL_FILE), "rb").read())
    summary = {"model": export, "run_dir": run_dir, "metrics": result.metrics,
               "train": train.summary(), "seconds": round(time.perf_counter() - t0, 1)}
    storage.write_json(storage.join_uri(run_dir, "_summary.json"), summary)
    return summary


#: what --smoke-test sets (fields still at their defaults only)
SMOKE = dict(model="mobilefacenet", pretrained=False, epochs=3, steps_per_epoch=5, P=8, K=4, optimizer="adam",
             lr=1e-3, schedule="constant", mining="batch_hard", max_per_identity=12, val_pairs=120,
             num_workers=2, name="smoke", prealigned=True)


def smoke_config(cfg: TrainJobConfig) -> TrainJobConfig:
    """``--smoke-test``: glint_subset's aligned crops (20 identities trained, 4 held out),
    MobileFaceNet from scratch, 2 CPU workers, 3 epochs of 5 steps, into a temporary output
    folder unless --output is given; any training flag given alongside wins (a flag set to its
    default value cannot be told from an absent one: it takes the smoke value)."""
    refuse_with_smoke_test(cfg, "data", "folders")
    glint = smoke_data("glint_subset", "datasets", "celebrity_images")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainJobConfig)}
    changes = {k: v for k, v in SMOKE.items() if getattr(cfg, k) == defaults[k]}
    if cfg.output == defaults["output"]:
        changes["output"] = tempfile.mkdtemp(prefix="train-smoke-")
    return dataclasses.replace(cfg, folders=(str(glint),), **changes)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry: ``python -m jobs.train_facenet ...`` -> the run summary."""
    from jobs.cli import parse_config
    cfg = parse_config(TrainJobConfig, argv, prog=PROG,
                       description=(TrainJobConfig.__doc__ or "").strip(), epilog=__doc__)
    if cfg.smoke_test:
        cfg = smoke_config(cfg)
    return run(cfg)


def summarise(summary: dict[str, Any]) -> str:
    m = summary.get("metrics") or {}
    lines = [f"model: {summary.get('model')}", f"metrics: {summary.get('run_dir')}/{METRICS_FILE}",
             f"{m.get('epoch', '?')} epochs, {summary.get('train', {}).get('images', '?')} images of "
             f"{summary.get('train', {}).get('identities', '?')} identities, {summary.get('seconds', '?')} s"]
    if m:
        lines.append(_short(m))
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv, prog=PROG, summarise=summarise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
