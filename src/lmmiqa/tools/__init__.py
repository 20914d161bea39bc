"""Classical image quality tools: NR (NIQE, BRISQUE, PIQE and simple cues) and FR (PSNR, SSIM, MS-SSIM, GMSD).

Each tool is registered in :data:`lmmiqa.registry.TOOLS`; with pyiqa installed its metrics are tools too
(``pyiqa:<metric>``, see :mod:`lmmiqa.tools.pyiqa_adapter`). Every tool maps its raw value to 1–5 with a
five-parameter logistic (:mod:`lmmiqa.tools.maps`).

Example::

    from lmmiqa.tools import run_tool, tool_catalog
    r = run_tool("niqe", "photo.jpg")            # ToolResult(tool, image, raw, normalized, error, ...)
    r = run_tool("ssim", "dist.png", ref="ref.png")
    for info in tool_catalog(kind="nr"):
        print(info.text())                        # the line an agent shows the VLM
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from lmmiqa.tools.base import FR, NR, Tool, ToolError, ToolInfo, ToolResult

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "FR",
    "NR",
    "Tool",
    "ToolError",
    "ToolInfo",
    "ToolResult",
    "get_tool",
    "list_tools",
    "run_tool",
    "tool_catalog",
]


def list_tools(include_pyiqa: bool = True) -> list[str]:
    """Registered tool names, sorted, then ``pyiqa:*`` names when pyiqa is installed."""
    from lmmiqa import registry

    names = registry.names("tool")
    if include_pyiqa:
        from lmmiqa.tools import pyiqa_adapter

        names += pyiqa_adapter.tool_names()
    return names


def get_tool(name: str, **options: Any) -> Tool:
    """A new tool instance by name (``"niqe"``, ``"ssim"``, ``"pyiqa:topiq_nr"``), built from ``options``.

    Raises:
        UnknownNameError: no such tool (the message lists the valid names).
        ConfigError: an option is unknown or invalid.
    """
    from lmmiqa.tools.pyiqa_adapter import PREFIX

    key = name.strip()
    if key.lower().startswith(PREFIX):
        from lmmiqa.config import build_config
        from lmmiqa.tools.pyiqa_adapter import PyiqaTool

        device = options.pop("device", None)
        cfg = build_config(PyiqaTool.config_cls, {k: v for k, v in options.items() if v is not None}, what=f"tool {key!r}")
        return PyiqaTool(key[len(PREFIX) :], cfg, device=device)
    from lmmiqa import registry

    try:
        cls = registry.resolve("tool", key)
    except KeyError:
        from lmmiqa.errors import UnknownNameError

        raise UnknownNameError("tool", name, list_tools()) from None
    return cls.from_options(**options)


_default_lock = threading.Lock()
_defaults: dict[str, Tool] = {}


def _default_tool(name: str) -> Tool:
    with _default_lock:
        if name not in _defaults:
            _defaults[name] = get_tool(name)
        return _defaults[name]


def run_tool(name: str, image: Any, ref: Any = None, **options: Any) -> ToolResult:
    """Run one tool on one image (and its reference, for FR tools); thread-safe.

    A bad image or an input the tool cannot measure gives a :class:`ToolResult` with ``error`` set; an unknown
    tool name or option raises (those are programming errors, not data errors).
    """
    tool = get_tool(name, **options) if options else _default_tool(name)
    return tool.run(image, ref)


def tool_catalog(kind: str | None = None, names: Iterable[str] | None = None, include_pyiqa: bool = True) -> list[ToolInfo]:
    """:class:`ToolInfo` of every tool (or of ``names``), optionally only ``kind`` ``"nr"`` or ``"fr"``."""
    from lmmiqa.errors import ConfigError

    if kind is not None and kind not in (NR, FR):
        raise ConfigError(f"kind must be 'nr' or 'fr', got {kind!r}")
    out = []
    for n in names if names is not None else list_tools(include_pyiqa):
        info = _default_tool(n).info()
        if kind is None or info.kind == kind:
            out.append(info)
    return out
