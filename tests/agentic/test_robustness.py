"""AgenticIQA robustness (issue 13 §4): a failing tool, template echoes, non-finite level logits, the first JSON
object that fits, and one rule for the level name."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from test_agent_scripted import ScriptedBackend, agent, hand_fused, plan

from lmmiqa.errors import ParseError
from lmmiqa.methods.agentic.fusion import level_name, nearest_level
from lmmiqa.methods.agentic.parsing import parse_as
from lmmiqa.methods.agentic.schemas import AnalysisOutput, SummaryOutput
from lmmiqa.testing import make_image
from lmmiqa.tools import ToolResult

ECHO = '{"explanation": "...", "level": "A, B, C, D or E (Excellent, Good, Fair, Poor, Bad)"}'


@pytest.fixture()
def image() -> Any:
    return make_image(128, 96, seed=3)


# ---------------------------------------------------------------------------------------------- a tool raises
@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 OSError("[Errno 5] Input/output error")], ids=["oom", "oserror"])
def test_a_raising_tool_is_recorded_and_the_item_continues(image, monkeypatch, exc):
    import lmmiqa.tools

    real = lmmiqa.tools.run_tool

    def flaky(name: str, img: Any, ref: Any = None) -> ToolResult:
        if name == "noise":
            raise exc
        return real(name, img, ref=ref)

    monkeypatch.setattr("lmmiqa.tools.run_tool", flaky)
    b = ScriptedBackend()
    r = agent(b).score([image])[0]
    assert r.ok, r.error
    d = r.details
    assert d["tools"]["noise"]["error"] == f"{type(exc).__name__}: {exc}"
    assert d["tools"]["noise"]["normalized"] is None
    sharp = d["tools"]["sharpness"]["normalized"]
    assert sharp is not None
    assert d["fusion"]["q_bar"] == pytest.approx(sharp)  # fused without the failed tool
    assert r.score == pytest.approx(hand_fused((0.05, 0.15, 0.5, 0.2, 0.1), sharp))
    assert d["explanation_source"] == "model" and d["explanation"] == "Moderately soft with slight grain."
    assert any("noise failed" in n for n in d["notes"])


# ---------------------------------------------------------------------------------------------- template echo
def test_template_echo_is_a_parse_failure():
    with pytest.raises(ParseError, match="placeholder"):
        parse_as(ECHO, SummaryOutput)
    with pytest.raises(ParseError, match="names 5"):
        parse_as('{"explanation": "Sharp and clean.", "level": "A, B, C, D or E"}', SummaryOutput)
    with pytest.raises(ParseError, match="placeholder"):
        parse_as('{"explanation": "…", "level": "B"}', SummaryOutput)
    ok = parse_as('{"explanation": "Sharp and clean.", "level": "B (Good)"}', SummaryOutput)
    assert (ok.explanation, ok.level) == ("Sharp and clean.", "B")
    assert parse_as('{"explanation": "Soft.", "level": "a"}', SummaryOutput).level == "A"


@pytest.mark.parametrize("later", [False, True], ids=["echo-only", "echo-then-answer"])
def test_echoed_summary_is_retried_then_falls_back(image, later):
    replies = iter([ECHO, ECHO, ECHO])

    def explain(prompt: Any) -> str:
        return '{"explanation": "Soft edges.", "level": "C"}' if later and len(prompt.messages) > 2 else next(replies)

    b = ScriptedBackend({"explanation": explain})
    r = agent(b).score([image])[0]
    d = r.details
    if later:  # the retry answered
        assert d["parse_failures_by_stage"] == {"summarizer": 1}
        assert d["explanation_source"] == "model" and d["explanation"] == "Soft edges."
    else:
        assert d["parse_failures_by_stage"] == {"summarizer": 3}
        assert d["explanation_source"] == "template" and d["explanation"] != "..."
        assert d["summary_letter"] is None  # not "A"


# ---------------------------------------------------------------------------------------------- first that fits
def test_parser_takes_the_first_object_that_validates():
    reply = ('The format is {"explanation": "...", "level": "A, B, C, D or E"}. My answer: '
             '{"explanation": "Visible blocking in the sky.", "level": "D"}')
    out = parse_as(reply, SummaryOutput)
    assert (out.explanation, out.level) == ("Visible blocking in the sky.", "D")
    reply = 'Example: {"analysis": "see below"}\n```json\n{"analysis": [{"type": "noise", "severity": "mild"}]}\n```'
    assert parse_as(reply, AnalysisOutput).analysis[0].severity == "slight"
    # none fits: the first object's problems are reported
    with pytest.raises(ParseError, match="does not fit SummaryOutput: explanation"):
        parse_as('{"explanation": ""} {"level": "Z"}', SummaryOutput)


# ---------------------------------------------------------------------------------------------- non-finite logits
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_level_logits_fall_back_to_the_generated_letter(image, bad):
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection",))})
    b.logits = np.array([-3.0, bad, -1.0, -2.0, -4.0])
    scorer = agent(b)
    results = scorer.score([image, make_image(64, 64, seed=4)])
    for r in results:
        assert r.ok, r.error
        f = r.details["fusion"]
        assert f["p_source"] == "generated"
        assert "not finite" in f["p_fallback"]
        assert f["p"] == pytest.approx({"1": 0, "2": 0, "3": 1, "4": 0, "5": 0})  # the generated letter C
        assert r.score == pytest.approx(3.0)
        assert any("not finite" in n for n in r.details["notes"])


def test_non_finite_logits_without_letter_or_tool_fail_only_that_item(image):
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection",)), "explanation": ECHO})
    b.logits = np.array([np.nan] * 5)
    r = agent(b).score([image])[0]
    assert not r.ok and "not finite" in r.error


# ---------------------------------------------------------------------------------------------- level name
def test_nearest_level_rounds_half_up():
    v = (1.0, 2.0, 3.0, 4.0, 5.0)
    assert [nearest_level(x, v) for x in (1.0, 1.49, 1.5, 2.4, 2.5, 4.51, 5.0, 7.0, -1.0)] == [0, 0, 1, 1, 2, 4, 4, 4, 0]
    words = ("Bad", "Poor", "Fair", "Good", "Excellent")
    assert level_name(2.40, v, words) == "Poor" and level_name(2.5, v, words) == "Fair"
    with pytest.raises(ValueError):
        nearest_level(float("nan"), v)


@pytest.mark.parametrize(("p", "expected"), [((0.3, 0.2, 0.5, 0.0, 0.0), "Poor"), ((0.0, 0.5, 0.5, 0.0, 0.0), "Fair")])
def test_assess_text_and_template_explanation_name_the_same_level(image, p, expected):
    """Issue 15 §5: a score of 2.40 whose most probable level is Fair is "Poor" in `lmmiqa assess` and in the
    templated explanation alike (before: "(Fair)" next to "closest level: Poor"); 2.5 is Fair in both."""
    from lmmiqa.cli.assess import format_text

    p_eps = np.maximum(np.asarray(p), 1e-300)
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection",)), "explanation": "no json"}, p=p_eps)
    r = agent(b, eta=0.0).score([image])[0]
    assert r.score == pytest.approx(float(np.dot(p, [1, 2, 3, 4, 5])), abs=1e-9)
    assert r.details["level_name"] == expected
    assert f"(closest level: {expected})" in r.details["explanation"]
    out = io.StringIO()
    format_text(r.to_dict(), out)
    assert out.getvalue().splitlines()[0] == f"<memory:0>: {r.score:.2f} / 5 ({expected})"

