"""What makes a simulated mask look photographed rather than pasted (issue 10, realism half).

Each effect is drawn per face from the item's generator (:func:`draw_look`), so a rerun
gives the same pixels; :data:`CLEAN` switches them all off (``MaskerConfig(realism=False)``,
the CLI's ``--clean``).  All work is done on the mask's region of interest.

* **Fit variation** (:func:`vary_fit`): real masks ride at different heights and slightly
  askew.  The landmarks the art is warped onto are moved: everything above the mouth by a
  fraction of the nasion->nose-tip vector (top edge up or down), plus a small sideways
  shift growing towards the top (asymmetry); the chin stays where it is.  On a turned face
  the far cheek's outline is pushed out (:func:`stand_off`): a mask stands off the face, so
  its far edge sticks out past the cheek.  On 169 turned LFW faces (nose tip >= 0.12 face
  widths off the jaw's middle) the share of a surgical mask beyond the jaw outline went
  from 3.5 % to 9.1 %.
* **Scene colour** (:func:`match_scene`): the mask takes the light's tint.  The face's mean
  colour divided by a typical skin's (measured on 150 LFW faces: B,G,R / mean = 0.773,
  0.936, 1.290) is the tint of the light on the face; the mask is multiplied by it (with a
  drawn strength).  Only 0.35 of its green-magenta part is taken (:func:`light_tint`): lights
  vary along blue-yellow, while a ruddy face is magenta under any light and gave white
  masks a pink cast.  On 120 LFW faces, white surgical masks: mask a* (CIE Lab) on the
  ruddiest quarter of faces +2.7 -> +1.9 and on the rest -2.3 -> -1.0, its spread (sd)
  3.7 -> 1.8; on 160 LFW images, random types, chroma correlation 0.745 -> 0.717.
  Skin tone and light are confounded along blue-yellow too (a pale face reads as cool
  light, a dark one as warm), so that part is taken only as far as the rest of the photo
  agrees (:func:`scene_light`, :func:`light_tint`'s ``scene``).
  Brightness already follows the face (:func:`masktheface.render.shade`).
* **Creases** (:func:`crumple`): a worn mask is never flat; a smooth seeded shading field
  (3.5 % sd) with darker lines where it folds, different on every face.
* **Grain and blur** (:func:`match_scene`): fine detail inside the mask should match the
  skin.  The robust high-pass level (luma minus its 1 px Gaussian blur; 1.4826 x MAD, so
  lips and nostrils do not count) of the skin the mask covers and of the skin left
  visible beside the nose is measured; the mask is blurred when it is sharper than the
  photo and given Gaussian grain (seeded) when it is cleaner.
  Measured with ``tools/realism_stats.py`` on 78 LFW images, random types, clean -> this:
  chroma correlation 0.33 -> 0.76, brightness 0.61 -> 0.65, detail ratio (median)
  0.33 -> 0.85, ring 1.025 -> 0.970, top-edge sd 0.050 -> 0.093 of nasion->tip.
* **Compression** (:func:`match_compression`): a JPEG photo's blocks show in its skin but
  not in a pasted mask.  The photo's quality is read from its quantisation table
  (:func:`masktheface.imageio.jpeg_quality`); the masked area is re-encoded on the photo's
  block grid at that quality plus :data:`QUALITY_OFFSET` and the grain the encoding took
  away is given back.  On 80 LFW images (quality 75): blocking inside the mask / on the
  visible face 0.93 -> 1.03, detail ratio 0.85 -> 0.86.
* **Loops under hair** (:func:`hide_under_hair`): ear loops and head straps beyond the
  face's outline fade out where the photo there does not look like the face's skin (hair
  over the ear; also the background past the silhouette, where a loop turns behind the
  head), and stay over the ear and cheek.
* **Shadow ring** (:func:`cast_shadow`): a mask stands off the face; a thin soft shadow
  falls on the skin just outside its edge (more below, light from above), and the neck
  under the chin is darker.  Applied to the image before the mask is composited.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: typical skin colour relative to its mean (B, G, R), measured on 150 LFW faces
SKIN_RATIO = np.array([0.773, 0.936, 1.290], np.float32)
#: unit axes of log-chroma (B, G, R, zero-sum): blue-yellow, where lights vary, and
#: green-magenta; on 281 LFW faces the skin's spread is 0.136 and 0.056 along them
_BLUE_YELLOW = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0)
_GREEN_MAGENTA = np.array([1.0, -2.0, 1.0]) / np.sqrt(6.0)
#: share of the skin's green-magenta departure taken as the light's (1 = all of it)
GREEN_MAGENTA_KEEP = 0.35


@dataclass(frozen=True)
class Look:
    """The drawn realism of one mask.  ``height``: top-edge shift in nasion->nose-tip units
    (positive = lower); ``skew``: sideways shift of the top in the same units; ``tint``:
    strength of the scene tint in [0,1]; ``grain``: multiplier of the matched grain;
    ``shadow``: darkening at the mask edge in [0,1]; ``seed``: for the grain."""

    height: float = 0.0
    skew: float = 0.0
    tint: float = 0.0
    grain: float = 0.0
    shadow: float = 0.0
    seed: int = 0

    @property
    def clean(self) -> bool:
        return self == CLEAN


#: no effect at all: the look before issue 10
CLEAN = Look()


def draw_look(rng: np.random.Generator, placement: str = "correct") -> Look:
    """A look for one face, drawn from ``rng``.  Heights spread like real wear (sd 0.08 of the
    nose length, top edge between ~0.3 and ~0.7 of nasion->tip for correct wear); the
    incorrect-wear placements keep their own heights (only the skew varies)."""
    height = float(np.clip(rng.normal(0.0, 0.08), -0.18, 0.18)) if placement == "correct" else 0.0
    return Look(height=height, skew=float(np.clip(rng.normal(0.0, 0.04), -0.1, 0.1)),
                tint=float(rng.uniform(0.5, 0.8)), grain=float(rng.uniform(1.05, 1.3)),
                shadow=float(rng.uniform(0.18, 0.32)), seed=int(rng.integers(2 ** 31)))


#: a mask stands off the cheek: on a turned face its far edge sticks out past the cheek's
#: outline by this fraction of the nose tip's sideways offset from the jaw's middle
STANDOFF = 0.35
#: how much of that each far-side jaw point takes (index 1..7 from the top of the jaw down
#: to beside the chin, mirrored for the other side): most at the cheek, none at the chin
_STANDOFF_WEIGHT = np.array([0.0, 0.25, 0.6, 0.9, 1.0, 0.85, 0.5, 0.15], np.float32)


def stand_off(landmarks: np.ndarray) -> np.ndarray:
    """float (68,2) -> float32 (68,2): on a turned face, the jaw points of the far cheek (the
    side the nose tip has moved towards) pushed outwards along the eye line, so the mask's
    far edge stands off the face past the cheek's outline as a real mask does.  A frontal
    face keeps its landmarks (the push grows with the nose's offset)."""
    lm = np.asarray(landmarks, np.float32).copy()
    across = lm[16] - lm[0]
    face_w = float(np.linalg.norm(across))
    if face_w < 1e-3:
        return lm
    ex = across / face_w
    offset = float((lm[30] - (lm[0] + lm[16]) / 2) @ ex)      # > 0: the nose points to side 16
    push = STANDOFF * abs(offset)
    if push < 0.5:
        return lm
    side = np.arange(16, 8, -1) if offset > 0 else np.arange(0, 8)
    lm[side] += (np.sign(offset) * push * _STANDOFF_WEIGHT)[:, None] * ex
    return lm


def vary_fit(landmarks: np.ndarray, look: Look) -> np.ndarray:
    """float (68,2) -> float32 (68,2) landmarks to warp the art onto: the far cheek's outline
    moved out (:func:`stand_off`), points above the mouth moved by ``height`` along and
    ``skew`` across the nose vector, fading to nothing at the mouth (the chin and the jaw
    below the mouth stay).  The clean look: the landmarks as they are."""
    lm = np.asarray(landmarks, np.float32)
    if look.clean:
        return lm
    lm = stand_off(lm)
    if look.height == 0.0 and look.skew == 0.0:
        return lm
    nose = lm[30] - lm[27]
    length = float(np.linalg.norm(nose))
    if length < 1e-3:
        return lm
    down = nose / length
    across = np.array([-down[1], down[0]], np.float32)
    mouth = float(lm[48:68].mean(0) @ down)
    top = float(lm[27] @ down)
    t = (mouth - lm @ down) / max(mouth - top, 1e-3)          # 1 at the nasion, 0 at the mouth
    w = np.clip(t, 0.0, 1.2)[:, None]
    return (lm + w * (look.height * nose + look.skew * length * across)).astype(np.float32)


def _luma(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299


#: :func:`_highpass_sd` takes its medians over at most this many of the pixels (every k-th in
#: raster order): full medians were a fifth of the realism's time
HIGHPASS_SAMPLES = 2048


def _highpass_sd(luma: np.ndarray, where: np.ndarray | None = None) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of luma minus its
    sigma-1 Gaussian blur over ``where`` (None: everywhere): the photo's grain and fine
    texture, not its few strong edges (lips, nostrils, eyelids).  Medians over a regular
    subsample of at most :data:`HIGHPASS_SAMPLES` pixels."""
    n = luma.size if where is None else int(np.count_nonzero(where))
    if n < 12:
        return 0.0
    hp = luma - cv2.GaussianBlur(luma, (0, 0), 1.0)
    hp = hp.reshape(-1) if where is None else hp[where]
    if n > HIGHPASS_SAMPLES:
        hp = hp[:: -(-n // HIGHPASS_SAMPLES)]
    k = len(hp) // 2                                  # the (upper) median, by partitioning
    dev = np.abs(hp - np.partition(hp, k)[k])
    return float(1.4826 * np.partition(dev, k)[k])


def skin_region(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the skin between the eyes' lower lids and the nose bridge's
    middle, inside the outer eye corners: skin that a correctly worn mask leaves visible."""
    lm = np.asarray(landmarks, np.float32)
    h, w = shape[:2]
    x0, x1 = int(round(lm[36, 0])), int(round(lm[45, 0]))
    y0 = int(round(max(lm[40, 1], lm[47, 1]) + 1))
    y1 = int(round(lm[28, 1] + 0.6 * (lm[29, 1] - lm[28, 1]) + 2))
    return max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), w), min(max(y1, y0 + 2), h)


#: the scene's light estimate: the power mean of this order of the photo's pixels ("shades
#: of grey": bright, near-neutral surfaces weigh most) ...
SCENE_POWER = 6   # (computed as three squares)
#: ... over every k-th row and column, about this many on the long side, the face left out
SCENE_SIDE = 96
#: the scenes' own lean: on 995 LFW photos the estimate averages this much towards yellow
#: along blue-yellow (walls, hair, skin-coloured clothes), subtracted before comparing
SCENE_BIAS = 0.075


def scene_light(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """Mean B, G, R of the light as the photo around the face shows it: the order-6 power
    mean of the photo's pixels (every k-th row and column, ~96 px on the long side) outside
    the face's landmark box grown by a quarter.  None for a gray image or when too little
    is left (a tight crop).  ~0.1 ms."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] < 3:
        return None
    h, w = image_bgr.shape[:2]
    k = max(1, -(-max(h, w) // SCENE_SIDE))
    th = image_bgr[::k, ::k, :3]
    lm = np.asarray(landmarks, np.float32) / k
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    gx, gy = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    keep = np.ones(th.shape[:2], bool)
    keep[max(int(y0 - gy), 0):max(int(np.ceil(y1 + gy)), 0), max(int(x0 - gx), 0):max(int(np.ceil(x1 + gx)), 0)] = False
    px = th[keep].astype(np.float32) * np.float32(1.0 / 255.0)
    if len(px) < 64:
        return None
    p2 = px * px
    return (np.maximum((p2 * p2 * p2).mean(0), 1e-12) ** (1.0 / SCENE_POWER)).astype(np.float64) * 255.0


def light_tint(skin_mean_bgr: np.ndarray, scene_bgr: np.ndarray | None = None) -> np.ndarray:
    """The light's tint (B, G, R gains, mean 1, each within 0.9..1.1) read from the mean
    colour of the visible skin: its departure from a typical skin's (:data:`SKIN_RATIO`),
    with the green-magenta part damped to :data:`GREEN_MAGENTA_KEEP`.  Lights vary along
    blue-yellow (daylight to tungsten); skin varies along green-magenta too (a ruddy face
    is magenta against a typical one), and read as light that gave white masks a pink
    cast.  Skin tone varies along blue-yellow as well (a pale face is bluer than a typical
    one, a dark face yellower), so with ``scene_bgr`` (:func:`scene_light`) the blue-yellow
    part is taken only as far as the rest of the photo agrees: the smaller of the two
    when both lean the same way, none when they disagree (a pale face in neutral light
    gave white masks a blue cast).  On 995 LFW faces the two readings correlate at only
    0.11 along blue-yellow (skin sd 0.13, scene sd 0.11): most of a face's departure is
    its own tone, not the light.  On 160 LFW images, random types (``tools/realism_stats.py``):
    chroma correlation 0.766 -> 0.616; the astronaut's white masks lose their blue cast
    (tint B, G, R 1.10, 0.95, 0.90 -> 1.01, 0.98, 1.01)."""
    m = np.asarray(skin_mean_bgr, np.float64)
    lt = np.log(m / m.mean() / SKIN_RATIO)
    lt -= lt.mean()
    by = float(lt @ _BLUE_YELLOW)
    if scene_bgr is not None:
        g = np.log(np.maximum(np.asarray(scene_bgr, np.float64), 1e-3))
        g_by = float((g - g.mean()) @ _BLUE_YELLOW) - SCENE_BIAS
        by = float(np.sign(by)) * min(abs(by), abs(g_by)) if by * g_by > 0 else 0.0
    lt = by * _BLUE_YELLOW + GREEN_MAGENTA_KEEP * (lt @ _GREEN_MAGENTA) * _GREEN_MAGENTA
    tint = np.exp(lt)
    return np.clip(tint / tint.mean(), 0.9, 1.1).astype(np.float32)


#: gentle creases of a worn mask: a smooth random shading field of this amplitude (sd) ...
CRUMPLE = 0.035
#: ... varying over about this many cells across the mask
CRUMPLE_CELLS = 5


def crumple(shape: tuple[int, int], look: Look) -> np.ndarray:
    """float32 (h,w) shading multiplier around 1: a worn mask is never flat.  Smooth random
    folds (a coarse Gaussian field, upsampled cubically, with a few sharper creases where it
    crosses zero), seeded by the look, so every face's mask creases differently.  Low
    frequency only: the fine detail (grain) is matched separately."""
    h, w = shape
    if look.clean or h < 4 or w < 4:
        return np.ones((h, w), np.float32)
    rng = np.random.default_rng([look.seed, 0x435255])
    n = CRUMPLE_CELLS
    coarse = rng.standard_normal((max(2, round(n * h / max(w, 1))) + 1, n + 1)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field /= max(float(field.std()), 1e-6)
    crease = np.exp(-(field / 0.25) ** 2)             # thin darker lines along the zero crossings
    return (1.0 + CRUMPLE * (0.6 * field - 1.2 * (crease - crease.mean()))).astype(np.float32)


def match_scene(bgra: np.ndarray, x0: int, y0: int, image_bgr: np.ndarray, landmarks: np.ndarray,
                look: Look, fabric_alpha: float = 0.5) -> None:
    """Tint, blur and grain a warped mask (float32 (h,w,4) BGR + alpha in [0,1], region
    top-left at (x0, y0) of ``image_bgr``) to match the photo, in place."""
    if look.clean or image_bgr.ndim != 3:
        return
    h, w = bgra.shape[:2]
    sx0, sy0, sx1, sy1 = skin_region(landmarks, image_bgr.shape)
    skin = image_bgr[sy0:sy1, sx0:sx1].reshape(-1, 3).astype(np.float32)
    col = bgra[..., :3]
    inside = bgra[..., 3] > fabric_alpha
    gain = np.ones(3, np.float32)
    if len(skin) >= 12 and look.tint > 0:
        mean = skin.mean(0)
        if mean.mean() > 8.0:
            tint = light_tint(mean, scene_light(image_bgr, landmarks))
            gain = (1.0 + look.tint * (tint - 1.0)).astype(np.float32)
    if np.count_nonzero(inside) < 12:
        col *= gain
        return
    col *= crumple((h, w), look)[..., None] * gain     # the tint and the creases in one pass
    # the photo's own detail: the skin the mask is about to cover (same place, same camera),
    # and the skin left visible beside the nose: the mask must not look cleaner than either
    under = _luma(image_bgr[y0:y0 + h, x0:x0 + w].astype(np.float32))
    seen = _luma(image_bgr[sy0:sy1, sx0:sx1].astype(np.float32))
    target = max(_highpass_sd(under, inside), _highpass_sd(seen))
    have = _highpass_sd(_luma(col), inside)
    if have > 1.25 * target and target > 0:
        # sharper than the photo: blur the colour (alpha keeps its anti-aliased edge)
        for sigma in (0.6, 0.9, 1.3, 1.8):
            soft = cv2.GaussianBlur(col, (0, 0), sigma)
            if _highpass_sd(_luma(soft), inside) <= 1.1 * target:
                break
        col[...] = soft
        have = _highpass_sd(_luma(col), inside)
    missing = look.grain * np.sqrt(max(target ** 2 - have ** 2, 0.0))
    if missing > 0.3:
        rng = np.random.default_rng(look.seed)
        noise = rng.standard_normal((h, w)).astype(np.float32)
        # camera grain is slightly correlated between neighbours; keep its sd after the blur
        noise = cv2.GaussianBlur(noise, (0, 0), 0.6)
        noise *= missing / max(float(noise.std()), 1e-6)
        col += noise[..., None]


#: loops and straps beyond the face outline (grown by this fraction of the face width) ...
OUTLINE_MARGIN = 0.03
#: ... stay where the photo there looks like the face's skin and fade out where it does not
#: (hair over the ear): a pixel's CIE Lab distance from the visible skin, in units of the
#: skin's own spread (per channel, floored), fully shown below SKIN_NEAR, hidden above SKIN_FAR
SKIN_NEAR, SKIN_FAR = 2.5, 4.5


def hide_under_hair(bgra: np.ndarray, x0: int, y0: int, image_bgr: np.ndarray, landmarks: np.ndarray,
                    look: Look, outline_landmarks: np.ndarray | None = None) -> float:
    """Ear loops and head straps go *under* hair: the parts of a warped mask (float32 (h,w,4),
    region top-left at (x0, y0)) beyond the face's outline are kept where the photo shows
    skin there (the ear, the cheek) and faded out where it shows something else (hair over
    the ear), in place.  The mask body never reaches past the outline, so only loops and
    straps are touched (built-in art only: a pack's template may reach past the outline
    with its body).  ``outline_landmarks``: where the art was warped to, when not
    ``landmarks`` (:func:`vary_fit`: the outline the body reaches).  Returns the share of
    the loop pixels hidden (0..1)."""
    if look.clean or image_bgr.ndim != 3:
        return 0.0
    lm = np.asarray(landmarks, np.float32)
    face_w = float(np.linalg.norm(lm[16] - lm[0]))
    h, w = bgra.shape[:2]
    if face_w < 16 or h < 2 or w < 2:
        return 0.0
    # the face: the jaw line closed over the brows, lifted by a third of the nose length
    ol = lm if outline_landmarks is None else np.asarray(outline_landmarks, np.float32)
    lift = 0.35 * (ol[30] - ol[27])
    outline = np.vstack([ol[0:17], ol[26:16:-1] - lift]) - np.float32([x0, y0])
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [np.round(outline * 4).astype(np.int32)], 1, cv2.LINE_8, 2)
    grow = max(1, int(round(OUTLINE_MARGIN * face_w)))
    inside = cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    alpha = bgra[..., 3]
    loops = (alpha > 0.02) & (inside == 0)
    if not loops.any():
        return 0.0
    sx0, sy0, sx1, sy1 = skin_region(lm, image_bgr.shape)
    skin = image_bgr[sy0:sy1, sx0:sx1]
    if skin.size < 36:
        return 0.0
    H, W = image_bgr.shape[:2]
    rx0, ry0, rx1, ry1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if rx1 <= rx0 or ry1 <= ry0:
        return 0.0
    skin_lab = cv2.cvtColor(skin, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    med = np.median(skin_lab, 0)
    spread = np.maximum(1.4826 * np.median(np.abs(skin_lab - med), 0), [6.0, 3.0, 3.0])
    # a smoothed view of the photo: a loop's few pixels must not flicker with grain
    under = cv2.GaussianBlur(image_bgr[ry0:ry1, rx0:rx1], (0, 0), max(0.8, 0.01 * face_w))
    lab = cv2.cvtColor(under, cv2.COLOR_BGR2LAB)
    ys, xs = np.nonzero(loops)
    seen = (ys >= ry0 - y0) & (ys < ry1 - y0) & (xs >= rx0 - x0) & (xs < rx1 - x0)
    ys, xs = ys[seen], xs[seen]                       # loop pixels off the image stay as they are
    d = np.sqrt((((lab[ys - (ry0 - y0), xs - (rx0 - x0)].astype(np.float32) - med) / spread) ** 2).sum(-1))
    before = float(alpha[loops].sum())
    alpha[ys, xs] *= np.clip((SKIN_FAR - d) / (SKIN_FAR - SKIN_NEAR), 0.0, 1.0)
    return 1.0 - float(alpha[loops].sum()) / before if before > 0 else 0.0


def cast_shadow(image_bgr: np.ndarray, alpha: np.ndarray, x0: int, y0: int, landmarks: np.ndarray,
                look: Look) -> None:
    """Darken the skin around a mask's edge (uint8 (H,W[,3]) image, in place) before the mask
    is composited: a soft shadow offset downwards (light from above) that shows only outside
    the mask, plus a darker band on the neck under the chin."""
    if look.clean or look.shadow <= 0:
        return
    lm = np.asarray(landmarks, np.float32)
    face_w = float(np.linalg.norm(lm[16] - lm[0]))
    if face_w < 16:
        return
    h, w = alpha.shape
    pad = int(np.ceil(0.12 * face_w))
    H, W = image_bgr.shape[:2]
    gx0, gy0 = max(x0 - pad, 0), max(y0 - pad, 0)
    gx1, gy1 = min(x0 + w + pad, W), min(y0 + h + 2 * pad, H)
    if gx1 - gx0 < 4 or gy1 - gy0 < 4:
        return
    a = np.zeros((gy1 - gy0, gx1 - gx0), np.float32)
    ay0, ax0 = y0 - gy0, x0 - gx0
    a[ay0:ay0 + h, ax0:ax0 + w] = alpha[: a.shape[0] - ay0, : a.shape[1] - ax0]
    sigma = max(0.6, 0.022 * face_w)
    shift = np.float32([[1, 0, 0], [0, 1, 0.02 * face_w]])
    soft = cv2.warpAffine(cv2.GaussianBlur(a, (0, 0), sigma), shift, (a.shape[1], a.shape[0]))
    ring = np.clip(soft - a, 0.0, 1.0)
    # the neck under the chin: a band below the mask's lowest row, fading downwards
    chin_y = float(lm[8, 1]) - gy0
    ys = np.arange(a.shape[0], dtype=np.float32)[:, None]
    neck = np.clip(1.0 - np.abs(ys - chin_y - 0.08 * face_w) / (0.1 * face_w), 0.0, 1.0)
    cols = np.arange(a.shape[1], dtype=np.float32)[None, :]
    cx = float(lm[8, 0]) - gx0
    neck = neck * np.clip(1.0 - np.abs(cols - cx) / (0.3 * face_w), 0.0, 1.0) * (1.0 - a)
    dark = 1.0 - look.shadow * np.clip(ring * 1.6 + 0.5 * neck, 0.0, 1.0)
    region = image_bgr[gy0:gy1, gx0:gx1]
    f = dark[..., None] if region.ndim == 3 else dark
    region[...] = np.clip(region.astype(np.float32) * f + 0.5, 0, 255).astype(np.uint8)


#: the mask is re-encoded this much above the photo's estimated quality (the photo's own
#: artefacts were softened by decoding and by our output encoding).  Measured on 80 LFW
#: images (quality 75) with tools/realism_stats.py, blocking inside the mask / on the
#: visible face: +0 1.25, +12 1.11, +16 1.03, +20 0.93 (no matching: 0.93)
QUALITY_OFFSET = 16


def match_compression(image: np.ndarray, alpha: np.ndarray, quality: int | None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """The masked area of ``image`` (uint8 (H,W,3) BGR or (H,W), masks composited; ``alpha``
    float (H,W) in [0,1]) given the JPEG artefacts of the photo it was pasted into: the
    masked rows and columns, on the photo's own 16 px block grid, are encoded and decoded at
    the photo's estimated ``quality`` (:func:`masktheface.imageio.jpeg_quality`, plus
    :data:`QUALITY_OFFSET`) and blended in by alpha; pixels without mask are untouched.  The
    fine detail the encoding removes from the mask (its matched grain) is given back as
    grain from ``rng``, so the detail still matches the skin's.  No change when ``quality``
    is None or so high that the re-encoding would be at 97 or more."""
    if quality is None or quality + QUALITY_OFFSET >= 97:
        return image
    bx, by, bw, bh = cv2.boundingRect((alpha > 1.0 / 255.0).view(np.uint8))
    if bw == 0 or bh == 0:
        return image
    h, w = image.shape[:2]
    y0, x0 = by // 16 * 16, bx // 16 * 16
    y1, x1 = min(-(-(by + bh) // 16) * 16, h), min(-(-(bx + bw) // 16) * 16, w)
    roi = image[y0:y1, x0:x1]
    q = int(max(quality + QUALITY_OFFSET, 1))
    ok, enc = cv2.imencode(".jpg", roi, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        return image
    rt = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED).astype(np.float32)
    a = alpha[y0:y1, x0:x1].astype(np.float32)
    inside = a > 0.5
    if rt.ndim == 3:
        lost = _highpass_sd(_luma(roi.astype(np.float32)), inside) ** 2 - _highpass_sd(_luma(rt), inside) ** 2
    else:
        lost = _highpass_sd(roi.astype(np.float32), inside) ** 2 - _highpass_sd(rt, inside) ** 2
    if lost > 0.09 and inside.sum() >= 12:
        noise = (rng or np.random.default_rng(0)).standard_normal(rt.shape[:2]).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), 0.6)
        noise *= float(np.sqrt(lost)) / max(float(noise.std()), 1e-6)
        rt += noise[..., None] if rt.ndim == 3 else noise
    if roi.ndim == 3:
        a = a[..., None]
    out = image.copy()
    out[y0:y1, x0:x1] = np.clip(roi.astype(np.float32) * (1.0 - a) + rt * a + 0.5, 0, 255).astype(np.uint8)
    return out
