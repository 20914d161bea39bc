"""Fail fast when a Hugging Face hub checkpoint cannot be had, before ``from_pretrained`` spends minutes retrying.

Every component that loads weights by hub id (the transformers backend, the SAM 2 segmenter, the retrieval
encoders) calls :func:`resolve_local_only` first. A reference that looks like a path (:func:`looks_like_path`:
``/models/x``, ``./x``, ``~/x``, ``a/b/c``) is a local folder and never looked up on the hub: when there is no
such folder, :class:`~lmmiqa.errors.ModelLoadError` says so at once. For a reference that is not a local folder:

* offline mode (``HF_HUB_OFFLINE=1``, or ``local_files_only=True``) and the checkpoint is not in the local
  cache: :class:`~lmmiqa.errors.ModelLoadError` at once;
* otherwise, when it is not cached, one short request to the hub endpoint (``LMMIQA_HUB_TIMEOUT`` seconds,
  default 5) tells whether the hub is reachable; when it is not, :class:`~lmmiqa.errors.ModelLoadError` at once
  instead of the hub client's retries (minutes per file);
* cached and the hub unreachable: load from the cache only (``local_files_only=True``), with no retries.

The error says what is missing, how to download it on a connected machine and how to pass the folder, in the
words of the interface in use (:func:`lmmiqa.errors.spell`).
"""

from __future__ import annotations

import logging
import os
import time

from lmmiqa.errors import ModelLoadError, download_hint, spell

log = logging.getLogger(__name__)

#: seconds the reachability probe waits for the hub (environment: ``LMMIQA_HUB_TIMEOUT``)
DEFAULT_PROBE_TIMEOUT = 5.0
#: a probe result is reused for this many seconds (one probe per run, not one per component)
_PROBE_TTL = 60.0
_probe_cache: dict[str, tuple[float, str | None]] = {}


def offline_mode() -> bool:
    """True when the environment asks for no network access (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(var, "0").strip().lower() not in ("", "0", "false", "no", "off")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_path(ref: str) -> bool:
    """True when ``ref`` cannot be a hub id and so must be a path: it starts with ``/``, ``./``, ``../``, ``~``
    or a drive letter, holds a backslash, more than one ``/`` or a trailing ``/`` (a hub id is ``name`` or
    ``owner/name``)."""
    return (
        ref.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in ref
        or ref.count("/") > 1
        or ref.endswith("/")
        or (len(ref) > 1 and ref[1] == ":" and ref[0].isalpha())
    )


def is_local_reference(ref: str) -> bool:
    """True when ``ref`` names a folder on disk (or looks like a path rather than a hub id)."""
    return os.path.isdir(os.path.expanduser(ref)) or looks_like_path(ref) or os.path.exists(ref)


def missing_folder_message(ref: str, what: str = "model") -> str | None:
    """Why a path-looking ``ref`` cannot be loaded (no such folder, or a file), or None when it is a folder or a
    hub id. Checked before anything heavy is imported, so a mistyped ``--model /models/x`` fails at once."""
    path = os.path.expanduser(ref)
    if os.path.isdir(path) or not is_local_reference(ref):
        return None
    if os.path.exists(path):
        return (f"cannot load {what} {ref!r}: it is a file, not a folder; pass the folder that holds its "
                "config.json and weights (as written by save_pretrained or `hf download --local-dir`)")
    parent = os.path.dirname(os.path.abspath(path.rstrip("/\\")))
    where = "" if os.path.isdir(parent) else f" (nor does its parent folder {parent!r})"
    return (f"cannot load {what} {ref!r}: no such folder{where}. A path is used as a local folder, never looked "
            "up on the hub; check the path, or give a hub id such as 'Qwen/Qwen3-VL-8B-Instruct'")


def in_cache(repo_id: str, revision: str | None = None) -> bool:
    """True when the hub cache holds ``config.json`` of ``repo_id`` (so ``local_files_only`` loading can work)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an id that is not a valid repo id: let from_pretrained word the error
        return False
    return isinstance(found, str)


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def probe_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("LMMIQA_HUB_TIMEOUT", DEFAULT_PROBE_TIMEOUT)))
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT


def hub_unreachable(timeout: float | None = None) -> str | None:
    """None when the hub endpoint answers within ``timeout`` seconds, else why not (one attempt, no retries)."""
    endpoint = _endpoint()
    now = time.monotonic()
    cached = _probe_cache.get(endpoint)
    if cached is not None and now - cached[0] < _PROBE_TTL:
        return cached[1]
    timeout = probe_timeout() if timeout is None else timeout
    reason: str | None = None
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint, timeout=timeout)
    except ImportError:  # pragma: no cover
        reason = None
    except Exception as err:  # connection refused, DNS failure, timeout, proxy error
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        reason = f"{endpoint} could not be reached within {timeout:g} s ({type(err).__name__}" + (
            f": {detail})" if detail else ")"
        )
    _probe_cache[endpoint] = (now, reason)
    return reason


def missing_message(ref: str, why: str, *, what: str, folder: str, pass_as: str | None = None) -> str:
    """The one message for a checkpoint that cannot be had: what, why, how to download, how to pass it."""
    where = pass_as or spell(cli=f"--model {folder}", python=f"model={folder!r}")
    return (
        f"cannot load {what} {ref!r}: {why}. Download it on a connected machine with "
        f"`{download_hint(ref, folder)}`, copy the folder here and pass {where}"
        " (or run once with network access: the Hugging Face cache is then used offline)."
    )


def resolve_local_only(
    ref: str,
    local_files_only: bool | None,
    *,
    revision: str | None = None,
    what: str = "model",
    folder: str | None = None,
    pass_as: str | None = None,
) -> bool:
    """The ``local_files_only`` to load ``ref`` with, or :class:`ModelLoadError` at once when it cannot be had.

    Args:
        ref: hub id or local folder.
        local_files_only: the caller's setting (``HF_HUB_OFFLINE=1`` makes it true in any case).
        revision: hub revision.
        what: what is loaded, for the message ("model", "the SAM 2 checkpoint", "encoder").
        folder: the example folder in the message (default ``./<repo name>``).
        pass_as: how to pass that folder, already in the interface's words (default ``--model FOLDER`` on the
            command line, ``model='FOLDER'`` in Python).
    """
    offline = offline_mode()  # HF_HUB_OFFLINE wins: huggingface_hub itself would not go online
    local_only = offline or bool(local_files_only)
    if is_local_reference(ref):
        missing = missing_folder_message(ref, what)
        if missing is not None:
            raise ModelLoadError(missing)
        return local_only
    if in_cache(ref, revision):
        if not local_only and hub_unreachable() is not None:
            log.info("%s: the hub is unreachable; loading %s from the local cache", ref, what)
            return True
        return local_only
    folder = folder or "./" + ref.rstrip("/").rsplit("/", 1)[-1]
    if local_only:
        why = (
            "it is not a local folder and not in the Hugging Face cache, and offline mode is on (HF_HUB_OFFLINE=1)"
            if offline
            else "it is not a local folder and not in the Hugging Face cache (local_files_only)"
        )
        raise ModelLoadError(missing_message(ref, why, what=what, folder=folder, pass_as=pass_as))
    reason = hub_unreachable()
    if reason is not None:
        why = f"it is not a local folder, not in the Hugging Face cache, and the hub is unreachable: {reason}"
        raise ModelLoadError(missing_message(ref, why, what=what, folder=folder, pass_as=pass_as))
    return local_only


def read_checkpoint_json(name_or_path: str, filename: str, **hub_kwargs: object) -> dict | None:
    """A JSON file of a checkpoint (``config.json``, ``preprocessor_config.json``, ...) as a dict.

    Args:
        name_or_path: a local folder, or a hub id (read from the cache, or fetched as ``from_pretrained`` would,
            through transformers' ``cached_file``).
        filename: the file inside it.
        **hub_kwargs: ``subfolder``, ``revision``, ``local_files_only``, ``cache_dir``, ``token``...

    Returns:
        The parsed object, or None when the file is absent, unreadable or not a JSON object.
    """
    import json

    subfolder = str(hub_kwargs.get("subfolder") or "")
    if os.path.isdir(name_or_path):
        local = os.path.join(name_or_path, subfolder, filename)
        resolved: str | None = local if os.path.isfile(local) else None
    else:
        try:
            from transformers.utils import cached_file
        except ImportError:
            return None
        kwargs = {k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"}
        try:
            resolved = cached_file(
                name_or_path,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **kwargs,
            )
        except Exception:
            return None
    if resolved is None:
        return None
    try:
        with open(resolved, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
