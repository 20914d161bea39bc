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


def test_match_candidates_sums_surface_variants_and_marks_missing():
    top = [(" good", np.log(0.5)), ("Good", np.log(0.1)), (" bad", np.log(0.2)), (" the", np.log(0.1))]
    lp = match_candidates(top, [" bad", " good", " excellent"])
    np.testing.assert_allclose(np.exp(lp[:2]), [0.2, 0.6])
    assert lp[2] == -np.inf


def test_openai_scores_match_in_process_scores(server, local_backend):
    """With every token returned (top_logprobs = vocabulary size) the remote distribution is exactly the local
    one, summed over surface variants of each level word (" good", "good", "Good")."""
    vocab = len(local_backend.tokenizer)
    imgs = [make_image(64, 48, 0), make_image(40, 72, 1)]
    remote_scorer = lmmiqa.create_scorer(
        "q-align", backend="openai", model=f"{server}/v1#tiny", backend_options={"top_logprobs": vocab}
    )
    remote = remote_scorer.score(imgs)
    prompts = [remote_scorer.build_prompt(im) for im in imgs]
    full = local_backend.last_logits(prompts).numpy()
    words = ["bad", "poor", "fair", "good", "excellent"]
    decoded = [local_backend.tokenizer.decode([i]).strip().lower() for i in range(full.shape[1])]
    for row, r in zip(full, remote):
        assert r.ok, r.error
        assert r.model == f"{server}/v1#tiny"
        mass = np.array([np.exp(row[[i for i, d in enumerate(decoded) if d == w]]).sum() for w in words])
        expected = mass / mass.sum()
        np.testing.assert_allclose(list(r.probabilities.values()), expected, atol=1e-5)
        assert r.details["covered_mass"] == pytest.approx(mass.sum(), rel=1e-4)
        assert "prefix_mode" not in r.details


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
    # push an unrelated token to the top and ask for only 1 alternative: no candidate is visible
    other = local_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    scorer = lmmiqa.create_scorer(
        "q-align", backend="openai", model=f"{server}/v1#tiny", backend_options={"top_logprobs": 1}
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


def test_generate_over_openai(server):
    b = OpenAIBackend(OpenAIConfig(model=f"{server}/v1"))
    assert b.model_name() == "tiny"
    from lmmiqa.types import Prompt

    out = b.generate([Prompt.simple(["Say something."])], max_new_tokens=4)
    assert isinstance(out[0], str)
    b.close()


def test_unreachable_server_is_a_per_item_error():
    from lmmiqa.service.openai_compat import free_port

    port = free_port()
    scorer = lmmiqa.create_scorer(
        "q-align", backend="openai", model=f"http://127.0.0.1:{port}/v1#x",
        backend_options={"max_retries": 0, "timeout": 2.0},
    )
    r = scorer.score([make_image(20, 20, 0)])[0]
    assert not r.ok and "Connection" in r.error
