"""--max-pixels/--min-pixels/--max-batch-tokens reach the model; image-token counts in every result's details."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

import lmmiqa
from lmmiqa.errors import ConfigError
from lmmiqa.testing import make_image

QWEN3 = "Qwen3-VL-8B-Instruct"


@pytest.fixture(scope="module")
def qwen3(real_file_model: Any) -> str:
    return str(real_file_model(QWEN3))


def test_q_align_reports_image_tokens_and_takes_the_budget(qwen3: str) -> None:
    img = make_image(1024, 768)
    (r,) = lmmiqa.create_scorer("q-align", model=qwen3, device="cpu").score([img])
    assert r.ok, r.error
    assert r.details["image_tokens"] == 768  # the published count at 1024x768
    assert r.details["prompt_tokens"] > 768
    small = lmmiqa.create_scorer("q-align", model=qwen3, device="cpu", max_pixels="512*384")
    (r2,) = small.score([img])
    assert r2.details["image_tokens"] == 192
    assert small.backend.processor.image_processor.size["longest_edge"] == 512 * 384
    assert small.describe()["config"]["max_pixels"] == 512 * 384


def test_llm_iqa_reports_tokens_per_region(qwen3: str) -> None:
    scorer = lmmiqa.create_scorer("llm-iqa", model=qwen3, device="cpu", segmenter="felzenszwalb", max_pixels=200_000)
    (r,) = scorer.score([make_image(640, 480, seed=3)])
    assert r.ok, r.error
    d = r.details
    assert d["regions"] and all(reg["image_tokens"] >= 1 for reg in d["regions"])
    assert d["global_image_tokens"] == 192  # 640x480 under 200k pixels -> 16x12 merged tokens
    assert d["image_tokens"] == d["global_image_tokens"] + sum(reg["image_tokens"] for reg in d["regions"])
    assert d["models"][0]["image_tokens"] == d["image_tokens"]


def test_cli_flags_become_options() -> None:
    import argparse

    from lmmiqa.cli._method_args import add_method_args, method_options

    p = argparse.ArgumentParser()
    add_method_args(p)
    opts = method_options(p.parse_args(["--max-pixels", "model", "--min-pixels", "4096", "--max-batch-tokens", "0"]))
    assert opts == {"max_pixels": "model", "min_pixels": "4096", "max_batch_tokens": 0}
    from lmmiqa.methods.q_align import QAlignConfig

    cfg = QAlignConfig(**opts)
    assert (cfg.max_pixels, cfg.min_pixels, cfg.max_batch_tokens) == ("model", 4096, 0)
    assert cfg.backend_kwargs()["max_pixels"] == "model" and cfg.backend_kwargs()["max_batch_tokens"] == 0
    assert QAlignConfig().max_pixels == 1024 * 1024
    with pytest.raises(ConfigError, match="max_pixels"):
        QAlignConfig(max_pixels="lots")
    with pytest.raises(ConfigError, match="must not exceed"):
        QAlignConfig(max_pixels=1000, min_pixels=2000)
    with pytest.raises(ConfigError, match="transformers backend"):
        QAlignConfig(backend="openai", model="http://127.0.0.1:9/v1#m", max_batch_tokens=4096)


def test_serve_has_both_the_budget_and_the_upload_guard() -> None:
    from lmmiqa.cli import build_parser

    args = build_parser().parse_args(["serve", "--max-pixels", "1024*1024", "--max-image-pixels", "1000"])
    from lmmiqa.cli.serve import build_config

    cfg = build_config(args)
    assert cfg.max_image_pixels == 1000 and cfg.options["max_pixels"] == "1024*1024"


def test_openai_backend_downscales_before_encoding() -> None:
    pytest.importorskip("openai")
    from PIL import Image

    from lmmiqa.backends.openai_http import OpenAIBackend, OpenAIConfig
    from lmmiqa.types import Prompt

    def sent_size(**opts: Any) -> tuple[int, int]:
        backend = OpenAIBackend(OpenAIConfig(model="http://127.0.0.1:9/v1#m", check=False, **opts))
        msgs = backend._messages(Prompt.simple([make_image(400, 300), "q"]), folded=False)
        url = next(p["image_url"]["url"] for p in msgs[-1]["content"] if p["type"] == "image_url")
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size

    assert sent_size(max_pixels=30_000) == (200, 150)
    assert sent_size(max_pixels="model") == (400, 300)
    assert sent_size() == (400, 300)  # under the 1024x1024 default
