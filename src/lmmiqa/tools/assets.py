"""Parameter files of the classical tools: where they are looked up, how they are verified and fetched.

The NIQE pristine model and the BRISQUE SVR are data, not code, and are not shipped inside the package. A tool
looks for its file, in order:

1. in the folder given as the tool option ``assets`` (``lmmiqa tools run niqe --assets DIR``);
2. in the folder named by the environment variable ``$LMMIQA_ASSETS``;
3. in the user cache, ``$XDG_CACHE_HOME/lmmiqa/assets`` (default ``~/.cache/lmmiqa/assets``).

When it is in none of them, one download from :data:`ASSET_BASE_URL` into the user cache is attempted (set
``LMMIQA_OFFLINE=1`` to forbid it); the file must match its pinned sha256 or it is discarded. When that fails
too, :class:`AssetError` says exactly which file to place where. Files found in a user folder are checked for
their keys and shapes; a sha256 that differs from the official one is logged (a user may have fitted their own
model) but not refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import DataError, UnknownNameError

log = logging.getLogger(__name__)

#: where missing parameter files are downloaded from (maintainers may move it; the sha256 pins the content)
ASSET_BASE_URL = "https://github.com/lmmiqa/lmmiqa/releases/download/assets-v1/"

#: environment variable naming a folder that holds the parameter files
ENV_ASSETS = "LMMIQA_ASSETS"
#: environment variable that, when set to 1/true/yes, forbids downloads
ENV_OFFLINE = "LMMIQA_OFFLINE"

DOWNLOAD_TIMEOUT_S = 30.0
#: after a failed download, the same file is not tried again for this long (an agent may call a tool often)
RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class AssetSpec:
    """One parameter file.

    Attributes:
        filename: the file name (also its name in every lookup folder and at the download URL).
        sha256: hex digest of the official file.
        arrays: array name -> expected shape (``None`` entries match any length on that axis).
        what: one line for messages (which tool, which model).
        license: licence of the parameters.
    """

    filename: str
    sha256: str
    arrays: Mapping[str, tuple[int | None, ...]]
    what: str
    license: str

    @property
    def url(self) -> str:
        return ASSET_BASE_URL + self.filename


ASSETS: dict[str, AssetSpec] = {
    spec.filename: spec
    for spec in (
        AssetSpec(
            "niqe_pris_params.npz",
            "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
            {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36), "gaussian_window": (7, 7)},
            "NIQE pristine multivariate Gaussian model of the original release (Mittal et al. 2012)",
            "Apache-2.0",
        ),
        AssetSpec(
            "brisque_svm.npz",
            "ef5826e5fa5376627ec9d1c6b7fc8ca4089667e5dcf70da8315587505f653017",
            {"sv": (None, 36), "sv_coef": (None,), "gamma": (), "rho": (), "feat_min": (36,), "feat_range": (36,)},
            "BRISQUE epsilon-SVR trained on LIVE, with its feature scaling (Mittal et al. 2012)",
            "MIT",
        ),
        AssetSpec(
            "brisque_ggd_tables.npz",
            "c1cc46318afd1ec24de987b0df6f764680e0b9c8b95387fa0722b6af119ebf50",
            {"gamma": (9801,), "r_ggd": (9801,), "r_aggd": (9801,)},
            "BRISQUE generalized-Gaussian shape lookup tables (grid 0.2:0.001:10)",
            "MIT",
        ),
    )
}


class AssetError(DataError):
    """A parameter file is missing, unreadable, or not what it should be."""


def cache_root() -> Path:
    """The lmmiqa user cache folder: ``$XDG_CACHE_HOME/lmmiqa``, default ``~/.cache/lmmiqa``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmmiqa"


def assets_cache_dir() -> Path:
    """Where downloaded parameter files are kept."""
    return cache_root() / "assets"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def _spec(filename: str) -> AssetSpec:
    if filename not in ASSETS:
        raise UnknownNameError("asset", filename, ASSETS)
    return ASSETS[filename]


def candidate_dirs(user_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The folders searched, in order, as ``(where it came from, folder)``."""
    out: list[tuple[str, Path]] = []
    if user_dir:
        out.append(("the 'assets' option", Path(user_dir).expanduser()))
    env = os.environ.get(ENV_ASSETS)
    if env:
        out.append((f"${ENV_ASSETS}", Path(env).expanduser()))
    out.append(("the user cache", assets_cache_dir()))
    return out


def download(spec: AssetSpec, dest_dir: Path, url: str | None = None) -> Path:
    """Download ``spec`` into ``dest_dir`` (atomically) and verify its sha256; return the file path.

    Raises:
        AssetError: the download failed or the content does not match the pinned sha256.
    """
    import urllib.error
    import urllib.request

    url = url or spec.url
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=spec.filename + ".", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise AssetError(
                f"downloaded {spec.filename} from {url} has sha256 {digest}, expected {spec.sha256}; discarded"
            )
        final = dest_dir / spec.filename
        os.replace(tmp, final)
        log.info("downloaded %s to %s (sha256 verified)", spec.filename, final)
        return final
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise AssetError(f"could not download {spec.filename} from {url}: {err}") from err
    finally:
        if tmp.exists():
            tmp.unlink()


def _missing_message(spec: AssetSpec, searched: list[tuple[str, Path]], why: str) -> str:
    where = "; ".join(f"{label}: {folder / spec.filename}" for label, folder in searched)
    return (
        f"{spec.filename} ({spec.what}) not found. Looked in {where}. {why} "
        f"To fix it, place the file (sha256 {spec.sha256}) at {assets_cache_dir() / spec.filename}, "
        f"or put it in a folder and set {ENV_ASSETS}=<folder>, or pass the tool option assets=<folder> "
        f"(CLI: --assets <folder>). It can be downloaded from {spec.url}."
    )


_failed_downloads: dict[str, tuple[float, str]] = {}


def locate(filename: str, user_dir: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> Path:
    """Find a parameter file (see the module docstring for the order); download it when missing.

    Raises:
        AssetError: the file is nowhere and could not be downloaded; the message says where to put it.
    """
    spec = _spec(filename)
    searched = candidate_dirs(user_dir)
    for _label, folder in searched:
        path = folder / spec.filename
        if path.is_file():
            return path
    if user_dir is not None and not Path(user_dir).expanduser().is_dir():
        raise AssetError(_missing_message(spec, searched, f"The 'assets' folder {user_dir} does not exist."))
    if not allow_download or _offline():
        why = f"Downloads are disabled ({ENV_OFFLINE} is set)." if _offline() else "Downloads were not allowed."
        raise AssetError(_missing_message(spec, searched, why))
    failed = _failed_downloads.get(spec.filename)
    if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER_S:
        raise AssetError(_missing_message(spec, searched, f"The download failed {failed[1]} (not retried yet)."))
    try:
        return download(spec, assets_cache_dir())
    except AssetError as err:
        _failed_downloads[spec.filename] = (time.monotonic(), f"recently: {err}")
        raise AssetError(_missing_message(spec, searched, f"The download failed: {err}.")) from err


def validate_arrays(spec: AssetSpec, arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Check that every expected array is present with the expected shape."""
    for key, shape in spec.arrays.items():
        if key not in arrays:
            raise AssetError(f"{path}: array {key!r} missing (has: {', '.join(sorted(arrays))}); is this {spec.what}?")
        got = np.shape(arrays[key])
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            raise AssetError(f"{path}: array {key!r} has shape {got}, expected {shape}")
        if not np.all(np.isfinite(arrays[key])):
            raise AssetError(f"{path}: array {key!r} contains NaN or infinite values")


_lock = threading.Lock()
_loaded: dict[tuple[str, float, int], dict[str, np.ndarray]] = {}


def load_arrays(filename: str, user_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Locate, read (as float64, read-only) and validate a parameter file; cached per path and mtime.

    Thread-safe: concurrent callers share one read.
    """
    spec = _spec(filename)
    with _lock:
        path = locate(filename, user_dir)
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime, st.st_size)
        if key in _loaded:
            return _loaded[key]
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.array(npz[k], dtype=np.float64) for k in npz.files}
        except (OSError, ValueError) as err:
            raise AssetError(f"{path}: cannot read {spec.filename} as a .npz file ({err})") from err
        validate_arrays(spec, arrays, path)
        digest = sha256_of(path)
        if digest != spec.sha256:
            log.warning("%s: sha256 %s differs from the official %s (using it as given)", path, digest, spec.sha256)
        for a in arrays.values():
            a.setflags(write=False)
        _loaded[key] = arrays
        return arrays


def describe_assets(user_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """For each parameter file: where it was found (or ``None``), its sha256 status, licence and URL."""
    out = []
    for spec in ASSETS.values():
        found = None
        for _label, folder in candidate_dirs(user_dir):
            if (folder / spec.filename).is_file():
                found = folder / spec.filename
                break
        out.append(
            {
                "file": spec.filename,
                "what": spec.what,
                "found": str(found) if found else None,
                "official": (sha256_of(found) == spec.sha256) if found else None,
                "sha256": spec.sha256,
                "license": spec.license,
                "url": spec.url,
            }
        )
    return out
