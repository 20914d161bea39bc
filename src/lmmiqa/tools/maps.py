"""Per-tool maps from a raw tool value to the 1–5 quality scale (AgenticIQA, METHODS.md §5.3).

Every map is the standard five-parameter logistic ``q̂ = β1·(1/2 − 1/(1 + exp(β2·(q − β3)))) + β4·q + β5``
(:func:`lmmiqa.evaluation.logistic.logistic5`), clipped to [1, 5]. Where a map comes from, in order of use:

1. **fitted** — refitted by the user on a labeled set (``lmmiqa tools fit``), stored as JSON in
   ``$XDG_CACHE_HOME/lmmiqa/maps/<tool>.json`` and used by the tools themselves afterwards (:func:`active_map`).
   The AgenticIQA agent never picks them up silently: it uses refitted maps only when they are chosen
   (``--tool-maps FILE``, option ``tool_maps``; :func:`load_map_set`, :func:`select_map`), and its results
   record which maps ran and what they were fitted on;
2. **paper** — the β printed by AgenticIQA (fitted on KADID-10k MOS) for the tools it shares with lmmiqa:
   NIQE, BRISQUE, SSIM, GMSD, Q-Align (and FSIM, VIF, LPIPS for the pyiqa adapter);
3. **synthetic** — fitted by ``scripts/fit_tool_maps.py`` on a synthetic distortion ladder whose pseudo-MOS
   comes from the distortion severity, not from people (see :mod:`lmmiqa.tools._synthetic_maps`).

A tool with none of these has no map (its ``normalized`` value is ``None`` and says so).

Fitted maps (refitted and synthetic) carry the ``domain`` of raw values they were fitted on; raw values outside
it are clamped to it before the logistic, so that the line term of a 5PL cannot turn the map around far from
the data (e.g. at very strong noise). The paper's maps are used as printed, without a domain.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError
from lmmiqa.tools._synthetic_maps import SYNTHETIC_MAPS
from lmmiqa.tools.assets import cache_root

SCHEMA_VERSION = 1
CLIP = (1.0, 5.0)

#: AgenticIQA's β1..β5 (KADID-10k fit), METHODS.md §5.3, keyed by lmmiqa tool name
PAPER_BETAS: dict[str, tuple[float, float, float, float, float]] = {
    "niqe": (-1.4174, 0.8785, 6.9416, -0.0059, 2.7374),
    "brisque": (-2.2106, 0.0684, 54.3418, 0.0050, 2.2728),
    "q-align": (28.8204, 0.1469, 6.1941, -0.1906, 6.7863),
    "ssim": (94.4202, 64.9155, 1.0664, 2.8744, 47.6819),
    "gmsd": (-5.9925, -23.3876, -59.6895, -13.8274, 1.0789),
    "fsim": (265.7031, 23.2940, 1.2003, 1.9193, 133.0061),
    "vif": (0.4119, 49.7978, 0.2237, 2.4370, 1.3850),
    "lpips": (-2.0915, 3.7543, -28.0133, -4.7251, 4.9710),
}

PAPER_NOTE = "AgenticIQA β (5-parameter logistic fitted on KADID-10k MOS), METHODS.md §5.3"


@dataclass(frozen=True)
class ToolMap:
    """A five-parameter logistic map to [1, 5].

    Attributes:
        params: β1..β5.
        source: ``"paper"``, ``"synthetic"`` or ``"fitted"``.
        note: where the β come from, in words.
        fit: for fitted/synthetic maps, facts about the fit (n, converged, correlations, data, date).
        domain: ``(low, high)`` raw values the map was fitted on (raw values are clamped to it), or ``None``.
    """

    params: tuple[float, float, float, float, float]
    source: str
    note: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    domain: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.params) != 5 or not all(math.isfinite(float(p)) for p in self.params):
            raise ConfigError(f"a tool map needs 5 finite parameters, got {self.params!r}")
        if self.source not in ("paper", "synthetic", "fitted"):
            raise ConfigError(f"unknown map source {self.source!r}; known: paper, synthetic, fitted")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if self.domain is not None:
            lo, hi = (float(v) for v in self.domain)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ConfigError(f"a map domain needs finite low <= high, got {self.domain!r}")
            object.__setattr__(self, "domain", (lo, hi))

    def apply(self, raw: float) -> float:
        """Map one raw value to [1, 5] (``nan`` stays ``nan``; ``±inf`` saturates or is clamped)."""
        return float(self.apply_many(raw))

    def apply_many(self, raw: Any) -> np.ndarray:
        """Map an array of raw values (clamped to :attr:`domain` when there is one)."""
        x = np.asarray(raw, dtype=np.float64)
        if self.domain is not None:
            x = np.clip(x, *self.domain)
        return apply_map(self.params, x)

    def to_dict(self) -> dict[str, Any]:
        from lmmiqa.types import json_safe

        return {
            "form": "logistic5",
            "params": list(self.params),
            "clip": list(CLIP),
            "source": self.source,
            "note": self.note,
            "domain": list(self.domain) if self.domain is not None else None,
            "fit": json_safe(self.fit),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolMap:
        if data.get("form", "logistic5") != "logistic5":
            raise DataError(f"unsupported map form {data.get('form')!r}; expected logistic5")
        domain = data.get("domain")
        return cls(tuple(data["params"]), str(data.get("source", "fitted")), str(data.get("note", "")),
                   dict(data.get("fit") or {}), tuple(domain) if domain is not None else None)


def apply_map(params: Sequence[float], raw: Any) -> np.ndarray:
    """``clip(logistic5(raw, *params), 1, 5)`` elementwise (pure function)."""
    from lmmiqa.evaluation.logistic import logistic5

    x = np.asarray(raw, dtype=np.float64)
    b1, b2, _b3, b4, b5 = (float(p) for p in params)
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.asarray(logistic5(x, *params), dtype=np.float64)
    inf = np.isinf(x)
    if np.any(inf):  # the limits, without inf − inf or 0·inf (e.g. PSNR of identical images)
        sx = np.sign(x[inf])
        if b4 != 0.0:
            lim = np.sign(b4) * sx * np.inf
        else:
            lim = b1 * 0.5 * np.sign(b2) * sx + b5
        y = np.array(y, copy=True)
        y[inf] = lim
    return np.clip(y, *CLIP)


def rescale_mos(
    mos: Sequence[float], score_range: tuple[float, float] | None, higher_is_better: bool
) -> np.ndarray:
    """Map opinion scores linearly onto 1–5 (5 = best) before fitting.

    ``score_range`` is the published range of the scale; without it the observed min/max are used.
    Lower-is-better scales (DMOS) are flipped.
    """
    y = np.asarray(mos, dtype=np.float64)
    finite = y[np.isfinite(y)]
    if finite.size == 0:
        raise DataError("no finite opinion scores to fit a map on")
    lo, hi = score_range if score_range is not None else (float(finite.min()), float(finite.max()))
    if not hi > lo:
        raise DataError(f"the score range must have high > low, got ({lo}, {hi})")
    z = 1.0 + 4.0 * (y - lo) / (hi - lo)
    return z if higher_is_better else 6.0 - z


def fit_map(
    raw: Sequence[float],
    mos: Sequence[float],
    *,
    score_range: tuple[float, float] | None = None,
    higher_is_better: bool = True,
    source: str = "fitted",
    note: str = "",
    extra: Mapping[str, Any] | None = None,
) -> ToolMap:
    """Fit a tool map: raw tool values -> opinion scores rescaled to 1–5 (see :func:`rescale_mos`).

    Uses :func:`lmmiqa.evaluation.logistic.fit_logistic5`; when that falls back to a line, the map is still
    returned and ``fit["converged"]`` is false, with the reason in ``fit["fallback"]``. When the fitted curve is
    not monotone over the data (the line term ``β4·q`` turns it around), it is refitted with ``β4 = 0`` — a
    plain logistic, monotone by construction — and ``fit["constraint"]`` says so.
    """
    from lmmiqa.evaluation.logistic import fit_logistic5

    x = np.asarray(raw, dtype=np.float64)
    y = rescale_mos(mos, score_range, higher_is_better)
    if x.shape != y.shape:
        raise DataError(f"raw values and scores differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    if int(keep.sum()) < 6:
        raise DataError(f"a 5-parameter map needs at least 6 scored images, got {int(keep.sum())}")
    res = fit_logistic5(x[keep], y[keep])
    from scipy.stats import pearsonr, spearmanr

    domain = (float(x[keep].min()), float(x[keep].max()))
    params, converged, fallback, constraint = tuple(res.params), bool(res.converged), res.fallback, None
    if converged and _monotone(params, domain) is None:
        refit = _fit_without_line(x[keep], y[keep])
        if refit is not None:
            params, constraint = refit, "β4 = 0 (the unconstrained 5-parameter fit was not monotone over the data)"
    pred = apply_map(params, x[keep])
    facts: dict[str, Any] = {
        "n": int(keep.sum()),
        "converged": converged,
        "fallback": fallback,
        "constraint": constraint,
        "srcc_raw": float(spearmanr(x[keep], y[keep]).statistic) if np.ptp(x[keep]) > 0 else None,
        "plcc_mapped": float(pearsonr(pred, y[keep]).statistic) if np.ptp(pred) > 0 else None,
        "rmse_mapped": float(np.sqrt(np.mean((pred - y[keep]) ** 2))),
        "monotone": _monotone(params, domain),
        "score_range": list(score_range) if score_range is not None else None,
        "higher_is_better": bool(higher_is_better),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        facts.update(dict(extra))
    return ToolMap(params, source, note, facts, domain)  # type: ignore[arg-type]


def _fit_without_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Least-squares fit of the 5PL with ``β4 = 0`` (standardized coordinates); ``None`` if it fails."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit
    from scipy.special import expit

    mx, sx, my, sy = float(x.mean()), float(x.std()), float(y.mean()), float(y.std())
    if sx == 0.0 or sy == 0.0:
        return None
    u, v = (x - mx) / sx, (y - my) / sy

    def f(t: np.ndarray, c1: float, c2: float, c3: float, c5: float) -> np.ndarray:
        return c1 * (0.5 - expit(-c2 * (t - c3))) + c5

    sign = 1.0 if float(np.mean(u * v)) >= 0 else -1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            c, _ = curve_fit(f, u, v, p0=[sign * float(np.ptp(v)), 1.0, 0.0, 0.0], maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(c)):
        return None
    c1, c2, c3, c5 = (float(t) for t in c)
    return (sy * c1, c2 / sx, mx + sx * c3, 0.0, my + sy * c5)


def _monotone(params: Sequence[float], domain: tuple[float, float]) -> str | None:
    """``"increasing"`` / ``"decreasing"`` when the map is monotone over ``domain`` (1024-point grid), else
    ``None`` (a warning sign: the fitted curve turns around inside the data)."""
    grid = np.linspace(domain[0], domain[1], 1024)
    d = np.diff(apply_map(params, grid))
    if np.all(d >= -1e-12):
        return "increasing"
    if np.all(d <= 1e-12):
        return "decreasing"
    return None


# --------------------------------------------------------------------------- stored (refitted) maps


def maps_dir() -> Path:
    """Where refitted maps are stored: ``$XDG_CACHE_HOME/lmmiqa/maps``."""
    return cache_root() / "maps"


def _file_name(tool: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in tool) + ".json"


def fitted_map_path(tool: str) -> Path:
    """The JSON file holding the user's refitted map of ``tool``."""
    return maps_dir() / _file_name(tool)


_lock = threading.Lock()
_fitted_cache: dict[str, tuple[float, ToolMap]] = {}


def load_fitted_map(tool: str) -> ToolMap | None:
    """The user's refitted map of ``tool``, or ``None``; re-read when the file changes. Thread-safe."""
    path = fitted_map_path(tool)
    with _lock:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            _fitted_cache.pop(str(path), None)
            return None
        hit = _fitted_cache.get(str(path))
        if hit is not None and hit[0] == mtime:
            return hit[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if int(data.get("schema_version", 0)) != SCHEMA_VERSION:
                raise DataError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            if data.get("tool") != tool:
                raise DataError(f"map is for tool {data.get('tool')!r}, not {tool!r}")
            m = ToolMap.from_dict(data["map"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError, DataError) as err:
            raise DataError(
                f"cannot use the refitted map {path} for {tool!r}: {err}; refit it with "
                f"`lmmiqa tools fit --tool {tool} ...` or delete the file"
            ) from err
        _fitted_cache[str(path)] = (mtime, m)
        return m


def save_fitted_map(tool: str, tool_map: ToolMap) -> Path:
    """Store ``tool_map`` as the user's map of ``tool`` (atomically); it is used from now on."""
    path = fitted_map_path(tool)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, "tool": tool, "map": tool_map.to_dict()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    with _lock:
        _fitted_cache.pop(str(path), None)
    return path


def delete_fitted_map(tool: str) -> bool:
    """Remove the user's refitted map of ``tool``; true when there was one."""
    path = fitted_map_path(tool)
    with _lock:
        _fitted_cache.pop(str(path), None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
    return True


# --------------------------------------------------------------------------- lookup


def paper_map(tool: str) -> ToolMap | None:
    """AgenticIQA's map of ``tool``, if the paper gives one."""
    betas = PAPER_BETAS.get(tool)
    return ToolMap(betas, "paper", PAPER_NOTE) if betas else None


def synthetic_map(tool: str) -> ToolMap | None:
    """The shipped synthetic-ladder map of ``tool``, if there is one."""
    entry = SYNTHETIC_MAPS.get(tool)
    if entry is None:
        return None
    return ToolMap(tuple(entry["params"]), "synthetic", str(entry["note"]), dict(entry.get("fit", {})),
                   tuple(entry["domain"]))


def default_map(tool: str) -> ToolMap | None:
    """The map shipped with lmmiqa: the paper's where it has one, else the synthetic one, else ``None``."""
    return paper_map(tool) or synthetic_map(tool)


def active_map(tool: str) -> ToolMap | None:
    """The map in use: the user's refitted one when present, else :func:`default_map`."""
    return load_fitted_map(tool) or default_map(tool)


# --------------------------------------------------------------------------- explicitly chosen maps (the agent)

#: the facts about a refitted map's data that results record (``fitted_on``)
FITTED_ON_KEYS = ("dataset", "labels", "root", "split", "n", "synthetic", "score_range", "higher_is_better", "created")


@dataclass(frozen=True)
class MapSet:
    """Refitted tool maps chosen explicitly for a run (``--tool-maps FILE``; the agent's ``tool_maps`` option).

    Refitted maps are never a silent global default for the agent: without a map set it uses the shipped maps
    (:func:`default_map`) whatever the user cache holds.

    Attributes:
        maps: tool name -> map.
        path: the file or folder they were read from.
        files: tool name -> the file that held its map.
        sha256: digest of the maps' content (tool names and parameters), to tell map sets apart in results.
    """

    maps: dict[str, ToolMap]
    path: str
    files: dict[str, str]
    sha256: str

    def describe(self) -> dict[str, Any]:
        """JSON-safe record for results and run configs: where the maps came from and what they were fitted on."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "tools": {name: map_record(m, self.files.get(name)) for name, m in sorted(self.maps.items())},
        }


def _map_entry(data: Any, where: str, tool: str | None = None) -> tuple[str, ToolMap]:
    if not isinstance(data, Mapping):
        raise DataError(f"{where}: expected a JSON object")
    if int(data.get("schema_version", 0)) != SCHEMA_VERSION:
        raise DataError(f"{where}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    name = str(data.get("tool") or tool or "")
    if not name or "map" not in data:
        raise DataError(f"{where}: expected {{'schema_version', 'tool', 'map'}} as written by `lmmiqa tools fit`")
    return name, ToolMap.from_dict(data["map"])


def load_map_set(path: str | os.PathLike[str]) -> MapSet:
    """Read refitted maps chosen for a run.

    ``path`` is one map file as ``lmmiqa tools fit`` writes it (``{"schema_version", "tool", "map"}``), a bundle
    ``{"schema_version": 1, "maps": {tool: map, ...}}``, or a folder of map files (e.g. the user cache,
    :func:`maps_dir`).

    Raises:
        ConfigError: ``path`` does not exist, or a tool name is not a registered tool.
        DataError: a file is not a valid map file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"tool maps {p} not found (a file written by `lmmiqa tools fit`, a bundle, or a folder)")
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"tool maps folder {p} holds no map file (*.json)")
    maps: dict[str, ToolMap] = {}
    sources: dict[str, str] = {}
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(data, Mapping) and "maps" in data:
                if int(data.get("schema_version", 0)) != SCHEMA_VERSION:
                    raise DataError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
                entries = [(str(t), ToolMap.from_dict(m)) for t, m in dict(data["maps"]).items()]
            else:
                entries = [_map_entry(data, str(f))]
        except (OSError, ValueError, KeyError, TypeError, ConfigError, DataError) as err:
            raise DataError(f"cannot use the tool maps in {f}: {err}") from err
        for name, m in entries:
            if name in maps:
                raise DataError(f"tool maps: {name!r} is defined twice ({sources[name]} and {f})")
            maps[name] = m
            sources[name] = str(f)
    _check_tool_names(list(maps), str(p))
    digest = hashlib.sha256(
        json.dumps({n: m.to_dict() for n, m in sorted(maps.items())}, sort_keys=True, default=str).encode()
    ).hexdigest()
    return MapSet(maps, str(p), sources, digest)


def _check_tool_names(names: Sequence[str], where: str) -> None:
    from lmmiqa import registry
    from lmmiqa.errors import UnknownNameError

    known = set(registry.names("tool"))
    for name in names:
        if name not in known and not name.startswith("pyiqa:"):
            raise UnknownNameError("tool", f"{name} (in {where})", sorted(known))


def save_map_set(path: str | os.PathLike[str], maps: Mapping[str, ToolMap]) -> Path:
    """Write several maps as one bundle file that :func:`load_map_set` reads."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, "maps": {n: m.to_dict() for n, m in sorted(maps.items())}}
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out


def map_record(tool_map: ToolMap | None, file: str | None = None) -> dict[str, Any] | None:
    """What a result records about the map that ran: source, file and, for a refitted map, its data."""
    if tool_map is None:
        return None
    rec: dict[str, Any] = {"source": tool_map.source}
    if tool_map.source == "fitted":
        rec["file"] = file
        rec["fitted_on"] = {k: tool_map.fit.get(k) for k in FITTED_ON_KEYS if k in tool_map.fit}
    else:
        rec["note"] = tool_map.note
    return rec


_SHIPPED = object()


def select_map(
    tool: str, chosen: MapSet | None = None, default: Any = _SHIPPED
) -> tuple[ToolMap | None, dict[str, Any] | None]:
    """The map a run that chose ``chosen`` uses for ``tool`` and its record (:func:`map_record`): the chosen
    one, else the shipped default — never the user cache.

    Args:
        tool: the tool name.
        chosen: the explicitly chosen maps, or None.
        default: the tool's shipped map (``Tool.default_map``; pyiqa tools name theirs differently); default
            :func:`default_map` of ``tool``.
    """
    if chosen is not None and tool in chosen.maps:
        return chosen.maps[tool], map_record(chosen.maps[tool], chosen.files.get(tool))
    m = default_map(tool) if default is _SHIPPED else default
    return m, map_record(m)
