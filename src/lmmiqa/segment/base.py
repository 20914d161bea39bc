"""The segmenter contract: an RGB image in, binary region masks out.

LLM-IQA (Dog-IQA, Liu et al. 2024) scores local regions found by an automatic mask generator (SAM 2, Ravi et al.
2024, in the paper). lmmiqa keeps the mask generator behind this small interface so that Algorithm 1
(:mod:`lmmiqa.segment.regions`) and the method do not care which segmenter produced the masks.

A segmenter returns masks as a ``bool`` array of shape ``[N, H, W]`` (``H, W`` = the image's height and
width); masks may overlap and need not cover the image. ``N`` may be 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.config import build_config, config_to_dict
from lmmiqa.errors import ConfigError


@dataclass
class SegmenterConfig:
    """Options every segmenter accepts (none yet); subclasses add their own fields."""


class Segmenter(ABC):
    """Base class of all segmenters.

    Subclasses set ``name`` and ``config_cls`` and implement :meth:`segment`; they override
    :meth:`segment_many` when several images can share work (e.g. one batched image-encoder forward).
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type] = SegmenterConfig

    def __init__(self, config: Any | None = None) -> None:
        if config is None:
            config = self.config_cls()
        elif not isinstance(config, self.config_cls):
            raise ConfigError(
                f"segmenter {self.name!r} expects a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @classmethod
    def from_options(cls, **options: Any) -> Segmenter:
        """Build the segmenter from keyword options (names of ``config_cls`` fields)."""
        cfg = build_config(cls.config_cls, dict(options), what=f"segmenter {cls.name!r}")
        return cls(cfg)

    @abstractmethod
    def segment(self, image: Any) -> np.ndarray:
        """Binary masks of one image.

        Args:
            image: an RGB ``PIL.Image`` (other PIL modes and numpy arrays are converted to RGB).

        Returns:
            ``bool`` array ``[N, H, W]`` with ``H, W`` the image's height and width.
        """

    def segment_many(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Masks of several images, in order (default: one :meth:`segment` call per image)."""
        return [self.segment(img) for img in images]

    def describe(self) -> dict[str, Any]:
        """JSON-safe description (segmenter name and config) for run configs and result details."""
        return {"segmenter": self.name, "config": config_to_dict(self.config)}

    def __call__(self, image: Any) -> np.ndarray:
        return self.segment(image)


def as_rgb_image(image: Any) -> Any:
    """An RGB ``PIL.Image`` from a PIL image of any mode or a numpy array (see :mod:`lmmiqa.images`)."""
    from PIL import Image

    from lmmiqa.images import array_to_image, to_rgb

    if isinstance(image, np.ndarray):
        return array_to_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    raise ConfigError(f"a segmenter takes a PIL image or a numpy array, got {type(image).__name__}")


def empty_masks(height: int, width: int) -> np.ndarray:
    """A ``[0, H, W]`` bool array (no masks)."""
    return np.zeros((0, height, width), dtype=bool)


def create_segmenter(name: str = "sam2", **options: Any) -> Segmenter:
    """Create a segmenter by registered name (``"sam2"``, ``"felzenszwalb"``) with its config options.

    Raises:
        UnknownNameError: the name is not registered (the message lists the valid names).
        ConfigError: an option is unknown or invalid.
    """
    from lmmiqa import registry

    cls = registry.resolve("segmenter", name)
    return cls.from_options(**options)
