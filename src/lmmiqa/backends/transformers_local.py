"""In-process backend on Hugging Face transformers (the embedded default).

Any chat VLM that transformers supports through ``AutoModelForImageTextToText`` + ``AutoProcessor`` works
without per-model code (Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA-OneVision, Idefics3/SmolVLM, ...): prompts are
rendered with the model's own chat template, batched with left padding, and scored with one forward pass that
keeps only the last position's logits (``logits_to_keep=1``).
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
from lmmiqa.config import build_config
from lmmiqa.errors import ConfigError, ModelLoadError, UnsupportedError, require
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
        local_files_only: never contact the hub (default: from ``HF_HUB_OFFLINE``).
        trust_remote_code: allow hub remote code (off by default).
        revision: hub revision.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str | None = None
    max_batch: int = 32
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


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _weights_bytes(model: str) -> int:
    """Size of the weight files of a local folder (0 when unknown, e.g. a hub id not yet downloaded)."""
    if not os.path.isdir(model):
        return 0
    total = 0
    for name in os.listdir(model):
        if name.endswith((".safetensors", ".bin")):
            total += os.path.getsize(os.path.join(model, name))
    return total


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
        self._lock = threading.RLock()
        self._token_cache: dict[tuple[tuple[str, ...], str], list[int]] = {}
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
        self.model = model
        self.processor = processor
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.model.eval()
        self._setup_tokenizer()

    def _setup_tokenizer(self) -> None:
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise ModelLoadError(f"{self.config.model}: the processor has no tokenizer")
        self.tokenizer = tok
        self._specials: tuple[int, list[str]] | None = None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        from lmmiqa.hub import resolve_local_only

        cfg = self.config
        # offline and not cached, or the hub unreachable: one clear ModelLoadError now (before torch is even
        # imported), not minutes of hub retries
        local_only = resolve_local_only(cfg.model, cfg.local_files_only, revision=cfg.revision)
        require("torch", "hf", "the transformers backend")
        transformers = require("transformers", "hf", "the transformers backend")

        from lmmiqa.backends.hf_processor import load_processor

        self.device = pick_device(cfg.device)
        self.dtype = self._pick_dtype(cfg.dtype, self.device, cfg.model)
        common = {"local_files_only": local_only, "trust_remote_code": cfg.trust_remote_code}
        if cfg.revision:
            common["revision"] = cfg.revision
        try:
            self.processor = load_processor(cfg.model, **common)
        except Exception as err:
            raise ModelLoadError(self._load_hint(cfg.model, err)) from err
        kwargs: dict[str, Any] = {"dtype": self.dtype, **common}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if local_only:
            # the Auto classes look for a PEFT adapter_config.json without local_files_only (transformers 5.x):
            # offline that is a minute of hub retries per load
            kwargs["adapter_kwargs"] = {"local_files_only": True}
        try:
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(cfg.model, **kwargs)
        except Exception as err:
            raise ModelLoadError(self._load_hint(cfg.model, err)) from err
        self.model.to(self.device)
        self.model.eval()
        self._setup_tokenizer()
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
                        images.append(part)
                conv.append({"role": msg.role, "content": content})
            text = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            texts.append(text + prompt.answer_prefix)
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
        """Log-softmax at the answer position per chunk; ``select(chunk_start, logp_on_device)`` may reduce each
        chunk on the device (e.g. to a few candidate columns) before it is copied to the CPU."""
        import torch

        outs = []
        start = 0
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(prompts):
                inputs = self.encode(chunk)
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
                logp = torch.log_softmax(logits.float(), dim=-1)
                outs.append((select(start, logp) if select is not None else logp).cpu())
                start += len(chunk)
        return torch.cat(outs, dim=0)

    def last_logits(self, prompts: Sequence[Prompt]) -> Any:
        """float32 log-softmax over the vocabulary at the answer position, [B, V] (torch tensor on CPU)."""
        return self._forward_last(prompts)

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        if not prompts:
            return np.zeros((0, len(candidates)))
        import torch

        ids = torch.tensor(self.level_token_ids(prompts, candidates), dtype=torch.long)
        tops: dict[int, tuple[Any, Any]] = {}

        def select(start: int, logp: Any) -> Any:
            # the model's own top next tokens, kept for the covered-mass warning (no second forward)
            vals, idx = torch.topk(logp, k=min(LEVEL_TOP_K, logp.shape[-1]), dim=-1)
            tops[start] = (vals.cpu(), idx.cpu())
            # only the C candidate columns leave the device, not the whole [B, V] matrix
            return torch.gather(logp, 1, ids[start : start + logp.shape[0]].to(logp.device))

        out = self._forward_last(prompts, select).numpy().astype(np.float64)
        order = sorted(tops)
        self._level_top_local().top = (
            torch.cat([tops[s][0] for s in order]), torch.cat([tops[s][1] for s in order])
        ) if order else None
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
        import torch

        texts: list[str] = []
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(prompts):
                inputs = self.encode(chunk)
                gen_kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "pad_token_id": self.tokenizer.pad_token_id}
                if temperature and temperature > 0:
                    gen_kwargs.update(do_sample=True, temperature=float(temperature))
                else:
                    gen_kwargs.update(do_sample=False)
                out = self.model.generate(**inputs, **gen_kwargs)
                new = out[:, inputs["input_ids"].shape[1] :]
                texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts

    def hidden_states(self, prompts: Sequence[Prompt]) -> np.ndarray:
        import torch

        outs = []
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(prompts):
                inputs = self.encode(chunk)
                out = self.model(**inputs, output_hidden_states=True, logits_to_keep=1)
                hs = getattr(out, "hidden_states", None)
                if hs is None:
                    raise UnsupportedError(f"{self.model_id} does not return hidden states")
                outs.append(hs[-1][:, -1, :].float().cpu().numpy())
        return np.concatenate(outs, axis=0).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
