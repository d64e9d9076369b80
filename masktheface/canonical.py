"""The canonical face frame shared by mask drawing and warping.

Built-in masks are drawn in a fixed 1000x1000 "canonical" frame in which a mean frontal
face sits: jaw landmarks 0 and 16 at x=100 / x=900, y=400; the chin (landmark 8) near
y=1040.  The mean shape was measured by ``tools/mean_shape.py`` on 1,433 LFW faces
(dlib HOG + 68-point predictor, Procrustes-aligned) and made left/right symmetric here.

A face in an image is reached from this frame by a piecewise-affine warp over a
triangle mesh whose vertices are landmarks (plus a ring pushed outwards from the jaw so
that a mask may stand a little proud of the face); see :mod:`masktheface.render`.
Art must stay inside :data:`MESH_HULL` or it is clipped.
"""
from __future__ import annotations

import numpy as np

_MEASURED = np.array([
    [100.0, 400.0], [103.5, 504.7], [113.2, 609.1], [131.8, 712.2],
    [168.3, 809.5], [227.1, 896.0], [303.7, 968.2], [392.4, 1026.1],
    [495.0, 1043.7], [598.4, 1027.5], [689.4, 971.7], [768.5, 901.3],
    [829.5, 814.9], [867.6, 716.9], [886.6, 612.7], [896.5, 506.2],
    [900.0, 400.0], [184.2, 321.8], [229.7, 276.6], [296.1, 261.4],
    [366.0, 269.6], [431.4, 295.8], [557.8, 295.4], [623.8, 270.0],
    [694.5, 261.5], [761.7, 277.2], [808.5, 322.6], [494.7, 372.4],
    [494.4, 437.9], [494.0, 503.3], [493.3, 571.2], [416.7, 619.6],
    [453.6, 634.5], [494.4, 646.9], [535.8, 634.6], [573.6, 619.9],
    [263.6, 388.2], [303.8, 365.2], [351.6, 365.0], [394.5, 393.3],
    [349.0, 402.1], [302.2, 402.2], [597.7, 393.6], [639.6, 365.7],
    [687.6, 365.6], [728.7, 388.7], [689.2, 403.0], [642.1, 402.6],
    [345.1, 758.7], [397.7, 729.3], [452.7, 716.8], [495.0, 726.3],
    [536.1, 717.5], [592.6, 730.2], [647.8, 760.3], [594.8, 813.6],
    [539.3, 836.1], [494.9, 840.2], [449.7, 835.3], [395.7, 812.3],
    [368.7, 760.1], [452.5, 748.2], [495.0, 752.3], [536.4, 748.8],
    [624.1, 761.4], [537.2, 787.5], [494.7, 791.9], [451.5, 786.5],
], dtype=np.float64)

#: index of each landmark's mirror image (left <-> right) in the 68-point scheme
MIRROR_68 = np.array(
    list(range(16, -1, -1))                      # jaw
    + list(range(26, 16, -1))                    # brows
    + [27, 28, 29, 30]                           # nose bridge
    + [35, 34, 33, 32, 31]                       # nose bottom
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65],          # inner lips
    dtype=np.int64,
)


def _symmetrize(pts: np.ndarray) -> np.ndarray:
    mirrored = pts[MIRROR_68].copy()
    mirrored[:, 0] = 1000.0 - mirrored[:, 0]
    return (pts + mirrored) / 2.0


#: float32 (68, 2): the mean face in the canonical frame, symmetric about x=500
CANONICAL_68 = _symmetrize(_MEASURED).astype(np.float32)

#: how far the outer ring stands out of the jaw line (1.0 = on it)
RING_SCALE = 1.16

#: landmarks used as mesh vertices: jaw, nose, lower eyelids and eye corners, outer lips
MESH_LANDMARKS = np.array(
    list(range(0, 17)) + list(range(27, 36)) + [36, 39, 40, 41, 42, 45, 46, 47]
    + list(range(48, 60)),
    dtype=np.int64,
)


def ring_points(landmarks: np.ndarray, centre: np.ndarray | None = None,
                scale: float = RING_SCALE) -> np.ndarray:
    """float (68,2) landmarks -> float32 (17,2): jaw points pushed outwards from a centre.

    The centre is the point between the nose tip and the jaw-line chord in the image
    (the mean of the nose tip, the chord's midpoint and the chin), so the ring follows the face's
    pose and scale.
    """
    lm = np.asarray(landmarks, np.float32)
    jaw = lm[0:17]
    if centre is None:
        centre = (lm[30] + (lm[0] + lm[16]) / 2.0 + lm[8]) / 3.0
    return (centre + (jaw - centre) * scale).astype(np.float32)


def mesh_vertices(landmarks: np.ndarray) -> np.ndarray:
    """float (68,2) landmarks -> float32 (V,2) mesh vertices (selected landmarks + ring)."""
    lm = np.asarray(landmarks, np.float32)
    return np.concatenate([lm[MESH_LANDMARKS], ring_points(lm)], axis=0)


CANONICAL_VERTICES = mesh_vertices(CANONICAL_68)


def _hull(points: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)


#: float32 (K,2): the outline inside which built-in art must lie (canonical frame)
MESH_HULL = _hull(CANONICAL_VERTICES)
