"""Embedding throughput of the dlib embedder: the Ray evaluate job against a plain loop.

    python benchmarks/bench_embed.py --images 120 --repeats 3

On the same LFW images (``../shared/data/lfw/lfw-deepfunneled``, the first images of the
View 2 pairs) and the same per-image work - read the file, decode, find the face, (mask,)
align with dlib's chip from the unmasked landmarks, dlib ResNet descriptor:

* ``plain``: one process, :class:`jobs.evaluate.EmbedActor` (around
  :class:`facenet.verify.VariantEmbedder`) built once and called on
  batches in a loop (exactly the job's per-batch code, no Ray);
* ``ray-N``: :func:`jobs.evaluate.embed_images` on a private local Ray of 2 CPUs with N
  actors (Ray Data ``from_items`` -> actor pool -> rows back to the driver).  Actor start-up
  and model loads are *included* (they are part of every job), starting Ray is not.

``--variants original`` measures the embedder; ``--variants original,N95`` adds one mask
per image (the LFW-SM job does four).  Configurations run interleaved (plain, ray-1, ray-2,
plain, ...) so that load from other processes hits all alike; medians are reported, with
the ratio to ``plain`` measured in the same run.  On 2 shared cores expect Ray to reach
~75% of a plain process per core (jobs/ notes); scaling is for clusters.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402

LFW = shared_data("lfw") or Path("lfw-not-found")


def plain(keys, variants, batch) -> tuple[float, float]:
    """-> (seconds for the loop, seconds to build the actor)."""
    from facenet.verify import LFW_CENTRE_BOX
    from jobs.evaluate import EmbedActor
    from masktheface import dataset_schema as S

    t0 = time.perf_counter()
    actor = EmbedActor(model="dlib", images=str(LFW / "lfw-deepfunneled"), parquet=False, variants=variants,
                       seed=0, prealigned=False, flip_sum=False, fallback_box=LFW_CENTRE_BOX)
    t1 = time.perf_counter()
    n_ok = 0
    for i in range(0, len(keys), batch):
        t = actor({S.KEY: keys[i:i + batch]})
        n_ok += sum(s == "ok" for s in t.column(S.STATUS).to_pylist())
    t2 = time.perf_counter()
    assert n_ok == len(keys) * len(variants), n_ok
    return t2 - t1, t1 - t0


def ray_run(keys, variants, batch, actors) -> float:
    from jobs.evaluate import EvaluateConfig, embed_images

    cfg = EvaluateConfig(pairs="-", images=str(LFW / "lfw-deepfunneled"), output="-", variants=tuple(variants),
                         num_actors=actors, batch_size=batch)
    t0 = time.perf_counter()
    E = embed_images(cfg, keys, parquet=False)
    dt = time.perf_counter() - t0
    assert (E.status == "ok").all(), E.status
    return dt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="original")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not LFW.exists():
        sys.exit(f"LFW not found at {LFW} ({DATA_HINT})")
    from facenet.pairs import read_pairs, unique_images
    from jobs.raysetup import init_ray

    keys = unique_images(read_pairs(LFW / "pairs.txt"))[: args.images]
    variants = [v for v in args.variants.split(",") if v]
    init_ray(num_cpus=2)
    import ray  # after init_ray (it sets Ray's auth mode before Ray is imported)

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    n = len(keys) * len(variants)
    times: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    setup = []
    for r in range(args.repeats):
        dt, st = plain(keys, variants, args.batch)
        times["plain"].append(dt)
        setup.append(st)
        for a in (1, 2):
            times[f"ray-{a}"].append(ray_run(keys, variants, args.batch, a))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    base = n / statistics.median(times["plain"])
    print(f"\n{len(keys)} LFW images x {len(variants)} variant(s) ({','.join(variants)}) = {n} embeddings, "
          f"median of {args.repeats}; plain actor build {statistics.median(setup):.1f} s (not in its rate)")
    print(f"{'config':<8} {'seconds':>8} {'emb/s':>7} {'vs plain':>9}")
    for k, v in times.items():
        rate = n / statistics.median(v)
        print(f"{k:<8} {statistics.median(v):8.1f} {rate:7.2f} {rate / base:8.2f}x")


if __name__ == "__main__":
    main()
