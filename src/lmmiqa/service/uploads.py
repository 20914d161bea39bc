"""Request parsing: multipart forms and JSON bodies into uploads (name + bytes); image headers, and decoding
straight to the size the model will see (JPEG ``draft``, integer ``reduce`` for other formats)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmmiqa.errors import ImageLoadError
from lmmiqa.images import ImageLimits, open_image_bytes, to_rgb
from lmmiqa.service.errors import RequestError, clip
from lmmiqa.service.schemas import api_models

#: deepest nesting (objects and arrays) accepted in a JSON body or in the multipart ``options`` field
MAX_JSON_DEPTH = 32

#: content types accepted for an uploaded image part (the bytes are sniffed by Pillow either way)
_OK_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """One image as received: a display name (or None) and its bytes."""

    name: str | None
    data: bytes


@dataclass(frozen=True)
class Header:
    """What an image's header says (read without decoding: Pillow opens lazily)."""

    width: int
    height: int
    format: str | None

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> Header | None:
    """The image's size and format from its header, or None when the header cannot be read (the full decode
    then reports why, including Pillow's own decompression-bomb refusal)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return Header(int(im.width), int(im.height), im.format)
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


def decode_upload(data: bytes, what: str, limits: ImageLimits, target: int | None) -> Any:
    """Decode image bytes to 8-bit RGB, straight to :func:`planned_size` (never below ``target`` pixels).

    A JPEG is decoded at a reduced DCT scale (``Image.draft``: memory and time shrink with it) and then
    box-resampled to the planned size; other formats are decoded and reduced by an integer factor at once
    (``Image.reduce``: box average), so at most one full-resolution image per decode thread is in memory.
    Without a target (or for an image under 4× the target) this is :func:`lmmiqa.images.open_image_bytes`.

    Raises:
        ImageLoadError: as :func:`lmmiqa.images.open_image_bytes` (empty, too large, corrupt, truncated).
    """
    header = read_header(data)
    if header is None or reduction_factor(header.pixels, target) == 1:
        return open_image_bytes(data, what, limits)
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"{what}: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    if header.pixels > limits.max_pixels:
        raise ImageLoadError(
            f"{what}: {header.width}×{header.height} = {header.pixels} pixels exceeds the limit of {limits.max_pixels}"
        )
    from PIL import Image

    size = planned_size(header.width, header.height, target)
    f = reduction_factor(header.pixels, target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            transpose = _EXIF_TRANSPOSE.get(img.getexif().get(0x0112, 1))  # read before resampling drops it
            if img.format == "JPEG":
                img.draft("RGB", (max(1, header.width // f), max(1, header.height // f)))
                img.load()
                if img.size != size:
                    img = to_rgb(img).resize(size, Image.Resampling.BOX)
            else:
                img.load()
                try:
                    img = img.reduce(f)
                except ValueError:  # a mode reduce() does not take (palette, 1-bit, 16-bit): convert first
                    img = to_rgb(img).reduce(f)
            img = to_rgb(img)
            return img.transpose(transpose) if transpose is not None else img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{what}: rejected as a decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{what}: corrupt or truncated image ({err})") from err


def parse_json(raw: bytes | str, what: str) -> Any:
    """Parse client JSON, refusing deep nesting (400) instead of failing with a RecursionError.

    Raises:
        RequestError: 400 when ``raw`` is not JSON or is nested deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(raw)
    except RecursionError as err:
        raise RequestError(400, f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"{what} is not valid JSON ({err})") from err
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
    """(method, options, uploads) of a JSON request body validated by :class:`ScoreJSONRequest`."""
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


def _b64_image(text: str, index: int) -> bytes:
    s = text.strip()
    if s.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise RequestError(
            400,
            f"image {index + 1}: the server does not fetch URLs; send the image bytes (multipart upload) or "
            "base64 in JSON",
        )
    if s.startswith("data:"):
        header, sep, s = s.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(400, f"image {index + 1}: a data: URL must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"image {index + 1}: not valid base64 ({err})") from err


async def multipart_uploads(request: Any, max_images: int) -> tuple[str | None, dict[str, Any], list[Upload]]:
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
