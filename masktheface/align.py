"""Aligned face crops from the *unmasked* landmarks.

A transform is computed once per face from its landmarks before any mask is drawn and
applied unchanged to the masked and the unmasked image, so the twins align identically
(pixel for pixel outside the mask) whatever the mask did to the detector.

* 160x160 FaceNet style: a square box around the landmarks with a margin, resized
  (no rotation), as FaceNet's MTCNN crops are.
* 112x112 five-point: a similarity transform (least squares, Umeyama) of the eye centres,
  nose tip and mouth corners onto the usual ArcFace template.
"""
from __future__ import annotations

import cv2
import numpy as np

#: the standard 112x112 ArcFace five-point template (left eye, right eye, nose, mouth l/r)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
ALIGN_SIZES = (160, 112)


def five_points(lm: np.ndarray) -> np.ndarray:
    """float (68,2) -> float64 (5,2): eye centres, nose tip, mouth corners (image left first)."""
    lm = np.asarray(lm, np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) src -> dst: 2x3 float64."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    cov = d0.T @ s0 / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[1, 1] = -1
    R = U @ D @ Vt
    var = (s0 ** 2).sum() / len(src)
    scale = float((S * np.diag(D)).sum() / var) if var > 0 else 1.0
    t = md - scale * R @ ms
    return np.hstack([scale * R, t[:, None]])


def transform_112(lm: np.ndarray) -> np.ndarray:
    """float (68,2) -> 2x3 affine taking the image onto the 112x112 five-point template."""
    return umeyama(five_points(lm), ARCFACE_112)


def transform_160(lm: np.ndarray, size: int = 160, margin: float = 0.25) -> np.ndarray:
    """float (68,2) -> 2x3 affine: a square around the landmarks, ``margin`` of its side added
    (split equally), scaled to ``size``.  The box includes the brows so the crop matches a
    detector's face box rather than the jaw-only hull."""
    lm = np.asarray(lm, np.float64)
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = size / max(side, 1e-6)
    return np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])


def align_transform(lm: np.ndarray, size: int) -> np.ndarray:
    if size == 160:
        return transform_160(lm)
    if size == 112:
        return transform_112(lm)
    raise ValueError(f"aligned size must be one of {ALIGN_SIZES}, not {size}")


def warp_crop(image: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H,W[,3]) image + 2x3 affine -> uint8 (size,size[,3]) crop (edges replicated so
    faces at the image border do not get black wedges)."""
    return cv2.warpAffine(image, np.asarray(M, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
