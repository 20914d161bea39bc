"""AgenticIQA planner (METHODS §5.1): the VLM reads the query (and sees the image, and the reference in
full-reference mode) and answers a JSON plan: query type, reference mode, objects of interest, the distortions
the user names, and four flags — distortion_detection, distortion_analysis, tool_selection, tool_execution.

The agent corrects the reference mode to the inputs (a reference was given or not) and records the correction
in ``plan["corrections"]``. When the reply cannot be parsed after the retries, the documented fallback plan is
used (``plan["source"] = "fallback"``): query type ``IQA``, the actual reference mode, objects ``["Global"]``,
the distortion categories whose names (or synonyms) occur in the query text, and every flag true.

All items of a batch are planned with one backend call (plus one per retry round).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

from lmmiqa.backends.base import Backend
from lmmiqa.methods.agentic.schemas import _CATEGORY_SYNONYMS, CATEGORIES, GLOBAL, PlannerOutput
from lmmiqa.methods.agentic.state import ItemState, JsonJob, ask_json
from lmmiqa.prompts import (
    AGENTIC_IMAGE_LABEL,
    AGENTIC_PLANNER_TEMPLATE,
    AGENTIC_REFERENCE_LABEL,
    AGENTIC_REFERENCE_NOT_PROVIDED,
    AGENTIC_REFERENCE_PROVIDED,
    AGENTIC_REPLAN_TEMPLATE,
    AGENTIC_SYSTEM,
)
from lmmiqa.types import Prompt

STAGE = "planner"
PLAN_FLAGS = ("distortion_detection", "distortion_analysis", "tool_selection", "tool_execution")


def image_parts(state: ItemState, multi_image: bool) -> list[Any]:
    """The labelled image(s) that open every stage's user turn (the reference too in FR mode, when the
    backend takes several images per prompt)."""
    parts: list[Any] = [AGENTIC_IMAGE_LABEL, state.image]
    if state.fr and multi_image:
        parts += ["\n" + AGENTIC_REFERENCE_LABEL, state.ref]
    parts.append("\n")
    return parts


def query_distortions(query: str) -> list[str]:
    """Distortion categories named in a free-text query (category names and synonyms, whole words), in
    category order. Deterministic; used by the fallback plan."""
    text = " " + re.sub(r"[_\-]+", " ", query.lower()) + " "
    found: set[str] = set()
    for word in (*CATEGORIES, *_CATEGORY_SYNONYMS):
        if re.search(r"(?<![a-z])" + re.escape(word) + r"(?![a-z])", text):
            found.add(word if word in CATEGORIES else _CATEGORY_SYNONYMS[word])
    return [c for c in CATEGORIES if c in found]


def planner_prompt(state: ItemState, multi_image: bool, replan_note: str | None = None) -> Prompt:
    """The planner's prompt for one item (with the re-plan note on later rounds)."""
    text = AGENTIC_PLANNER_TEMPLATE.format(
        query=state.query,
        reference=AGENTIC_REFERENCE_PROVIDED if state.fr else AGENTIC_REFERENCE_NOT_PROVIDED,
        categories=", ".join(CATEGORIES),
    )
    if replan_note:
        text += "\n" + replan_note
    return Prompt.simple([*image_parts(state, multi_image), text], system=AGENTIC_SYSTEM)


def fallback_plan(state: ItemState) -> dict[str, Any]:
    """The deterministic plan used when the planner's reply cannot be parsed: run every stage."""
    return {
        "query_type": "IQA",
        "reference_mode": state.mode,
        "objects": [GLOBAL],
        "distortions": query_distortions(state.query) if state.query_given else [],
        "plan": dict.fromkeys(PLAN_FLAGS, True),
        "source": "fallback",
        "corrections": [],
    }


def accept_plan(state: ItemState, out: PlannerOutput) -> dict[str, Any]:
    """The model's plan as a dict, with the reference mode corrected to the inputs (recorded)."""
    plan = out.model_dump()
    plan["source"] = "model"
    plan["corrections"] = []
    if plan["reference_mode"] != state.mode:
        plan["corrections"].append(
            f"reference_mode {plan['reference_mode']!r} corrected to {state.mode!r} "
            f"(a reference image was {'given' if state.fr else 'not given'})"
        )
        plan["reference_mode"] = state.mode
    return plan


def replan_note(state: ItemState) -> str:
    """The note added to the planner's prompt when evidence was missing."""
    prev = json.dumps(state.plan["plan"]) if state.plan else "{}"
    return AGENTIC_REPLAN_TEMPLATE.format(plan=prev, reason=state.replan_reasons[-1] if state.replan_reasons else "")


def run_planner(
    backend: Backend,
    states: Sequence[ItemState],
    *,
    round_: int,
    max_retries: int,
    max_new_tokens: int,
) -> int:
    """Plan every item (one batched call per attempt); sets ``state.plan``. Returns the backend calls made."""
    if not states:
        return 0
    multi = bool(getattr(backend, "supports_multi_image", True))
    jobs = [JsonJob(s, planner_prompt(s, multi, replan_note(s) if round_ > 0 else None)) for s in states]
    t0 = time.perf_counter()
    outcomes, calls = ask_json(
        backend, jobs, PlannerOutput, stage=STAGE, max_retries=max_retries, max_new_tokens=max_new_tokens
    )
    per_item = (time.perf_counter() - t0) / len(states)
    for s, out in zip(states, outcomes):
        if out.ok:
            s.plan = accept_plan(s, out.value)
        else:
            s.plan = fallback_plan(s)
            s.notes.append(f"planner: fallback plan after {out.attempts} unparsable replies")
        s.sources["plan"] = s.plan["source"]
        s.user_distortions = list(s.plan["distortions"])
        note = "the backend takes one image per prompt: the VLM sees no reference, FR tools do"
        if s.fr and not multi and note not in s.notes:
            s.notes.append(note)
        s.record(
            STAGE,
            round_,
            per_item,
            batch=len(states),
            backend_calls=out.attempts,
            attempts=out.attempts,
            parse_failures=len(out.errors),
            errors=out.errors,
            source=s.plan["source"],
        )
    return calls
