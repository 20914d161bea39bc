"""Shared pieces of the mPLUG-Owl3 tests: the tiny published-layout checkpoint (built once per process) and
hand-made model inputs for tests that need no tokenizer."""

from __future__ import annotations

import pathlib
import tempfile
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = (REPO.parent / "shared").resolve()
QWEN2 = SHARED / "data" / "hf" / "Qwen2.5-VL-7B-Instruct"
OFFICIAL = SHARED / "data" / "official" / "mplug-owl3-7b-240728"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"

_LOCK = threading.RLock()
_BUILT: dict[str, pathlib.Path] = {}
_TMP: list[tempfile.TemporaryDirectory] = []


def need_qwen2() -> pathlib.Path:
    """Qwen2's vocab.json/merges.txt folder (../shared); skips the test when absent."""
    if not (QWEN2 / "vocab.json").is_file() or not (QWEN2 / "merges.txt").is_file():
        pytest.skip(f"Qwen2 tokenizer files not found under {QWEN2} (../shared is absent)")
    return QWEN2


def tiny_checkpoint(kind: str = "sharded") -> pathlib.Path:
    """The tiny mPLUG-Owl3 checkpoint in the published layout (``sharded``: safetensors shards + index, as the
    published one; ``single``: one model.safetensors), built once per process; skips without ../shared."""
    need_qwen2()
    from lmmiqa.families.mplug_owl3.tiny import make_tiny_checkpoint

    with _LOCK:
        if kind not in _BUILT:
            if not _TMP:
                _TMP.append(tempfile.TemporaryDirectory(prefix="lmmiqa-owl3-"))
            root = pathlib.Path(_TMP[0].name)
            if kind == "sharded":
                _BUILT[kind] = make_tiny_checkpoint(root / kind, tokenizer_from=QWEN2, max_shard_size="20MB")
            else:  # the same checkpoint with its shards merged into one model.safetensors
                _BUILT[kind] = _merged(_BUILT.get("sharded") or tiny_checkpoint("sharded"), root / kind)
        return _BUILT[kind]


def _merged(sharded: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    import shutil

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    weights = {}
    for item in sorted(sharded.iterdir()):
        if item.name.endswith(".safetensors"):
            weights.update(load_file(str(item)))
        elif not item.name.endswith(".index.json"):
            shutil.copyfile(item, out / item.name)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def small_model(vocab: int = 97, attn: str = "sdpa", hyper_layers=(1, 3)):
    """An in-memory tiny model with a small vocabulary (recipe weights), for model-level tests."""
    from lmmiqa.families.mplug_owl3.tiny import TINY_CONFIG, build_tiny_model

    cfg = {**TINY_CONFIG, "vocab_size": vocab, "hyper_layers": list(hyper_layers), "bos_token_id": 0, "eos_token_id": 1}
    return build_tiny_model(cfg, attn_implementation=attn)


def media_offset(length: int, starts: list[int], before: int = 0, pad: int = 0):
    """The published ``media_offset`` row block ``[pad + length, 2]`` for one prompt whose view placeholders start
    at ``starts`` (indices in the unpadded prompt), left-padded by ``pad``."""
    import torch

    out = torch.zeros(pad + length, 2, dtype=torch.long)
    out[:, 0] = before
    if not starts:
        out[:, 1] = -1000000
        return out
    seen = (torch.arange(length)[:, None] > torch.tensor(starts)[None, :]).sum(1)
    out[:, 1] = before
    out[pad:, 1] = before + seen
    return out
