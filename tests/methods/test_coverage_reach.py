"""The covered-mass warning reaches every place that reads level log-probabilities itself (the agentic summarizer,
LEAF's pair prompts, q-scorer); levels outside a server's top-k are bounded, reported and warned about; the pure
parts of the openai backend's server handling (issue 21 §2-§4)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from lmmiqa.backends.openai_wire import listing_floor, logprobs_cap, parse_model_urls
from lmmiqa.backends.server_checks import judge_continuation, model_problem, strip_echo
from lmmiqa.errors import ConfigError
from lmmiqa.levels import missing_level_bounds
from lmmiqa.methods.coverage import (
    LowCoveredMassWarning,
    MissingLevelsWarning,
    check_levels,
    missing_level_details,
    reset_low_mass_warnings,
)
from lmmiqa.testing import make_image


@pytest.fixture(autouse=True)
def _rearm():
    reset_low_mass_warnings()
    yield
    reset_low_mass_warnings()


# ---------------------------------------------------------------------------------------- the bound (pure)


def _brute(lp, values, floor, steps=9):
    """Largest |Δ expected score| over a grid of the missing levels' probabilities in [0, exp(floor)]."""
    lp, v = np.asarray(lp, float), np.asarray(values, float)
    seen = np.isfinite(lp)
    p_seen = np.exp(lp[seen])
    base = p_seen @ v[seen] / p_seen.sum()
    grid = np.linspace(0.0, np.exp(floor), steps)
    best = 0.0
    for combo in itertools.product(grid, repeat=int((~seen).sum())):
        p = np.zeros_like(v)
        p[seen] = p_seen
        p[~seen] = combo
        best = max(best, abs(p @ v / p.sum() - base))
    return best


@pytest.mark.parametrize("lp,floor", [
    ([np.log(0.4), -np.inf, np.log(0.2), -np.inf, np.log(0.1)], np.log(0.05)),
    ([-np.inf, -np.inf, np.log(0.3), np.log(0.3), -np.inf], np.log(0.2)),
    ([np.log(0.5), np.log(0.2), np.log(0.1), np.log(0.05), -np.inf], np.log(0.05)),
    ([-np.inf, np.log(0.01), -np.inf, -np.inf, -np.inf], np.log(0.009)),
])
def test_missing_level_bound_is_the_exact_worst_case(lp, floor):
    values = [1, 2, 3, 4, 5]
    err, prob = missing_level_bounds(np.array(lp), values, floor)
    assert err == pytest.approx(_brute(lp, values, floor), rel=1e-9)  # attained at a vertex of the grid
    s = np.exp(np.array(lp)[np.isfinite(lp)]).sum()
    assert prob == pytest.approx(np.exp(floor) / (s + np.exp(floor)))


def test_missing_level_bound_edges():
    assert missing_level_bounds(np.log([0.5, 0.5]), [1, 2], -3.0) == (0.0, 0.0)
    assert missing_level_bounds(np.array([-np.inf, -np.inf]), [1, 5], -3.0) == (4.0, 1.0)
    # a hand value: seen {1: 0.5}, missing level 5 at most 0.5 -> E moves from 1 to at most (0.5 + 2.5) / 1 = 3
    assert missing_level_bounds(np.array([np.log(0.5), -np.inf]), [1, 5], np.log(0.5))[0] == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        missing_level_bounds(np.zeros(3), [1, 2], -1.0)


class FloorBackend:
    name = "fake"
    model_id = "http://h/v1#m"

    def __init__(self, floors):
        self.floors = floors

    def last_level_floors(self):
        return self.floors

    def last_level_top(self, row, k=8):
        return [(" the", -0.1)]


def test_missing_levels_are_detailed_and_warned_once_only_when_they_matter():
    lp = np.log(np.array([[0.6, 0.3, 1e-9, 1e-9, 1e-9], [0.5, 0.2, 0.1, 0.05, 0.04]]))
    lp[0, 2:] = -np.inf
    backend = FloorBackend([(np.log(0.02), 20), None])
    with pytest.warns(MissingLevelsWarning, match=r"1 of 2 item\(s\).*top 20") as rec:
        mass, missing = check_levels(lp, backend=backend, prompts=[0, 1], candidates=list("abcde"),
                                     keys=list("12345"), values=[1, 2, 3, 4, 5], what="q-align")
    assert sum(issubclass(w.category, MissingLevelsWarning) for w in rec) == 1
    assert missing[1] is None and missing[0]["levels"] == ["3", "4", "5"] and missing[0]["top_logprobs"] == 20
    assert missing[0]["score_error_at_most"] == pytest.approx(missing_level_bounds(lp[0], [1, 2, 3, 4, 5], np.log(0.02))[0])
    assert mass[0] == pytest.approx(0.9)
    with warnings.catch_warnings():  # once per run
        warnings.simplefilter("error", MissingLevelsWarning)
        check_levels(lp, backend=backend, prompts=[0, 1], candidates=list("abcde"), keys=list("12345"))
    # negligible: a floor far below the levels is reported in details, not warned about
    reset_low_mass_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLevelsWarning)
        _, tiny = check_levels(lp, backend=FloorBackend([(-30.0, 20), None]), prompts=[0, 1],
                               candidates=list("abcde"), keys=list("12345"), values=[1, 2, 3, 4, 5])
    assert tiny[0]["probability_at_most"] < 1e-12
    assert missing_level_details(lp, [], keys=list("12345")) == [None, None]


# ------------------------------------------------------------------------------------ server handling (pure)


def test_judge_continuation_from_prompt_token_counts():
    assert judge_continuation(30, 31, 32)[0] is True  # "Yes" and " Yes" one token each, nothing else
    assert judge_continuation(30, 32, 33)[0] is True  # a tokenizer splitting "Yes" in two: tolerated
    verdict, why = judge_continuation(30, 36, 37)  # +5: <|im_end|>\n<|im_start|>assistant\n
    assert verdict is False and "ignores continue_final_message" in why and "5 more prompt tokens" in why
    assert judge_continuation(None, 31, 32)[0] is None
    assert judge_continuation(30, 30, 30)[0] is None


def test_logprobs_cap_is_read_from_vllm_and_openai_errors():
    vllm = "Requested sample logprobs of 1000, which is greater than max allowed: 20"
    assert logprobs_cap(vllm, 1000) == 20
    openai = "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 50 instead."
    assert logprobs_cap(openai, 50) == 20
    assert logprobs_cap("continue_final_message is not supported", 1000) is None
    assert logprobs_cap("logprobs are not supported by this model", 20) is None


def test_listing_floor_only_for_a_cut_listing():
    from types import SimpleNamespace as NS

    entry = NS(top_logprobs=[NS(token="a", logprob=-0.5), NS(token="b", logprob=-2.0), NS(token="c", logprob=-3.0)])
    assert listing_floor(entry, 3) == -3.0
    assert listing_floor(entry, 5) is None  # fewer than asked: the whole vocabulary was listed


def test_model_strings_with_replicas():
    assert parse_model_urls("http://a:1/v1/, http://b:2/v1#m") == (["http://a:1/v1", "http://b:2/v1"], "m")
    for bad in ("http://a:1/v1,http://a:1/v1#m", "http://a:x/v1", "a:1/v1", "http://a/v1,,http://b/v1"):
        with pytest.raises(ConfigError):
            parse_model_urls(bad)
    assert model_problem("http://h/v1", ["a", "b"], "a") is None
    assert "serves: a, b" in model_problem("http://h/v1", ["a", "b"], "c")
    assert strip_echo("The quality is good", "The quality is") == " good"
    assert strip_echo(" good", "The quality is") == " good"


# --------------------------------------------------------------------- the warning where log-probs are read


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    pytest.importorskip("torch")
    return str(tiny_model_path("qwen2_5_vl"))


def test_agentic_summarizer_warns_and_results_carry_image_tokens(tiny):
    import lmmiqa

    scorer = lmmiqa.create_scorer("agentic-iqa", model=tiny, device="cpu", max_new_tokens=8, max_retries=0,
                                  tools="sharpness")
    with pytest.warns(LowCoveredMassWarning, match="^agentic-iqa summarizer: the level tokens") as rec:
        (r,) = scorer.score([make_image(48, 40, seed=1)])
    assert "Its most likely next tokens: '" in str(rec[0].message)
    assert r.ok and 0 < r.details["covered_mass"] < 0.5
    expected = scorer.backend.prompt_token_counts([lmmiqa.types.Prompt.simple([make_image(48, 40, 1), "x"])])
    assert r.details["image_tokens"] == expected[0]["image_tokens"] > 0 and r.details["prompt_tokens"] > 0


def test_leaf_pair_prompts_warn(tiny):
    import lmmiqa
    from lmmiqa.distill.teacher import judge_pairs_prompt

    backend = lmmiqa.create_scorer("q-align", model=tiny, device="cpu").backend
    with pytest.warns(LowCoveredMassWarning, match=r"^leaf teacher pair prompt: the level tokens \[' A', ' B'\]"):
        judge_pairs_prompt(backend, [make_image(32, 32, 1)], [make_image(32, 32, 2)])


def test_q_scorer_warns_with_its_own_top_tokens(tiny, tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from lmmiqa.methods.q_scorer import QScorer
    from lmmiqa.training.q_scorer import QScorerTrainConfig, train_q_scorer

    rows = []
    for i, m in enumerate([1.5, 4.5, 3.0]):
        make_image(40, 40, seed=i).save(tmp_path / f"{i}.png")
        rows.append((str(tmp_path / f"{i}.png"), m))
    cfg = QScorerTrainConfig(model=tiny, tokens=5, epochs=1, batch_size=3, head_dims=(8,), device="cpu",
                             decode_workers=0, progress=False, warmup_ratio=0.0, seed=0, mos_range=(1.0, 5.0))
    scorer = QScorer.from_options(adapter=str(train_q_scorer(rows, tmp_path / "a", cfg).out), device="cpu")
    with pytest.warns(LowCoveredMassWarning, match=r"^q-scorer: the level tokens \['<score1>'") as rec:
        out = scorer.score([p for p, _ in rows])
    assert all(r.ok for r in out)
    msg = str(rec[0].message)
    assert "cannot list them" not in msg and "not recorded" not in msg and "Its most likely next tokens: '" in msg
