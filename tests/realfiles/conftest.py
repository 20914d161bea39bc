"""Fixtures of the real-file tests: shrunken random-weight Qwen2.5-VL / Qwen3-VL models with the REAL tokenizer,
chat template and processor settings (``../shared/data/hf``; the tests skip with the reason when it is absent),
one shared backend per model, the golden rendered prompts, and one torch thread."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "real_prompts.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: these ~20 M-parameter models gain little from two, and on a shared 2-core machine
    waiting OpenMP threads made forwards several times slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_backend(real_file_model: Callable[..., pathlib.Path]) -> Callable[[str], Any]:
    """Factory ``real_backend(name)``: the cached transformers backend (CPU, float32) of the real-file model, the
    one every scorer created with ``model=str(path), device="cpu"`` shares. Treat it as read-only."""
    import lmmiqa

    def factory(name: str) -> Any:
        path = real_file_model(name)
        return lmmiqa.create_scorer("q-align", model=str(path), device="cpu").backend

    return factory


class Golden:
    """The frozen rendered prompts of ``tests/golden/real_prompts.json`` (``LMMIQA_UPDATE_GOLDEN=1`` rewrites
    the entries that a test checks; review the diff before committing it)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.update = os.environ.get("LMMIQA_UPDATE_GOLDEN") == "1"
        self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def check(self, name: str, method: str, rendered: dict[str, str]) -> None:
        if self.update:
            fresh = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
            fresh.setdefault(name, {})[method] = rendered
            self.path.write_text(json.dumps(fresh, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
            self.data = fresh
        golden = self.data.get(name, {}).get(method)
        assert golden is not None, f"no golden prompt for {name} / {method}: run with LMMIQA_UPDATE_GOLDEN=1"
        assert rendered == golden, (
            f"the rendered {method} prompt on {name} changed: review and run with LMMIQA_UPDATE_GOLDEN=1 to accept"
        )


@pytest.fixture(scope="session")
def golden() -> Golden:
    return Golden(GOLDEN)


@pytest.fixture()
def rendered_texts(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[str]]:
    """``record(backend)`` starts recording every distinct prompt text ``backend`` renders (chat template + answer
    prefix, images as the template's placeholder), in order; returns the live list."""

    def record(backend: Any) -> list[str]:
        seen: list[str] = []
        original = backend._render

        def spy(prompts: Any) -> Any:
            out = original(prompts)
            seen.extend(t for t in out[0] if t not in seen)
            return out

        monkeypatch.setattr(backend, "_render", spy)
        return seen

    return record
