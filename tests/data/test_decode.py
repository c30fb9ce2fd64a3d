"""decode_image: every colour mode becomes RGB, every bad file becomes a DecodeError naming it."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from hashsearch.data import decode as decode_module
from hashsearch.data.decode import DEFAULT_MAX_PIXELS, DecodeError, check_image_bytes, decode_image, sniff_format


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (1-bit gray) with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def cifar_jpeg(cifar_small) -> bytes:
    return sorted((cifar_small / "test" / "cat").glob("*.jpg"))[0].read_bytes()


def test_real_jpeg_decodes_to_loaded_rgb(cifar_jpeg):
    img = decode_image(cifar_jpeg, "cat.jpg")
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.asarray(img).std() > 5  # real content, not a blank frame


@pytest.mark.parametrize(
    "mode, colour, fmt, expected",
    [
        ("L", 77, "PNG", (77, 77, 77)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("1", 0, "BMP", (0, 0, 0)),
        ("RGB", (10, 200, 30), "PNG", (10, 200, 30)),
        ("RGBA", (255, 0, 0, 255), "PNG", (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), "PNG", (255, 255, 255)),  # fully transparent: the white background
        ("RGBA", (0, 0, 0, 128), "PNG", (127, 127, 127)),  # half transparent black over white
        ("LA", (0, 0), "PNG", (255, 255, 255)),
        ("I;16", 0x8000, "PNG", (128, 128, 128)),  # scaled, not clipped to 255
        ("I;16", 0xFFFF, "TIFF", (255, 255, 255)),
        ("I", 0x4000, "TIFF", (64, 64, 64)),  # 32-bit gray holding 16-bit values
    ],
)
def test_colour_modes_become_rgb(mode, colour, fmt, expected):
    data = encode(Image.new(mode, (6, 4), colour), fmt)
    img = decode_image(data, f"x.{fmt.lower()}")
    assert img.mode == "RGB" and img.size == (6, 4)
    assert img.getpixel((2, 2)) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO"])
def test_every_accepted_format_decodes(fmt):
    img = decode_image(encode(Image.new("RGB", (16, 12), (200, 40, 40)), fmt), f"x.{fmt.lower()}")
    assert img.mode == "RGB" and img.size == (16, 12)
    assert img.getpixel((8, 6)) == pytest.approx((200, 40, 40), abs=8)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    img = decode_image(data, "cmyk.jpg")
    assert img.mode == "RGB"
    assert img.getpixel((8, 8)) == pytest.approx((255, 0, 0), abs=8)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_and_without_transparency(fmt):
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    im.putpixel((3, 1), 1)
    plain = decode_image(encode(im, fmt), "p")
    assert plain.getpixel((0, 0)) == (0, 0, 0) and plain.getpixel((3, 1)) == (255, 0, 0)
    transparent = decode_image(encode(im, fmt, transparency=0), "p-transparent")
    assert transparent.mode == "RGB"
    assert transparent.getpixel((0, 0)) == (255, 255, 255)  # the transparent index, on white
    assert transparent.getpixel((3, 1)) == (255, 0, 0)


def test_damaged_exif_block_gives_no_warning():
    """A JPEG whose EXIF entry points past the block's end decodes without a Pillow warning."""
    tiff = b"II*\x00" + struct.pack("<IHHHII", 8, 1, 0x0112, 3, 10, 4000) + struct.pack("<I", 0)
    data = encode(Image.new("RGB", (16, 12), (200, 10, 10)), "JPEG", exif=b"Exif\x00\x00" + tiff)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = decode_image(data, "damaged-exif.jpg")
    assert img.size == (16, 12) and img.mode == "RGB"


def test_damaged_tiff_tag_gives_no_warning():
    """A TIFF tag whose data lies past the end of the file: Pillow skips it, warning at the header
    read and again when loading re-reads the metadata; decode_image lets neither warning out."""
    data = bytearray(encode(Image.new("RGB", (24, 16), (200, 30, 60)), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == 284:  # PlanarConfiguration: 1000 values past the end
            struct.pack_into("<II", data, at + 4, 1000, len(data) + 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = decode_image(bytes(data), "damaged-tag.tif")
    assert img.size == (24, 16) and img.mode == "RGB"


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95), "rotated.jpg")
    assert img.size == (20, 40)  # width and height swapped
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_gives_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, "anim.gif").getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(2000), "not an image"),
        (b"just some notes, not a picture\n", "text"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "corrupt"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "HEIC"),
    ],
    ids=["empty", "random", "text", "svg", "corrupt-jpeg", "heic"],
)
def test_bad_bytes_raise_decode_error_naming_file(data, reason):
    with pytest.raises(DecodeError, match=reason) as info:
        decode_image(data, "photos/bad.jpg")
    assert "photos/bad.jpg" in str(info.value)
    assert info.value.name == "photos/bad.jpg" and info.value.reason


def test_decode_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(DecodeError("a.jpg", "empty file")))
    assert (err.name, err.reason, str(err)) == ("a.jpg", "empty file", "cannot decode a.jpg: empty file")


def test_truncated_jpeg_raises(cifar_jpeg):
    with pytest.raises(DecodeError, match="truncated") as info:
        decode_image(cifar_jpeg[: len(cifar_jpeg) // 2], "half.jpg")
    assert "half.jpg" in str(info.value)


def test_truncated_png_raises():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], "half.png")


def test_concurrent_decoding_leaves_warning_filters_alone(cifar_jpeg):
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    bomb = png_header_only(10_000, 10_000)  # past Pillow's warning threshold

    def work(i):
        if i % 2:
            return decode_image(cifar_jpeg).size
        with pytest.raises(DecodeError):
            decode_image(bomb)
        return None

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(200)))
    assert results.count((32, 32)) == 100
    assert warnings.filters == before


def test_png_with_bad_checksum_raises():
    data = bytearray(encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"))
    data[30] ^= 0xFF  # inside the IHDR chunk, so its CRC no longer matches
    with pytest.raises(DecodeError):
        decode_image(bytes(data), "crc.png")


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape either
@pytest.mark.parametrize("side", [9_000, 12_000, 100_000])  # below, past and far past Pillow's own limits
def test_pixel_bomb_is_refused_from_the_header(side):
    with pytest.raises(DecodeError, match="too many pixels") as info:
        decode_image(png_header_only(side, side), "bomb.png")
    message = str(info.value)
    assert "bomb.png" in message and f"{side * side:,}" in message and f"{DEFAULT_MAX_PIXELS:,}" in message
    assert "max_pixels" in message


def test_max_pixels_is_per_call(cifar_jpeg):
    with pytest.raises(DecodeError, match=r"32x32 = 1,024, above the limit of 100"):
        decode_image(cifar_jpeg, "small.jpg", max_pixels=100)
    assert decode_image(cifar_jpeg, "small.jpg", max_pixels=1024).size == (32, 32)
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(cifar_jpeg, max_pixels=0)


def test_check_image_bytes_sniffs_formats(cifar_jpeg):
    assert check_image_bytes(cifar_jpeg) == "jpeg"
    for fmt in ("PNG", "GIF", "BMP", "WEBP", "TIFF"):
        assert check_image_bytes(encode(Image.new("RGB", (2, 2)), fmt)) == fmt.lower()
    assert sniff_format(b"%PDF-1.7") is None
    with pytest.raises(DecodeError, match="PDF"):
        check_image_bytes(b"%PDF-1.7\n...", "doc.jpg")
    with pytest.raises(DecodeError, match="empty"):
        check_image_bytes(b"", "upload")
    with pytest.raises(TypeError, match="bytes"):
        check_image_bytes("not bytes")


def _pillow_path(data: bytes, draft=None) -> np.ndarray:
    return np.asarray(decode_module._decode_with_pillow(data, "x.jpg", DEFAULT_MAX_PIXELS, draft))


def _noisy(width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize(
    "size, mode, params, draft",
    [
        ((32, 32), "RGB", {"quality": 90}, None),
        ((33, 17), "RGB", {"quality": 75, "subsampling": 0}, None),  # 4:4:4, odd sides
        ((257, 129), "RGB", {"quality": 75, "subsampling": 1}, (64, 64)),  # 4:2:2, 1/2 scale
        ((1001, 777), "RGB", {"quality": 95, "progressive": True}, (128, 128)),  # 1/4 scale
        ((1152, 864), "RGB", {"quality": 90}, (224, 224)),  # 1/2 scale (1/4 would be 216 high)
        ((640, 480), "RGB", {"quality": 80, "optimize": True}, (16, 16)),  # 1/8 scale
        ((300, 200), "L", {"quality": 90}, (100, 100)),  # grayscale becomes RGB
    ],
    ids=["cifar-size", "444-odd", "422-half", "progressive-quarter", "1mpx-half", "eighth", "gray"],
)
def test_jpeg_direct_path_gives_pillows_pixels(size, mode, params, draft):
    """Common JPEGs skip Pillow (libjpeg-turbo called directly) and must decode to exactly Pillow's pixels."""
    data = encode(_noisy(*size, mode), "JPEG", **params)
    direct = decode_module._decode_jpeg_direct(data, DEFAULT_MAX_PIXELS, draft)
    assert direct is not None, "this JPEG should take the direct path"
    assert direct.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(direct), _pillow_path(data, draft))
    np.testing.assert_array_equal(np.asarray(decode_image(data, "x.jpg", draft=draft)), np.asarray(direct))


def test_real_jpegs_take_the_direct_path_with_pillows_pixels(cifar_small):
    files = sorted((cifar_small / "test").rglob("*.jpg"))[:50]
    for f in files:
        data = f.read_bytes()
        direct = decode_module._decode_jpeg_direct(data, DEFAULT_MAX_PIXELS, (128, 128))
        assert direct is not None
        np.testing.assert_array_equal(np.asarray(direct), _pillow_path(data, (128, 128)))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _mpo(width: int = 40, height: int = 30) -> bytes:
    """A multi-picture JPEG (MPF), as many phones write: the photo, then a second picture."""
    buf = io.BytesIO()
    _noisy(width, height).save(buf, "MPO", save_all=True, append_images=[_noisy(width, height, "L").convert("RGB")])
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, direct",
    [
        (encode(_noisy(40, 30), "JPEG", exif=_exif(1)), True),  # "as stored": nothing to apply
        (encode(_noisy(40, 30), "JPEG", exif=_exif(6)), False),  # rotate: Pillow's path applies it
        (encode(_noisy(40, 30), "JPEG", exif=_exif(9)), True),  # not an orientation: Pillow ignores it too
        (encode(_noisy(40, 30), "JPEG", xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'), False),
        (
            encode(
                _noisy(40, 30), "JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<IHHHII", 8, 1, 0x0112, 3, 10, 4000)
            ),
            False,
        ),  # a damaged orientation entry
        (encode(_noisy(40, 30).convert("CMYK"), "JPEG"), False),
        (_mpo(), True),  # multi-picture: its first picture, as Pillow's path decodes
    ],
    ids=["orientation-1", "orientation-6", "orientation-9", "xmp-orientation", "damaged-exif", "cmyk", "mpo"],
)
def test_jpeg_direct_path_leaves_the_rest_to_pillow(data, direct):
    out = decode_module._decode_jpeg_direct(data, DEFAULT_MAX_PIXELS, (8, 8))
    assert (out is not None) == direct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(np.asarray(decode_image(data, "x.jpg", draft=(8, 8))), _pillow_path(data, (8, 8)))


def test_bad_jpegs_get_pillows_reasons(cifar_jpeg):
    """The direct path declines what libjpeg-turbo rejects or warns about; the reason is Pillow's path's."""
    for bad in (cifar_jpeg[: len(cifar_jpeg) // 2], cifar_jpeg[:200], b"\xff\xd8\xff\xe0" + b"\x00" * 50):
        assert decode_module._decode_jpeg_direct(bad, DEFAULT_MAX_PIXELS, None) is None
        with pytest.raises(DecodeError) as direct:
            decode_image(bad, "bad.jpg")
        with pytest.raises(DecodeError) as pillow:
            decode_module._decode_with_pillow(bad, "bad.jpg", DEFAULT_MAX_PIXELS, None)
        assert direct.value.reason == pillow.value.reason


def test_multi_picture_jpeg_decodes_in_draft_mode():
    """Phones' JPEGs with a second picture (MPF: gain maps, depth) open as Pillow's MPO; both paths
    decode their first picture at draft mode's reduced scale, as for any JPEG."""
    data = _mpo(400, 300)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO"
    assert decode_image(data, "phone.jpg", draft=(64, 64)).size == (100, 75)  # 1/4 scale
    assert decode_module._decode_with_pillow(data, "phone.jpg", DEFAULT_MAX_PIXELS, (64, 64)).size == (100, 75)
    np.testing.assert_array_equal(
        np.asarray(decode_image(data, "phone.jpg", draft=(64, 64))), _pillow_path(data, (64, 64))
    )


# -- HEIC/HEIF and AVIF (issue 18, item 5) ------------------------------------------------------


def _two_colour(size=(60, 40)) -> Image.Image:
    """Left half red, right half blue: which way it is turned shows in the pixels."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = (255, 0, 0)
    a[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("fmt, sniffed", [("HEIF", "heic"), ("AVIF", "avif")])
def test_heic_and_avif_photos_decode_upright(fmt, sniffed, cifar_jpeg):
    pytest.importorskip("pillow_heif")
    # A real photo round-trips through the format (lossy, so close, not equal).
    photo = decode_image(cifar_jpeg, "cat.jpg").resize((128, 128))
    data = encode(photo, fmt, quality=95)
    assert sniff_format(data) == sniffed and check_image_bytes(data, "IMG_0001.HEIC") == sniffed
    got = decode_image(data, f"IMG_0001.{sniffed.upper()}")
    assert got.mode == "RGB" and got.size == (128, 128)
    assert np.abs(np.asarray(got, np.int16) - np.asarray(photo, np.int16)).mean() < 6

    # EXIF orientation 6 (as a phone held upright writes): turned 90 degrees clockwise, so the
    # red left half ends on top, as every other format's (tested above for JPEG).
    turned = decode_image(encode(_two_colour(), fmt, exif=_exif(6), quality=95), "turned")
    assert turned.size == (40, 60)
    top, bottom = np.asarray(turned)[5, 20], np.asarray(turned)[-5, 20]
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


def test_heif_brands_are_sniffed():
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\0\0\0\0" + b"".join(compatible)
        return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0" * 16

    assert sniff_format(ftyp(b"heic", b"mif1", b"heic")) == "heic"
    assert sniff_format(ftyp(b"heix")) == "heic"
    assert sniff_format(ftyp(b"mif1", b"mif1", b"heic")) == "heic"  # the generic brand first (many cameras)
    assert sniff_format(ftyp(b"mif1", b"mif1", b"avif")) == "avif"
    assert sniff_format(ftyp(b"avis")) == "avif"
    assert sniff_format(ftyp(b"isom", b"mp41")) is None  # an MP4 video is not an image
    with pytest.raises(DecodeError, match="not an image"):
        check_image_bytes(ftyp(b"isom", b"mp41"), "clip.heic")


# -- max_pixels (issue 18, item 6) --------------------------------------------------------------


@pytest.fixture(scope="module")
def png_81mpx() -> bytes:
    """A real 9000 x 9000 (81 Mpx) grey PNG, as large as a medium-format camera's photo."""
    return encode(Image.new("L", (9000, 9000), 128), "PNG")


def test_the_pixel_limit_names_the_option_that_raises_it(png_81mpx):
    with pytest.raises(DecodeError) as info:
        decode_image(png_81mpx, "scan.png")
    reason = info.value.reason
    assert "9000x9000 = 81,000,000, above the limit of 64,000,000" in reason
    assert "--max-pixels 81000000" in reason and "max_pixels=81000000" in reason
    big = decode_image(png_81mpx, "scan.png", max_pixels=81_000_000)
    assert big.size == (9000, 9000) and big.getpixel((4500, 4500)) == (128, 128, 128)


@pytest.mark.filterwarnings("error")
def test_a_limit_above_pillows_own_is_honoured():
    # 225 Mpx is beyond twice Pillow's own bomb limit, which Image.open enforces before we see the
    # size: with max_pixels above it the header passes, and the missing pixel data is what fails.
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError, match="15000x15000 = 225,000,000, above the limit of 200,000,000"):
        decode_image(png_header_only(15_000, 15_000), "huge.png", max_pixels=200_000_000)
    with pytest.raises(DecodeError) as info:
        decode_image(png_header_only(15_000, 15_000), "huge.png", max_pixels=300_000_000)
    assert "too many pixels" not in info.value.reason and "truncated" in info.value.reason
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit is put back
