"""Safe image decoding: bytes in, a fully loaded RGB `PIL.Image.Image` out, or a `DecodeError`.

Every image that enters hashsearch goes through `decode_image`, so that one function decides
what a readable image is: the file's format is sniffed from its first bytes, its size is read
from the header and checked against a pixel limit *before* any pixel is decoded (a 100 kB PNG
can claim 100,000 x 100,000 pixels), the EXIF orientation is applied, and every colour mode
(grayscale, 1-bit, palette, CMYK, 16-bit, with or without alpha) becomes 8-bit RGB. A file that
is empty, not an image, truncated or corrupt raises a `DecodeError` that names the file and the
reason; no Pillow exception or warning escapes.

HEIC/HEIF photos (what iPhones write) are read by the pillow-heif plugin, AVIF by Pillow itself;
both get their rotation applied like any other format.

Common JPEGs (YCbCr or grayscale, nothing to rotate) skip Pillow: libjpeg-turbo, called directly
through simplejpeg, decodes them to the same pixels as Pillow's path at a fraction of its overhead
(`_decode_jpeg_direct`); everything else, and every file that fails, goes through Pillow.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import struct
import threading
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hashsearch.validation import check_int

try:  # libjpeg-turbo called directly: the fast path for common JPEGs (see _decode_jpeg_direct)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it Pillow decodes every JPEG
    _simplejpeg = None

try:  # HEIC/HEIF (iPhone photos): a Pillow plug-in. It applies the file's rotation (irot/imir) when
    # decoding and clears the EXIF orientation, so exif_transpose does not rotate twice.
    import pillow_heif as _pillow_heif

    _pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - a dependency; without it HEIC files are refused by name
    _pillow_heif = None

#: Largest width * height decoded by default (64 megapixels, e.g. 8000 x 8000). Pass
#: `max_pixels` to `decode_image` (and to every function that decodes: `build_collection`,
#: `add_images`, `extract_features`; ``--max-pixels`` on the command line) to change it.
DEFAULT_MAX_PIXELS = 64_000_000

#: Pillow formats that `decode_image` accepts (AVIF only where this Pillow build reads it, HEIF
#: where pillow-heif is installed).
#: Pillow can read many more (EPS runs Ghostscript, for one); restricting the list keeps
#: untrusted uploads to the common, well-tested decoders. (The multi-picture JPEGs that many
#: phones write open through "JPEG", as Pillow's MPO.)
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO", "AVIF", "HEIF")


@functools.cache
def _pillow_formats() -> tuple[str, ...]:
    """The accepted formats that this Pillow build has a reader for (loading its plug-ins once)."""
    Image.init()
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


# Pillow's own bomb check runs inside Image.open and warns or raises before we see the size;
# we silence it there (our max_pixels check follows at once), with the warnings about damaged
# metadata that the header read, a TIFF's load and the EXIF rotation can give.
# warnings.catch_warnings swaps a process-wide filter list, so concurrent decoder threads take
# turns for those calls only (not for decoding the pixels of other formats).
_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_pillow_warnings(max_pixels: int | None = None):
    """Silence every warning for the Pillow calls inside (taking turns with other threads).

    With `max_pixels` above Pillow's own bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89 Mpx; it
    refuses twice that inside `Image.open`), the limit is raised to `max_pixels` for the calls
    inside, so that a caller's larger limit (``--max-pixels``) works; `decode_image` checks the
    size itself from the header before any pixel is decoded.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        limit = Image.MAX_IMAGE_PIXELS
        if max_pixels is None or limit is None or max_pixels <= limit:
            yield
            return
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


# What Pillow's decoders raise on malformed input (beyond OSError, which covers truncation).
_PILLOW_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)

_WHITE = (255, 255, 255)


class DecodeError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason.

    Attributes
    ----------
    name : str
        The file's name as given to `decode_image` (a path, an archive member, or "<bytes>").
    reason : str
        Why it failed, without the name (for reports that list the name separately).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot decode {name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):
        # Keeps the error intact across processes (worker processes and Ray actors send it back).
        return type(self), (self.name, self.reason)


#: ISO base media "ftyp" brands of HEIF images (HEVC-coded, as iPhones write) and of AVIF images.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"miaf"})


def _ftyp_brands(head: bytes) -> list[bytes]:
    """The major and compatible brands of an ISO base media file's leading "ftyp" box ([] if none)."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return []
    size = struct.unpack(">I", head[:4])[0]
    end = min(len(head), size) if size >= 16 else 12
    return [head[8:12]] + [head[i : i + 4] for i in range(16, end - 3, 4)]


def sniff_format(data: bytes) -> str | None:
    """The image format that `data` starts with ("jpeg", "png", ...), or None if unrecognised.

    Looks at the magic bytes only, so it is cheap enough to run on every upload before decoding.
    HEIF and AVIF files are told apart by their "ftyp" brands ("heic" for HEIC/HEIF, "avif").
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        return "ppm"
    brands = _ftyp_brands(bytes(data[:256]))
    if brands:
        if brands[0] in _AVIF_BRANDS:
            return "avif"
        if brands[0] in _HEIF_BRANDS:
            return "heic"
        if brands[0] in _GENERIC_BRANDS:  # an image file whose coding the compatible brands name
            if any(b in _AVIF_BRANDS for b in brands[1:]):
                return "avif"
            if any(b in _HEIF_BRANDS or b in _GENERIC_BRANDS for b in brands[1:]) or len(brands) == 1:
                return "heic"
    return None


def _describe_non_image(data: bytes) -> str:
    """A short guess at what a non-image file holds, for error messages."""
    head = bytes(data[:512])
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<"):
        return "an SVG drawing (vector images are not supported)" if b"<svg" in stripped else "HTML or XML text"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised binary data (starts with {head[:8]!r})"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        preview = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"text ({preview!r})" if preview else "blank text"
    return f"unrecognised binary data (starts with {head[:8]!r})"


def check_image_bytes(data: bytes, name: str = "<bytes>") -> str:
    """Check that `data` looks like a supported image by its magic bytes; return its format.

    Cheap (no decoding): meant for rejecting uploads early. Passing it does not mean the file
    decodes; `decode_image` is the full check.

    Raises
    ------
    DecodeError
        If `data` is empty, is not an image, or is an image format that cannot be decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError(name, f"not an image: it holds {_describe_non_image(data)}")
    if fmt == "heic" and "HEIF" not in _pillow_formats():
        raise DecodeError(
            name, "HEIC/HEIF images need the pillow-heif package: pip install pillow-heif (or convert the file to JPEG)"
        )
    if fmt == "avif" and "AVIF" not in _pillow_formats():
        raise DecodeError(
            name,
            "AVIF images need Pillow 11.2 or later built with libavif (or pillow-heif); "
            "upgrade Pillow or convert the file to JPEG",
        )
    return fmt


def decode_image(
    data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode image bytes into a fully loaded 8-bit RGB image, upright as its EXIF says.

    Parameters
    ----------
    data : bytes
        The whole file's content.
    name : str
        What to call the file in error messages (a path, an archive member, a URL).
    max_pixels : int
        Largest width * height accepted; checked from the header, before decoding pixels.
    draft : (width, height), optional
        For a JPEG, let the decoder scale down by 1/2, 1/4 or 1/8 while decoding, keeping
        both sides at least this large (Pillow's draft mode; much faster for large photos).

    Returns
    -------
    PIL.Image.Image
        Mode "RGB", loaded (no file handle kept). Grayscale, 1-bit, palette, CMYK and 16-bit
        images are converted; transparent pixels (alpha or a palette's transparent colour) are
        composited on white. For an animated or multi-page file, the first frame.

    Raises
    ------
    DecodeError
        Empty file, not an image, unsupported format, too many pixels, truncated or corrupt.

    Examples
    --------
    >>> from pathlib import Path
    >>> img = decode_image(Path("cat.jpg").read_bytes(), "cat.jpg")  # doctest: +SKIP
    >>> img.mode
    'RGB'
    """
    check_int("max_pixels", max_pixels, low=1)
    if check_image_bytes(data, name) == "jpeg":
        image = _decode_jpeg_direct(data, max_pixels, draft)
        if image is not None:
            return image
    return _decode_with_pillow(data, name, max_pixels, draft)


def _decode_with_pillow(data: bytes, name: str, max_pixels: int, draft: tuple[int, int] | None) -> Image.Image:
    """`decode_image` through Pillow: every format, every colour mode, every reason a file fails."""
    try:
        # Also the warnings of damaged metadata read with the header (a JPEG's EXIF block).
        with _no_pillow_warnings(max_pixels):
            im = Image.open(io.BytesIO(data), formats=_pillow_formats())
    except UnidentifiedImageError:
        raise DecodeError(
            name,
            f"corrupt or unsupported {sniff_format(data).upper()} data: Pillow cannot read its header",
        ) from None
    except Image.DecompressionBombError as e:
        # Pillow refuses anything beyond twice its limit (raised to max_pixels if that is larger)
        # before we see the size.
        raise DecodeError(name, _bomb_reason(e, max_pixels)) from None
    except _PILLOW_ERRORS as e:
        raise DecodeError(name, _failure("header", e)) from None

    width, height = im.size
    if width < 1 or height < 1:
        raise DecodeError(name, f"the header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(name, _too_many(f"{width}x{height} = {width * height:,}", max_pixels, width * height))

    has_data = bool(im.tile)  # WebP and ICO decode without tiles; a JPEG never does
    if draft is not None and im.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with more pictures
        im.draft(None, draft)  # decode at 1/2, 1/4 or 1/8 scale, never below `draft` (fast)
    try:
        if im.format == "TIFF" or max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
            # TIFF's load reads its metadata again ("Tag data larger than file" on a damaged
            # one), and beyond Pillow's pixel limit frame and tile checks of some plugins warn.
            with _no_pillow_warnings(max_pixels):
                im.load()
        else:
            im.load()
    except _PILLOW_ERRORS as e:
        if im.format in ("JPEG", "MPO") and not has_data:
            # The header parsed but the file ends before the start-of-scan marker.
            raise DecodeError(name, "truncated file: it ends before the image data starts") from None
        raise DecodeError(name, _failure("image data", e)) from None

    try:
        # A damaged EXIF block makes Pillow warn ("Corrupt EXIF data", "Truncated File Read").
        with _no_pillow_warnings():
            upright = ImageOps.exif_transpose(im)
    except _PILLOW_ERRORS:
        # A damaged EXIF block should not cost the image; it is used as stored.
        upright = im
    try:
        rgb = to_rgb(upright)
    except _PILLOW_ERRORS as e:
        raise DecodeError(name, f"cannot convert colour mode {upright.mode!r} to RGB ({e})") from None
    if rgb is im:
        rgb = im.copy()  # detach from the parser and its buffer
    im.close()
    return rgb


def _decode_jpeg_direct(data: bytes, max_pixels: int, draft: tuple[int, int] | None) -> Image.Image | None:
    """The common JPEG decoded by libjpeg-turbo called directly (simplejpeg), or None for Pillow.

    Pillow's JPEG path adds a fixed cost per image beyond the decoding itself (parsing the markers
    in Python, the EXIF read, copies), which for small images is as large as the decoding (see
    docs/encoding.md for the measured figure). This path takes only what
    it decodes exactly as the Pillow path would, the same libjpeg-turbo calls at the same scale
    (draft mode's 1/2, 1/4 or 1/8, chosen by Pillow's rule), so the same pixels (tested): YCbCr or
    grayscale, within both pixel limits, no orientation to apply (of a multi-picture file, the
    first picture, as Pillow's). Anything else, and any error or libjpeg warning, returns None,
    so the Pillow path decides and names the reason.
    """
    if _simplejpeg is None:
        return None
    try:
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    pixels = width * height
    if colorspace not in ("YCbCr", "Gray") or not 0 < pixels <= min(max_pixels, Image.MAX_IMAGE_PIXELS or pixels):
        return None
    if _jpeg_metadata_needs_pillow(data):
        return None
    scale = 1
    if draft is not None:
        fits = min(width // draft[0], height // draft[1])
        scale = next((s for s in (8, 4, 2) if fits >= s), 1)
    size = (-(-height // scale), -(-width // scale))
    try:
        rgb = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size[0], min_width=size[1], strict=True)
    except ValueError:
        return None
    if rgb.shape[:2] != size:  # not the scale Pillow would decode at
        return None
    return Image.fromarray(rgb, "RGB")


def _jpeg_metadata_needs_pillow(data: bytes) -> bool:
    """Whether a JPEG's markers ask for what only the Pillow path does, or cannot be followed here.

    True for: an EXIF orientation of 2-8 (Pillow reads the Exif blocks joined, the last entry
    winning), or, with none there, an XMP ``tiff:Orientation`` (Pillow reads that too); an
    orientation entry that is not one inline number; markers that do not parse. False means:
    decode as stored.
    """
    exif, xmp_orientation, i, n = b"", False, 2, len(data)
    while True:
        if i + 4 > n or data[i] != 0xFF:
            return True
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan (or end): all metadata comes before
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack_from(">H", data, i + 2)[0]
        segment = data[i + 4 : i + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return True
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            exif += segment[6:]
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            xmp_orientation = xmp_orientation or b"tiff:Orientation" in segment
        i += 2 + length
    try:
        orientation = _exif_orientation(exif) if exif else None
    except (ValueError, struct.error):
        return True
    return xmp_orientation if orientation is None else 2 <= orientation <= 8


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation in a TIFF-structured EXIF block's first directory, None if it has none.

    Raises ValueError (or struct.error) where the block does not parse or the entry is not one
    inline SHORT or LONG.
    """
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("not a TIFF header")
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    found = None
    for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, at)
        if tag == 0x0112:
            if values != 1 or kind not in (3, 4):
                raise ValueError("orientation is not one inline number")
            (found,) = struct.unpack_from(order + ("H" if kind == 3 else "I"), tiff, at + 8)
    return found


def check_pixels(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Apply `decode_image`'s pixel limit from the header alone (no pixel is decoded).

    For a file whose features are already known (the feature cache): the limit then decides
    as it does for a file that is decoded. A header that cannot be read passes (the decoder
    judged the file when its features were made).

    Raises
    ------
    DecodeError
        If width * height is above `max_pixels`, with the reason `decode_image` gives.
    """
    width = height = 0
    if _simplejpeg is not None and bytes(data[:3]) == b"\xff\xd8\xff":
        try:
            height, width, _, _ = _simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass
    if not width:
        try:
            with _no_pillow_warnings(max_pixels), Image.open(io.BytesIO(data), formats=_pillow_formats()) as im:
                width, height = im.size
        except Image.DecompressionBombError as e:
            raise DecodeError(name, _bomb_reason(e, max_pixels)) from None
        except (UnidentifiedImageError, *_PILLOW_ERRORS):
            return
    if width * height > max_pixels:
        raise DecodeError(name, _too_many(f"{width}x{height} = {width * height:,}", max_pixels, width * height))


def _bomb_reason(e: Image.DecompressionBombError, max_pixels: int) -> str:
    """The pixel-limit reason for Pillow's own refusal, with the size its message gives."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    pixels = int(found.group(1)) if found else None
    return _too_many(f"{pixels:,}" if pixels else "more than twice the limit", max_pixels, pixels)


def _too_many(size: str, max_pixels: int, pixels: int | None = None) -> str:
    """The reason for an image above the pixel limit, naming the option that raises it."""
    n = str(pixels) if pixels else "N"
    return (
        f"too many pixels: {size}, above the limit of {max_pixels:,}; if the image is trusted, raise the "
        f"limit: --max-pixels {n} on the command line, max_pixels={n} in Python"
    )


def _failure(part: str, e: BaseException) -> str:
    """The reason for a Pillow error met while reading `part` of the file."""
    detail = str(e) or type(e).__name__
    if "truncated" in detail.lower() or isinstance(e, EOFError):
        return f"truncated file: it ends before the {part} does ({detail})"
    return f"corrupt {part} ({type(e).__name__}: {detail})"


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any Pillow mode to 8-bit RGB, compositing transparency on white.

    16-bit and 32-bit grayscale are scaled to 8 bits (Pillow's own conversion clips instead,
    which turns most 16-bit images white).
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", im.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(im), mode), "L").convert("RGB")
    return im.convert("RGB")


def _gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale array to uint8."""
    if mode.startswith("I;16"):
        return (a.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        a = a.astype(np.int64)
        # Mode "I" carries no bit depth; values above 255 mean a 16-bit source (PNG, TIFF, PGM).
        if a.size and a.max() > 255:
            return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    if a.size and a.max() <= 1.0 and a.min() >= 0.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
