"""The openai backend's start-up checks, levels outside a server's top-k, servers that cannot continue a prefix, and
several replicas — against real HTTP servers on 127.0.0.1 (lmmiqa's own OpenAI-compatible app on the tiny model,
set to behave like vLLM, llama-server or llama-cpp-python's server). Issues 21 §2, §3, §5 and 23 §3."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lmmiqa
from lmmiqa.errors import ServerUnavailableError, is_run_level
from lmmiqa.methods.coverage import LowCoveredMassWarning, MissingLevelsWarning, reset_low_mass_warnings
from lmmiqa.testing import force_token, make_image
from lmmiqa.types import Prompt

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("openai")

PREFIX = "The quality of the image is"
WORDS = [" bad", " poor", " fair", " good", " excellent"]


@pytest.fixture(autouse=True)
def _quiet():
    reset_low_mass_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowCoveredMassWarning)  # random weights: asserted in test_coverage
        yield
    reset_low_mass_warnings()


@pytest.fixture(scope="module")
def local(tiny_model_path):
    from lmmiqa.backends.base import create_backend

    return create_backend("transformers", str(tiny_model_path("qwen2_5_vl")), device="cpu")


@contextlib.contextmanager
def _serve(local, **opts):
    from lmmiqa.service.openai_compat import create_app, serve_in_thread

    with serve_in_thread(create_app(local, served_name="tiny", **opts)) as url:
        yield url


@pytest.fixture(scope="module")
def server(local):
    with _serve(local) as url:
        yield url


def _dead_url() -> str:
    from lmmiqa.service.openai_compat import free_port

    return f"http://127.0.0.1:{free_port()}/v1"


def _qalign(url: str, **opts):
    return lmmiqa.create_scorer("q-align", backend="openai", model=url, backend_options=opts)


def _connect(url: str, **opts):
    """Create the backend (the start-up checks run here)."""
    return _qalign(url, **opts).backend


# ------------------------------------------------------------------------------- unreachable: one set-up error


def test_a_refused_connection_is_one_run_level_error_naming_the_url():
    url = _dead_url()
    scorer = _qalign(f"{url}#x")
    with pytest.raises(ServerUnavailableError) as err:
        scorer.score([make_image(20, 20, i) for i in range(3)])
    assert is_run_level(err.value)
    assert url in str(err.value) and "connection refused" in str(err.value)
    assert "Is the server running" in str(err.value)


def test_dns_and_tls_failures_say_what_to_check(server):
    with pytest.raises(ServerUnavailableError, match="no-such-host.invalid") as err:
        _connect("http://no-such-host.invalid:8000/v1#x", timeout=5)
    assert "does not resolve" in str(err.value) or "no answer within" in str(err.value)
    https = server.replace("http://", "https://")
    with pytest.raises(ServerUnavailableError, match="TLS failed") as err:
        _connect(f"{https}/v1#tiny")
    assert https in str(err.value)


def test_a_wrong_path_or_model_name_is_one_error_listing_what_is_served(server):
    with pytest.raises(ServerUnavailableError, match="usually ends in /v1"):
        _connect(f"{server}#tiny")  # /models without /v1: 404
    with pytest.raises(ServerUnavailableError) as err:
        _connect(f"{server}/v1#Qwen3-VL")
    assert "does not serve a model named 'Qwen3-VL'; it serves: tiny" in str(err.value)
    assert f"--model '{server}/v1#tiny'" in str(err.value)


def test_a_refused_api_key_names_the_variable(monkeypatch):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from lmmiqa.service.openai_compat import serve_in_thread

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return JSONResponse(status_code=401, content={"error": {"message": "Incorrect API key provided"}})

    monkeypatch.setenv("MY_KEY", "wrong")
    with serve_in_thread(app) as url, pytest.raises(ServerUnavailableError) as err:
        _connect(f"{url}/v1#m", api_key_env="MY_KEY")
    assert "refused the API key (401: Incorrect API key provided)" in str(err.value) and "$MY_KEY" in str(err.value)


def test_cli_score_with_no_server_fails_once_with_exit_2(tmp_path, sample_images):
    url = _dead_url()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "lmmiqa.cli", "score", *map(str, sample_images), "--backend", "openai",
         "--model", f"{url}#x"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr
    assert url in errors[0] and "connection refused" in errors[0]
    assert "APIConnectionError" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


# -------------------------------------------------------------------------- servers that cannot continue


def test_a_server_that_closes_the_turn_is_detected_and_folded_or_refused(local):
    with _serve(local, continue_mode="close") as url:
        scorer = _qalign(f"{url}/v1#tiny")
        backend = scorer.backend
        assert backend.prefix_mode == "folded" and backend.prefix_check.startswith("folded:")
        assert "ignores continue_final_message" in backend.prefix_check
        (r,) = scorer.score([make_image(40, 40, 0)])
        assert r.error or (r.details["prefix_mode"] == "folded" and r.details["candidate_match"] == "surface")
        backend.close()
        with pytest.raises(ServerUnavailableError, match="ignores continue_final_message") as err:
            _connect(f"{url}/v1#tiny", prefix_mode="continue")
        assert "llama-cpp-python" in str(err.value)


def test_a_server_that_continues_passes_the_check(server):
    backend = _connect(f"{server}/v1#tiny")
    assert backend.prefix_mode == "continue" and backend.prefix_check == "continued"
    assert not backend.echoes_prefix


def test_a_server_that_rejects_continuation_is_refused_in_continue_mode(local):
    with _serve(local, continue_mode="reject") as url, pytest.raises(ServerUnavailableError,
                                                                       match="rejects continue_final_message"):
        _connect(f"{url}/v1#tiny", prefix_mode="continue")


def test_generate_returns_only_the_new_text_when_the_server_repeats_the_prefix(local, server):
    prompt = Prompt.simple(["Describe it."], answer_prefix=PREFIX)
    plain = _connect(f"{server}/v1#tiny")
    with _serve(local, echo_prefix=True) as echo_url:
        echo = _connect(f"{echo_url}/v1#tiny")
        assert echo.echoes_prefix
        raw = echo.client.chat.completions.create(
            model="tiny", messages=echo._messages(prompt, False), max_tokens=3,
            extra_body={"continue_final_message": True, "add_generation_prompt": False})
        assert raw.choices[0].message.content.startswith(PREFIX)  # the server under test does repeat it
        assert echo.generate([prompt], max_new_tokens=3) == plain.generate([prompt], max_new_tokens=3)
        echo.close()
    assert not plain.generate([prompt], max_new_tokens=3)[0].startswith(PREFIX)


# ---------------------------------------------------------------------------------- levels outside the top-k


@contextlib.contextmanager
def _ranked(local, ids_and_bias):
    with contextlib.ExitStack() as stack:
        for tid, bias in ids_and_bias:
            stack.enter_context(force_token(local.model, int(tid), bias=bias))
        yield


def _others(local, n):
    levels = set(local.token_ids(WORDS, PREFIX))
    return [i for i in range(200, 400) if i not in levels][:n]


def test_levels_missing_from_the_first_listing_are_fetched(server, local):
    """Three other tokens on top, " good" and " fair" 4th and 5th: a top-3 request sees no level; the backend asks
    again with a larger top_logprobs and reads exactly the in-process numbers."""
    good, fair = local.token_ids([" good", " fair"], PREFIX)
    a, b, c = _others(local, 3)
    scorer = _qalign(f"{server}/v1#tiny", top_logprobs=3)
    img = make_image(40, 40, 1)
    prompts = [scorer.build_prompt(img)]
    with _ranked(local, [(a, 12.0), (b, 11.5), (c, 11.0), (good, 10.0), (fair, 9.5)]), \
            warnings.catch_warnings():
        warnings.simplefilter("error", MissingLevelsWarning)
        (r,) = scorer.score([img])
        lp_local = local.level_logprobs(prompts, WORDS)
    assert r.ok and "missing_levels" not in r.details
    p = np.exp(lp_local[0]) / np.exp(lp_local[0]).sum()
    np.testing.assert_allclose(list(r.probabilities.values()), p, atol=1e-5)


def test_a_server_cap_is_read_from_its_error_and_missing_levels_are_reported_with_a_bound(local):
    """A vLLM-like server that lists at most 5: the backend's top-20 and top-1000 requests are refused with vLLM's
    message, the cap is kept, and the levels outside the top 5 are reported with a bound that holds."""
    good, fair = local.token_ids([" good", " fair"], PREFIX)
    a, b, c = _others(local, 3)
    img = make_image(40, 40, 2)
    with _serve(local, max_top_logprobs=5) as url:
        scorer = _qalign(f"{url}/v1#tiny")
        prompts = [scorer.build_prompt(img)]
        with _ranked(local, [(a, 12.0), (b, 11.5), (c, 11.0), (good, 10.0), (fair, 9.5)]), \
                pytest.warns(MissingLevelsWarning, match="outside the server's top 5") as rec:
            (r,) = scorer.score([img])
            lp_local = local.level_logprobs(prompts, WORDS)
        assert sum(issubclass(w.category, MissingLevelsWarning) for w in rec) == 1
        assert scorer.backend._cap == 5
        scorer.backend.close()
    missing = r.details["missing_levels"]
    assert missing["levels"] == ["1", "2", "5"] and missing["top_logprobs"] == 5
    assert missing["logprob_at_most"] == pytest.approx(lp_local[0, 2], abs=1e-4)  # " fair" was the 5th listed
    true = float(np.exp(lp_local[0]) @ np.arange(1, 6) / np.exp(lp_local[0]).sum())
    assert abs(r.score - true) <= missing["score_error_at_most"] + 1e-9
    assert r.probabilities["4"] > r.probabilities["3"] > 0 and r.probabilities["1"] == 0.0


def test_missing_levels_are_reported_without_a_second_request_when_asked(server, local):
    good = local.token_ids([" good"], PREFIX)[0]
    a = _others(local, 1)[0]
    scorer = _qalign(f"{server}/v1#tiny", top_logprobs=2, max_top_logprobs=0)
    with _ranked(local, [(a, 12.0), (good, 11.0)]), pytest.warns(MissingLevelsWarning):
        (r,) = scorer.score([make_image(30, 30, 3)])
    assert r.ok and r.score == 4.0
    assert r.details["missing_levels"]["levels"] == ["1", "2", "3", "5"]
    assert 0 < r.details["missing_levels"]["score_error_at_most"] <= 3.0


# ------------------------------------------------------------------------------------------------ replicas


def test_two_replicas_share_the_work_and_give_the_same_scores(local, server):
    imgs = [make_image(30 + 4 * i, 30, i) for i in range(6)]
    single = _qalign(f"{server}/v1#tiny").score(imgs)
    with _serve(local) as second:
        scorer = _qalign(f"{server}/v1,{second}/v1#tiny", concurrency=1)
        both = scorer.score(imgs, batch_size=6)
        stats = scorer.backend.replica_stats()
        scorer.backend.close()
    assert [s["url"] for s in stats] == [f"{server}/v1", f"{second}/v1"]
    assert all(s["served"] > 0 for s in stats), stats
    assert [r.score for r in both] == pytest.approx([r.score for r in single], abs=1e-9)


def test_a_dead_replica_is_set_aside_and_the_run_goes_on(local, server, caplog):
    dead = _dead_url()
    scorer = _qalign(f"{server}/v1,{dead}#tiny")
    with caplog.at_level("WARNING"):
        results = scorer.score([make_image(30, 30, i) for i in range(3)])
    assert all(r.ok for r in results)
    assert any(dead in m and "connection refused" in m for m in caplog.messages)
    stats = {s["url"]: s for s in scorer.backend.replica_stats()}
    assert not stats[dead]["alive"] and stats[f"{server}/v1"]["served"] > 0
    scorer.backend.close()


def test_a_replica_that_dies_mid_run_hands_its_requests_to_the_other(local, server):
    imgs = [make_image(30, 30, i) for i in range(4)]
    with _serve(local) as second:
        scorer = _qalign(f"{server}/v1,{second}/v1#tiny", concurrency=1)
        assert all(r.ok for r in scorer.score(imgs))
    # the second server is gone now (its block ended): every image still scores, on the first
    again = scorer.score(imgs)
    assert all(r.ok for r in again), [r.error for r in again]
    stats = {s["url"]: s for s in scorer.backend.replica_stats()}
    assert not stats[f"{second}/v1"]["alive"] and stats[f"{second}/v1"]["failures"] >= 1
    scorer.backend.close()


def test_no_replica_answering_is_one_error_naming_each(server):
    a, b = _dead_url(), _dead_url()
    with pytest.raises(ServerUnavailableError) as err:
        _qalign(f"{a},{b}#tiny").score([make_image(20, 20, 0)])
    assert "none of the 2 replicas" in str(err.value) and a in str(err.value) and b in str(err.value)


def test_a_server_that_stops_answering_ends_the_run_with_one_error(local):
    with _serve(local) as url:
        scorer = _qalign(f"{url}/v1#tiny", max_retries=1)
        assert scorer.score([make_image(20, 20, 0)])[0].ok
    with pytest.raises(ServerUnavailableError, match="stopped answering: connection refused"):
        scorer.score([make_image(20, 20, i) for i in range(3)])
    scorer.backend.close()
