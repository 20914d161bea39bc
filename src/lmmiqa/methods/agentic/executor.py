"""AgenticIQA executor (METHODS §5.2): distortion detection, distortion analysis, tool selection, tool execution.

Each stage runs only where the item's plan asks for it, and each VLM stage sends the prompts of all items of a
batch in one backend call (plus one per retry round). Tools run concurrently in a thread pool (every tool of
every item of the batch at once; the tools are thread-safe).

Documented deterministic fallbacks (used only after the VLM's replies failed to parse ``1 + max_retries``
times; every one is marked ``source = "fallback"`` in the result):

- **detection** → measured cues: the no-reference cue tool of each category (:data:`CUE_TOOLS`) is run on the
  image, and a category is reported on ``"Global"`` when its normalized cue score is below
  :data:`CUE_THRESHOLD` (3 on the 1–5 scale). Cues measure the whole image, not single objects.
- **analysis** → severity from the category's cue score (:func:`severity_from_score`), with an explanation that
  quotes the measurement; a distortion without a measurable cue gets severity ``None`` ("not measured").
- **tool selection** → the evidence/mapping table (:data:`NR_TABLE` / :data:`FR_TABLE`): the first allowed tool
  listed for the distortion, else the first allowed general-purpose tool (:data:`GENERAL_TOOLS`).

A tool that fails — an error result, or any exception it raises (CUDA out of memory, an unreadable file) — is
recorded for that tool (``details.tools[name].error`` and a note) and left out of the fusion; the item keeps the
VLM's answers and the other tools' scores.

When the plan asks for tool execution without tool selection, tools come from the same table and are marked
``source = "table"`` (a planned default, not a fallback). Tools of the item's mode are offered (full-reference
tools when a reference was given); if the allow-list has none of that kind, the other kind is used and a note
says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmmiqa.backends.base import Backend
from lmmiqa.methods.agentic.planner import image_parts
from lmmiqa.methods.agentic.schemas import (
    CATEGORIES,
    GLOBAL,
    AnalysisOutput,
    DetectionOutput,
    SelectionOutput,
)
from lmmiqa.methods.agentic.state import ItemState, JsonJob, ask_json
from lmmiqa.prompts import (
    AGENTIC_ANALYSIS_TEMPLATE,
    AGENTIC_DETECTION_TEMPLATE,
    AGENTIC_DETECTION_USER_TEMPLATE,
    AGENTIC_SELECTION_OVERALL,
    AGENTIC_SELECTION_TEMPLATE,
    AGENTIC_SYSTEM,
)
from lmmiqa.types import Prompt

NR, FR = "nr", "fr"

#: the no-reference cue tool that measures each distortion category (fallback detection and analysis)
CUE_TOOLS: dict[str, str] = {
    "blur": "sharpness",
    "sharpness": "sharpness",
    "noise": "noise",
    "compression": "blockiness",
    "brightness change": "exposure",
    "contrast": "contrast",
    "color distortion": "colorfulness",
}

#: a category is detected by the fallback when its cue's normalized score is below this (1–5 scale)
CUE_THRESHOLD = 3.0

#: evidence/mapping table, no-reference: distortion -> tools in order of preference
NR_TABLE: dict[str, tuple[str, ...]] = {
    "blur": ("sharpness", "niqe", "brisque"),
    "sharpness": ("sharpness", "niqe"),
    "noise": ("noise", "piqe", "brisque"),
    "compression": ("blockiness", "piqe", "brisque", "niqe"),
    "brightness change": ("exposure", "niqe"),
    "contrast": ("contrast", "niqe"),
    "color distortion": ("colorfulness", "niqe"),
}

#: evidence/mapping table, full-reference: distortion -> tools in order of preference
FR_TABLE: dict[str, tuple[str, ...]] = {
    "blur": ("ms_ssim", "gmsd", "ssim"),
    "sharpness": ("gmsd", "ms_ssim", "ssim"),
    "noise": ("psnr", "ssim", "gmsd"),
    "compression": ("gmsd", "ssim", "psnr"),
    "brightness change": ("psnr", "ssim"),
    "contrast": ("ssim", "ms_ssim"),
    "color distortion": ("psnr", "ssim"),
}

#: general-purpose tools per kind, for "overall quality" and for distortions the table does not list
GENERAL_TOOLS: dict[str, tuple[str, ...]] = {
    NR: ("niqe", "brisque", "piqe"),
    FR: ("ms_ssim", "ssim", "gmsd", "psnr"),
}

#: severity bands on the normalized (1–5) cue score: (lower bound, severity), best first
SEVERITY_BANDS: tuple[tuple[float, str], ...] = (
    (4.0, "none"),
    (3.0, "slight"),
    (2.0, "moderate"),
    (1.5, "severe"),
    (-math.inf, "extreme"),
)


def severity_from_score(normalized: float) -> str:
    """Severity of a distortion from its cue's normalized score (5 = no distortion): ≥ 4 none, ≥ 3 slight,
    ≥ 2 moderate, ≥ 1.5 severe, else extreme."""
    for bound, severity in SEVERITY_BANDS:
        if normalized >= bound:
            return severity
    return "extreme"


def table_tool(target: str, kind: str, allowed: Sequence[str]) -> str | None:
    """The table's tool for ``target`` among ``allowed`` (of ``kind``): the first preferred one, else the first
    general-purpose one, else the first allowed tool; None when nothing is allowed."""
    table = FR_TABLE if kind == FR else NR_TABLE
    for name in (*table.get(target, ()), *GENERAL_TOOLS[kind]):
        if name in allowed:
            return name
    return allowed[0] if allowed else None


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


class Executor:
    """Runs the executor stages on a batch of items.

    Args:
        backend: the VLM backend.
        allowed: tool names the agent may use (after the allow-list), in registry order.
        max_retries: JSON retries per stage.
        max_new_tokens: generation budget per reply.
        tool_workers: threads running tools.
        tool_maps: refitted maps chosen for this run (:class:`lmmiqa.tools.maps.MapSet`); every other tool is
            normalized with its shipped map, never with a refitted map from the user cache.
    """

    def __init__(
        self,
        backend: Backend,
        allowed: Sequence[str],
        *,
        max_retries: int,
        max_new_tokens: int,
        tool_workers: int,
        tool_maps: Any = None,
        on_stage: Callable[[str, int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.on_stage = on_stage
        self.tool_maps = tool_maps
        self.max_retries = int(max_retries)
        self.max_new_tokens = int(max_new_tokens)
        self.tool_workers = int(tool_workers)
        self.multi_image = bool(getattr(backend, "supports_multi_image", True))
        from lmmiqa.tools import tool_catalog

        self.infos = {i.name: i for i in tool_catalog(names=list(allowed))}
        self._defaults: dict[str, Any] = {}
        self._cache_notes: dict[str, str | None] = {}
        self.allowed = list(allowed)
        self.calls = 0

    # ------------------------------------------------------------------ tools
    def tools_for(self, state: ItemState) -> tuple[str, list[str]]:
        """(kind, allowed tool names) offered to one item: its mode's kind, else the other kind."""
        kind = FR if state.fr else NR
        names = [n for n in self.allowed if self.infos[n].kind == kind]
        if not names:
            other = NR if kind == FR else FR
            names = [n for n in self.allowed if self.infos[n].kind == other and (other == NR or state.fr)]
            if names:
                note = f"no {kind.upper()} tool is allowed: using {other.upper()} tools"
                if note not in state.notes:
                    state.notes.append(note)
                kind = other
        return kind, names

    def run_tools(self, jobs: Iterable[tuple[ItemState, str]], into: str = "tool_results") -> float:
        """Run (item, tool) pairs concurrently; results go to ``state.<into>[tool]``. Returns the wall time.

        A no-reference tool already measured as a cue on the same item is not measured again. A tool that raises
        (``RuntimeError`` such as CUDA out of memory, ``OSError``, ...) gives that tool an error result
        (``"<ExceptionType>: message"``); the item goes on with the other tools' scores and the VLM's answers,
        and fusion leaves the failed tool out.
        """
        from lmmiqa.tools import ToolResult, run_tool

        todo: list[tuple[ItemState, str]] = []
        for state, name in jobs:
            cached = state.cues.get(name) if self.infos[name].kind == NR else None
            if cached is not None:
                getattr(state, into)[name] = cached
            elif name not in getattr(state, into):
                todo.append((state, name))
        t0 = time.perf_counter()
        if todo:

            def one(job: tuple[ItemState, str]) -> Any:
                state, name = job
                ref = state.ref if self.infos[name].kind == FR else None
                t_start = time.perf_counter()
                try:
                    return run_tool(name, state.image, ref=ref)
                except Exception as err:  # one tool's failure (CUDA OOM, OSError) is its own
                    return ToolResult(name, state.key, None, None, f"{type(err).__name__}: {err}", {},
                                      time.perf_counter() - t_start)

            workers = max(1, min(self.tool_workers, len(todo)))
            if workers == 1:
                results = [one(j) for j in todo]
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentic-tool") as pool:
                    results = list(pool.map(one, todo))
            for (state, name), res in zip(todo, results):
                getattr(state, into)[name] = self.apply_map(name, res)
                note = self.unused_cache_note(name)
                if note and note not in state.notes:
                    state.notes.append(note)
        return time.perf_counter() - t0

    def unused_cache_note(self, name: str) -> str | None:
        """A note when the user cache holds a refitted map of ``name`` that this run does not use (it was not
        chosen with ``tool_maps``): refitted maps are never a silent default, and never silently ignored."""
        if name not in self._cache_notes:
            from lmmiqa.tools.maps import fitted_map_path

            path = fitted_map_path(name)
            chosen = self.tool_maps is not None and name in self.tool_maps.maps
            self._cache_notes[name] = (
                f"{name}: the refitted map {path} was not used (the shipped map was); choose refitted maps with "
                f"--tool-maps FILE (option tool_maps)" if path.is_file() and not chosen else None
            )
        return self._cache_notes[name]

    def apply_map(self, name: str, res: Any) -> Any:
        """``res`` normalized with the map this run uses for ``name`` (the chosen refitted one, else the shipped
        one), with ``details.map`` recording it (source, file, what it was fitted on)."""
        from dataclasses import replace

        from lmmiqa.tools import get_tool
        from lmmiqa.tools.maps import select_map

        if name not in self._defaults:
            self._defaults[name] = get_tool(name).default_map
        m, record = select_map(name, self.tool_maps, self._defaults[name])
        details = {k: v for k, v in res.details.items() if k != "map_note"}
        details["map"] = record
        if not res.ok:
            return replace(res, details=details)
        return replace(res, normalized=None if m is None else m.apply(res.raw), details=details)

    def measure_cues(self, states: Sequence[ItemState], categories_of: dict[int, list[str]]) -> float:
        """Measure the allowed cue tools of the given categories (per item index) for a fallback."""
        jobs = []
        for i, s in enumerate(states):
            for cat in categories_of.get(i, []):
                tool = CUE_TOOLS.get(cat)
                if tool in self.infos and tool not in s.cues:
                    jobs.append((s, tool))
        return self.run_tools(dict.fromkeys(jobs), into="cues")

    # ------------------------------------------------------------------ detection
    def detect(self, states: Sequence[ItemState], round_: int) -> None:
        """Distortion detection per object of interest (or the planner's user-named distortions when the plan
        skips detection)."""
        asked = [s for s in states if s.flag("distortion_detection")]
        for s in states:
            if s.flag("distortion_detection"):
                continue
            objects = s.plan["objects"] if s.plan else [GLOBAL]
            s.distortions = {o: list(s.user_distortions) for o in objects} if s.user_distortions else {}
            s.sources["distortions"] = "planner" if s.user_distortions else "skipped"
        if not asked:
            return
        jobs = [JsonJob(s, self._detection_prompt(s)) for s in asked]
        t0 = time.perf_counter()
        outcomes, calls = ask_json(
            self.backend, jobs, DetectionOutput, stage="distortion_detection",
            max_retries=self.max_retries, max_new_tokens=self.max_new_tokens,
        )
        self.calls += calls
        llm_s = time.perf_counter() - t0
        failed = {i: [c for c in CATEGORIES if c != "sharpness"] for i, o in enumerate(outcomes) if not o.ok}
        cue_s = self.measure_cues(asked, failed) if failed else 0.0
        for i, (s, out) in enumerate(zip(asked, outcomes)):
            s.detection_ran = True
            if out.ok:
                found = {k: list(v) for k, v in out.value.distortions.items()}
                for obj in s.plan["objects"]:
                    found.setdefault(obj, [])
                source = "model"
            else:
                flagged = [
                    c for c in failed[i]
                    if (r := s.cues.get(CUE_TOOLS[c])) is not None and r.ok and r.normalized is not None
                    and r.normalized < CUE_THRESHOLD
                ]
                found = {GLOBAL: flagged}
                source = "fallback"
                s.notes.append(
                    f"distortion detection: fallback from measured cues (normalized < {CUE_THRESHOLD:g}) after "
                    f"{out.attempts} unparsable replies"
                )
            for obj in found if s.user_distortions else ():
                found[obj] += [d for d in s.user_distortions if d not in found[obj]]
            s.distortions = found
            s.sources["distortions"] = source
            s.record(
                "distortion_detection", round_, llm_s / len(asked) + (cue_s / len(failed) if i in failed else 0.0),
                batch=len(asked), backend_calls=out.attempts, attempts=out.attempts,
                parse_failures=len(out.errors), errors=out.errors, source=source,
            )

    def _detection_prompt(self, s: ItemState) -> Prompt:
        user = (
            AGENTIC_DETECTION_USER_TEMPLATE.format(distortions=", ".join(s.user_distortions))
            if s.user_distortions else ""
        )
        text = AGENTIC_DETECTION_TEMPLATE.format(
            objects=", ".join(s.plan["objects"]), user_distortions=user, categories=", ".join(CATEGORIES)
        )
        return Prompt.simple([*image_parts(s, self.multi_image), text], system=AGENTIC_SYSTEM)

    # ------------------------------------------------------------------ analysis
    @staticmethod
    def targets(s: ItemState) -> list[tuple[str, str]]:
        """(object, distortion) pairs to analyse, in order."""
        return [(obj, d) for obj, ds in s.distortions.items() for d in ds]

    def analyze(self, states: Sequence[ItemState], round_: int) -> None:
        """Distortion analysis: type, severity and a short explanation per detected distortion."""
        asked = []
        for s in states:
            if not s.flag("distortion_analysis"):
                continue
            if not self.targets(s):
                s.notes.append("distortion analysis: nothing to analyse (no distortion detected or named)")
                s.sources["analysis"] = "skipped"
                continue
            asked.append(s)
        if not asked:
            return
        jobs = [JsonJob(s, self._analysis_prompt(s)) for s in asked]
        t0 = time.perf_counter()
        outcomes, calls = ask_json(
            self.backend, jobs, AnalysisOutput, stage="distortion_analysis",
            max_retries=self.max_retries, max_new_tokens=self.max_new_tokens,
        )
        self.calls += calls
        llm_s = time.perf_counter() - t0
        missing: dict[int, list[tuple[str, str]]] = {}
        for i, (s, out) in enumerate(zip(asked, outcomes)):
            got = [e.model_dump() for e in out.value.analysis] if out.ok else []
            answered = {(e["object"], e["type"]) for e in got} | {(GLOBAL, e["type"]) for e in got}
            miss = [t for t in self.targets(s) if t not in answered and (GLOBAL, t[1]) not in answered]
            if out.ok and not got:
                miss = self.targets(s)
            s.analysis = [{**e, "source": "model"} for e in got]
            if miss:
                missing[i] = miss
        cue_s = self.measure_cues(asked, {i: [d for _, d in m] for i, m in missing.items()}) if missing else 0.0
        for i, (s, out) in enumerate(zip(asked, outcomes)):
            for obj, d in missing.get(i, []):
                s.analysis.append(self._fallback_entry(s, obj, d, parsed=out.ok))
            if i not in missing:
                source = "model"
            elif out.ok and any(e["source"] == "model" for e in s.analysis):
                source = "model+fallback"
            else:
                source = "fallback"
            if i in missing:
                s.notes.append(
                    "distortion analysis: fallback severities from measured cues for "
                    + ", ".join(f"{d} ({o})" for o, d in missing[i])
                    + (f" after {out.attempts} unparsable replies" if not out.ok else " (the model did not analyse them)")
                )
            s.sources["analysis"] = source
            s.record(
                "distortion_analysis", round_, llm_s / len(asked) + (cue_s / len(missing) if i in missing else 0.0),
                batch=len(asked), backend_calls=out.attempts, attempts=out.attempts,
                parse_failures=len(out.errors), errors=out.errors, source=source,
            )

    def _analysis_prompt(self, s: ItemState) -> Prompt:
        targets = ", ".join(f"{d} ({o})" for o, d in self.targets(s))
        text = AGENTIC_ANALYSIS_TEMPLATE.format(targets=targets)
        return Prompt.simple([*image_parts(s, self.multi_image), text], system=AGENTIC_SYSTEM)

    def _fallback_entry(self, s: ItemState, obj: str, d: str, *, parsed: bool) -> dict[str, Any]:
        why = "the model did not analyse it" if parsed else "the model's analysis could not be parsed"
        tool = CUE_TOOLS.get(d)
        r = s.cues.get(tool) if tool else None
        if r is None or not r.ok or r.normalized is None:
            reason = (
                f"no cue tool measures {d!r}" if tool is None
                else f"the {tool} cue is not allowed" if tool not in self.infos
                else f"the {tool} cue failed: {r.error if r is not None else 'not run'}"
            )
            return {"object": obj, "type": d, "severity": None, "source": "fallback",
                    "explanation": f"Not measured ({reason}); {why}."}
        where = "" if obj == GLOBAL else f" (measured on the whole image, not on {obj})"
        return {
            "object": obj, "type": d, "severity": severity_from_score(r.normalized), "source": "fallback",
            "explanation": f"Estimated from the {tool} cue: raw {_fmt(r.raw)}, normalized {r.normalized:.2f}/5"
                           f"{where}; {why}.",
        }

    # ------------------------------------------------------------------ tool selection
    @staticmethod
    def selection_targets(s: ItemState) -> list[str]:
        """Distortions to choose tools for (from the analysis, else the detection), or ``["overall quality"]``."""
        names = [e["type"] for e in s.analysis] or [d for ds in s.distortions.values() for d in ds]
        out = list(dict.fromkeys(names))
        return out or [AGENTIC_SELECTION_OVERALL]

    def select(self, states: Sequence[ItemState], round_: int) -> None:
        """One tool per distortion: chosen by the VLM from the tool descriptions, or from the table."""
        asked = []
        for s in states:
            if not (s.flag("tool_selection") or s.flag("tool_execution")):
                continue
            kind, names = self.tools_for(s)
            if not names:
                s.notes.append("tool selection: no tool is allowed for this mode")
                s.sources["tool_selection"] = "none"
                continue
            if s.flag("tool_selection"):
                asked.append((s, kind, names))
            else:
                s.selection = {t: {"tool": table_tool(t, kind, names), "source": "table"} for t in self.selection_targets(s)}
                s.sources["tool_selection"] = "table"
                s.record("tool_selection", round_, 0.0, backend_calls=0, source="table")
        if not asked:
            return
        jobs = [
            JsonJob(s, self._selection_prompt(s, kind, names), context={"allowed_tools": names})
            for s, kind, names in asked
        ]
        t0 = time.perf_counter()
        outcomes, calls = ask_json(
            self.backend, jobs, SelectionOutput, stage="tool_selection",
            max_retries=self.max_retries, max_new_tokens=self.max_new_tokens,
        )
        self.calls += calls
        per_item = (time.perf_counter() - t0) / len(asked)
        for (s, kind, names), out in zip(asked, outcomes):
            targets = self.selection_targets(s)
            chosen = dict(out.value.tools) if out.ok else {}
            if len(targets) == 1 and len(chosen) == 1 and targets[0] not in chosen:
                chosen = {targets[0]: next(iter(chosen.values()))}  # one distortion, named differently
            sel: dict[str, dict[str, str]] = {}
            for t in targets:
                if t in chosen:
                    sel[t] = {"tool": chosen[t], "source": "model"}
                else:
                    sel[t] = {"tool": table_tool(t, kind, names), "source": "fallback" if not out.ok else "table"}
            extra = sorted(set(chosen) - set(targets))
            if extra:
                s.notes.append(f"tool selection: ignored choices for distortions not under analysis: {', '.join(extra)}")
            if not out.ok:
                s.notes.append(f"tool selection: fallback to the mapping table after {out.attempts} unparsable replies")
                source = "fallback"
            elif any(v["source"] != "model" for v in sel.values()):
                s.notes.append("tool selection: the table filled distortions the model chose no tool for")
                source = "model+table"
            else:
                source = "model"
            s.selection = sel
            s.sources["tool_selection"] = source
            s.record(
                "tool_selection", round_, per_item, batch=len(asked), backend_calls=out.attempts,
                attempts=out.attempts, parse_failures=len(out.errors), errors=out.errors, source=source,
            )

    def _selection_prompt(self, s: ItemState, kind: str, names: Sequence[str]) -> Prompt:
        targets = self.selection_targets(s)
        example_tool = table_tool(targets[0], kind, names) or names[0]
        text = AGENTIC_SELECTION_TEMPLATE.format(
            targets=", ".join(targets),
            kind="full-reference" if kind == FR else "no-reference",
            tools="\n".join(f"- {self.infos[n].text()}" for n in names),
            example_target=targets[0],
            example_tool=example_tool,
        )
        return Prompt.simple([*image_parts(s, self.multi_image), text], system=AGENTIC_SYSTEM)

    # ------------------------------------------------------------------ tool execution
    def execute(self, states: Sequence[ItemState], round_: int) -> None:
        """Run every selected tool of every item concurrently (FR tools with the item's reference)."""
        asked = [s for s in states if s.flag("tool_execution") and s.selection]
        for s in states:
            if s.flag("tool_execution") and not s.selection:
                s.notes.append("tool execution: no tool was selected")
        if not asked:
            return
        jobs = [(s, v["tool"]) for s in asked for v in s.selection.values() if v["tool"]]
        wall = self.run_tools(dict.fromkeys(jobs))
        for s in asked:
            names = list(dict.fromkeys(v["tool"] for v in s.selection.values() if v["tool"]))
            s.sources["tools"] = "executed"
            for n in names:
                if not s.tool_results[n].ok:
                    s.notes.append(f"tool execution: {n} failed ({s.tool_results[n].error}); fused without it")
            s.record(
                "tool_execution", round_, sum(s.tool_results[n].seconds or 0.0 for n in names),
                batch=len(asked), backend_calls=0, wall_seconds=wall, tools=names,
                errors=[f"{n}: {s.tool_results[n].error}" for n in names if not s.tool_results[n].ok],
            )

    def run(self, states: Sequence[ItemState], round_: int) -> None:
        """All executor stages, in order, as each item's plan asks (each announced to ``on_stage`` first)."""
        for stage, step in (("distortion detection", self.detect), ("distortion analysis", self.analyze),
                            ("tool selection", self.select), ("tool execution", self.execute)):
            if self.on_stage is not None:
                self.on_stage(stage, round_)
            step(states, round_)


def tools_detail(s: ItemState, infos: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``details.tools``: name → raw, normalized, kind, direction, distortions it was chosen for, error."""
    out: dict[str, dict[str, Any]] = {}
    for name, r in s.tool_results.items():
        info = infos.get(name)
        out[name] = {
            "raw": r.raw,
            "normalized": r.normalized,
            "kind": info.kind if info else None,
            "higher_is_better": info.higher_is_better if info else None,
            "for": [t for t, v in s.selection.items() if v["tool"] == name],
            "seconds": r.seconds,
            "error": r.error,
            "map": r.details.get("map"),  # source, file and (refitted) what it was fitted on
        }
    return out


def cues_detail(s: ItemState) -> dict[str, dict[str, Any]]:
    """``details.cues``: the cue measurements behind fallbacks (not part of q̄)."""
    return {n: {"raw": r.raw, "normalized": r.normalized, "error": r.error} for n, r in s.cues.items()}

