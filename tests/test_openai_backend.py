"""The openai backend against a real HTTP server on 127.0.0.1 that computes log-probabilities with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

import lmmiqa
from lmmiqa.backends.openai_http import OpenAIBackend, OpenAIConfig, match_candidates, parse_model_url
from lmmiqa.errors import ConfigError
from lmmiqa.testing import force_token, make_image

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("openai")


@pytest.fixture(scope="module")
def local_backend(tiny_model_path):
    from lmmiqa.backends.base import create_backend

    return create_backend("transformers", str(tiny_model_path("qwen2_5_vl")), device="cpu")


@pytest.fixture(scope="module")
def server(local_backend):
    from lmmiqa.service.openai_compat import create_app, serve_in_thread

    with serve_in_thread(create_app(local_backend, served_name="tiny")) as url:
        yield url


@pytest.fixture(scope="module")
def server_no_continue(local_backend):
    from lmmiqa.service.openai_compat import create_app, serve_in_thread

    with serve_in_thread(create_app(local_backend, served_name="tiny", allow_continue=False)) as url:
        yield url


def test_parse_model_url_and_config_errors():
    assert parse_model_url("http://127.0.0.1:8000/v1#Qwen3") == ("http://127.0.0.1:8000/v1", "Qwen3")
    assert parse_model_url("http://h/v1/") == ("http://h/v1", None)
    with pytest.raises(ConfigError, match="http://host:port/v1#served-name"):
        OpenAIConfig(model="Qwen/Qwen3-VL-8B-Instruct")


def test_match_candidates_rules():
    top = [(" good", np.log(0.5)), ("Good", np.log(0.1)), (" bad", np.log(0.2)), (" the", np.log(0.1))]
    lp = match_candidates(top, [" bad", " good", " excellent"], "surface")
    np.testing.assert_allclose(np.exp(lp[:2]), [0.2, 0.6])
    assert lp[2] == -np.inf
    exact = match_candidates(top, [" bad", " good", " excellent"], "exact")
    np.testing.assert_allclose(np.exp(exact[:2]), [0.2, 0.5])  # "Good" is another vocabulary entry
    assert exact[2] == -np.inf
    with pytest.raises(ConfigError, match="exact, surface"):
        match_candidates(top, [" bad"], "fuzzy")
    with pytest.raises(ConfigError, match="auto, exact, surface"):
        OpenAIConfig(model="http://h/v1", candidate_match="fuzzy")


def _fake_response(chosen: str, top: list[tuple[str, float]]):
    from types import SimpleNamespace as NS

    entry = NS(token=chosen, logprob=dict(top)[chosen] if chosen in dict(top) else np.log(0.01),
               top_logprobs=[NS(token=t, logprob=float(v)) for t, v in top])
    return NS(choices=[NS(logprobs=NS(content=[entry]), message=NS(content=chosen))])


@pytest.mark.parametrize("chosen", [" good", " the"])
def test_chosen_token_is_counted_once(monkeypatch, chosen):
    """Issue 13 §1: servers list the chosen token among its top_logprobs; a true (bad .25, fair .35, good .40)
    must come back as it is, not as (.18, .25, .57) with the chosen " good" counted twice."""
    from lmmiqa.types import Prompt

    top = [(" good", np.log(0.40)), (" fair", np.log(0.35)), (" bad", np.log(0.25))]
    b = OpenAIBackend(OpenAIConfig(model="http://127.0.0.1:9/v1#x", check=False))
    monkeypatch.setattr(b, "_create", lambda prompt, **kw: _fake_response(chosen, top))
    lp = b.level_logprobs([Prompt.simple(["q"], answer_prefix="The quality of the image is")], [" bad", " fair", " good"])
    p = np.exp(lp[0]) / np.exp(lp[0]).sum()
    np.testing.assert_allclose(p, [0.25, 0.35, 0.40], atol=1e-12)
    b.close()


def test_chosen_token_missing_from_top_list_is_added(monkeypatch):
    from lmmiqa.types import Prompt

    b = OpenAIBackend(OpenAIConfig(model="http://127.0.0.1:9/v1#x", check=False))
    resp = _fake_response(" good", [(" fair", np.log(0.3))])
    resp.choices[0].logprobs.content[0].logprob = float(np.log(0.6))
    monkeypatch.setattr(b, "_create", lambda prompt, **kw: resp)
    lp = b.level_logprobs([Prompt.simple(["q"], answer_prefix="is")], [" fair", " good"])
    np.testing.assert_allclose(np.exp(lp[0]), [0.3, 0.6])
    b.close()


def _local_probs(local_backend, prompts, candidates):
    from lmmiqa.levels import closed_set_probs

    return closed_set_probs(local_backend.level_logprobs(prompts, candidates))


LEVEL_WORDS = ["bad", "poor", "fair", "good", "excellent"]


def test_openai_scores_match_in_process_scores(server, local_backend):
    """With every token returned (top_logprobs = vocabulary size) the remote distribution is exactly the
    in-process one: one vocabulary entry per level (the exact rule), as the transformers backend reads it."""
    vocab = len(local_backend.tokenizer)
    imgs = [make_image(64, 48, 0), make_image(40, 72, 1)]
    remote_scorer = lmmiqa.create_scorer(
        "q-align", backend="openai", model=f"{server}/v1#tiny", backend_options={"top_logprobs": vocab}
    )
    remote = remote_scorer.score(imgs)
    prompts = [remote_scorer.build_prompt(im) for im in imgs]
    cands = [" " + w for w in LEVEL_WORDS]
    local = _local_probs(local_backend, prompts, cands)
    full_lp = local_backend.level_logprobs(prompts, cands)
    for r, p_local, lp in zip(remote, local, full_lp):
        assert r.ok, r.error
        assert r.model == f"{server}/v1#tiny"
        np.testing.assert_allclose(list(r.probabilities.values()), p_local, atol=1e-5)
        assert r.details["covered_mass"] == pytest.approx(np.exp(lp).sum(), rel=1e-4)
        assert r.details["candidate_match"] == "exact"
        assert "prefix_mode" not in r.details


@pytest.mark.parametrize("second", [False, True], ids=["level-top", "level-second"])
def test_parity_with_a_forced_level(server, local_backend, second):
    """Issue 13 §1: a level word that is the model's top token (or ranked second behind another token) gets the
    same probability from the server as in-process (the old code counted the chosen token twice)."""
    from lmmiqa.testing import force_token

    vocab = len(local_backend.tokenizer)
    prefix = "The quality of the image is"
    good, fair = local_backend.token_ids([" good", " fair"], prefix)
    other = local_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    remote = OpenAIBackend(OpenAIConfig(model=f"{server}/v1#tiny", top_logprobs=vocab))
    scorer = lmmiqa.create_scorer("q-align", backend="openai", model=f"{server}/v1#tiny")
    prompts = [scorer.build_prompt(make_image(48, 48, 5))]
    cands = [" " + w for w in LEVEL_WORDS]
    with force_token(local_backend.model, good, bias=6.0), force_token(local_backend.model, fair, bias=5.5), \
            force_token(local_backend.model, other, bias=12.0 if second else 0.0):
        top = local_backend.top_logprobs(prompts, 2)[0]
        assert top[1 if second else 0][0] == " good"  # the case under test
        lp_remote = remote.level_logprobs(prompts, cands)
        lp_local = local_backend.level_logprobs(prompts, cands)
    np.testing.assert_allclose(lp_remote, lp_local, atol=1e-5)
    p_good = float(np.exp(lp_local[0, 3]) / np.exp(lp_local[0]).sum())
    assert 0.2 < p_good < 0.95  # not saturated: a double count would show
    remote.close()


def test_surface_variants_rule_is_the_same_on_both_backends_and_reported(server, local_backend):
    """A forced "Good" (another vocabulary entry than the in-context " good") is not a level for the in-process
    backend; the server's default (exact) rule agrees; the surface rule sums it and says so in details."""
    from lmmiqa.testing import force_token

    vocab = len(local_backend.tokenizer)
    capital = local_backend.tokenizer.convert_tokens_to_ids("Good")
    assert local_backend.tokenizer.decode([capital]) == "Good"
    img = make_image(40, 40, 7)
    exact = lmmiqa.create_scorer("q-align", backend="openai", model=f"{server}/v1#tiny",
                                 backend_options={"top_logprobs": vocab})
    surface = lmmiqa.create_scorer("q-align", backend="openai", model=f"{server}/v1#tiny",
                                   backend_options={"top_logprobs": vocab, "candidate_match": "surface"})
    prompts = [exact.build_prompt(img)]
    with force_token(local_backend.model, capital, bias=8.0):
        r_exact, r_surface = exact.score([img])[0], surface.score([img])[0]
        p_local = _local_probs(local_backend, prompts, [" " + w for w in LEVEL_WORDS])[0]
    assert r_exact.details["candidate_match"] == "exact"
    assert r_surface.details["candidate_match"] == "surface"
    np.testing.assert_allclose(list(r_exact.probabilities.values()), p_local, atol=1e-5)
    assert r_surface.probabilities["4"] > r_exact.probabilities["4"] + 0.3  # "Good" summed into good


def test_openai_forced_level(server, local_backend):
    (tid,) = local_backend.token_ids([" fair"], "The quality of the image is")
    scorer = lmmiqa.create_scorer("q-align", backend="openai", model=f"{server}/v1#tiny")
    with force_token(local_backend.model, tid):
        r = scorer.score([make_image(50, 50, 3)])[0]
    assert r.score == pytest.approx(3.0, abs=1e-6)


def test_standard_guided_over_openai_without_prefix(server, local_backend):
    (tid,) = local_backend.token_ids(["6"], "")
    scorer = lmmiqa.create_scorer("standard-guided", backend="openai", model=f"{server}/v1#tiny", levels=7)
    with force_token(local_backend.model, tid):
        r = scorer.score([make_image(50, 50, 3)])[0]
    assert r.score == pytest.approx(6.0, abs=1e-6)


def test_no_candidate_in_top_k_is_a_clear_per_item_error(server, local_backend):
    # push an unrelated token to the top and ask for only 1 alternative, never more: no candidate is visible
    other = local_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    scorer = lmmiqa.create_scorer(
        "q-align", backend="openai", model=f"{server}/v1#tiny",
        backend_options={"top_logprobs": 1, "max_top_logprobs": 0},
    )
    with force_token(local_backend.model, other, bias=50.0):
        r = scorer.score([make_image(30, 30, 1)])[0]
    assert not r.ok and "no level candidate" in r.error


def test_server_without_continue_folds_prefix_and_says_so(server_no_continue):
    scorer = lmmiqa.create_scorer("q-align", backend="openai", model=f"{server_no_continue}/v1#tiny")
    r = scorer.score([make_image(40, 40, 0)])[0]
    # the tiny random model may or may not put a level word in its top-20 when the prefix is folded
    assert r.details.get("prefix_mode") == "folded" or (r.error and "no level candidate" in r.error)
    assert scorer.backend.prefix_mode == "folded"
    # a folded reply starts fresh (usually capitalised): surface variants are summed, and results say so
    assert scorer.backend.candidate_match == "surface"
    assert r.error or r.details["candidate_match"] == "surface"


def test_generate_over_openai(server):
    b = OpenAIBackend(OpenAIConfig(model=f"{server}/v1"))
    assert b.model_name() == "tiny"
    from lmmiqa.types import Prompt

    out = b.generate([Prompt.simple(["Say something."])], max_new_tokens=4)
    assert isinstance(out[0], str)
    b.close()


def test_parity_on_the_real_file_model(real_file_model):
    """The real Qwen3-VL tokenizer, chat template and processor (random weights): with " good" forced to the
    top and " fair" second, the server's level log-probabilities (default top-20) equal the in-process ones
    for every level it lists, and the closed-set score agrees."""
    from lmmiqa.backends.base import create_backend
    from lmmiqa.service.openai_compat import create_app, serve_in_thread
    from lmmiqa.testing import force_token

    local = create_backend("transformers", str(real_file_model("Qwen3-VL-8B-Instruct")), device="cpu")
    good, fair = local.token_ids([" good", " fair"], "The quality of the image is")
    img = make_image(96, 64, 11)
    with serve_in_thread(create_app(local, served_name="qwen3")) as url:
        scorer = lmmiqa.create_scorer("q-align", backend="openai", model=f"{url}/v1#qwen3")
        prompts = [scorer.build_prompt(img)]
        cands = [" " + w for w in LEVEL_WORDS]
        with force_token(local.model, good, bias=30.0), force_token(local.model, fair, bias=29.5):
            assert [t for t, _ in local.top_logprobs(prompts, 2)[0]] == [" good", " fair"]
            lp_remote = scorer.backend.level_logprobs(prompts, cands)
            lp_local = local.level_logprobs(prompts, cands)
            r = scorer.score([img])[0]
        scorer.backend.close()
    seen = np.isfinite(lp_remote[0])
    assert seen[2] and seen[3]
    np.testing.assert_allclose(lp_remote[0][seen], lp_local[0][seen], atol=1e-4)
    p = np.exp(lp_local[0][seen]) / np.exp(lp_local[0][seen]).sum()
    assert r.ok and r.details["candidate_match"] == "exact"
    assert r.score == pytest.approx(float(p @ np.arange(1, 6)[seen]), abs=1e-4)
