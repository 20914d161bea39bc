"""In-process backend on Hugging Face transformers (the embedded default).

Any chat VLM that transformers supports through ``AutoModelForImageTextToText`` + ``AutoProcessor`` works
without per-model code (Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA-OneVision, Idefics3/SmolVLM, ...): prompts are
rendered with the model's own chat template, batched with left padding, and scored with one forward pass that
keeps only the last position's logits (``logits_to_keep=1``) and no KV cache (``use_cache=False``).

Scoring calls are planned by a token budget (:mod:`lmmiqa.backends.planner`): prompt lengths are counted from
the rendered text and the processor's image-token count for each image size (no vision encoder), prompts are
sorted by length and cut into forwards whose padded positions stay within ``max_batch_tokens`` and 1.25× the
real ones, and results come back in input order. Images are held to a pixel budget
(:mod:`lmmiqa.backends.pixels`, default 1024×1024).

One call uses the model at a time (:class:`lmmiqa.backends.model_lock.ModelLock`), but ``generate()`` lends it to
waiting scoring calls after each generated token, so a scoring request beside a long generation waits for one
decoding step, not the whole generation (issue 16 §3); results are the same as without the interleaving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.backends.base import Backend
from lmmiqa.backends.model_lock import ModelLock, generation_state, restore_generation_state
from lmmiqa.backends.pixels import (
    DEFAULT_MAX_PIXELS,
    LARGE_PROMPT_IMAGE_TOKENS,
    check_budget,
    fit_pixels,
    parse_pixels,
)
from lmmiqa.backends.planner import bytes_per_token, default_max_batch_tokens, plan_batches
from lmmiqa.cancel import check_cancelled
from lmmiqa.config import build_config
from lmmiqa.errors import ConfigError, ModelLoadError, UnsupportedError, require
from lmmiqa.families.base import Family, PromptConventions
from lmmiqa.levels import candidates_in_context, resolve_token_ids
from lmmiqa.torch_utils import DTYPES, pick_device
from lmmiqa.types import Prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"

#: How many characters of the end of a rendered prompt are used to resolve level tokens in context (cut further
#: at the last special token inside them, where tokenization restarts).
LEVEL_CONTEXT_CHARS = 256
#: How many of the model's top next tokens level_logprobs keeps per prompt (for the covered-mass warning).
LEVEL_TOP_K = 8


@dataclass
class TransformersConfig:
    """Options of the transformers backend.

    Attributes:
        model: hub id or local folder.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        dtype: ``auto`` (bf16 on CUDA; on CPU fp32, or bf16 when fp32 weights would not fit in half the RAM),
            ``float32``, ``bfloat16``, ``float16``.
        attn_implementation: ``sdpa``, ``flash_attention_2``, ``eager`` or None (transformers' default).
        max_batch: largest number of prompts per forward; larger calls are split.
        max_batch_tokens: token budget of one scoring forward, counted in padded positions (batch size × longest
            prompt of the batch); prompts are sorted by length within each call and cut so that padding stays
            within 1.25× the real positions (:func:`lmmiqa.backends.planner.plan_batches`). ``None`` (default):
            derived from the free device memory after loading and the model config
            (:func:`~lmmiqa.backends.planner.default_max_batch_tokens`); ``0``: off (fixed chunks of
            ``max_batch`` in input order, the behaviour before 0.x).
        max_pixels: largest width×height of an image given to the processor (default 1024×1024, see
            :mod:`lmmiqa.backends.pixels`); ``"model"`` keeps the checkpoint's own limit.
        min_pixels: smallest width×height (default: the checkpoint's own).
        encode_ahead: run the processor for the next forward of a call in a background thread while the current
            forward runs (one forward ahead; same inputs, same results).
        local_files_only: never contact the hub (default: from ``HF_HUB_OFFLINE``).
        trust_remote_code: allow hub remote code (off by default).
        revision: hub revision.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str | None = None
    max_batch: int = 32
    max_batch_tokens: int | None = None
    max_pixels: int | str | None = DEFAULT_MAX_PIXELS
    min_pixels: int | str | None = None
    encode_ahead: bool = True
    local_files_only: bool | None = None
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if int(self.max_batch) < 1:
            raise ConfigError("max_batch must be >= 1")
        if not self.model:
            raise ConfigError("model must be a hub id or a local folder")
        if self.max_batch_tokens is not None:
            if isinstance(self.max_batch_tokens, bool) or int(self.max_batch_tokens) < 0:
                raise ConfigError(f"max_batch_tokens must be >= 0 (0: off) or None (auto), got {self.max_batch_tokens!r}")
            self.max_batch_tokens = int(self.max_batch_tokens)
        check_budget(parse_pixels(self.min_pixels, "min_pixels"), parse_pixels(self.max_pixels, "max_pixels"))


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _free_bytes(device: Any) -> int:
    """Memory free for activations on ``device``: CUDA free + PyTorch's reserved-but-unused cache; MPS the
    recommended working set minus what is allocated; CPU the available RAM (``MemAvailable``)."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if kind == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except (AttributeError, RuntimeError):
            pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return _ram_bytes() // 2


def _weights_bytes(model: str) -> int:
    """Size of the weight files of a local folder (0 when unknown, e.g. a hub id not yet downloaded)."""
    if not os.path.isdir(model):
        return 0
    total = 0
    for name in os.listdir(model):
        if name.endswith((".safetensors", ".bin")):
            total += os.path.getsize(os.path.join(model, name))
    return total


def _adapter_lookup_ignores_local_only(version: str) -> bool:
    """Whether this transformers' ``from_pretrained`` looks for a PEFT adapter without ``local_files_only``
    (5.x: it must be given in ``adapter_kwargs``; 4.x passes it on itself and fails when it is given twice)."""
    try:
        return int(version.split(".", 1)[0]) >= 5
    except ValueError:
        return True


class TransformersBackend(Backend):
    """Runs a chat VLM in this process.

    Attributes:
        model: the loaded ``transformers`` model (hookable, e.g. ``model.get_output_embeddings()``).
        processor: the model's processor (image-only variant where torchvision is missing).
        tokenizer: the processor's tokenizer.
    """

    name: ClassVar[str] = "transformers"
    supports_hidden_states = True

    def __init__(self, config: TransformersConfig, *, model: Any = None, processor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model
        #: scoring forwards take it with priority; generate() lends it to them between tokens (model_lock.py)
        self._lock = ModelLock()
        self._token_cache: dict[tuple[tuple[str, ...], str], list[int]] = {}
        #: the native model family (lmmiqa.families) of the loaded checkpoint, None for transformers' own
        self.family: Family | None = None
        self._min_pixels = parse_pixels(config.min_pixels, "min_pixels")
        self._max_pixels = parse_pixels(config.max_pixels, "max_pixels")
        self._pixel_mode = "model"
        self._auto_batch_tokens: int | None = None
        self._warned_large = False
        self._free_at_start = 0
        self._last_counts: tuple[list[Prompt], list[dict[str, Any]]] | None = None
        #: counters of the scoring forwards: ``forwards``, ``prompts``, ``real_tokens`` (attention-mask ones),
        #: ``padded_tokens`` (batch × padded length) — for benchmarks and logs
        self.stats: dict[str, int] = {"forwards": 0, "prompts": 0, "real_tokens": 0, "padded_tokens": 0}
        if model is not None and processor is not None:
            self._adopt(model, processor)
        else:
            self._load()

    @classmethod
    def from_options(cls, **options: Any) -> TransformersBackend:
        if options.get("model") is None:
            options["model"] = DEFAULT_MODEL
        return cls(build_config(TransformersConfig, options, what="the transformers backend"))

    @classmethod
    def from_loaded(cls, model: Any, processor: Any, *, model_id: str = "<in-memory>", **options: Any) -> TransformersBackend:
        """Wrap a model and processor already in memory (e.g. built with ``from_config`` for a benchmark, or
        fine-tuned in this process); ``options`` are the remaining :class:`TransformersConfig` fields."""
        cfg = build_config(TransformersConfig, {"model": model_id, **options}, what="the transformers backend")
        return cls(cfg, model=model, processor=processor)

    def _adopt(self, model: Any, processor: Any) -> None:
        from lmmiqa.families import family_of

        self.model = model
        self.processor = processor
        self.family = family_of(getattr(getattr(model, "config", None), "model_type", None))
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.model.eval()
        self._setup_tokenizer()
        self._setup_pixels()

    def _setup_tokenizer(self) -> None:
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise ModelLoadError(f"{self.config.model}: the processor has no tokenizer")
        self.tokenizer = tok
        self._specials: tuple[int, list[str]] | None = None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _setup_pixels(self) -> None:
        from lmmiqa.backends.hf_processor import set_pixel_budget

        self._pixel_mode = set_pixel_budget(self.processor, self._min_pixels, self._max_pixels)

    def _fit(self, image: Any) -> Any:
        """The image as the processor will get it: downscaled to the pixel budget when the processor has no
        native knob for it."""
        if self._pixel_mode == "resize" and hasattr(image, "size"):
            return fit_pixels(image, self._min_pixels, self._max_pixels)
        return image

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        from lmmiqa.hub import resolve_local_only

        cfg = self.config
        # offline and not cached, or the hub unreachable: one clear ModelLoadError now (before torch is even
        # imported), not minutes of hub retries
        local_only = resolve_local_only(cfg.model, cfg.local_files_only, revision=cfg.revision)
        require("torch", "hf", "the transformers backend")
        transformers = require("transformers", "hf", "the transformers backend")

        from lmmiqa import families
        from lmmiqa.backends.hf_processor import load_processor

        self.device = pick_device(cfg.device)
        self.dtype = self._pick_dtype(cfg.dtype, self.device, cfg.model)
        common = {"local_files_only": local_only, "trust_remote_code": cfg.trust_remote_code}
        if cfg.revision:
            common["revision"] = cfg.revision
        hub = {k: v for k, v in common.items() if k != "trust_remote_code"}
        # a natively implemented family (mPLUG-Owl2, ...) is registered with transformers here, so the
        # from_pretrained calls below build lmmiqa's classes and no remote code runs
        self.family = families.prepare(cfg.model, trust_remote_code=cfg.trust_remote_code, **hub)
        if self.family is not None:
            common["trust_remote_code"] = False
        try:
            if self.family is not None:
                self.processor = self.family.load_processor(cfg.model, **hub)
            else:
                self.processor = load_processor(cfg.model, **common)
        except Exception as err:
            raise ModelLoadError(self._load_hint(cfg.model, err)) from err
        kwargs: dict[str, Any] = {"dtype": self.dtype, **common}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if local_only and _adapter_lookup_ignores_local_only(transformers.__version__):
            # the Auto classes look for a PEFT adapter_config.json without local_files_only (transformers 5.x):
            # offline that is a minute of hub retries per load. (4.x passes local_files_only itself, and refuses it
            # twice.)
            kwargs["adapter_kwargs"] = {"local_files_only": True}
        try:
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(cfg.model, **kwargs)
        except Exception as err:
            raise ModelLoadError(self._load_hint(cfg.model, err)) from err
        self.model.to(self.device)
        self.model.eval()
        self._setup_tokenizer()
        self._setup_pixels()
        log.info("loaded %s on %s (%s)", cfg.model, self.device, self.dtype)

    @staticmethod
    def _load_hint(model: str, err: BaseException) -> str:
        from lmmiqa.errors import download_hint, spell

        detail = str(err) if isinstance(err, ModelLoadError) else f"{type(err).__name__}: {err}"
        if os.path.isdir(model):
            return f"cannot load the model from the local folder {model!r}: {detail}"
        folder = "./" + model.rstrip("/").rsplit("/", 1)[-1]
        where = spell(cli=f"--model {folder}", python=f"model={folder!r}")
        return (
            f"cannot load model {model!r} ({detail}). If this machine is offline, download the model on a "
            f"connected machine (`{download_hint(model, folder)}`), copy the folder here and pass {where}."
        )

    @staticmethod
    def _pick_dtype(dtype: str, device: Any, model: str) -> Any:
        from lmmiqa.torch_utils import pick_dtype

        if dtype != "auto" or device.type == "cuda":
            return pick_dtype(dtype, device)
        import torch

        # CPU: fp32 unless fp32 weights would not fit in half the RAM (weights are usually stored in bf16)
        stored = _weights_bytes(model)
        ram = _ram_bytes()
        if stored and ram and stored * 2 > ram / 2:
            return torch.bfloat16
        return torch.float32

    # ------------------------------------------------------------------ prompt rendering
    def _render(self, prompts: Sequence[Prompt]) -> tuple[list[str], list[Any]]:
        """Chat-template texts (with answer prefixes) and the images: one list per prompt when every prompt has
        images (processors such as LLaVA-OneVision need to know which image belongs to which prompt), else flat."""
        texts: list[str] = []
        per_prompt: list[list[Any]] = []
        for prompt in prompts:
            images: list[Any] = []
            per_prompt.append(images)
            conv = []
            for msg in prompt.messages:
                content = []
                for part in msg.content:
                    if isinstance(part, str):
                        content.append({"type": "text", "text": part})
                    else:
                        content.append({"type": "image"})
                        images.append(self._fit(part))
                conv.append({"role": msg.role, "content": content})
            text = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            join = getattr(self.processor, "join_answer_prefix", None)  # formats ending "ASSISTANT:" (families)
            texts.append(join(text, prompt.answer_prefix) if callable(join) else text + prompt.answer_prefix)
        if per_prompt and all(per_prompt):
            return texts, per_prompt
        return texts, [im for ims in per_prompt for im in ims]

    def encode(self, prompts: Sequence[Prompt]) -> Any:
        """Processor outputs (tensors on the model's device) for a batch of prompts, left-padded.

        When the chat template already wrote the tokenizer's BOS text, the tokenizer is told not to add its
        special tokens again (as transformers' own ``processor.apply_chat_template(..., tokenize=True)`` does);
        otherwise a tokenizer that adds BOS would give the model two.
        """
        texts, images = self._render(prompts)
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if self._template_writes_bos(texts):
            kwargs["add_special_tokens"] = False
        if images:
            kwargs["images"] = images
        inputs = self.processor(**kwargs)
        inputs = inputs.to(self.device)
        float_dtype = self.dtype
        for k, v in list(inputs.items()):
            if hasattr(v, "is_floating_point") and v.is_floating_point():
                inputs[k] = v.to(float_dtype)
        return inputs

    def _template_writes_bos(self, texts: Sequence[str]) -> bool:
        bos = getattr(self.tokenizer, "bos_token", None)
        return bool(bos) and any(t.startswith(bos) for t in texts)

    def _chunks(self, prompts: Sequence[Prompt]) -> list[Sequence[Prompt]]:
        n = self.config.max_batch
        return [prompts[i : i + n] for i in range(0, len(prompts), n)]

    # ------------------------------------------------------------------ token counts and batch planning
    def prompt_token_counts(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        """Tokens of each prompt as the model will see it (before padding), computed without running the
        vision encoder: ``{"tokens": total, "image_tokens": sum over its images, "per_image": [...]}``.

        Image tokens come from the processor's own count for the image sizes (``_get_num_multimodal_tokens``,
        after the pixel budget); text tokens from the rendered chat template. A processor without that count is
        run on each prompt alone instead (slower: its images are preprocessed twice).
        """
        last = self._last_counts
        if last is not None and len(last[0]) == len(prompts) and all(a is b for a, b in zip(last[0], prompts)):
            return last[1]
        rendered: list[tuple[str, list[Any]]] = []
        sizes: list[tuple[int, int]] = []
        for p in prompts:
            texts, images = self._render([p])
            ims = list(images[0]) if images and isinstance(images[0], list) else list(images)
            rendered.append((texts[0], ims))
            sizes.extend((im.height, im.width) for im in ims)
        per_image = self._image_token_counts(sizes) if sizes else []
        out: list[dict[str, Any]] = []
        k = 0
        for text, ims in rendered:
            if per_image is None:
                out.append(self._count_by_encoding(text, ims))
                continue
            counts = [int(c) for c in per_image[k : k + len(ims)]]
            k += len(ims)
            # a family's processor counts its own text tokens (image markers as one token each)
            count = getattr(self.processor, "num_text_tokens", None)
            n_text = count(text) if callable(count) else len(self.tokenizer(text)["input_ids"])
            # the rendered text holds one placeholder per image; the processor expands it to the image's tokens
            out.append({"tokens": n_text + sum(counts) - len(counts), "image_tokens": sum(counts), "per_image": counts})
        self._last_counts = (list(prompts), out)
        self._warn_large(out)
        return out

    def _image_token_counts(self, sizes: list[tuple[int, int]]) -> list[int] | None:
        fn = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if fn is None:
            return None
        try:
            counts = fn(image_sizes=[list(s) for s in sizes]).num_image_tokens
        except (AttributeError, NotImplementedError, TypeError, KeyError, ValueError):
            return None
        return list(counts) if counts is not None and len(counts) == len(sizes) else None

    def _count_by_encoding(self, text: str, images: list[Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "np"}
        if images:
            kwargs["images"] = [images]
        ids = self.processor(**kwargs)["input_ids"][0]
        image_id = getattr(self.processor, "image_token_id", None)
        n_img = int((ids == image_id).sum()) if image_id is not None else 0
        return {"tokens": len(ids), "image_tokens": n_img, "per_image": None}

    def _warn_large(self, counts: list[dict[str, Any]]) -> None:
        if self._warned_large or not counts or getattr(self.processor, "fixed_image_resolution", False):
            return
        worst = max(counts, key=lambda c: c["image_tokens"])
        if worst["image_tokens"] > LARGE_PROMPT_IMAGE_TOKENS:
            self._warned_large = True
            log.warning(
                "%s: a prompt has %d image tokens (%d in all; more than %d): each such image costs that much compute "
                "and activation memory. Cap it with --max-pixels (Python: max_pixels=; now %s)",
                self.model_id, worst["image_tokens"], worst["tokens"], LARGE_PROMPT_IMAGE_TOKENS,
                self.config.max_pixels,
            )

    def _bytes_per_token(self, kept_layers: int = 0) -> int:
        cfg = self.model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        hidden = int(getattr(text, "hidden_size", 4096))
        inter = int(getattr(text, "intermediate_size", None) or 4 * hidden)
        vision = getattr(cfg, "vision_config", None)
        v_hidden = int(getattr(vision, "hidden_size", None) or getattr(vision, "embed_dim", 0) or 0) if vision else 0
        v_inter = int(getattr(vision, "intermediate_size", None) or 4 * v_hidden) if vision else 0
        merge = int(getattr(vision, "spatial_merge_size", 1) or 1) if vision else 1
        itemsize = int(getattr(self.dtype, "itemsize", 4))
        return bytes_per_token(hidden, inter, itemsize, vision_hidden=v_hidden, vision_intermediate=v_inter,
                               patches_per_token=merge * merge, kept_layers=kept_layers)

    def max_batch_tokens(self, kept_layers: int = 0) -> int:
        """The token budget of one forward (0: off). Automatic budgets are computed once, after loading, from
        the free memory of the device (:func:`_free_bytes`) and :func:`~lmmiqa.backends.planner.bytes_per_token`."""
        if self.config.max_batch_tokens is not None:
            return int(self.config.max_batch_tokens)
        if self._auto_batch_tokens is None:
            self._free_at_start = _free_bytes(self.device)
            self._auto_batch_tokens = default_max_batch_tokens(self._free_at_start, self._bytes_per_token())
            log.info("%s: token budget per forward %d (free memory %.1f GiB)", self.model_id,
                     self._auto_batch_tokens, self._free_at_start / 2**30)
        if kept_layers:
            return default_max_batch_tokens(self._free_at_start, self._bytes_per_token(kept_layers))
        return self._auto_batch_tokens

    def plan(self, prompts: Sequence[Prompt], kept_layers: int = 0) -> list[list[int]]:
        """Index groups, one per forward (:func:`lmmiqa.backends.planner.plan_batches` over this call)."""
        budget = self.max_batch_tokens(kept_layers)
        if not budget:
            return plan_batches([1] * len(prompts), 0, max_batch=self.config.max_batch)
        lengths = [c["tokens"] for c in self.prompt_token_counts(prompts)]
        return plan_batches(lengths, budget, max_batch=self.config.max_batch)

    def _encoded(self, prompts: Sequence[Prompt], groups: list[list[int]]) -> Any:
        """The processor outputs of each group in turn; with ``encode_ahead`` the next group is encoded in a
        background thread while the caller runs the current one (at most one ahead)."""
        from lmmiqa.methods.base import prefetched

        def enc(g: list[int]) -> Any:
            return self.encode([prompts[i] for i in g])

        if self.config.encode_ahead and len(groups) > 1:
            return prefetched(groups, enc)
        return map(enc, groups)

    def _run_groups(
        self, prompts: Sequence[Prompt], step: Any, kept_layers: int = 0
    ) -> tuple[list[Any], list[list[int]], list[int]]:
        """``step(group, inputs)`` for each planned group; the outputs (rows per group) in input order."""
        import torch

        with self._lock.priority(), torch.inference_mode():
            groups = self.plan(prompts, kept_layers)
            outs = []
            encoded = self._encoded(prompts, groups)
            try:
                for g in groups:
                    inputs = next(encoded)
                    mask = inputs.get("attention_mask")
                    self.stats["forwards"] += 1
                    self.stats["prompts"] += len(g)
                    self.stats["padded_tokens"] += int(inputs["input_ids"].numel())
                    self.stats["real_tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
                    outs.append(step(g, inputs))
            finally:
                close = getattr(encoded, "close", None)
                if close is not None:
                    close()
        order = [i for g in groups for i in g]
        inverse = [0] * len(order)
        for pos, i in enumerate(order):
            inverse[i] = pos
        return outs, groups, inverse

    # ------------------------------------------------------------------ protocol
    def token_ids(self, candidates: Sequence[str], context: str) -> list[int]:
        """Resolve (and cache) the token ids of ``candidates`` as produced right after the text ``context``."""
        key = (tuple(candidates), context)
        if key not in self._token_cache:
            self._token_cache[key] = resolve_token_ids(self.tokenizer, candidates, context)
        return self._token_cache[key]

    def level_context(self, rendered: str) -> str:
        """The end of a rendered prompt (chat template + answer prefix) that decides how the next token is
        tokenized: its last :data:`LEVEL_CONTEXT_CHARS` characters, starting at the last special token among
        them when there is one (the tokenizer splits special tokens off before BPE, so nothing earlier can
        merge with the level)."""
        tail = rendered[-LEVEL_CONTEXT_CHARS:]
        best: tuple[int, int] | None = None  # (end, -start) of the last special token in the tail
        for special in self._special_texts():
            i = tail.rfind(special)
            if i >= 0:
                cand = (i + len(special), -i)
                if best is None or cand > best:
                    best = cand
        return tail[-best[1] :] if best is not None else tail  # -best[1] is the start

    def _special_texts(self) -> list[str]:
        """The texts of the tokenizer's special and added tokens (recomputed when tokens are added, e.g. by
        Q-Scorer's score tokens)."""
        tok = self.tokenizer
        n = len(tok)
        if self._specials is None or self._specials[0] != n:
            found = set(getattr(tok, "all_special_tokens", []) or [])
            with contextlib.suppress(Exception):  # a tokenizer without added tokens
                found.update(tok.get_added_vocab())
            self._specials = (n, sorted((t for t in found if t), key=len, reverse=True))
        return self._specials[1]

    def level_token_ids(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> list[list[int]]:
        """The token id of each candidate per prompt, resolved in the context the model actually reads: the end of
        the rendered generation prompt plus the answer prefix (not the prefix alone).

        ``candidates`` are formed as after the answer prefix (``LevelScale.candidates(prefix)``); their leading
        space is re-formed for the full context (:func:`lmmiqa.levels.candidates_in_context`), so a template
        ending in ``"Assistant:"`` reads ``" 7"`` where ChatML's ``"assistant\\n"`` reads ``"7"``.

        Raises:
            TokenizationError: a candidate is not exactly one token in that context (listing its pieces).
        """
        texts, _ = self._render(prompts)
        out: list[list[int]] = []
        for text in texts:
            ctx = self.level_context(text)
            out.append(self.token_ids(candidates_in_context(candidates, ctx), ctx))
        return out

    def _forward_last(self, prompts: Sequence[Prompt], select: Any = None) -> Any:
        """Log-softmax at the answer position, [B, V] or [B, C], in input order. Forwards are planned by the token
        budget (:meth:`plan`) and run without a KV cache; ``select(indices, logp_on_device)`` may reduce each
        group on the device (e.g. to a few candidate columns) before it is copied to the CPU."""
        import torch

        def step(group: list[int], inputs: Any) -> Any:
            logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)
            return (select(group, logp) if select is not None else logp).cpu()

        outs, _, inverse = self._run_groups(prompts, step)
        return torch.cat(outs, dim=0)[torch.tensor(inverse, dtype=torch.long)]

    def last_logits(self, prompts: Sequence[Prompt]) -> Any:
        """float32 log-softmax over the vocabulary at the answer position, [B, V] (torch tensor on CPU)."""
        return self._forward_last(prompts)

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        if not prompts:
            return np.zeros((0, len(candidates)))
        import torch

        ids = torch.tensor(self.level_token_ids(prompts, candidates), dtype=torch.long)
        tops: list[tuple[list[int], Any, Any]] = []

        def select(group: list[int], logp: Any) -> Any:
            # the model's own top next tokens, kept for the covered-mass warning (no second forward)
            vals, idx = torch.topk(logp, k=min(LEVEL_TOP_K, logp.shape[-1]), dim=-1)
            tops.append((list(group), vals.cpu(), idx.cpu()))
            # only the C candidate columns leave the device, not the whole [B, V] matrix
            return torch.gather(logp, 1, ids[group].to(logp.device))

        out = self._forward_last(prompts, select).numpy().astype(np.float64)
        top = None
        if tops:  # forwards ran in planned order: put the rows back in input order
            k = tops[0][1].shape[-1]
            vals_all = torch.empty((len(prompts), k), dtype=tops[0][1].dtype)
            idx_all = torch.empty((len(prompts), k), dtype=torch.long)
            for group, vals, idx in tops:
                rows = torch.tensor(group, dtype=torch.long)
                vals_all[rows] = vals
                idx_all[rows] = idx
            top = (vals_all, idx_all)
        self._level_top_local().top = top
        return out

    def _level_top_local(self) -> threading.local:
        local = getattr(self, "_level_top", None)
        if local is None:
            local = self._level_top = threading.local()
        return local

    def last_level_top(self, row: int, k: int = LEVEL_TOP_K) -> list[tuple[str, float]]:
        """The model's most likely next tokens (decoded text, log-probability) for prompt ``row`` of this thread's
        last :meth:`level_logprobs` call (what the covered-mass warning lists); empty when there is none."""
        top = getattr(self._level_top_local(), "top", None)
        if top is None or not 0 <= row < len(top[0]):
            return []
        vals, idx = top
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(vals[row][:k].tolist(), idx[row][:k].tolist())]

    def top_logprobs(self, prompts: Sequence[Prompt], k: int = 20) -> list[list[tuple[str, float]]]:
        """The k most probable next tokens (decoded text, log-probability) per prompt."""
        import torch

        logp = self.last_logits(prompts)
        vals, idx = torch.topk(logp, k=min(k, logp.shape[-1]), dim=-1)
        out = []
        for v_row, i_row in zip(vals.tolist(), idx.tolist()):
            out.append([(self.tokenizer.decode([i]), float(v)) for v, i in zip(v_row, i_row)])
        return out

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Generated texts; scoring calls that wait for the model run between two tokens (:meth:`_between_tokens`)."""
        import torch

        texts: list[str] = []
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(prompts):
                check_cancelled()
                inputs = self.encode(chunk)
                gen_kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "pad_token_id": self.tokenizer.pad_token_id}
                if temperature and temperature > 0:
                    gen_kwargs.update(do_sample=True, temperature=float(temperature))
                else:
                    gen_kwargs.update(do_sample=False)
                gen_kwargs["stopping_criteria"] = self._lending_criteria()
                out = self.model.generate(**inputs, **gen_kwargs)
                new = out[:, inputs["input_ids"].shape[1] :]
                texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts

    def _between_tokens(self) -> None:
        """Called by generate() after each new token: lend the model to the scoring forwards waiting for it
        (:meth:`ModelLock.lend`), keeping the generation's model state (``rope_deltas``) across their forwards;
        stop the generation when its caller gave up (:func:`lmmiqa.cancel.check_cancelled`)."""
        check_cancelled()
        if self._lock.waiting:
            state = generation_state(self.model)
            try:
                self._lock.lend()
            finally:
                restore_generation_state(state)

    def _lending_criteria(self) -> Any:
        """A ``StoppingCriteriaList`` that never stops and calls :meth:`_between_tokens` after each token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        backend = self

        class _LendBetweenTokens(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                backend._between_tokens()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_LendBetweenTokens()])

    def hidden_states(self, prompts: Sequence[Prompt]) -> np.ndarray:
        if not prompts:
            return np.zeros((0, 0))
        layers = int(getattr(self.model.config.get_text_config(), "num_hidden_layers", 0) or 0)

        def step(group: list[int], inputs: Any) -> Any:
            out = self.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
            hs = getattr(out, "hidden_states", None)
            if hs is None:
                raise UnsupportedError(f"{self.model_id} does not return hidden states")
            return hs[-1][:, -1, :].float().cpu().numpy()

        outs, _, inverse = self._run_groups(prompts, step, kept_layers=layers + 1)
        return np.concatenate(outs, axis=0)[inverse].astype(np.float64)

    def conventions(self) -> PromptConventions:
        """The loaded family's prompt conventions (:mod:`lmmiqa.families`), else the chat-template default."""
        return self.family.conventions if self.family is not None else super().conventions()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_id,
            "family": self.family.model_type if self.family is not None else None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "max_pixels": self.config.max_pixels,
            "min_pixels": self.config.min_pixels,
            "pixel_budget": self._pixel_mode,
            "max_batch_tokens": self.config.max_batch_tokens if self.config.max_batch_tokens is not None else "auto",
        }

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
