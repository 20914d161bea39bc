"""Device and dtype selection shared by every component that runs torch (imported lazily by them)."""

from __future__ import annotations

from typing import Any

from lmmiqa.errors import ConfigError, require

DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str = "auto") -> Any:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, checked to exist."""
    torch = require("torch", "hf", "running models")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def pick_dtype(dtype: str, device: Any) -> Any:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere; otherwise the named dtype."""
    torch = require("torch", "hf", "running models")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
