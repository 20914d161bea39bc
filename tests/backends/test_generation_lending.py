"""Scoring forwards run between the generation steps of the transformers backend (issue 16 §3): the model lock is
lent to waiting scoring calls after each generated token, and neither side's results change."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from lmmiqa.backends.model_lock import ModelLock
from lmmiqa.testing import make_image
from lmmiqa.types import Prompt

CANDS = [" good", " bad", " fair"]
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def backend(tiny_model_path: Any) -> Any:
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    return TransformersBackend(TransformersConfig(model=str(tiny_model_path("qwen2_5_vl")), device="cpu", dtype="float32"))


def _gen_prompts() -> list[Prompt]:
    return [
        Prompt.simple([make_image(64, 48, seed=1), "Describe the image."]),
        Prompt.simple([make_image(64, 48, seed=2), "What is wrong with it?"]),
    ]


def _score_prompts() -> list[Prompt]:
    # another image size than the generation's: a different Qwen M-RoPE ``rope_deltas``, which a scoring forward
    # writes on the model and the generation's next step reads
    return [
        Prompt.simple([make_image(128, 96, seed=3), "Rate the quality."], answer_prefix="The quality is"),
        Prompt.simple([make_image(96, 128, seed=4), "Rate it."], answer_prefix="The quality is"),
    ]


def _hooked(backend: Any, monkeypatch: pytest.MonkeyPatch, wait_steps: int) -> list[int]:
    """Make the first ``wait_steps`` token boundaries of generate() wait until a scoring call waits for the lock,
    so that the interleaving is certain, not a race; returns the list of steps seen (grows as generation runs)."""
    steps: list[int] = []
    original = backend._between_tokens

    def between() -> None:
        steps.append(len(steps) + 1)
        if len(steps) <= wait_steps:
            for _ in range(int(TIMEOUT / 0.01)):
                if backend._lock.waiting:
                    break
                threading.Event().wait(0.01)
        original()

    monkeypatch.setattr(backend, "_between_tokens", between)
    return steps


def test_scoring_call_finishes_before_the_generation_in_progress(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scoring call started after the first generated token finishes at that token boundary: the generation thread
    waits there for it (it cannot finish while generate() holds the model unless the lock is lent)."""
    first_token = threading.Event()
    scored = threading.Event()
    scored_at_first_token: list[bool] = []
    steps: list[int] = []
    original = backend._between_tokens

    def between() -> None:
        steps.append(len(steps) + 1)
        if len(steps) == 1:
            first_token.set()
            for _ in range(int(TIMEOUT / 0.01)):  # until the scoring call waits for the lock
                if backend._lock.waiting:
                    break
                threading.Event().wait(0.01)
            original()
            scored_at_first_token.append(scored.wait(10.0))
        else:
            original()

    monkeypatch.setattr(backend, "_between_tokens", between)
    errors: list[BaseException] = []

    def score() -> None:
        try:
            assert first_token.wait(TIMEOUT)
            backend.level_logprobs(_score_prompts(), CANDS)
            scored.set()
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    t = threading.Thread(target=score)
    t.start()
    lends = backend._lock.lends
    backend.generate(_gen_prompts(), max_new_tokens=12)
    t.join(TIMEOUT)
    assert not errors, errors
    assert scored_at_first_token == [True]  # finished inside the first token boundary ...
    assert len(steps) > 1  # ... while the generation had more tokens to make
    assert backend._lock.lends == lends + 1


def test_interleaved_results_equal_undisturbed_ones(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    want_text = backend.generate(_gen_prompts(), max_new_tokens=16)
    want_scores = backend.level_logprobs(_score_prompts(), CANDS)

    steps = _hooked(backend, monkeypatch, wait_steps=4)
    done = threading.Event()
    scores: list[np.ndarray] = []
    errors: list[BaseException] = []

    def score_repeatedly() -> None:
        try:
            while not done.is_set():
                scores.append(backend.level_logprobs(_score_prompts(), CANDS))
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    t = threading.Thread(target=score_repeatedly)
    t.start()
    lends = backend._lock.lends
    try:
        got_text = backend.generate(_gen_prompts(), max_new_tokens=16)
    finally:
        done.set()
        t.join(TIMEOUT)
    assert not errors, errors
    assert backend._lock.lends - lends >= 4  # scoring forwards really ran inside the generation
    assert len(steps) >= 4
    assert got_text == want_text  # greedy: same tokens although other prompts' forwards ran in between
    assert scores and all(np.array_equal(s, want_scores) for s in scores)


def test_lock_priority_and_reentrancy() -> None:
    lock = ModelLock()
    lock.acquire()
    lock.acquire()  # reentrant
    assert lock.lend() is False  # nothing waits
    order: list[str] = []
    started = threading.Barrier(3)

    def plain() -> None:
        started.wait()
        with lock:
            order.append("plain")

    def prio() -> None:
        started.wait()
        with lock.priority():
            order.append("priority")

    threads = [threading.Thread(target=plain), threading.Thread(target=prio)]
    for t in threads:
        t.start()
    started.wait()
    for _ in range(int(TIMEOUT / 0.01)):
        if lock.waiting:
            break
        threading.Event().wait(0.01)
    assert lock.lend() is False  # held twice: a nested holder never lends
    lock.release()
    assert lock.lend() is True  # the priority acquirer ran; the plain one still waits behind us
    assert order == ["priority"]
    lock.release()
    for t in threads:
        t.join(TIMEOUT)
    assert order == ["priority", "plain"]
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()


def test_lending_keeps_the_generation_rope_deltas(backend: Any) -> None:
    """A scoring forward rewrites the model's cached M-RoPE ``rope_deltas`` (Qwen-VL); the generation that lent the
    lock gets its own back (transformers 4.x reads them at every decoding step)."""
    import torch

    inner = next(m for m in backend.model.modules() if "rope_deltas" in m.__dict__)
    mine = torch.tensor([[123], [456]])
    scored = threading.Event()
    errors: list[BaseException] = []

    def score() -> None:
        try:
            backend.level_logprobs(_score_prompts(), CANDS)
            scored.set()
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    with backend._lock:
        inner.rope_deltas = mine
        t = threading.Thread(target=score)
        t.start()
        for _ in range(int(TIMEOUT / 0.01)):
            if backend._lock.waiting:
                break
            threading.Event().wait(0.01)
        backend._between_tokens()
        assert scored.wait(TIMEOUT)  # the scoring forward ran inside (we hold the lock), wrote its own deltas ...
        assert inner.rope_deltas is mine  # ... which were put back
    t.join(TIMEOUT)
    assert not errors, errors
