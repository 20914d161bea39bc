"""How warnings are shown: one plain line on the command line, one log record in servers and workers.

Python prints a warning as ``path/to/module.py:212: SomeWarning: message`` followed by the source line, which
reads like a traceback. lmmiqa's own warnings (subclasses of :class:`lmmiqa.errors.LmmiqaWarning`, such as the
covered-mass warning) are meant for the user, so:

* the command line shows every warning as one line, ``warning: <message>`` (:func:`cli_formatwarning`; other
  libraries' warnings keep their category and origin on that line);
* a server (``lmmiqa serve``) logs each warning as one record of the ``lmmiqa.warnings`` logger
  (:func:`log_warnings`), with ``warning_category`` and ``warning_origin`` as record attributes for structured
  log handlers;
* Ray workers use the command-line form, so the driver relays one plain line per warning.

Only the *display* changes: :func:`cli_formatwarning` replaces :func:`warnings.formatwarning`, which Python
uses when it prints a warning, never when a warning is recorded (``warnings.catch_warnings(record=True)``,
``pytest.warns``), so Python callers and tests see the warning objects unchanged.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

from lmmiqa.errors import LmmiqaWarning

#: the logger that :func:`log_warnings` sends warnings to
WARNINGS_LOGGER = "lmmiqa.warnings"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def warning_line(message: Any, category: type[Warning], filename: str = "", lineno: int = 0) -> str:
    """``warning: <message>`` for lmmiqa's warnings; ``warning: <Category>: <message> (<file>:<line>)`` for others."""
    text = _one_line(str(message))
    if isinstance(category, type) and issubclass(category, LmmiqaWarning):
        return f"warning: {text}"
    origin = f" ({os.path.basename(filename)}:{lineno})" if filename else ""
    return f"warning: {getattr(category, '__name__', 'Warning')}: {text}{origin}"


def cli_formatwarning(message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A drop-in :func:`warnings.formatwarning` giving :func:`warning_line` and a newline."""
    return warning_line(message, category, filename, lineno) + "\n"


def show_warnings_as_lines() -> Callable[[], None]:
    """Print warnings as one plain line each (command line, Ray workers); returns a function that undoes it."""
    previous = warnings.formatwarning
    warnings.formatwarning = cli_formatwarning  # type: ignore[assignment]

    def undo() -> None:
        if warnings.formatwarning is cli_formatwarning:
            warnings.formatwarning = previous

    return undo


def log_warnings(logger: str = WARNINGS_LOGGER) -> Callable[[], None]:
    """Send every warning to ``logger`` as one WARNING record (servers); returns a function that undoes it.

    The record's message is the warning's text on one line; ``warning_category`` (the class name) and
    ``warning_origin`` (``file:line``) are set on the record for structured handlers.
    """
    log = logging.getLogger(logger)
    previous = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        log.warning("%s", _one_line(str(message)), extra={
            "warning_category": getattr(category, "__name__", "Warning"),
            "warning_origin": f"{filename}:{lineno}",
        })

    warnings.showwarning = show  # type: ignore[assignment]

    def undo() -> None:
        if warnings.showwarning is show:
            warnings.showwarning = previous

    return undo
