"""Shared pytest fixtures: offline mode, the shared data folder, tiny VLMs and sample images.

Keep this file generic; fixtures specific to one area belong in that area's test files.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest

# Offline for the whole session, before anything imports huggingface_hub (it reads these at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process (before torch is imported; subprocesses inherit it): the tiny test models are
# overhead-bound, and two OpenMP threads on a shared 2-core machine spin against each other (measured under load:
# the distill-train and token-budget tests took 2x the CPU and wall time with two threads as with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Every Ray instance the suite starts (in process or in a subprocess) listens on 127.0.0.1 only: on Linux Ray binds
# every interface unless it runs in its single-machine mode (read when ray is imported, so set before that).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

#: The tiny architecture used when a test asks for ``tiny_vlm`` without parametrizing it.
DEFAULT_TINY_ARCH = "qwen2_5_vl"


@pytest.fixture(autouse=True)
def _restore_interface():
    """Every test starts with the interface it was started with: in-process CLI calls and tests of the wording
    call ``set_interface("cli")``, which is kept in the environment (for Ray workers) and would word the messages
    of every later test for the command line."""
    before = os.environ.get("LMMIQA_INTERFACE")
    yield
    if before is None:
        os.environ.pop("LMMIQA_INTERFACE", None)
    else:
        os.environ["LMMIQA_INTERFACE"] = before


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The project's shared data folder (``<repo>/../shared``); skips the test when it is absent."""
    path = (REPO_ROOT.parent / "shared").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., pathlib.Path]:
    """Factory ``tiny_model_path(arch, seed=0) -> Path`` building each tiny VLM once per session.

    Needs torch and transformers (extra ``hf``); skips the test when they are missing. Treat the returned
    folder as read-only: other tests share it.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmmiqa.testing import make_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlm")
    built: dict[tuple[str, int], pathlib.Path] = {}

    def factory(arch: str = DEFAULT_TINY_ARCH, seed: int = 0) -> pathlib.Path:
        key = (arch, seed)
        if key not in built:
            built[key] = make_tiny_vlm(arch, root / f"{arch}-seed{seed}", seed=seed)
        return built[key]

    return factory


#: Real checkpoints whose non-weight files are in ``../shared/data/hf`` (see lmmiqa.testing.REAL_FILE_CHECKPOINTS).
REAL_FILE_NAMES = ("Qwen2.5-VL-7B-Instruct", "Qwen3-VL-8B-Instruct")


@pytest.fixture(scope="session")
def real_file_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., pathlib.Path]:
    """Factory ``real_file_model(name, seed=0) -> Path``: a shrunken random-weight model with the real tokenizer,
    chat template and processor settings of ``name`` (one of :data:`REAL_FILE_NAMES`), built once per session.

    Skips the test when ``../shared/data/hf`` is absent or torch/transformers are missing.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmmiqa.testing import make_real_file_vlm, shared_hf_folder

    root = tmp_path_factory.mktemp("real_file_vlm")
    built: dict[tuple[str, int], pathlib.Path] = {}

    def factory(name: str = REAL_FILE_NAMES[1], seed: int = 0) -> pathlib.Path:
        folder = shared_hf_folder(name, REPO_ROOT.parent / "shared" / "data" / "hf")
        if folder is None:
            pytest.skip(f"real checkpoint files of {name} not found under {REPO_ROOT.parent / 'shared/data/hf'}")
        key = (name, seed)
        if key not in built:
            built[key] = make_real_file_vlm(folder, root / f"{name}-seed{seed}", seed=seed)
        return built[key]

    return factory


@pytest.fixture()
def tiny_vlm(request: pytest.FixtureRequest, tiny_model_path: Callable[..., pathlib.Path]) -> pathlib.Path:
    """Path of a tiny VLM; Qwen2.5-VL unless parametrized indirectly.

    Example::

        @pytest.mark.parametrize("tiny_vlm", lmmiqa.testing.TINY_ARCHS, indirect=True)
        def test_x(tiny_vlm): ...
    """
    arch = getattr(request, "param", DEFAULT_TINY_ARCH)
    return tiny_model_path(arch)


@pytest.fixture()
def sample_images(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    """Four generated test images of mixed sizes and formats (PNG and JPEG) under ``tmp_path/images``."""
    from lmmiqa.testing import make_image

    folder = tmp_path / "images"
    folder.mkdir()
    specs = [("a.png", 64, 48), ("b.jpg", 40, 72), ("c.png", 96, 96), ("d.jpeg", 120, 56)]
    paths = []
    for seed, (name, width, height) in enumerate(specs):
        path = folder / name
        options = {"quality": 90} if path.suffix in (".jpg", ".jpeg") else {}
        make_image(width, height, seed=seed).save(path, **options)
        paths.append(path)
    return paths
