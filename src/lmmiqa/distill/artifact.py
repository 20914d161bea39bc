"""The LEAF student artifact: a self-describing folder (METHODS §3; DESIGN habit 7).

Layout::

    config.json        registered name ("leaf"), kind, schema version, student name and architecture (enough to
                       rebuild the network offline), preprocessing, output unit (teacher-score mean/std), levels
    model.safetensors  the network's weights
    teacher.json       summary of the teacher cache it was distilled from
    training.json      training options and per-epoch history
    calibration.json   the map to a MOS scale and its held-out report (after ``lmmiqa distill calibrate``)

Load with :meth:`StudentArtifact.load`; score with the ``leaf`` method (:class:`lmmiqa.methods.leaf.LEAF`).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.jsonl import write_json
from lmmiqa.types import json_safe

ARTIFACT_KIND = "lmmiqa-leaf-student"
REGISTERED_NAME = "leaf"
#: 2: ``crops`` preprocessing (mode, crops, crop_layout) and the images the student was distilled from in
#: ``training.json``; version-1 folders (whole-image ``resize``/``center-crop``) load unchanged
SCHEMA_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEACHER_FILE = "teacher.json"
TRAINING_FILE = "training.json"
CALIBRATION_FILE = "calibration.json"
#: the calibration maps (:mod:`lmmiqa.distill.calibrate` fits them; this module stores and applies them)
CALIBRATION_KINDS = ("logistic", "isotonic", "linear")


def save_artifact(
    folder: str | os.PathLike[str],
    state_dict: dict[str, Any],
    *,
    student: str,
    arch: dict[str, Any],
    preprocess: Any,
    k_levels: int | None,
    levels: dict[str, Any] | None,
    output: dict[str, Any],
    teacher: dict[str, Any],
    training: dict[str, Any],
) -> Path:
    """Write a student artifact into ``folder`` (a stale ``calibration.json`` is removed: it fitted other weights).

    Args:
        folder: destination (created).
        state_dict: the network's ``state_dict()``.
        student: registered student name.
        arch: the spec's architecture description (:meth:`StudentSpec.arch`).
        preprocess: the :class:`~lmmiqa.distill.students.Preprocess` used in training.
        k_levels: size of the level head, or ``None``.
        levels: the teacher's level table (``keys``, ``values``, ``words``) when it has one.
        output: ``target_mean``/``target_std`` of the standardized teacher scores (raw output = z·std + mean).
        teacher: teacher summary (:meth:`TeacherLabels.summary`).
        training: training options and history.
    """
    from lmmiqa import __version__

    safetensors_torch = require("safetensors.torch", "hf", "saving LEAF students")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = root / (WEIGHTS_FILE + ".tmp")
    safetensors_torch.save_file(tensors, str(tmp), metadata={"format": "pt", "kind": ARTIFACT_KIND})
    os.replace(tmp, root / WEIGHTS_FILE)
    config = {
        "registered_name": REGISTERED_NAME,
        "kind": ARTIFACT_KIND,
        "schema_version": SCHEMA_VERSION,
        "lmmiqa_version": __version__,
        "student": {"name": student, "arch": arch, "k_levels": k_levels},
        "preprocessing": preprocess.to_dict(),
        "levels": levels,
        "output": {
            "unit": "teacher score, oriented so that higher is better",
            "higher_is_better": True,
            **output,
        },
        "weights": WEIGHTS_FILE,
    }
    write_json(root / CONFIG_FILE, config)
    write_json(root / TEACHER_FILE, teacher)
    write_json(root / TRAINING_FILE, training)
    stale = root / CALIBRATION_FILE
    if stale.exists():
        stale.unlink()
    return root


@dataclass(frozen=True)
class Calibration:
    """A fitted map from raw student output to a MOS scale.

    Attributes:
        kind: ``logistic``, ``isotonic`` or ``linear``.
        params: the map's parameters: logistic → the :class:`~lmmiqa.evaluation.logistic.FitResult` fields;
            isotonic → ``x``/``y`` thresholds; linear → ``a``, ``b`` (``ŷ = a·x + b``).
        input_sign: +1, or −1 when fitted from the negated output (lower-is-better labels).
        higher_is_better: direction of the calibrated score (the dataset's).
        scale: ``(low, high)`` of the MOS scale, or ``None``.
    """

    kind: str
    params: dict[str, Any]
    input_sign: float = 1.0
    higher_is_better: bool = True
    scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CALIBRATION_KINDS:
            raise ConfigError(f"unknown calibration {self.kind!r}; known: {', '.join(CALIBRATION_KINDS)}")
        if self.input_sign not in (1.0, -1.0):
            raise ConfigError(f"input_sign must be +1 or -1, got {self.input_sign}")

    def map_raw(self, raw: Any) -> np.ndarray:
        """The fitted map applied to raw student outputs, without clipping (a line or a fallback fit can
        extrapolate past the scale); NaN stays NaN."""
        x = self.input_sign * np.asarray(raw, dtype=np.float64)
        if self.kind == "logistic":
            return _fit_result(self.params).predict(x)
        if self.kind == "isotonic":
            xs = np.asarray(self.params["x"], dtype=np.float64)
            ys = np.asarray(self.params["y"], dtype=np.float64)
            out = np.interp(x, xs, ys)
            return np.where(np.isfinite(x), out, np.nan)
        return float(self.params["a"]) * x + float(self.params["b"])

    def apply(self, raw: Any) -> np.ndarray:
        """Calibrated scores for raw student outputs, clipped to :attr:`scale` when there is one (a score of 5.16
        "on [1, 5]" would contradict its label); NaN stays NaN."""
        out = self.map_raw(raw)
        if self.scale is not None:
            out = np.clip(out, float(self.scale[0]), float(self.scale[1]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {"kind": self.kind, "params": self.params, "input_sign": self.input_sign,
             "higher_is_better": self.higher_is_better, "scale": list(self.scale) if self.scale else None}
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        scale = data.get("scale")
        return cls(
            kind=data["kind"],
            params=dict(data["params"]),
            input_sign=float(data.get("input_sign", 1.0)),
            higher_is_better=bool(data.get("higher_is_better", True)),
            scale=(float(scale[0]), float(scale[1])) if scale else None,
        )


def _fit_result(params: dict[str, Any]) -> Any:
    from lmmiqa.evaluation.logistic import FitResult

    return FitResult(
        kind=params["kind"],
        params=tuple(float(p) for p in params["params"]),
        converged=bool(params.get("converged", False)),
        fallback=params.get("fallback"),
        n=int(params.get("n", 0)),
        sse=float("nan") if params.get("sse") is None else float(params["sse"]),
        requested=params.get("requested", params["kind"]),
    )


@dataclass(frozen=True)
class StudentArtifact:
    """A loaded student folder (metadata only; the network is built by :meth:`predictor`).

    Attributes:
        path: the folder.
        config: ``config.json``.
        calibration: the :class:`Calibration`, or ``None`` when not calibrated.
        calibration_report: the held-out report stored with the calibration, or ``None``.
        teacher: ``teacher.json`` (the teacher summary), or ``None``.
    """

    path: Path
    config: dict[str, Any]
    calibration: Any | None
    calibration_report: dict[str, Any] | None
    teacher: dict[str, Any] | None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StudentArtifact:
        """Read and validate a student folder.

        Raises:
            DataError: not a LEAF student folder, a newer schema, or missing weights.
        """
        root = Path(path)
        cfg_path = root / CONFIG_FILE
        if not root.is_dir():
            raise DataError(f"student folder not found: {root}")
        if not cfg_path.is_file():
            raise DataError(f"{root} is not a LEAF student (no {CONFIG_FILE}); train one with `lmmiqa distill train`")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{cfg_path} is not valid JSON: {err}") from err
        if config.get("kind") != ARTIFACT_KIND or config.get("registered_name") != REGISTERED_NAME:
            raise DataError(
                f"{cfg_path} describes {config.get('kind') or config.get('registered_name')!r}, not a LEAF student"
            )
        if int(config.get("schema_version", 0)) > SCHEMA_VERSION:
            raise DataError(
                f"{root} has schema version {config.get('schema_version')}; this lmmiqa reads up to {SCHEMA_VERSION}"
            )
        if not (root / config.get("weights", WEIGHTS_FILE)).is_file():
            raise DataError(f"{root} has no weights file {config.get('weights', WEIGHTS_FILE)}")
        calibration = report = None
        cal_path = root / CALIBRATION_FILE
        if cal_path.is_file():
            data = json.loads(cal_path.read_text(encoding="utf-8"))
            calibration = Calibration.from_dict(data)
            report = data.get("report")
        teacher = None
        if (root / TEACHER_FILE).is_file():
            teacher = json.loads((root / TEACHER_FILE).read_text(encoding="utf-8"))
        return cls(root, config, calibration, report, teacher)

    @property
    def student_name(self) -> str:
        return str(self.config["student"]["name"])

    @property
    def k_levels(self) -> int | None:
        k = self.config["student"].get("k_levels")
        return int(k) if k else None

    @property
    def preprocess(self) -> Any:
        from lmmiqa.distill.students import Preprocess

        return Preprocess.from_dict(self.config["preprocessing"])

    @property
    def level_scale(self) -> Any | None:
        """The teacher's :class:`~lmmiqa.levels.LevelScale` (for the level head's probabilities), or ``None``."""
        levels = self.config.get("levels")
        if not levels or not self.k_levels:
            return None
        from lmmiqa.levels import LevelScale

        return LevelScale(
            name="teacher",
            tokens=tuple(str(k) for k in levels["keys"]),
            values=tuple(float(v) for v in levels["values"]),
            words=tuple(str(w) for w in levels["words"]),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (``lmmiqa distill info``, run configs)."""
        return json_safe(
            {
                "path": str(self.path),
                "student": self.config["student"]["name"],
                "schema_version": self.config.get("schema_version"),
                "preprocessing": self.config.get("preprocessing"),
                "output": self.config.get("output"),
                "calibrated": self.calibration is not None,
                "calibration": self.calibration.to_dict() if self.calibration is not None else None,
                "calibration_report": self.calibration_report,
                "teacher": (self.teacher or {}).get("identity"),
                "fidelity": self._training().get("fidelity"),
                "recipe": self.recipe(),
            }
        )

    def recipe(self) -> dict[str, str | None]:
        """The preset each step that made this student was run with (``{"distill teach": "paper", "distill
        train": None, "distill calibrate": ...}``; None: lmmiqa's defaults, not recorded, or not calibrated)."""
        from lmmiqa.distill.presets import CALIBRATE, TEACH, TRAIN

        return {
            TEACH: (self.teacher or {}).get("preset"),
            TRAIN: (self._training().get("config") or {}).get("preset"),
            CALIBRATE: (self.calibration_report or {}).get("preset") if self.calibration is not None else None,
        }

    def _training(self) -> dict[str, Any]:
        path = self.path / TRAINING_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def used_images(self) -> dict[str, set[str] | None]:
        """Canonical paths (``os.path.realpath``) of the images this student has seen, by use: ``training`` (every
        teacher-judged image: the train and validation parts of ``training.json``; for folders written before
        schema 2, the teacher cache's images when the cache is still there) and ``calibration`` (the labelled
        subset of ``calibration.json``). ``None`` where it is not recorded."""
        training: set[str] | None = None
        images = self._training().get("images")
        if isinstance(images, dict):
            training = {os.path.realpath(p) for part in images.values() for p in part}
        elif (self.teacher or {}).get("folder") and Path(self.teacher["folder"]).is_dir():  # type: ignore[index]
            from lmmiqa.distill.teacher import load_teacher_labels

            try:
                training = {os.path.realpath(p) for p in load_teacher_labels(self.teacher["folder"]).images}  # type: ignore[index]
            except DataError:
                training = None
        calibration: set[str] | None = None
        if self.calibration is not None:
            subset = (self.calibration_report or {}).get("subset") or {}
            if subset.get("paths") is not None:
                calibration = {os.path.realpath(p) for p in subset["paths"]}
        return {"training": training, "calibration": calibration}

    def predictor(self, device: str = "auto") -> StudentPredictor:
        """Build the network on ``device`` with the stored weights (no download)."""
        return StudentPredictor(self, device)


class StudentPredictor:
    """The student network ready for inference: ``predict(images) -> (raw scores, level probabilities)``."""

    def __init__(self, artifact: StudentArtifact, device: str = "auto") -> None:
        torch = require("torch", "hf", "LEAF students")
        safetensors_torch = require("safetensors.torch", "hf", "loading LEAF students")
        from lmmiqa.distill.students import build_network, get_student
        from lmmiqa.torch_utils import pick_device

        self.artifact = artifact
        self.device = pick_device(device)
        self.preprocess = artifact.preprocess
        spec = get_student(artifact.student_name)
        net = build_network(spec, artifact.config["student"]["arch"], artifact.k_levels)
        state = safetensors_torch.load_file(str(artifact.path / artifact.config.get("weights", WEIGHTS_FILE)))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(
                f"{artifact.path}: weights do not match the {artifact.student_name} architecture "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
            )
        self.network = net.to(self.device).eval()
        out = artifact.config["output"]
        self.mean = float(out["target_mean"])
        self.std = float(out["target_std"])
        self._torch = torch
        self._lock = threading.Lock()

    def predict_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores (teacher unit) and level probabilities for uint8 views [B, S, S, 3] (one view per row)."""
        with self._lock:
            z, probs = forward_views(self.network, self.preprocess, [v[None] for v in batch], self.device,
                                     self._torch)
        return z[0] * self.std + self.mean, probs

    def predict_views(self, views: Sequence[np.ndarray], chunk: int = 64) -> dict[str, Any]:
        """Per image, the mean over its views (uint8 [V, S, S, 3], :meth:`Preprocess.views`).

        Returns:
            ``raw`` (teacher unit), ``crop_std`` (standard deviation of the views' raw outputs; 0 for one view),
            ``n_views`` and ``probs`` (mean level probabilities, or ``None``).
        """
        with self._lock:
            (mean, spread), probs = forward_views(self.network, self.preprocess, views, self.device, self._torch,
                                                  chunk=chunk)
        return {"raw": mean * self.std + self.mean, "crop_std": spread * self.std,
                "n_views": np.array([len(v) for v in views]), "probs": probs}

    def predict(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and level probabilities for RGB PIL images (crop-averaged in ``crops`` mode)."""
        if not images:
            return np.zeros(0), None
        out = self.predict_views([self.preprocess.views(self.preprocess.base(im)) for im in images])
        return out["raw"], out["probs"]


def forward_views(net: Any, preprocess: Any, views: Sequence[np.ndarray], device: Any, torch: Any,
                  chunk: int = 64) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None]:
    """Run ``net`` (eval mode) over every view and reduce per image.

    Args:
        views: per image, uint8 [V_i, S, S, 3].

    Returns:
        ``((mean, std) of the standardized score over each image's views, mean level probabilities or None)``.
    """
    counts = [len(v) for v in views]
    flat = np.concatenate(list(views)) if views else np.zeros((0, preprocess.size, preprocess.size, 3), np.uint8)
    scores, probs = [], []
    was_training = bool(getattr(net, "training", False))
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(flat), int(chunk)):
            x = torch.from_numpy(preprocess.normalize(flat[start : start + int(chunk)])).to(device)
            score, logits = net(x)
            scores.append(score.double().cpu().numpy())
            if logits is not None:
                probs.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
    if was_training:
        net.train()
    s = np.concatenate(scores) if scores else np.zeros(0)
    p = np.concatenate(probs) if probs else None
    spans = list(itertools.pairwise(np.cumsum([0, *counts])))
    mean = np.array([s[a:b].mean() for a, b in spans])
    std = np.array([s[a:b].std() for a, b in spans])
    pm = np.stack([p[a:b].mean(axis=0) for a, b in spans]) if p is not None else None
    return (mean, std), pm
