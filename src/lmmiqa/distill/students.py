"""LEAF students (METHODS §3.2): lightweight regressors distilled from an MLLM teacher, and their preprocessing.

Registered in :data:`lmmiqa.registry.STUDENTS` (one line each):

* ``small-cnn`` — a small built-in CNN (≈0.13 M parameters) that trains on a CPU in minutes;
* ``convnext-base`` (the LEAF paper's student), ``convnext-tiny``, ``resnet-50`` — transformers image models
  (``ConvNextModel``/``ResNetModel``; not timm, no torchvision) with ImageNet-pretrained weights
  (``facebook/convnext-base-224``, ``facebook/convnext-tiny-224``, ``microsoft/resnet-50``, or a local folder
  via ``source``), or built from their published configuration with random weights (``pretrained=False``, offline).

A registered student is a *spec* (plain Python, no torch at import): it says how to build the backbone, what
architecture description to store in the artifact so that the network can be rebuilt without any download,
and how images are preprocessed. Preprocessing is PIL resizing plus numpy normalization
(:class:`Preprocess`), identical at training and inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, ModelLoadError, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("resize", "center-crop", "crops")
CROP_LAYOUTS = ("grid", "corners")
RESAMPLES = ("bicubic", "bilinear", "lanczos", "box")


def crop_positions(height: int, width: int, size: int, n: int, layout: str = "grid") -> list[tuple[int, int]]:
    """Deterministic ``(top, left)`` corners of up to ``n`` ``size``×``size`` crops of a ``height``×``width`` image.

    ``grid``: ``rows × cols`` evenly spaced crops (first and last touch the borders), ``rows`` chosen so that the
    grid follows the image's aspect ratio (a side no longer than the crop gets one position, the crops spread
    along the other); when ``rows × cols`` exceeds ``n``, ``n`` of them evenly spaced in
    row-major order. ``corners``: the centre, then the four corners (``n`` ≤ 5). Positions that coincide (an image
    no larger than the crop along a side) are returned once, so a ``size``×``size`` image gives one crop.

    Raises:
        ConfigError: unknown layout, ``n`` < 1, ``corners`` with ``n`` > 5, or an image smaller than the crop.
    """
    if layout not in CROP_LAYOUTS:
        raise ConfigError(f"unknown crop layout {layout!r}; known: {', '.join(CROP_LAYOUTS)}")
    n, size, height, width = int(n), int(size), int(height), int(width)
    if n < 1:
        raise ConfigError(f"the number of crops must be >= 1, got {n}")
    if height < size or width < size:
        raise ConfigError(f"a {width}x{height} image is smaller than the {size}x{size} crop")
    dy, dx = height - size, width - size
    if layout == "corners":
        if n > 5:
            raise ConfigError(f"the corners layout has at most 5 crops (centre + 4 corners), got {n}")
        pos = [(dy // 2, dx // 2), (0, 0), (0, dx), (dy, 0), (dy, dx)][:n]
    else:
        if dx == 0 or dy == 0:  # the crop spans one side: all crops along the other
            rows, cols = (n, 1) if dx == 0 else (1, n)
        else:
            rows = min(n, max(1, round(np.sqrt(n * height / width))))
            cols = -(-n // rows)
        ys = [round(dy * r / (rows - 1)) if rows > 1 else dy // 2 for r in range(rows)]
        xs = [round(dx * c / (cols - 1)) if cols > 1 else dx // 2 for c in range(cols)]
        grid = [(y, x) for y in ys for x in xs]
        if len(grid) > n:
            grid = [grid[round(i * (len(grid) - 1) / (n - 1))] for i in range(n)] if n > 1 else [(dy // 2, dx // 2)]
        pos = grid
    return list(dict.fromkeys(pos))


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the student's input view(s).

    Attributes:
        size: side of the square input.
        mode: ``crops`` (``size``×``size`` crops at native resolution: random ones in training, a deterministic
            set of ``crops`` at inference whose outputs are averaged; noise, blur and blocking keep their pixel
            scale), ``resize`` (the whole image squashed to ``size``×``size``) or ``center-crop`` (shorter side to
            ``size``, then a centred square).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        resample: PIL filter (``bicubic``, ``bilinear``, ``lanczos``, ``box``).
        source: where mean/std came from (``imagenet`` or the image processor of a checkpoint).
        crops: inference crops per image (``crops`` mode).
        crop_layout: ``grid`` or ``corners`` (centre + corners), see :func:`crop_positions`.
    """

    size: int = 224
    mode: str = "resize"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"
    source: str = "imagenet"
    crops: int = 5
    crop_layout: str = "grid"

    def __post_init__(self) -> None:
        if int(self.size) < 8:
            raise ConfigError(f"image size must be >= 8, got {self.size}")
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {self.mode!r}; known: {', '.join(RESIZE_MODES)}")
        if self.resample not in RESAMPLES:
            raise ConfigError(f"unknown resample filter {self.resample!r}; known: {', '.join(RESAMPLES)}")
        if self.crop_layout not in CROP_LAYOUTS:
            raise ConfigError(f"unknown crop layout {self.crop_layout!r}; known: {', '.join(CROP_LAYOUTS)}")
        if int(self.crops) < 1 or (self.crop_layout == "corners" and int(self.crops) > 5):
            raise ConfigError(f"crops must be >= 1 (at most 5 with the corners layout), got {self.crops}")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError("mean and std need 3 values each, std > 0")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "crops", int(self.crops))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        d = {"size": self.size, "mode": self.mode, "mean": list(self.mean), "std": list(self.std),
             "resample": self.resample, "source": self.source}
        if self.mode == "crops":
            d.update(crops=self.crops, crop_layout=self.crop_layout,
                     training="one random size x size crop per image and step at native resolution, target: the "
                     "teacher's judgment of the whole image",
                     inference="mean of the crops' outputs (crop_std in details)")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})

    def _resample(self) -> Any:
        from PIL import Image

        return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
                "box": Image.BOX}[self.resample]

    def base(self, image: Any) -> np.ndarray:
        """RGB PIL image -> the uint8 array views are cut from: [size, size, 3] in the ``resize``/``center-crop``
        modes; in ``crops`` mode the native image [H, W, 3], enlarged (aspect kept) only when a side is shorter
        than ``size``."""
        img = image if image.mode == "RGB" else image.convert("RGB")
        if self.mode != "crops":
            return self.to_uint8(img)
        w, h = img.size
        s = self.size
        if min(w, h) < s:
            scale = s / min(w, h)
            img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), self._resample())
        return np.asarray(img, dtype=np.uint8)

    def views(self, base: np.ndarray) -> np.ndarray:
        """The deterministic inference views of a :meth:`base` array: uint8 [V, size, size, 3] (V = 1 unless
        ``crops`` mode)."""
        if self.mode != "crops":
            return base[None]
        s = self.size
        pos = crop_positions(base.shape[0], base.shape[1], s, self.crops, self.crop_layout)
        return np.stack([base[y : y + s, x : x + s] for y, x in pos])

    def random_view(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One training view of a :meth:`base` array: a uniformly placed ``size`` crop (``crops`` mode), else the
        array itself."""
        if self.mode != "crops":
            return base
        s = self.size
        y = int(rng.integers(0, base.shape[0] - s + 1))
        x = int(rng.integers(0, base.shape[1] - s + 1))
        return base[y : y + s, x : x + s]

    def to_uint8(self, image: Any) -> np.ndarray:
        """RGB PIL image -> uint8 array [size, size, 3], resized as configured (``crops`` mode: the first view)."""
        resample = self._resample()
        img = image if image.mode == "RGB" else image.convert("RGB")
        s = self.size
        if self.mode == "crops":
            return self.views(self.base(img))[0]
        if self.mode == "resize":
            if img.size != (s, s):
                img = img.resize((s, s), resample)
        else:
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), resample)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] -> float32 [B, 3, S, S], scaled to [0, 1] and normalized by mean/std."""
        x = np.asarray(batch, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class StudentSpec:
    """A registered student architecture.

    Subclasses set the class attributes and implement :meth:`arch` and :meth:`build_backbone`.

    Attributes:
        name: registered name.
        summary: one line for ``--help``.
        default_size: input side used when none is given (whole-image ``resize``/``center-crop`` modes).
        default_crop: crop side used when none is given in ``crops`` mode.
        default_lr: AdamW learning rate used when none is given.
        has_pretrained: whether pretrained weights exist (the default of ``pretrained`` when training).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_size: ClassVar[int] = 224
    default_crop: ClassVar[int] = 224
    default_lr: ClassVar[float] = 1e-4
    has_pretrained: ClassVar[bool] = False

    def __init__(self) -> None:
        """Students without options take none."""

    def arch(self, *, pretrained: bool, source: str | None) -> dict[str, Any]:
        """A JSON-safe description from which :meth:`build_backbone` rebuilds the network offline."""
        raise NotImplementedError

    def build_backbone(self, arch: dict[str, Any], *, weights_from: str | None = None) -> tuple[Any, int]:
        """``(torch module mapping [B, 3, S, S] -> [B, F], F)``; ``weights_from`` loads pretrained weights."""
        raise NotImplementedError

    def preprocessing(self, *, size: int | None, pretrained: bool, source: str | None) -> Preprocess:
        """The preprocessing for this student (ImageNet statistics unless a checkpoint's processor says otherwise)."""
        return Preprocess(size=int(size or self.default_size))


class SmallCNN(StudentSpec):
    """A small built-in CNN (four conv stages, mean+std statistics of each stage); trains on a CPU in minutes."""

    name = "small-cnn"
    summary = "built-in 4-stage CNN (~0.13 M parameters, local-contrast input channel, multi-stage mean/std pooling; 64² crops by default); CPU-friendly"
    default_size = 128
    default_crop = 64
    default_lr = 2e-3

    def __init__(self, channels: Sequence[int] = (8, 16, 32, 64), norm: str = "batch", lcn: bool = True) -> None:
        """Args: channels: output channels of each stage (1 to 6 stages; the first keeps full resolution);
        norm: ``batch`` (batch norm after each conv) or ``none``; lcn: add a locally contrast-normalized grey
        channel to the input."""
        try:
            chans = tuple(int(c) for c in channels)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"channels must be a list of positive integers, got {channels!r}") from err
        if not 1 <= len(chans) <= 6 or min(chans) < 1:
            raise ConfigError(f"channels must be 1 to 6 positive integers, got {channels!r}")
        self.channels = chans
        if norm not in ("batch", "none"):
            raise ConfigError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.norm = norm
        self.lcn = bool(lcn)

    def arch(self, *, pretrained: bool, source: str | None) -> dict[str, Any]:
        if pretrained:
            raise ConfigError("small-cnn has no pretrained weights; train it with pretrained=False (--no-pretrained)")
        if source:
            raise ConfigError("small-cnn takes no source checkpoint")
        return {"channels": list(self.channels), "norm": self.norm, "lcn": self.lcn}

    def build_backbone(self, arch: dict[str, Any], *, weights_from: str | None = None) -> tuple[Any, int]:
        from lmmiqa.distill._nets import SmallCNNBackbone

        net = SmallCNNBackbone(arch.get("channels", self.channels), arch.get("norm", "batch"), bool(arch.get("lcn", False)))
        return net, net.feature_dim


class _HFStudent(StudentSpec):
    """A transformers image model (``pooler_output`` features)."""

    hub_id: ClassVar[str] = ""
    model_type: ClassVar[str] = ""
    config_overrides: ClassVar[dict[str, Any]] = {}
    default_lr = 1e-4
    has_pretrained = True

    def _classes(self) -> tuple[Any, Any]:
        require("torch", "hf", f"the {self.name} student")
        transformers = require("transformers", "hf", f"the {self.name} student")
        config_cls = transformers.CONFIG_MAPPING[self.model_type]
        model_cls = transformers.MODEL_MAPPING[config_cls]
        return config_cls, model_cls

    def arch(self, *, pretrained: bool, source: str | None) -> dict[str, Any]:
        config_cls, _ = self._classes()
        src = source or self.hub_id
        if pretrained:
            try:
                cfg = config_cls.from_pretrained(src)
            except Exception as err:
                raise ModelLoadError(self._hint(src, err)) from err
        else:
            if source:
                try:
                    cfg = config_cls.from_pretrained(source)
                except Exception as err:
                    raise ModelLoadError(self._hint(source, err)) from err
            else:
                cfg = config_cls(**self.config_overrides)
        d = cfg.to_dict()
        # classification-only fields are irrelevant to the backbone and bulky
        for k in ("id2label", "label2id"):
            d.pop(k, None)
        return {"model_type": self.model_type, "config": d, "source": src if (pretrained or source) else None}

    def _hint(self, src: str, err: BaseException) -> str:
        return (
            f"cannot load the {self.name} student weights from {src!r} ({type(err).__name__}: {err}). Offline, "
            "download them elsewhere and pass the folder (--student-model DIR), or train from a random "
            "initialization with --no-pretrained"
        )

    def build_backbone(self, arch: dict[str, Any], *, weights_from: str | None = None) -> tuple[Any, int]:
        from lmmiqa.distill._nets import HFBackbone

        config_cls, model_cls = self._classes()
        cfg_dict = {k: v for k, v in arch["config"].items() if k not in ("model_type", "transformers_version")}
        cfg = config_cls(**cfg_dict)
        if weights_from:
            try:
                model = model_cls.from_pretrained(weights_from, config=cfg)
            except Exception as err:
                raise ModelLoadError(self._hint(weights_from, err)) from err
        else:
            model = model_cls(cfg)
        return HFBackbone(model, int(cfg.hidden_sizes[-1])), int(cfg.hidden_sizes[-1])

    def preprocessing(self, *, size: int | None, pretrained: bool, source: str | None) -> Preprocess:
        src = source or (self.hub_id if pretrained else None)
        if not src:
            return Preprocess(size=int(size or self.default_size))
        transformers = require("transformers", "hf", f"the {self.name} student")
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(src)
        except Exception as err:
            raise ModelLoadError(
                f"cannot load the image processor of {src!r} ({type(err).__name__}: {err}); it gives the "
                "normalization the pretrained weights expect"
            ) from err
        mean = tuple(getattr(proc, "image_mean", None) or IMAGENET_MEAN)
        std = tuple(getattr(proc, "image_std", None) or IMAGENET_STD)
        return Preprocess(size=int(size or self.default_size), mean=mean, std=std, source=f"image processor of {src}")


class ConvNextBase(_HFStudent):
    """ConvNeXt-Base (the LEAF paper's student), ImageNet-pretrained ``facebook/convnext-base-224``."""

    name = "convnext-base"
    summary = "ConvNeXt-Base (transformers ConvNextModel; facebook/convnext-base-224), the LEAF paper's student"
    hub_id = "facebook/convnext-base-224"
    model_type = "convnext"
    config_overrides = {"depths": [3, 3, 27, 3], "hidden_sizes": [128, 256, 512, 1024]}


class ConvNextTiny(_HFStudent):
    """ConvNeXt-Tiny, ImageNet-pretrained ``facebook/convnext-tiny-224``."""

    name = "convnext-tiny"
    summary = "ConvNeXt-Tiny (transformers ConvNextModel; facebook/convnext-tiny-224)"
    hub_id = "facebook/convnext-tiny-224"
    model_type = "convnext"
    config_overrides = {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]}


class ResNet50(_HFStudent):
    """ResNet-50, ImageNet-pretrained ``microsoft/resnet-50``."""

    name = "resnet-50"
    summary = "ResNet-50 (transformers ResNetModel; microsoft/resnet-50)"
    hub_id = "microsoft/resnet-50"
    model_type = "resnet"
    config_overrides = {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64,
                        "layer_type": "bottleneck"}


def get_student(name: str, **options: Any) -> StudentSpec:
    """The registered student spec for ``name`` (aliases accepted) built with ``options``.

    Raises:
        UnknownNameError: the name is not registered (the message lists the names).
        ConfigError: an option the student does not take.
    """
    import inspect

    from lmmiqa import registry

    cls = registry.resolve("student", name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for student {cls.name!r}; valid: {', '.join(params) or 'none'}"
        )
    return cls(**options)


def student_summaries() -> dict[str, str]:
    """Registered student names -> one-line summary (for ``--help``)."""
    from lmmiqa import registry

    out = {}
    for name in registry.names("student"):
        out[name] = getattr(registry.resolve("student", name), "summary", "")
    return out


def build_network(spec: StudentSpec, arch: dict[str, Any], k_levels: int | None, *, weights_from: str | None = None) -> Any:
    """The full :class:`~lmmiqa.distill._nets.StudentNetwork` (backbone + heads) for ``spec``/``arch``."""
    require("torch", "hf", "LEAF students")
    from lmmiqa.distill._nets import StudentNetwork

    backbone, feature_dim = spec.build_backbone(arch, weights_from=weights_from)
    return StudentNetwork(backbone, feature_dim, k_levels)
