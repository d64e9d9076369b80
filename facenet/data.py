"""Training data for FaceNet: face records, model-specific crops, online augmentation.

A training set is a :class:`FaceRecords`: one entry per usable face image (encoded bytes,
integer identity label, the 68 *unmasked* landmarks, the variant it is, the source image it
came from).  It is built from the Parquet that ``jobs.mask_dataset`` writes
(:func:`records_from_table`, columns from :mod:`masktheface.dataset_schema`) or from an image
folder (:func:`records_from_folder`, landmarks found with dlib once).

:class:`SampleLoader` turns records into model input: decode -> (online mask, drawn from the
seed, the epoch and the item) -> crop with the model's own alignment -> flip / jitter ->
float32 (N,3,S,S) RGB 0..255 (models standardise their input themselves, see
:mod:`facenet.model`).  Crops always come from the unmasked landmarks, so a masked image and
its unmasked twin are cut identically, as the paper aligns.

Alignments (:data:`ALIGNMENT_FOR`):

* ``dlib_chip`` - dlib's ``get_face_chip`` (150 px, padding 0.25): what dlib's ResNet was
  trained on; any other crop costs it accuracy.
* ``facenet`` - a square around the landmarks with a 25 % margin (``masktheface.align``,
  the 160x160 crops of FaceNet / ``mask_dataset --aligned 160``).
* ``arcface`` - the five-point similarity onto the 112x112 ArcFace template.
"""
from __future__ import annotations

import logging
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: the crop each architecture is trained and evaluated on
ALIGNMENT_FOR = {"dlib_resnet": "dlib_chip", "inception_resnet_v1": "facenet", "mobilefacenet": "arcface"}
ALIGNMENTS = ("dlib_chip", "facenet", "arcface")

#: the variant name of unmasked images (``masktheface.dataset_schema`` / ``mask_dataset``)
ORIGINAL = "original"


def alignment_for(arch: str) -> str:
    """Registry name -> alignment name (``facenet`` for unknown architectures)."""
    return ALIGNMENT_FOR.get(arch, "facenet")


# ------------------------------------------------------------------------------------------
# Crops
# ------------------------------------------------------------------------------------------

def _dlib_detection(landmarks: np.ndarray):
    import dlib
    lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
    x0, y0 = np.floor(lm.min(0)).astype(int)
    x1, y1 = np.ceil(lm.max(0)).astype(int)
    rect = dlib.rectangle(int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1)))
    return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])


def face_crop(bgr: np.ndarray, landmarks: np.ndarray, alignment: str, size: int) -> np.ndarray:
    """uint8 (H,W,3) BGR + float (68,2) landmarks -> uint8 (size,size,3) **RGB** crop.

    ``dlib_chip`` matches ``facenet.embed.DlibEmbedder.chip`` (the same dlib call), so the
    torch port of dlib's network sees exactly the chips dlib's own network saw."""
    return face_crop_rgb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), landmarks, alignment, size)


def face_crop_rgb(rgb: np.ndarray, landmarks: np.ndarray, alignment: str, size: int) -> np.ndarray:
    """:func:`face_crop` on an RGB image.  ``dlib_chip`` also takes dlib's five points (5,2);
    the other alignments need the 68."""
    from masktheface import align
    lm = np.asarray(landmarks, np.float32).reshape(-1, 2)
    if alignment == "dlib_chip":
        import dlib
        return dlib.get_face_chip(np.ascontiguousarray(rgb), _dlib_detection(lm), size=size, padding=0.25)
    if alignment == "facenet":
        return align.warp_crop(rgb, align.transform_160(lm, size), size)
    if alignment == "arcface":
        M = align.transform_112(lm)
        if size != 112:
            M = M * (size / 112.0)
        return align.warp_crop(rgb, M, size)
    raise ValueError(f"unknown alignment {alignment!r}; one of {ALIGNMENTS}")


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------

@dataclass
class FaceRecords:
    """Parallel arrays, one entry per usable face image.

    ``images`` encoded bytes; ``labels`` int64 (N,) dense identity labels (masked and
    unmasked images of one person share theirs); ``identities`` the names, indexed by label;
    ``landmarks`` float32 (N,68,2) of the unmasked face, where online masks go; ``align``
    float32 (N,68,2) the points crops are cut with (the detector's plain fit, a data set's
    ``align_landmarks``; None: ``landmarks``); ``variants`` and ``groups`` (the
    source image key, the same for an image and its masked twins); ``skipped`` counts of
    what was left out and why (nothing is dropped silently); ``qualities`` the source
    photo's JPEG quality per image where ``images`` holds a re-encoding of it (a
    ``mask_dataset`` table's ``source_quality``), None where the bytes tell it themselves
    (online masks are given the photo's compression at that quality)."""

    images: list[bytes]
    labels: np.ndarray
    identities: list[str]
    landmarks: np.ndarray
    variants: list[str]
    groups: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    qualities: list[int | None] | None = None
    align: np.ndarray | None = None

    def alignment(self, i: int) -> np.ndarray:
        """float32 (68,2): the points record ``i`` is cropped with."""
        return self.landmarks[i] if self.align is None else self.align[i]

    def _align_at(self, index: Any) -> np.ndarray | None:
        return None if self.align is None else self.align[index]

    def quality(self, i: int) -> int | None:
        """The source JPEG quality of record ``i`` when known apart from its bytes."""
        return None if self.qualities is None else self.qualities[i]

    def _qualities_at(self, index: Iterable[int]) -> list[int | None] | None:
        return None if self.qualities is None else [self.qualities[i] for i in index]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_identities(self) -> int:
        return len(self.identities)

    def subset(self, index: Sequence[int] | np.ndarray) -> "FaceRecords":
        """The records at ``index``, labels re-densified."""
        index = np.asarray(index, np.int64)
        old = self.labels[index]
        uniq, new = np.unique(old, return_inverse=True)
        return FaceRecords([self.images[i] for i in index], new.astype(np.int64),
                           [self.identities[u] for u in uniq], self.landmarks[index],
                           [self.variants[i] for i in index], [self.groups[i] for i in index],
                           dict(self.skipped), self._qualities_at(index), self._align_at(index))

    def without_identities(self, names: set[str] | frozenset[str], min_images: int = 2) -> "FaceRecords":
        """These records less every image of the named identities (counted in ``skipped``
        as ``excluded_identity``), identities left with fewer than ``min_images`` dropped."""
        ids = [self.identities[int(lbl)] for lbl in self.labels]
        keep = [i for i, n in enumerate(ids) if n not in names]
        skipped = dict(self.skipped)
        _count(skipped, "excluded_identity", len(ids) - len(keep))
        return build_records([self.images[i] for i in keep], [ids[i] for i in keep], self.landmarks[keep],
                             [self.variants[i] for i in keep], [self.groups[i] for i in keep], skipped, min_images,
                             self._qualities_at(keep), self._align_at(keep))

    def split_identities(self, holdout: int, seed: int = 0) -> tuple["FaceRecords", "FaceRecords"]:
        """(train, held-out): ``holdout`` whole identities drawn with the seed go to the second."""
        rng = np.random.default_rng([seed, 0x484F4C44])
        held = set(rng.choice(self.n_identities, size=min(holdout, self.n_identities), replace=False).tolist())
        is_held = np.array([int(lbl) in held for lbl in self.labels])
        return self.subset(np.flatnonzero(~is_held)), self.subset(np.flatnonzero(is_held))

    def summary(self) -> dict[str, Any]:
        per_variant: dict[str, int] = {}
        for v in self.variants:
            per_variant[v] = per_variant.get(v, 0) + 1
        counts = np.bincount(self.labels, minlength=self.n_identities) if len(self) else np.zeros(0, int)
        return {"images": len(self), "identities": self.n_identities, "per_variant": per_variant,
                "images_per_identity_min": int(counts.min()) if counts.size else 0,
                "images_per_identity_median": float(np.median(counts)) if counts.size else 0.0,
                "skipped": dict(self.skipped)}


def _count(d: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        d[reason] = d.get(reason, 0) + n


def build_records(images: Sequence[bytes], identities: Sequence[str], landmarks: Sequence[Any],
                  variants: Sequence[str], groups: Sequence[str],
                  skipped: dict[str, int] | None = None, min_images: int = 2,
                  qualities: Sequence[int | None] | None = None, align: Sequence[Any] | None = None) -> FaceRecords:
    """Assemble records from parallel lists; an identity with fewer than ``min_images``
    usable images cannot give a positive pair and is left out (counted).  ``align``: the
    points to crop with, per image (None, or None entries: the landmarks)."""
    skipped = dict(skipped or {})
    names = sorted(set(identities))
    counts = {n: 0 for n in names}
    for n in identities:
        counts[n] += 1
    keep_names = [n for n in names if counts[n] >= min_images]
    dropped = [n for n in names if counts[n] < min_images]
    _count(skipped, f"identity_with_fewer_than_{min_images}_images", sum(counts[n] for n in dropped))
    label_of = {n: i for i, n in enumerate(keep_names)}
    idx = [i for i, n in enumerate(identities) if n in label_of]
    lms = np.zeros((len(idx), 68, 2), np.float32)
    for j, i in enumerate(idx):
        lms[j] = np.asarray(landmarks[i], np.float32).reshape(68, 2)
    al = None
    if align is not None and any(align[i] is not None for i in idx):
        al = lms.copy()
        for j, i in enumerate(idx):
            if align[i] is not None:
                al[j] = np.asarray(align[i], np.float32).reshape(68, 2)
    return FaceRecords([images[i] for i in idx], np.array([label_of[identities[i]] for i in idx], np.int64),
                       keep_names, lms, [variants[i] for i in idx], [groups[i] for i in idx], skipped,
                       None if qualities is None else [qualities[i] for i in idx], al)


def records_from_table(table, variants: Sequence[str] | None = None, *, min_images: int = 2) -> FaceRecords:
    """A ``mask_dataset`` Parquet table (pyarrow) -> records.

    Rows whose status is not ``ok``, that have no image or no landmarks, are counted in
    ``skipped`` by reason; ``variants`` (default: all) selects the variants to train on and
    an unknown one raises ``ValueError`` (a typo must not train on nothing)."""
    from masktheface import dataset_schema as S
    cols = table.column_names
    missing = [c for c in (S.KEY, S.IDENTITY, S.VARIANT, S.STATUS, S.IMAGE, S.LANDMARKS) if c not in cols]
    if missing:
        raise ValueError(f"not a mask_dataset table: columns {missing} missing (has {cols})")
    present = sorted(set(table.column(S.VARIANT).to_pylist()))
    if variants:
        unknown = [v for v in variants if v not in present]
        if unknown:
            raise ValueError(f"variants {unknown} are not in the data set (it has {present})")
    want = set(variants or present)
    key = table.column(S.KEY).to_pylist()
    ident = table.column(S.IDENTITY).to_pylist()
    var = table.column(S.VARIANT).to_pylist()
    status = table.column(S.STATUS).to_pylist()
    img = table.column(S.IMAGE).to_pylist()
    lm = table.column(S.LANDMARKS).to_pylist()
    # the source's JPEG quality (image is a re-encoding); absent from tables before it existed
    qual = table.column(S.SOURCE_QUALITY).to_pylist() if S.SOURCE_QUALITY in cols else [None] * table.num_rows
    # the points the job cut its crops with (None before schema version 4: the landmarks)
    align = table.column(S.ALIGN_LANDMARKS).to_pylist() if S.ALIGN_LANDMARKS in cols else [None] * table.num_rows
    skipped: dict[str, int] = {}
    rows = []
    for i in range(table.num_rows):
        if var[i] not in want:
            continue
        if status[i] != "ok":
            _count(skipped, f"status_{status[i]}")
        elif img[i] is None:
            _count(skipped, "no_image")
        elif lm[i] is None:
            _count(skipped, "no_landmarks")
        else:
            rows.append(i)
    return build_records([img[i] for i in rows], [ident[i] for i in rows], [lm[i] for i in rows],
                         [var[i] for i in rows], [key[i] for i in rows], skipped, min_images,
                         [qual[i] for i in rows], [align[i] for i in rows])


#: where HOG finds the face in a 112 px ArcFace-aligned crop (median box on glint_subset, as
#: fractions of the side): the landmark predictor is fitted there when the detector misses
PREALIGNED_BOX = (0.14, 0.23, 0.91, 0.99)


def records_from_folder(root: str, *, analyzer=None, max_per_identity: int | None = None,
                        min_images: int = 2, prealigned: bool = False) -> FaceRecords:
    """An identity-folder tree (``<identity>/<image>``) -> unmasked records; landmarks from
    dlib (the primary face of each image, the library's rule).  ``prealigned``: the images are
    aligned face crops (glint's 112 px, MFR2's 160 px), where the predictor is fitted in the
    crop's known face box instead of running the detector (HOG misses tight crops)."""
    import os

    from masktheface.geometry import analyse, primary_face
    from masktheface.imageio import IMAGE_EXTENSIONS, decode_image
    from masktheface.landmarks import FaceAnalyzer

    analyzer = analyzer or FaceAnalyzer()
    images, names, lms, groups, align = [], [], [], [], []
    skipped: dict[str, int] = {}
    for ident in sorted(os.listdir(root)):
        folder = os.path.join(root, ident)
        if not os.path.isdir(folder):
            continue
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(tuple(IMAGE_EXTENSIONS)))
        if max_per_identity:
            files = files[:max_per_identity]
        for f in files:
            data = open(os.path.join(folder, f), "rb").read()
            try:
                rgb = cv2.cvtColor(decode_image(data).bgr, cv2.COLOR_BGR2RGB)
            except Exception:
                _count(skipped, "decode_error")
                continue
            faces = analyzer.faces(rgb)
            if not faces and prealigned:
                h, w = rgb.shape[:2]
                faces = analyzer.faces(rgb, [tuple(b * s for b, s in zip(PREALIGNED_BOX, (w, h, w, h)))])
            if not faces:
                _count(skipped, "no_face")
                continue
            i = primary_face(faces, rgb.shape, [analyse(f.landmarks, rgb.shape) for f in faces])
            if i is None:
                _count(skipped, "no_usable_face")
                continue
            images.append(data)
            names.append(ident)
            lms.append(faces[i].landmarks)
            align.append(faces[i].first_fit)           # None: not refitted, the landmarks
            groups.append(f"{ident}/{f}")
    return build_records(images, names, lms, [ORIGINAL] * len(images), groups, skipped, min_images, align=align)


def concat_records(parts: Iterable[FaceRecords]) -> FaceRecords:
    """Several record sets -> one; identities with the same name are the same person."""
    parts = list(parts)
    images, names, lms, variants, groups, quals, align = [], [], [], [], [], [], []
    skipped: dict[str, int] = {}
    for p in parts:
        quals += p.qualities if p.qualities is not None else [None] * len(p)
        images += p.images
        names += [p.identities[int(lbl)] for lbl in p.labels]
        lms += list(p.landmarks)
        align += list(p.landmarks if p.align is None else p.align)
        variants += p.variants
        groups += p.groups
        for k, v in p.skipped.items():
            _count(skipped, k, v)
    return build_records(images, names, lms, variants, groups, skipped, min_images=1,
                         qualities=quals if any(q is not None for q in quals) else None,
                         align=align if any(p.align is not None for p in parts) else None)


# ------------------------------------------------------------------------------------------
# Online augmentation and loading
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """``mask_prob``: chance that an unmasked record gets a simulated mask while loading
    (0 = off); ``mask_types``/``placements`` to draw from; ``flip``: horizontal flips half
    the time; ``jitter``: random shift of the crop, as a fraction of its side; ``clean``:
    online masks in the clean look (``MaskerConfig(realism=False)``: no scene tint, grain,
    JPEG matching, shadow, creases or fit variation), e.g. to measure what realism does to
    training."""

    mask_prob: float = 0.0
    mask_types: tuple[str, ...] = ("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth")
    placements: tuple[str, ...] = ("correct",)
    flip: bool = True
    jitter: float = 0.0
    clean: bool = False


def item_seed(seed: int, epoch: int, index: int, key: str) -> list[int]:
    """The entropy of one draw: run seed, epoch, record index and its key (so a restarted
    worker redraws the same masks for the same step)."""
    return [int(seed) & 0xFFFFFFFF, int(epoch), int(index), zlib.crc32(key.encode("utf-8"))]


class SampleLoader:
    """Records -> model input batches.

    ``alignment``/``size``: the model's crop (:func:`alignment_for`, ``model.input_size``).
    ``threads``: load the samples of one :meth:`batch` in that many threads (0/1: one after
    the other in the calling thread).  The output does not depend on it: every sample draws
    from its own generator (:func:`item_seed`), so neither the order nor the thread that
    loads it matters.  Decoding, warping and mask drawing are OpenCV/numpy calls that release
    the GIL, so threads overlap on a multi-core worker.

    Online masks need a ``masktheface`` Masker, built on first use.  Threads never share
    one: each sample checks a Masker out of an idle list and puts it back, so there are at
    most ``threads`` of them, each used by one thread at a time.  Not a lock around one
    shared Masker: masking is most of the cost of a masked sample, and a lock would load
    those one at a time again.  Not ``threading.local``: the threads live for one batch, so
    per-thread Maskers would be rebuilt every batch.  The Maskers share one FaceAnalyzer
    (dlib's predictor, ~100 MB, ~1.5 s to load): it guards its dlib objects with its own lock,
    and masking from stored landmarks does not call it at all."""

    def __init__(self, records: FaceRecords, alignment: str, size: int,
                 augment: AugmentConfig = AugmentConfig(), seed: int = 0, threads: int = 0) -> None:
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; one of {ALIGNMENTS}")
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0, not {threads}")
        self.records = records
        self.alignment = alignment
        self.size = int(size)
        self.augment = augment
        self.seed = int(seed)
        self.threads = int(threads)
        self.counts: dict[str, int] = {}
        self.maskers_built = 0
        self._idle_maskers: queue.SimpleQueue = queue.SimpleQueue()
        self._analyzer = None
        self._lock = threading.Lock()  # guards the first Masker's build, the counts

    def _checkout_masker(self):
        """An idle Masker, or a new one (the first loads dlib's models; later ones share them)."""
        try:
            return self._idle_maskers.get_nowait()
        except queue.Empty:
            pass
        from masktheface.pipeline import Masker, MaskerConfig
        config = MaskerConfig(realism=not self.augment.clean)
        with self._lock:  # threads starting together load dlib's predictor once, not once each
            if self._analyzer is None:
                m = Masker(config)
                self._analyzer = m.analyzer
            else:
                m = Masker(config, analyzer=self._analyzer)
            self.maskers_built += 1
        return m

    def _maybe_mask(self, bgr: np.ndarray, lm: np.ndarray, rng: np.random.Generator,
                    quality: int | None = None) -> np.ndarray:
        """``quality``: the photo's JPEG quality; the mask then carries its compression, as
        the data-set job's masks do (:meth:`masktheface.pipeline.Masker.match_quality`)."""
        from masktheface.spec import MaskSpec
        a = self.augment
        mask_type = str(rng.choice(a.mask_types))
        placement = str(rng.choice(a.placements))
        masker = self._checkout_masker()
        try:
            faces = masker.find_faces(bgr, landmarks=[lm])
            res = masker.mask(bgr, MaskSpec(mask_type, placement=placement), rng, faces=faces)
            if res.status == "ok":
                res = replace(res, image=masker.match_quality(res.image, res.alpha, quality, rng))
        finally:
            self._idle_maskers.put(masker)
        with self._lock:
            _count(self.counts, "online_masked" if res.status == "ok" else f"online_{res.status}")
        return res.image if res.status == "ok" else bgr

    def load(self, i: int, epoch: int = 0, train: bool = True) -> np.ndarray:
        """Record ``i`` -> uint8 (S,S,3) RGB crop (augmented when ``train``)."""
        from masktheface.imageio import decode_image
        r = self.records
        dec = decode_image(r.images[i])
        bgr = dec.bgr
        lm = r.landmarks[i]
        rng = np.random.default_rng(item_seed(self.seed, epoch, i, r.groups[i]))
        a = self.augment
        if train and a.mask_prob > 0 and r.variants[i] == ORIGINAL and rng.random() < a.mask_prob:
            q = r.quality(i)
            bgr = self._maybe_mask(bgr, lm, rng, dec.jpeg_quality if q is None else q)
        crop = face_crop(bgr, r.alignment(i), self.alignment, self.size)
        if train and a.jitter > 0:
            dx, dy = (rng.uniform(-a.jitter, a.jitter, 2) * self.size)
            M = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
            crop = cv2.warpAffine(crop, M, (self.size, self.size), borderMode=cv2.BORDER_REPLICATE)
        if train and a.flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop)

    def batch(self, index: Sequence[int], epoch: int = 0, train: bool = True) -> np.ndarray:
        """indices -> float32 (N,3,S,S) RGB 0..255, ready for the model; the same array
        whatever ``threads`` is.  A sample that fails raises its own exception here."""
        index = [int(i) for i in index]
        n = min(self.threads, len(index))
        if n <= 1:
            crops = [self.load(i, epoch, train) for i in index]
        else:
            # a pool per batch: no thread outlives the call (the cost, ~0.1 ms a thread, is
            # noise against a batch of decodes); map keeps the input order
            pool = ThreadPoolExecutor(n, thread_name_prefix="facenet-loader")
            try:
                crops = list(pool.map(lambda i: self.load(i, epoch, train), index))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2), dtype=np.float32)


def make_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Verification pairs from labelled records: int64 (M,2) indices and bool (M,) issame,
    half same-identity, half different, drawn with the seed (for validation on held-out
    identities when no pairs file is given)."""
    rng = np.random.default_rng([seed, 0x50414952])
    labels = np.asarray(labels)
    by_label: dict[int, np.ndarray] = {int(lbl): np.flatnonzero(labels == lbl) for lbl in np.unique(labels)}
    multi = [lbl for lbl, ix in by_label.items() if len(ix) >= 2]
    if not multi or len(by_label) < 2:
        raise ValueError("need at least two identities, one with two images, to make pairs")
    half = n_pairs // 2
    pairs, same = [], []
    for _ in range(half):
        lbl = multi[int(rng.integers(len(multi)))]
        a, b = rng.choice(by_label[lbl], 2, replace=False)
        pairs.append((a, b))
        same.append(True)
    keys = list(by_label)
    for _ in range(n_pairs - half):
        la, lb = rng.choice(len(keys), 2, replace=False)
        pairs.append((rng.choice(by_label[keys[la]]), rng.choice(by_label[keys[lb]])))
        same.append(False)
    # interleave the classes: k-fold threshold selection over contiguous folds needs both
    # classes in every fold
    order = rng.permutation(len(pairs))
    return np.asarray(pairs, np.int64)[order], np.asarray(same, bool)[order]

