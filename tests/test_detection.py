"""Face detection on what the default must find (issue 10): tight face crops, small faces in
crowds and group photos; non-faces reported as such.  Real faces from ../shared/data."""
from __future__ import annotations

import glob

import cv2
import numpy as np
import pytest

from masktheface.datadir import DATA_HINT, shared_data
from masktheface.geometry import box_iou
from masktheface.landmarks import FaceAnalyzer
from masktheface.pipeline import Masker, MaskerConfig, Variant
from masktheface.spec import MaskSpec

DATA = shared_data()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "lfw").is_dir(),
                                reason=f"real faces not found ({DATA_HINT})")


@pytest.fixture(scope="module")
def auto() -> FaceAnalyzer:
    return FaceAnalyzer(upsample="auto")


@pytest.fixture(scope="module")
def up1() -> FaceAnalyzer:
    return FaceAnalyzer(upsample="1")


def _lfw(n: int, seed: int) -> list[str]:
    files = sorted(glob.glob(str(DATA / "lfw" / "lfw-deepfunneled" / "*" / "*.jpg")))
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.choice(len(files), n, replace=False)]


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _tight_crop(rgb: np.ndarray, lm: np.ndarray, size: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The face cut to its landmark box (jaw, brows, chin) grown by ``margin``, squared and
    resized to ``size`` -> (crop, truth box in the crop)."""
    x0, y0 = lm[0:17, 0].min(), lm[17:27, 1].min()
    x1, y1 = lm[0:17, 0].max(), lm[0:17, 1].max()
    side = max(x1 - x0, y1 - y0) * (1 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = size / side
    M = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
    crop = cv2.warpAffine(rgb, M, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)
    truth = np.array([x0, y0, x1, y1]) * s + [M[0, 2], M[1, 2], M[0, 2], M[1, 2]]
    return crop, truth


def _found(faces, truth) -> bool:
    return any(f.plausible and box_iou(f.box, truth) >= 0.3 for f in faces)


@needs_data
def test_tight_crops_are_found(auto, up1):
    # faces filling 100-270 px images, cut into the forehead and the chin (as masked-face and
    # web-face sets ship them): the default finds them, HOG's scans alone miss many
    hits = exhaustive = total = 0
    for k, f in enumerate(_lfw(12, seed=5)):
        rgb = _rgb(f)
        face = max(auto.faces(rgb), key=lambda x: float(x.box[2] - x.box[0]))
        size, margin = (100, 160, 270)[k % 3], (-0.15, -0.05, 0.05)[k % 3]
        crop, truth = _tight_crop(rgb, face.landmarks, size, margin)
        found = auto.faces(crop)
        hits += _found(found, truth)
        exhaustive += _found(up1.faces(crop), truth)
        total += 1
    assert hits >= total - 1, f"{hits}/{total} tight crops found"
    assert hits >= exhaustive


@needs_data
def test_crops_pass_is_used_only_when_nothing_else_is_found(auto):
    rgb = _rgb(DATA / "lfw/lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg")
    assert {d.pass_ for d in auto.detections(rgb)} == {"scan"}


def _crowd(files: list[str], cells: list[int], width: int = 900) -> np.ndarray:
    """LFW images tiled in rows of the given cell sizes."""
    rows, k = [], 0
    for cell in cells:
        row = np.full((cell, width, 3), 128, np.uint8)
        for c in range(width // cell):
            row[:, c * cell:(c + 1) * cell] = cv2.resize(_rgb(files[k % len(files)]), (cell, cell),
                                                         interpolation=cv2.INTER_AREA)
            k += 1
        rows.append(row)
    return np.vstack(rows)


@needs_data
@pytest.mark.parametrize("cells", [[220, 110, 110, 90], [150, 100, 100, 100]])
def test_auto_finds_what_upsampling_finds_in_crowds(auto, up1, cells):
    crowd = _crowd(_lfw(40, seed=len(cells) + cells[0]), cells)
    a = [f for f in auto.faces(crowd) if f.plausible]
    u = [f for f in up1.faces(crowd) if f.plausible]
    assert len(u) >= 15
    missed = [f.box for f in u if not any(box_iou(f.box, g.box) >= 0.3 for g in a)]
    assert not missed, f"auto missed {len(missed)} of the {len(u)} faces upsampling finds"


@needs_data
def test_group_photo_small_faces(auto, up1):
    # multiface.jpg at half size: faces ~50 px, below HOG's 80 px window without upsampling
    rgb = _rgb(DATA / "photos/multiface.jpg")
    half = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    u = up1.faces(half)
    a = auto.faces(half)
    assert len(u) >= 5
    assert all(any(box_iou(f.box, g.box) >= 0.3 for g in a) for f in u)


@needs_data
def test_mission_patch_is_not_a_face():
    # astronaut.png: HOG scores the mission patch on the suit as a face (0.04); the face
    # check reports it as not_a_face, and only the real face is masked
    m = Masker()
    data = (DATA / "photos/astronaut.png").read_bytes()
    p = m.process(data, "astronaut", [Variant("original"), Variant("N95", (MaskSpec("N95"),))])
    orig, masked = p.outputs
    statuses = sorted(f.status for f in masked.faces)
    assert statuses == ["not_a_face", "ok"], [(f.box, f.status, f.error) for f in masked.faces]
    patch = next(f for f in masked.faces if f.status == "not_a_face")
    assert patch.box[1] > 300 and "not a face" in patch.error
    assert masked.primary_face.status == "ok" and masked.primary_face.box[1] < 200
    assert p.status == "ok" and masked.alpha is None  # alpha not kept unless asked


@needs_data
def test_confidence_and_size_flags():
    rgb = _rgb(DATA / "photos/astronaut.png")
    assert len(FaceAnalyzer().detect(rgb)) == 2
    assert len(FaceAnalyzer(min_score=0.5).detect(rgb)) == 1          # the patch scores 0.04
    assert len(FaceAnalyzer(min_face=120).detect(rgb)) == 0           # both are ~90 px
    unchecked = FaceAnalyzer(verify=False).faces(rgb)
    assert all(f.plausible for f in unchecked)


@needs_data
def test_non_faces_are_not_masked():
    # textures (flowers, checks, fruit): whatever the detector's passes hit there is never masked
    m = Masker()
    files = sorted(glob.glob(str(DATA / "masktheface_templates/masks/textures/*/*")))
    assert files
    for f in files:
        bgr = cv2.imread(f)
        if bgr is None:
            continue
        res = m.mask(np.ascontiguousarray(bgr[..., :3]), MaskSpec("surgical"))
        assert res.n_masked == 0, (f, [(x.box, x.status) for x in res.faces])
        assert res.status == "no_face"


@needs_data
def test_only_non_faces_means_no_face_and_no_output():
    m = Masker()
    bgr = cv2.imread(str(DATA / "photos/astronaut.png"))
    crop = bgr[300:460, 90:250].copy()              # the patch alone
    faces = [f for f in m.find_faces(crop)]
    res = m.mask(crop, MaskSpec("surgical"), faces=faces)
    assert res.n_masked == 0
    assert res.status == "no_face"


def test_masker_config_reaches_the_analyzer():
    m = Masker(MaskerConfig(min_face=33, min_score=0.25, verify=False))
    assert (m.analyzer.min_face, m.analyzer.min_score, m.analyzer.verify) == (33, 0.25, False)


# -- the fit check: a misplaced box pulls the fit off the face (issue 10) -------------------
def _moved(box, dy: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return (x0, y0 + dy * (y1 - y0), x1, y1 + dy * (y1 - y0))


def _mouth_off(lm: np.ndarray, ref: np.ndarray) -> float:
    from masktheface.landmarks import eye_distance
    return float(np.linalg.norm(lm[48:68] - ref[48:68], axis=1).mean()) / eye_distance(ref)


@needs_data
def test_a_box_too_high_is_refitted_onto_the_mouth():
    # Aaron_Tippin_0001: from a box 20 % of its height too high the plain fit puts the mouth
    # points 1.2 eye distances off; one refit from the box its landmarks imply puts them back
    rgb = _rgb(DATA / "lfw/lfw-deepfunneled/Aaron_Tippin/Aaron_Tippin_0001.jpg")
    plain, checked = FaceAnalyzer(refit=False), FaceAnalyzer()
    (det,) = plain.detections(rgb)
    ref = plain.landmarks(rgb, det.box)
    high = _moved(det.box, -0.2)
    assert _mouth_off(plain.landmarks(rgb, high), ref) > 0.5
    lm, refits, error = checked.fit(rgb, high)
    assert error is None and refits >= 1
    assert _mouth_off(lm, ref) < 0.1
    # and through a supplied box, as a data set's own boxes would come
    (face,) = checked.faces(rgb, boxes=[high])
    assert face.refits >= 1 and face.fit_error is None and _mouth_off(face.landmarks, ref) < 0.1
    # a well-placed box keeps its fit exactly (no refit)
    lm0, refits0, error0 = checked.fit(rgb, det.box)
    assert refits0 == 0 and error0 is None and np.array_equal(lm0, ref)


@needs_data
def test_a_supplied_box_cutting_the_brows_is_snapped_to_the_detectors_box():
    # AJ_Lamas_0001: from a box 15 % of its height too low the refits settle on a fit that is
    # wrong and stable (mouth 0.9 eye distances off); a supplied box is snapped to HOG's box
    # around it instead, and its fit is the detector's again
    rgb = _rgb(DATA / "lfw/lfw-deepfunneled/AJ_Lamas/AJ_Lamas_0001.jpg")
    checked = FaceAnalyzer()
    (det,) = checked.detections(rgb)
    ref = checked.landmarks(rgb, det.box)
    low = _moved(det.box, 0.15)
    lm, refits, error = checked.fit(rgb, low)
    assert error is None and _mouth_off(lm, ref) > 0.5          # the detected-box path: stuck
    snapped = checked.snap(rgb, low)
    assert snapped is not None and box_iou(snapped, det.box) > 0.8
    (face,) = checked.faces(rgb, boxes=[low])                   # the supplied-box path snaps
    assert face.fit_error is None and face.refits >= 1 and _mouth_off(face.landmarks, ref) < 0.05
    assert np.allclose(face.box, low)                           # the face keeps the box it was given


@needs_data
def test_snapping_finds_the_face_inside_the_box_among_several():
    rgb = _rgb(DATA / "photos/knn_examples/test/obama_and_biden.jpg")
    fa = FaceAnalyzer()
    dets = fa.detections(rgb)
    assert len(dets) == 3
    for i, d in enumerate(dets):
        snapped = fa.snap(rgb, _moved(d.box, 0.15))
        ious = [box_iou(snapped, e.box) for e in dets]
        assert int(np.argmax(ious)) == i and ious[i] > 0.6
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    assert fa.snap(noise, (40, 40, 160, 160)) is None            # nothing there: no snap


def test_a_fit_that_does_not_settle_is_reported_and_not_masked():
    rgb = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    lm, refits, error = FaceAnalyzer().fit(rgb, (40, 40, 160, 160))
    assert refits == FaceAnalyzer.MAX_REFITS and "landmark fit unstable" in error
    m = Masker()
    (face,) = m.find_faces(rgb[..., ::-1].copy(), boxes=[(40, 40, 160, 160)])
    assert face.fit_error
    from masktheface.geometry import primary_face
    assert primary_face([face], rgb.shape) is None
    res = m.mask(rgb[..., ::-1].copy(), MaskSpec("surgical"), faces=[face])
    assert res.n_masked == 0 and res.faces[0].status == "geometry_failed"
    assert "landmark fit unstable" in res.faces[0].error
    # unchecked, the same box is fitted and trusted
    (raw,) = Masker(MaskerConfig(refit=False)).find_faces(rgb[..., ::-1].copy(), boxes=[(40, 40, 160, 160)])
    assert raw.fit_error is None and raw.refits == 0
