"""Fixtures for the HTTP service tests (helpers and fakes live in ``svc_fakes.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

from svc_fakes import BrightnessScorer, SlowAgentic

from lmmiqa import registry


@pytest.fixture()
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Register fake methods in the registry for one test: ``fake_methods(BrightnessScorer, ...)``."""

    def register(*classes: type) -> None:
        for cls in classes:
            target = f"svc_fakes:{cls.__name__}"
            monkeypatch.setitem(registry.METHODS, cls.name, target)
            monkeypatch.setitem(registry._cache, target, cls)

    BrightnessScorer.gate = None
    BrightnessScorer.entered = threading.Event()
    BrightnessScorer.fail_batches = 0
    BrightnessScorer.batches = []
    BrightnessScorer.sizes = []
    SlowAgentic.delay = 0.3
    SlowAgentic.started = threading.Event()
    return register


@pytest.fixture(scope="module")
def tiny_qalign_model(tiny_model_path: Callable[..., Any]) -> str:
    """Path of the tiny Qwen2.5-VL model shared by the module."""
    return str(tiny_model_path("qwen2_5_vl"))
