"""Test doubles and helpers for the HTTP service tests: model-free fake methods, test images, running servers.

Servers listen on 127.0.0.1 only, on a free port, in a background thread (uvicorn), and are stopped when the
context manager exits.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.cancel import check_cancelled
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.testing import make_image
from lmmiqa.types import ScoreResult


@dataclass
class FakeConfig(ScorerConfig):
    """Options of the fake methods: ``offset`` and ``query`` are settable per request."""

    offset: float = 0.0
    query: str = "How good is it?"


class BrightnessScorer(Scorer):
    """Model-free method for service tests: score = mean brightness on 0..1 (+ offset).

    Class attributes let a test block batches (``gate``), know that the worker reached the scorer
    (``entered``), fail the next N batches as a whole (``fail_batches``) and see every batch size (``batches``).
    """

    name = "fake-brightness"
    config_cls = FakeConfig
    summary = "mean brightness (test double)"
    gate: threading.Event | None = None
    entered = threading.Event()
    fail_batches = 0
    batches: list[int] = []
    sizes: list[tuple[int, int]] = []
    lock = threading.Lock()

    @property
    def scale(self) -> tuple[float, float]:
        return (0.0, 2.0)

    @property
    def model_name(self) -> str:
        return "none"

    def score_loaded(self, items: list[ImageItem], load_s: float = 0.0) -> list[ScoreResult]:
        cls = BrightnessScorer
        cls.entered.set()
        if cls.gate is not None:
            cls.gate.wait(30)
        with cls.lock:
            cls.batches.append(len(items))
            cls.sizes.extend(it.image.size for it in items)
            if cls.fail_batches > 0:
                cls.fail_batches -= 1
                raise RuntimeError("simulated backend failure (CUDA error: out of memory)")
        return super().score_loaded(items, load_s)

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        out = []
        for it in items:
            value = float(np.asarray(it.image, dtype=np.float64).mean() / 255.0) + self.config.offset
            out.append(ScoreResult(image=it.key, score=value, method=self.name, scale=self.scale, model="none"))
        return out


class RegionsScorer(BrightnessScorer):
    """Fake method whose results carry LLM-IQA regions and an AgenticIQA-style explanation and tool scores."""

    name = "fake-regions"

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        out = []
        for r, it in zip(super().score_items(items), items):
            w, h = it.image.size
            details = {
                "regions": [
                    {"bbox": [0, 0, w // 2, h // 2], "area": (w // 2) * (h // 2), "score": 1.6},
                    {"bbox": [w // 2, h // 3, w, h], "area": (w - w // 2) * (h - h // 3), "score": 0.4},
                ],
                "explanation": "The left half is sharp; the lower right region shows <b>strong</b> noise. "
                f"(question: {self.config.query})",
                "tools": {
                    "niqe": {"raw": 4.25, "normalized": 3.1, "kind": "nr", "error": None},
                    "brisque": {"raw": 31.5, "normalized": 3.75, "kind": "nr", "error": None},
                    "ssim": {"raw": None, "normalized": None, "error": "needs a reference"},
                },
                "level_words": {"1": "bad", "2": "good"},
                "argmax": 2,
            }
            out.append(
                ScoreResult(
                    image=r.image, score=r.score, method=self.name, scale=self.scale, model="none",
                    probabilities={"1": 0.3, "2": 0.7}, details=details,
                )
            )
        return out


class FakeAgentic(RegionsScorer):
    """Stands in for the agentic method behind ``/v1/assess``."""

    name = "agentic-iqa"


class SlowAgentic(FakeAgentic):
    """A long agentic assessment: ``delay`` seconds per image (set ``started`` when it begins), spent in steps of
    10 ms that each check for cancellation (as a generation does between two tokens)."""

    delay = 0.3
    started = threading.Event()

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        SlowAgentic.started.set()
        out = []
        for it in items:
            end = time.monotonic() + SlowAgentic.delay
            while time.monotonic() < end:
                check_cancelled()
                time.sleep(min(0.01, max(0.0, end - time.monotonic())))
            out.extend(super().score_items([it]))
        return out


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A generated test image encoded in memory."""
    buf = io.BytesIO()
    make_image(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


@contextlib.contextmanager
def running_service(config: Any, scorer: Any | None = None) -> Iterator[tuple[str, Any]]:
    """Start a service on 127.0.0.1 in a thread, with the hardened uvicorn settings ``lmmiqa serve`` uses
    (header deadline, connection cap, keep-alive); yields (base URL, ScoringService)."""
    from lmmiqa.service.app import ScoringService, create_app
    from lmmiqa.service.server import serve_in_thread

    service = ScoringService(config, scorer=scorer)
    app = create_app(service)
    try:
        with serve_in_thread(app, config) as url:
            yield url, service
    finally:
        service.close()


