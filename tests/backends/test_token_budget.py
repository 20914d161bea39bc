"""The transformers backend on the real-file Qwen3-VL model: pixel budget, token counts, token-budget batching
without a KV cache, results in input order."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from lmmiqa.testing import make_image
from lmmiqa.types import Prompt

QWEN3 = "Qwen3-VL-8B-Instruct"
PREFIX = "The quality of the image is"
CANDS = [" excellent", " good", " fair", " poor", " bad"]


def _backend(path: Any, **options: Any) -> Any:
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    return TransformersBackend(TransformersConfig(model=str(path), device="cpu", dtype="float32", **options))


def _flat(w: int, h: int) -> Any:
    """A cheap image of a given size (token counts depend on the size only)."""
    from PIL import Image

    return Image.new("RGB", (w, h), (120, 90, 60))


def _prompt(image: Any) -> Prompt:
    return Prompt.simple([image, "How would you rate the quality of this image?"], answer_prefix=PREFIX)


@pytest.fixture(scope="module")
def qwen3(real_file_model: Any) -> Any:
    return real_file_model(QWEN3)


@pytest.fixture(scope="module")
def default_backend(qwen3: Any) -> Any:
    return _backend(qwen3)


def test_default_budget_keeps_1024x768_and_caps_4000x3000(default_backend: Any) -> None:
    counts = default_backend.prompt_token_counts([_prompt(_flat(1024, 768)), _prompt(_flat(4000, 3000))])
    assert counts[0]["image_tokens"] == 768  # the published count: under 1024*1024 pixels nothing changes
    assert counts[1]["image_tokens"] == 972  # 11,750 with the checkpoint's own limit
    # the count equals what the processor really produces (grid / 2x2 merge) and the encoded length
    enc = default_backend.encode([_prompt(_flat(4000, 3000))])
    assert int(enc["image_grid_thw"].prod()) // 4 == 972
    assert enc["input_ids"].shape[1] == counts[1]["tokens"]


def test_max_pixels_reaches_the_processor(qwen3: Any, caplog: pytest.LogCaptureFixture) -> None:
    small = _backend(qwen3, max_pixels="512*384", min_pixels=4096)
    ip = small.processor.image_processor
    assert (ip.size["longest_edge"], ip.size["shortest_edge"]) == (512 * 384, 4096)
    img = make_image(1024, 768)
    (c,) = small.prompt_token_counts([_prompt(img)])
    assert c["image_tokens"] == 192 < 768
    enc = small.encode([_prompt(img)])
    assert int(enc["image_grid_thw"].prod()) // 4 == 192
    # 'model' keeps the checkpoint's limit: a SPAQ original is 11,750 tokens, with a one-time warning
    native = _backend(qwen3, max_pixels="model")
    with caplog.at_level(logging.WARNING, logger="lmmiqa.backends.transformers_local"):
        (c,) = native.prompt_token_counts([_prompt(_flat(4000, 3000))])
        native.prompt_token_counts([_prompt(_flat(4000, 3001))])
    assert c["image_tokens"] == 11750
    warnings = [r for r in caplog.records if "image tokens" in r.getMessage()]
    assert len(warnings) == 1 and "--max-pixels" in warnings[0].getMessage()


def test_scoring_forward_runs_without_kv_cache(default_backend: Any) -> None:
    seen: list[dict[str, Any]] = []
    handle = default_backend.model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        default_backend.level_logprobs([_prompt(make_image(64, 48))], CANDS)
        default_backend.hidden_states([_prompt(make_image(64, 48))])
    finally:
        handle.remove()
    assert len(seen) == 2
    assert all(kw.get("use_cache") is False and kw.get("logits_to_keep") == 1 for kw in seen)


def test_sorted_batches_return_input_order_and_small_padding(qwen3: Any) -> None:
    sizes = [(64, 48), (448, 448), (96, 64), (384, 384), (300, 448)]
    prompts = [_prompt(make_image(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    planned = _backend(qwen3, max_batch_tokens=100_000)
    groups = planned.plan(prompts)
    assert [i for g in groups for i in g] != list(range(len(prompts)))  # really reordered
    got = planned.level_logprobs(prompts, CANDS)
    real, padded = planned.stats["real_tokens"], planned.stats["padded_tokens"]
    assert planned.stats["forwards"] < len(prompts)
    ref = np.concatenate([planned.level_logprobs([p], CANDS) for p in prompts])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the fixed chunks of before pad every prompt to the longest of the call
    old = _backend(qwen3, max_batch_tokens=0)
    old.level_logprobs(prompts, CANDS)
    assert old.stats["forwards"] == 1
    assert old.stats["padded_tokens"] > 1.5 * old.stats["real_tokens"]
    assert padded <= 1.25 * real
    hs = planned.hidden_states(prompts)
    hs_ref = np.concatenate([planned.hidden_states([p]) for p in prompts])
    np.testing.assert_allclose(hs, hs_ref, atol=1e-4)


def test_prompt_over_budget_runs_alone(qwen3: Any) -> None:
    b = _backend(qwen3, max_batch_tokens=200)
    prompts = [_prompt(make_image(448, 448)), _prompt(make_image(64, 48)), _prompt(make_image(64, 48, seed=1))]
    lengths = [c["tokens"] for c in b.prompt_token_counts(prompts)]
    assert lengths[0] > 200 and 2 * lengths[1] <= 200  # 222 and 2 x 90 (small images rise to 256x256)
    assert b.plan(prompts) == [[0], [1, 2]]
    b.level_logprobs(prompts, CANDS)
    assert (b.stats["forwards"], b.stats["prompts"]) == (2, 3)


def test_resize_fallback_for_processors_without_a_pixel_knob() -> None:
    from lmmiqa.backends.hf_processor import set_pixel_budget
    from lmmiqa.backends.pixels import fit_pixels, parse_pixels

    class Other:
        image_processor = type("SiglipImageProcessor", (), {"size": {"height": 384, "width": 384}})()

    assert set_pixel_budget(Other(), None, 1000) == "resize"
    assert set_pixel_budget(Other(), None, None) == "model"
    img = make_image(400, 300)
    out = fit_pixels(img, None, 30_000)
    assert out.size == (200, 150)
    assert fit_pixels(img, None, 10**6) is img
    assert fit_pixels(make_image(10, 10), 400, None).size == (20, 20)
    assert parse_pixels("1024x1024") == parse_pixels("1024*1024") == 1048576
    assert parse_pixels("model") is None


def test_encode_ahead_overlaps_and_gives_the_same_results(qwen3: Any) -> None:
    import threading

    prompts = [_prompt(make_image(w, h, seed=i)) for i, (w, h) in enumerate([(448, 448), (64, 48), (300, 300)])]
    ahead = _backend(qwen3, max_batch_tokens=200)
    threads: list[str] = []
    real_encode = ahead.encode

    def spy(ps: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_encode(ps)

    ahead.encode = spy  # type: ignore[method-assign]
    got = ahead.level_logprobs(prompts, CANDS)
    assert len(threads) == 3 and any(t.startswith("lmmiqa-prefetch") for t in threads)
    inline = _backend(qwen3, max_batch_tokens=200, encode_ahead=False)
    np.testing.assert_array_equal(got, inline.level_logprobs(prompts, CANDS))
