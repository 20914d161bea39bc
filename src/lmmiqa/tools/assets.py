"""Parameter files of the classical tools: shipped inside the package, overridable by the user.

The official NIQE pristine model and BRISQUE SVR (and its shape tables) ship with lmmiqa in
``lmmiqa/tools/params/`` together with their licence files (NIQE model: Apache-2.0, BasicSR authors; BRISQUE
SVR and tables: MIT; see the ``NOTICE`` file). Nothing is downloaded. A tool looks for each file, in order:

1. in the folder given as the tool option ``assets`` (``lmmiqa tools run niqe --assets DIR``);
2. in the folder named by the environment variable ``$LMMIQA_ASSETS``;
3. in the package's own ``params/`` folder (the official files).

The first two are for user-fitted models (e.g. a NIQE pristine model fitted on your own photos): a folder
that holds only some of the files falls through to the shipped ones for the others. A folder that does not
exist is an error (a typo must not silently run the official model). Every file is checked for its arrays and
shapes; a sha256 that differs from the official one is reported (``source`` in the tool's details) but not
refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import DataError, UnknownNameError

log = logging.getLogger(__name__)

#: environment variable naming a folder that holds (user-fitted) parameter files
ENV_ASSETS = "LMMIQA_ASSETS"

#: the folder of the shipped, official parameter files (package data)
PACKAGE_DIR = Path(__file__).resolve().parent / "params"


@dataclass(frozen=True)
class AssetSpec:
    """One parameter file.

    Attributes:
        filename: the file name (also its name in every lookup folder).
        sha256: hex digest of the official file (the shipped one).
        arrays: array name -> expected shape (``None`` entries match any length on that axis).
        what: one line for messages (which tool, which model).
        license: licence of the parameters.
        license_file: the licence file shipped next to it.
    """

    filename: str
    sha256: str
    arrays: Mapping[str, tuple[int | None, ...]]
    what: str
    license: str
    license_file: str

    @property
    def shipped(self) -> Path:
        """Where the official copy is installed."""
        return PACKAGE_DIR / self.filename


ASSETS: dict[str, AssetSpec] = {
    spec.filename: spec
    for spec in (
        AssetSpec(
            "niqe_pris_params.npz",
            "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
            {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36), "gaussian_window": (7, 7)},
            "NIQE pristine multivariate Gaussian model of the original release (Mittal et al. 2012)",
            "Apache-2.0",
            "LICENSE-niqe-params-Apache-2.0",
        ),
        AssetSpec(
            "brisque_svm.npz",
            "ef5826e5fa5376627ec9d1c6b7fc8ca4089667e5dcf70da8315587505f653017",
            {"sv": (None, 36), "sv_coef": (None,), "gamma": (), "rho": (), "feat_min": (36,), "feat_range": (36,)},
            "BRISQUE epsilon-SVR trained on LIVE, with its feature scaling (Mittal et al. 2012)",
            "MIT",
            "LICENSE-brisque-params-MIT",
        ),
        AssetSpec(
            "brisque_ggd_tables.npz",
            "c1cc46318afd1ec24de987b0df6f764680e0b9c8b95387fa0722b6af119ebf50",
            {"gamma": (9801,), "r_ggd": (9801,), "r_aggd": (9801,)},
            "BRISQUE generalized-Gaussian shape lookup tables (grid 0.2:0.001:10)",
            "MIT",
            "LICENSE-brisque-params-MIT",
        ),
    )
}

#: what to do when the shipped copy is missing (an incomplete installation)
REINSTALL_HINT = (
    "the installation is incomplete: reinstall lmmiqa (`pip install --force-reinstall --no-deps lmmiqa`, or "
    "`pip install -e .` in a source checkout)"
)


class AssetError(DataError):
    """A parameter file is missing, unreadable, or not what it should be."""


def cache_root() -> Path:
    """The lmmiqa user cache folder: ``$XDG_CACHE_HOME/lmmiqa``, default ``~/.cache/lmmiqa`` (fitted maps)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmmiqa"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec(filename: str) -> AssetSpec:
    if filename not in ASSETS:
        raise UnknownNameError("asset", filename, ASSETS)
    return ASSETS[filename]


def candidate_dirs(user_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The folders searched, in order, as ``(where it came from, folder)``.

    Raises:
        AssetError: the ``assets`` option or ``$LMMIQA_ASSETS`` names a folder that does not exist.
    """
    out: list[tuple[str, Path]] = []
    if user_dir:
        folder = Path(user_dir).expanduser()
        if not folder.is_dir():
            raise AssetError(
                f"the 'assets' folder {folder} does not exist (option assets= / --assets); give a folder that "
                "holds your own parameter files, or leave the option out to use the official files shipped "
                "with lmmiqa"
            )
        out.append(("the 'assets' option", folder))
    env = os.environ.get(ENV_ASSETS)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise AssetError(
                f"${ENV_ASSETS}={env} is not a folder; point it at a folder with your own parameter files, or "
                f"unset it to use the official files shipped with lmmiqa"
            )
        out.append((f"${ENV_ASSETS}", folder))
    out.append(("lmmiqa (shipped)", PACKAGE_DIR))
    return out


def find(filename: str, user_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """``(path, where it came from)`` of a parameter file; see the module docstring for the order.

    Raises:
        AssetError: the file is in none of the folders; the message says how to fix it.
    """
    spec = _spec(filename)
    searched = candidate_dirs(user_dir)
    for label, folder in searched:
        path = folder / spec.filename
        if path.is_file():
            return path, label
    where = "; ".join(f"{label}: {folder / spec.filename}" for label, folder in searched)
    raise AssetError(
        f"{spec.filename} ({spec.what}) not found. Looked in {where}. The official file ships with lmmiqa, so "
        f"{REINSTALL_HINT}. Or put the file in a folder and pass --assets <folder> (Python: assets=<folder>) "
        f"or set {ENV_ASSETS}=<folder>."
    )


def locate(filename: str, user_dir: str | os.PathLike[str] | None = None) -> Path:
    """The path of a parameter file (see :func:`find`)."""
    return find(filename, user_dir)[0]


def validate_arrays(spec: AssetSpec, arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Check that every expected array is present with the expected shape and finite values."""
    for key, shape in spec.arrays.items():
        if key not in arrays:
            raise AssetError(f"{path}: array {key!r} missing (has: {', '.join(sorted(arrays))}); is this {spec.what}?")
        got = np.shape(arrays[key])
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            raise AssetError(f"{path}: array {key!r} has shape {got}, expected {shape}")
        if not np.all(np.isfinite(arrays[key])):
            raise AssetError(f"{path}: array {key!r} contains NaN or infinite values")


@dataclass(frozen=True)
class LoadedAsset:
    """A parameter file as read: its arrays (float64, read-only), path, lookup place and whether it is official."""

    arrays: Mapping[str, np.ndarray]
    path: Path
    where: str
    official: bool

    @property
    def source(self) -> str:
        """``"official"`` for the official file (shipped or an identical copy), else ``"user:<path>"``."""
        return "official" if self.official else f"user:{self.path}"


_lock = threading.Lock()
_loaded: dict[tuple[str, float, int], LoadedAsset] = {}


def load_asset(filename: str, user_dir: str | os.PathLike[str] | None = None) -> LoadedAsset:
    """Find, read (as float64, read-only) and validate a parameter file; cached per path, mtime and size.

    Thread-safe: concurrent callers share one read.
    """
    spec = _spec(filename)
    with _lock:
        path, where = find(filename, user_dir)
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
        official = sha256_of(path) == spec.sha256
        if not official:
            log.info("%s: not the official %s (sha256 differs); using it as given", path, spec.filename)
        for a in arrays.values():
            a.setflags(write=False)
        _loaded[key] = LoadedAsset(arrays, path, where, official)
        return _loaded[key]


def load_arrays(filename: str, user_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a parameter file (see :func:`load_asset`)."""
    return dict(load_asset(filename, user_dir).arrays)


def describe_assets(user_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """For each parameter file: where it is found (or ``None`` with ``problem`` and ``fix``), whether it is the
    official one, its licence and licence file."""
    out = []
    for spec in ASSETS.values():
        row: dict[str, Any] = {
            "file": spec.filename,
            "what": spec.what,
            "found": None,
            "where": None,
            "official": None,
            "sha256": spec.sha256,
            "license": spec.license,
            "license_file": str(PACKAGE_DIR / spec.license_file),
            "problem": None,
            "fix": None,
        }
        try:
            path, where = find(spec.filename, user_dir)
            row.update(found=str(path), where=where, official=sha256_of(path) == spec.sha256)
        except AssetError as err:
            row["problem"] = str(err)
            folder_problem = "does not exist" in str(err) or "is not a folder" in str(err)
            row["fix"] = (
                f"create that folder with your files, or drop --assets / unset {ENV_ASSETS} to use the shipped ones"
                if folder_problem
                else f"{REINSTALL_HINT}; or put {spec.filename} in a folder and pass --assets <folder>"
            )
        out.append(row)
    return out
