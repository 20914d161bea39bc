"""Per-image working state of the AgenticIQA agent, its trace, and the JSON question-and-retry loop.

:class:`ItemState` holds everything the agent learns about one image while the stages run (plan, distortions,
analysis, tool choices and results, fusion, explanation), where each part came from (``"model"``, or a
documented fallback), and the bookkeeping the result reports: parse failures, backend calls, replans and a
trace of stages with timings.

:func:`ask_json` is the one place the agent asks the VLM for JSON: all prompts of a stage go to the backend in
one :meth:`~lmmiqa.backends.base.Backend.generate` call; replies that do not parse (or do not fit the stage's
schema) are counted as parse failures and asked again, together, with the previous reply and
:data:`lmmiqa.prompts.AGENTIC_JSON_REMINDER` appended — up to ``max_retries`` times. What still fails is
returned as ``None`` and the caller applies its documented fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmmiqa.backends.base import Backend
from lmmiqa.errors import ParseError
from lmmiqa.methods.agentic.parsing import parse_as
from lmmiqa.prompts import AGENTIC_JSON_REMINDER
from lmmiqa.types import Message, Prompt

#: how much of a bad reply is echoed back in a retry prompt
_ECHO_CHARS = 400
#: how many characters of each failure message the trace keeps
_ERROR_CHARS = 300


@dataclass(eq=False)
class ItemState:
    """What the agent knows about one image.

    Attributes:
        key: the result's ``image`` (path as given, or ``<memory:i>``).
        image: the RGB PIL image.
        ref: the reference image (full-reference mode), or None.
        query: the user's query (or the default quality question).
        plan: the planner's output as a dict (after corrections), with ``source``.
        distortions: object of interest → distortion names.
        analysis: analysed distortions ``{object, type, severity, explanation, source}``.
        selection: distortion → ``{tool, source}``.
        tool_results: tool name → :class:`lmmiqa.tools.ToolResult` of the executed tools (the evidence).
        cues: tool name → ToolResult of cue tools measured for a fallback (not part of q̄).
        sources: stage → where its output came from (``model``, ``fallback``, ``planner``, ``table``, ...).
        parse_failures: replies that could not be parsed (all stages, all rounds).
        failures_by_stage: the same, per stage.
        backend_calls: backend calls this image took part in (a batched call counts once per image in it).
        replans: how many times the planner was asked again because evidence was missing.
        trace: one record per stage run (stage, round, seconds, backend_calls, attempts, parse_failures,
            source, notes).
        notes: human-readable remarks (corrections, skipped stages).
    """

    key: str
    image: Any
    ref: Any = None
    query: str = ""
    query_given: bool = False
    plan: dict[str, Any] | None = None
    distortions: dict[str, list[str]] = field(default_factory=dict)
    user_distortions: list[str] = field(default_factory=list)
    analysis: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, dict[str, str]] = field(default_factory=dict)
    tool_results: dict[str, Any] = field(default_factory=dict)
    cues: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    parse_failures: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    backend_calls: int = 0
    replans: int = 0
    replan_reasons: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    detection_ran: bool = False

    @property
    def fr(self) -> bool:
        """True in full-reference mode (a reference image was given)."""
        return self.ref is not None

    @property
    def mode(self) -> str:
        return "full-reference" if self.fr else "no-reference"

    def flag(self, name: str) -> bool:
        """A plan flag (False before planning)."""
        return bool(self.plan and self.plan["plan"].get(name))

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + float(seconds)

    def record(self, stage: str, round_: int, seconds: float, **fields: Any) -> dict[str, Any]:
        """Append a trace record (and add its share of time to ``timings``)."""
        rec = {"stage": stage, "round": round_, "seconds": float(seconds), **fields}
        self.trace.append(rec)
        self.add_time(stage, seconds)
        return rec

    def count_failure(self, stage: str) -> None:
        self.parse_failures += 1
        self.failures_by_stage[stage] = self.failures_by_stage.get(stage, 0) + 1

    def evidence_ok(self) -> bool:
        """Whether the executor gathered anything the summarizer can use.

        Evidence is a successful normalized tool score, an analysed distortion, or a detection answer (an empty
        detection is evidence too: "no distortion seen").
        """
        if any(r.ok and r.normalized is not None for r in self.tool_results.values()):
            return True
        return bool(self.analysis) or self.detection_ran

    def missing_evidence_reason(self) -> str:
        if not self.plan:
            return "no plan"
        ran = [k for k, v in self.plan["plan"].items() if v]
        if not ran:
            return "the plan ran no stage (every flag was false)"
        failed = [f"{n}: {r.error}" for n, r in self.tool_results.items() if not r.ok]
        if failed:
            return "every tool failed (" + "; ".join(failed) + ")"
        if self.flag("tool_execution") and not self.tool_results:
            return "no tool could be run"
        return "the planned stages (" + ", ".join(ran) + ") produced no distortion analysis or tool score"


@dataclass
class JsonJob:
    """One JSON question: the item it is for, its prompt and its schema validation context."""

    state: ItemState
    prompt: Prompt
    context: dict[str, Any] | None = None


@dataclass
class JsonOutcome:
    """The parsed answer (or None after every attempt failed), the attempts made and each failure's message."""

    value: Any
    attempts: int
    errors: list[str]

    @property
    def ok(self) -> bool:
        return self.value is not None


def retry_prompt(prompt: Prompt, reply: str, error: str) -> Prompt:
    """The prompt of a retry: the original turn, the bad reply (truncated) and the "return only JSON" reminder."""
    echo = reply.strip()[:_ECHO_CHARS] or "(empty reply)"
    reminder = AGENTIC_JSON_REMINDER.format(error=error[:_ERROR_CHARS])
    return Prompt(
        (*prompt.messages, Message("assistant", (echo,)), Message("user", (reminder,))),
        prompt.answer_prefix,
    )


def ask_json(
    backend: Backend,
    jobs: Sequence[JsonJob],
    schema: type,
    *,
    stage: str,
    max_retries: int,
    max_new_tokens: int,
) -> tuple[list[JsonOutcome], int]:
    """Ask every job's prompt, parse each reply with ``schema``, retry the failures together.

    Every failure is counted on its item (:meth:`ItemState.count_failure`), and every backend call on the items
    it served. Backend errors propagate (they are not parse failures).

    Returns:
        (one outcome per job, in order; the number of backend calls made).
    """
    outcomes = [JsonOutcome(None, 0, []) for _ in jobs]
    prompts = [j.prompt for j in jobs]
    pending = list(range(len(jobs)))
    calls = 0
    for _attempt in range(1 + int(max_retries)):
        if not pending:
            break
        replies = backend.generate([prompts[i] for i in pending], max_new_tokens=max_new_tokens)
        calls += 1
        if len(replies) != len(pending):
            raise RuntimeError(f"backend returned {len(replies)} replies for {len(pending)} prompts")
        still: list[int] = []
        for i, reply in zip(pending, replies):
            job, out = jobs[i], outcomes[i]
            job.state.backend_calls += 1
            out.attempts += 1
            try:
                out.value = parse_as(reply, schema, context=job.context)
            except ParseError as err:
                msg = str(err)
                out.errors.append(msg[:_ERROR_CHARS])
                job.state.count_failure(stage)
                prompts[i] = retry_prompt(job.prompt, reply, msg)
                still.append(i)
        pending = still
    return outcomes, calls
