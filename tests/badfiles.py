"""A corpus of bad and odd image files, for the decoder, CLI and Ray-job tests.

``write_bad_corpus(folder)`` writes every file and returns ``{file name: expected}``, where
*expected* is ``"ok"`` (decodes) or the :class:`masktheface.imageio.ImageDecodeError`
code that ``decode_image`` must raise.  The "ok" files are made from one real face
(LFW ``George_W_Bush_0001.jpg`` from ``../shared/data``) when it is available; otherwise
from a synthetic picture with no real face, in which case callers that need faces
should skip (see :func:`default_source`).

Face presence (for tests that detect faces), when the source is the real face:
every "ok" file shows the face upright after decoding, except the names in
:data:`NO_FACE` (a plain picture) and :data:`FACE_UNCERTAIN` (decodes, but a detector
may or may not find the face: 1-bit dithering).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from masktheface.datadir import shared_data

#: the face used for the "ok" files, relative to the shared data folder
SOURCE_RELPATH = Path("lfw/lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg")

#: huge.png's header: 10000 x 10000 = 100 Mpx (above the 80 Mpx default limit and above
#: Pillow's own 89 Mpx warning level), a real 1-bit PNG of ~12 KB
HUGE_SIZE = (10_000, 10_000)

#: exif_rotated.jpg holds this (left, top, right, bottom) crop of the source, a portrait
#: 180x220 face, stored rotated 90° counter-clockwise with EXIF orientation 6, so it is
#: upright (and 180 wide, 220 high) only once the orientation is applied
EXIF_CROP = (35, 15, 215, 235)

#: names with dots, spaces, unicode and upper case: byte copies of the source JPEG
ODD_NAMES = ("a.b.c.jpg", "with space.jpg", "ünïcødé名前.jpg", "UPPER.JPG")

#: decodes fine, contains no face
NO_FACE = frozenset({"no_face.jpg"})
#: decodes fine, a face detector may or may not find the (degraded) face, and its landmark
#: fit may not settle (then it is reported, not masked)
FACE_UNCERTAIN = frozenset({"1bit.png"})


def default_source() -> Path | None:
    """The real face photo used for the corpus, or None when the data is absent."""
    p = shared_data(SOURCE_RELPATH)
    return p if p is not None and p.is_file() else None


def synthetic_face(size: int = 250) -> np.ndarray:
    """A deterministic uint8 (size,size,3) BGR picture (no real face) for data-less runs."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.dstack([60 + 120 * x, 90 + 100 * y, 150 + 60 * (1 - x)]).astype(np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (size // 4, size // 3), 0, 0, 360, (120, 160, 210), -1)
    for dx in (-size // 10, size // 10):
        cv2.circle(img, (c + dx, c - size // 12), size // 40, (40, 30, 30), -1)
    cv2.line(img, (c - size // 12, c + size // 6), (c + size // 12, c + size // 6),
             (60, 60, 150), max(1, size // 60))
    return img


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def huge_png(width: int = HUGE_SIZE[0], height: int = HUGE_SIZE[1]) -> bytes:
    """A valid all-black 1-bit grayscale PNG of width x height, written chunk by chunk
    (Pillow would need width*height bytes of memory to make it)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 500) for _ in range(height // 500)]
    parts.append(comp.compress(row * (height % 500)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def _jpeg_sos_end(data: bytes) -> int:
    """Offset of the first entropy-coded byte of a JPEG (after the SOS segment)."""
    pos = 2
    while True:
        code = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if code == 0xDA:
            return pos + 2 + length
        pos += 2 + length


def write_bad_corpus(folder: Path, source_jpg: Path | None = None) -> dict[str, str]:
    """Write the corpus into ``folder`` (created if needed); return {name: "ok" | code}.

    source_jpg: a real face JPEG; default :func:`default_source`, else a synthetic
    picture.  Deterministic: the same source gives the same bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source_jpg is None:
        source_jpg = default_source()
    if source_jpg is not None:
        jpg = Path(source_jpg).read_bytes()
        face = Image.open(io.BytesIO(jpg)).convert("RGB")
    else:
        face = Image.fromarray(synthetic_face()[..., ::-1].copy(), "RGB")
        jpg = _pil_bytes(face, "JPEG", quality=95)
    rgb = np.asarray(face)
    rng = np.random.default_rng(20240601)
    files: dict[str, tuple[bytes, str]] = {}

    def add(name: str, data: bytes, expected: str) -> None:
        files[name] = (data, expected)

    # ---- not images at all
    add("empty.jpg", b"", "empty")
    add("text.jpg", b"This is a text file with an image's name.\nNo pixels here.\n" * 4,
        "not_image")
    rand = rng.integers(0, 256, 4096, dtype=np.uint8)
    rand[0] = 0x00  # keep clear of every format signature (no plugin may claim it)
    add("random.png", rand.tobytes(), "not_image")
    add("fake_pdf.jpg", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        "not_image")
    # a HEIF/HEIC header (iPhone photo), recognised but not decodable here
    add("iphone.heic.jpg", struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00"
        + b"mif1heic" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)), "unsupported")

    # ---- broken real images
    add("truncated.jpg", jpg[: int(len(jpg) * 0.6)], "truncated")
    add("truncated_header.jpg", jpg[:100], "truncated")
    # all pixel data present, only the final EOI marker missing: Pillow and OpenCV 5
    # both refuse it, and so do we (documented in masktheface.imageio)
    add("no_eoi.jpg", jpg[:-2] if jpg.endswith(b"\xff\xd9") else jpg, "truncated")
    sos = _jpeg_sos_end(jpg)
    garbage = rng.integers(0, 256, max(len(jpg) - sos - 2, 2000), dtype=np.uint8).tobytes()
    add("corrupt.jpg", jpg[:sos] + garbage + b"\xff\xd9", "corrupt")
    png = _pil_bytes(face, "PNG")
    add("truncated.png", png[: int(len(png) * 0.6)], "truncated")
    idat = png.index(b"IDAT")
    broken = bytearray(png)
    for i in range(idat + 40, idat + 140):  # flip bits inside the deflate stream
        broken[i] ^= 0x5A
    add("corrupt.png", bytes(broken), "corrupt")
    add("huge.png", huge_png(), "too_large")

    # ---- odd but valid
    add("grayscale.jpg", _pil_bytes(face.convert("L"), "JPEG", quality=95), "ok")
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    oval = (((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2) <= 1
    alpha = np.where(oval, 255, 0).astype(np.uint8)  # opaque face, transparent corners
    add("rgba.png", _pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), "ok")
    gray = np.asarray(face.convert("L"))
    add("gray_alpha.png", _pil_bytes(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"),
        "ok")
    ok, buf = cv2.imencode(".png", gray.astype(np.uint16) * 257)  # 16-bit gray, full range
    assert ok
    add("16bit.png", buf.tobytes(), "ok")
    ok, buf = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)  # 16-bit colour
    assert ok
    add("16bit_rgb.png", buf.tobytes(), "ok")
    add("cmyk.jpg", _pil_bytes(Image.fromarray(_rgb_to_cmyk(rgb), "CMYK"), "JPEG",
                               quality=95), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright = rgb[EXIF_CROP[1]:EXIF_CROP[3], EXIF_CROP[0]:EXIF_CROP[2]]
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a sideways camera stores
    add("exif_rotated.jpg", _pil_bytes(Image.fromarray(stored), "JPEG", quality=95,
                                       exif=exif.tobytes()), "ok")
    add("palette.png", _pil_bytes(face.quantize(colors=128), "PNG"), "ok")
    add("1bit.png", _pil_bytes(face.convert("1"), "PNG"), "ok")
    add("progressive.jpg", _pil_bytes(face, "JPEG", quality=90, progressive=True), "ok")
    add("wrong_extension.png", jpg, "ok")  # a JPEG named .png: content decides
    add("face.webp", _pil_bytes(face, "WEBP", quality=90), "ok")
    add("face.bmp", _pil_bytes(face, "BMP"), "ok")
    add("face.tif", _pil_bytes(face, "TIFF"), "ok")
    noise = Image.fromarray(rng.integers(0, 256, rgb.shape, dtype=np.uint8), "RGB")
    add("multipage.tiff", _pil_bytes(face, "TIFF", save_all=True, append_images=[noise]),
        "ok")
    plain = np.full((200, 300, 3), (90, 140, 200), np.uint8)
    cv2.rectangle(plain, (40, 40), (160, 120), (30, 200, 30), -1)
    add("no_face.jpg", cv2.imencode(".jpg", plain)[1].tobytes(), "ok")
    for name in ODD_NAMES:
        add(name, jpg, "ok")

    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def _rgb_to_cmyk(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) RGB -> (H,W,4) CMYK with real black extraction (K = 255 - max)."""
    f = rgb.astype(np.float64)
    k = 255.0 - f.max(axis=2)
    cmy = (255.0 - f - k[..., None]) / np.maximum(255.0 - k, 1e-9)[..., None] * 255.0
    return np.dstack([cmy, k]).round().clip(0, 255).astype(np.uint8)
