"""Fixtures of the model-family tests: tiny mPLUG-Owl2 checkpoints in the published layout.

They need the LLaMA-2 tokenizer and one-align's preprocessor_config.json from ``../shared/data/official/one-align``
(not in this repository) and skip with the reason when it is absent.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mplug_owl2"
OFFICIAL_REL = pathlib.Path("data") / "official"


@pytest.fixture(scope="session")
def official_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    """``../shared/data/official`` (skips when absent)."""
    path = shared_dir / OFFICIAL_REL
    if not (path / "one-align" / "tokenizer" / "tokenizer.model").is_file():
        pytest.skip(f"the official reference files (one-align tokenizer) are not under {path}")
    return path


@pytest.fixture(scope="session")
def owl2_files(official_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The LLaMA-2 tokenizer folder and one-align's preprocessor config."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    return {
        "tokenizer": official_dir / "one-align" / "tokenizer",
        "preprocessor": official_dir / "one-align" / "preprocessor_config.json",
        "parity": official_dir / "one-align" / "parity",
        "derived": official_dir / "one-align" / "derived" / "one_align_derived_state_dict_keys.json",
    }


def _build(root: pathlib.Path, files: dict[str, pathlib.Path], gain: float, **kw: Any) -> pathlib.Path:
    from lmmiqa.families.mplug_owl2.tiny import save_published_layout, tiny_model

    return save_published_layout(tiny_model(image_gain=gain), root, tokenizer_dir=files["tokenizer"],
                                 preprocessor_config=files["preprocessor"], **kw)


@pytest.fixture(scope="session")
def owl2_parity_folder(tmp_path_factory: pytest.TempPathFactory, owl2_files: dict[str, pathlib.Path]) -> pathlib.Path:
    """The parity fixture's tiny model (``shared/.../one-align/parity``'s weight recipe) as a published one-align
    folder: config.json with auto_map, 2 sharded .bin + index (with the rotary inv_freq older checkpoints hold),
    the LLaMA-2 tokenizer, Q-Align's preprocessor_config.json. Read-only."""
    return _build(tmp_path_factory.mktemp("owl2") / "one-align-tiny", owl2_files, 1.0, include_inv_freq=True)


@pytest.fixture(scope="session")
def owl2_base_folder(tmp_path_factory: pytest.TempPathFactory, owl2_files: dict[str, pathlib.Path]) -> pathlib.Path:
    """The tiny base of ``tests/families/fixtures/mplug_owl2`` (parity recipe, image gain 20). Read-only."""
    return _build(tmp_path_factory.mktemp("owl2") / "owl2-base-tiny", owl2_files, 20.0)


@pytest.fixture(scope="session")
def owl2_release_folder(tmp_path_factory: pytest.TempPathFactory, owl2_base_folder: pathlib.Path) -> pathlib.Path:
    """A tiny Q-Scorer release on :func:`owl2_base_folder` (the fixtures' recipe). Read-only."""
    from lmmiqa.families.mplug_owl2.tiny import save_qscorer_release, tiny_model

    return save_qscorer_release(tiny_model(image_gain=20.0), tmp_path_factory.mktemp("owl2") / "qscorer-release")


@pytest.fixture(scope="session")
def official_fixture() -> Any:
    """``load(name)`` of the JSON fixtures made with the official code (see fixtures/mplug_owl2/README.md)."""

    def load(name: str) -> Any:
        return json.loads((FIXTURES / name).read_text())

    return load


@pytest.fixture(scope="session")
def owl2_images() -> list[Any]:
    """The two images of the official fixtures: the parity 400×300 noise image and a 200×260 gradient."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    y, x = np.mgrid[0:260, 0:200]
    b = Image.fromarray(np.stack([255 * x / 199, 255 - 127 * y / 259, np.full_like(x, 230)], -1).astype(np.uint8))
    return [a, b]


@pytest.fixture(scope="session")
def owl2_backend(owl2_base_folder: pathlib.Path) -> Any:
    """A transformers backend on :func:`owl2_base_folder` (fp32, CPU, no token budget). Shared: do not mutate."""
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    return TransformersBackend(TransformersConfig(model=str(owl2_base_folder), device="cpu", dtype="float32",
                                                  max_batch_tokens=0))
