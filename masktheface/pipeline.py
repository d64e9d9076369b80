"""The masking pipeline: faces -> geometry -> art -> warp -> shade -> composite.

:class:`Masker` holds the heavy state (dlib models, a template pack, caches of drawn art)
and is built once per process; every call takes arrays and returns frozen dataclasses.
:func:`Masker.process` is the whole per-image job used by the CLI and the Ray job: decode
bytes once, find faces once, render every requested variant, encode, and never raise for a
bad item — every failure becomes a status with an error message.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from . import align, geometry, realism, render
from .geometry import primary_face
from .imageio import DecodedImage, ImageDecodeError, decode_image, encode_image, output_for
from .landmarks import Face, FaceAnalyzer
from .masks import draw_builtin, is_builtin, load_pack, quantise_scale
from .spec import BUILTIN_TYPES, REGION_TYPES, MaskSpec, choose, parse_hex, variant_rng

log = logging.getLogger(__name__)

# Statuses.  Image level (MaskResult, VariantOutput, Processed): "ok", "no_face",
# "mask_failed", "decode_error", "too_large", "error" (the one list, with the jobs'
# "read_error", is masktheface.dataset_schema.STATUSES).  Face level (FaceResult): "ok",
# "geometry_failed", "not_a_face" (a detection that failed the face check), "warp_failed".
#: face-level statuses of a face that is not there to be masked (an image whose faces all
#: have one of these has no face)
NOT_FACES = ("not_a_face",)


def face_geometry(face: Face, shape: tuple[int, ...], geo: geometry.FaceGeometry | None = None
                  ) -> geometry.FaceGeometry:
    """The face's geometry (:func:`masktheface.geometry.analyse`, or ``geo`` when already
    analysed), with the detector's checks folded in: a detection that failed the face check
    gets status "not_a_face", a landmark fit that did not settle (``Face.fit_error``)
    "geometry_failed"; neither wins :func:`primary_face` nor gets a mask."""
    if geo is None:
        geo = geometry.analyse(face.landmarks, shape)
    if geo.status != "ok":
        return geo
    if not face.plausible:
        return replace(geo, status="not_a_face", error=face.check or "not a face")
    if face.fit_error:
        return replace(geo, status="geometry_failed", error=face.fit_error)
    return geo


@dataclass(frozen=True)
class MaskerConfig:
    detector: str = "hog"            # "hog" | "cnn"
    upsample: str = "auto"           # "auto" | "0" | "1" | "2"
    max_detect_side: int = 800       # detect larger photos on a downscaled copy
    min_face: int = 20               # drop detections smaller than this (box side, px)
    min_score: float | None = None   # drop detections scoring below this (None: the detector's own)
    verify: bool = True              # face check on detections that are not sure (non-faces -> not_a_face)
    refit: bool = True               # check each landmark fit by refitting (unsettled -> geometry_failed)
    max_pixels: int = 80_000_000     # refuse bigger images (decompression bombs)
    pack: str | None = None          # a MaskTheFace-format template pack folder
    shading: float = 0.6             # strength of the face-matched local shading (0 = off)
    realism: bool = True             # scene colour, grain/blur, shadow ring, fit variation (False: clean look)


@dataclass(frozen=True)
class FaceResult:
    """One face: ``box`` (x0,y0,x1,y1), ``landmarks`` float32 (68,2) of the unmasked face,
    ``six`` float32 (6,2) key points a..f, ``tilt_deg``, ``view``; ``spec`` drawn (None when
    no mask was asked for); ``status`` a face-level status; ``coverage`` mask area in px;
    ``align_landmarks`` the points aligned crops are cut with (``Face.align_landmarks``: the
    detector's plain fit; None: ``landmarks``)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    six: np.ndarray
    tilt_deg: float
    view: str
    spec: MaskSpec | None
    status: str
    error: str | None = None
    coverage: float = 0.0
    align_landmarks: np.ndarray | None = None

    @property
    def alignment(self) -> np.ndarray:
        """float32 (68,2): the points to align this face with (``align_landmarks`` or ``landmarks``)."""
        return self.landmarks if self.align_landmarks is None else self.align_landmarks


@dataclass(frozen=True)
class MaskResult:
    """``image`` uint8 (H,W,3) BGR, or (H,W) for grayscale sources; ``alpha`` float32 (H,W)
    union of the masks drawn, in [0,1]; ``status`` an image-level status."""

    image: np.ndarray
    alpha: np.ndarray
    faces: tuple[FaceResult, ...]
    status: str
    error: str | None = None

    @property
    def n_masked(self) -> int:
        return sum(f.status == "ok" and f.spec is not None for f in self.faces)


@dataclass(frozen=True)
class Variant:
    """A requested output: ``name`` (e.g. "original", "N95", "masked") and the specs drawn
    from per face (empty = the unmasked original)."""

    name: str
    specs: tuple[MaskSpec, ...] = ()
    #: "face": every face draws its own spec; "image": one draw for all faces of the image
    draw: str = "face"


@dataclass(frozen=True)
class VariantOutput:
    """One output of :meth:`Masker.process`: encoded ``image`` (None when there is nothing
    honest to write), encoded ``aligned`` crop of the primary face, and the metadata.
    ``primary``: index into ``faces`` of the primary face (the one ``aligned`` is cut from,
    see :func:`masktheface.geometry.primary_face`), None when no face is usable."""

    variant: str
    status: str
    error: str | None
    image: bytes | None
    aligned: bytes | None
    width: int
    height: int
    faces: tuple[FaceResult, ...]
    alpha: np.ndarray | None = field(default=None, repr=False)
    primary: int | None = None

    @property
    def primary_face(self) -> FaceResult | None:
        """The primary face's result (box, landmarks, spec drawn), or None."""
        return None if self.primary is None else self.faces[self.primary]

    @property
    def specs(self) -> tuple[MaskSpec | None, ...]:
        return tuple(f.spec for f in self.faces)


@dataclass(frozen=True)
class Processed:
    """Everything :meth:`Masker.process` made of one input.  ``primary``: index of the
    primary face among the ``n_faces`` found (the same in every output's ``faces``), None
    when no face is usable."""

    key: str
    status: str
    error: str | None
    outputs: tuple[VariantOutput, ...]
    n_faces: int
    seconds: float
    primary: int | None = None
    #: the input's JPEG quality (:func:`masktheface.imageio.jpeg_quality`), None if not a JPEG
    source_quality: int | None = None


#: smallest scale (px per canonical unit) built-in art is drawn at: a 50 px wide face
MIN_ART_SCALE = 1.0 / 16.0


@lru_cache(maxsize=64)
def _ratio_bounds(mask_type: str, placement: str) -> tuple[float, float]:
    """Plausible ``alpha area / landmark box`` of a built-in (type, placement), from its art."""
    art = draw_builtin(mask_type, placement, 0.125)
    return render.expected_ratio_bounds(art.bgra[..., 3], art.scale)


class Masker:
    """Puts masks on faces.  Build once per process (loads dlib's models, ~1.5 s)."""

    def __init__(self, config: MaskerConfig = MaskerConfig(), analyzer: FaceAnalyzer | None = None) -> None:
        self.config = config
        self.analyzer = analyzer or FaceAnalyzer(config.detector, config.upsample, config.max_detect_side,
                                                 config.min_face, config.min_score, config.verify,
                                                 config.refit)
        self.pack = None
        if config.pack:
            self.pack = load_pack(config.pack)
        self._styled = lru_cache(maxsize=256)(self._styled_uncached)

    # -- faces ---------------------------------------------------------------------------
    def find_faces(self, bgr: np.ndarray, boxes: Sequence[Sequence[float]] | None = None,
                   landmarks: Sequence[np.ndarray] | None = None, gray: np.ndarray | None = None) -> list[Face]:
        """uint8 (H,W,3) BGR (+ its gray version when at hand) -> faces (supplied
        boxes/landmarks skip detection)."""
        if landmarks is not None:
            return self.analyzer.faces(bgr, None, landmarks)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self.analyzer.faces(rgb, boxes, None, gray)

    # -- art -----------------------------------------------------------------------------
    def available_types(self) -> tuple[str, ...]:
        names = list(BUILTIN_TYPES)
        if self.pack is not None:
            names += [n for n in self.pack.templates if not n.endswith(("_left", "_right"))]
        return tuple(dict.fromkeys(names))

    def _texture(self, texture: str | None) -> np.ndarray | None:
        if texture is None:
            return None
        from .textures import resolve_texture
        return resolve_texture(texture, self.pack)

    def _styled_uncached(self, spec: MaskSpec, view: str, scale: float):
        """-> (kind, bgra uint8, origin/anchors, scale).  kind "mesh" or "homography"."""
        color = parse_hex(spec.color) if spec.color else None
        tex = self._texture(spec.texture)
        # a loaded pack's templates win over built-ins of the same name: whoever brings a
        # pack wants their own art
        if self.pack is not None:
            views = self.pack.views(spec.mask_type)
            if views:
                tpl = views.get(view) or views.get("front") or next(iter(views.values()))
                bgra = render.style_art(tpl.bgra, None, color, spec.color_weight, tex, spec.texture_weight)
                return "homography", bgra, tpl.anchors, 1.0
        if spec.mask_type in REGION_TYPES or is_builtin(spec.mask_type):
            art = draw_builtin(spec.mask_type, spec.placement, scale)
            bgra = render.style_art(art.bgra, art.fabric, color, spec.color_weight, tex, spec.texture_weight)
            return "mesh", bgra, art.origin, art.scale
        raise ValueError(f"unknown mask type {spec.mask_type!r}; known: {', '.join(self.available_types())}")

    # -- masking -------------------------------------------------------------------------
    def mask_face(self, image: np.ndarray, alpha: np.ndarray, face: Face, spec: MaskSpec,
                  geo: geometry.FaceGeometry | None = None, look: realism.Look = realism.CLEAN) -> FaceResult:
        """Draw one mask on ``image`` (uint8 (H,W,3) BGR, modified in place), union its alpha
        into ``alpha`` (float32 (H,W)); failures become the FaceResult's status.  ``geo``:
        the face's geometry when already analysed; ``look``: the realism drawn for this
        face (:func:`masktheface.realism.draw_look`; CLEAN = none)."""
        geo = face_geometry(face, image.shape, geo)
        box = tuple(float(v) for v in face.box)

        def result(status: str, error: str | None = None, coverage: float = 0.0) -> FaceResult:
            return FaceResult(box, face.landmarks, geo.six, geo.tilt_deg, geo.view, spec, status, error, coverage,
                              face.first_fit)

        if geo.status != "ok":
            return result(geo.status, geo.error)
        face_w = float(np.linalg.norm(face.landmarks[16] - face.landmarks[0]))
        try:
            # art is cached per scale: one ladder of scales (masks.quantise_scale) keeps both
            # this cache and the drawing cache small
            # never below MIN_ART_SCALE: the art is clipped to its hull shrunk by ~1.5 output px,
            # which at a tiny scale eats a chin mask whole; the warp samples it down instead
            art_scale = quantise_scale(max(face_w / 800.0, MIN_ART_SCALE))
            kind, bgra, ref, scale = self._styled(spec, geo.view, art_scale)
            if kind == "mesh":
                fitted = realism.vary_fit(face.landmarks, look)
                warped = render.warp_mesh(bgra, ref, scale, fitted, image.shape)
                # the bounds follow the type and placement (a chin mask is small on purpose)
                lo, hi = _ratio_bounds(spec.mask_type, spec.placement)
                area = render.check_warp(warped, render.landmark_box(face.landmarks), image.shape, lo, hi)
            else:
                warped = render.warp_homography(bgra, ref, geo.six, image.shape)
                area = render.check_warp(warped, face.box, image.shape)
        except render.WarpError as e:
            return result("warp_failed", str(e))
        if spec.mask_type in REGION_TYPES:
            render.fill_region(image, warped, spec.mask_type)
        else:
            render.shade(warped, image, face.box, self.config.shading)
            realism.match_scene(warped.bgra, warped.x0, warped.y0, image, face.landmarks, look)
            if kind == "mesh":
                # our own art: its body ends at the (stood-off) outline, so what lies past it
                # is loops and straps; a pack's template may reach past it with its body
                realism.hide_under_hair(warped.bgra, warped.x0, warped.y0, image, face.landmarks, look, fitted)
            realism.cast_shadow(image, warped.alpha, warped.x0, warped.y0, face.landmarks, look)
            render.composite(image, warped)
        render.paste_alpha(alpha, warped)
        return result("ok", None, area)

    def mask(self, bgr: np.ndarray, specs: Sequence[MaskSpec] | MaskSpec,
             rng: np.random.Generator | None = None, faces: Sequence[Face] | None = None,
             per_face: bool = False, draw: str = "face",
             geos: Sequence[geometry.FaceGeometry] | None = None) -> MaskResult:
        """Mask every face of a uint8 (H,W,3) BGR image (the input is not modified).

        ``specs``: one spec, or several to draw from uniformly with ``rng``, per face
        (``draw="face"``) or once for the whole image (``draw="image"``); with
        ``per_face=True`` the i-th spec goes to the i-th face (left to right).
        """
        if isinstance(specs, MaskSpec):
            specs = (specs,)
        specs = tuple(specs)
        if not specs:
            raise ValueError("no mask spec given")
        if draw not in ("face", "image"):
            raise ValueError(f"draw must be 'face' or 'image', not {draw!r}")
        rng = rng or np.random.default_rng(0)
        if draw == "image" and not per_face:
            specs = (choose(specs, rng),)
        if faces is None:
            faces = self.find_faces(bgr)
        out = bgr.copy()
        alpha = np.zeros(bgr.shape[:2], np.float32)
        results = []
        for i, face in enumerate(faces):
            spec = specs[min(i, len(specs) - 1)] if per_face else choose(specs, rng)
            # the face's realism comes from the same seeded stream, right after its spec
            look = realism.draw_look(rng, spec.placement) if self.config.realism else realism.CLEAN
            try:
                results.append(self.mask_face(out, alpha, face, spec, geos[i] if geos is not None else None, look))
            except Exception as e:  # a bug on one face must not lose the image
                log.exception("masking face %d failed", i)
                results.append(FaceResult(tuple(float(v) for v in face.box), face.landmarks,
                                          np.full((6, 2), np.nan, np.float32), float("nan"), "front",
                                          spec, "warp_failed", f"{type(e).__name__}: {e}", 0.0, face.first_fit))
        if not faces:
            status, error = "no_face", "no face found"
        elif all(r.status in NOT_FACES for r in results):
            status, error = "no_face", "no face found: " + "; ".join(sorted({r.error or r.status for r in results}))
        elif any(r.status == "ok" for r in results):
            status, error = "ok", None
        else:
            status, error = "mask_failed", "; ".join(sorted({r.error or r.status for r in results}))
        return MaskResult(out, alpha, tuple(results), status, error)

    def match_photo(self, dec: DecodedImage, image: np.ndarray, alpha: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
        """:meth:`mask`'s image given the source photo's JPEG artefacts (realism only; see
        :func:`masktheface.realism.match_compression`); ``rng``: the variant's stream after
        :meth:`mask` drew from it.  Every tool that renders a variant calls this after
        :meth:`mask`, so the same seed, key and variant give the same pixels everywhere."""
        return self.match_quality(image, alpha, dec.jpeg_quality, rng)

    def match_quality(self, image: np.ndarray, alpha: np.ndarray, quality: int | None,
                      rng: np.random.Generator) -> np.ndarray:
        """:meth:`match_photo` for a photo whose JPEG ``quality`` is known apart from its
        bytes (a data set's ``source_quality``: its ``image`` is a re-encoding)."""
        return realism.match_compression(image, alpha, quality if self.config.realism else None, rng)

    # -- the whole per-image job -----------------------------------------------------------
    def process(self, data: bytes, key: str, variants: Sequence[Variant], *, seed: int = 0,
                aligned: int | None = None, fmt: str = "jpg", quality: int = 95,
                boxes: Sequence[Sequence[float]] | None = None,
                landmarks: Sequence[np.ndarray] | None = None,
                keep_alpha: bool = False) -> Processed:
        """Encoded bytes -> one VariantOutput per requested variant; never raises.

        Randomness per variant comes from :func:`masktheface.spec.variant_rng` (seed, key and
        the variant's name), so a variant's output does not depend on the others asked for.
        The primary face is chosen by :func:`masktheface.geometry.primary_face` (its index is
        ``Processed.primary`` and every output's ``primary``); the aligned crop (``aligned``
        160 or 112) is cut around its unmasked landmarks (``Face.align_landmarks``, the plain
        fit), with the same transform for every variant.
        """
        t0 = time.perf_counter()

        def failed(status: str, error: str) -> Processed:
            outs = tuple(VariantOutput(v.name, status, error, None, None, 0, 0, ()) for v in variants)
            return Processed(key, status, error, outs, 0, time.perf_counter() - t0)

        try:
            try:
                dec = decode_image(data, self.config.max_pixels)
            except ImageDecodeError as e:
                return failed("too_large" if e.code == "too_large" else "decode_error", str(e))
            bgr = dec.bgr
            h, w = bgr.shape[:2]
            faces = self.find_faces(bgr, boxes, landmarks, dec.gray)
            geos = [face_geometry(f, bgr.shape) for f in faces]
            primary = primary_face(faces, bgr.shape, geos)
            M = None
            if aligned and primary is not None:
                # the plain fit (Face.align_landmarks): the fit check's refits chase the edge
                # of a real mask; masks still go where the checked fit says
                M = align.align_transform(faces[primary].align_landmarks, int(aligned))
            outs = [self._variant(dec, faces, geos, v, variant_rng(seed, key, v.name), M, aligned, fmt, quality,
                                  keep_alpha, primary) for v in variants]
            status = "ok" if any(o.status == "ok" for o in outs) else outs[0].status if outs else "ok"
            errors = sorted({o.error for o in outs if o.error})
            return Processed(key, status, "; ".join(errors) or None, tuple(outs), len(faces),
                             time.perf_counter() - t0, primary, dec.jpeg_quality)
        except Exception as e:  # last line of defence: a bug becomes a row, not a dead job
            log.exception("processing %s failed", key)
            return failed("error", f"{type(e).__name__}: {e}")

    def _variant(self, dec: DecodedImage, faces: Sequence[Face], geos: Sequence[geometry.FaceGeometry],
                 variant: Variant, rng: np.random.Generator, M: np.ndarray | None, aligned: int | None,
                 fmt: str, quality: int, keep_alpha: bool, primary: int | None) -> VariantOutput:
        h, w = dec.bgr.shape[:2]
        if not variant.specs:
            img, alpha = dec.bgr, None
            face_results = tuple(FaceResult(tuple(float(v) for v in f.box), f.landmarks, g.six, g.tilt_deg,
                                            g.view, None, g.status, g.error, 0.0, f.first_fit)
                                 for f, g in zip(faces, geos))
            if not faces:
                status, error = "no_face", "no face found"
            elif any(g.status == "ok" for g in geos):
                status, error = "ok", None
            else:
                status = "no_face"
                error = "no usable face: " + "; ".join(sorted({g.error or g.status for g in geos}))
        else:
            res = self.mask(dec.bgr, variant.specs, rng, faces, draw=variant.draw, geos=geos)
            img, alpha, face_results, status, error = res.image, res.alpha, res.faces, res.status, res.error
            img = self.match_photo(dec, img, alpha, rng)
        if status in ("no_face", "mask_failed") and variant.specs:
            # nothing honest to write: an unmasked image labelled "masked" would poison a data set
            return VariantOutput(variant.name, status, error, None, None, w, h, face_results, None, primary)
        out = output_for(dec, img)
        crop = None
        if M is not None:
            crop = encode_image(align.warp_crop(out, M, int(aligned)), fmt, quality)
        return VariantOutput(variant.name, status, error, encode_image(out, fmt, quality), crop, w, h,
                             face_results, alpha if keep_alpha else None, primary)
