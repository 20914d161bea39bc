"""Checks of an mPLUG-Owl2 checkpoint folder's weight files before and after loading: one clear error, not random
weights.

transformers' ``from_pretrained`` initialises any tensor a checkpoint lacks at random with a warning, and words a
missing shard as a file-not-found deep in its loader. For a local folder :func:`check_folder` reads only the index and
the tensor headers (safetensors headers; ``.bin`` files memory-mapped, no tensor data read) and compares them with the
names and shapes the configuration implies (the model built on the meta device): a shard the index names but the
folder lacks, tensors that are missing, or tensors of another shape fail with one :class:`~lmmiqa.errors.ModelLoadError`
naming the first of them. After loading, any missing tensor (a hub checkpoint, checked after the download) fails the
same way (:func:`check_loading_info`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from lmmiqa.errors import ModelLoadError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
#: tensors a checkpoint may hold that the model recomputes (ignored)
IGNORED = re.compile(r"rotary_emb\.inv_freq$")
SHOWN = 3


def _first(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" (and {len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def weight_files(folder: str) -> dict[str, str] | None:
    """tensor name -> file name of a folder's weights (from its index, or its single weight file's header); None when
    the folder holds no weights in a published layout."""
    for index in INDEX_FILES:
        path = os.path.join(folder, index)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    weight_map = json.load(fh)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ModelLoadError(f"{path} is not a readable weight index: {err}") from err
            return {str(k): str(v) for k, v in weight_map.items()}
    for single in SINGLE_FILES:
        path = os.path.join(folder, single)
        if os.path.isfile(path):
            return dict.fromkeys(tensor_shapes(path), single)
    return None


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in one weight file, without reading their data."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        import torch

        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    except Exception as err:
        raise ModelLoadError(f"cannot read the weight file {path}: {type(err).__name__}: {err}") from err


def expected_shapes(model_cls: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """The state dict ``model_cls(config)`` has (built on the meta device: no memory)."""
    import torch

    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_folder(folder: str, config: Any, model_cls: Any) -> None:
    """Fail with one :class:`ModelLoadError` when a local checkpoint folder's weights cannot make ``model_cls(config)``
    whole (see the module docstring); a folder without weights in a published layout is left to ``from_pretrained``.
    (The model class is passed in by the modeling module, which imports this one, not the other way round.)"""
    files = weight_files(folder)
    if files is None:
        return
    missing_files = sorted({f for f in files.values() if not os.path.isfile(os.path.join(folder, f))})
    if missing_files:
        held = [k for k, f in files.items() if f == missing_files[0]]
        raise ModelLoadError(
            f"{folder}: {len(missing_files)} weight file(s) named by the index are missing: {_first(missing_files)}; "
            f"{missing_files[0]} holds {len(held)} tensor(s), first: {_first(held)}. Download the folder again."
        )
    want = expected_shapes(model_cls, config)
    have: dict[str, tuple[int, ...]] = {}
    for name in sorted(set(files.values())):
        have.update(tensor_shapes(os.path.join(folder, name)))
    missing = [k for k in want if k not in have]
    mismatched = [f"{k} {have[k]} (the config implies {want[k]})" for k in want if k in have and have[k] != want[k]]
    unexpected = [k for k in have if k not in want and not IGNORED.search(k)]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing, first: {_first(missing)}")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape, first: {_first(mismatched)}")
        if unexpected:
            parts.append(f"{len(unexpected)} not part of mPLUG-Owl2, first: {_first(unexpected)}")
        raise ModelLoadError(f"{folder} does not hold the model its config.json describes: " + "; ".join(parts))


def check_loading_info(name: str, info: dict[str, Any]) -> None:
    """After ``from_pretrained(..., output_loading_info=True)``: missing or mismatched tensors are an error (they would
    be random)."""
    missing = sorted(k for k in info.get("missing_keys") or () if not IGNORED.search(k))
    mismatched = [f"{k[0]} {tuple(k[1])} vs {tuple(k[2])}" if isinstance(k, tuple) and len(k) == 3 else str(k)
                  for k in info.get("mismatched_keys") or ()]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing, first: {_first(missing)}")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape, first: {_first(mismatched)}")
        raise ModelLoadError(f"{name} does not hold the whole mPLUG-Owl2 model (they would be random): " + "; ".join(parts))


__all__ = ["check_folder", "check_loading_info", "expected_shapes", "tensor_shapes", "weight_files"]
