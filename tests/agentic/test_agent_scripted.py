"""The AgenticIQA agent on a scripted backend: stages follow the plan, batching, FR mode, retries, fallbacks,
replanning, and the fused score against a hand computation."""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

import lmmiqa
from lmmiqa import registry
from lmmiqa.backends.base import Backend
from lmmiqa.errors import ConfigError, UnknownNameError, UnsupportedError
from lmmiqa.methods.agentic.agent import AgenticConfig, AgenticIQA
from lmmiqa.methods.agentic.executor import CUE_TOOLS, severity_from_score
from lmmiqa.testing import make_image
from lmmiqa.tools import ToolResult, run_tool
from lmmiqa.types import Prompt

CUES = ("sharpness", "noise", "contrast", "exposure", "colorfulness", "blockiness")
P = (0.05, 0.15, 0.5, 0.2, 0.1)  # summarizer p_c for c = 1..5 (letters E..A)
FLAGS = ("distortion_detection", "distortion_analysis", "tool_selection", "tool_execution")


def plan(*, flags: Sequence[str] = FLAGS, mode: str = "no-reference", objects=("Global",), distortions=(),
         query_type: str = "IQA") -> str:
    return json.dumps({
        "query_type": query_type, "reference_mode": mode, "objects": list(objects), "distortions": list(distortions),
        "plan": {f: f in flags for f in FLAGS},
    })


DETECT = '```json\n{"distortions": {"Global": ["blur", "noise"]}}\n```'
ANALYSIS = json.dumps({"analysis": [
    {"object": "Global", "type": "blur", "severity": "moderate", "explanation": "Edges are soft."},
    {"object": "Global", "type": "noise", "severity": "slight", "explanation": "Fine grain in flat areas."},
]})
SELECT = 'Sure: {"tools": {"blur": "sharpness", "noise": "noise"}}'
EXPLAIN = '{"explanation": "Moderately soft with slight grain.", "level": "C"}'
GARBAGE = "I would rather describe the picture: it shows some shapes."

STAGE_MARKERS = {
    "planner": "You are the planner",
    "detection": "Inspect the image for distortions",
    "analysis": "Analyse these distortions",
    "selection": "Choose one tool",
    "explanation": "answer the user's query and explain",
}


def stage_of(prompt: Prompt) -> str:
    first_user = next(m for m in prompt.messages if m.role == "user").text
    for stage, marker in STAGE_MARKERS.items():
        if marker in first_user:
            return stage
    raise AssertionError(f"unknown stage prompt: {first_user[:200]}")


def is_retry(prompt: Prompt) -> bool:
    return any(m.role == "assistant" for m in prompt.messages)


Reply = str | Callable[[Prompt], str]


class ScriptedBackend(Backend):
    """Answers each stage with a scripted reply (a string, or a function of the prompt); fixed level logits."""

    name = "scripted"

    def __init__(self, replies: dict[str, Reply] | None = None, p: Sequence[float] = P, *, logprobs: bool = True):
        super().__init__()
        self.model_id = "scripted-vlm"
        self.replies: dict[str, Reply] = {
            "planner": plan(), "detection": DETECT, "analysis": ANALYSIS, "selection": SELECT, "explanation": EXPLAIN,
            **(replies or {}),
        }
        self.logits = np.log(np.asarray(p, dtype=np.float64)) - 3.0  # full-vocabulary log-probs: any offset
        self.logprobs = logprobs
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.prompts: list[tuple[str, Prompt]] = []
        self.candidates: list[str] | None = None

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        stages = tuple(stage_of(p) for p in prompts)
        self.calls.append(("generate", stages))
        out = []
        for stage, prompt in zip(stages, prompts):
            self.prompts.append((stage, prompt))
            reply = self.replies[stage]
            out.append(reply(prompt) if callable(reply) else reply)
        return out

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        self.calls.append(("level_logprobs", ("summary",) * len(prompts)))
        self.candidates = list(candidates)
        for p in prompts:
            self.prompts.append(("summary", p))
        if not self.logprobs:
            raise UnsupportedError("scripted backend without log-probabilities")
        return np.tile(self.logits, (len(prompts), 1))

    def stage_prompts(self, stage: str) -> list[Prompt]:
        return [p for s, p in self.prompts if s == stage]


def agent(backend: ScriptedBackend, **options: Any) -> AgenticIQA:
    options.setdefault("tools", CUES)
    return AgenticIQA(AgenticConfig(**options), backend=backend)


def hand_fused(p: Sequence[float], q_bar: float | None, eta: float = 1.0) -> float:
    """q = Σ α_c p_c c / Σ α_c p_c with α_c ∝ exp(−η(q̄ − c)²), written out (METHODS §5.4)."""
    levels = [1, 2, 3, 4, 5]
    alpha = [1.0] * 5 if q_bar is None else [math.exp(-eta * (q_bar - c) ** 2) for c in levels]
    num = sum(a * pc * c for a, pc, c in zip(alpha, p, levels))
    den = sum(a * pc for a, pc in zip(alpha, p))
    return num / den


@pytest.fixture()
def images() -> list[Any]:
    return [make_image(128, 96, seed=0), make_image(96, 128, seed=1)]


def test_full_plan_batched_and_fused_by_hand(images):
    b = ScriptedBackend()
    scorer = agent(b)
    results = scorer.score(images)
    # every stage is one backend call for the whole batch, in the planned order
    assert b.calls == [
        ("generate", ("planner", "planner")),
        ("generate", ("detection", "detection")),
        ("generate", ("analysis", "analysis")),
        ("generate", ("selection", "selection")),
        ("level_logprobs", ("summary", "summary")),
        ("generate", ("explanation", "explanation")),
    ]
    assert scorer.last_backend_calls == 6
    assert b.candidates == [" E", " D", " C", " B", " A"]  # after "Answer:" (LETTER_SCALE, lowest first)
    for img, r in zip(images, results):
        assert r.ok, r.error
        d = r.details
        assert d["parse_failures"] == 0 and d["replans"] == 0 and d["backend_calls"] == 6
        assert d["sources"] == {"plan": "model", "distortions": "model", "analysis": "model",
                                "tool_selection": "model", "tools": "executed"}
        assert d["distortions"] == {"Global": ["blur", "noise"]}
        assert [(e["type"], e["severity"], e["source"]) for e in d["analysis"]] == [
            ("blur", "moderate", "model"), ("noise", "slight", "model")]
        assert d["tool_selection"] == {"blur": {"tool": "sharpness", "source": "model"},
                                       "noise": {"tool": "noise", "source": "model"}}
        assert set(d["tools"]) == {"sharpness", "noise"}
        for name in ("sharpness", "noise"):
            expected = run_tool(name, img)
            assert d["tools"][name]["raw"] == pytest.approx(expected.raw)
            assert d["tools"][name]["normalized"] == pytest.approx(expected.normalized)
        q_bar = (d["tools"]["sharpness"]["normalized"] + d["tools"]["noise"]["normalized"]) / 2
        assert d["fusion"]["q_bar"] == pytest.approx(q_bar)
        assert d["fusion"]["p"] == pytest.approx(dict(zip("12345", P)))
        assert d["fusion"]["p_source"] == "logprobs"
        assert r.score == pytest.approx(hand_fused(P, q_bar), rel=1e-9)
        assert 1.0 <= r.score <= 5.0 and r.scale == (1.0, 5.0) and r.model == "scripted-vlm"
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        assert sum(float(k) * v for k, v in r.probabilities.items()) == pytest.approx(r.score)
        assert d["explanation"] == "Moderately soft with slight grain." and d["explanation_source"] == "model"
        assert [t["stage"] for t in d["trace"]] == [
            "planner", "distortion_detection", "distortion_analysis", "tool_selection", "tool_execution", "summarizer"]
        assert all(t["seconds"] >= 0 for t in d["trace"])
        assert {"planner", "summarizer", "tool_execution", "total"} <= set(r.timings)
        json.dumps(r.to_dict())  # JSON-safe
    # the evidence reaches the summarizer's prompt
    summary_text = b.stage_prompts("summary")[0].messages[-1].text
    assert "blur on Global: severity moderate" in summary_text and "- sharpness (no-reference" in summary_text
    assert b.stage_prompts("summary")[0].answer_prefix == "Answer:"


def test_plan_without_tool_execution_runs_no_tool(images, monkeypatch):
    def no_tools(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no tool may run when the plan says tool_execution false")

    monkeypatch.setattr("lmmiqa.tools.run_tool", no_tools)
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection", "distortion_analysis"))})
    r = agent(b).score(images[:1])[0]
    assert r.ok, r.error
    assert [c[1][0] for c in b.calls] == ["planner", "detection", "analysis", "summary", "explanation"]
    d = r.details
    assert d["tools"] == {} and d["tool_selection"] == {} and d["cues"] == {}
    assert d["fusion"]["q_bar"] is None and d["fusion"]["alpha"] == pytest.approx(dict.fromkeys("12345", 0.2))
    assert r.score == pytest.approx(sum(p * c for p, c in zip(P, range(1, 6))))  # uniform α: Σ p_c c = 3.15
    assert r.score == pytest.approx(3.15)


def test_execution_without_selection_uses_the_table(images):
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection", "tool_execution"))})
    r = agent(b).score(images[:1])[0]
    assert "selection" not in [c[1][0] for c in b.calls] and "analysis" not in [c[1][0] for c in b.calls]
    assert r.details["tool_selection"] == {"blur": {"tool": "sharpness", "source": "table"},
                                           "noise": {"tool": "noise", "source": "table"}}
    assert r.details["sources"]["tool_selection"] == "table"
    assert set(r.details["tools"]) == {"sharpness", "noise"}


def test_full_reference_mode_uses_fr_tools_with_the_reference():
    ref = make_image(192, 192, seed=3)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(ref, dtype=np.float64) + rng.normal(0, 12, (192, 192, 3)), 0, 255).astype(np.uint8)
    b = ScriptedBackend({"planner": plan(mode="no-reference"),  # wrong: a reference is given
                         "selection": '{"tools": {"blur": "ms-ssim", "noise": "psnr"}}'})
    scorer = AgenticIQA(AgenticConfig(), backend=b)  # default allow-list: every built-in tool
    r = scorer.assess(noisy, ref=ref)
    assert r.ok, r.error
    d = r.details
    assert d["mode"] == "full-reference" and d["plan"]["reference_mode"] == "full-reference"
    assert d["plan"]["corrections"] and "corrected to 'full-reference'" in d["plan"]["corrections"][0]
    sel_text = b.stage_prompts("selection")[0].messages[-1].text
    assert "Available full-reference tools" in sel_text
    assert "- ssim (full-reference" in sel_text and "- psnr (full-reference" in sel_text
    assert "niqe" not in sel_text and "sharpness" not in sel_text  # NR tools are not offered in FR mode
    assert set(d["tools"]) == {"ms_ssim", "psnr"}
    for name in ("ms_ssim", "psnr"):
        assert d["tools"][name]["kind"] == "fr"
        assert d["tools"][name]["raw"] == pytest.approx(run_tool(name, noisy, ref=ref).raw)
    for stage in ("planner", "detection", "summary"):
        assert len(b.stage_prompts(stage)[0].images) == 2  # the VLM sees the image and its reference
    q_bar = np.mean([d["tools"][n]["normalized"] for n in ("ms_ssim", "psnr")])
    assert r.score == pytest.approx(hand_fused(P, float(q_bar)), rel=1e-9)


def test_fr_size_mismatch_and_bad_reference_are_item_errors(tmp_path):
    b = ScriptedBackend()
    scorer = agent(b)
    r = scorer.assess(make_image(64, 48), ref=make_image(48, 64))
    assert not r.ok and "differ in size" in r.error
    r = scorer.assess(make_image(64, 48), ref=str(tmp_path / "missing.png"))
    assert not r.ok and r.error.startswith("reference image:")
    assert b.calls == []


def test_parse_failure_is_retried_with_a_reminder(images):
    def planner(prompt: Prompt) -> str:
        return plan() if is_retry(prompt) else "Plan: detect blur, then run tools."

    b = ScriptedBackend({"planner": planner})
    r = agent(b).score(images[:1])[0]
    d = r.details
    assert d["parse_failures"] == 1 and d["parse_failures_by_stage"] == {"planner": 1}
    assert d["plan"]["source"] == "model"
    assert d["trace"][0]["attempts"] == 2 and d["trace"][0]["parse_failures"] == 1
    retry = b.stage_prompts("planner")[1]
    assert [m.role for m in retry.messages] == ["system", "user", "assistant", "user"]
    assert retry.messages[2].text == "Plan: detect blur, then run tools."
    assert "Return only the JSON object" in retry.messages[3].text and "no JSON dict found" in retry.messages[3].text
    assert d["backend_calls"] == 7


@pytest.mark.parametrize("max_retries", [0, 2])
def test_unparsable_analysis_falls_back_to_measured_cues(images, max_retries):
    b = ScriptedBackend({"analysis": GARBAGE})
    r = agent(b, max_retries=max_retries).score(images[:1])[0]
    d = r.details
    assert d["parse_failures"] == 1 + max_retries
    assert d["parse_failures_by_stage"] == {"distortion_analysis": 1 + max_retries}
    assert d["sources"]["analysis"] == "fallback"
    for e in d["analysis"]:
        assert e["source"] == "fallback"
        cue = run_tool(CUE_TOOLS[e["type"]], images[0])
        assert e["severity"] == severity_from_score(cue.normalized)
        assert "could not be parsed" in e["explanation"]
    assert set(d["cues"]) == {"sharpness", "noise"}
    assert any("distortion analysis: fallback" in n for n in d["notes"])
    assert 1.0 <= r.score <= 5.0


def test_unparsable_detection_falls_back_to_cues_and_is_marked():
    from PIL import ImageEnhance, ImageFilter

    soft = ImageEnhance.Contrast(make_image(128, 96, seed=0).filter(ImageFilter.GaussianBlur(3))).enhance(0.4)
    b = ScriptedBackend({"detection": GARBAGE, "analysis": GARBAGE, "selection": GARBAGE, "explanation": GARBAGE})
    r = agent(b).score([soft])[0]
    d = r.details
    assert d["parse_failures"] == 12 and d["parse_failures_by_stage"] == {
        "distortion_detection": 3, "distortion_analysis": 3, "tool_selection": 3, "summarizer": 3}
    assert d["sources"]["distortions"] == "fallback"
    assert set(d["cues"]) == {"sharpness", "noise", "blockiness", "exposure", "contrast", "colorfulness"}
    flagged = [c for c, t in CUE_TOOLS.items() if c != "sharpness" and run_tool(t, soft).normalized < 3.0]
    assert flagged == ["blur", "contrast"]  # the cues see the blur and the flattened contrast
    assert d["distortions"] == {"Global": flagged}
    assert [(e["type"], e["source"]) for e in d["analysis"]] == [("blur", "fallback"), ("contrast", "fallback")]
    assert all(v["source"] == "fallback" for v in d["tool_selection"].values())
    assert d["explanation_source"] == "template" and "This summary is a template" in d["explanation"]
    assert 1.0 <= r.score <= 5.0


def test_replanning_when_evidence_is_missing(images):
    def planner(prompt: Prompt) -> str:
        if "gathered no usable evidence" in prompt.messages[-1].text:
            return plan(flags=("tool_execution",))
        return plan(flags=())

    b = ScriptedBackend({"planner": planner})
    r = agent(b).score(images[:1])[0]
    d = r.details
    assert d["replans"] == 1 and "every flag was false" in d["replan_reasons"][0]
    assert [t["stage"] for t in d["trace"]] == ["planner", "planner", "tool_selection", "tool_execution", "summarizer"]
    assert d["tool_selection"] == {"overall quality": {"tool": "sharpness", "source": "table"}}  # allow-list order
    assert set(d["tools"]) == {"sharpness"}


def test_replanning_is_bounded(images):
    b = ScriptedBackend({"planner": plan(flags=())})
    r = agent(b, max_replans=2).score(images)[0]
    d = r.details
    assert d["replans"] == 2 and len([c for c in b.calls if c[1][0] == "planner"]) == 3
    assert any("evidence still missing after 2 replan(s)" in n for n in d["notes"])
    assert r.score == pytest.approx(hand_fused(P, None))  # no evidence: the summarizer's p alone
    b0 = ScriptedBackend({"planner": plan(flags=())})
    assert agent(b0, max_replans=0).score(images[:1])[0].details["replans"] == 0


def test_query_steers_the_plan(images):
    def planner(prompt: Prompt) -> str:
        assert 'User query: "Is there noise in the sky?"' in prompt.messages[-1].text
        return plan(flags=("tool_selection", "tool_execution"), objects=["sky"], distortions=["grain"],
                    query_type="other")

    b = ScriptedBackend({"planner": planner, "selection": '{"tools": {"noise": "noise"}}'})
    r = agent(b).assess(images[0], query="Is there noise in the sky?")
    d = r.details
    assert d["query"] == "Is there noise in the sky?" and d["query_given"]
    assert d["plan"]["query_type"] == "other" and d["plan"]["objects"] == ["sky"]
    assert d["distortions"] == {"sky": ["noise"]} and d["sources"]["distortions"] == "planner"
    assert "measure each of these distortions: noise" in b.stage_prompts("selection")[0].messages[-1].text
    assert set(d["tools"]) == {"noise"}
    assert 'User query: "Is there noise in the sky?"' in b.stage_prompts("explanation")[0].messages[-1].text


def test_without_logprobs_the_generated_letter_is_used_and_marked(images):
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection",))}, logprobs=False)
    r = agent(b).score(images[:1])[0]
    assert r.ok
    assert r.details["fusion"]["p_source"] == "generated"
    assert any("UnsupportedError: scripted backend without log-probabilities" in n for n in r.details["notes"])
    assert r.details["fusion"]["p"] == pytest.approx({"1": 0, "2": 0, "3": 1, "4": 0, "5": 0})  # letter C
    assert r.score == pytest.approx(3.0)
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection",)), "explanation": GARBAGE}, logprobs=False)
    r = agent(b).score(images[:1])[0]
    assert not r.ok and "nothing to score" in r.error
    assert r.details["explanation_source"] == "template"


def test_tool_allow_list_and_invalid_choice(images):
    b = ScriptedBackend({"selection": '{"tools": {"blur": "niqe", "noise": "niqe"}}'})
    r = agent(b, tools="sharpness").score(images[:1])[0]
    d = r.details
    assert d["parse_failures_by_stage"] == {"tool_selection": 3}
    assert "choose from: sharpness" in d["trace"][3]["errors"][0]
    assert d["tool_selection"] == {"blur": {"tool": "sharpness", "source": "fallback"},
                                   "noise": {"tool": "sharpness", "source": "fallback"}}
    assert set(d["tools"]) == {"sharpness"}
    assert "- sharpness (no-reference" in b.stage_prompts("selection")[0].messages[-1].text
    assert "- noise (" not in b.stage_prompts("selection")[0].messages[-1].text


def test_tools_run_concurrently(images, monkeypatch):
    seen: set[str] = set()

    def slow_tool(name: str, image: Any, ref: Any = None) -> ToolResult:
        seen.add(threading.current_thread().name)
        time.sleep(0.3)
        return ToolResult(name, "<memory:0>", 1.0, 3.0, None, {}, 0.3)

    monkeypatch.setattr("lmmiqa.tools.run_tool", slow_tool)
    b = ScriptedBackend({"planner": plan(flags=("distortion_detection", "tool_execution"))})
    t0 = time.perf_counter()
    results = agent(b, tool_workers=4).score(images)  # 2 images × 2 tools
    wall = time.perf_counter() - t0
    assert wall < 0.9  # serially it would take 1.2 s
    assert len(seen) >= 2
    rec = next(t for t in results[0].details["trace"] if t["stage"] == "tool_execution")
    assert rec["tools"] == ["sharpness", "noise"] and rec["wall_seconds"] < 0.9


def test_config_validation_and_registry():
    assert registry.canonical("method", "agentic") == "agentic-iqa"
    assert registry.resolve("method", "agentic-iqa") is AgenticIQA
    assert "agentic-iqa" in lmmiqa.list_methods()
    cfg = AgenticConfig(tools="niqe, MS-SSIM,niqe", query="  ")
    assert cfg.tools == ("niqe", "ms_ssim") and cfg.query is None
    for bad in ({"eta": -1}, {"eta": "x"}, {"max_replans": 3}, {"max_retries": -1}, {"max_new_tokens": 2},
                {"tool_workers": 0}, {"readout": "argmax"}, {"tools": ""}):
        with pytest.raises(ConfigError):
            AgenticConfig(**bad)
    with pytest.raises(UnknownNameError, match="did you mean 'niqe'"):
        AgenticConfig(tools=("nique",))
    with pytest.raises(ConfigError, match="unknown option"):
        lmmiqa.create_scorer("agentic-iqa", levels=7)
    scorer = lmmiqa.create_scorer("agentic", eta=2, max_replans=1, query="Is it sharp?")
    assert isinstance(scorer, AgenticIQA) and scorer.config.eta == 2.0 and scorer._backend is None
    assert scorer.describe()["method"] == "agentic-iqa"


def test_text_rendering(images):
    from lmmiqa.cli.assess import format_text

    r = agent(ScriptedBackend()).score(images[:1])[0]
    out = io.StringIO()
    format_text(r.to_dict(), out)
    text = out.getvalue()
    assert text.startswith(f"<memory:0>: {r.score:.2f} / 5")
    assert "explanation (model):" in text and "Moderately soft with slight grain." in text
    assert "- sharpness:" in text and "plan (model)" in text


def test_user_named_distortion_outside_the_categories(images):
    b = ScriptedBackend({
        "planner": plan(flags=("distortion_analysis", "tool_selection", "tool_execution"), distortions=["vignetting"]),
        "analysis": '{"analysis": [{"type": "Vignetting", "severity": "slight", "explanation": "Dark corners."}]}',
        "selection": GARBAGE,
    })
    r = agent(b).assess(images[0], query="Are the corners vignetted?")
    d = r.details
    assert d["distortions"] == {"Global": ["vignetting"]} and d["sources"]["distortions"] == "planner"
    assert [(e["type"], e["severity"], e["source"]) for e in d["analysis"]] == [("vignetting", "slight", "model")]
    # no table entry for it: the fallback picks the first allowed general-purpose tool, else the first allowed
    assert d["tool_selection"] == {"vignetting": {"tool": "sharpness", "source": "fallback"}}
    assert "vignetting (Global)" in b.stage_prompts("analysis")[0].messages[-1].text


def test_paper_preset_gpt4o_and_the_papers_tool_betas(images):
    from lmmiqa.config import build_config
    from lmmiqa.methods.agentic.agent import AGENTIC_PAPER, PAPER_TOOLS
    from lmmiqa.tools.maps import PAPER_BETAS, default_map

    opts = AgenticIQA.preset_options("paper", {})
    assert (opts["backend"], opts["model"]) == ("openai", "https://api.openai.com/v1#gpt-4o")
    assert set(PAPER_TOOLS) <= set(PAPER_BETAS) and set(PAPER_TOOLS) <= set(registry.names("tool"))
    assert all(default_map(t).source == "paper" for t in PAPER_TOOLS)
    assert any("not public" in n for n in AGENTIC_PAPER.notes)
    # the preset's VLM replaced by a scripted one (an explicit backend object): the tools and their maps stay
    b = ScriptedBackend({"selection": '{"tools": {"blur": "niqe", "noise": "brisque"}}'})
    scorer = AgenticIQA(build_config(AgenticConfig, opts, what="agentic-iqa"), backend=b)
    assert scorer.config.tools == PAPER_TOOLS and scorer.preset == "paper" and scorer.config.eta == 1.0
    r = scorer.score(images[:1])[0]
    assert r.ok, r.error
    assert r.details["preset"] == "paper"
    assert set(r.details["tool_selection"]) == {"blur", "noise"}
    assert set(r.details["tools"]) == {"niqe", "brisque"}
    assert all(t["map"]["source"] == "paper" for t in r.details["tools"].values())
    assert r.details["tools"]["brisque"]["normalized"] is not None  # niqe needs larger images than this one
