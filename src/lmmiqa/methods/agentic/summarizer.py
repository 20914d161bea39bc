"""AgenticIQA summarizer (METHODS §5.4): the VLM sees the image, the query and the gathered evidence (distortion
analysis and normalized tool scores), answers one of the letters A–E, and explains its judgement.

Two backend calls per batch:

1. **levels** — one forward pass for all items (:meth:`~lmmiqa.backends.base.Backend.level_logprobs`) with the
   answer prefix :data:`lmmiqa.prompts.AGENTIC_ANSWER_PREFIX` and the candidates
   ``LETTER_SCALE.candidates(prefix)`` (``" E"`` … ``" A"`` after ``"Answer:"``); ``p_c`` is their softmax and the
   score is fused with the tools' ``q̄`` by :func:`lmmiqa.methods.agentic.fusion.fuse_evidence`;
2. **explanation** — a JSON reply ``{"explanation": ..., "level": ...}`` (with the usual retries). When it cannot
   be parsed, the explanation is a templated summary of the measured evidence and
   ``details.explanation_source`` is ``"template"`` (else ``"model"``).

Where the level probabilities are not available (a backend without log-probabilities raises
:class:`~lmmiqa.errors.UnsupportedError`, a server that returns none raises
:class:`~lmmiqa.errors.BackendError` — a server that is down fails the explanation call right after, loudly —
a server whose top log-probabilities contain no letter gives a row of ``-inf``, and a row with NaN or ``+inf``
— a broken forward — is not used), the reason is kept in the item's notes and in ``details.fusion.p_fallback``,
and ``details.fusion.p_source`` says what was used instead: ``"generated"`` (the letter of the parsed
explanation reply, as a one-hot p), ``"uniform"`` (no letter either, but tool scores exist: q is the tool prior's
mean), or the item fails with an error when there is neither.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.backends.base import Backend
from lmmiqa.errors import BackendError, is_run_level
from lmmiqa.levels import LETTER_SCALE
from lmmiqa.methods.agentic.fusion import Fusion, fuse_evidence, level_name
from lmmiqa.methods.agentic.planner import image_parts
from lmmiqa.methods.agentic.schemas import SummaryOutput
from lmmiqa.methods.agentic.state import ItemState, JsonJob, ask_json
from lmmiqa.methods.coverage import check_levels
from lmmiqa.methods.mllm import token_details
from lmmiqa.prompts import (
    AGENTIC_ANSWER_PREFIX,
    AGENTIC_EVIDENCE_CLEAN,
    AGENTIC_EVIDENCE_DETECTED_TEMPLATE,
    AGENTIC_EVIDENCE_DISTORTION_TEMPLATE,
    AGENTIC_EVIDENCE_NONE,
    AGENTIC_EVIDENCE_TOOL_TEMPLATE,
    AGENTIC_EXPLANATION_TEMPLATE,
    AGENTIC_SUMMARY_TEMPLATE,
    AGENTIC_SYSTEM,
)
from lmmiqa.types import Prompt

#: letter -> level value (A = 5 … E = 1)
LETTER_VALUES: dict[str, float] = dict(zip(LETTER_SCALE.tokens, LETTER_SCALE.values))


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def usable_tools(s: ItemState) -> dict[str, Any]:
    """The executed tools with a normalized score (the ones that enter q̄)."""
    return {n: r for n, r in s.tool_results.items() if r.ok and r.normalized is not None}


def evidence_lines(s: ItemState, infos: dict[str, Any]) -> list[str]:
    """The evidence shown to the summarizer: analysed (else detected) distortions, then tool scores."""
    lines: list[str] = []
    if s.analysis:
        for e in s.analysis:
            lines.append(
                AGENTIC_EVIDENCE_DISTORTION_TEMPLATE.format(
                    type=e["type"], object=e["object"], severity=e["severity"] or "not measured",
                    explanation=e.get("explanation") or "",
                ).rstrip()
            )
    elif any(s.distortions.values()):
        for obj, ds in s.distortions.items():
            if ds:
                lines.append(AGENTIC_EVIDENCE_DETECTED_TEMPLATE.format(object=obj, types=", ".join(ds)))
    elif s.detection_ran:
        lines.append(AGENTIC_EVIDENCE_CLEAN)
    for name, r in usable_tools(s).items():
        info = infos.get(name)
        lines.append(
            AGENTIC_EVIDENCE_TOOL_TEMPLATE.format(
                tool=name,
                kind="full-reference" if info is not None and info.kind == "fr" else "no-reference",
                direction="higher is better" if info is None or info.higher_is_better else "lower is better",
                raw=_fmt(r.raw),
                normalized=f"{r.normalized:.2f}",
            )
        )
    return lines or [AGENTIC_EVIDENCE_NONE]


def level_prompt(s: ItemState, infos: dict[str, Any], multi_image: bool) -> Prompt:
    """The A–E question, answered right after :data:`AGENTIC_ANSWER_PREFIX`."""
    text = AGENTIC_SUMMARY_TEMPLATE.format(query=s.query, evidence="\n".join(evidence_lines(s, infos)))
    return Prompt.simple([*image_parts(s, multi_image), text], system=AGENTIC_SYSTEM, answer_prefix=AGENTIC_ANSWER_PREFIX)


def explanation_prompt(s: ItemState, infos: dict[str, Any], multi_image: bool) -> Prompt:
    """The JSON explanation request."""
    text = AGENTIC_EXPLANATION_TEMPLATE.format(query=s.query, evidence="\n".join(evidence_lines(s, infos)))
    return Prompt.simple([*image_parts(s, multi_image), text], system=AGENTIC_SYSTEM)


def template_explanation(s: ItemState, fusion: Fusion | None, reason: str) -> str:
    """A summary of the measured evidence, used when the model's explanation could not be parsed."""
    parts: list[str] = []
    if fusion is not None:
        word = level_name(fusion.score, LETTER_SCALE.values, LETTER_SCALE.words)
        parts.append(f"Fused quality score {fusion.score:.2f} on 1-5 (closest level: {word}).")
    seen = [e for e in s.analysis if e.get("severity")]
    if seen:
        parts.append(
            "Distortions: "
            + "; ".join(f"{e['type']} on {e['object']} ({e['severity']}, {e['source']})" for e in seen)
            + "."
        )
    elif any(s.distortions.values()):
        parts.append(
            "Distortions detected: "
            + "; ".join(f"{', '.join(ds)} on {o}" for o, ds in s.distortions.items() if ds)
            + f" ({s.sources.get('distortions', 'unknown')})."
        )
    elif s.detection_ran:
        parts.append("No distortion was detected.")
    tools = usable_tools(s)
    if tools:
        parts.append(
            "Tool scores (normalized 1-5, 5 = best): "
            + ", ".join(f"{n} {r.normalized:.2f} (raw {_fmt(r.raw)})" for n, r in tools.items())
            + "."
        )
    else:
        parts.append("No tool score was measured.")
    if s.query_given:
        parts.append(f'The query "{s.query}" was not answered by the model.')
    parts.append(f"This summary is a template: {reason}.")
    return " ".join(parts)


@dataclass
class Summary:
    """The summarizer's outcome for one item."""

    fusion: Fusion | None
    p_source: str
    explanation: str
    explanation_source: str
    letter: str | None
    error: str | None = None
    #: why the level probabilities were not used (``p_source`` is not ``logprobs``), else None
    p_fallback: str | None = None
    #: full-vocabulary probability of the letters (None when the backend gave no log-probabilities)
    covered_mass: float | None = None
    #: letters a server's top-k listing left out (see :func:`lmmiqa.methods.coverage.missing_level_details`)
    missing_levels: dict[str, Any] | None = None
    #: ``{"image_tokens", "prompt_tokens"}`` of the level prompt where the backend can count them
    tokens: dict[str, Any] | None = None


def run_summarizer(
    backend: Backend,
    states: Sequence[ItemState],
    *,
    infos: dict[str, Any],
    eta: float,
    round_: int = 0,
    max_retries: int,
    max_new_tokens: int,
) -> tuple[list[Summary], int]:
    """Level probabilities (one forward for all items), explanations (one generate per attempt), fusion."""
    if not states:
        return [], 0
    multi = bool(getattr(backend, "supports_multi_image", True))
    calls = 0
    n = len(states)

    # 1. level probabilities
    t0 = time.perf_counter()
    cands = LETTER_SCALE.candidates(AGENTIC_ANSWER_PREFIX)
    unsupported: str | None = None
    prompts = [level_prompt(s, infos, multi) for s in states]
    masses: list[float | None] = [None] * n
    missing: list[dict[str, Any] | None] = [None] * n
    try:
        logits = np.asarray(backend.level_logprobs(prompts, cands), dtype=np.float64)
        calls += 1
        for s in states:
            s.backend_calls += 1
        # the same checks as every level read-out: covered mass, letters outside a server's top-k (warned once)
        mass, missing = check_levels(
            logits, backend=backend, prompts=prompts, candidates=cands, what="agentic-iqa summarizer",
            keys=LETTER_SCALE.keys, values=LETTER_SCALE.values,
        )
        masses = [float(m) for m in mass]
    except BackendError as err:  # UnsupportedError included
        if is_run_level(err):  # a server that stopped answering ends the run
            raise
        logits = np.full((n, len(cands)), -np.inf)
        unsupported = f"{type(err).__name__}: {err}"
    tokens = token_details(backend, prompts) or [None] * n
    levels_s = (time.perf_counter() - t0) / n

    # 2. explanations
    t1 = time.perf_counter()
    jobs = [JsonJob(s, explanation_prompt(s, infos, multi)) for s in states]
    outcomes, ecalls = ask_json(
        backend, jobs, SummaryOutput, stage="summarizer", max_retries=max_retries, max_new_tokens=max_new_tokens
    )
    calls += ecalls
    expl_s = (time.perf_counter() - t1) / n

    # 3. fusion
    summaries: list[Summary] = []
    for i, (s, out) in enumerate(zip(states, outcomes)):
        row = logits[i]
        letter = out.value.level if out.ok else None
        tool_scores = [r.normalized for r in usable_tools(s).values()]
        error = None
        reason = unsupported or "no letter candidate was visible"
        if np.isnan(row).any() or np.isposinf(row).any():  # a broken forward (fp16 overflow, bad server)
            reason = f"the level log-probabilities are not finite ({', '.join(f'{x:g}' for x in row)})"
            row = np.full(len(cands), -np.inf)
        if np.isfinite(row).any():
            p_source = "logprobs"
        elif letter is not None:
            p_source = "generated"
            row = np.array([0.0 if t == letter else -np.inf for t in LETTER_SCALE.tokens])
        elif tool_scores:
            p_source = "uniform"
            row = np.zeros(len(cands))
        else:
            p_source = "none"
        fusion = fuse_evidence(row, tool_scores, eta) if p_source != "none" else None
        if fusion is None:
            error = f"nothing to score: no level probabilities ({reason}), no parsable level letter and no tool score"
        if p_source != "logprobs":
            s.notes.append(f"summarizer: level probabilities unavailable ({reason}); p from {p_source}")
        if out.ok:
            explanation, e_source = out.value.explanation, "model"
        else:
            explanation = template_explanation(
                s, fusion, f"the model's explanation could not be parsed after {out.attempts} attempts"
            )
            e_source = "template"
        s.record(
            "summarizer", round_, levels_s + expl_s, batch=n,
            backend_calls=out.attempts + (0 if unsupported else 1), attempts=out.attempts,
            parse_failures=len(out.errors), errors=out.errors, source=e_source, p_source=p_source,
        )
        summaries.append(
            Summary(fusion, p_source, explanation, e_source, letter, error, None if p_source == "logprobs" else reason,
                    covered_mass=masses[i], missing_levels=missing[i], tokens=tokens[i])
        )
    return summaries, calls
