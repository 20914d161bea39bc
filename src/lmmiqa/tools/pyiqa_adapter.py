"""Optional adapter: when the user has ``pyiqa`` installed, its metrics (TOPIQ, MUSIQ, LIQE, ...) are tools too.

pyiqa (C. Chen et al., "TOPIQ: a top-down approach from semantics to distortions for image quality
assessment", IEEE TIP 2024, and the IQA-PyTorch toolbox) is **not** a dependency of lmmiqa: it is licensed for
non-commercial use only and depends on torchvision. Nothing here imports it until a ``pyiqa:<metric>`` tool is
listed or built; without pyiqa those names simply do not exist.

Tools are named ``pyiqa:<metric>`` (``pyiqa:topiq_nr``, ``pyiqa:musiq``, ...), so that pyiqa's own NIQE or
SSIM never shadows lmmiqa's MATLAB-faithful ones. The direction and the NR/FR kind come from pyiqa's metric
table. Where AgenticIQA gives β for a metric (its tools came from pyiqa) that map is the default; other pyiqa
tools have no map until the user fits one (``lmmiqa tools fit --tool pyiqa:<metric>``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from lmmiqa.errors import MissingDependencyError, UnknownNameError
from lmmiqa.tools.base import FR, NR, Tool, ToolConfig, ToolError

PREFIX = "pyiqa:"

#: pyiqa metric -> the AgenticIQA β table entry it corresponds to (the paper ran these through pyiqa)
PAPER_MAP_NAMES = {
    "niqe": "niqe",
    "brisque": "brisque",
    "ssim": "ssim",
    "gmsd": "gmsd",
    "fsim": "fsim",
    "vif": "vif",
    "lpips": "lpips",
    "qalign": "q-align",
}

#: what some well-known pyiqa metrics are good at (shown to agents); others get a generic description
DESCRIPTIONS = {
    "topiq_nr": "TOPIQ (deep, trained on KonIQ): strong general no-reference quality of authentic photos.",
    "topiq_fr": "TOPIQ-FR (deep): strong general full-reference quality, semantics-aware.",
    "musiq": "MUSIQ (multi-scale transformer, KonIQ): general quality of photos at native resolution.",
    "liqe": "LIQE (CLIP-based): quality with scene and distortion awareness, good across datasets.",
    "clipiqa": "CLIP-IQA: zero-shot quality from CLIP text prompts; coarse but content-robust.",
    "maniqa": "MANIQA (transformer, PIPAL/KonIQ): strong on GAN/restoration artefacts.",
    "dbcnn": "DBCNN: synthetic and authentic distortions via two-branch CNN features.",
    "hyperiqa": "HyperIQA: content-adaptive quality of authentic photos.",
    "qalign": "Q-Align (LMM, KonIQ/SPAQ/AVA): strong general quality; heavy (7B model).",
    "lpips": "LPIPS (deep features): perceptual distance to the reference, lower is better.",
    "dists": "DISTS (deep features): structure and texture similarity to the reference, tolerant of texture "
    "resampling.",
    "fsim": "FSIM: phase-congruency and gradient feature similarity to the reference.",
    "vif": "VIF: visual information fidelity to the reference.",
}


class PyiqaNotInstalledError(MissingDependencyError):
    """pyiqa is not installed (it is never an lmmiqa extra)."""

    def __init__(self) -> None:
        Exception.__init__(
            self,
            "pyiqa is not installed; lmmiqa does not depend on it (non-commercial licence, needs torchvision). "
            "Install it yourself (pip install pyiqa) to use the pyiqa:* tools.",
        )
        self.package = "pyiqa"
        self.extra = ""


def _pyiqa() -> Any:
    try:
        import pyiqa
    except ImportError as err:
        raise PyiqaNotInstalledError() from err
    return pyiqa


def available() -> bool:
    """True when ``import pyiqa`` works."""
    try:
        _pyiqa()
    except MissingDependencyError:
        return False
    return True


def _configs() -> dict[str, Any]:
    pyiqa = _pyiqa()
    configs = getattr(pyiqa, "DEFAULT_CONFIGS", None)
    if configs is None:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS as configs
    return configs


def metric_names() -> list[str]:
    """pyiqa's NR and FR metric names (no prefix)."""
    pyiqa = _pyiqa()
    return sorted(set(pyiqa.list_models(metric_mode="NR")) | set(pyiqa.list_models(metric_mode="FR")))


def tool_names() -> list[str]:
    """``pyiqa:<metric>`` for every pyiqa metric; empty when pyiqa is not installed."""
    if not available():
        return []
    return [PREFIX + m for m in metric_names()]


class PyiqaTool(Tool):
    """One pyiqa metric as a tool (the model is created on first use and run under a lock)."""

    config_cls = ToolConfig

    def __init__(self, metric: str, config: Any | None = None, device: str | None = None) -> None:
        super().__init__(config)
        known = metric_names()
        if metric not in known:
            raise UnknownNameError("tool", PREFIX + metric, [PREFIX + m for m in known])
        cfg = _configs().get(metric, {})
        mode = str(cfg.get("metric_mode", "NR")).upper()
        self.metric = metric
        self.name = PREFIX + metric
        self.kind = FR if mode == "FR" else NR
        self.higher_is_better = not bool(cfg.get("lower_better", False))
        self.typical_range = None
        self.description = DESCRIPTIONS.get(metric) or (
            f"pyiqa metric {metric!r} ({'full' if self.kind == FR else 'no'}-reference, learned or classical; "
            "see the pyiqa model card)."
        )
        self.citation = "Chen et al., IQA-PyTorch (pyiqa)"
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def default_map(self) -> Any:
        from lmmiqa.tools.maps import paper_map

        paper = PAPER_MAP_NAMES.get(self.metric)
        return paper_map(paper) if paper else None

    @property
    def map(self) -> Any:
        from lmmiqa.tools.maps import load_fitted_map

        return load_fitted_map(self.name) or self.default_map

    def _get_model(self) -> Any:
        if self._model is None:
            pyiqa = _pyiqa()
            kwargs = {"device": self.device} if self.device else {}
            self._model = pyiqa.create_metric(self.metric, **kwargs)
            lower = getattr(self._model, "lower_better", None)
            if lower is not None:
                self.higher_is_better = not bool(lower)
        return self._model

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        import torch

        def tensor(a: np.ndarray) -> Any:
            return torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)

        with self._lock:  # deep models are not safe to run from several threads at once
            model = self._get_model()
            with torch.no_grad():
                out = model(tensor(rgb), tensor(ref)) if self.kind == FR else model(tensor(rgb))
        try:
            return float(out.item() if hasattr(out, "item") else out)
        except (TypeError, ValueError) as err:
            raise ToolError(f"{self.name}: pyiqa returned {type(out).__name__}, not one number") from err
