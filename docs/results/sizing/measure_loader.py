"""Per-core rate of the training input pipeline (facenet.data.SampleLoader), no Ray, no torch model.

    OMP_NUM_THREADS=1 python docs/results/sizing/measure_loader.py --identities 60 --samples 600 --repeats 3

Each Ray Train worker of jobs.train_facenet loads its own samples in its own process, one at a
time (decode JPEG -> align -> jitter/flip -> optional online mask), so this single-core rate
bounds a worker's samples/s however fast its GPU is.  Records: the first images of LFW
(250x250, deep-funneled) with dlib landmarks, as jobs.mask_dataset would store them.  Prints
one JSON line per configuration: median samples/s and ms per sample over the repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from facenet import data as fdata  # noqa: E402
from masktheface.datadir import shared_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=60)
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    lfw = shared_data("lfw", "lfw-deepfunneled")
    if lfw is None:
        sys.exit("needs ../shared/data/lfw (or $MASKTHEFACE_DATA)")
    # a small identity-folder tree of symlinks: people with >= 2 images, first N of each
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="loader_rate_"))
    n = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        files = sorted(person.iterdir())
        if len(files) < 2:
            continue
        (tmp / person.name).mkdir()
        for f in files[: args.per_identity]:
            (tmp / person.name / f.name).symlink_to(f)
        n += 1
        if n >= args.identities:
            break
    records = fdata.records_from_folder(str(tmp), max_per_identity=args.per_identity)
    rng = np.random.default_rng(0)
    configs = [("dlib_resnet", "dlib_chip", 150, 0.0), ("inception_resnet_v1", "facenet", 160, 0.0),
               ("inception_resnet_v1", "facenet", 160, 0.5), ("mobilefacenet", "arcface", 112, 0.0)]
    for model, alignment, size, mask_prob in configs:
        loader = fdata.SampleLoader(records, alignment, size,
                                    fdata.AugmentConfig(mask_prob=mask_prob, jitter=0.02), seed=0)
        loader.batch([0, 1])  # builds the masker when mask_prob > 0 (once per worker in the job)
        rates = []
        for r in range(args.repeats):
            idx = rng.integers(0, len(records), args.samples)
            t0 = time.perf_counter()
            for start in range(0, len(idx), 32):
                loader.batch(idx[start:start + 32], epoch=r)
            rates.append(len(idx) / (time.perf_counter() - t0))
        med = statistics.median(rates)
        print(json.dumps({"model": model, "alignment": alignment, "size": size, "mask_prob": mask_prob,
                          "records": len(records), "samples": args.samples, "repeats": args.repeats,
                          "samples_per_s_one_core": round(med, 1), "ms_per_sample": round(1000 / med, 2)}))


if __name__ == "__main__":
    main()
