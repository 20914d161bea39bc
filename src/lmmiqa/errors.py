"""Exceptions raised by lmmiqa.

Every error a user can trigger is a subclass of :class:`LmmiqaError`, so callers can catch one type.
Errors about names list the valid choices and, when one is close, suggest it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

#: where lmmiqa is being driven from: ``"python"`` (the default) or ``"cli"`` (set by the ``lmmiqa`` command)
INTERFACES = ("python", "cli")
_INTERFACE_ENV = "LMMIQA_INTERFACE"


class LmmiqaError(Exception):
    """Base class of every lmmiqa error."""


class ConfigError(LmmiqaError, ValueError):
    """An option has an invalid value (wrong range, wrong type, inconsistent with another option)."""


class DeviceError(ConfigError):
    """The device or dtype asked for is unknown or not available on this machine."""


class UnknownNameError(ConfigError, KeyError):
    """A name (method, backend, tool, dataset, ...) is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], aliases: dict[str, str] | None = None):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        aliases = aliases or {}
        pool = {**{k: k for k in self.known}, **aliases}
        close = difflib.get_close_matches(name, list(pool), n=1, cutoff=0.6)
        hint = f"; did you mean {pool[close[0]]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint} known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class MissingDependencyError(LmmiqaError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is required{what} but is not installed; install it with: pip install 'lmmiqa[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ImageLoadError(LmmiqaError):
    """An image could not be opened or failed validation (missing, truncated, not an image, too large)."""


class TokenizationError(LmmiqaError):
    """A candidate level is not exactly one token of the model's vocabulary in its context."""


class BackendError(LmmiqaError):
    """A backend failed: a model could not be loaded, a server returned an error, a capability is missing."""


class ModelLoadError(BackendError):
    """Model weights or processor could not be loaded (not found locally and not reachable online)."""


class ServerUnavailableError(ModelLoadError):
    """The model's server cannot be used: not reachable (connection refused, DNS, TLS, timeout), it refuses the
    API key, it does not serve the model named, or it cannot do what scoring needs (continue an answer prefix
    when that was required). A run-level error, like a model that cannot be loaded: the message names the URL
    and what to check."""


class UnsupportedError(BackendError):
    """The backend or model does not support what was asked (e.g. several images, hidden states)."""


class ParseError(LmmiqaError):
    """Free text from a model could not be parsed into the expected structure."""


class DataError(LmmiqaError):
    """A dataset, label file or saved artifact is missing, malformed or inconsistent."""


class InputNotFoundError(DataError, FileNotFoundError):
    """A file or folder the run was pointed at does not exist (a label file, a dataset ``--root``, an ``@list``
    file, the images a label file names): a set-up error, so the command line exits 2 before any work."""


class LmmiqaWarning(UserWarning):
    """Base class of lmmiqa's warnings (meant for the user: the command line prints them as ``warning: ...``,
    servers log them as one record; see :mod:`lmmiqa.logs`)."""


def set_interface(name: str) -> None:
    """Say which interface drives lmmiqa, so that hints name its spelling (``--model DIR`` vs ``model='DIR'``).

    The ``lmmiqa`` command calls ``set_interface("cli")``; it is stored in the environment too, so that worker
    processes (Ray actors) word their messages the same way.
    """
    if name not in INTERFACES:
        raise ConfigError(f"unknown interface {name!r}; known: {', '.join(INTERFACES)}")
    os.environ[_INTERFACE_ENV] = name


def interface() -> str:
    """The interface set by :func:`set_interface` (``"python"`` unless the command line set ``"cli"``)."""
    name = os.environ.get(_INTERFACE_ENV, "python")
    return name if name in INTERFACES else "python"


def spell(*, cli: str, python: str) -> str:
    """The wording of a hint for the interface in use: ``cli`` on the command line, ``python`` elsewhere."""
    return cli if interface() == "cli" else python


#: the one spelling of the download command used in every hint (huggingface_hub's ``hf`` command)
DOWNLOAD_COMMAND = "hf download {repo} --local-dir {folder}"


def download_hint(repo: str, folder: str) -> str:
    """``hf download REPO --local-dir FOLDER``: how to fetch a hub checkpoint on a connected machine."""
    return DOWNLOAD_COMMAND.format(repo=repo, folder=folder)


def is_run_level(err: BaseException) -> bool:
    """True for errors that no other input can avoid (a model, processor, segmenter or encoder that cannot be
    loaded, a missing dependency, an invalid option, a missing label file, ``--root`` or ``@list``): they end the
    run instead of failing one image, and the command line exits 2."""
    return isinstance(err, (ModelLoadError, MissingDependencyError, DeviceError, InputNotFoundError))


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from err
