"""Images/s per core of the masktheface library against a plain reference pipeline.

The reference is written here, in the same script, the way the original MaskTheFace works:
decode -> dlib HOG upsampled once (RGB) -> 68 landmarks -> the six key points -> a template
PNG read from disk for every face -> homography warp -> alpha blend -> encode.
Ours: ``Masker.process`` (built-in surgical_blue, mesh warp, shading, encode), in its
default detection mode ("auto"), in the exhaustive mode (upsample=1), with boxes supplied
(detection skipped), and with 2 worker processes.  Every configuration runs on the same
images in the same run, taking turns over chunks of 25 images (a shared machine then loads
them alike); figures are medians of ``--repeats`` runs.  Face recall is the
number of the reference's faces that each configuration also finds (IoU >= 0.3).

    python benchmarks/bench_masktheface.py --n 500 --repeats 3
    python benchmarks/bench_masktheface.py --n 300 --repeats 2 --quality-steps   # what the quality costs
    python benchmarks/bench_masktheface.py --n 300 --repeats 2 --stages          # where an image's time goes

``--stages`` times the default pipeline's parts one after another on every image (decode,
detection, the 68-point fit, the fit check's refits, the face check, geometry, mask drawing
with the realism and the photo's JPEG look, encoding), in the same turns as the reference,
and prints each part's ms per image next to the budget a 4x (and 5x) speed-up would leave.
"""
from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import cv2
import dlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402
from masktheface.geometry import six_points  # noqa: E402
from masktheface.imageio import decode_image, encode_image  # noqa: E402
from masktheface.landmarks import model_path  # noqa: E402
from masktheface.pipeline import Masker, MaskerConfig, Variant, face_geometry  # noqa: E402
from masktheface.spec import MaskSpec, variant_rng  # noqa: E402

DATA = shared_data() or Path("shared-data-not-found")
PACK = DATA / "masktheface_templates" / "masks"
VARIANT = [Variant("surgical_blue", (MaskSpec("surgical_blue"),))]


_REF_MODELS: tuple = ()


def _reference_models():
    global _REF_MODELS
    if not _REF_MODELS:
        _REF_MODELS = (dlib.get_frontal_face_detector(),
                       dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat")))
    return _REF_MODELS


def reference_pipeline(datas: list[bytes], write_to: list[str] | None = None) -> list[list[tuple]]:
    """The original's way; returns the boxes it found per image.  ``write_to``: a path per
    image to write the result to (cv2.imwrite, as the original does); else it is only encoded.
    The models are loaded once per process, as the original loads them once per run."""
    det, sp = _reference_models()
    anchors = np.array([[21, 97], [307, 22], [600, 99], [25, 322], [295, 470], [600, 323]], np.float64)
    found = []
    for i, data in enumerate(datas):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        boxes = []
        for r in det(rgb, 1):
            shape = sp(rgb, r)
            lm = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
            six, _ = six_points(lm)
            tpl = cv2.imread(str(PACK / "templates" / "surgical_blue.png"), cv2.IMREAD_UNCHANGED)  # per face
            H, _ = cv2.findHomography(anchors, six.astype(np.float64))
            warped = cv2.warpPerspective(tpl, H, (img.shape[1], img.shape[0]))
            a = warped[..., 3:4].astype(np.float32) / 255.0
            img = (img * (1 - a) + warped[..., :3] * a).astype(np.uint8)
            boxes.append((r.left(), r.top(), r.right(), r.bottom()))
        if write_to is None:
            cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        elif boxes:
            cv2.imwrite(write_to[i], img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        found.append(boxes)
    return found


def ours(datas: list[bytes], keys: list[str], masker: Masker, boxes=None) -> list[list[tuple]]:
    out = []
    for i, (d, k) in enumerate(zip(datas, keys)):
        p = masker.process(d, k, VARIANT, boxes=None if boxes is None else boxes[i])
        out.append([f.box for o in p.outputs[:1] for f in o.faces])
    return out


#: the parts of one image's processing that ``--stages`` times, in order
STAGES = ("decode", "detect", "fit", "fit check", "face check", "geometry", "mask + realism", "encode")


def stages(datas: list[bytes], keys: list[str], masker: Masker, totals: dict[str, float]) -> None:
    """Run the default pipeline's parts one after another on every image, adding each
    part's seconds to ``totals`` (the parts ``Masker.process`` chains; the faces found are
    those it finds: ``find_faces`` is rerun untimed to get them as it builds them)."""
    an = masker.analyzer
    clock = time.perf_counter
    for d, k in zip(datas, keys):
        t0 = clock()
        dec = decode_image(d, masker.config.max_pixels)
        t1 = clock()
        rgb = cv2.cvtColor(dec.bgr, cv2.COLOR_BGR2RGB)
        dets = an.detections(rgb, dec.gray)
        t2 = clock()
        firsts = [an.landmarks(rgb, x.box) for x in dets]
        t3 = clock()
        for x, first in zip(dets, firsts):
            an.fit(rgb, x.box, first)
        t4 = clock()
        for x, first in zip(dets, firsts):
            if not x.score >= an.SURE_SCORE:
                an.check(rgb, x.box, first, x.score, x.pass_)
        t5 = clock()
        faces = masker.find_faces(dec.bgr, None, None, dec.gray)
        t6 = clock()
        geos = [face_geometry(f, dec.bgr.shape) for f in faces]
        t7 = clock()
        rng = variant_rng(0, k, VARIANT[0].name)
        res = masker.mask(dec.bgr, VARIANT[0].specs, rng, faces=faces, geos=geos)
        img = masker.match_photo(dec, res.image, res.alpha, rng)
        t8 = clock()
        encode_image(img, "jpg", 95)
        t9 = clock()
        for name, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6, t8 - t7, t9 - t8)):
            totals[name] += dt


_W = None


def _init():
    global _W
    _W = Masker()


def _one(args):
    d, k = args
    return _W.process(d, k, VARIANT).status


def iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1e-9)


def recall(ref: list[list[tuple]], got: list[list[tuple]]) -> tuple[int, int, int, int, int]:
    """-> (reference faces matched, reference faces, faces found, images whose largest
    reference face is matched, images where the reference found a face)."""
    matched = sum(any(iou(r, g) >= 0.3 for g in gs) for rs, gs in zip(ref, got) for r in rs)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    main = [(max(rs, key=area), gs) for rs, gs in zip(ref, got) if rs]
    main_hit = sum(any(iou(m, g) >= 0.3 for g in gs) for m, gs in main)
    return matched, sum(len(r) for r in ref), sum(len(g) for g in got), main_hit, len(main)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality-steps", action="store_true",
                    help="also time what the quality costs: detect auto with the clean look, then also "
                         "without the landmark fit check, then also without the face check")
    ap.add_argument("--stages", action="store_true",
                    help="also time the default pipeline's parts (ms per image) against the budget "
                         "a 4x / 5x speed-up over the reference leaves")
    args = ap.parse_args()
    if not PACK.is_dir():
        sys.exit(f"needs the shared data sets ({DATA_HINT})")
    files = sorted(glob.glob(str(DATA / "lfw" / "lfw-deepfunneled" / "*" / "*.jpg")))
    files = files[:: max(1, len(files) // args.n)][: args.n]
    datas = [Path(f).read_bytes() for f in files]
    keys = [str(Path(f).relative_to(DATA)) for f in files]
    n = len(datas)
    print(f"{n} LFW images (250x250), {args.repeats} repeats, median; 1 process = 1 core")

    auto = Masker(MaskerConfig(upsample="auto"))
    up1 = Masker(MaskerConfig(upsample="1"))
    ours(datas[:5], keys[:5], auto), ours(datas[:5], keys[:5], up1)  # warm the art caches
    ref_boxes = reference_pipeline(datas)
    # the configurations take turns over chunks of images, so that a machine shared with
    # other work loads them alike (sequential phases measured load swings, not code)
    runs = {"ref": lambda d, k, b: reference_pipeline(d), "auto": lambda d, k, b: ours(d, k, auto),
            "up1": lambda d, k, b: ours(d, k, up1), "box": lambda d, k, b: ours(d, k, auto, boxes=b)}
    steps = {"clean": ("masktheface, auto, clean look", MaskerConfig(realism=False)),
             "nofit": ("  ... and no landmark fit check", MaskerConfig(realism=False, refit=False)),
             "nocheck": ("  ... and no face check", MaskerConfig(realism=False, refit=False, verify=False))}
    if args.quality_steps:
        for name, (_, cfg) in steps.items():
            m = Masker(cfg)
            ours(datas[:5], keys[:5], m)
            runs[name] = lambda d, k, b, m=m: ours(d, k, m)
    per: dict[str, list[float]] = {name: [] for name in runs}
    per_stage: dict[str, list[float]] = {name: [] for name in STAGES}
    found: dict[str, list] = {}
    chunk = 25
    for _ in range(args.repeats):
        totals = dict.fromkeys(runs, 0.0)
        stage_totals = dict.fromkeys(STAGES, 0.0)
        outs: dict[str, list] = {name: [] for name in runs}
        for i in range(0, n, chunk):
            d, k, b = datas[i:i + chunk], keys[i:i + chunk], ref_boxes[i:i + chunk]
            for name, fn in runs.items():
                t = time.perf_counter()
                outs[name] += fn(d, k, b)
                totals[name] += time.perf_counter() - t
            if args.stages:
                stages(d, k, auto, stage_totals)
        for name in runs:
            per[name].append(totals[name])
        for name in STAGES:
            per_stage[name].append(stage_totals[name])
        found = outs
    t_ref, t_auto, t_up1, t_box = (statistics.median(per[k]) for k in ("ref", "auto", "up1", "box"))
    b_auto, b_up1, b_box = found["auto"], found["up1"], found["box"]

    def pool_run():
        with mp.get_context("spawn").Pool(2, initializer=_init) as pool:
            pool.map(_one, list(zip(datas[:4], keys[:4])))  # start-up excluded
            t = time.perf_counter()
            pool.map(_one, list(zip(datas, keys)), chunksize=8)
            return time.perf_counter() - t

    t_w2 = statistics.median(pool_run() for _ in range(args.repeats))
    rows = [("reference (HOG up-1, template per face)", t_ref, recall(ref_boxes, ref_boxes), 1),
            ("masktheface, detect auto", t_auto, recall(ref_boxes, b_auto), 1),
            ("masktheface, detect upsample=1", t_up1, recall(ref_boxes, b_up1), 1),
            ("masktheface, boxes supplied", t_box, recall(ref_boxes, b_box), 1),
            ("masktheface, auto, --workers 2", t_w2, None, 2)]
    rows += [(label, statistics.median(per[name]), recall(ref_boxes, found[name]), 1)
             for name, (label, _) in steps.items() if name in per]
    print(f"{'configuration':42s} {'img/s':>8s} {'img/s/core':>11s} {'x ref/core':>10s}  "
          "reference faces found; main faces found")
    ref_rate = n / t_ref
    for name, t, rec, cores in rows:
        rate = n / t
        recs = f"{rec[0]}/{rec[1]} ({rec[2]} found in all); {rec[3]}/{rec[4]}" if rec else "-"
        print(f"{name:42s} {rate:8.1f} {rate / cores:11.1f} {rate / cores / ref_rate:10.2f}  {recs}")
    if args.stages:
        ref_ms = 1e3 * t_ref / n
        print(f"\nwhere an image's time goes (default pipeline, ms per image; reference {ref_ms:.1f} ms: "
              f"a 4x speed-up leaves {ref_ms / 4:.1f} ms, 5x {ref_ms / 5:.1f} ms)")
        total = 0.0
        for name in STAGES:
            ms = 1e3 * statistics.median(per_stage[name]) / n
            total += ms
            print(f"  {name:16s} {ms:6.2f}  ({total:6.2f} so far)")
        print(f"  {'process() whole':16s} {1e3 * t_auto / n:6.2f}")


if __name__ == "__main__":
    main()
