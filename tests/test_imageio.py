"""masktheface.imageio: every bad-input class, the odd-but-valid variants, encoding."""
from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, features

from masktheface.datadir import DATA_HINT
from masktheface.imageio import (
    ERROR_CODES,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_DEFAULT,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    encode_image,
    is_image_name,
    output_for,
    read_header,
)

try:  # tests/ on sys.path (pytest rootdir insertion) or the repo root
    import badfiles
except ImportError:  # pragma: no cover
    from tests import badfiles

SOURCE = badfiles.default_source()
needs_data = pytest.mark.skipif(
    SOURCE is None,
    reason=f"{badfiles.SOURCE_RELPATH} not found in the shared data ({DATA_HINT})")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("badfiles")
    return folder, badfiles.write_bad_corpus(folder)


@pytest.fixture(scope="module")
def face_rgb() -> np.ndarray:
    """uint8 (H,W,3) RGB of the corpus source (real face, or the synthetic stand-in)."""
    if SOURCE is not None:
        return np.asarray(Image.open(SOURCE).convert("RGB"))
    return badfiles.synthetic_face()[..., ::-1].copy()


def _decode(folder: Path, name: str, **kw) -> DecodedImage:
    return decode_image((folder / name).read_bytes(), **kw)


def _code(data: bytes, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    return info.value.code


# ----------------------------------------------------------------------- the corpus

def test_corpus_is_rich(corpus):
    _, expected = corpus
    codes = set(expected.values())
    assert codes == {"ok", *ERROR_CODES}, "every error code and 'ok' is represented"
    for name in (*badfiles.ODD_NAMES, "huge.png", "exif_rotated.jpg", "cmyk.jpg",
                 "16bit.png", "rgba.png", "palette.png", "grayscale.jpg", "corrupt.jpg",
                 "truncated.jpg", "empty.jpg", "text.jpg", "random.png",
                 "face.webp", "face.bmp", "face.tif"):
        assert name in expected
    assert badfiles.NO_FACE | badfiles.FACE_UNCERTAIN <= {n for n, e in expected.items()
                                                         if e == "ok"}
    assert all(is_image_name(n) for n in expected)  # a folder walk picks up every one


def test_corpus_files_decode_as_declared(corpus):
    folder, expected = corpus
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for name, want in expected.items():
        data = (folder / name).read_bytes()
        try:
            got = decode_image(data)
        except ImageDecodeError as e:
            assert e.code == want, f"{name}: expected {want}, got {e.code} ({e})"
            assert str(e).startswith(f"{e.code}: ") and len(e.message) > 15
        else:
            assert want == "ok", f"{name}: expected {want}, but it decoded"
            _check_arrays(got)


def test_corpus_is_deterministic(corpus, tmp_path):
    folder, expected = corpus
    again = badfiles.write_bad_corpus(tmp_path)
    assert again == expected
    for name in expected:
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


def test_corpus_without_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "absent"))
    assert badfiles.default_source() is None
    expected = badfiles.write_bad_corpus(tmp_path / "c")
    for name, want in expected.items():
        try:
            decode_image((tmp_path / "c" / name).read_bytes())
            got = "ok"
        except ImageDecodeError as e:
            got = e.code
        assert got == want, name


def _check_arrays(d: DecodedImage) -> None:
    h, w = d.bgr.shape[:2]
    assert d.bgr.dtype == np.uint8 and d.bgr.shape == (h, w, 3)
    assert d.gray.dtype == np.uint8 and d.gray.shape == (h, w)
    assert d.bgr.flags.c_contiguous and d.gray.flags.c_contiguous
    assert d.bgr.flags.writeable and d.gray.flags.writeable
    assert d.size == (w, h)
    if d.is_gray:  # gray sources carry the same value in all three channels
        assert np.array_equal(d.bgr[..., 0], d.gray) and np.array_equal(d.bgr[..., 2], d.gray)


# ----------------------------------------------------------------------- bad input

def test_empty():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"")
    assert info.value.code == "empty" and "empty" in str(info.value)
    with pytest.raises(ImageDecodeError, match="empty"):
        read_header(b"")


@pytest.mark.parametrize("data, words", [
    (b"hello, I am a text file\n" * 20, "text"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    (b"PK\x03\x04" + bytes(100), "ZIP"),
    (bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8)), "binary"),
])
def test_not_image(data, words):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    e = info.value
    assert e.code == "not_image"
    assert "not an image" in str(e) and words in str(e) and "JPEG" in str(e)


def test_random_bytes_never_decode():
    # signature-less Pillow plugins (TGA, IM, ...) must never claim arbitrary bytes
    rng = np.random.default_rng(11)
    for _ in range(200):
        data = rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes()
        with pytest.raises(ImageDecodeError):
            decode_image(data)


def test_truncated_jpeg_and_png(face_rgb):
    jpg = encode_image(face_rgb[..., ::-1].copy(), "jpg")
    png = encode_image(face_rgb[..., ::-1].copy(), "png")
    for data in (jpg, png):
        for frac in (0.05, 0.3, 0.6, 0.95):
            cut = data[: int(len(data) * frac)]
            with pytest.raises(ImageDecodeError) as info:
                decode_image(cut)
            assert info.value.code == "truncated", (frac, str(info.value))
            assert "ends" in str(info.value)
    # a header cut short is truncated too, not "corrupt" or "not an image"
    for n in (3, 20, 60):
        assert _code(jpg[:n]) == "truncated"
    for n in (12, 20, 40):
        assert _code(png[:n]) == "truncated"


def test_truncation_is_not_silently_accepted_and_state_untouched(face_rgb):
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    jpg = encode_image(face_rgb[..., ::-1].copy(), "jpg")
    assert _code(jpg[: len(jpg) // 2]) == "truncated"
    decode_image(jpg)
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


def test_corrupt_jpeg_scan_data_is_caught(face_rgb):
    jpg = encode_image(face_rgb[..., ::-1].copy(), "jpg")
    sos = badfiles._jpeg_sos_end(jpg)
    caught = 0
    for seed in range(40):
        g = np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8).tobytes()
        try:
            decode_image(jpg[:sos] + g + b"\xff\xd9")
        except ImageDecodeError as e:
            assert e.code == "corrupt", str(e)
            caught += 1
    assert caught >= 39  # libjpeg alone (warnings only) lets about half through


def test_valid_jpeg_variants_pass_scan_check(face_rgb):
    bgr = face_rgb[..., ::-1].copy()
    im = Image.fromarray(face_rgb)
    variants = [
        _pil(im, "JPEG", progressive=True, optimize=True),
        _pil(im, "JPEG", quality=40, subsampling=0),
        cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_RST_INTERVAL, 3])[1].tobytes(),
        cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        encode_image(bgr, "jpg") + b"trailing junk after EOI \xff\x10",
    ]
    for data in variants:
        assert decode_image(data).size == (bgr.shape[1], bgr.shape[0])


def test_corrupt_png():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = bytearray(encode_image(img, "png"))
    at = png.index(b"IDAT")
    for i in range(at + 20, at + 60):
        png[i] ^= 0xA5
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bytes(png))
    assert info.value.code == "corrupt" and "broken" in str(info.value)


def test_unsupported_known_formats():
    heic = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(64)
    assert _code(heic) == "unsupported"
    # HEIF's generic major brand (which AVIF shares) with a HEIC compatible brand
    heif = struct.pack(">I", 24) + b"ftypmif1" + bytes(4) + b"mif1heic" + bytes(64)
    assert _code(heif) == "unsupported"
    ico = _pil(Image.new("RGB", (8, 8)), "ICO")  # a real format we do not decode
    with pytest.raises(ImageDecodeError) as info:
        decode_image(ico)
    assert info.value.code == "unsupported" and "ICO" in str(info.value)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_decodes():
    im = Image.fromarray(np.full((16, 24, 3), (200, 100, 50), np.uint8))
    d = decode_image(_pil(im, "AVIF", quality=90))
    assert d.format == "AVIF" and d.size == (24, 16)
    assert np.abs(d.bgr.astype(int) - [50, 100, 200]).mean() < 8


def test_too_large_from_header_before_decoding(corpus):
    folder, _ = corpus
    data = (folder / "huge.png").read_bytes()
    assert len(data) < 50_000
    assert read_header(data) == ("PNG", badfiles.HUGE_SIZE, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow must not even warn
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
    e = info.value
    assert e.code == "too_large"
    assert "10000x10000" in str(e) and f"{MAX_PIXELS_DEFAULT:,}" in str(e)


def test_too_large_beyond_pillows_own_limit():
    # 200 Mpx: above Pillow's DecompressionBombError threshold; still our error, our text
    data = badfiles.huge_png(20_000, 10_000)
    assert read_header(data)[1] == (20_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
    assert info.value.code == "too_large" and "20000x10000" in str(info.value)


def test_gif_frame_bomb_is_ours():
    # a 10x10 GIF canvas whose first frame claims 20000x20000: Pillow's own check fires
    # while opening; it must come out as our too_large, without a printed warning
    gif = (b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
           + b"," + struct.pack("<HHHHB", 0, 0, 20000, 20000, 0) + b"\x02\x02\x4c\x01\x00;")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _code(gif) == "too_large"


@pytest.mark.parametrize("fmt", ["png", "jpg"])  # Pillow path, OpenCV fast path
def test_max_pixels_boundary(face_rgb, fmt):
    data = encode_image(face_rgb[..., ::-1].copy(), fmt)
    h, w = face_rgb.shape[:2]
    assert decode_image(data, max_pixels=w * h).size == (w, h)
    assert _code(data, max_pixels=w * h - 1) == "too_large"


def test_error_is_a_valueerror_and_pickles():
    e = ImageDecodeError("corrupt", "JPEG 10x10: broken")
    assert isinstance(e, ValueError) and str(e) == "corrupt: JPEG 10x10: broken"
    back = pickle.loads(pickle.dumps(e))
    assert (back.code, back.message, str(back)) == (e.code, e.message, str(e))
    with pytest.raises(ValueError):
        ImageDecodeError("bogus", "x")


# ----------------------------------------------------------------------- odd but valid

def test_grayscale_sources(corpus):
    folder, _ = corpus
    for name in ("grayscale.jpg", "16bit.png", "1bit.png", "gray_alpha.png"):
        d = _decode(folder, name)
        assert d.is_gray, name
        _check_arrays(d)
        assert output_for(d, d.bgr).shape == d.gray.shape
    for name in ("face.webp", "cmyk.jpg", "palette.png", "rgba.png", "16bit_rgb.png"):
        d = _decode(folder, name)
        assert not d.is_gray, name
        assert output_for(d, d.bgr) is d.bgr


def test_16bit_full_range(corpus, face_rgb):
    folder, _ = corpus
    gray = np.asarray(Image.fromarray(face_rgb).convert("L"))
    d = _decode(folder, "16bit.png")
    assert d.mode.startswith("I;16") and np.array_equal(d.gray, gray)  # v*257 >> 8 == v
    d = _decode(folder, "16bit_rgb.png")
    assert np.array_equal(d.bgr, face_rgb[..., ::-1])
    # a 16-bit image using only the low byte is dark, not stretched
    ok, buf = cv2.imencode(".png", np.full((8, 8), 1000, np.uint16))
    assert decode_image(buf.tobytes()).gray.max() == 1000 >> 8


def test_cmyk_to_rgb(corpus, face_rgb):
    folder, _ = corpus
    d = _decode(folder, "cmyk.jpg")
    assert d.mode == "CMYK"
    diff = np.abs(d.bgr[..., ::-1].astype(int) - face_rgb)
    assert diff.mean() < 3, diff.mean()


def test_alpha_composited_over_grey(corpus, face_rgb):
    folder, _ = corpus
    d = _decode(folder, "rgba.png")
    assert d.had_alpha and d.mode == "RGBA"
    assert np.array_equal(d.bgr[125, 125], face_rgb[125, 125, ::-1])  # opaque centre
    assert (d.bgr[0, 0] == 128).all()  # transparent corner -> mid-grey
    d = _decode(folder, "gray_alpha.png")
    assert d.had_alpha and d.gray[0, 0] == 128
    # partial alpha blends; colour under alpha 0 never shows
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)
    rgba[0, 1] = (255, 0, 0, 255)
    rgba[1, 0] = (0, 0, 0, 128)
    d = decode_image(_pil(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert d.bgr[0, 0].tolist() == [128, 128, 128]
    assert d.bgr[0, 1].tolist() == [0, 0, 255]
    assert d.bgr[1, 0].tolist() == [64, 64, 64]


def test_palette_and_transparency():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), np.uint8))
    p = im.quantize(16)
    d = decode_image(_pil(p, "PNG"))
    assert (d.mode, d.is_gray, d.had_alpha) == ("P", False, False)
    assert np.array_equal(d.bgr, np.asarray(p.convert("RGB"))[..., ::-1])
    gp = Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30) % 7 * 30).convert("P")
    d = decode_image(_pil(gp, "PNG"))
    assert d.is_gray and np.array_equal(d.gray, np.asarray(gp.convert("L")))
    d = decode_image(_pil(p, "PNG", transparency=0))
    assert d.had_alpha


def test_exif_rotated_face(corpus, face_rgb):
    folder, _ = corpus
    data = (folder / "exif_rotated.jpg").read_bytes()
    left, top, right, bottom = badfiles.EXIF_CROP
    assert read_header(data)[1] == (bottom - top, right - left)  # stored sideways
    d = decode_image(data)
    assert d.exif_rotated and d.size == (right - left, bottom - top)  # w/h swapped
    upright = face_rgb[top:bottom, left:right, ::-1].astype(int)
    err = np.abs(d.bgr.astype(int) - upright).mean()
    flipped = np.abs(d.bgr[::-1, ::-1].astype(int) - upright).mean()
    assert err < 4 and flipped > 4 * err, (err, flipped)
    assert not _decode(folder, "a.b.c.jpg").exif_rotated


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # Pillow path and OpenCV fast path
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation, fmt):
    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _pil(im, fmt, exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    d = decode_image(data)
    assert np.array_equal(d.bgr, want[..., ::-1])
    assert d.exif_rotated == (orientation != 1)
    assert d.size == (want.shape[1], want.shape[0])


def test_bad_exif_is_ignored():
    im = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    data = _pil(im, "JPEG", exif=b"Exif\x00\x00garbage-not-a-tiff-header")
    d = decode_image(data)
    assert d.size == (6, 4) and not d.exif_rotated


def test_multiframe_first_frame(corpus, face_rgb):
    folder, _ = corpus
    d = _decode(folder, "multipage.tiff")
    assert np.array_equal(d.bgr, face_rgb[..., ::-1])
    frames = [Image.new("RGB", (12, 9), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = _pil(frames[0], "GIF", save_all=True, append_images=frames[1:])
    d = decode_image(gif)
    assert d.format == "GIF" and d.bgr[4, 4].tolist() == [0, 0, 255]  # red, in BGR


def test_read_header(corpus):
    folder, _ = corpus
    assert read_header((folder / "face.webp").read_bytes())[0] == "WEBP"
    fmt, size, mode = read_header((folder / "cmyk.jpg").read_bytes())
    assert (fmt, mode) == ("JPEG", "CMYK")
    assert read_header((folder / "16bit.png").read_bytes())[2].startswith("I;16")
    for name in ("text.jpg", "random.png"):
        with pytest.raises(ImageDecodeError, match="not_image"):
            read_header((folder / name).read_bytes())


def test_accepts_bytes_like(corpus):
    folder, _ = corpus
    data = (folder / "a.b.c.jpg").read_bytes()
    ref = decode_image(data).bgr
    assert np.array_equal(decode_image(bytearray(data)).bgr, ref)
    assert np.array_equal(decode_image(memoryview(data)).bgr, ref)


def test_decoded_image_is_frozen(corpus):
    folder, _ = corpus
    d = _decode(folder, "a.b.c.jpg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.format = "PNG"  # type: ignore[misc]


@needs_data
def test_matches_opencv_on_lfw():
    data = SOURCE.read_bytes()
    d = decode_image(data)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(d.bgr, ref)
    assert np.array_equal(d.gray, cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY))
    assert (d.format, d.mode, d.size, d.is_gray, d.had_alpha, d.exif_rotated) == \
        ("JPEG", "RGB", (250, 250), False, False, False)


# ----------------------------------------------------------------------- encoding

@pytest.mark.parametrize("fmt, lossless", [
    ("jpg", False), ("jpeg", False), ("JPG", False), ("png", True), ("webp", False),
    ("bmp", True), ("tif", True), ("tiff", True), (".png", True),
])
def test_encode_decode_roundtrip(fmt, lossless, face_rgb):
    bgr = face_rgb[..., ::-1].copy()
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    d = decode_image(encode_image(bgr, fmt, quality=95))
    assert d.bgr.shape == bgr.shape and not d.is_gray
    err = np.abs(d.bgr.astype(int) - bgr).mean()
    assert err == 0 if lossless else err < 4, err
    g = decode_image(encode_image(gray, fmt, quality=95))
    assert g.gray.shape == gray.shape
    if fmt.lower().lstrip(".") != "webp":  # WebP has no gray mode: it comes back RGB
        assert g.is_gray, fmt
        assert output_for(g, g.bgr).ndim == 2  # gray sources stay gray on output
    gerr = np.abs(g.gray.astype(int) - gray).mean()
    assert gerr == 0 if lossless else gerr < 4, gerr


def test_encode_quality_and_png_level(face_rgb):
    bgr = face_rgb[..., ::-1].copy()
    assert len(encode_image(bgr, "jpg", quality=30)) < len(encode_image(bgr, "jpg", quality=95))
    assert len(encode_image(bgr, "webp", quality=30)) < len(encode_image(bgr, "webp", quality=95))
    assert encode_image(bgr[..., :1], "png") == encode_image(bgr[..., 0], "png")


@pytest.mark.parametrize("img, fmt, quality", [
    (np.zeros((4, 4, 3), np.float32), "jpg", 95),
    (np.zeros((4, 4, 4), np.uint8), "png", 95),
    (np.zeros((4,), np.uint8), "png", 95),
    (np.zeros((0, 4, 3), np.uint8), "png", 95),
    (np.zeros((4, 4, 3), np.uint8), "gif", 95),
    (np.zeros((4, 4, 3), np.uint8), "jpg", 0),
    (np.zeros((4, 4, 3), np.uint8), "jpg", 101),
])
def test_encode_rejects_bad_input(img, fmt, quality):
    with pytest.raises(ValueError):
        encode_image(img, fmt, quality)


def test_encode_accepts_non_contiguous(face_rgb):
    view = face_rgb[:, ::-1]  # negative stride RGB view; treat it as BGR
    d = decode_image(encode_image(view, "png"))
    assert np.array_equal(d.bgr, view)


# ----------------------------------------------------------------------- names

@pytest.mark.parametrize("name, ok", [
    ("a.jpg", True), ("UPPER.JPG", True), ("x.JpEg", True), ("a.b.c.png", True),
    ("with space.webp", True), ("ünïcødé名前.jpg", True), ("dir/x.bmp", True),
    ("x.tif", True), ("x.TIFF", True), ("x.gif", False), ("x.jpg.txt", False),
    ("jpg", False), ("", False), (".hidden", False), ("x.heic", False), ("photo.jpg ", False),
])
def test_is_image_name(name, ok):
    assert is_image_name(name) is ok


def test_extensions_are_lowercase_dotted():
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def _pil(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()
