"""The pixel budget of MLLM prompts: how many pixels of each image reach the vision encoder.

Qwen2-VL-family processors turn every 28×28 (Qwen2.5-VL) or 32×32 (Qwen3-VL) pixels into one token, up to
their published ``max_pixels`` (12.8 M and 16.8 M pixels): a 4000×3000 SPAQ original becomes 15,301 / 11,750
image tokens. lmmiqa's default for scoring is :data:`DEFAULT_MAX_PIXELS` = 1024×1024 pixels (≤ 1,024 image
tokens on Qwen3-VL, ≤ 1,337 on Qwen2.5-VL): it leaves a KonIQ-size 1024×768 image untouched (768 / 999 tokens)
and caps the cost of camera originals at ~12× less compute and memory, close to the resolutions IQA papers
evaluate with (SPAQ: shorter side 512; Q-Align: 448²). ``"model"`` keeps the checkpoint's own limits. The
budget is a cap: a checkpoint whose own limit is lower keeps it.

Backends apply the budget natively where the processor has the knob (Qwen2-VL family: ``size={"shortest_edge":
min_pixels, "longest_edge": max_pixels}``, see :func:`lmmiqa.backends.hf_processor.set_pixel_budget`), else by
downscaling the image before the processor (:func:`fit_pixels`; the openai backend does this client-side).
"""

from __future__ import annotations

import math
from typing import Any

from lmmiqa.errors import ConfigError

__all__ = ["DEFAULT_MAX_PIXELS", "LARGE_PROMPT_IMAGE_TOKENS", "MODEL_LIMITS", "fit_pixels", "parse_pixels"]

#: Default largest width×height of an image given to an MLLM (1024×1024).
DEFAULT_MAX_PIXELS = 1024 * 1024
#: The option value that keeps the checkpoint's own limits.
MODEL_LIMITS = "model"
#: A prompt with more image tokens than this logs a one-time warning (4× the default budget on Qwen3-VL).
LARGE_PROMPT_IMAGE_TOKENS = 4096


def parse_pixels(value: Any, what: str = "max_pixels") -> int | None:
    """An option value -> pixel count, or None for the checkpoint's own limit.

    Accepts an int, a numeric string (``"1048576"``), a product (``"1024*1024"``, ``"1024x1024"``) or
    ``"model"`` / None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == MODEL_LIMITS:
            return None
        parts = text.replace("×", "*").replace("x", "*").split("*")
        try:
            nums = [int(p) for p in parts]
        except ValueError as err:
            raise ConfigError(f"{what} must be a pixel count (e.g. 1048576 or 1024*1024) or 'model', got {value!r}") from err
        value = math.prod(nums)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{what} must be a whole pixel count or 'model', got {value!r}")
    if int(value) < 1:
        raise ConfigError(f"{what} must be >= 1 pixel, got {value!r}")
    return int(value)


def check_budget(min_pixels: int | None, max_pixels: int | None) -> None:
    """Raise when ``min_pixels > max_pixels``."""
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ConfigError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")


def fit_pixels(image: Any, min_pixels: int | None = None, max_pixels: int | None = None) -> Any:
    """Resize a PIL image (aspect ratio kept, bicubic) so that width×height lies in ``[min_pixels, max_pixels]``.

    Returns the image itself when it already fits (or both bounds are None).
    """
    w, h = image.size
    area = w * h
    if max_pixels is not None and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    elif min_pixels is not None and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
        size = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
    else:
        return image
    from PIL import Image

    return image.resize(size, Image.BICUBIC)


#: Kinds of an input resize spec ``"KIND:N"``.
RESIZE_KINDS = ("shorter", "longer", "pixels")


def parse_resize(spec: str | None) -> tuple[str, int] | None:
    """``"shorter:512"`` (shorter side to 512, as the SPAQ protocol), ``"longer:1024"``, ``"pixels:N"`` (width×height
    to at most N) -> ``(kind, n)``; None stays None."""
    if spec is None:
        return None
    kind, sep, num = str(spec).partition(":")
    kind = kind.strip().lower()
    try:
        n = int(num)
    except ValueError:
        n = 0
    if not sep or kind not in RESIZE_KINDS or n < 1:
        raise ConfigError(
            f"a resize is 'KIND:N' with KIND one of {', '.join(RESIZE_KINDS)} and N >= 1 (e.g. 'shorter:512'), "
            f"got {spec!r}"
        )
    return kind, n


def apply_resize(image: Any, spec: str | None) -> Any:
    """Resize a PIL image by a :func:`parse_resize` spec (aspect ratio kept, bicubic). ``shorter``/``longer``
    set that side exactly (up or down, as the published protocols do); ``pixels`` only downscales."""
    parsed = parse_resize(spec)
    if parsed is None:
        return image
    kind, n = parsed
    if kind == "pixels":
        return fit_pixels(image, None, n)
    w, h = image.size
    side = min(w, h) if kind == "shorter" else max(w, h)
    if side == n:
        return image
    scale = n / side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    from PIL import Image

    return image.resize(size, Image.BICUBIC)
