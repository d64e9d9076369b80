"""The mask-network experiment (the paper's Sec. 5 recovery), end to end from the shared data.

    python tools/mask_network.py --steps 300            # work in out/mask_network, results in docs/

1. training identities: LFW View 1 DevTrain people with 2+ images, CelebA subset, glint
   subset, less those ``tools/identity_overlap.py`` found too close to an evaluated identity
   (``docs/results/mask_network/overlap.json``);
2. ``jobs.mask_dataset`` turns each source into Parquet: ``original`` + six masked variants,
   at most ``--per-identity`` images per identity;
3. ``jobs.train_facenet`` twice, same start (dlib's ResNet in PyTorch, its pretrained
   weights), same schedule, seed and number of images seen: the **no-mask network** on
   ``original`` rows only and the **mask network** on all variants;
4. ``jobs.evaluate`` for the untouched dlib network and both trained networks: LFW View 1
   DevTest (1000 pairs, people disjoint from DevTrain) in the template x probe grid with
   ``mixed``, and MFR2 (real masks);
5. ``summary.json``, ``report.md`` and figures in ``docs/results/mask_network/``.

Every step is skipped when its output exists (rerun to resume; ``--fresh STEP`` redoes one).
Each step runs as its own process (``python -m jobs.X``), its log in ``WORK/logs/``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402

log = logging.getLogger("mask_network")

MASKS = ("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth")
EVAL_VARIANTS = ("original", "surgical_blue", "surgical_green", "N95", "cloth")
RESULTS = ROOT / "docs" / "results" / "mask_network"
#: the trained networks: folder under WORK/train, evaluation label
NETWORKS = {"nomask": ("nomask_net", "no-mask net"), "mask": ("mask_net", "mask net"),
            "online": ("online_net", "mask net (online)"),
            "nomask_scratch": ("nomask_scratch_net", "no-mask net (scratch)"),
            "online_scratch": ("online_scratch_net", "mask net (online, scratch)")}


#: run the jobs in this process (tests, sharing a Ray already started) instead of subprocesses
IN_PROCESS = False


def run(module: str, argv: list[str], logfile: Path) -> float:
    """``python -m <module> <argv>`` from the repository root, output to ``logfile`` (or
    ``module.main(argv)`` in this process when :data:`IN_PROCESS`); -> seconds.  Raises on failure."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.info("$ python -m %s %s  (log: %s)", module, " ".join(argv), logfile)
    if IN_PROCESS:
        import importlib
        importlib.import_module(module).main(argv)
        return time.perf_counter() - t0
    with open(logfile, "wb") as fh:
        rc = subprocess.call([sys.executable, "-m", module, *argv], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if rc != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise SystemExit(f"step failed (exit {rc}) after {dt:.0f} s: python -m {module} {' '.join(argv)}\n{tail}")
    log.info("done in %.0f s", dt)
    return dt


def exclusion_file(work: Path, path: Path) -> Path:
    """The identities the overlap check (``path``) drops, one per line, for
    ``train_facenet --exclude-identities`` (identity names are the folder names)."""
    if not path.is_file():
        raise SystemExit(f"{path} missing: run python tools/identity_overlap.py --output {RESULTS}")
    drop = json.loads(path.read_text()).get("drop", [])
    out = work / "lists" / "exclude.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(d.split(":", 1)[1] + "\n" for d in drop))
    return out


def _cap(keys: list[str], n: int) -> list[str]:
    """The keys of the first ``n`` identities (folder names) in order; all when ``n`` is 0."""
    if not n:
        return keys
    idents = list(dict.fromkeys(k.split("/", 1)[0] for k in keys))[:n]
    return [k for k in keys if k.split("/", 1)[0] in set(idents)]


def file_lists(work: Path, max_identities: int = 0) -> dict[str, tuple[Path, Path]]:
    """source -> (input root, file list) of the training images (the overlap check's
    identities are masked too, and left out at training)."""
    lfw = shared_data("lfw")
    celeba = shared_data("celeba_subset")
    glint = shared_data("glint_subset", "datasets", "celebrity_images")
    if not (lfw and celeba and glint):
        raise SystemExit(f"LFW, celeba_subset and glint_subset are needed; {DATA_HINT}")
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    out = {}
    people = [line.split("\t") for line in (lfw / "peopleDevTrain.txt").read_text().splitlines()[1:]]
    keys = [f"{n}/{n}_{i:04d}.jpg" for n, c in people if int(c) >= 2 for i in range(1, int(c) + 1)]
    (lists / "lfw.txt").write_text("\n".join(_cap(keys, max_identities)) + "\n")
    out["lfw"] = (lfw / "lfw-deepfunneled", lists / "lfw.txt")
    for name, root in (("celeba", celeba), ("glint", glint)):
        keys = [f"{d}/{f}" for d in sorted(os.listdir(root)) if (root / d).is_dir()
                for f in sorted(os.listdir(root / d))]
        (lists / f"{name}.txt").write_text("\n".join(_cap(keys, max_identities)) + "\n")
        out[name] = (root, lists / f"{name}.txt")
    return out


def step_data(args, work: Path) -> dict[str, float]:
    times = {}
    for name, (root, files) in file_lists(work, args.max_identities).items():
        dst = work / "data" / name
        if (dst / "_summary.json").exists():
            continue
        argv = ["--input", str(root), "--files", str(files), "--output", str(dst), "--recipe", "custom",
                "--variants", ",".join(("original",) + MASKS), "--per-identity", str(args.per_identity),
                "--seed", str(args.seed), "--no-progress-bars", *(["--clean"] if args.clean else [])]
        times[f"mask_{name}"] = run("jobs.mask_dataset", argv, work / "logs" / f"mask_{name}.log")
    return times


def step_train(args, work: Path, which: str) -> float:
    """One network: ``nomask`` (original rows only), ``mask`` (original + the offline masked
    variants of the Parquet) or ``online`` (original rows, a random mask drawn while loading
    with probability ``--mask-prob``), each fine-tuned from dlib's network; ``nomask_scratch``
    and ``online_scratch`` train the small backbone (MobileFaceNet) from random weights with
    Adam and ``--scratch-steps``.  Within a row: same start, schedule, seed and images per step."""
    name = NETWORKS[which][0]
    if (work / "train" / name / "model.pt").exists():
        return 0.0
    data = ",".join(str(work / "data" / s) for s in ("lfw", "celeba", "glint"))
    variants = ",".join(("original",) + MASKS) if which == "mask" else "original"
    online = (["--mask-prob", str(args.mask_prob), "--mask-types", ",".join(MASKS),
               *(["--clean"] if args.clean else [])] if which.startswith("online") else [])
    if which.endswith("_scratch"):
        start = ["--model", "mobilefacenet", "--no-pretrained", "--trainable", "all", "--optimizer", "adam",
                 "--lr", str(args.scratch_lr), "--schedule", "cosine", "--warmup-steps", "20"]
        steps = args.scratch_steps
    else:
        start = ["--model", "dlib_resnet", "--pretrained", "--trainable", args.trainable, "--optimizer", "sgd",
                 "--lr", str(args.lr), "--schedule", "paper"]
        steps = args.steps
    cmd = ["--data", data, "--variants", variants, *online, *start,
           "--epochs", str(args.epochs), "--steps-per-epoch", str(steps // args.epochs),
           "--P", str(args.P), "--K", str(args.K),
           "--mining", args.mining, "--margin", "0.2", "--seed", str(train_seed(args)),
           "--val-holdout", str(args.val_holdout), "--val-pairs", "400", "--val-mask", "N95", "--jitter", "0.0",
           "--num-workers", str(args.workers), "--checkpoint-every", "25",
           "--exclude-identities", str(exclusion_file(work, Path(args.overlap))),
           "--output", str(work / "train"), "--name", name]
    return run("jobs.train_facenet", cmd, work / "logs" / f"train_{which}.log")


def train_seed(args) -> int:
    """The training seed (weights' start of the scratch row, P-K draws, held-out identities,
    online masks): ``--train-seed``, else ``--seed``, which also fixes the data and the
    evaluation's masks.  Varying only ``--train-seed`` repeats the training on the same data
    and scores it on the same pairs and masks."""
    return args.seed if args.train_seed is None else args.train_seed


def step_eval(args, work: Path, model: str, label: str) -> float:
    lfw, mfr2 = shared_data("lfw"), shared_data("mfr2")
    dt = 0.0
    out = work / "eval" / label
    if not (out / "devtest" / "metrics.json").exists():
        limit = ["--limit-pairs", str(args.limit_pairs)] if args.limit_pairs else []
        dt += run("jobs.evaluate", ["--pairs", str(lfw / "pairsDevTest.txt"), *limit,
                   "--images", str(lfw / "lfw-deepfunneled"), "--model", model, "--label", label,
                   "--variants", args.eval_variants, "--mixed", "--far", "0.001",
                   "--seed", str(args.seed), "--output", str(out / "devtest")],
                  work / "logs" / f"eval_{label}_devtest.log")
    if not (out / "mfr2" / "metrics.json").exists():
        limit = ["--limit-pairs", str(args.limit_mfr2_pairs)] if args.limit_mfr2_pairs else []
        dt += run("jobs.evaluate", ["--pairs", str(mfr2 / "pairs.txt"), "--images", str(mfr2), *limit,
                   "--prealigned", "--variants", "original", "--far", "0.0022,0.001", "--model", model,
                   "--label", label, "--output", str(out / "mfr2")], work / "logs" / f"eval_{label}_mfr2.log")
    return dt


def reuse(earlier: Path, work: Path) -> dict[str, float]:
    """Copy what does not depend on the masked training data from an earlier work folder:
    the untouched dlib network's evaluation, and the trained no-mask network (original rows
    only, whose bytes do not depend on the mask renderer; it is evaluated again, with the
    current evaluation code, like the other networks).  Returns their recorded wall times."""
    old_times = json.loads((earlier / "times.json").read_text()) if (earlier / "times.json").exists() else {}
    out = {}
    for src, dst, key in ((earlier / "eval" / "dlib", work / "eval" / "dlib", "eval_dlib"),
                          (earlier / "train" / "nomask_net", work / "train" / "nomask_net", "train_nomask")):
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst)
            log.info("reused %s", src)
            if key in old_times:
                out[key] = old_times[key]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "out" / "mask_network"), help="working folder (git-ignored)")
    p.add_argument("--steps", type=int, default=300, help="training steps of each network")
    p.add_argument("--epochs", type=int, default=3, help="epochs (the schedule's thirds)")
    p.add_argument("--P", type=int, default=16)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--scratch-steps", type=int, default=450, help="training steps of the from-scratch networks")
    p.add_argument("--scratch-lr", type=float, default=0.002, help="Adam's peak rate for the from-scratch networks")
    p.add_argument("--mining", default="semi_hard")
    p.add_argument("--trainable", default="head", choices=("head", "all"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--per-identity", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the evaluation's masks and the training")
    p.add_argument("--train-seed", type=int, default=None,
                   help="the training's own seed (default: --seed); repeat a run with another to measure the spread")
    p.add_argument("--max-identities", type=int, default=0, help="at most N identities per source (0: all)")
    p.add_argument("--val-holdout", type=int, default=30, help="training identities held out for validation")
    p.add_argument("--limit-pairs", type=int, default=0,
                   help="evaluate on N DevTest pairs, evenly spaced (0: all 1000)")
    p.add_argument("--limit-mfr2-pairs", type=int, default=0, help="evaluate on N MFR2 pairs (0: all 848)")
    p.add_argument("--eval-variants", default=",".join(EVAL_VARIANTS))
    p.add_argument("--overlap", default=str(RESULTS / "overlap.json"), help="the identity-overlap check's JSON")
    p.add_argument("--results", default=str(RESULTS), help="where the report goes")
    p.add_argument("--fresh", default="", help="comma list of steps to redo: data,nomask,mask,online,eval")
    p.add_argument("--networks", default="nomask,mask,online",
                   help="networks to train: nomask, mask (offline masked variants), online (masks drawn while "
                        "loading), all fine-tuned from dlib's network; nomask_scratch, online_scratch (MobileFaceNet "
                        "from random weights)")
    p.add_argument("--mask-prob", type=float, default=0.5, help="online network: chance of a mask per image")
    p.add_argument("--clean", action="store_true",
                   help="train on masks in the clean look (no realism effects: the data sets' variants and the "
                        "online masks); the evaluation's masks keep the default look. With --reuse of a default "
                        "run, this measures what realism does to training and to the gap to real masks (MFR2)")
    p.add_argument("--dlib-model", default="dlib", choices=("dlib", "dlib-torch"),
                   help="the untouched network's row: dlib itself, or its PyTorch conversion (same embeddings to "
                        "5e-7, about twice as fast on CPU)")
    p.add_argument("--reuse", default="",
                   help="an earlier WORK folder to take the dlib evaluation and the no-mask network (with its "
                        "evaluation) from; they do not depend on how masked training data is made")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work)
    for step in filter(None, args.fresh.split(",")):
        target = {"data": work / "data", "eval": work / "eval",
                  **{k: work / "train" / v[0] for k, v in NETWORKS.items()}}[step]
        shutil.rmtree(target, ignore_errors=True)
    times_path = work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}

    def save() -> None:
        times_path.parent.mkdir(parents=True, exist_ok=True)
        times_path.write_text(json.dumps(times, indent=1))

    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    if set(networks) - set(NETWORKS):
        p.error(f"--networks: unknown {sorted(set(networks) - set(NETWORKS))}; choose from {', '.join(NETWORKS)}")
    if args.reuse:
        times.update(reuse(Path(args.reuse), work))
    times.update({k: v for k, v in step_data(args, work).items()})
    save()
    for which in networks:
        dt = step_train(args, work, which)
        if dt:
            times[f"train_{which}"] = dt
            save()
    trained = [(str(work / "train" / NETWORKS[n][0] / "model.pt"), NETWORKS[n][1]) for n in networks]
    for model, label in ((args.dlib_model, "dlib"), *trained):
        dt = step_eval(args, work, model, label)
        if dt:
            times[f"eval_{label}"] = dt
            save()
    from tools.mask_network_report import write_report
    return write_report(work, Path(args.results), vars(args), times)


if __name__ == "__main__":
    main()
