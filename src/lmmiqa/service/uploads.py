"""Request parsing: multipart forms and JSON bodies into uploads (name + bytes); image header sizes."""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmmiqa.service.errors import RequestError
from lmmiqa.service.schemas import api_models

#: content types accepted for an uploaded image part (the bytes are sniffed by Pillow either way)
_OK_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """One image as received: a display name (or None) and its bytes."""

    name: str | None
    data: bytes


def header_pixels(data: bytes) -> int | None:
    """width*height from the image header (no decoding), or None when the header cannot be read (the full
    decode then reports why, including Pillow's own decompression-bomb refusal)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width) * int(im.height)
    except Exception:
        return None


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
                        f"part {key!r} ({value.filename or 'unnamed'}) has content type {ctype!r}; expected an "
                        "image (image/*) or application/octet-stream",
                    )
                data = await value.read()
                uploads.append(Upload(name=_clean_name(value.filename), data=data))
            elif key == "method":
                method = value
            elif key == "options":
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError as err:
                    raise RequestError(400, f"the 'options' field is not valid JSON ({err})") from err
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
