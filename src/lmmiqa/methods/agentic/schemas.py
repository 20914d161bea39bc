"""Pydantic schemas of every JSON exchange between the AgenticIQA agent and the VLM (METHODS §5).

One schema per stage: :class:`PlannerOutput` (planner), :class:`DetectionOutput` (distortion detection),
:class:`AnalysisOutput` (distortion analysis), :class:`SelectionOutput` (tool selection) and
:class:`SummaryOutput` (the summarizer's explanation). Validation is lenient about spelling only — case,
``_``/``-`` for spaces, common synonyms (``"jpeg"`` → compression, ``"mild"`` → slight, ``"FR"`` →
full-reference) — and strict about meaning: an unknown distortion category, severity or tool is a validation
error, which the agent counts as a parse failure and answers with a retry (never a silent guess).

Unknown extra keys are ignored, so a model that adds a comment field still parses.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

#: the executor's distortion categories (AgenticIQA)
CATEGORIES: tuple[str, ...] = (
    "blur",
    "color distortion",
    "compression",
    "noise",
    "brightness change",
    "sharpness",
    "contrast",
)

#: the analysis severities, mildest first
SEVERITIES: tuple[str, ...] = ("none", "slight", "moderate", "severe", "extreme")

#: the object name meaning "the whole image"
GLOBAL = "Global"

QUERY_TYPES = ("IQA", "other")
REFERENCE_MODES = ("full-reference", "no-reference")

_CATEGORY_SYNONYMS: dict[str, str] = {
    "blurry": "blur",
    "blurred": "blur",
    "blurring": "blur",
    "blurriness": "blur",
    "motion blur": "blur",
    "gaussian blur": "blur",
    "lens blur": "blur",
    "defocus": "blur",
    "defocus blur": "blur",
    "out of focus": "blur",
    "color": "color distortion",
    "colour": "color distortion",
    "colour distortion": "color distortion",
    "color shift": "color distortion",
    "colour shift": "color distortion",
    "color cast": "color distortion",
    "colour cast": "color distortion",
    "color saturation": "color distortion",
    "saturation": "color distortion",
    "desaturation": "color distortion",
    "jpeg": "compression",
    "jpeg compression": "compression",
    "jpeg2000": "compression",
    "jpeg 2000": "compression",
    "jpeg2000 compression": "compression",
    "compression artifacts": "compression",
    "compression artefacts": "compression",
    "blocking": "compression",
    "blockiness": "compression",
    "block artifacts": "compression",
    "banding": "compression",
    "ringing": "compression",
    "noisy": "noise",
    "grain": "noise",
    "graininess": "noise",
    "gaussian noise": "noise",
    "white noise": "noise",
    "sensor noise": "noise",
    "brightness": "brightness change",
    "exposure": "brightness change",
    "overexposure": "brightness change",
    "over exposure": "brightness change",
    "overexposed": "brightness change",
    "underexposure": "brightness change",
    "under exposure": "brightness change",
    "underexposed": "brightness change",
    "too dark": "brightness change",
    "too bright": "brightness change",
    "sharpening": "sharpness",
    "oversharpening": "sharpness",
    "over sharpening": "sharpness",
    "low contrast": "contrast",
    "contrast change": "contrast",
    "contrast distortion": "contrast",
}

_NONE_WORDS = frozenset({"none", "no distortion", "no distortions", "nothing", "n/a", "na", "null", ""})

_SEVERITY_SYNONYMS: dict[str, str] = {
    "no": "none",
    "not present": "none",
    "mild": "slight",
    "minor": "slight",
    "low": "slight",
    "light": "slight",
    "medium": "moderate",
    "noticeable": "moderate",
    "high": "severe",
    "strong": "severe",
    "heavy": "severe",
    "very severe": "extreme",
    "very high": "extreme",
    "critical": "extreme",
}

_REFERENCE_SYNONYMS: dict[str, str] = {
    "fr": "full-reference",
    "full reference": "full-reference",
    "full-reference": "full-reference",
    "nr": "no-reference",
    "no reference": "no-reference",
    "no-reference": "no-reference",
    "blind": "no-reference",
}


def _norm_words(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(text))).strip().lower()


def canonical_category(text: str) -> str | None:
    """The distortion category ``text`` names (case, ``_``/``-`` and common synonyms tolerated), else None."""
    key = _norm_words(text)
    if key in CATEGORIES:
        return key
    return _CATEGORY_SYNONYMS.get(key)


def _category(value: Any) -> str:
    cat = canonical_category(str(value))
    if cat is None:
        raise ValueError(f"unknown distortion category {value!r}; known: {', '.join(CATEGORIES)}")
    return cat


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, dict):
        raise ValueError("expected a list, got an object")
    return list(value)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    #: when the model returns a bare JSON list, it is taken as the value of this key (None: not allowed)
    list_key: ClassVar[str | None] = None


class Plan(_Schema):
    """The planner's four flags: which executor stages to run."""

    distortion_detection: bool
    distortion_analysis: bool
    tool_selection: bool
    tool_execution: bool


class PlannerOutput(_Schema):
    """The planner's JSON (AgenticIQA planner).

    Attributes:
        query_type: ``"IQA"`` for a quality question, ``"other"`` otherwise.
        reference_mode: ``"full-reference"`` or ``"no-reference"`` (the agent corrects it to the inputs).
        objects: objects/regions of interest; ``["Global"]`` for the whole image.
        distortions: distortions the user names (categories where one matches, else the user's words).
        plan: the four stage flags.
    """

    query_type: Literal["IQA", "other"]
    reference_mode: Literal["full-reference", "no-reference"]
    objects: list[str] = Field(default_factory=lambda: [GLOBAL])
    distortions: list[str] = Field(default_factory=list)
    plan: Plan

    @field_validator("query_type", mode="before")
    @classmethod
    def _query_type(cls, v: Any) -> str:
        key = _norm_words(v)
        if key in ("iqa", "image quality assessment", "quality", "image quality"):
            return "IQA"
        if key in ("other", "others", "non iqa", "not iqa"):
            return "other"
        raise ValueError(f"query_type must be 'IQA' or 'other', got {v!r}")

    @field_validator("reference_mode", mode="before")
    @classmethod
    def _reference_mode(cls, v: Any) -> str:
        key = _norm_words(v)
        key = _REFERENCE_SYNONYMS.get(key, _REFERENCE_SYNONYMS.get(key.replace(" ", "-"), key))
        if key not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {', '.join(REFERENCE_MODES)}, got {v!r}")
        return key

    @field_validator("objects", mode="before")
    @classmethod
    def _objects(cls, v: Any) -> list[str]:
        out: list[str] = []
        for o in _as_list(v):
            s = str(o).strip()
            if not s:
                continue
            s = GLOBAL if s.lower() in ("global", "whole image", "entire image", "image", "all") else s
            if s not in out:
                out.append(s)
        return out or [GLOBAL]

    @field_validator("distortions", mode="before")
    @classmethod
    def _distortions(cls, v: Any) -> list[str]:
        out: list[str] = []
        for d in _as_list(v):
            key = _norm_words(d)
            if key in _NONE_WORDS:
                continue
            name = canonical_category(key) or key
            if name not in out:
                out.append(name)
        return out


class DetectionOutput(_Schema):
    """Distortion detection: object of interest → the categories visible on it (possibly empty).

    A bare list of categories (``{"distortions": ["blur"]}``) means the whole image (``"Global"``).
    """

    distortions: dict[str, list[str]]

    @field_validator("distortions", mode="before")
    @classmethod
    def _distortions(cls, v: Any) -> dict[str, list[str]]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            v = {GLOBAL: v}
        out: dict[str, list[str]] = {}
        for obj, cats in v.items():
            name = str(obj).strip() or GLOBAL
            name = GLOBAL if name.lower() == "global" else name
            kept: list[str] = []
            for c in _as_list(cats):
                if _norm_words(c) in _NONE_WORDS:
                    continue
                cat = _category(c)
                if cat not in kept:
                    kept.append(cat)
            out.setdefault(name, [])
            out[name] += [c for c in kept if c not in out[name]]
        return out


class AnalysisEntry(_Schema):
    """One analysed distortion: where, which, how severe, and why.

    ``type`` is canonicalized to a category when it names one; other words are kept (the user may ask about a
    distortion outside the categories, e.g. "vignetting"), so the executor can match them to what it asked.
    """

    object: str = GLOBAL
    type: str
    severity: Literal["none", "slight", "moderate", "severe", "extreme"]
    explanation: str = ""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            for alt in ("distortion", "category", "name"):
                if alt in data:
                    data = {**data, "type": data[alt]}
                    break
        return data

    @field_validator("object", mode="before")
    @classmethod
    def _object(cls, v: Any) -> str:
        s = str(v or "").strip()
        return GLOBAL if not s or s.lower() == "global" else s

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        # a category where one matches; other words only for distortions the user named in their own words
        key = _norm_words(v)
        if not key:
            raise ValueError("type must name the distortion")
        return canonical_category(key) or key

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, v: Any) -> str:
        key = _norm_words(v)
        key = _SEVERITY_SYNONYMS.get(key, key)
        if key not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {v!r}")
        return key

    @field_validator("explanation", mode="before")
    @classmethod
    def _explanation(cls, v: Any) -> str:
        return "" if v is None else str(v)


class AnalysisOutput(_Schema):
    """Distortion analysis: one entry per distortion (a bare list of entries is accepted)."""

    list_key: ClassVar[str | None] = "analysis"
    analysis: list[AnalysisEntry]


class SelectionOutput(_Schema):
    """Tool selection: distortion (or ``"overall quality"``) → one tool name.

    The allowed tool names come from the validation context (``{"allowed_tools": [...]}``); a name outside
    them is an error listing the valid ones. Tool-name aliases (``ms-ssim``) are resolved by the registry.
    """

    tools: dict[str, str]

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, v: Any, info: ValidationInfo) -> dict[str, str]:
        if not isinstance(v, dict):
            raise ValueError("expected an object mapping each distortion to one tool name")
        allowed = list((info.context or {}).get("allowed_tools") or [])
        out: dict[str, str] = {}
        for target, tool in v.items():
            if isinstance(tool, (list, tuple)):
                if len(tool) != 1:
                    raise ValueError(f"choose exactly one tool for {target!r}, got {tool!r}")
                tool = tool[0]
            name = _canonical_tool(str(tool))
            if allowed and name not in allowed:
                raise ValueError(f"unknown tool {tool!r} for {target!r}; choose from: {', '.join(allowed)}")
            key = _norm_words(target)
            out[canonical_category(key) or key] = name
        if not out:
            raise ValueError("no tool was chosen")
        return out


def _canonical_tool(name: str) -> str:
    from lmmiqa import registry
    from lmmiqa.errors import UnknownNameError

    key = name.strip()
    if key.lower().startswith("pyiqa:"):
        return "pyiqa:" + key.split(":", 1)[1].strip().lower()
    try:
        return registry.canonical("tool", key.replace(" ", "_"))
    except UnknownNameError:
        return key.lower()


#: explanation texts that are the requested format's placeholder, not an answer (compared lower-case)
_PLACEHOLDER_TEXTS = frozenset({"explanation", "your explanation", "an explanation", "text", "string", "n/a"})
_LEVEL_WORDS: dict[str, str] = {"excellent": "A", "good": "B", "fair": "C", "poor": "D", "bad": "E"}


def is_placeholder(text: str) -> bool:
    """True for a text with no letter or digit (``"..."``, ``"…"``) or a bare format word (``"explanation"``):
    what a model writes when it echoes the requested JSON format instead of answering."""
    t = str(text).strip()
    return not re.search(r"[^\W_]", t) or t.strip(" .…:-").lower() in _PLACEHOLDER_TEXTS


def named_levels(text: str) -> set[str]:
    """The AgenticIQA letters a level answer names: standalone capital letters A–E, a lone lower-case letter
    (``"b"``, ``"(c)"``), and level words (``"Good"`` → B)."""
    s = str(text).strip()
    named = set(re.findall(r"(?<![A-Za-z])([A-E])(?![A-Za-z])", s))
    m = re.fullmatch(r"\(?([a-e])[.)]?", s)
    if m:
        named.add(m.group(1).upper())
    named |= {_LEVEL_WORDS[w] for w in re.findall(r"[a-z]+", s.lower()) if w in _LEVEL_WORDS}
    return named


class SummaryOutput(_Schema):
    """The summarizer's explanation, and the level letter it names (used only when no log-probabilities exist).

    A reply that echoes the requested format — an explanation that is only a placeholder (``"..."``), or a level
    that names several levels (``"A, B, C, D or E (Excellent, Good, Fair, Poor, Bad)"``) — does not validate:
    it is a parse failure (retried, then the template fallback), never level A with a made-up explanation.
    """

    explanation: str = Field(min_length=1)
    level: Literal["A", "B", "C", "D", "E"] | None = None

    @field_validator("explanation", mode="before")
    @classmethod
    def _explanation(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            v = " ".join(str(x) for x in v)
        if isinstance(v, str) and v.strip() and is_placeholder(v):
            raise ValueError(f"explanation {v!r} is the format's placeholder, not an explanation")
        return v

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> str | None:
        if v is None:
            return None
        s = str(v).strip()
        if not s:
            return None
        named = named_levels(s)
        if len(named) == 1:
            return named.pop()
        if named:
            raise ValueError(
                f"level must name one of A, B, C, D, E; {v!r} names {len(named)} ({', '.join(sorted(named))}), "
                "which echoes the requested format"
            )
        raise ValueError(f"level must be one of A, B, C, D, E, got {v!r}")
