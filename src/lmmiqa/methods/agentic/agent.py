"""AgenticIQA: planner → executor → summarizer over classical IQA tools — METHODS.md §5.

The agent (AgenticIQA, 2025) answers a quality query about an image with a VLM that plans, inspects
and measures before it judges:

1. **Planner** (:mod:`.planner`): query type, reference mode, objects of interest, user-named distortions and a
   plan of four flags (distortion_detection, distortion_analysis, tool_selection, tool_execution).
2. **Executor** (:mod:`.executor`): distortion detection per object (blur, color distortion, compression, noise,
   brightness change, sharpness, contrast), analysis (severity none…extreme and a short explanation), tool
   selection (one tool per distortion, from the tools' descriptions), tool execution (concurrent, on
   :mod:`lmmiqa.tools`; full-reference tools when a reference is given).
3. **Summarizer** (:mod:`.summarizer`): A–E level probabilities from ``backend.level_logprobs`` fused with the
   normalized tool scores (:mod:`.fusion`, the corrected, normalized form of METHODS §5.4), plus a short
   explanation.

If the executor gathered no evidence (no tool score, no analysis, no detection), the planner is asked again with
the reason (at most ``max_replans`` times). Every JSON reply is parsed robustly (:mod:`.parsing`) and validated
(:mod:`.schemas`); a failure is counted in ``details.parse_failures`` and retried up to ``max_retries`` times
with a "return only JSON" reminder; after that the stage's documented deterministic fallback is used and marked
(``details.sources``, ``source`` on each entry) — nothing is invented silently.

Batches: :meth:`AgenticIQA.score_items` runs every stage for all images of a batch together — one backend call
per stage and retry round (the planner prompts of all images in one ``generate`` call, and so on), and one
thread pool for all their tools.

Result: ``score`` in [1, 5]; ``probabilities`` are the fused weights ``α_c p_c / Σ α p`` per level (so that
``score = Σ p·c``); ``details`` has ``plan``, ``distortions``, ``analysis``, ``tool_selection``, ``tools``
(``name → {raw, normalized, ...}``), ``fusion`` (``p``, ``alpha``, ``weights``, ``q_bar``, ``eta``,
``p_source``), ``explanation``, ``explanation_source`` (``model`` or ``template``), ``replans``,
``parse_failures``, ``backend_calls``, ``sources``, ``notes``, ``tool_maps`` (the explicitly chosen refitted
maps, or None for the shipped ones; each tool's map is in ``tools[name].map``), ``level_name`` (the level nearest to the score,
half-way rounding up: :func:`~lmmiqa.methods.agentic.fusion.nearest_level`) and a ``trace`` of stages with
timings. A stage
run for a whole batch reports the batch's wall time split evenly over its items (``seconds``, with ``batch`` the
number of items); ``backend_calls`` counts every call an item took part in (a batched call once per item), and
:attr:`AgenticIQA.last_backend_calls` the calls of the last run in total.

Example::

    scorer = lmmiqa.create_scorer("agentic-iqa", model="Qwen/Qwen3-VL-8B-Instruct")
    r = scorer.assess("out.png", ref="in.png", query="Is the sky banded after compression?")
    print(r.score, r.details["explanation"])
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from lmmiqa.backends.base import Backend
from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem, load_item
from lmmiqa.levels import LETTER_SCALE, level_details
from lmmiqa.methods.agentic.executor import Executor, cues_detail, tools_detail
from lmmiqa.methods.agentic.fusion import level_name
from lmmiqa.methods.agentic.planner import run_planner
from lmmiqa.methods.agentic.state import ItemState
from lmmiqa.methods.agentic.summarizer import Summary, run_summarizer
from lmmiqa.methods.mllm import MLLMConfig, MLLMScorer
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.prompts import AGENTIC_DEFAULT_QUERY
from lmmiqa.types import ScoreResult

#: the most replans and JSON retries the agent allows (METHODS §5: bounded)
MAX_REPLANS = 2
MAX_RETRIES = 2


@dataclass
class AgenticConfig(MLLMConfig):
    """Options of the AgenticIQA agent (plus the model/backend/device/dtype options of :class:`MLLMConfig`).

    Attributes:
        eta: sharpness η of the tool prior α (METHODS §5.4; 0 ignores the tools).
        max_replans: how often the planner may be asked again when evidence is missing (0–2).
        max_retries: retries of a JSON stage after an unparsable reply (0–2).
        tools: allow-list of tool names (registry names, or ``pyiqa:<metric>`` with pyiqa installed); a
            comma-separated string is accepted. Default: every built-in tool.
        query: the user's free-text query for :meth:`AgenticIQA.score` (default: the quality question).
        max_new_tokens: generation budget of each JSON reply.
        tool_workers: threads running tools concurrently.
        tool_maps: refitted tool maps to use (a file written by ``lmmiqa tools fit``, a bundle, or a folder of
            them; CLI ``--tool-maps FILE``). Default None: the shipped maps (paper β, else synthetic), never a
            refitted map from the user cache. Results record the maps that ran (``details.tools[name].map``,
            ``details.tool_maps``).
    """

    eta: float = 1.0
    max_replans: int = MAX_REPLANS
    max_retries: int = MAX_RETRIES
    tools: tuple[str, ...] | None = None
    query: str | None = None
    max_new_tokens: int = 256
    tool_workers: int = 4
    tool_maps: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.readout != "expected":
            raise ConfigError("agentic-iqa fuses level probabilities with tool scores: readout must be 'expected'")
        try:
            self.eta = float(self.eta)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"eta must be a number, got {self.eta!r}") from err
        if not math.isfinite(self.eta) or self.eta < 0:
            raise ConfigError(f"eta must be a finite number >= 0, got {self.eta}")
        for name, hi in (("max_replans", MAX_REPLANS), ("max_retries", MAX_RETRIES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise ConfigError(f"{name} must be an integer in [0, {hi}], got {value!r}")
        if int(self.max_new_tokens) < 8:
            raise ConfigError(f"max_new_tokens must be >= 8, got {self.max_new_tokens}")
        self.max_new_tokens = int(self.max_new_tokens)
        if int(self.tool_workers) < 1:
            raise ConfigError(f"tool_workers must be >= 1, got {self.tool_workers}")
        self.tool_workers = int(self.tool_workers)
        if self.query is not None:
            if not isinstance(self.query, str):
                raise ConfigError(f"query must be a string, got {type(self.query).__name__}")
            self.query = self.query.strip() or None
        if self.tools is not None:
            self.tools = canonical_tools(self.tools)
        if self.tool_maps is not None:
            if not isinstance(self.tool_maps, (str, os.PathLike)) or not str(self.tool_maps).strip():
                raise ConfigError(f"tool_maps must be a path, got {self.tool_maps!r}")
            from lmmiqa.tools.maps import load_map_set

            self.tool_maps = os.fspath(self.tool_maps)
            load_map_set(self.tool_maps)  # fail at configuration time, not on the first image


#: the tools of the paper's library (METHODS §5.5) that lmmiqa ships and whose β the paper prints (METHODS §5.3)
PAPER_TOOLS = ("niqe", "brisque", "ssim", "gmsd")

#: AgenticIQA as its paper evaluates it, where the models are public (``--preset paper``; METHODS §5)
AGENTIC_PAPER = Preset(
    name="paper",
    target="agentic-iqa",
    summary="AgenticIQA with GPT-4o (the paper's VLM, through the OpenAI-compatible backend) and the paper's tools "
    "with their printed β",
    reference="AgenticIQA (2025): planner, executor and summarizer over IQA tools; its GPT-4o rows; lmmiqa METHODS §5",
    values={
        "backend": PresetValue("openai", "METHODS §5.6: the paper's VLM is GPT-4o, a hosted model (reached "
                               "through the OpenAI-compatible API)"),
        "model": PresetValue("https://api.openai.com/v1#gpt-4o", "METHODS §5.6: GPT-4o; lmmiqa decision: OpenAI's "
                             "'gpt-4o' alias (the paper names no snapshot), key from OPENAI_API_KEY"),
        "tools": PresetValue(PAPER_TOOLS, "METHODS §5.3 and §5.5: the tools of the paper's library that lmmiqa ships "
                             "and whose β the paper prints (KADID-10k fit); the shipped maps of these tools are "
                             "those β"),
        "eta": PresetValue(1.0, "METHODS §5.4: η = 1 in the tool prior"),
        "max_replans": PresetValue(MAX_REPLANS, "lmmiqa decision: the paper bounds re-planning without a number "
                                   "(METHODS §5.4: 'e.g. 2 times')"),
    },
    notes=(
        "The paper's fine-tuned Qwen2.5-VL-7B (TID2013 .7780/.7982, METHODS §5.6) is not public, so no preset can "
        "load it; its rows are listed by `lmmiqa reproduce` as not runnable.",
        "Most of the paper's tools are deep models from pyiqa (METHODS §5.5); with pyiqa installed, pyiqa:fsim, "
        "pyiqa:vif and pyiqa:lpips also have the paper's β: add them with --option tools=[...].",
        "Hosted APIs do not continue a partial assistant message: the summarizer's answer prefix is then folded "
        "into the instruction (details.prefix_mode = folded), which the paper's own prompting may differ from.",
    ),
)


def canonical_tools(tools: str | Sequence[str]) -> tuple[str, ...]:
    """Validated, de-duplicated tool names of an allow-list (``"niqe,ssim"`` or a list).

    Raises:
        UnknownNameError: a name is not a registered tool (the message lists them).
        ConfigError: the list is empty.
    """
    from lmmiqa import registry

    items = tools.split(",") if isinstance(tools, str) else list(tools)
    out: list[str] = []
    for raw in items:
        name = str(raw).strip()
        if not name:
            continue
        if name.lower().startswith("pyiqa:"):
            name = "pyiqa:" + name.split(":", 1)[1].strip().lower()
        else:
            name = registry.canonical("tool", name)
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"tools must name at least one tool; known: {', '.join(registry.names('tool'))}")
    return tuple(out)


class AgenticIQA(MLLMScorer):
    """AgenticIQA: planner → executor → summarizer over classical IQA tools (METHODS §5).

    Args:
        config: :class:`AgenticConfig`.
        backend: a ready backend (tests, sharing); default: created from the config on first use.
    """

    name: ClassVar[str] = "agentic-iqa"
    config_cls: ClassVar[type] = AgenticConfig
    summary: ClassVar[str] = (
        "AgenticIQA: a VLM plans, detects and analyses distortions, runs classical IQA tools and fuses its A–E "
        "judgement with their scores; returns a score in [1, 5] and an explanation"
    )
    #: options an HTTP request may set; the model, the tool allow-list and the generation budget
    #: (``max_new_tokens``) stay the server's
    request_options: ClassVar[tuple[str, ...]] = ("query", "eta", "max_replans", "max_retries")
    presets: ClassVar[dict[str, Preset]] = {"paper": AGENTIC_PAPER}

    def __init__(self, config: AgenticConfig | None = None, backend: Backend | None = None) -> None:
        super().__init__(config, backend)
        #: backend calls made by the last run (all items together); see also ``details.backend_calls``
        self.last_backend_calls = 0
        #: called with ``(stage, round)`` as each stage of a batch starts (planner, distortion detection, ...,
        #: summarizer; round > 0 for replans): the command line shows it beside its progress bar
        self.on_stage: Callable[[str, int], None] | None = None
        self._tool_maps: Any = None

    @property
    def tool_maps(self) -> Any:
        """The explicitly chosen refitted maps (:class:`lmmiqa.tools.maps.MapSet`), or None (shipped maps)."""
        if self._tool_maps is None and self.config.tool_maps:
            from lmmiqa.tools.maps import load_map_set

            self._tool_maps = load_map_set(self.config.tool_maps)
        return self._tool_maps

    @property
    def scale(self) -> tuple[float, float]:
        return (LETTER_SCALE.low, LETTER_SCALE.high)

    @property
    def model_name(self) -> str | list[str] | None:
        model_id = getattr(self._backend, "model_id", "") if self._backend is not None else ""
        return model_id or self.config.model

    @property
    def allowed_tools(self) -> list[str]:
        """The tools the agent may use: the allow-list, else every built-in tool."""
        from lmmiqa import registry

        return list(self.config.tools) if self.config.tools else registry.names("tool")

    # ------------------------------------------------------------------ public API
    def assess(self, image: Any, ref: Any = None, query: str | None = None) -> ScoreResult:
        """Assess one image, in full-reference mode when ``ref`` is given, steered by a free-text ``query``.

        Args:
            image: path, PIL image or array (``image`` in the result is the path, or ``<memory:0>``).
            ref: the reference (undistorted) image, same size as ``image``; None for no-reference mode.
            query: e.g. ``"Is the sky banded after compression?"``; default ``config.query``, else the quality
                question.

        Returns:
            One :class:`ScoreResult` (``error`` set when the image or reference cannot be used).
        """
        limits = self._limits()
        t0 = time.perf_counter()
        item = load_item(image, 0, limits)
        if not item.ok:
            return self.failure(item.key, item.error or "cannot open image")
        ref_img = None
        if ref is not None:
            ref_item = load_item(ref, 0, limits)
            if not ref_item.ok:
                return self.failure(item.key, f"reference image: {ref_item.error}")
            ref_img = ref_item.image
            if ref_img.size != item.image.size:
                return self.failure(
                    item.key,
                    f"image and reference differ in size ({item.image.size[0]}×{item.image.size[1]} vs "
                    f"{ref_img.size[0]}×{ref_img.size[1]}); full-reference assessment needs the same size",
                )
        load_s = time.perf_counter() - t0
        state = self._state(item, ref_img, query)
        result = self.run_states([state])[0]
        return replace(result, timings={"load": load_s, **result.timings})

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        """No-reference assessment of a batch with ``config.query`` (all stages batched across items)."""
        return self.run_states([self._state(it, None, None) for it in items])

    # ------------------------------------------------------------------ the agent
    def _state(self, item: ImageItem, ref: Any, query: str | None) -> ItemState:
        q = (query or "").strip() or self.config.query
        return ItemState(key=item.key, image=item.image, ref=ref, query=q or AGENTIC_DEFAULT_QUERY, query_given=bool(q))

    def run_states(self, states: Sequence[ItemState]) -> list[ScoreResult]:
        """Run planner → executor (→ replans) → summarizer on prepared items; one result per item, in order."""
        cfg = self.config
        t0 = time.perf_counter()
        backend = self.backend
        stage = self.on_stage or (lambda _stage, _round: None)
        executor = Executor(
            backend, self.allowed_tools, max_retries=cfg.max_retries, max_new_tokens=cfg.max_new_tokens,
            tool_workers=cfg.tool_workers, tool_maps=self.tool_maps, on_stage=self.on_stage,
        )
        calls = 0
        active = list(states)
        round_ = 0
        stage("planner", round_)
        calls += run_planner(backend, active, round_=round_, max_retries=cfg.max_retries, max_new_tokens=cfg.max_new_tokens)
        while True:
            executor.run(active, round_)
            missing = [s for s in active if not s.evidence_ok()]
            if not missing:
                break
            if round_ >= cfg.max_replans:
                for s in missing:
                    s.notes.append(
                        f"evidence still missing after {s.replans} replan(s): {s.missing_evidence_reason()}; "
                        "the summarizer judges from the image alone"
                    )
                break
            round_ += 1
            for s in missing:
                s.replans += 1
                s.replan_reasons.append(s.missing_evidence_reason())
                s.distortions, s.analysis, s.selection = {}, [], {}
                s.tool_results = {}
                s.detection_ran = False
            stage("planner", round_)
            calls += run_planner(backend, missing, round_=round_, max_retries=cfg.max_retries, max_new_tokens=cfg.max_new_tokens)
            active = missing
        calls += executor.calls
        stage("summarizer", round_)
        summaries, scalls = run_summarizer(
            backend, states, infos=executor.infos, eta=cfg.eta, round_=round_, max_retries=cfg.max_retries,
            max_new_tokens=cfg.max_new_tokens,
        )
        calls += scalls
        self.last_backend_calls = calls
        total = (time.perf_counter() - t0) / max(len(states), 1)
        return [self._result(s, summ, executor.infos, total) for s, summ in zip(states, summaries)]

    def _result(self, s: ItemState, summ: Summary, infos: dict[str, Any], total: float) -> ScoreResult:
        timings = {**s.timings, "total": total}
        if summ.fusion is None:
            return replace(self.failure(s.key, summ.error or "nothing to score", timings), details=self._details(s, summ, infos))
        fusion = summ.fusion
        probabilities, level = level_details(list(fusion.weights), LETTER_SCALE)
        level["level_name"] = level_name(fusion.score, LETTER_SCALE.values, LETTER_SCALE.words)
        details = {**level, **self._details(s, summ, infos)}
        return ScoreResult(
            image=s.key,
            score=float(fusion.score),
            method=self.name,
            higher_is_better=True,
            scale=self.scale,
            model=self.model_name,
            probabilities=probabilities,
            details=details,
            timings=timings,
        )

    def _details(self, s: ItemState, summ: Summary, infos: dict[str, Any]) -> dict[str, Any]:
        fusion = {**summ.fusion.to_dict(), "p_source": summ.p_source} if summ.fusion is not None else None
        if fusion is not None:
            fusion.pop("score", None)
            if summ.p_fallback is not None:
                fusion["p_fallback"] = summ.p_fallback
        return {
            "query": s.query,
            "query_given": s.query_given,
            "mode": s.mode,
            "plan": s.plan,
            "distortions": s.distortions,
            "user_distortions": s.user_distortions,
            "analysis": s.analysis,
            "tool_selection": s.selection,
            "tools": tools_detail(s, infos),
            "tool_maps": self.tool_maps.describe() if self.tool_maps is not None else None,
            "cues": cues_detail(s),
            "fusion": fusion,
            "covered_mass": summ.covered_mass,
            **({"missing_levels": summ.missing_levels} if summ.missing_levels else {}),
            **(summ.tokens or {}),
            "summary_letter": summ.letter,
            "explanation": summ.explanation,
            "explanation_source": summ.explanation_source,
            "sources": dict(s.sources),
            "replans": s.replans,
            "replan_reasons": s.replan_reasons,
            "parse_failures": s.parse_failures,
            "parse_failures_by_stage": dict(s.failures_by_stage),
            "backend_calls": s.backend_calls,
            "notes": s.notes,
            "trace": s.trace,
        }

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["scale"] = LETTER_SCALE.to_dict()
        d["tools"] = self.allowed_tools
        d["tool_maps"] = self.tool_maps.describe() if self.tool_maps is not None else None
        return d


__all__ = ["AgenticConfig", "AgenticIQA", "canonical_tools"]
