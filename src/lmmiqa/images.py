"""The one place images are opened and validated.

Inputs may be paths, folders (recursive), ``@file`` lists (one path per line, relative to the list file),
PIL images or numpy arrays. Every image is returned as an 8-bit RGB ``PIL.Image`` with EXIF orientation
applied. A bad input never raises out of :func:`load_many`; it becomes an :class:`ImageItem` whose ``error``
says why, so the rest of a batch is scored normally.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, ImageLoadError, InputNotFoundError, spell

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".jfif"}
)

#: default limit on decoded pixels (width*height): guards against decompression bombs
DEFAULT_MAX_PIXELS = 64_000_000
#: default limit on file size in bytes
DEFAULT_MAX_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied when opening images.

    Attributes:
        max_pixels: largest width*height accepted (decompression-bomb guard).
        max_bytes: largest file (or byte buffer) accepted.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_bytes <= 0:
            raise ConfigError("image limits must be positive")


@dataclass
class ImageItem:
    """One input after loading: ``image`` is RGB PIL on success; else ``error`` says why."""

    key: str
    image: Any = None
    error: str | None = None
    source: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


def _pil():
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return Image


def is_image_like(obj: Any) -> bool:
    """True for in-memory images (PIL images and numpy arrays)."""
    if isinstance(obj, np.ndarray):
        return True
    Image = _pil()
    return isinstance(obj, Image.Image)


def to_rgb(img: Any) -> Any:
    """Convert any PIL mode (palette, RGBA, LA, 16-bit, float, CMYK, grey, YCbCr) to 8-bit RGB."""
    Image = _pil()
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0 if arr.max(initial=0) <= 65535 else arr * 255.0 / max(arr.max(), 1.0)
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return img.convert("RGB")


def array_to_image(arr: np.ndarray) -> Any:
    """numpy array (H×W, H×W×1, H×W×3, H×W×4; uint8, uint16 or float in [0, 1]) -> RGB PIL image."""
    Image = _pil()
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageLoadError(f"array of shape {a.shape} is not an image (expected H×W, H×W×3 or H×W×4)")
    if a.size == 0:
        raise ImageLoadError("array image is empty")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageLoadError("array image contains NaN or infinite values")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        a = np.clip(a.astype(np.int64) * (255 if a.dtype == bool else 1), 0, 255).astype(np.uint8)
    else:
        raise ImageLoadError(f"unsupported array dtype {a.dtype}")
    return to_rgb(Image.fromarray(a))


#: the scorer option that sets :attr:`ImageLimits.max_pixels` (every scorer config has it, see
#: :class:`lmmiqa.methods.base.ScorerConfig`; MLLM scorers keep ``max_pixels`` for the model's own pixel budget).
#: Defined here, in the lower module, so that the images layer knows nothing of the methods layer.
PIXEL_LIMIT_OPTION = "max_image_pixels"


def pixel_limit_option() -> str:
    """The scorer option that sets :attr:`ImageLimits.max_pixels` (named by the oversize hint):
    :data:`PIXEL_LIMIT_OPTION`."""
    return PIXEL_LIMIT_OPTION


def _check_pixels(width: int, height: int, limits: ImageLimits, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{what}: image has no pixels ({width}×{height})")
    if width * height > limits.max_pixels:
        raise ImageLoadError(
            f"{what}: {width}×{height} = {width * height} pixels exceeds the limit of {limits.max_pixels} "
            f"(raise {spell(cli=f'--option {pixel_limit_option()}=N', python=pixel_limit_option())} to accept it)"
        )


def open_image_bytes(data: bytes, what: str = "<bytes>", limits: ImageLimits | None = None) -> Any:
    """Decode image bytes into RGB, with size/pixel limits, EXIF orientation and full decoding."""
    limits = limits or ImageLimits()
    if len(data) == 0:
        raise ImageLoadError(f"{what}: empty file")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"{what}: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    Image = _pil()
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img.width, img.height, limits, what)
            img.load()  # decode fully now: truncation surfaces here, not later in a batch
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{what}: not an image file (unrecognised format)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{what}: rejected as a decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{what}: corrupt or truncated image ({err})") from err


def open_image(path: str | os.PathLike[str], limits: ImageLimits | None = None) -> Any:
    """Open an image file as 8-bit RGB; raise :class:`ImageLoadError` with the reason on failure."""
    limits = limits or ImageLimits()
    p = Path(path)
    if not p.exists():
        folder = os.fspath(path).endswith(("/", os.sep))  # "photos/": the user meant a folder
        raise ImageLoadError(f"{p}: {'no such folder' if folder else 'file not found'}")
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a directory, not an image")
    size = p.stat().st_size
    if size > limits.max_bytes:
        raise ImageLoadError(f"{p}: {size} bytes exceeds the limit of {limits.max_bytes} bytes")
    return open_image_bytes(p.read_bytes(), str(p), limits)


def load_input(obj: Any, limits: ImageLimits | None = None) -> Any:
    """Any single supported input (path, PIL image, numpy array, bytes) -> RGB PIL image."""
    limits = limits or ImageLimits()
    if isinstance(obj, (str, os.PathLike)):
        return open_image(obj, limits)
    if isinstance(obj, (bytes, bytearray)):
        return open_image_bytes(bytes(obj), "<bytes>", limits)
    if isinstance(obj, np.ndarray):
        img = array_to_image(obj)
        _check_pixels(img.width, img.height, limits, "<array>")
        return img
    Image = _pil()
    if isinstance(obj, Image.Image):
        _check_pixels(obj.width, obj.height, limits, "<image>")
        from PIL import ImageOps

        try:
            obj.load()
        except OSError as err:
            raise ImageLoadError(f"<image>: cannot decode ({err})") from err
        return to_rgb(ImageOps.exif_transpose(obj))
    raise ImageLoadError(f"unsupported input of type {type(obj).__name__}")


def _walk_folder(folder: Path) -> list[Path]:
    found = [
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(found)


def _read_list_file(list_path: Path) -> list[str]:
    """Entries of an ``@list`` file; relative entries are resolved against the list file's folder.

    Entries missing there are kept (each fails with "file not found"), and one warning says how they were
    resolved, naming the entries that do exist relative to the current folder instead (a common slip).
    """
    if not list_path.is_file():
        raise InputNotFoundError(f"@{list_path}: list file not found")
    out = []
    missing: list[str] = []
    from_cwd: list[str] = []
    for raw in list_path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        resolved = p if p.is_absolute() else list_path.parent / p
        out.append(str(resolved))
        if not resolved.exists():
            missing.append(str(resolved))
            if not p.is_absolute() and p.exists() and list_path.parent != Path("."):
                from_cwd.append(line)
    if missing:
        folder = str(list_path.parent) or "."
        note = (
            f"; {len(from_cwd)} of them exist relative to the current folder (e.g. {from_cwd[0]!r}): write the "
            "entries relative to the list file, or as absolute paths"
            if from_cwd
            else ""
        )
        log.warning(
            "@%s: %d of %d entries not found (e.g. %r); relative entries are resolved against the list file's "
            "folder %r%s",
            list_path, len(missing), len(out), missing[0], folder, note,
        )
    return out


def expand_inputs(inputs: Any) -> list[Any]:
    """Expand folders (recursively, image extensions only, sorted) and ``@list`` files into single inputs.

    A single path/PIL/array may be passed instead of a list. Paths that do not exist are kept, so that they
    fail individually later with "file not found" instead of failing the whole call. Non-string inputs are
    kept as they are.
    """
    if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray)) or is_image_like(inputs):
        inputs = [inputs]
    out: list[Any] = []
    for item in inputs:
        if isinstance(item, str) and item.startswith("@") and len(item) > 1:
            for line in _read_list_file(Path(item[1:])):
                out.extend(expand_inputs([line]) if Path(line).is_dir() else [line])
            continue
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            out.extend(str(p) for p in _walk_folder(Path(item)))
            continue
        out.append(str(item) if isinstance(item, os.PathLike) else item)
    return out


def input_key(obj: Any, position: int) -> str:
    """The ``image`` field of a result: the path as given, or ``<memory:i>`` for in-memory inputs."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)  # type: ignore[return-value]
    return f"<memory:{position}>"


def load_item(obj: Any, position: int, limits: ImageLimits | None = None) -> ImageItem:
    """Load one input; never raises for bad images (the error is recorded on the item)."""
    key = input_key(obj, position)
    try:
        return ImageItem(key=key, image=load_input(obj, limits), source=obj)
    except ImageLoadError as err:
        return ImageItem(key=key, error=str(err), source=obj)
    except Exception as err:
        return ImageItem(key=key, error=f"{key}: cannot open image ({type(err).__name__}: {err})", source=obj)


def load_many(
    inputs: Sequence[Any], limits: ImageLimits | None = None, *, start: int = 0, workers: int = 0
) -> list[ImageItem]:
    """Load several inputs (already expanded) in order; ``workers`` > 0 decodes in a thread pool."""
    if workers and len(inputs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda iv: load_item(iv[1], start + iv[0], limits), enumerate(inputs)))
    return [load_item(obj, start + i, limits) for i, obj in enumerate(inputs)]


def iter_batches(seq: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """Yield ``(start, chunk)`` pairs of at most ``size`` items."""
    if size < 1:
        raise ConfigError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(seq), size):
        yield start, seq[start : start + size]


def pad_to_square(img: Any, fill: tuple[int, int, int] = (122, 116, 104)) -> Any:
    """Pad an RGB image to a square, centred, with ``fill`` (default: the CLIP mean colour, as Q-Align)."""
    Image = _pil()
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_max_side(img: Any, max_side: int) -> Any:
    """Downscale so that the longer side is at most ``max_side`` (keeps aspect ratio; never upscales)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    Image = _pil()
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def sample_images() -> list[tuple[str, Any]]:
    """Built-in sample photos shipped with installed packages (no download): ``[(name, RGB PIL)]``.

    Uses scikit-image's ``skimage.data`` when available, else matplotlib's sample data; raises
    :class:`ImageLoadError` when neither is installed.
    """
    Image = _pil()
    out: list[tuple[str, Any]] = []
    try:
        from skimage import data as skdata

        for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock"):
            arr = getattr(skdata, name)()
            out.append((name, array_to_image(arr)))
    except ImportError:
        pass
    if not out:
        try:
            import matplotlib.cbook as cbook

            with cbook.get_sample_data("grace_hopper.jpg") as f:
                out.append(("grace_hopper", to_rgb(Image.open(f))))
        except Exception as err:
            raise ImageLoadError(
                "no built-in sample images: install scikit-image (pip install 'lmmiqa[tools]')"
            ) from err
    return out


def iter_paths(items: Iterable[Any]) -> Iterator[str]:
    """Paths among the inputs (skips in-memory images)."""
    for it in items:
        if isinstance(it, (str, os.PathLike)):
            yield os.fspath(it)  # type: ignore[misc]
