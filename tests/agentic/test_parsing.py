"""Robust JSON extraction and the stage schemas of the AgenticIQA agent."""

from __future__ import annotations

import pytest

from lmmiqa.errors import ParseError
from lmmiqa.methods.agentic.executor import (
    CUE_TOOLS,
    FR_TABLE,
    GENERAL_TOOLS,
    NR_TABLE,
    severity_from_score,
    table_tool,
)
from lmmiqa.methods.agentic.parsing import balanced_spans, extract_json, parse_as, repair_json
from lmmiqa.methods.agentic.planner import query_distortions
from lmmiqa.methods.agentic.schemas import (
    CATEGORIES,
    AnalysisOutput,
    DetectionOutput,
    PlannerOutput,
    SelectionOutput,
    SummaryOutput,
)

EXTRACT_CASES = [
    ("plain", '{"a": 1}', {"a": 1}),
    ("fenced json", 'Here you go:\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}),
    ("fenced bare", '```\n{"a": "b"}\n```', {"a": "b"}),
    ("fence left open (truncated)", '```json\n{"a": 1}\n', {"a": 1}),
    ("prose around", 'Sure! The plan is {"a": true} as requested.', {"a": True}),
    ("nested", 'x {"a": {"b": [{"c": 1}, {"d": [2, 3]}]}, "e": {}} y', {"a": {"b": [{"c": 1}, {"d": [2, 3]}]}, "e": {}}),
    ("braces inside strings", 'The result: {"a": "x}y{", "b": "[z"}', {"a": "x}y{", "b": "[z"}),
    ("escaped quote in string", r'{"a": "say \"hi\" }"}', {"a": 'say "hi" }'}),
    ("trailing commas", '{"a": [1, 2,], "b": {"c": 3,},}', {"a": [1, 2], "b": {"c": 3}}),
    ("single quotes", "{'a': 'b', 'c': ['d', 'e']}", {"a": "b", "c": ["d", "e"]}),
    ("apostrophe in single-quoted text", "{'why': 'it's blurry', 'ok': 'yes'}", {"why": "it's blurry", "ok": "yes"}),
    ("apostrophe in double-quoted text", '{"why": "it\'s blurry"}', {"why": "it's blurry"}),
    ("python literals", "{'a': True, 'b': False, 'c': None}", {"a": True, "b": False, "c": None}),
    ("first broken, second good", 'Draft {oops: } final {"ok": 1}', {"ok": 1}),
    ("array before object", '[1, 2] then {"x": 2}', {"x": 2}),
    ("fenced beats prose braces", 'I think {maybe}\n```json\n{"a": 2}\n```', {"a": 2}),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in EXTRACT_CASES], ids=[c[0] for c in EXTRACT_CASES])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


BROKEN_CASES = [
    ("empty", ""),
    ("whitespace", "   \n"),
    ("no json", "The image looks fine to me."),
    ("truncated", '{"a": [1, 2'),
    ("unbalanced", '{"a": 1}}}'.replace('{"a": 1}', '{"a": ')),
    ("random bytes", "\x01irx VeryceScore thisLL\r6ress\x0fithLOW overexposure]"),
    ("only an array", "[1, 2, 3]"),
    ("single quotes, ambiguous", "{'a': 'it's', 'b}"),
]


@pytest.mark.parametrize("text", [c[1] for c in BROKEN_CASES], ids=[c[0] for c in BROKEN_CASES])
def test_extract_json_broken_raises(text):
    with pytest.raises(ParseError):
        extract_json(text)


def test_extract_json_expect_list_and_messages():
    assert extract_json("x [1, 2] y", expect=list) == [1, 2]
    with pytest.raises(ParseError, match="found only a JSON list"):
        extract_json("[1, 2]")
    with pytest.raises(ParseError, match="no JSON dict found"):
        extract_json("nothing here")


def test_repair_and_spans():
    assert repair_json("{'a': 1,}") == '{"a": 1}'
    assert repair_json('{"a": "x, }"}') == '{"a": "x, }"}'  # text inside strings is untouched
    assert balanced_spans('a {"b": "}"} c [1] {') == ['{"b": "}"}', "[1]"]


def test_planner_schema_lenient_spelling_strict_meaning():
    text = """```json
    {"query_type": "iqa", "reference_mode": "FR", "objects": "sky", "distortions": ["JPEG", "banding", "none"],
     "plan": {"distortion_detection": "true", "distortion_analysis": false, "tool_selection": 1, "tool_execution": "no"}}
    ```"""
    out = parse_as(text, PlannerOutput)
    assert out.query_type == "IQA" and out.reference_mode == "full-reference"
    assert out.objects == ["sky"] and out.distortions == ["compression"]
    assert out.plan.model_dump() == {
        "distortion_detection": True, "distortion_analysis": False, "tool_selection": True, "tool_execution": False,
    }
    with pytest.raises(ParseError, match="query_type"):
        parse_as('{"query_type": "maybe", "reference_mode": "NR", "plan": {}}', PlannerOutput)
    with pytest.raises(ParseError, match="plan"):
        parse_as('{"query_type": "IQA", "reference_mode": "NR"}', PlannerOutput)
    # unknown user words are kept as the user's words (only categories are canonicalized)
    out = parse_as('{"query_type": "other", "reference_mode": "no reference", "distortions": ["vignetting"], '
                   '"plan": {"distortion_detection": 1, "distortion_analysis": 1, "tool_selection": 1, '
                   '"tool_execution": 1}}', PlannerOutput)
    assert out.objects == ["Global"] and out.distortions == ["vignetting"] and out.query_type == "other"


def test_detection_schema():
    assert parse_as('{"distortions": {"Global": ["Blurry", "noise"], "sky": []}}', DetectionOutput).distortions == {
        "Global": ["blur", "noise"], "sky": [],
    }
    assert parse_as('{"distortions": ["over-exposure", "none"]}', DetectionOutput).distortions == {
        "Global": ["brightness change"],
    }
    with pytest.raises(ParseError, match="unknown distortion category 'vignetting'"):
        parse_as('{"distortions": {"Global": ["vignetting"]}}', DetectionOutput)


def test_analysis_schema_and_bare_list():
    text = '[{"distortion": "noise", "severity": "Mild", "explanation": "grain in shadows"}]'
    out = parse_as(text, AnalysisOutput)
    assert out.analysis[0].model_dump() == {
        "object": "Global", "type": "noise", "severity": "slight", "explanation": "grain in shadows",
    }
    with pytest.raises(ParseError, match="severity"):
        parse_as('{"analysis": [{"type": "noise", "severity": "catastrophic"}]}', AnalysisOutput)
    with pytest.raises(ParseError, match="type"):
        parse_as('{"analysis": [{"type": "", "severity": "none"}]}', AnalysisOutput)
    # a distortion the user named in their own words keeps its name
    out = parse_as('{"analysis": [{"object": "sky", "type": "Vignetting", "severity": "none"}]}', AnalysisOutput)
    assert (out.analysis[0].object, out.analysis[0].type) == ("sky", "vignetting")


def test_selection_schema_uses_allowed_tools():
    ctx = {"allowed_tools": ["ssim", "ms_ssim", "psnr"]}
    out = parse_as('{"tools": {"Blur": "MS-SSIM", "noise": ["psnr"]}}', SelectionOutput, context=ctx)
    assert out.tools == {"blur": "ms_ssim", "noise": "psnr"}
    with pytest.raises(ParseError, match="unknown tool 'niqe'.*choose from: ssim, ms_ssim, psnr"):
        parse_as('{"tools": {"blur": "niqe"}}', SelectionOutput, context=ctx)
    with pytest.raises(ParseError, match="exactly one tool"):
        parse_as('{"tools": {"blur": ["ssim", "psnr"]}}', SelectionOutput, context=ctx)


def test_summary_schema():
    assert parse_as('{"explanation": "Sharp and clean.", "level": "B. Good"}', SummaryOutput).level == "B"
    assert parse_as('{"explanation": "ok", "level": "poor"}', SummaryOutput).level == "D"
    assert parse_as('{"explanation": "ok"}', SummaryOutput).level is None
    with pytest.raises(ParseError, match="explanation"):
        parse_as('{"explanation": "", "level": "A"}', SummaryOutput)


def test_query_distortions_and_tables():
    assert query_distortions("Is the sky banded after compression?") == ["compression"]
    assert query_distortions("too much noise and a colour cast; is it blurry?") == ["blur", "color distortion", "noise"]
    assert query_distortions("How good is it?") == []
    assert set(CUE_TOOLS) == set(CATEGORIES) == set(NR_TABLE) == set(FR_TABLE)
    assert table_tool("noise", "nr", ["niqe", "noise"]) == "noise"
    assert table_tool("noise", "nr", ["niqe"]) == "niqe"  # general tool when the preferred ones are not allowed
    assert table_tool("vignetting", "fr", ["psnr", "ssim"]) == "ssim"  # GENERAL_TOOLS order for FR
    assert GENERAL_TOOLS["fr"].index("ssim") < GENERAL_TOOLS["fr"].index("psnr")
    assert table_tool("blur", "nr", []) is None
    assert [severity_from_score(x) for x in (5.0, 4.0, 3.5, 2.5, 1.7, 1.0)] == [
        "none", "none", "slight", "moderate", "severe", "extreme",
    ]
