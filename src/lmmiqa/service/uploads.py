"""Request parsing: multipart forms and JSON bodies into uploads (name + bytes); image headers, what decoding
an image costs in memory, and decoding straight to the size the model will see (JPEG ``draft``, integer
``reduce`` in tiles for every other format and mode).

JSON bodies are parsed by :func:`json_request` in a worker thread, without building the whole document: the
``images`` array is read one entry at a time (each base64-decoded at once, the count checked as it goes), and
the other fields are small and bounded (:data:`MAX_OPTIONS_CHARS`).
"""

from __future__ import annotations

import binascii
import io
import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmmiqa.cancel import check_cancelled
from lmmiqa.errors import ImageLoadError
from lmmiqa.images import (
    HIGH_DEPTH_MODES,
    STRIP_PIXELS,
    ImageLimits,
    high_depth_peak,
    high_depth_to_rgb,
    open_image_bytes,
    to_rgb,
)
from lmmiqa.service.errors import RequestError, clip
from lmmiqa.service.schemas import api_models

#: deepest nesting (objects and arrays) accepted in a JSON body or in the multipart ``options`` field
MAX_JSON_DEPTH = 32

#: longest ``options`` value (JSON text, in characters) of a request besides its string options: options are a
#: few short fields (see :func:`options_limit`)
MAX_OPTIONS_CHARS = 64 * 1024


def options_limit(max_query_chars: int) -> int:
    """Longest ``options`` JSON text of a request: :data:`MAX_OPTIONS_CHARS` plus room for a query of
    ``max_query_chars`` characters written with JSON escapes (6 characters each at most)."""
    return MAX_OPTIONS_CHARS + 6 * max_query_chars


def _options_too_long(limit: int) -> RequestError:
    return RequestError(
        413, f"the 'options' field is longer than {limit} characters: options are a few short fields (the limit "
        "grows with --max-query-chars)",
    )

#: content types accepted for an uploaded image part (the bytes are sniffed by Pillow either way)
_OK_PART_TYPES = ("image/", "application/octet-stream")

#: image formats the service decodes (Pillow's names; PPM covers PBM/PGM/PPM/PNM, MPO is a camera JPEG); any
#: other file is refused before a decoder runs
SERVICE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")

#: bytes per pixel of a decoded image as Pillow stores it, by mode (every other mode: 4)
_NATIVE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}

#: bytes per pixel of an 8-bit RGB image as Pillow stores it (RGBX)
RGB_BYTES = 4

#: working memory of converting one tile (:data:`lmmiqa.images.STRIP_PIXELS` pixels): its crop, float64
#: copies of a 16-bit tile, the RGB result (measured ~42 bytes per pixel; 64 counted, for the allocator)
TILE_BYTES = 64 * STRIP_PIXELS


@dataclass(frozen=True)
class Upload:
    """One image as received: a display name (or None) and its bytes."""

    name: str | None
    data: bytes | bytearray


@dataclass(frozen=True)
class Header:
    """What an image's header says (read without decoding: Pillow opens lazily)."""

    width: int
    height: int
    format: str | None
    mode: str | None = None
    #: a progressive JPEG (libjpeg keeps every DCT coefficient of the full image while decoding it)
    progressive: bool = False
    #: components (bands) of the decoded image
    layers: int = 3
    #: TIFF: bits per pixel as stored (a strip is read whole into a buffer before it is unpacked)
    stored_bits: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _pil_formats(formats: tuple[str, ...] | None) -> list[str] | None:
    """``formats`` as Pillow's ``Image.open`` takes them (its plugins registered first), or None for any."""
    if not formats:
        return None
    from PIL import Image

    Image.init()
    return [f for f in formats if f in Image.OPEN]


def webp_header(data: bytes) -> Header | None:
    """A WebP's size from its first 30 bytes (None: not a WebP, or a header Pillow would not read).

    Pillow's WebP plugin creates libwebp's decoder, which allocates the whole canvas, as soon as it opens the
    file: reading the size here costs nothing. Every WebP decodes to RGB(A): the mode says which.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    le = int.from_bytes
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h, mode = le(data[26:28], "little") & 0x3FFF, le(data[28:30], "little") & 0x3FFF, "RGB"
    elif chunk == b"VP8X":
        w, h = le(data[24:27], "little") + 1, le(data[27:30], "little") + 1
        mode = "RGBA" if data[20] & 0x10 else "RGB"
    elif chunk == b"VP8L" and data[20] == 0x2F:
        bits = le(data[21:25], "little")
        w, h, mode = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, "RGBA" if bits >> 28 & 1 else "RGB"
    else:
        return None
    return Header(w, h, "WEBP", mode, layers=len(mode)) if w and h else None


def read_header(data: bytes, formats: tuple[str, ...] | None = SERVICE_FORMATS) -> Header | None:
    """The image's size, format and mode from its header, or None when the header cannot be read or the
    format is not one of ``formats`` (None: any format Pillow knows). Nothing is decoded or allocated for the
    pixels (a WebP is read by :func:`webp_header`)."""
    from PIL import Image

    if data[:4] == b"RIFF" and (formats is None or "WEBP" in formats):
        webp = webp_header(data)
        if webp is not None or data[8:12] == b"WEBP":
            return webp
    try:
        with Image.open(io.BytesIO(data), formats=_pil_formats(formats)) as im:
            stored = 0
            if im.format == "TIFF":  # BitsPerSample (one value, or one per sample) × SamplesPerPixel
                bits = im.tag_v2.get(258, 8)
                per_sample = max(bits) if isinstance(bits, tuple) else int(bits)
                stored = int(per_sample) * int(im.tag_v2.get(277, 1))
            return Header(
                int(im.width), int(im.height), im.format, im.mode,
                progressive=bool(im.info.get("progressive") or im.info.get("progression")),
                layers=int(getattr(im, "layers", None) or len(im.getbands())),
                stored_bits=stored,
            )
    except Exception:
        return None


def reduction_factor(pixels: int, target: int | None) -> int:
    """The largest integer factor f that keeps a ``pixels``-pixel image at or above ``target`` pixels after
    dividing both sides by f (1: decode at full resolution)."""
    if not target or pixels <= 0:
        return 1
    return max(1, math.isqrt(pixels // target))


def planned_size(width: int, height: int, target: int | None) -> tuple[int, int]:
    """The size :func:`decode_upload` decodes a ``width`` × ``height`` image to for ``target`` pixels."""
    f = reduction_factor(width * height, target)
    return -(-width // f), -(-height // f)


def _draft_scale(f: int) -> int:
    """The JPEG DCT scale denominator ``draft`` picks for a reduction by ``f`` (1, 2, 4 or 8)."""
    s = 1
    while s * 2 <= min(f, 8):
        s *= 2
    return s


@dataclass(frozen=True)
class DecodeCost:
    """Memory (bytes) that decoding one image takes: ``transient`` while it is decoded (freed when its decode
    ends), ``output`` for the decoded RGB image kept until the request is answered."""

    transient: int
    output: int


def decode_cost(header: Header, target: int | None) -> DecodeCost:
    """What :func:`decode_upload` allocates for an image with ``header`` decoded for ``target`` pixels.

    Every format but JPEG is decoded whole at its native depth before it is reduced (Pillow has no reduced
    decoding for them): ``native`` bytes per pixel by mode (1 for grey and palette, 2 for 16-bit grey, 4 for
    the rest); TIFF adds one stored strip (as if the whole image were one strip); WebP costs 16 bytes per pixel
    (libwebp's canvas and frame, the frame's copy and the image: measured); a JPEG is decoded at the DCT scale
    ``draft`` picks, plus, when progressive, 2 bytes per coefficient of the full image. The conversion runs in
    tiles (:data:`TILE_BYTES`, less for an image smaller than a tile). ``output`` is the RGB image at the planned size (4 bytes per pixel, as Pillow
    stores RGB). Measured against these estimates in ``tests/service/test_decode_memory.py``.
    """
    w, h = header.width, header.height
    px = w * h
    f = reduction_factor(px, target)
    ow, oh = planned_size(w, h, target)
    output = ow * oh * RGB_BYTES
    native = _NATIVE_BYTES.get(header.mode or "", 4)
    fmt = header.format
    if fmt in ("JPEG", "MPO"):
        s = _draft_scale(f)
        decoded = -(-w // s) * -(-h // s) * 4 * 2  # the draft-size image and its RGB conversion
        if header.progressive:
            decoded += 2 * max(1, header.layers) * px
    elif fmt == "WEBP":
        decoded = 16 * px
    elif fmt == "TIFF":
        decoded = native * px + -(-header.stored_bits * px // 8)
    elif fmt == "GIF":
        decoded = 5 * px  # the palette frame and, for some files, its RGBA composite
    else:
        decoded = native * px
    # full resolution: the EXIF-transposed copy at native depth; reduced: the transposed reduced copy
    extra = native * px if f == 1 else output
    tiles = TILE_BYTES * min(px, STRIP_PIXELS) // STRIP_PIXELS
    return DecodeCost(transient=decoded + extra + tiles, output=output)


def _exif_transposes() -> dict[int, Any]:
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}


class _LazyTransposes(dict):  # type: ignore[type-arg]
    """EXIF orientation -> PIL transpose (as :func:`PIL.ImageOps.exif_transpose`), built on first use."""

    def get(self, key: Any, default: Any = None) -> Any:
        if not self:
            self.update(_exif_transposes())
        return super().get(key, default)


_EXIF_TRANSPOSE = _LazyTransposes()


class _CancellableBytes(io.BytesIO):
    """Image bytes whose reads stop the decoder when the request was given up (:func:`check_cancelled`)."""

    def read(self, size: int | None = -1) -> bytes:
        check_cancelled()
        return super().read(size)


def reduce_to_rgb(img: Any, factor: int) -> Any:
    """A decoded image of any mode as 8-bit RGB reduced by the integer ``factor`` (box average), converted tile by
    tile: the same pixels as ``to_rgb(img).reduce(factor)`` with no full-resolution copy."""
    from PIL import Image

    if img.mode == "RGB":
        return img.reduce(factor)
    if img.mode == "L":
        return img.reduce(factor).convert("RGB")
    if img.mode in HIGH_DEPTH_MODES:
        peak = high_depth_peak(img)

        def convert(tile: Any) -> Any:
            return high_depth_to_rgb(tile, peak)
    else:
        convert = to_rgb
    w, h = img.size
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    side = factor * max(1, math.isqrt(STRIP_PIXELS) // factor)  # a multiple of factor: blocks never straddle tiles
    for y in range(0, h, side):
        check_cancelled()
        for x in range(0, w, side):
            tile = img.crop((x, y, min(w, x + side), min(h, y + side)))
            out.paste(convert(tile).reduce(factor), (x // factor, y // factor))
    return out


def decode_upload(data: bytes, what: str, limits: ImageLimits, target: int | None,
                  formats: tuple[str, ...] | None = SERVICE_FORMATS) -> Any:
    """Decode image bytes to 8-bit RGB, straight to :func:`planned_size` (never below ``target`` pixels).

    A JPEG is decoded at a reduced DCT scale (``Image.draft``: memory and time shrink with it) and then
    box-resampled to the planned size; every other format is decoded at its native depth and reduced by an
    integer factor in tiles (:func:`reduce_to_rgb`), whatever its mode (16-bit grey, palette with
    transparency, ...), so the only full-resolution buffer is the decoder's own (:func:`decode_cost`). Without a
    target (or for an image under 4× the target) the pixels are those of
    :func:`lmmiqa.images.open_image_bytes`. Only ``formats`` are decoded. Stops with
    :class:`~lmmiqa.errors.Cancelled` when the caller gives up (:mod:`lmmiqa.cancel`).

    Raises:
        ImageLoadError: empty, too large, not an image in an accepted format, corrupt, truncated.
    """
    if len(data) == 0:
        raise ImageLoadError(f"{what}: empty file")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"{what}: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    header = read_header(data, formats)
    if header is None:
        if formats and read_header(data, None) is not None:
            raise ImageLoadError(f"{what}: image format not accepted here (accepted: {', '.join(formats)})")
        return open_image_bytes(data, what, limits)  # reports why it cannot be read
    if header.pixels > limits.max_pixels:
        raise ImageLoadError(
            f"{what}: {header.width}×{header.height} = {header.pixels} pixels exceeds the limit of {limits.max_pixels}"
        )
    from PIL import Image, ImageOps

    f = reduction_factor(header.pixels, target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(_CancellableBytes(data), formats=_pil_formats(formats))
            if f == 1:  # exactly as lmmiqa.images.open_image_bytes
                img.load()
                check_cancelled()
                return to_rgb(ImageOps.exif_transpose(img))
            transpose = _EXIF_TRANSPOSE.get(img.getexif().get(0x0112, 1))  # read before resampling drops it
            size = planned_size(header.width, header.height, target)
            if img.format in ("JPEG", "MPO"):
                img.draft("RGB", (max(1, header.width // f), max(1, header.height // f)))
                img.load()
                img = to_rgb(img)
                if img.size != size:
                    img = img.resize(size, Image.Resampling.BOX)
            else:
                img.load()
                check_cancelled()
                img = reduce_to_rgb(img, f)
            return img.transpose(transpose) if transpose is not None else img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{what}: rejected as a decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{what}: corrupt or truncated image ({err})") from err


def parse_json(raw: bytes | str, what: str) -> Any:
    """Parse client JSON, refusing deep nesting (400) instead of failing with a RecursionError.

    Raises:
        RequestError: 400 when ``raw`` is not JSON (or holds a number too long to convert), or is nested deeper
            than :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(raw)
    except RecursionError as err:
        raise RequestError(400, f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"{what} is not valid JSON ({err})") from err
    except ValueError as err:  # an integer of more than 4300 digits (int_max_str_digits)
        raise RequestError(400, f"{what} holds a number too long to read (more than 4300 digits)") from err
    if json_depth(value) > MAX_JSON_DEPTH:
        raise RequestError(400, f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of objects and arrays in a parsed JSON value (iterative: no recursion limit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def json_uploads(body: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], list[Upload]]:
    """(method, options, uploads) of an already parsed JSON request body validated by :class:`ScoreJSONRequest`
    (the Python API's path; the server reads bodies with :func:`json_request`)."""
    import pydantic

    try:
        req = api_models()["ScoreJSONRequest"].model_validate(body)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
        raise RequestError(422, f"invalid JSON request: {problems}") from err
    uploads = []
    for i, img in enumerate(req.images):
        data, name = (img, None) if isinstance(img, str) else (img.data, img.name)
        uploads.append(Upload(name=name, data=_b64_image(data, i)))
    return req.method, dict(req.options), uploads


def _b64_image(text: str, index: int) -> bytes | bytearray:
    s = text.strip()
    head = s[:16].lower()
    if head.startswith(("http://", "https://", "ftp://", "file:")):
        raise RequestError(
            400,
            f"image {index + 1}: the server does not fetch URLs; send the image bytes (multipart upload) or "
            "base64 in JSON",
        )
    start = 0
    if head.startswith("data:"):
        comma = s.find(",", 0, 256)
        if comma < 0 or ";base64" not in s[:comma]:
            raise RequestError(400, f"image {index + 1}: a data: URL must be base64-encoded (data:image/...;base64,...)")
        start = comma + 1
    try:
        return _b64decode(s, start)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"image {index + 1}: not valid base64 ({err})") from err


#: characters of base64 text decoded at a time by :func:`_b64decode` (a multiple of 4)
_B64_STEP = 1024 * 1024


def _b64decode(text: str, start: int = 0) -> bytes | bytearray:
    """Strict base64 of ``text[start:]`` without copying the text: whole when it starts at 0 (``binascii`` reads
    an ASCII string in place; ``base64.b64decode`` would make a bytes copy), else in steps of ``_B64_STEP``."""
    if start == 0:
        return binascii.a2b_base64(text, strict_mode=True)
    out = bytearray((len(text) - start) // 4 * 3 + 3)
    n = 0
    for i in range(start, len(text), _B64_STEP):
        part = binascii.a2b_base64(text[i : i + _B64_STEP], strict_mode=True)
        out[n : n + len(part)] = part
        n += len(part)
    del out[n:]
    return out


# ----------------------------------------------------------------------------------------------- JSON bodies

_WS = re.compile(r"[ \t\n\r]*")
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
#: the fields of a JSON request (``ScoreJSONRequest``) and of one ``{data, name}`` image
_REQUEST_FIELDS = ("images", "method", "options")
_IMAGE_FIELDS = ("data", "name")


class _Reader:
    """A cursor over the text of a JSON body: just enough grammar for :func:`json_request`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def ws(self) -> str:
        """Skip whitespace; the next character ('' at the end)."""
        self.i = _WS.match(self.text, self.i).end()  # type: ignore[union-attr]
        return self.text[self.i : self.i + 1]

    def fail(self, expected: str) -> RequestError:
        found = self.text[self.i : self.i + 12]
        return RequestError(
            400, f"the body is not valid JSON: expected {expected} at character {self.i}, found {clip(found or 'the end')}"
        )

    def take(self, char: str) -> None:
        if self.ws() != char:
            raise self.fail(repr(char))
        self.i += 1

    def string(self) -> str:
        if self.ws() != '"':
            raise self.fail("a string")
        try:
            value, self.i = _scanstring(self.text, self.i + 1, True)
        except ValueError as err:  # JSONDecodeError: unterminated string, bad escape, control character
            raise RequestError(400, f"the body is not valid JSON ({err})") from err
        return value  # type: ignore[no-any-return]

    def string_field(self, what: str) -> str:
        """A string value (422 naming the field when the value is of another type)."""
        if self.ws() != '"':
            raise RequestError(422, f"invalid JSON request: {what}: must be a string")
        return self.string()

    def null(self) -> bool:
        if self.ws() == "n" and self.text.startswith("null", self.i):
            self.i += 4
            return True
        return False

    def members(self) -> Any:
        """Iterate over the keys of an object (the cursor is then at each value); ends after its '}'."""
        self.take("{")
        if self.ws() == "}":
            self.i += 1
            return
        while True:
            key = self.string()
            self.take(":")
            yield key
            c = self.ws()
            self.i += 1
            if c == "}":
                return
            if c != ",":
                self.i -= 1
                raise self.fail("',' or '}'")

    def bounded_value(self, limit: int, what: str) -> Any:
        """Parse the JSON value at the cursor, refusing one longer than ``limit`` characters before parsing it
        (its extent is found by matching brackets in the first ``limit`` characters)."""
        self.ws()
        start = self.i
        window = self.text[start : start + limit + 1]
        if window[:1] in ("{", "["):
            depth, end = 0, None
            for m in _TOKENS.finditer(window):
                t = m.group()
                if t in ("{", "["):
                    depth += 1
                elif t in ("}", "]"):
                    depth -= 1
                    if depth == 0:
                        end = m.end()
                        break
            if end is None:
                if len(self.text) - start > limit:
                    raise _options_too_long(limit)
                raise self.fail(f"the end of {what}")
            window = window[:end]
        try:
            value, end = json.JSONDecoder().raw_decode(window)
        except RecursionError as err:
            raise RequestError(400, f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from err
        except json.JSONDecodeError as err:
            raise RequestError(400, f"{what} is not valid JSON ({err})") from err
        except ValueError as err:  # an integer of more than 4300 digits (int_max_str_digits)
            raise RequestError(400, f"{what} holds a number too long to read (more than 4300 digits)") from err
        self.i = start + end
        if json_depth(value) > MAX_JSON_DEPTH:
            raise RequestError(400, f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
        return value


def json_request(buf: bytearray, max_images: int, max_options: int = MAX_OPTIONS_CHARS
                 ) -> tuple[str | None, dict[str, Any], list[Upload]]:
    """(method, options, uploads) of a JSON request body (``ScoreJSONRequest``), read without building the
    document: each ``images`` entry is base64-decoded as soon as it is read, and a body with more than
    ``max_images`` entries is refused at the first one over. ``buf`` is emptied (its memory freed) once it is
    decoded to text; the peak is the text, one entry's string and the decoded images so far (at most ~3.75×
    the body). Runs in a worker thread.

    Raises:
        RequestError: 400 (not JSON, not UTF-8, bad base64, a URL), 413 (more than ``max_images`` images, options
            longer than ``max_options`` characters), 422 (not the request's shape).
    """
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not valid JSON (not UTF-8: {err})") from err
    finally:
        buf.clear()
    r = _Reader(text.lstrip("\ufeff"))
    del text
    if r.ws() != "{":
        raise RequestError(422, "the JSON body must be an object with 'images' (and optionally 'method', 'options')")
    method: str | None = None
    options: dict[str, Any] = {}
    uploads: list[Upload] | None = None
    seen: set[str] = set()
    for key in r.members():
        if key in seen:
            raise RequestError(422, f"invalid JSON request: field {clip(key)} given twice")
        seen.add(key)
        if key == "images":
            uploads = _json_images(r, max_images)
        elif key == "method":
            method = None if r.null() else r.string_field("method")
        elif key == "options":
            value = r.bounded_value(max_options, "the 'options' field")
            if not isinstance(value, dict):
                raise RequestError(422, "invalid JSON request: options: must be a JSON object")
            options = value
        else:
            raise RequestError(
                422, f"invalid JSON request: unknown field {clip(key)} (fields: {', '.join(_REQUEST_FIELDS)})"
            )
    if r.ws():
        raise r.fail("the end of the body")
    if uploads is None:
        raise RequestError(422, "invalid JSON request: images: Field required")
    return method, options, uploads


def _json_images(r: _Reader, max_images: int) -> list[Upload]:
    uploads: list[Upload] = []
    r.take("[")
    if r.ws() == "]":
        r.i += 1
        return uploads
    while True:
        index = len(uploads)
        if index >= max_images:
            raise RequestError(413, f"more than {max_images} images in one request exceeds the limit")
        c = r.ws()
        if c == '"':
            uploads.append(Upload(name=None, data=_b64_image(r.string(), index)))
        elif c == "{":
            data: str | None = None
            name: str | None = None
            fields: set[str] = set()
            for key in r.members():
                if key in fields or key not in _IMAGE_FIELDS:
                    what = "given twice" if key in fields else f"unknown (fields: {', '.join(_IMAGE_FIELDS)})"
                    raise RequestError(422, f"invalid JSON request: images.{index}.{clip(key)}: {what}")
                fields.add(key)
                if key == "data":
                    data = r.string_field(f"images.{index}.data")
                elif not r.null():
                    name = r.string_field(f"images.{index}.name")
                    if len(name) > 255:
                        raise RequestError(422, f"invalid JSON request: images.{index}.name: longer than 255 characters")
            if data is None:
                raise RequestError(422, f"invalid JSON request: images.{index}.data: Field required")
            uploads.append(Upload(name=name, data=_b64_image(data, index)))
            del data
        else:
            raise RequestError(
                422, f"invalid JSON request: images.{index}: must be a base64 string or an object {{data, name}}"
            )
        c = r.ws()
        r.i += 1
        if c == "]":
            return uploads
        if c != ",":
            r.i -= 1
            raise r.fail("',' or ']'")


async def multipart_uploads(request: Any, max_images: int, max_options: int = MAX_OPTIONS_CHARS
                            ) -> tuple[str | None, dict[str, Any], list[Upload]]:
    """(method, options, uploads) of a multipart form: file parts are images, ``method``/``options`` fields."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=max_images, max_fields=100)
    except (MultiPartException, HTTPException) as err:
        detail = str(getattr(err, "detail", None) or getattr(err, "message", None) or err)
        if "Too many files" in detail:
            raise RequestError(413, f"more than {max_images} images in one request exceeds the limit") from err
        raise RequestError(400, f"malformed multipart body: {detail}") from err
    method: str | None = None
    options: dict[str, Any] = {}
    uploads: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                ctype = (value.content_type or "").split(";")[0].strip().lower()
                if ctype and not ctype.startswith(_OK_PART_TYPES):
                    raise RequestError(
                        415,
                        f"part {clip(key)} ({clip(value.filename or 'unnamed')}) has content type {clip(ctype)}; "
                        "expected an image (image/*) or application/octet-stream",
                    )
                data = await value.read()
                uploads.append(Upload(name=_clean_name(value.filename), data=data))
            elif key == "method":
                method = value
            elif key == "options":
                if len(value) > max_options:
                    raise _options_too_long(max_options)
                parsed = parse_json(value, "the 'options' field")
                if not isinstance(parsed, dict):
                    raise RequestError(422, "the 'options' field must be a JSON object")
                options.update(parsed)
            elif key in ("image", "images", "file", "files"):
                raise RequestError(400, f"field {key!r} must be a file upload (curl: -F {key}=@photo.jpg)")
            else:
                options[key] = value
    finally:
        await form.close()
    return method, options, uploads


def _clean_name(name: str | None) -> str | None:
    if not name:
        return None
    return name.replace("\\", "/").rsplit("/", 1)[-1][:255] or None
