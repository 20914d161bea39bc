"""Loading transformers processors on machines without torchvision.

In transformers 5.x every VLM processor that declares a video processor (Qwen2.5-VL, Qwen3-VL,
LLaVA-OneVision, InternVL, ...) fails to build or load when torchvision is missing, because its video processor
only has a torchvision backend (upstream: transformers #43986, #48556). lmmiqa never needs videos, so when
:func:`transformers.AutoProcessor.from_pretrained` fails for that reason, :func:`load_processor` loads an
*image-only variant* of the same processor class instead: a subclass whose ``__init__`` takes the same
arguments minus ``video_processor`` (see :func:`image_only_processor_class`).

The variant keeps the base class's name and writes the standard processor files on ``save_pretrained``
(``processor_config.json``, tokenizer files, ``chat_template.jinja``), so a saved folder reloads through
:func:`load_processor` here and through plain ``AutoProcessor.from_pretrained`` on a machine with torchvision.

transformers is imported lazily inside the functions: importing this module loads no torch.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
from typing import TYPE_CHECKING, Any

from lmmiqa.errors import MissingDependencyError, ModelLoadError

if TYPE_CHECKING:
    from transformers import ProcessorMixin

__all__ = ["image_only_processor_class", "is_video_processor_error", "load_processor"]

#: Fragments of the error messages transformers raises when a processor's video processor cannot be built
#: because torchvision is missing (lower-cased).
_VIDEO_ERROR_MARKERS: tuple[str, ...] = (
    "video_processor_mapping",
    "_extra_content",
    "video processor",
    "videoprocessor",
    "video_processor",
    "torchvision",
)

#: Keyword arguments of ``from_pretrained`` that locate files (passed to every sub-loader).
_HUB_KWARGS: tuple[str, ...] = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
    "proxies",
    "trust_remote_code",
)


def is_video_processor_error(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says a video processor/torchvision is missing.

    Args:
        err: the exception raised by ``AutoProcessor.from_pretrained``.

    Returns:
        True when falling back to an image-only processor can help.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = f"{type(cur).__name__}: {cur}".lower()
        if any(marker in text for marker in _VIDEO_ERROR_MARKERS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise MissingDependencyError("transformers", "hf", "loading local models") from err
    return transformers


@functools.cache
def image_only_processor_class(cls: type) -> type:
    """An image-only variant of a transformers processor class.

    The variant is a subclass whose ``__init__`` has the base signature minus ``video_processor`` (with the
    same defaults), built as a real function because transformers reads both ``inspect.signature(__init__)``
    (which sub-processors and settings to save and load) and ``__init__.__code__`` (which saved settings to pass
    back on reload); a ``**kwargs``-only subclass would silently drop settings such as ``num_image_tokens``.
    The base ``__init__`` is called with ``video_processor=None``. The variant keeps the base class's
    ``__name__`` so that saved files name the standard class (``"processor_class": "Qwen2_5_VLProcessor"``).

    Args:
        cls: a ``ProcessorMixin`` subclass, e.g. ``transformers.Qwen2_5_VLProcessor``.

    Returns:
        The variant class (cached: the same class object for the same ``cls``). ``cls`` itself when it has no
        ``video_processor`` argument.
    """
    sig = inspect.signature(cls.__init__)
    if "video_processor" not in sig.parameters:
        return cls

    params = [p for name, p in sig.parameters.items() if name != "video_processor"]
    header: list[str] = []
    call: list[str] = []
    defaults: list[Any] = []
    kwdefaults: dict[str, Any] = {}
    star_done = False
    for i, p in enumerate(params):
        if i == 0:  # self
            header.append(p.name)
            continue
        if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.POSITIONAL_ONLY:
            header.append(p.name)
            call.append(f"{p.name}={p.name}")
            if p.default is not p.empty:
                defaults.append(p.default)
        elif p.kind is p.VAR_POSITIONAL:
            header.append(f"*{p.name}")
            call.append(f"*{p.name}")
            star_done = True
        elif p.kind is p.KEYWORD_ONLY:
            if not star_done:
                header.append("*")
                star_done = True
            header.append(p.name)
            call.append(f"{p.name}={p.name}")
            if p.default is not p.empty:
                kwdefaults[p.name] = p.default
        elif p.kind is p.VAR_KEYWORD:
            header.append(f"**{p.name}")
            call.append(f"**{p.name}")
    call.append("video_processor=None")
    src = f"def __init__({', '.join(header)}):\n    __lmmiqa_base_init__({header[0]}, {', '.join(call)})\n"
    namespace: dict[str, Any] = {"__lmmiqa_base_init__": cls.__init__}
    exec(compile(src, f"<lmmiqa image-only {cls.__name__}.__init__>", "exec"), namespace)
    init = namespace["__init__"]
    init.__defaults__ = tuple(defaults) or None
    init.__kwdefaults__ = kwdefaults or None
    init.__doc__ = f"Image-only {cls.__name__}: the base arguments minus ``video_processor``."
    init.__qualname__ = f"{cls.__name__}.__init__"

    variant = type(
        cls.__name__,
        (_ImageOnlyProcessorMixin, cls),
        {
            "__init__": init,
            "__module__": __name__,
            "__qualname__": f"image_only[{cls.__name__}]",
            "__doc__": f"Image-only variant of :class:`transformers.{cls.__name__}` (no video processor).",
        },
    )
    return variant


#: Video processor class of each processor whose video processor needs torchvision (the auto mappings name
#: none of them when torchvision is missing, so they are spelled out here).
_VIDEO_PROCESSOR_TYPES: dict[str, str] = {
    "Qwen2VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
    "LlavaOnevisionProcessor": "LlavaOnevisionVideoProcessor",
    "LlavaNextVideoProcessor": "LlavaNextVideoVideoProcessor",
    "InternVLProcessor": "InternVLVideoProcessor",
}
#: Image processor settings that mean the same for the model's video processor.
_SHARED_VIDEO_SETTINGS: tuple[str, ...] = (
    "size",
    "patch_size",
    "merge_size",
    "temporal_patch_size",
    "image_mean",
    "image_std",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "do_convert_rgb",
)


class _ImageOnlyProcessorMixin:
    """Save/load behaviour shared by the image-only variants.

    The variant has no video processor, but it writes one into ``processor_config.json`` so that the saved
    folder still loads with plain ``AutoProcessor.from_pretrained`` where torchvision is installed: the video
    processor settings it was loaded with (kept in :attr:`video_processor_config`), or else settings derived
    from the image processor (same size, patch and merge sizes, normalisation).
    """

    lmmiqa_image_only: bool = True
    #: The ``video_processor`` entry of the loaded ``processor_config.json`` (or legacy
    #: ``video_preprocessor_config.json``), written back on save; None when there was none.
    video_processor_config: dict[str, Any] | None = None

    @classmethod
    def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        out = super().from_args_and_dict(args, processor_dict, **kwargs)  # type: ignore[misc]
        video = processor_dict.get("video_processor") if isinstance(processor_dict, dict) else None
        if isinstance(video, dict):
            processor = out[0] if isinstance(out, tuple) else out
            processor.video_processor_config = copy.deepcopy(video)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()  # type: ignore[misc]
        video = copy.deepcopy(self.video_processor_config) if self.video_processor_config else None
        if video is None:
            image = out.get("image_processor")
            if isinstance(image, dict):
                video = {k: copy.deepcopy(image[k]) for k in _SHARED_VIDEO_SETTINGS if k in image}
                video_type = _VIDEO_PROCESSOR_TYPES.get(type(self).__name__)
                if video_type:  # otherwise AutoVideoProcessor picks the class from config.json's model_type
                    video["video_processor_type"] = video_type
        if video:
            out["video_processor"] = video
        return out


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}


def _read_json(name_or_path: str, filename: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Read a JSON file of a local folder or hub repo; None when absent or unreadable."""
    from lmmiqa.hub import read_checkpoint_json

    return read_checkpoint_json(name_or_path, filename, **_hub_kwargs(kwargs))


def _find_processor_class(name_or_path: str, kwargs: dict[str, Any]) -> type:
    """The processor class AutoProcessor would pick, found without building its video processor."""
    transformers = _import_transformers()
    candidates: list[str] = []
    for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        data = _read_json(name_or_path, filename, kwargs)
        if data and isinstance(data.get("processor_class"), str):
            candidates.append(data["processor_class"])
    config = _read_json(name_or_path, "config.json", kwargs)
    if config and isinstance(config.get("model_type"), str):
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        mapped = PROCESSOR_MAPPING_NAMES.get(config["model_type"])
        if isinstance(mapped, str):
            candidates.append(mapped)
    for name in candidates:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    raise ModelLoadError(
        f"cannot tell which processor class {name_or_path!r} uses (no processor_class in its processor or "
        "tokenizer config and no known model_type in config.json)"
    )


def load_processor(name_or_path: str | os.PathLike[str], **kwargs: Any) -> ProcessorMixin:
    """Load a model's processor, falling back to an image-only variant when torchvision is missing.

    Args:
        name_or_path: a hub model id (``"Qwen/Qwen2.5-VL-7B-Instruct"``) or a local folder.
        **kwargs: passed to ``from_pretrained`` (``revision=``, ``local_files_only=``, ``trust_remote_code=``,
            processor settings such as ``min_pixels=``).

    Returns:
        The processor: the standard one when it loads; otherwise an instance of
        ``image_only_processor_class(cls)`` built from the same image processor, tokenizer and chat template
        (it rejects ``videos=``).

    Raises:
        MissingDependencyError: transformers is not installed.
        ModelLoadError: the processor cannot be loaded (not found locally and not reachable, or broken); the
            message says what was tried.
    """
    transformers = _import_transformers()
    name = os.fspath(name_or_path)
    try:
        return transformers.AutoProcessor.from_pretrained(name, **kwargs)
    except Exception as err:
        first_error = err
    if not is_video_processor_error(first_error):
        raise ModelLoadError(_explain(name, first_error)) from first_error

    try:
        cls = _find_processor_class(name, kwargs)
        variant = image_only_processor_class(cls)
        processor = variant.from_pretrained(name, **kwargs)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"could not load the processor of {name!r}: AutoProcessor failed because its video processor "
            f"needs torchvision ({type(first_error).__name__}: {first_error}), and the image-only fallback "
            f"failed too ({type(err).__name__}: {err})"
        ) from err
    if getattr(processor, "video_processor_config", None) is None:
        legacy = _read_json(name, "video_preprocessor_config.json", kwargs)
        if legacy is not None:
            processor.video_processor_config = legacy
    return processor


def _explain(name: str, err: BaseException) -> str:
    hint = ""
    if not os.path.exists(name):
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        hint = (
            "; it is not a local folder, so it must be a hub model id reachable online or already in the HF "
            "cache" + (" (offline mode is on: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE=1)" if offline else "")
        )
    elif os.path.isdir(name):
        hint = "; the folder must hold the processor files written by save_pretrained (processor_config.json, tokenizer files)"
    return f"could not load the processor of {name!r} ({type(err).__name__}: {err}){hint}"


#: Image processor classes whose ``size`` is a pixel-count range (``shortest_edge`` = min_pixels,
#: ``longest_edge`` = max_pixels): the Qwen2-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and their PIL/fast
#: variants), matched on the class names of the MRO.
PIXEL_RANGE_PROCESSORS: tuple[str, ...] = ("Qwen2VLImageProcessor",)


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> str:
    """Apply a pixel budget to a loaded processor the way its own image processor names it.

    Qwen2-VL-family image processors take ``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}``
    (transformers 5.x; the older ``min_pixels``/``max_pixels`` attributes are set too where they exist); the
    budget is set on the processor, so its image-token counts (``_get_num_multimodal_tokens``) follow.
    ``max_pixels`` is a cap: the processor's own limit stays when it is lower.

    Args:
        processor: a transformers processor (with ``image_processor``).
        min_pixels: smallest width×height, or None to keep the processor's.
        max_pixels: largest width×height, or None to keep the processor's.

    Returns:
        ``"native"`` when the processor took the budget, ``"resize"`` when the caller must downscale images
        before the processor (:func:`lmmiqa.backends.pixels.fit_pixels`), ``"model"`` when both are None.
    """
    if min_pixels is None and max_pixels is None:
        return "model"
    if getattr(processor, "fixed_image_resolution", False):
        # the processor resizes every image to a fixed set of views (mPLUG-Owl3): a budget changes no cost
        return "model"
    ip = getattr(processor, "image_processor", None)
    names = {c.__name__ for c in type(ip).__mro__} if ip is not None else set()
    if not any(any(n.startswith(p) for n in names) for p in PIXEL_RANGE_PROCESSORS):
        return "resize"
    old = ip.size
    current = {k: v for k, v in (old.items() if hasattr(old, "items") else vars(old).items()) if v is not None}
    new = dict(current)
    if min_pixels is not None:
        new["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        # a cap: never above the checkpoint's own limit
        new["longest_edge"] = min(int(max_pixels), int(current.get("longest_edge") or max_pixels))
    if new.get("shortest_edge", 0) > new.get("longest_edge", float("inf")):
        # a budget below the checkpoint's own floor: the floor follows it down
        new["shortest_edge"] = new["longest_edge"]
    new.pop("min_pixels", None)
    new.pop("max_pixels", None)
    try:
        ip.size = type(old)(**new)
    except TypeError:
        ip.size = new
    for attr, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if getattr(ip, attr, None) is not None:
            setattr(ip, attr, new[key])
    return "native"
