"""Classical no-reference tools as scoring methods (``lmmiqa score --method niqe photos/``).

Every NR tool of :mod:`lmmiqa.tools` is also a method, so that it can be scored, evaluated and served like the
MLLM methods and used as a baseline. ``ScoreResult.score`` is the tool's raw value in its own unit (NIQE,
BRISQUE and PIQE are lower-is-better: ``higher_is_better`` says so); ``details.normalized`` is the value mapped
to 1–5 (5 = best) by the tool's map (:mod:`lmmiqa.tools.maps`), with ``details.map`` naming the map's source.

Papers: NIQE — Mittal, Soundararajan & Bovik, IEEE SPL 2012; BRISQUE — Mittal, Moorthy & Bovik, IEEE TIP 2012;
PIQE — Venkatanath et al., NCC 2015; the cues are cited in :mod:`lmmiqa.tools.cues`.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmmiqa.errors import ConfigError, LmmiqaError
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.types import ScoreResult


@dataclass
class ToolScorerConfig(ScorerConfig):
    """Options of a tool-backed method: those of every scorer, plus

    Attributes:
        workers: threads measuring the images of a batch in parallel (0 = in the calling thread).
        tool_options: options of the tool itself (e.g. ``assets`` for NIQE/BRISQUE, ``channel`` for NIQE);
            :meth:`ToolScorer.from_options` routes such keyword options here.
    """

    workers: int = 0
    tool_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.workers) < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        self.workers = int(self.workers)


class ToolScorer(Scorer):
    """A method that scores each image with one no-reference tool. Subclasses set ``name`` (= the tool name)."""

    config_cls: ClassVar[type] = ToolScorerConfig
    tool_name: ClassVar[str] = ""

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        from lmmiqa.tools import NR, get_tool

        cfg: ToolScorerConfig = self.config
        limits = {"max_pixels": cfg.max_image_pixels, "max_bytes": cfg.max_bytes}
        self.tool = get_tool(self.tool_name or self.name, **{**limits, **cfg.tool_options})
        if self.tool.kind != NR:
            raise ConfigError(f"{self.tool.name} is a full-reference tool and cannot be a scoring method")

    @classmethod
    def from_options(cls, preset: str | None = None, **options: Any) -> Scorer:
        """Build from keyword options: scorer options (``batch_size``, ``workers``...) and tool options
        (``assets``, ``channel``...) may be mixed; anything else is an error listing both kinds."""
        from lmmiqa import registry

        options = cls.preset_options(preset, options)
        tool_cls = registry.resolve("tool", cls.tool_name or cls.name)
        scorer_fields = {f.name for f in dataclasses.fields(cls.config_cls)} - {"tool_options"}
        tool_fields = set(tool_cls.option_names())
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - scorer_fields - tool_fields)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for method {cls.name!r}; valid: "
                f"{', '.join(sorted(scorer_fields | tool_fields))}"
            )
        tool_options = dict(given.pop("tool_options", None) or {})
        tool_options.update({k: given.pop(k) for k in list(given) if k in tool_fields and k not in scorer_fields})
        try:
            cfg = cls.config_cls(**given, tool_options=tool_options)
        except TypeError as err:
            raise ConfigError(f"invalid options for method {cls.name!r}: {err}") from err
        return cls(cfg)

    @property
    def scale(self) -> tuple[float, float] | None:
        return self.tool.bounds

    def _score_one(self, item: ImageItem) -> ScoreResult:
        t0 = time.perf_counter()
        try:
            raw, details = self.tool.measure(item.image)
        except (LmmiqaError, ValueError, FloatingPointError) as err:
            return self.failure(item.key, str(err), {"score": time.perf_counter() - t0})
        m = self.tool.map
        info = {
            "tool": self.tool.name,
            "kind": self.tool.kind,
            "higher_is_better": self.tool.higher_is_better,
            "typical_range": list(self.tool.typical_range) if self.tool.typical_range else None,
            "normalized": m.apply(raw) if m is not None else None,
            "normalized_scale": [1.0, 5.0],
            "map": m.source if m is not None else None,
            **details,
        }
        return ScoreResult(
            image=item.key,
            score=raw,
            method=self.name,
            higher_is_better=self.higher_is_better,
            scale=self.scale,
            details=info,
            timings={"score": time.perf_counter() - t0},
        )

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        workers = self.config.workers
        if workers and len(items) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(self._score_one, items))
        return [self._score_one(it) for it in items]


class NIQE(ToolScorer):
    """NIQE (Mittal et al. 2012) as a method: naturalness distance, lower is better."""

    name = "niqe"
    higher_is_better = False
    summary = "NIQE (classical, no training on opinions): naturalness distance, lower is better"


class BRISQUE(ToolScorer):
    """BRISQUE (Mittal et al. 2012) as a method: LIVE-trained SVR on scene statistics, lower is better."""

    name = "brisque"
    higher_is_better = False
    summary = "BRISQUE (classical, SVR trained on LIVE): 0 (best) to ~100, lower is better"


class PIQE(ToolScorer):
    """PIQE (Venkatanath et al. 2015) as a method: block artefacts and noise, 0 (best) to 100."""

    name = "piqe"
    higher_is_better = False
    summary = "PIQE (classical, block-wise): 0 (best) to 100, lower is better"


class Sharpness(ToolScorer):
    """Variance of the Laplacian as a method: higher is sharper."""

    name = "sharpness"
    higher_is_better = True
    summary = "sharpness cue (variance of the Laplacian), higher is sharper"


class Noise(ToolScorer):
    """Immerkær's noise estimate as a method: lower is cleaner."""

    name = "noise"
    higher_is_better = False
    summary = "noise cue (Immerkær noise std in grey levels), lower is cleaner"


class Contrast(ToolScorer):
    """RMS contrast as a method."""

    name = "contrast"
    higher_is_better = True
    summary = "contrast cue (RMS contrast, 0 to 0.5), higher is more contrast"


class Exposure(ToolScorer):
    """Clipped-pixel fraction as a method: lower is better exposed."""

    name = "exposure"
    higher_is_better = False
    summary = "exposure cue (fraction of clipped pixels), lower is better"


class Colorfulness(ToolScorer):
    """Hasler–Süsstrunk colourfulness as a method."""

    name = "colorfulness"
    higher_is_better = True
    summary = "colourfulness cue (Hasler–Süsstrunk), higher is more colourful"


class Blockiness(ToolScorer):
    """JPEG blockiness ratio as a method: about 1 without blocking, lower is better."""

    name = "blockiness"
    higher_is_better = False
    summary = "JPEG blockiness cue (grid/off-grid jump ratio, ~1 = none), lower is better"
