"""Device and dtype selection shared by every component that runs torch (imported lazily by them)."""

from __future__ import annotations

import re
from typing import Any

from lmmiqa.errors import DeviceError, require, spell

DTYPES = ("auto", "float32", "bfloat16", "float16")


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")
_DEVICE_HINTS = {"gpu": "cuda", "cuda0": "cuda:0", "gpu0": "cuda:0", "cuda1": "cuda:1", "gpu1": "cuda:1", "mac": "mps"}
_DTYPE_HINTS = {
    "fp16": "float16", "half": "float16", "f16": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32",
    "f32": "float32",
}


def check_device_name(device: str) -> str:
    """Check the spelling of a device (no torch needed); raise :class:`DeviceError` naming the valid ones."""
    name = str(device).strip().lower()
    if _DEVICE_RE.match(name):
        return name
    close = _DEVICE_HINTS.get(name.replace(" ", ""))
    hint = f"; did you mean {close!r}?" if close else ""
    raise DeviceError(f"unknown device {device!r}{hint} valid: auto, cpu, cuda, cuda:N, mps")


def check_dtype_name(dtype: str) -> str:
    """Check the spelling of a dtype; raise :class:`DeviceError` naming the valid ones."""
    if dtype in DTYPES:
        return dtype
    close = _DTYPE_HINTS.get(str(dtype).strip().lower())
    hint = f"; did you mean {close!r}?" if close else ""
    raise DeviceError(f"unknown dtype {dtype!r}{hint} valid: {', '.join(DTYPES)}")


def pick_device(device: str = "auto") -> Any:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, checked to exist."""
    name = check_device_name(device)
    torch = require("torch", "hf", "running models")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            use = spell(cli="--device cpu (or auto, which picks CUDA when present)",
                        python="device='cpu' (or 'auto', which picks CUDA when present)")
            raise DeviceError(f"device {device!r} requested but CUDA is not available on this machine; use {use}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {device!r} requested but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r} requested but MPS (Apple GPU) is not available on this machine")
    return dev


def pick_dtype(dtype: str, device: Any) -> Any:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere; otherwise the named dtype."""
    torch = require("torch", "hf", "running models")
    check_dtype_name(dtype)
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
