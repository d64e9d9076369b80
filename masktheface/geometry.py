"""Pure face geometry: the paper's six key points, tilt, and sanity checks (no I/O, no dlib).

The six key points (MaskTheFace's a..f), from the 68 dlib landmarks:

* ``b`` nose bridge: midpoint of landmarks 28 and 29, where a mask's top edge sits;
* ``a`` / ``c``: where the line through ``b`` perpendicular to the nose line meets the jaw
  contour on the image-left / image-right side;
* ``e`` chin: where the nose line, extended, meets the jaw contour;
* ``d`` / ``f``: where the line through the mouth centre, perpendicular to the nose line,
  meets the jaw contour on either side.

Where a line misses the contour (odd or partial faces) the nearest landmark stands in
(1, 15, 8, 4, 12) and the result is flagged ``approximate``; nothing here raises on a face.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: |tilt| above this picks a left/right template view (the original's threshold)
VIEW_TILT_DEG = 13.0

JAW = np.arange(0, 17)
_FALLBACK = {"a": 1, "c": 15, "e": 8, "d": 4, "f": 12}


@dataclass(frozen=True)
class FaceGeometry:
    """``six`` float32 (6,2) points a..f; ``tilt_deg`` signed angle of the nose line against the
    face midline (positive: nose tip points to the image's right, i.e. the face turns right);
    ``roll_deg`` angle of the eye line; ``view`` "front"/"left"/"right"; ``status`` "ok" or
    "geometry_failed" with ``error`` saying why."""

    six: np.ndarray
    tilt_deg: float
    roll_deg: float
    view: str
    approximate: bool
    status: str = "ok"
    error: str | None = None


def _intersect_polyline(p: np.ndarray, d: np.ndarray, poly: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Intersections of the infinite line p + t*d with the segments of ``poly`` -> [(t, point)]."""
    q0 = poly[:-1]
    q1 = poly[1:]
    e = q1 - q0
    denom = d[0] * e[:, 1] - d[1] * e[:, 0]
    ok = np.abs(denom) > 1e-9
    w = q0 - p
    t = np.where(ok, (w[:, 0] * e[:, 1] - w[:, 1] * e[:, 0]) / np.where(ok, denom, 1), np.nan)
    u = np.where(ok, (w[:, 0] * d[1] - w[:, 1] * d[0]) / np.where(ok, denom, 1), np.nan)
    hit = ok & (u >= -1e-6) & (u <= 1 + 1e-6)
    return [(float(t[i]), p + t[i] * d) for i in np.nonzero(hit)[0]]


def _roll(lm: np.ndarray) -> float:
    left = lm[36:42].mean(0)
    right = lm[42:48].mean(0)
    v = right - left
    return float(np.degrees(np.arctan2(v[1], v[0])))


def face_tilt(lm: np.ndarray) -> float:
    """float (68,2) -> signed degrees between the nose line (27->30) and the face midline
    (perpendicular to the eye line).  Roll alone gives 0; turning the head gives |tilt|>0."""
    lm = np.asarray(lm, np.float64)
    nose = lm[30] - lm[27]
    roll = np.radians(_roll(lm))
    mid = np.array([-np.sin(roll), np.cos(roll)])  # "down" in the face's own frame
    cross = mid[0] * nose[1] - mid[1] * nose[0]
    dot = float(mid @ nose)
    return float(-np.degrees(np.arctan2(cross, dot)))


def six_points(lm: np.ndarray) -> tuple[np.ndarray, bool]:
    """float (68,2) -> (float32 (6,2) points a..f, approximate flag)."""
    lm = np.asarray(lm, np.float64)
    jaw = lm[JAW]
    b = (lm[28] + lm[29]) / 2.0
    nose_dir = lm[30] - lm[27]
    n = np.linalg.norm(nose_dir)
    nose_dir = nose_dir / n if n > 1e-6 else np.array([0.0, 1.0])
    perp = np.array([-nose_dir[1], nose_dir[0]])  # points to the image-left for an upright face
    approx = False
    pts: dict[str, np.ndarray] = {"b": b}

    def side_hits(origin: np.ndarray, names: tuple[str, str]) -> None:
        nonlocal approx
        hits = _intersect_polyline(origin, perp, jaw)
        left = [h for h in hits if h[0] > 0]
        right = [h for h in hits if h[0] < 0]
        for name, cand, pick in ((names[0], left, min), (names[1], right, max)):
            if cand:
                pts[name] = pick(cand, key=lambda h: abs(h[0]))[1]
            else:
                pts[name] = lm[_FALLBACK[name]]
                approx = True

    side_hits(b, ("a", "c"))
    mouth = lm[48:68].mean(0)
    side_hits(mouth, ("d", "f"))
    hits = [h for h in _intersect_polyline(b, nose_dir, lm[4:13]) if h[0] > 0]
    if hits:
        pts["e"] = min(hits, key=lambda h: h[0])[1]
    else:
        pts["e"] = lm[8]
        approx = True
    six = np.stack([pts[k] for k in "abcdef"]).astype(np.float32)
    return six, approx


def analyse(lm: np.ndarray, image_shape: tuple[int, ...] | None = None,
            min_face_px: float = 12.0) -> FaceGeometry:
    """Six points, tilt and a plausibility check of a landmark set; never raises."""
    lm = np.asarray(lm, np.float64)
    nan6 = np.full((6, 2), np.nan, np.float32)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        return FaceGeometry(nan6, float("nan"), float("nan"), "front", True,
                            "geometry_failed", "landmarks are not 68 finite points")
    width = float(np.linalg.norm(lm[16] - lm[0]))
    height = float(np.linalg.norm(lm[8] - (lm[0] + lm[16]) / 2))
    tilt = face_tilt(lm)
    roll = _roll(lm)
    view = "front" if abs(tilt) <= VIEW_TILT_DEG else ("right" if tilt > 0 else "left")
    six, approx = six_points(lm)

    def failed(msg: str) -> FaceGeometry:
        return FaceGeometry(six, tilt, roll, view, approx, "geometry_failed", msg)

    if width < min_face_px or height < min_face_px:
        return failed(f"face too small for a mask ({width:.0f}x{height:.0f} px)")
    if not 0.35 < height / max(width, 1e-6) < 2.5:
        return failed(f"implausible face proportions (height/width {height / width:.2f})")
    if image_shape is not None:
        h, w = image_shape[:2]
        inside = np.mean((lm[:, 0] >= -2) & (lm[:, 0] <= w + 1) & (lm[:, 1] >= -2) & (lm[:, 1] <= h + 1))
        if inside < 0.5:
            return failed(f"only {inside:.0%} of the landmarks lie inside the image")
    return FaceGeometry(six, tilt, roll, view, approx)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1, ...); 0 when the union is empty."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a[:4])
    bx0, by0, bx1, by1 = (float(v) for v in b[:4])
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


#: weight of the squared centre offset against the box area in :func:`primary_face`
CENTRE_WEIGHT = 2.0


def primary_face(faces: Sequence[object], shape: tuple[int, ...],
                 geos: Sequence[FaceGeometry] | None = None) -> int | None:
    """Index of an image's primary face, or None when no face qualifies.

    The one rule every part of the project uses (the aligned crop and the Parquet
    box/landmarks of the data-set job, the face evaluation embeds): among the faces whose
    geometry is usable (``geos[i].status == "ok"``; every face when ``geos`` is None), the
    one with the highest ``area - CENTRE_WEIGHT * offset**2``, where ``area`` is the box
    area and ``offset`` the distance of the box centre from the image centre, in pixels.

    * Usable only: the aligned crop is cut from this face and a mask drawn on it, so a
      failed landmark fit must never be chosen (its crop would be garbage in a training
      set).  When no face is usable there is no primary face (None), rather than an
      unusable one.
    * Centre preference (davidsandberg/facenet's ``align_dataset_mtcnn`` rule): face data
      sets (LFW, VGGFace2, CASIA) are cropped around their subject, and a bystander can be
      as large as the subject; a larger face still wins unless it sits far off-centre.
      Measured on 3,000 random LFW-deepfunneled images: 149 have several faces, and in 7 of
      them "the largest usable face" is a bystander (e.g. Todd_Haynes_0001: two 104 px
      faces) where this rule picks the centred subject.
    * Ties go to the lower index (faces come sorted left to right).
    * A face the detector's face check rejected (``Face.plausible`` False) never qualifies,
      whatever ``geos`` says, nor does one whose landmark fit did not settle
      (``Face.fit_error``), so every caller (masking, embedding, training records) skips
      them alike.

    ``faces``: objects with a ``box`` attribute (:class:`masktheface.landmarks.Face`) or
    boxes (x0, y0, x1, y1, ...); ``shape``: the image's shape (H, W[, C]).
    """
    if geos is not None and len(geos) != len(faces):
        raise ValueError(f"{len(geos)} geometries for {len(faces)} faces")
    h, w = shape[:2]
    best, best_score = None, -np.inf
    for i, f in enumerate(faces):
        if geos is not None and geos[i].status != "ok":
            continue
        if getattr(f, "plausible", True) is False:  # the detector's face check said: not a face
            continue
        if getattr(f, "fit_error", None):  # its landmark fit did not settle
            continue
        x0, y0, x1, y1 = (float(v) for v in (getattr(f, "box", f))[:4])
        offset2 = ((x0 + x1) / 2 - w / 2) ** 2 + ((y0 + y1) / 2 - h / 2) ** 2
        score = (x1 - x0) * (y1 - y0) - CENTRE_WEIGHT * offset2
        if score > best_score:
            best, best_score = i, score
    return best
