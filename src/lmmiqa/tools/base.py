"""The tool contract: a classical (or adapted) quality measure an agent or a user can run on one image.

A :class:`Tool` has a ``name``, a ``kind`` (``"nr"``: no-reference, ``"fr"``: full-reference), a direction
(``higher_is_better``), a ``typical_range``, a ``description`` of what it is good at (the text an agent shows the
VLM), and a map of its raw value to the 1–5 scale (:mod:`lmmiqa.tools.maps`). ``compute(image, ref=None)``
returns the raw value; :meth:`Tool.run` never raises for a bad input and returns a :class:`ToolResult` with
``error`` set instead. Images are opened through :mod:`lmmiqa.images` (paths, bytes, PIL images, arrays) and
handed to the tool as 8-bit RGB arrays.

Tools are thread-safe: they keep no per-call state, parameter files are loaded once behind a lock, and all the
math is in pure functions, so an agent may run several tools (or one tool on several images) concurrently.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lmmiqa.config import build_config, config_to_dict
from lmmiqa.errors import ConfigError, LmmiqaError
from lmmiqa.tools._matlab import rgb2gray, rgb2y

NR = "nr"
FR = "fr"
KINDS = (NR, FR)


class ToolError(LmmiqaError, ValueError):
    """A tool cannot measure this input (missing or mismatched reference, image too small, flat image...)."""


@dataclass
class ToolConfig:
    """Options every tool accepts.

    Attributes:
        max_pixels: largest width×height accepted when opening an image (decompression-bomb guard).
        max_bytes: largest image file accepted.
    """

    max_pixels: int = 64_000_000
    max_bytes: int = 100 * 1024 * 1024

    def __post_init__(self) -> None:
        if int(self.max_pixels) <= 0 or int(self.max_bytes) <= 0:
            raise ConfigError("max_pixels and max_bytes must be positive")


@dataclass
class AssetToolConfig(ToolConfig):
    """Options of tools that need a parameter file.

    Attributes:
        assets: folder holding your own parameter files (else ``$LMMIQA_ASSETS``, else the official files
            shipped with lmmiqa; see :mod:`lmmiqa.tools.assets`).
    """

    assets: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """One tool measurement of one image.

    Attributes:
        tool: the tool name.
        image: the path as given, or ``<memory:i>`` for in-memory inputs.
        raw: the tool's own value (``None`` on error); PSNR of identical images is ``inf``.
        normalized: ``raw`` mapped to 1–5 (5 = best) by the tool's map, or ``None`` (error, or no map).
        error: ``None`` on success, else why the tool could not measure this input.
        details: tool-specific extras (JSON-safe), plus ``map`` (the source of the map used).
        seconds: time spent measuring (image decoding included).
    """

    tool: str
    image: str
    raw: float | None
    normalized: float | None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.raw is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (``inf``/``nan`` become ``null``; ``details.raw_text`` keeps ``"inf"``)."""
        from lmmiqa.types import json_safe

        return {
            "tool": self.tool,
            "image": self.image,
            "raw": json_safe(self.raw),
            "normalized": json_safe(self.normalized),
            "error": self.error,
            "details": json_safe(self.details),
            "seconds": json_safe(self.seconds),
        }


@dataclass(frozen=True)
class ToolInfo:
    """What a tool is, for listings and for an agent's prompt."""

    name: str
    kind: str
    higher_is_better: bool
    typical_range: tuple[float, float] | None
    description: str
    bounds: tuple[float, float] | None = None
    map_source: str | None = None
    citation: str = ""

    def to_dict(self) -> dict[str, Any]:
        from lmmiqa.types import json_safe

        return json_safe(dataclasses.asdict(self))

    def text(self) -> str:
        """One line for a VLM prompt: name, kind, direction, typical range, what it is good at."""
        kind = "full-reference" if self.kind == FR else "no-reference"
        direction = "higher is better" if self.higher_is_better else "lower is better"
        rng = f", typically {self.typical_range[0]:g}–{self.typical_range[1]:g}" if self.typical_range else ""
        return f"{self.name} ({kind}, {direction}{rng}): {self.description}"


class Tool(ABC):
    """Base class of every tool. Subclasses set the class attributes and implement :meth:`_measure`."""

    name: str = "base"
    kind: str = NR
    higher_is_better: bool = True
    typical_range: tuple[float, float] | None = None
    bounds: tuple[float, float] | None = None
    description: str = ""
    citation: str = ""
    config_cls: ClassVar[type] = ToolConfig

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    @classmethod
    def from_options(cls, **options: Any) -> Tool:
        """Build the tool from keyword options (fields of ``config_cls``); ``None`` values are ignored."""
        cfg = build_config(cls.config_cls, {k: v for k, v in options.items() if v is not None}, what=f"tool {cls.name!r}")
        return cls(cfg)

    @classmethod
    def option_names(cls) -> list[str]:
        """The options this tool accepts."""
        return [f.name for f in dataclasses.fields(cls.config_cls)]

    # -- maps ---------------------------------------------------------------------------------------------
    @property
    def default_map(self) -> Any:
        """The map shipped with lmmiqa (:class:`~lmmiqa.tools.maps.ToolMap`), or ``None``."""
        from lmmiqa.tools.maps import default_map

        return default_map(self.name)

    @property
    def map(self) -> Any:
        """The map in use: the user's refitted one (``lmmiqa tools fit``) when present, else the default."""
        from lmmiqa.tools.maps import active_map

        return active_map(self.name)

    def normalize(self, raw: float) -> float | None:
        """``raw`` mapped to 1–5 by :attr:`map`, or ``None`` when the tool has no map."""
        m = self.map
        return None if m is None else m.apply(raw)

    def info(self) -> ToolInfo:
        m = self.map
        return ToolInfo(
            self.name, self.kind, self.higher_is_better, self.typical_range, self.description, self.bounds,
            m.source if m is not None else None, self.citation,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-safe description (info plus config) for run configs and traces."""
        return {**self.info().to_dict(), "config": config_to_dict(self.config)}

    # -- measuring ----------------------------------------------------------------------------------------
    def _load(self, image: Any) -> np.ndarray:
        from lmmiqa.images import ImageLimits

        limits = ImageLimits(max_pixels=int(self.config.max_pixels), max_bytes=int(self.config.max_bytes))
        return load_matlab_rgb(image, limits)

    def measure(self, image: Any, ref: Any = None) -> tuple[float, dict[str, Any]]:
        """The raw value and tool-specific details; raises :class:`ToolError` / ``ImageLoadError``."""
        if self.kind == FR and ref is None:
            raise ToolError(f"{self.name} is a full-reference tool: pass the reference image (ref=...)")
        if self.kind == NR and ref is not None:
            raise ToolError(f"{self.name} is a no-reference tool: it takes no reference image")
        rgb = self._load(image)
        ref_rgb = self._load(ref) if ref is not None else None
        if ref_rgb is not None and ref_rgb.shape != rgb.shape:
            raise ToolError(
                f"{self.name}: image and reference differ in size ({rgb.shape[1]}×{rgb.shape[0]} vs "
                f"{ref_rgb.shape[1]}×{ref_rgb.shape[0]})"
            )
        out = self._measure(rgb, ref_rgb)
        value, details = out if isinstance(out, tuple) else (out, {})
        value = float(value)
        if math.isnan(value):
            raise ToolError(f"{self.name} is undefined for this image (e.g. a flat, uniform image)")
        return value, dict(details)

    def compute(self, image: Any, ref: Any = None) -> float:
        """The raw tool value for one image (and its reference, for full-reference tools)."""
        return self.measure(image, ref)[0]

    def run(self, image: Any, ref: Any = None, key: str | None = None) -> ToolResult:
        """Measure and normalize one image; never raises for a bad input (the result carries the error)."""
        from lmmiqa.images import input_key

        key = key if key is not None else input_key(image, 0)
        t0 = time.perf_counter()
        try:
            raw, details = self.measure(image, ref)
            m = self.map
            normalized = None if m is None else m.apply(raw)
            details["map"] = m.source if m is not None else None
            if m is None:
                details["map_note"] = f"no map for {self.name}; fit one with `lmmiqa tools fit --tool {self.name}`"
            if math.isinf(raw):
                details["raw_text"] = "inf" if raw > 0 else "-inf"
        except (LmmiqaError, ValueError, FloatingPointError, MemoryError) as err:
            return ToolResult(self.name, key, None, None, str(err), {}, time.perf_counter() - t0)
        return ToolResult(self.name, key, raw, normalized, None, details, time.perf_counter() - t0)

    @abstractmethod
    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float | tuple[float, dict[str, Any]]:
        """The raw value from an H×W×3 uint8 array (and the reference's, same shape, for FR tools)."""


# --------------------------------------------------------------------------- shared helpers

#: PIL modes that carry an alpha channel (MATLAB ``imread`` returns it as a separate output)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _drop_alpha(img: Any) -> Any:
    """A PIL image without its alpha channel (colour values kept as stored, not composited)."""
    if img.mode in ("LA", "La"):
        return img.getchannel(0)
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img


def load_matlab_rgb(image: Any, limits: Any = None) -> np.ndarray:
    """An input as the MATLAB releases see it after ``imread``: H×W×3 uint8 (METHODS §8).

    Alpha is dropped, not composited (``imread`` returns it as a separate output); 16-bit images convert like
    ``im2uint8`` (``round(x / 257)``, by :mod:`lmmiqa.images`), greyscale files become three equal channels.
    Paths, bytes, PIL images and arrays (H×W×4 arrays: the fourth channel is alpha) are accepted; errors are
    :class:`~lmmiqa.images.ImageLoadError` as for every other input. Pillow decodes 16-bit *RGB* files to 8
    bits itself (high byte, i.e. truncation); pass such images as uint16 arrays to get the rounding.
    """
    import io
    import os

    from lmmiqa.images import ImageLimits, ImageLoadError, load_input

    limits = limits or ImageLimits()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        h, w = image.shape[:2]  # already what imread gives: no round trip through PIL
        if h * w == 0 or h * w > limits.max_pixels:
            return np.asarray(load_input(image, limits), dtype=np.uint8)  # raises the usual error
        return image
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (2, 4):
        image = image[..., :-1] if image.shape[2] == 4 else image[..., 0]
    elif isinstance(image, (str, os.PathLike, bytes, bytearray)):
        from PIL import Image

        data = None
        try:  # header only: does the file carry alpha?
            data = bytes(image) if isinstance(image, (bytes, bytearray)) else None
            with Image.open(io.BytesIO(data) if data is not None else image) as probe:
                has_alpha = probe.mode in ALPHA_MODES or (probe.mode == "P" and "transparency" in probe.info)
        except (OSError, SyntaxError, ValueError):
            has_alpha = False  # let the regular loader report what is wrong
        if has_alpha:
            from PIL import ImageOps

            what = "<bytes>" if data is not None else str(image)
            if data is None and os.path.getsize(image) > limits.max_bytes:
                return np.asarray(load_input(image, limits), dtype=np.uint8)  # raises the size error
            try:
                with Image.open(io.BytesIO(data) if data is not None else image) as img:
                    if img.width * img.height > limits.max_pixels:
                        return np.asarray(load_input(image, limits), dtype=np.uint8)  # raises the pixel error
                    img.load()
                    image = _drop_alpha(ImageOps.exif_transpose(img))
            except (OSError, SyntaxError, ValueError) as err:
                raise ImageLoadError(f"{what}: corrupt or truncated image ({err})") from err
    elif not isinstance(image, np.ndarray) and hasattr(image, "mode"):
        image = _drop_alpha(image)
    return np.asarray(load_input(image, limits), dtype=np.uint8)



def is_grey(rgb: np.ndarray) -> bool:
    """True when the three channels are identical (a greyscale image stored as RGB)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def luminance(rgb: np.ndarray, convention: str = "gray") -> np.ndarray:
    """Grey levels (float64, 0–255 integers) as the MATLAB releases compute them (METHODS §8).

    ``"gray"`` is MATLAB ``rgb2gray`` and ``"y"`` the Y of ``rgb2ycbcr`` (BT.601, 16–235), both rounded to
    uint8. Every H×W×3 input is converted the same way, also one whose channels are equal (``rgb2gray`` leaves
    those unchanged, ``y`` does not); a 2-D array is taken as grey levels already.
    """
    if convention not in ("gray", "y"):
        raise ConfigError(f"unknown luminance convention {convention!r}; known: gray, y")
    return rgb2gray(rgb) if convention == "gray" else rgb2y(rgb)


def require_size(name: str, shape: tuple[int, ...], min_h: int, min_w: int, why: str) -> None:
    """Raise :class:`ToolError` when an image is smaller than ``min_h``×``min_w`` pixels."""
    h, w = shape[:2]
    if h < min_h or w < min_w:
        raise ToolError(f"{name} needs an image of at least {min_w}×{min_h} pixels ({why}); got {w}×{h}")
