"""Offline test kit: tiny random-weight VLMs, test images and a logit-forcing hook.

Public so that plugin authors can test their methods and backends offline too. Nothing here downloads:
:func:`make_tiny_vlm` trains a byte-level BPE tokenizer of a few hundred tokens on a built-in corpus, builds a
random-weight model of a real architecture from a tiny config and saves model and processor with the
standard ``save_pretrained`` files, so the folder loads with ``AutoModelForImageTextToText.from_pretrained``
and :func:`lmmiqa.backends.hf_processor.load_processor` exactly like a real checkpoint.

Example::

    from lmmiqa.testing import make_tiny_vlm, force_token

    path = make_tiny_vlm("qwen2_5_vl", tmp_path / "tiny")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_processor(path)  # lmmiqa.backends.hf_processor
    good = processor.tokenizer.encode(" good", add_special_tokens=False)[0]
    with force_token(model, good):
        ...  # every next-token distribution now peaks at " good"

Requires the ``hf`` extra (torch, transformers, tokenizers); imported lazily, so ``import lmmiqa.testing``
itself loads no torch.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, UnknownNameError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "QUALITY_RECIPE",
    "QUALITY_WORDS",
    "TINY_ARCHS",
    "ForceLevelHook",
    "dct_patch_embedding",
    "force_token",
    "ladder_sources",
    "make_image",
    "make_real_file_vlm",
    "make_tiny_vlm",
    "quality_aware_vlm",
    "quality_cache_dir",
    "quality_ladder",
    "quality_ladder_folder",
    "real_file_vlm_cached",
    "shared_hf_folder",
    "tiny_vlm_cached",
    "train_vision_probe",
]

#: Architectures :func:`make_tiny_vlm` can build (transformers ``model_type`` names).
TINY_ARCHS: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl")

#: Quality words that are single tokens with a leading space (``" good"``) and without (``"Good"``) in every
#: tiny tokenizer.
QUALITY_WORDS: tuple[str, ...] = (
    "excellent",
    "good",
    "fair",
    "poor",
    "bad",
    "perfect",
    "high",
    "low",
    "medium",
)

# Text model size shared by every tiny architecture.
_HIDDEN = 64
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_INTERMEDIATE = 128
_HEAD_DIM = _HIDDEN // _HEADS  # 16 -> Qwen mrope_section sums to 8
_VISION_HIDDEN = 32
_VISION_LAYERS = 2
_VISION_HEADS = 2

_COMMON_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
)
_ARCH_SPECIALS: dict[str, tuple[str, ...]] = {
    "qwen2_5_vl": (),
    "qwen3_vl": (),
    "llava_onevision": ("<image>", "<video>"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
}

# The image placeholder each model's chat template writes for one {"type": "image"} item (as in the
# published templates; the processor expands it to the image's tokens).
_IMAGE_PLACEHOLDER: dict[str, str] = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava_onevision": "<image>\n",
    "internvl": "<IMG_CONTEXT>\n",
}
_VIDEO_PLACEHOLDER: dict[str, str] = {
    "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "llava_onevision": "<video>\n",
    "internvl": "<video>\n",
}
# Qwen2/2.5-VL's published template adds this system message when the conversation has none.
_DEFAULT_SYSTEM: dict[str, str] = {"qwen2_5_vl": "You are a helpful assistant."}

# The Qwen2 pre-tokenizer pattern: letters with one optional leading non-letter (so " good" is one piece),
# digits one at a time, punctuation runs with an optional leading space.
_QWEN_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

_CORPUS: tuple[str, ...] = (
    "The quality of the image is excellent.",
    "The quality of the image is good.",
    "The quality of the image is fair.",
    "The quality of the image is poor.",
    "The quality of the image is bad.",
    "How would you rate the quality of this image?",
    "Rate the quality of the image. The quality of this image is",
    "Perfect Excellent Good Fair Bad Poor Very Bad High Medium Low",
    "perfect excellent good fair poor bad very high medium low",
    "Answer with a score from 1 to 5: 1 2 3 4 5 6 7 8 9 0 10 100",
    "Choose one option: A B C D E. A. B. C. D. E. (A) (B) (C) (D) (E)",
    "The answer is A The answer is B The answer is C The answer is D The answer is E",
    'Reply in JSON: {"score": 3, "level": "good", "reason": "slight blur and noise"}',
    '{"distortions": ["blur", "noise", "compression", "exposure"], "severity": [1, 2, 3]}',
    "[ ] { } : , \" ' . ? ! ( ) - _ / \\ * + = < > # %",
    "You are a helpful assistant. You are an expert in image quality assessment.",
    "Is there any blur, noise, overexposure, underexposure, low contrast, JPEG compression or color shift?",
    "Describe the image: sharpness, contrast, brightness, colorfulness, noise, artifacts, details, texture.",
    "Compare the first image with the second image and the reference image.",
    "yes no Yes No true false null score level quality image rate rating answer",
    "user assistant system tool\n\n\n",
)


def _require_hf() -> tuple[Any, Any]:
    from lmmiqa.errors import require

    torch = require("torch", "hf", "building tiny test models")
    transformers = require("transformers", "hf", "building tiny test models")
    return torch, transformers


def _check_arch(arch: str) -> None:
    if arch not in TINY_ARCHS:
        raise UnknownNameError("tiny architecture", arch, TINY_ARCHS)


# ----------------------------------------------------------------------------------------------- tokenizer


def _chat_template(arch: str) -> str:
    """A ChatML template with content lists of {"type": "image"|"video"|"text"} items."""
    image = _IMAGE_PLACEHOLDER[arch].replace("\n", "\\n")
    video = _VIDEO_PLACEHOLDER[arch].replace("\n", "\\n")
    system = _DEFAULT_SYSTEM.get(arch)
    default_system = (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{- '<|im_start|>system\\n" + system + "<|im_end|>\\n' -}}"
        "{%- endif -%}"
        if system
        else ""
    )
    return (
        default_system + "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}"
        "{{- message['content'] -}}"
        "{%- else -%}"
        "{%- for content in message['content'] -%}"
        "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
        "{{- '" + image + "' -}}"
        "{%- elif content['type'] == 'video' or 'video' in content -%}"
        "{{- '" + video + "' -}}"
        "{%- elif 'text' in content -%}"
        "{{- content['text'] -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{- '<|im_start|>assistant\\n' -}}"
        "{%- endif -%}"
    )


def _corpus() -> list[str]:
    lines = list(_CORPUS)
    words = [*QUALITY_WORDS, "very", "score", "quality", "image"]
    lines += [" ".join(words), " ".join(w.capitalize() for w in words)]
    lines += [
        "\n".join(words),
        "\n".join(w.capitalize() for w in words),
        "\n".join(w.upper() for w in QUALITY_WORDS),
    ]
    lines += [" A B C D E", "A\nB\nC\nD\nE", " ".join(str(d) for d in range(10))]
    # Repeat so that frequent words win their merges early and every word ends up one token.
    return lines * 3


def _build_tokenizer(arch: str) -> Any:
    """Train the tiny byte-level BPE tokenizer and wrap it for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(_COMMON_SPECIALS) + list(_ARCH_SPECIALS[arch])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,  # an upper bound: training stops when every corpus word is one token
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)

    extra: dict[str, Any] = {}
    if arch == "internvl":
        extra["extra_special_tokens"] = {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
    elif arch == "llava_onevision":
        extra["extra_special_tokens"] = {"image_token": "<image>", "video_token": "<video>"}
    else:
        extra["extra_special_tokens"] = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=specials[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        chat_template=_chat_template(arch),
        **extra,
    )
    return hf_tok


# --------------------------------------------------------------------------------------- model + processor


def _text_config(
    vocab: int, tokenizer: Any, *, model_type: str | None = None, **extra: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": 4096,
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if model_type:
        cfg["model_type"] = model_type
    cfg.update(extra)
    return cfg


def _qwen_image_processor(
    transformers: Any, patch: int, merge: int, mean: Sequence[float], std: Sequence[float]
) -> Any:
    factor = patch * merge
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    return cls(
        size={"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 16},
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=2,
        image_mean=list(mean),
        image_std=list(std),
    )


def _build(arch: str, tokenizer: Any, transformers: Any) -> tuple[Any, Any]:
    """The (config, processor) of one tiny architecture."""
    from lmmiqa.backends.hf_processor import image_only_processor_class

    vocab = len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    chat_template = tokenizer.chat_template

    if arch == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=_text_config(
                vocab,
                tokenizer,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            ),
            vision_config={
                "depth": _VISION_LAYERS,
                "hidden_size": _VISION_HIDDEN,
                "intermediate_size": 64,
                "num_heads": _VISION_HEADS,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [1],
                "out_hidden_size": _HIDDEN,
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=False,
        )
        ip = _qwen_image_processor(
            transformers, 14, 2, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        )
        processor = image_only_processor_class(transformers.Qwen2_5_VLProcessor)(
            image_processor=ip, tokenizer=tokenizer, chat_template=chat_template
        )
    elif arch == "qwen3_vl":
        config = transformers.Qwen3VLConfig(
            text_config=_text_config(
                vocab,
                tokenizer,
                head_dim=_HEAD_DIM,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 5000000.0,
                    "mrope_section": [2, 3, 3],
                    "mrope_interleaved": True,
                },
            ),
            vision_config={
                "depth": _VISION_LAYERS,
                "hidden_size": _VISION_HIDDEN,
                "intermediate_size": 64,
                "num_heads": _VISION_HEADS,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "out_hidden_size": _HIDDEN,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=False,
        )
        ip = _qwen_image_processor(transformers, 16, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        processor = image_only_processor_class(transformers.Qwen3VLProcessor)(
            image_processor=ip, tokenizer=tokenizer, chat_template=chat_template
        )
    elif arch == "llava_onevision":
        image_size, patch = 28, 7  # 4x4 = 16 tokens per tile
        pinpoints = [[image_size * h, image_size * w] for h in (1, 2) for w in (1, 2)]
        config = transformers.LlavaOnevisionConfig(
            text_config=_text_config(vocab, tokenizer, model_type="qwen2"),
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": _VISION_HIDDEN,
                "intermediate_size": 64,
                "num_hidden_layers": _VISION_LAYERS,
                "num_attention_heads": _VISION_HEADS,
                "image_size": image_size,
                "patch_size": patch,
                "vision_use_head": False,
            },
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=pinpoints,
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=False,
        )
        cls = (
            getattr(transformers, "LlavaOnevisionImageProcessorPil", None)
            or transformers.LlavaOnevisionImageProcessor
        )
        ip = cls(
            size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        processor = image_only_processor_class(transformers.LlavaOnevisionProcessor)(
            image_processor=ip,
            tokenizer=tokenizer,
            num_image_tokens=(image_size // patch) ** 2,
            vision_feature_select_strategy="full",
            chat_template=chat_template,
            vision_aspect_ratio="anyres_max_9",
        )
    elif arch == "internvl":
        image_size, patch = 32, 8  # 4x4 patches, pixel shuffle 0.5 -> 4 tokens per tile
        config = transformers.InternVLConfig(
            text_config=_text_config(vocab, tokenizer, model_type="qwen2"),
            vision_config={
                "hidden_size": _VISION_HIDDEN,
                "intermediate_size": 64,
                "num_hidden_layers": _VISION_LAYERS,
                "num_attention_heads": _VISION_HEADS,
                "image_size": [image_size, image_size],
                "patch_size": [patch, patch],
            },
            image_token_id=ids("<IMG_CONTEXT>"),
            image_seq_length=(image_size // patch) ** 2 // 4,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )
        cls = getattr(transformers, "GotOcr2ImageProcessorPil", None) or transformers.GotOcr2ImageProcessor
        ip = cls(
            size={"height": image_size, "width": image_size},
            crop_to_patches=True,
            min_patches=1,
            max_patches=4,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        processor = image_only_processor_class(transformers.InternVLProcessor)(
            image_processor=ip,
            tokenizer=tokenizer,
            image_seq_length=(image_size // patch) ** 2 // 4,
            chat_template=chat_template,
        )
    else:  # pragma: no cover - guarded by _check_arch
        raise UnknownNameError("tiny architecture", arch, TINY_ARCHS)
    return config, processor


def make_tiny_vlm(arch: str, path: str | os.PathLike[str], *, seed: int = 0) -> pathlib.Path:
    """Build a tiny random-weight VLM of a real architecture and save it with its processor.

    The text model has hidden size 64, 2 layers, 4 heads (2 KV heads); the vision tower 2 layers of hidden
    size 32; images become a handful of tokens. A 64x48 image gives 4 image tokens for Qwen2.5-VL/Qwen3-VL
    (4 to 16 by size), 20 for InternVL (4 per 32x32 tile, up to 4 tiles plus a thumbnail) and 70 for
    LLaVA-OneVision (16 per 28x28 tile, anyres up to 2x2 tiles, plus newline tokens). The tokenizer is a byte-level BPE in which ``" excellent"``,
    ``" good"``, ``" fair"``, ``" poor"``, ``" bad"`` (and capitalised forms), the digits ``0``-``9`` and the
    letters ``A``-``E`` (with and without a leading space) are single tokens.

    Args:
        arch: one of :data:`TINY_ARCHS`.
        path: output folder (created; existing files with the same names are overwritten).
        seed: torch seed for the weights; the same seed gives identical files.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        UnknownNameError: ``arch`` is not one of :data:`TINY_ARCHS`.
        MissingDependencyError: torch/transformers are not installed (extra ``hf``).
    """
    _check_arch(arch)
    torch, transformers = _require_hf()
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(arch)
    config, processor = _build(arch, tokenizer, transformers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.bos_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


_CACHE_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int], pathlib.Path] = {}
_CACHE_DIR: tempfile.TemporaryDirectory[str] | None = None


def tiny_vlm_cached(arch: str, *, seed: int = 0) -> pathlib.Path:
    """:func:`make_tiny_vlm` once per process and (arch, seed), into a temporary folder removed at exit.

    Args:
        arch: one of :data:`TINY_ARCHS`.
        seed: weight seed.

    Returns:
        The folder of the built model. Treat it as read-only: other callers share it.
    """
    global _CACHE_DIR
    _check_arch(arch)
    with _CACHE_LOCK:
        key = (arch, seed)
        if key not in _CACHE:
            if _CACHE_DIR is None:
                _CACHE_DIR = tempfile.TemporaryDirectory(prefix="lmmiqa-tiny-vlm-")
            _CACHE[key] = make_tiny_vlm(arch, pathlib.Path(_CACHE_DIR.name) / f"{arch}-seed{seed}", seed=seed)
        return _CACHE[key]


# --------------------------------------------------------------------------- real-file shrunken models

#: Checkpoint folders of ``shared/data/hf`` (real tokenizer, chat template, processor settings and config,
#: no weights) and the architecture each one is.
REAL_FILE_CHECKPOINTS: dict[str, str] = {
    "Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen3-VL-8B-Instruct": "qwen3_vl",
    "gemma-3-4b-it": "gemma3",
}

# Files of a checkpoint folder that describe the model itself: replaced by the shrunken model's own.
_WEIGHT_SIDE_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def shared_hf_folder(name: str, root: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
    """The folder of a real checkpoint's non-weight files, or None when it is not on this machine.

    Args:
        name: a key of :data:`REAL_FILE_CHECKPOINTS` (e.g. ``"Qwen3-VL-8B-Instruct"``).
        root: the folder holding the checkpoint folders; default ``$LMMIQA_HF_FILES``, else
            ``../shared/data/hf`` beside the current directory's repository (the project's test data).
    """
    if name not in REAL_FILE_CHECKPOINTS:
        raise UnknownNameError("real-file checkpoint", name, tuple(REAL_FILE_CHECKPOINTS))
    candidates = []
    if root is not None:
        candidates.append(pathlib.Path(root))
    elif os.environ.get("LMMIQA_HF_FILES"):
        candidates.append(pathlib.Path(os.environ["LMMIQA_HF_FILES"]))
    else:
        here = pathlib.Path.cwd().resolve()
        candidates += [p / "shared" / "data" / "hf" for p in (here, *here.parents)]
    for base in candidates:
        folder = base / name
        if (folder / "config.json").is_file() and any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            return folder
    return None


def _shrink_config(config: Any, arch: str, vision_depth: int = 2) -> Any:
    """Shrink a published config in place (text hidden 64, 2 layers; vision ``vision_depth`` layers, hidden 64),
    keeping its token ids, vocabulary size, patch/merge/image sizes and rope type (recipe of
    ``shared/data/hf/README.md``)."""
    text = config.text_config
    text.hidden_size = _HIDDEN
    text.intermediate_size = _INTERMEDIATE
    text.num_hidden_layers = _LAYERS
    text.num_attention_heads = _HEADS
    text.num_key_value_heads = _KV_HEADS
    text.head_dim = _HEAD_DIM
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = _LAYERS
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = list(text.layer_types)[:_LAYERS]
    vision = config.vision_config
    vision.hidden_size = 64
    vision.intermediate_size = 128
    if arch == "gemma3":  # SigLIP tower: image size, patch size and 256 tokens per image stay the published ones
        vision.num_hidden_layers = vision_depth
        vision.num_attention_heads = 4
        return config
    rope = dict(getattr(text, "rope_parameters", None) or {})
    rope["mrope_section"] = [2, 3, 3] if arch == "qwen2_5_vl" else [4, 2, 2]
    text.rope_parameters = rope
    vision.depth = vision_depth
    vision.num_heads = 4
    vision.out_hidden_size = _HIDDEN
    if arch == "qwen2_5_vl":
        vision.fullatt_block_indexes = [vision_depth - 1]
    else:
        vision.deepstack_visual_indexes = list(range(min(vision_depth, 2)))
    return config


def make_real_file_vlm(
    folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    vision_depth: int = 2,
) -> pathlib.Path:
    """A shrunken random-weight model that uses a real checkpoint's tokenizer, chat template and processor.

    ``folder`` holds every non-weight file of a hub checkpoint (``config.json``, ``preprocessor_config.json``,
    ``chat_template.json``, ``vocab.json`` + ``merges.txt`` ...). The config is shrunk (text hidden 64, 2 layers;
    vision depth 2, hidden 64) with the real vocabulary and special-token ids, random weights are drawn with
    ``seed``, and the real files are copied beside them, so token ids, rendered prompts and image-token counts
    are exactly the real checkpoint's. About 20 M parameters (the 152k-token embedding dominates).

    Args:
        folder: the real checkpoint's files (e.g. ``shared/data/hf/Qwen3-VL-8B-Instruct``).
        path: output folder (created).
        seed: torch seed of the weights.
        tie_word_embeddings: tie input and output embeddings (halves the size).
        vision_depth: vision-tower layers (2 by default; llama.cpp's GGUF converter needs a Qwen2.5-VL tower of
            depth >= 3, whose last block is then the full-attention one, ``fullatt_block_indexes = [depth - 1]``).

    Returns:
        ``path`` as a :class:`pathlib.Path`; it loads with ``from_pretrained`` like the real checkpoint.
    """
    import shutil

    torch, transformers = _require_hf()
    src = pathlib.Path(folder)
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src} holds no config.json: not a checkpoint folder")
    config = transformers.AutoConfig.from_pretrained(src)
    arch = config.model_type
    if arch not in ("qwen2_5_vl", "qwen3_vl", "gemma3"):
        raise ConfigError(f"make_real_file_vlm knows qwen2_5_vl, qwen3_vl and gemma3, not {arch!r}")
    if int(vision_depth) < 1:
        raise ConfigError(f"vision_depth must be >= 1, got {vision_depth!r}")
    _shrink_config(config, arch, int(vision_depth))
    config.tie_word_embeddings = bool(tie_word_embeddings)
    config.text_config.tie_word_embeddings = bool(tie_word_embeddings)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        if arch == "gemma3":
            # Gemma 3 initializes its image projection to zeros: every image would then give the same scores
            proj = model.model.multi_modal_projector.mm_input_projection_weight
            with torch.no_grad():
                proj.normal_(0.0, float(getattr(config, "initializer_range", 0.02)))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    for item in src.iterdir():
        if item.is_file() and item.name not in _WEIGHT_SIDE_FILES and item.name != "SHA256SUMS":
            shutil.copyfile(item, out / item.name)
    if not (src / "tokenizer.json").is_file():
        # the fast tokenizer is rebuilt from vocab.json + merges.txt (1-3 s); save it once so reloads are quick
        tokenizer = transformers.AutoTokenizer.from_pretrained(src)
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    return out


_REAL_CACHE: dict[tuple[str, int, int], pathlib.Path] = {}


def real_file_vlm_cached(
    name: str, *, seed: int = 0, root: str | os.PathLike[str] | None = None, vision_depth: int = 2
) -> pathlib.Path | None:
    """:func:`make_real_file_vlm` once per process for a checkpoint of :data:`REAL_FILE_CHECKPOINTS`, into a
    temporary folder removed at exit; None when the real files are not on this machine (see
    :func:`shared_hf_folder`)."""
    global _CACHE_DIR
    folder = shared_hf_folder(name, root)
    if folder is None:
        return None
    with _CACHE_LOCK:
        key = (name, seed, int(vision_depth))
        if key not in _REAL_CACHE:
            if _CACHE_DIR is None:
                _CACHE_DIR = tempfile.TemporaryDirectory(prefix="lmmiqa-tiny-vlm-")
            sub = f"{name}-seed{seed}" + (f"-vd{vision_depth}" if vision_depth != 2 else "")
            _REAL_CACHE[key] = make_real_file_vlm(
                folder, pathlib.Path(_CACHE_DIR.name) / sub, seed=seed, vision_depth=vision_depth
            )
        return _REAL_CACHE[key]


# ------------------------------------------------------------------------------------------- force hook


class ForceLevelHook:
    """Context manager adding ``bias`` to one token's logit at every position of a model's output.

    Registers a forward hook on ``model.get_output_embeddings()`` (the LM head), so the model's next-token
    argmax becomes ``token_id`` whatever the random weights say. Used to test read-outs deterministically.
    The hook is removed on exit (or by :meth:`remove`).

    Args:
        model: a transformers model with ``get_output_embeddings()``.
        token_id: the vocabulary index to favour.
        bias: logit offset added to that token (20 beats the spread of a random tiny model's logits).
    """

    def __init__(self, model: Any, token_id: int, bias: float = 20.0) -> None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ConfigError(f"{type(model).__name__} has no output embeddings to hook")
        vocab = getattr(head, "out_features", None)
        if not isinstance(token_id, int) or token_id < 0 or (vocab is not None and token_id >= vocab):
            raise ConfigError(f"token_id must be an int in [0, {vocab}), got {token_id!r}")
        self.model = model
        self.token_id = int(token_id)
        self.bias = float(bias)
        self._head = head
        self._handle: Any = None

    def _hook(self, module: Any, inputs: Any, output: Any) -> Any:
        output = output.clone()
        output[..., self.token_id] += self.bias
        return output

    def install(self) -> ForceLevelHook:
        """Register the hook (idempotent)."""
        if self._handle is None:
            self._handle = self._head.register_forward_hook(self._hook)
        return self

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> ForceLevelHook:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def force_token(model: Any, token_id: int, bias: float = 20.0) -> ForceLevelHook:
    """Favour one token in ``model``'s output: ``with force_token(model, tid): ...``.

    Args:
        model: a transformers model with ``get_output_embeddings()``.
        token_id: the vocabulary index to favour.
        bias: logit offset added to that token.

    Returns:
        An installed :class:`ForceLevelHook`; use it as a context manager or call ``remove()``.
    """
    return ForceLevelHook(model, token_id, bias).install()


# ----------------------------------------------------------------------------------------------- images


def make_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image: smooth colour gradients, a few shapes and noise (never blank).

    Args:
        width: width in pixels (>= 1).
        height: height in pixels (>= 1).
        seed: noise seed; the same arguments give the same pixels.

    Returns:
        A PIL image in mode ``"RGB"``.

    Raises:
        ConfigError: a size is not a positive integer.
    """
    from PIL import Image

    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    xn = x / max(width - 1, 1)
    yn = y / max(height - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(1.0, 3.0, size=3)
    img = np.stack(
        [
            0.5 + 0.35 * np.sin(2 * np.pi * freq[0] * xn + phase[0]) * (1 - 0.5 * yn),
            0.3 + 0.6 * yn * (0.5 + 0.5 * np.cos(2 * np.pi * freq[1] * xn * yn + phase[1])),
            0.5 + 0.4 * np.cos(2 * np.pi * freq[2] * (xn + yn) / 2 + phase[2]),
        ],
        axis=-1,
    )
    # A bright disc and a dark bar give edges for quality tools to find.
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, 0.2 * min(width, height) + 1
    img[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0.75, 1.0, size=3)
    x0 = int(rng.integers(0, max(width // 2, 1)))
    img[: max(height // 5, 1), x0 : x0 + max(width // 8, 1)] = rng.uniform(0.0, 0.2, size=3)
    img += rng.normal(0.0, 0.04, size=img.shape)
    arr = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


# ------------------------------------------------------------------------------------ quality-aware test model

#: the recipe of :func:`quality_aware_vlm` (every value enters the cache key; measured numbers there)
QUALITY_RECIPE: dict[str, Any] = {
    "version": 3,
    "checkpoint": "Qwen2.5-VL-7B-Instruct",
    # 112 px: 64 patches of 14 px, 16 visual tokens after the 2x2 merge; blur and noise only (with JPEG or
    # pixelation added, the small tower's held-out SRCC fell to 0.4-0.5); random square crops (scale 0.4-1,
    # flipped half the time) of each training photo multiply the 5 training references by ``crops``
    "ladder": {"severities": 5, "size": 112, "types": ["gaussian_blur", "gaussian_noise"], "crops": 16,
               "crop_scale": [0.4, 1.0], "seed": 0},
    "held_out": ["chelsea", "grace_hopper"],
    # the vision tower's patch embedding is a fixed 2-D DCT basis (frozen), and the tower + merger are first
    # trained alone with a linear probe on the pseudo-MOS; a randomly initialised tower trained through the
    # language model stayed at the level prior (held-out SRCC ~0.1), and one trained alone overfitted the
    # training photos (held-out ~0.1) unless its patch embedding was the DCT basis (~0.77)
    "vision": {"patch_embed": "dct", "dct_frequencies": [0, 1, 2, 4, 6, 8, 10, 13], "epochs": 12, "lr": 2e-3,
               "batch_size": 16},
    "train": {"methods": ["q-align", "standard-guided", "agentic", "leaf-pairs"], "levels": 5, "epochs": 3, "batch_size": 8,
              "lr": 3e-3, "vision_lr": 0.0, "lr_schedule": "cosine", "warmup_ratio": 0.05, "target": "onehot",
              "soft_sigma": 0.5, "max_pixels": 112 * 112, "seed": 0},
}


def quality_cache_dir() -> pathlib.Path:
    """Where quality-aware models are cached: ``$LMMIQA_QUALITY_MODEL_CACHE``, else ``~/.cache/lmmiqa/quality-vlm``."""
    env = os.environ.get("LMMIQA_QUALITY_MODEL_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "lmmiqa" / "quality-vlm"


def ladder_sources(recipe: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The reference images of the quality ladder: every built-in photo; the training ones (not in
    ``recipe["held_out"]``) as ``ladder["crops"]`` random square crops each (``<name>-c<i>``, side a uniform
    fraction ``crop_scale`` of the shorter side, mirrored half the time, seeded), the held-out ones whole.

    Raises:
        DataError: a held-out reference is not among the built-in photos.
    """
    from PIL import Image

    from lmmiqa.data.synth import builtin_images

    r = recipe or QUALITY_RECIPE
    lad = r["ladder"]
    crops = int(lad.get("crops", 0))
    lo, hi = (float(x) for x in lad.get("crop_scale", (1.0, 1.0)))
    held = set(r["held_out"])
    rng = np.random.default_rng(int(lad.get("seed", 0)))
    out: list[tuple[str, Any]] = []
    sources = builtin_images()
    missing = held - {name for name, _ in sources}
    if missing:
        raise DataError(f"held-out references {sorted(missing)} are not built-in photos here; "
                        f"built-in: {', '.join(name for name, _ in sources)}")
    for name, pil in sources:
        if name in held or crops < 1:
            out.append((name, pil))
            continue
        w, h = pil.size
        for i in range(crops):
            side = max(16, int(min(w, h) * rng.uniform(lo, hi)))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = pil.crop((x, y, x + side, y + side))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.append((f"{name}-c{i}", crop))
    return out


def quality_ladder_folder(root: str | os.PathLike[str] | None = None,
                          recipe: dict[str, Any] | None = None) -> pathlib.Path:
    """The folder of the quality-aware model's ladder (a ``lmmiqa synth`` dataset: ``labels.csv``, ``refs/``,
    ``dist/``), built there on first use. ``root`` default: the cache's ladder, keyed by the recipe's ladder."""
    import hashlib
    import json

    from lmmiqa.data.synth import make_ladder

    r = recipe or QUALITY_RECIPE
    lad = r["ladder"]
    key = hashlib.sha256(json.dumps({"ladder": lad, "held_out": r["held_out"]}, sort_keys=True).encode()).hexdigest()[:12]
    folder = pathlib.Path(root) if root is not None else quality_cache_dir() / f"ladder-{key}"
    if not (folder / "labels.csv").is_file():
        make_ladder(folder, ladder_sources(r), severities=lad["severities"], types=lad["types"], size=lad["size"],
                    seed=int(lad.get("seed", 0)))
    return folder


def quality_ladder(root: str | os.PathLike[str] | None = None, recipe: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(training, held-out) ``(path, pseudo-MOS)`` splits of the quality-aware model's synthetic ladder
    (:func:`ladder_sources`), split by reference photo: the held-out references (``recipe["held_out"]``) are never
    trained on, not even as crops. ``root`` default: the cache's ladder. The severity of an image is in its file
    name (``dist/<ref>__<type>__<severity>.png``; pseudo-MOS ``5 - 4 * severity / severities``)."""
    r = recipe or QUALITY_RECIPE
    folder = quality_ladder_folder(root, r)
    from lmmiqa.data.loader import load_dataset

    ds = load_dataset("synthetic", root=folder)
    held = set(r["held_out"])
    pairs = [(str(p), float(s), pathlib.Path(str(g)).stem) for p, s, g in zip(ds.paths(), ds.scores(), ds.groups())]
    train = [(p, s) for p, s, g in pairs if g not in held]
    test = [(p, s) for p, s, g in pairs if g in held]
    if not test or not train:
        raise DataError(f"the ladder in {folder} has no images of the held-out references {sorted(held)} (or only those)")
    return train, test


def dct_patch_embedding(model: Any, frequencies: Sequence[int]) -> int:
    """Set a Qwen-VL vision tower's patch embedding to a 2-D DCT-II basis of the patch's luminance (each filter
    averages the colour channels and the two temporal frames) and freeze it: filter ``k`` is the basis function
    of the ``k``-th frequency pair of ``frequencies x frequencies`` in order of ``u + v`` (with fewer filters than
    pairs, pairs evenly spaced in that order); filters beyond the pairs keep their weights. Returns the number
    of filters set.

    Raises:
        ConfigError: the model has no Qwen-style ``visual.patch_embed.proj`` or a frequency is outside the patch.
    """
    import itertools

    torch, _ = _require_hf()
    proj = getattr(getattr(getattr(getattr(model, "model", model), "visual", None), "patch_embed", None), "proj", None)
    if proj is None:
        raise ConfigError(f"{type(model).__name__} has no visual.patch_embed.proj: the DCT init is for Qwen-VL towers")
    w = proj.weight  # [hidden, channels, temporal, patch, patch]
    n = int(w.shape[-1])
    if any(not 0 <= int(f) < n for f in frequencies):
        raise ConfigError(f"DCT frequencies must be in 0..{n - 1}, got {list(frequencies)}")
    pairs = sorted(itertools.product(sorted({int(f) for f in frequencies}), repeat=2), key=lambda uv: (sum(uv), uv))
    if len(pairs) > int(w.shape[0]):  # fewer filters than pairs: evenly spaced in u + v, from the mean to the top
        pairs = [pairs[int(i)] for i in np.round(np.linspace(0, len(pairs) - 1, int(w.shape[0])))]
    x = np.arange(n)
    basis = [np.sqrt((1.0 if u == 0 else 2.0) / n) * np.cos(np.pi * (2 * x + 1) * u / (2 * n)) for u in range(n)]
    with torch.no_grad():
        for k, (u, v) in enumerate(pairs):
            b = torch.tensor(np.outer(basis[u], basis[v]), dtype=w.dtype)
            w[k] = b / float(w.shape[1] * w.shape[2])
        if getattr(proj, "bias", None) is not None:
            proj.bias.zero_()
    w.requires_grad_(False)
    return len(pairs)


def train_vision_probe(model: Any, processor: Any, train: Sequence[tuple[str, float]], *, epochs: int, lr: float,
                       batch_size: int, seed: int = 0) -> list[float]:
    """Train a Qwen-VL vision tower and merger alone: the mean of the image's visual tokens, through a linear
    probe, regresses the MOS (mean squared error, AdamW). Parameters with ``requires_grad=False`` (the DCT patch
    embedding) stay fixed; the probe is discarded. Returns the mean training loss per epoch."""
    from PIL import Image

    torch, _ = _require_hf()
    visual = model.model.visual
    imgs = []
    for path, _ in train:
        with Image.open(path) as im:
            imgs.append(im.convert("RGB"))
    enc = processor.image_processor(images=imgs, return_tensors="pt")
    pv, thw = enc["pixel_values"].float(), enc["image_grid_thw"]
    if not bool((thw == thw[:1]).all()):
        raise DataError("the vision probe needs images of one size")
    per = int(thw[0].prod())
    pv = pv.view(len(imgs), per, pv.shape[-1])
    y = torch.tensor([float(s) for _, s in train], dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    probe = torch.nn.Linear(int(model.config.vision_config.out_hidden_size), 1)
    with torch.no_grad():
        probe.weight.normal_(0.0, 0.02, generator=gen)
        probe.bias.fill_(float(y.mean()))
    params = [p for p in visual.parameters() if p.requires_grad] + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=float(lr), weight_decay=0.0)
    steps = int(epochs) * -(-len(imgs) // int(batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + np.cos(np.pi * min(i, steps) / steps)))
    visual.train()
    losses = []
    for _ in range(int(epochs)):
        order = torch.randperm(len(imgs), generator=gen)
        total = 0.0
        for s0 in range(0, len(order), int(batch_size)):
            idx = order[s0 : s0 + int(batch_size)]
            out = visual(pv[idx].reshape(-1, pv.shape[-1]), grid_thw=thw[idx])
            tokens = getattr(out, "pooler_output", out)
            tokens = torch.cat(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens
            pred = probe(tokens.view(len(idx), -1, tokens.shape[-1]).mean(1)).squeeze(-1)
            loss = torch.nn.functional.mse_loss(pred, y[idx])
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(imgs))
    visual.eval()
    return losses


def _quality_base(out: pathlib.Path, real: pathlib.Path | None, r: dict[str, Any], train: Any) -> None:
    """The base of :func:`quality_aware_vlm`: the shrunken model, its DCT patch embedding, the vision probe
    stage; written to a temporary folder and renamed into ``out`` when complete."""
    import shutil

    torch, transformers = _require_hf()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    seed = int(r["train"]["seed"])
    if real is not None:
        make_real_file_vlm(real, tmp, seed=seed)
    else:
        make_tiny_vlm("qwen2_5_vl", tmp, seed=seed)
    v = r.get("vision") or {}
    if v:
        model = transformers.AutoModelForImageTextToText.from_pretrained(tmp, dtype=torch.float32)
        from lmmiqa.backends.hf_processor import load_processor

        processor = load_processor(str(tmp), local_files_only=True)
        if v.get("patch_embed") == "dct":
            dct_patch_embedding(model, v["dct_frequencies"])
        elif v.get("patch_embed") is not None:
            raise ConfigError(f"unknown vision patch_embed {v.get('patch_embed')!r}; known: dct, None")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_vision_probe(model, processor, train, epochs=int(v["epochs"]), lr=float(v["lr"]),
                               batch_size=int(v["batch_size"]), seed=seed)
        model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def quality_aware_vlm(*, root: str | os.PathLike[str] | None = None, recipe: dict[str, Any] | None = None,
                      rebuild: bool = False) -> pathlib.Path:
    """A small VLM that sees quality: the shrunken real-file Qwen2.5-VL (the toy-tokenizer tiny Qwen2.5-VL when
    ``../shared/data/hf`` is absent) trained on a synthetic distortion ladder of the built-in photos
    (:func:`quality_ladder`), in two stages (:data:`QUALITY_RECIPE`): its vision tower (DCT patch embedding,
    :func:`dct_patch_embedding`) with a linear probe (:func:`train_vision_probe`), then the whole model but the
    tower with ``lmmiqa train levels`` (Q-Align's recipe) for the q-align words, the standard-guided digits
    (K = 5) and the AgenticIQA letters. Held-out references are never trained on.

    Cached under :func:`quality_cache_dir`, keyed by a hash of the recipe and of whether the real files were used;
    the merged folder loads with ``lmmiqa score --model FOLDER``. Its ``training.json`` holds the held-out
    validation SRCC of each method. Recipe version 2, measured on the shared 2-core machine (one torch thread,
    set here for the build): ~4 min; held-out SRCC with the severity through the scorers q-align 0.80,
    standard-guided (K = 5) 0.81, and the AgenticIQA letters 0.83 (validation).
    """
    import hashlib
    import json

    from lmmiqa.training.levels import SPEC_FILE

    r = recipe or QUALITY_RECIPE
    real = shared_hf_folder(r["checkpoint"], root)
    key_src = {"recipe": r, "real": real is not None}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    cache = quality_cache_dir()
    out = cache / f"model-{key}"
    if not rebuild and (out / SPEC_FILE).is_file() and json.loads((out / SPEC_FILE).read_text()).get("complete"):
        return out
    torch, _ = _require_hf()
    threads = torch.get_num_threads()
    # one thread: this model's ops are tiny, and on a shared 2-core machine two OpenMP threads waiting for a busy
    # core made every training step ~30x slower (4.2 s instead of 0.15 s)
    torch.set_num_threads(1)
    try:
        _build_quality_model(out, cache / f"base-{key}", real, r, rebuild)
    finally:
        torch.set_num_threads(threads)
    return out


def _build_quality_model(out: pathlib.Path, base: pathlib.Path, real: pathlib.Path | None, r: dict[str, Any],
                         rebuild: bool) -> None:
    """The two stages of :func:`quality_aware_vlm` (the base is reused when complete and ``rebuild`` is false)."""
    from lmmiqa.training.levels import LevelsTrainConfig, train_levels

    train, held_out = quality_ladder(recipe=r)
    if rebuild or not (base / "config.json").is_file():
        _quality_base(base, real, r, train)
    t = r["train"]
    cfg = LevelsTrainConfig(model=str(base), methods=tuple(t["methods"]), levels=t["levels"], epochs=t["epochs"],
                            batch_size=t["batch_size"], lr=t["lr"], vision_lr=t.get("vision_lr"),
                            lr_schedule=t["lr_schedule"], warmup_ratio=t["warmup_ratio"], target=t["target"],
                            soft_sigma=t["soft_sigma"], max_pixels=t["max_pixels"], seed=t["seed"], tuning="full",
                            device="cpu", local_files_only=True, progress=False)
    train_levels(train, out, cfg, val=held_out, overwrite=rebuild)  # validation only: held-out SRCC per method
