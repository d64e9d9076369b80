"""Robust image decoding and encoding.

Every image the tool touches goes through :func:`decode_image`, which either returns a
:class:`DecodedImage` (``uint8`` BGR + luminance, EXIF orientation applied) or raises
:class:`ImageDecodeError` with a machine-readable ``code`` and a human message.  Callers
turn that error into a status row ("failures are rows, not exceptions"); nothing here
logs or changes global Pillow state.  (The one possible output: OpenCV may print a
libjpeg warning to stderr for a JPEG that is damaged yet passes the structural check.)

Design notes (measured on this machine with 250x250 LFW JPEGs):

* **Decoder.**  Two paths, identical pixels (both are libjpeg-turbo; checked on all
  14,296 images in ../shared/data).  The common case, a plain JPEG (8-bit gray/YCbCr,
  no EXIF, not multi-picture), is recognised by our own segment walk and decoded by
  ``cv2.imdecode``: ≈150-160 µs per 250x250 LFW image against ≈125-130 µs for a bare
  ``cv2.imdecode`` (1.2x; 1.05-1.08x against imdecode + the gray conversion we also
  return), where Pillow open + load + conversion costs ≈260-340 µs (medians of 21
  interleaved rounds over 500 images, 2 busy cores).  OpenCV is only handed
  streams that passed the structural check below and reach their EOI marker, because
  OpenCV 4.x fills a truncated JPEG with grey (and prints to stderr) instead of failing.
  Everything else goes through Pillow, which raises on truncated data:
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays ``False``, a truncated file is an error,
  never a half-grey image.  A JPEG whose data merely lacks the final EOI marker is
  reported as truncated too (Pillow and OpenCV 5 both refuse it).
* **Decompression bombs.**  The pixel count is checked from the header, before any pixel
  is decoded.  The header is parsed by calling the registered Pillow plugin directly
  rather than ``Image.open``, because ``Image.open`` applies Pillow's own global limit
  (a warning above ~89 Mpx, an error above ~179 Mpx): we want our limit, our error and
  no warnings, without touching ``Image.MAX_IMAGE_PIXELS``.
* **Format whitelist.**  Only photo formats are tried (:data:`DECODABLE_FORMATS`).  Some
  Pillow plugins (TGA, IM, SPIDER, ...) have no signature check and would happily
  "decode" random bytes; a file recognised by another plugin's signature is reported as
  ``unsupported`` rather than decoded.
* **Corrupt JPEG data.**  libjpeg treats most damage inside the entropy-coded data as a
  *warning* and Pillow does not surface warnings, so garbage scan data can decode to a
  garbage picture.  We add one cheap structural check (a few µs, see _check_jpeg_scan):
  from the first scan to EOI, a 0xFF byte may only be stuffing, fill, RSTn or a marker
  that can sit between scans whose length lands on the next marker.  Random garbage
  fails it essentially always (997 of 1,000 random seeds, where libjpeg alone lets
  about half through); no file of the 14,296 in ../shared/data was rejected.  Bit
  flips that keep the stream syntactically valid still decode silently (no decoder can
  tell).
"""
from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "MAX_PIXELS_DEFAULT",
    "ERROR_CODES",
    "IMAGE_EXTENSIONS",
    "DECODABLE_FORMATS",
    "ImageDecodeError",
    "DecodedImage",
    "read_header",
    "decode_image",
    "encode_image",
    "output_for",
    "is_image_name",
]

#: refuse images with more pixels than this (checked from the header, before decoding)
MAX_PIXELS_DEFAULT = 80_000_000

#: every value :attr:`ImageDecodeError.code` can take
ERROR_CODES = ("empty", "not_image", "corrupt", "truncated", "too_large", "unsupported")

#: file name endings the tools treat as images (compare lower-cased; see is_image_name)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: Pillow formats we decode.  MPO is what Pillow calls a multi-picture (camera) JPEG;
#: GIF and PPM are not in IMAGE_EXTENSIONS but are harmless photo formats (FERET ships
#: PPM), and AVIF is used only when this Pillow has libavif.
DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "AVIF")

# Grey used under transparent pixels (see _composite).
_ALPHA_BACKGROUND = 128

# After the first SOS of a JPEG: 0xFF followed by anything but stuffing (00), fill (FF)
# or a restart marker (D0-D7) is a marker.  Searched with one C-level regex.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")

# ISO-BMFF brands of HEIF/HEIC (iPhone photos): recognised, but no decoder here.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")


class ImageDecodeError(ValueError):
    """Why bytes could not be turned into an image.

    ``code`` is one of :data:`ERROR_CODES`; ``str(e)`` reads ``"<code>: <explanation>"``.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown ImageDecodeError code {code!r}")
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def __reduce__(self):  # picklable across processes (Ray, multiprocessing)
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, upright.

    bgr:   uint8 (H,W,3) C-contiguous BGR, EXIF orientation applied, alpha composited.
    gray:  uint8 (H,W) luminance (ITU-R 601 weights), used for detection.
    is_gray: the source was a grayscale mode (1, L, LA, I;16*, I, F, or a palette of greys).
    format: Pillow's format name ("JPEG", "PNG", "WEBP", "MPO", ...).
    mode:  the source's Pillow mode ("RGB", "L", "CMYK", "I;16", "RGBA", "P", ...).
    had_alpha: the source had an alpha channel or a transparency key.
    exif_rotated: an EXIF orientation other than 1 was applied.
    size:  (width, height) after orientation.
    jpeg_quality: the libjpeg quality a JPEG was saved at (:func:`jpeg_quality`), else None.
    """

    bgr: np.ndarray
    gray: np.ndarray
    is_gray: bool
    format: str
    mode: str
    had_alpha: bool
    exif_rotated: bool
    size: tuple[int, int]
    jpeg_quality: int | None = None


# --------------------------------------------------------------------------- opening

_plugins_ready = False


def _ensure_plugins() -> None:
    global _plugins_ready
    if not _plugins_ready:
        Image.init()  # registers every plugin once (idempotent, no state we change)
        _plugins_ready = True


def _sniff_unsupported(data: bytes) -> str | None:
    """Name of a known image format we cannot decode, from magic bytes; else None."""
    if data[4:8] == b"ftyp":  # ISO-BMFF: the major brand, then compatible brands
        box = data[8:min(int.from_bytes(data[:4], "big"), 64)]
        brands = {box[:4]} | {box[i:i + 4] for i in range(8, len(box) - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return None  # AVIF: Pillow decodes it when built with libavif
        if brands & set(_HEIF_BRANDS):
            return "HEIF/HEIC"
    if data.startswith(b"\xff\x0a") or data.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEG XL"
    return None


def _looks_like_eof(exc: BaseException) -> bool:
    """Does a Pillow exception mean "the data ended too early"?"""
    if isinstance(exc, (EOFError, struct.error)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("truncated", "requires a buffer", "not enough data",
                                   "end of file", "eof", "premature end"))


def _open(data: bytes) -> ImageFile.ImageFile:
    """Parse the header with Pillow's plugins, without Pillow's global pixel limit.

    Raises ImageDecodeError (empty / not_image / unsupported / truncated / corrupt /
    too_large for a GIF whose frames outgrow Pillow's own limit while opening).
    """
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    _ensure_plugins()
    try:
        candidates = [(fmt, *Image.OPEN[fmt]) for fmt in DECODABLE_FORMATS
                      if fmt in Image.OPEN]
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - registry changed
        # Pillow changed the shape of its registry: fall back to Image.open, keeping its
        # bomb warning local and turning its bomb error into ours.
        return _open_fallback(data)

    other = _sniff_unsupported(data[:64])
    if other is not None:  # before the plugins: a HEIC may carry AVIF's generic brand
        raise ImageDecodeError(
            "unsupported",
            f"{other} images are not supported (supported: {', '.join(_supported())})")

    fp = io.BytesIO(data)
    prefix = bytes(data[:16])
    failures: list[tuple[str, Exception]] = []
    no_decoder: list[str] = []
    for fmt, factory, accept in candidates:
        if accept is None:
            continue  # never try signature-less plugins on arbitrary bytes
        ok = accept(prefix)
        if isinstance(ok, str):  # Pillow's "this is my format, but no decoder is built in"
            no_decoder.append(f"{fmt} ({ok})")
            continue
        if not ok:
            continue
        fp.seek(0)
        try:
            with _bomb_guard(fmt):
                return factory(fp, "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(
                "too_large", f"{fmt} header describes an image too large to open safely "
                             f"(Pillow: {exc})") from exc
        except Exception as exc:  # noqa: BLE001 - classified below
            failures.append((fmt, exc))

    if failures:
        fmt, exc = failures[0]
        if _looks_like_eof(exc) or _header_ends_early(fmt, data):
            raise ImageDecodeError(
                "truncated", f"{fmt} header ends early ({len(data)} bytes): {exc}") from exc
        raise ImageDecodeError(
            "corrupt", f"{fmt} signature found but the header is invalid "
                       f"({type(exc).__name__}: {exc})") from exc

    if no_decoder:
        raise ImageDecodeError(
            "unsupported", f"this Pillow cannot decode {', '.join(no_decoder)}")
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in DECODABLE_FORMATS or accept is None:
            continue
        try:
            hit = accept(prefix)
        except Exception:  # noqa: BLE001 - a plugin's signature check must not crash us
            hit = False
        if hit and not isinstance(hit, str):
            raise ImageDecodeError(
                "unsupported",
                f"{fmt} images are not supported (supported: {', '.join(_supported())})")
    raise ImageDecodeError("not_image", _describe_non_image(data))


# Plugins that never call Pillow's decompression-bomb check while opening or loading
# the first frame; the others (GIF frame extents, TIFF tiles, ...) may.
_NO_BOMB_CHECK = frozenset({"JPEG", "PNG", "WEBP", "BMP", "PPM"})


@contextlib.contextmanager
def _quiet_bomb_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _bomb_guard(fmt: str):
    """Context that silences Pillow's DecompressionBombWarning, locally.

    Our own limit (checked on the size the plugin reports after opening, which for a GIF
    already includes frames that outgrow the canvas) is the one that decides; Pillow's
    hard DecompressionBombError (at ~179 Mpx) still fires and is mapped to too_large by
    the callers.  Only entered for plugins that call Pillow's check while opening or
    loading the first frame (GIF, TIFF, ...), so the common JPEG/PNG path never touches
    the process-wide warning filters (``catch_warnings`` is not thread-safe before 3.14).
    """
    if fmt in _NO_BOMB_CHECK:
        return contextlib.nullcontext()
    return _quiet_bomb_warning()


def _open_fallback(data: bytes) -> ImageFile.ImageFile:  # pragma: no cover - old/new Pillow
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=list(DECODABLE_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_image", _describe_non_image(data)) from exc
    except Exception as exc:  # noqa: BLE001
        code = "truncated" if _looks_like_eof(exc) else "corrupt"
        raise ImageDecodeError(code, f"cannot read the image header: {exc}") from exc


def _header_ends_early(fmt: str, data: bytes) -> bool:
    """Does the data stop inside the header's structure (JPEG segments, PNG chunks)?"""
    if fmt == "JPEG":
        return _jpeg_scan_start(data) == -1
    if fmt == "PNG":
        pos, n = 8, len(data)
        while pos + 8 <= n:
            if data[pos + 4:pos + 8] == b"IDAT":
                return False  # the header is complete
            pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
        return True
    return False


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def _supported() -> list[str]:
    return [f for f in DECODABLE_FORMATS if f in Image.OPEN]


def _describe_non_image(data: bytes) -> str:
    head = bytes(data[:8])
    if head.startswith(b"%PDF"):
        kind = "a PDF document"
    elif head.lstrip().startswith((b"<?xml", b"<svg", b"<!DOC", b"<html", b"<HTML")):
        kind = "an XML/HTML/SVG document"
    elif head.startswith(b"PK\x03\x04"):
        kind = "a ZIP archive"
    else:
        sample = bytes(data[:512])
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
        kind = "text" if printable >= 0.95 * len(sample) else "unrecognised binary data"
    return (f"not an image: {len(data)} bytes of {kind} (first bytes {head.hex(' ')}); "
            f"supported formats: {', '.join(_supported())}")


def read_header(data: bytes) -> tuple[str, tuple[int, int], str]:
    """(format, (width, height), mode) from the header, without decoding pixels.

    The size is as stored, i.e. *before* EXIF orientation (the pixel count is the same).
    No pixel limit is applied here.  Raises ImageDecodeError.
    """
    im = _open(_as_bytes(data))
    return im.format or "unknown", (int(im.size[0]), int(im.size[1])), im.mode


# --------------------------------------------------------------------------- decoding

def decode_image(data: bytes, max_pixels: int = MAX_PIXELS_DEFAULT) -> DecodedImage:
    """Encoded bytes -> DecodedImage (uint8 (H,W,3) BGR + (H,W) gray, upright).

    Raises ImageDecodeError with code empty / not_image / corrupt / truncated /
    too_large (width*height > max_pixels, refused from the header) / unsupported.
    Multi-frame files (GIF, TIFF, animated WebP, MPO) give their first frame.
    """
    data = _as_bytes(data)
    # Fast path: a plain JPEG (8-bit, gray or YCbCr, no EXIF, not multi-picture) is
    # recognised by our own segment walk (~3 µs instead of ~16 µs for Image.open) and
    # decoded by OpenCV; anything unusual, or any failure, takes the general path.
    plain = _plain_jpeg(data)
    if plain is not None:
        w, h, ncomp, scan = plain
        _check_pixels("JPEG", w, h, max_pixels)
        arrays = _decode_jpeg_fast(data, "L" if ncomp == 1 else "RGB", w, h, scan)
        if arrays is not None:
            bgr, gray, is_gray, _ = arrays
            return DecodedImage(bgr=bgr, gray=gray, is_gray=is_gray, format="JPEG",
                                mode="L" if is_gray else "RGB", had_alpha=False,
                                exif_rotated=False, size=(w, h), jpeg_quality=jpeg_quality(data))

    im = _open(data)
    fmt = im.format or "unknown"
    w, h = int(im.size[0]), int(im.size[1])
    _check_pixels(fmt, w, h, max_pixels)
    mode = im.mode

    arrays = None
    if fmt == "JPEG" and mode in ("RGB", "L"):  # e.g. with EXIF orientation
        arrays = _decode_jpeg_fast(data, mode, w, h)
    if arrays is None:
        _load(im, data, fmt, w, h)
        try:
            arrays = _to_arrays(im)
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - an odd mode Pillow cannot convert
            raise ImageDecodeError(
                "unsupported",
                f"{fmt} image in mode {mode!r} cannot be converted: {exc}") from exc
    bgr, gray, is_gray, had_alpha = arrays
    orientation = _orientation(im, fmt)  # after load: a PNG may keep eXIf after IDAT

    rotated = orientation != 1
    if rotated:
        bgr = _orient(bgr, orientation)
        gray = _orient(gray, orientation)
    return DecodedImage(
        bgr=bgr, gray=gray, is_gray=is_gray, format=fmt, mode=mode,
        had_alpha=had_alpha, exif_rotated=rotated,
        size=(int(bgr.shape[1]), int(bgr.shape[0])),
        jpeg_quality=jpeg_quality(data) if fmt in ("JPEG", "MPO") else None,
    )


def _check_pixels(fmt: str, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise ImageDecodeError("corrupt", f"{fmt} header gives an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"{fmt} image is {w}x{h} = {w * h:,} pixels, above the limit of "
            f"{max_pixels:,} (refused before decoding: possible decompression bomb)")


# SOF markers of the Huffman-coded DCT JPEGs libjpeg-turbo decodes everywhere:
# baseline, extended sequential, progressive
_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})


def _jpeg_segments(data: bytes):
    """Yield (marker, start, end) of each header segment after SOI, up to and including the
    first SOS (end = offset after the segment; it may lie beyond the data when the file is
    cut); (-1, pos, pos) and stop where a marker must start but the byte is not 0xFF.
    Fill bytes and markers without a length are stepped over.  The one header walk of this
    module (fast-path check, scan start, quality estimate)."""
    n, pos = len(data), 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            yield -1, pos, pos
            return
        code = data[pos + 1]
        if code == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if code in (0x01, 0xD8) or 0xD0 <= code <= 0xD7:  # markers without a length
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        yield code, pos, end
        if code == 0xDA:
            return
        pos = end


def _plain_jpeg(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, scan offset) of a "plain" JPEG, else None.

    Plain: 8-bit Huffman DCT, 1 or 3 components, no EXIF (so no orientation) and no
    multi-picture (MPF) segment.  A pure header walk; decides nothing about validity.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    n = len(data)
    sof = None
    for code, pos, end in _jpeg_segments(data):
        if code < 0 or end > n:
            return None
        if code == 0xDA:
            if sof is None:
                return None
            return (*sof, end)
        if code == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            return None
        if code == 0xE2 and data[pos + 4:pos + 8] == b"MPF\x00":
            return None
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # a SOFn
            if code not in _PLAIN_SOF or sof is not None or data[pos + 4] != 8:
                return None
            h = int.from_bytes(data[pos + 5:pos + 7], "big")
            w = int.from_bytes(data[pos + 7:pos + 9], "big")
            ncomp = data[pos + 9]
            if ncomp not in (1, 3) or w == 0 or h == 0:  # h == 0: height given by DNL
                return None
            sof = (w, h, ncomp)
    return None


def _decode_jpeg_fast(data: bytes, mode: str, w: int, h: int, scan: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, bool, bool] | None:
    """The common case (baseline/progressive YCbCr or gray JPEG) through OpenCV.

    OpenCV's imdecode is faster than Pillow's load + array conversion (same
    libjpeg-turbo, identical pixels) but is not trusted with damaged data: OpenCV 4.x
    fills a truncated JPEG with grey and prints a warning.  So OpenCV only sees streams
    that passed _check_jpeg_scan *and* reach their EOI marker; everything else (and any
    OpenCV refusal) goes to Pillow, which raises the precise error.  EXIF orientation is
    ignored here and applied by the caller.
    Returns (bgr, gray, is_gray, had_alpha) or None to mean "use Pillow".
    """
    where = f"JPEG {w}x{h}"
    if _check_jpeg_scan(data, where, scan) is not True:
        return None
    if mode == "L":
        arr = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is None or arr.shape != (h, w):
            return None
        return (*_from_gray(arr), True, False)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.shape != (h, w, 3):
        return None
    return arr, cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY), False, False


def _load(im: ImageFile.ImageFile, data: bytes, fmt: str, w: int, h: int) -> None:
    """Decode the pixels of the first frame; map every failure to an ImageDecodeError."""
    where = f"{fmt} {w}x{h}"
    try:
        with _bomb_guard(fmt):
            im.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            "too_large", f"{where}: a frame or tile is too large to decode safely "
                         f"(Pillow: {exc})") from exc
    except MemoryError as exc:
        raise ImageDecodeError("too_large", f"{where}: out of memory while decoding") from exc
    except Exception as exc:  # noqa: BLE001 - classified here, never escapes raw
        text = str(exc)
        if _looks_like_eof(exc):
            raise ImageDecodeError(
                "truncated",
                f"{where}: the file ends before the image data does ({len(data)} bytes; "
                f"decoder: {text})") from exc
        low = text.lower()
        if isinstance(exc, KeyError) or "not available" in low or "unsupported" in low \
                or "unknown raw mode" in low or "unrecognized mode" in low:
            raise ImageDecodeError(
                "unsupported", f"{where} in mode {im.mode!r}: no decoder for this "
                               f"variant ({type(exc).__name__}: {text})") from exc
        if isinstance(exc, zlib.error):
            text = f"zlib: {text}"
        raise ImageDecodeError(
            "corrupt", f"{where}: the header is readable but the pixel data is broken "
                       f"({type(exc).__name__}: {text})") from exc

    if fmt in ("JPEG", "MPO") and _check_jpeg_scan(data, where) is False:
        # libjpeg finished (it needs the EOI to do so), yet walking the segments runs
        # off the end: segment lengths in the scan area are garbage
        raise ImageDecodeError(
            "corrupt", f"{where}: damaged JPEG scan data (marker segments run past the "
                       f"end of the file)")


def _jpeg_scan_start(data: bytes) -> int:
    """Offset just after the first SOS segment; -1 if the data ends first, -2 if malformed."""
    for code, _, end in _jpeg_segments(data):
        if code < 0:
            return -2
        if code == 0xDA:
            return end if end <= len(data) else -1
    return -1


# Segments that may legitimately follow an entropy-coded scan (before EOI): DHT, DAC,
# DNL, DRI, DQT, SOS (next progressive scan), COM, APPn.
_BETWEEN_SCANS = frozenset([0xC4, 0xCC, 0xDC, 0xDD, 0xDB, 0xDA, 0xFE, *range(0xE0, 0xF0)])


def _check_jpeg_scan(data: bytes, where: str, scan: int | None = None) -> bool | None:
    """Reject a JPEG whose scan data is structurally damaged (see the module docstring).

    Walks from the first scan to EOI: inside entropy-coded data 0xFF is followed only by
    00 (stuffing), FF (fill) or RSTn; any other marker must be one that can appear
    between scans, with a length that stays inside the file and lands on the next marker.
    Random or shifted bytes fail this with probability ~99.5%; valid files never do.
    Raises ImageDecodeError("corrupt").  Returns True when the EOI marker is reached,
    False when the data ends first (truncated, or damaged segment lengths), None when the
    header segments cannot be walked (no verdict).
    """
    pos = _jpeg_scan_start(data) if scan is None else scan
    if pos < 0:
        return None if pos == -2 else False
    n = len(data)
    while pos < n:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            return False
        at = m.start()
        code = data[at + 1]
        if code == 0xD9:  # EOI: the (first) image ends here; anything after is not ours
            return True
        if code == 0x01:  # TEM: a standalone marker
            pos = m.end()
            continue
        if code in _BETWEEN_SCANS and at + 4 > n:
            return False  # cut inside a marker
        bad = code not in _BETWEEN_SCANS
        if not bad:
            end = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
            if end >= n:
                return False  # cut inside a segment: truncated, not corrupt
            bad = code != 0xDA and data[end] != 0xFF
        if bad:
            raise ImageDecodeError(
                "corrupt",
                f"{where}: damaged JPEG scan data (unexpected marker 0xFF{code:02X} at "
                f"byte {at} of {n})")
        pos = end
    return False


def _orientation(im: Image.Image, fmt: str) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable: bad EXIF never fails an image)."""
    if fmt != "TIFF" and "exif" not in im.info:
        return 1
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF is ignored, the pixels are fine
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation to an (H,W[,C]) array (same result as ImageOps.exif_transpose)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, k=-1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, k=1)
    return np.ascontiguousarray(a)


def _to8_from16(a: np.ndarray) -> np.ndarray:
    # Full-range >> 8 (not min/max stretching): 0..65535 maps linearly onto 0..255, so
    # the exposure the author encoded is kept, the result does not depend on content or
    # noise, and 16-bit gray matches what Pillow/libpng do for 16-bit colour (they keep
    # the most significant byte).
    return (a.astype(np.uint16, copy=False) >> 8).astype(np.uint8)


def _gray_palette(im: Image.Image) -> bool:
    pal = im.getpalette()
    if not pal:
        return False
    p = np.asarray(pal, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(p[:, 0] == p[:, 1]) and np.all(p[:, 1] == p[:, 2]))


def _composite(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten straight alpha over mid-grey: uint8 (H,W[,C]) + (H,W) -> uint8 like color.

    Why grey and not "just drop alpha" or white: the colour under transparent pixels is
    undefined (often black, sometimes leftover content); dropping alpha would hand that
    to the detector.  A mid-grey background is the neutral choice for a face detector
    and for brightness matching: it makes no hard black/white silhouette edge around
    dark or light skin and hair, and does not skew the face-region statistics.
    """
    if alpha.min() == 255:  # opaque everywhere: nothing to do
        return np.ascontiguousarray(color)
    a = alpha.astype(np.uint16)
    if color.ndim == 3:
        a = a[..., None]
    out = (color.astype(np.uint16) * a + _ALPHA_BACKGROUND * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _from_gray(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    if not gray.flags.writeable:
        gray = gray.copy()
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), gray


def _from_rgb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    return bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Loaded Pillow image -> (bgr, gray, is_gray, had_alpha); arrays own their memory."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:  # the common case first
        return (*_from_rgb(np.asarray(im)), False, False)
    if mode == "L" and "transparency" not in im.info:
        return (*_from_gray(np.asarray(im)), True, False)

    if mode == "1":
        return (*_from_gray(np.asarray(im.convert("L"))), True, False)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.dtype.kind == "i":  # "I" is int32; it carries 16-bit samples in practice
            a = np.clip(a, 0, 65535)
        return (*_from_gray(_to8_from16(a)), True, False)
    if mode == "F":
        # float samples: 0..1 if that is their range, else taken as 0..255
        a = np.asarray(im, dtype=np.float32)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        a = np.nan_to_num(a * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return (*_from_gray(np.clip(np.rint(a), 0, 255).astype(np.uint8)), True, False)

    if mode in ("P", "PA"):
        gray_pal = _gray_palette(im)
        if mode == "PA" or "transparency" in im.info:
            rgba = np.asarray(im.convert("RGBA"))
            if gray_pal:
                return (*_from_gray(_composite(rgba[..., 0], rgba[..., 3])), True, True)
            return (*_from_rgb(_composite(rgba[..., :3], rgba[..., 3])), False, True)
        if gray_pal:
            return (*_from_gray(np.asarray(im.convert("L"))), True, False)
        return (*_from_rgb(np.asarray(im.convert("RGB"))), False, False)

    if mode in ("LA", "La") or (mode == "L" and "transparency" in im.info):
        la = np.asarray(im.convert("LA"))  # "La" (premultiplied) is un-premultiplied here
        return (*_from_gray(_composite(la[..., 0], la[..., 1])), True, True)
    if mode in ("RGBA", "RGBa") or (mode == "RGB" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return (*_from_rgb(_composite(rgba[..., :3], rgba[..., 3])), False, True)

    # CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, RGBX, 16-bit colour
    # (Pillow already keeps the high byte for RGB;16 data) ...
    return (*_from_rgb(np.asarray(im.convert("RGB"))), False, False)


# --------------------------------------------------------------------------- encoding

_ENCODE_EXT = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "webp": ".webp",
               "bmp": ".bmp", "tif": ".tif", "tiff": ".tif"}

# zlib level 1: ~3x faster than OpenCV's default (3) on photos for a few % more bytes.
_PNG_COMPRESSION = 1


def encode_image(img: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """uint8 (H,W) gray or (H,W,3) BGR -> encoded bytes (OpenCV encoders: fastest here).

    fmt: jpg/jpeg/png/webp/bmp/tif/tiff (case-insensitive, a leading dot is allowed);
    quality 1..100 applies to jpg and webp.  Raises ValueError on bad input.
    """
    key = fmt.lower().lstrip(".")
    if key not in _ENCODE_EXT:
        raise ValueError(f"unknown image format {fmt!r}; use one of {sorted(_ENCODE_EXT)}")
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"encode_image needs uint8 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or 0 in img.shape:
        raise ValueError(f"encode_image needs (H,W) or (H,W,3) pixels, got shape {img.shape}")
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    ext = _ENCODE_EXT[key]
    if ext == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, q]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, q]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION]
    else:
        params = []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as {ext}")
    return buf.tobytes()


def output_for(decoded: DecodedImage, bgr: np.ndarray) -> np.ndarray:
    """Shape an output like its source: (H,W,3) BGR, or (H,W) gray for gray sources."""
    if decoded.is_gray and bgr.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)
    return bgr


def is_image_name(name: str) -> bool:
    """True when a file name ends in one of IMAGE_EXTENSIONS (any case)."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


#: the JPEG standard's (Annex K) luminance quantisation table, which libjpeg scales by quality
_STD_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
             14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
             18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)


def _ijg_table_sum(quality: int) -> int:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return sum(min(max((v * scale + 50) // 100, 1), 255) for v in _STD_LUMA)


_IJG_SUMS = {q: _ijg_table_sum(q) for q in range(1, 101)}


def jpeg_quality(data: bytes) -> int | None:
    """The libjpeg quality (1..100) a JPEG's luminance quantisation table matches best,
    from a header walk; None when ``data`` is not a JPEG or has no 8-bit table 0.

    Order-free: the table's sum is compared with the standard table scaled per quality, so
    zigzag or natural order and custom tables of the same strength give the same answer."""
    data = _as_bytes(data)
    if not data.startswith(b"\xff\xd8"):
        return None
    for code, pos, end in _jpeg_segments(data):
        if code < 0 or code == 0xDA or end > len(data):
            return None
        if code == 0xDB:  # DQT: one or more tables (Pq/Tq byte, then 64 or 128 bytes)
            p = pos + 4
            while p < end:
                pq, tq = data[p] >> 4, data[p] & 15
                size = 128 if pq else 64
                if tq == 0 and not pq and p + 1 + size <= end:
                    total = sum(data[p + 1:p + 1 + size])
                    return min(_IJG_SUMS, key=lambda q: (abs(_IJG_SUMS[q] - total), -q))
                p += 1 + size
    return None
