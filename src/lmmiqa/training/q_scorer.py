"""Training Q-Scorer (METHODS §4): LoRA + score tokens + an MLP regression head on an MLLM.

Each training image is asked "How would you rate the quality of this image?" and the answer
"The quality of the image is <scoreX>" is appended after the model's generation prompt, where ``<scoreX>`` is
the equal-width bin of the image's MOS (k = 5; bins over the training split's MOS min–max as in Q-Align, or a
fixed ``bin_range``; stored in the artifact) or the single ``<score>`` (k = 1). The loss is

    ce_weight · CE(answer tokens) + mse_weight · MSE(head output, normalized MOS)

where the head output is **not clamped** (the reference code clamps inside the loss, which kills the gradient
outside the range; METHODS §4.4) and the MSE is taken in normalized units ``(MOS − lo)/(hi − lo)`` so that the
weights do not depend on the dataset's scale (it equals the MSE in MOS units divided by ``(hi − lo)²``).
Lower-is-better labels (DMOS) are flipped onto the same range first (``lo + hi − DMOS``): the scorer always
reports higher-is-better. The answer stops at the score token (no end-of-turn token): only the score position
is ever read.

The loop uses :class:`accelerate.Accelerator` (so ``accelerate launch -m lmmiqa.cli train q-scorer ...``
trains on several GPUs with DDP; a plain run is one process, CPU in tests): AdamW, cosine schedule with linear
warmup, gradient accumulation, gradient clipping, optional gradient checkpointing, bf16 autocast on GPUs
(LoRA, token rows and head kept in float32), a seeded data order, validation (SRCC/PLCC/RMSE) after every
epoch, rolling checkpoints (trainable weights, optimizer, scheduler, RNG, position in the epoch) that a rerun
of the same command resumes exactly, and a progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.training.q_scorer_model import (
    LORA_TARGET,
    SPEC_FILE,
    TRAINING_FILE,
    HeadConfig,
    LoraSettings,
    QScorerSpec,
    _check_k,
    _check_range,
    _write_json,
    data_bin_range,
    mos_bins,
    normalize_mos,
)
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "LATEST"
TRAIN_DTYPES = ("auto", "float32", "bfloat16", "float16")
TRAIN_DEVICES = ("auto", "cpu", "cuda")
#: config fields that do not change the result (excluded from the run fingerprint)
_RUNTIME_FIELDS = ("max_steps", "progress", "decode_workers", "checkpoint_every", "keep_checkpoints", "local_files_only")


@dataclass
class QScorerTrainConfig:
    """Options of ``lmmiqa train q-scorer`` (defaults follow the reference recipe where it has one).

    Attributes:
        model: base MLLM (hub id or local folder).
        tokens: number of score tokens, 1 (``<score>``) or 5 (``<score1>``..``<score5>``).
        epochs: passes over the training data (reference: 3).
        batch_size: images per device per micro-batch.
        grad_accum: micro-batches per optimizer step.
        eval_batch_size: images per forward pass during validation (0 = ``2 · batch_size``).
        lr: learning rate of LoRA and token rows (reference: 2e-5, cosine).
        head_lr: learning rate of the head (None = ``lr``).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of optimizer steps with linear warmup.
        max_grad_norm: gradient clipping (None or 0 = off).
        ce_weight, mse_weight: loss weights of the answer cross-entropy and the head MSE.
        lora_r, lora_alpha, lora_dropout, lora_target: LoRA settings (target: regex over module names).
        tune_projector: also train the vision-language projector (the vision tower stays frozen).
        head_dims, head_activation, head_dropout: the MLP head (reference 2048, 1024, ReLU).
        mos_range: ``(lo, hi)`` of the MOS; default: the dataset's published range, else the training min/max.
        bin_range: ``(lo, hi)`` cut into the k score tokens' equal-width bins, in the labels' own units; default
            (None): the min–max of the training split's MOS, as Q-Align does (bins over a published range the
            data does not fill leave tokens without images). Stored in the artifact.
        val_fraction: hold out this fraction of the training groups for validation when no validation set is
            given (0 = no validation).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30 % slower).
        device: ``auto`` (CUDA when available; with ``accelerate launch``, each process's GPU), ``cpu``, ``cuda``.
        dtype: ``auto`` (bf16 on GPUs that support it, else fp16; fp32 on CPU), ``float32``, ``bfloat16``,
            ``float16``: the dtype of the frozen weights; the autocast precision follows it.
        attn_implementation: ``sdpa``, ``flash_attention_2``, ``eager`` or None (transformers' default).
        seed: seed of the head/LoRA initialisation, data order, validation hold-out and dropout.
        checkpoint_every: also checkpoint every N optimizer steps (0 = only at the end of each epoch).
        keep_checkpoints: keep the checkpoint folder after training completes.
        max_steps: stop after this many optimizer steps in total (the adapter is written and the run stays
            resumable: rerun without it to finish).
        decode_workers: threads decoding the images of a batch.
        progress: progress bar on stderr (None = when stderr is a terminal).
        local_files_only: never contact the hub (default: from ``HF_HUB_OFFLINE``).
    """

    model: str = DEFAULT_MODEL
    tokens: int = 5
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1
    eval_batch_size: int = 0
    lr: float = 2e-5
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target: str = LORA_TARGET
    tune_projector: bool = False
    head_dims: tuple[int, ...] = (2048, 1024)
    head_activation: str = "relu"
    head_dropout: float = 0.0
    mos_range: tuple[float, float] | None = None
    bin_range: tuple[float, float] | None = None
    val_fraction: float = 0.0
    gradient_checkpointing: bool = False
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str | None = None
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: bool = False
    max_steps: int | None = None
    decode_workers: int = 2
    progress: bool | None = None
    local_files_only: bool | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must be a hub id or a local folder")
        self.tokens = _check_k(self.tokens)
        for name in ("epochs", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        if int(self.eval_batch_size) < 0:
            raise ConfigError(f"eval_batch_size must be >= 0, got {self.eval_batch_size}")
        self.eval_batch_size = int(self.eval_batch_size) or 2 * self.batch_size
        if float(self.lr) <= 0 or (self.head_lr is not None and float(self.head_lr) <= 0):
            raise ConfigError("learning rates must be > 0")
        if float(self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= float(self.warmup_ratio) < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm is not None and float(self.max_grad_norm) < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm}")
        if float(self.ce_weight) < 0 or float(self.mse_weight) < 0 or float(self.ce_weight) + float(self.mse_weight) == 0:
            raise ConfigError("ce_weight and mse_weight must be >= 0 and not both 0")
        if self.mos_range is not None:
            self.mos_range = _check_range(*self.mos_range)
        if self.bin_range is not None:
            self.bin_range = _check_range(*self.bin_range)
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.device not in TRAIN_DEVICES:
            raise ConfigError(
                f"training device must be one of {', '.join(TRAIN_DEVICES)} (pick GPUs with CUDA_VISIBLE_DEVICES or "
                f"accelerate launch), got {self.device!r}"
            )
        if self.dtype not in TRAIN_DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; known: {', '.join(TRAIN_DTYPES)}")
        if int(self.checkpoint_every) < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if int(self.decode_workers) < 0:
            raise ConfigError(f"decode_workers must be >= 0, got {self.decode_workers}")
        self.head_dims = tuple(int(d) for d in self.head_dims)
        # validated by their own dataclasses
        self.head_config()
        self.lora_settings()

    def head_config(self) -> HeadConfig:
        return HeadConfig(self.head_dims, self.head_activation, self.head_dropout)

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target, self.tune_projector)


@dataclass
class TrainResult:
    """What :func:`train_q_scorer` returns.

    Attributes:
        out: the artifact folder.
        history: one entry per completed epoch (losses, learning rate, validation metrics, seconds).
        global_step: optimizer steps taken in total.
        complete: false when stopped by ``max_steps`` (rerun to resume).
        val_predictions: the final model's validation MOS predictions (unclamped, in validation order) and the
            validation paths, when there is a validation set.
        resumed_from: the optimizer step a checkpoint was resumed from, or None.
        main_process: false in the non-main processes of a distributed run (which should not report).
    """

    out: Path
    history: list[dict[str, Any]]
    global_step: int
    complete: bool
    val_predictions: dict[str, Any] | None = None
    resumed_from: int | None = None
    main_process: bool = True


@dataclass
class _Samples:
    paths: list[str]
    quality: np.ndarray  # higher-is-better, on the MOS range
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> _Samples:
        return _Samples([self.paths[i] for i in idx], self.quality[np.asarray(idx, dtype=np.int64)],
                        [self.groups[i] for i in idx])


def _samples(data: Any, what: str) -> tuple[_Samples, bool, tuple[float, float] | None, dict[str, Any]]:
    """(samples with raw scores, higher_is_better, published range, summary) from a Dataset or (path, score) pairs."""
    if hasattr(data, "items") and hasattr(data, "scores") and hasattr(data, "paths"):
        s = _Samples(list(data.paths()), np.asarray(data.scores(), dtype=np.float64), list(data.groups()))
        return s, bool(data.higher_is_better), data.score_range, data.summary()
    try:
        pairs = [(os.fspath(p), float(m)) for p, m in data]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be a lmmiqa.data.Dataset or (path, MOS) pairs: {err}") from err
    s = _Samples([p for p, _ in pairs], np.array([m for _, m in pairs], dtype=np.float64), [p for p, _ in pairs])
    return s, True, None, {"name": "pairs", "n": len(pairs)}


def resolve_bin_range(
    quality: Any,
    k: int,
    fixed: tuple[float, float] | None,
    mos_range: tuple[float, float],
    higher_is_better: bool = True,
) -> tuple[tuple[float, float] | None, str]:
    """The score-token bin range of a training run and where it came from.

    Args:
        quality: the training split's MOS, higher-is-better (DMOS already flipped onto ``mos_range``).
        k: number of score tokens (k = 1 has no bins: ``(None, "mos_range")``).
        fixed: a fixed range in the labels' own units (flipped like the labels for DMOS), or None for the
            training min–max (Q-Align).
        mos_range: the MOS range ``(lo, hi)`` (used to flip a fixed DMOS range).
        higher_is_better: direction of the labels.

    Returns:
        ``((lo, hi), "training min-max" | "fixed")``, or ``(None, "mos_range")`` for k = 1.
    """
    if int(k) == 1:
        return None, "mos_range"
    if fixed is not None:
        b_lo, b_hi = _check_range(*fixed)
        if not higher_is_better:
            lo, hi = mos_range
            b_lo, b_hi = lo + hi - b_hi, lo + hi - b_lo
        return (b_lo, b_hi), "fixed"
    return data_bin_range(quality), "training min-max"


def _fingerprint(config: QScorerTrainConfig, train: _Samples, val: _Samples | None, mos_range: tuple[float, float]) -> str:
    cfg = {k: v for k, v in asdict(config).items() if k not in _RUNTIME_FIELDS}
    payload = {
        "config": json_safe(cfg),
        "range": list(mos_range),
        "train": [train.paths, train.quality.round(9).tolist()],
        "val": [val.paths, val.quality.round(9).tolist()] if val is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _split_val(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise DataError("val_fraction needs at least two images (groups) to hold some out")
    rng = np.random.default_rng(int(seed))
    n_val = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    held = {uniq[i] for i in rng.permutation(len(uniq))[:n_val]}
    is_val = np.array([g in held for g in groups], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def _micro_batches(order: np.ndarray, batch: int, world: int, rank: int) -> list[np.ndarray]:
    """This process's share of each global micro-batch of ``batch · world`` items (wrapping around so that every
    process gets a full batch when there are several)."""
    per = batch * world
    n_mb = math.ceil(len(order) / per)
    out = []
    for m in range(n_mb):
        glob = order[m * per : (m + 1) * per]
        if world > 1 and len(glob) < per:
            glob = np.concatenate([glob, np.resize(order, per - len(glob))])
        out.append(glob[rank * batch : (rank + 1) * batch])
    return out


def _answer_lengths(backend: Any, spec: QScorerSpec) -> list[int]:
    """Token count of each training answer as a continuation of the generation prompt (checked to end with the
    score token, and not to merge with the prompt)."""
    tok = backend.tokenizer
    conv = [{"role": "user", "content": [{"type": "text", "text": spec.question}]}]
    ctx = backend.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ctx_ids = tok.encode(ctx, add_special_tokens=False)
    out = []
    for i, tid in enumerate(spec.token_ids):
        full = tok.encode(ctx + spec.answer(i), add_special_tokens=False)
        if full[: len(ctx_ids)] != ctx_ids or full[-1] != tid:
            raise DataError(
                f"the answer {spec.answer(i)!r} does not tokenize as a continuation of the prompt ending in the "
                f"score token: {tok.convert_ids_to_tokens(full[-12:])}"
            )
        out.append(len(full) - len(ctx_ids))
    return out


def _load_images(paths: Sequence[str], workers: int) -> list[Any]:
    from lmmiqa.images import load_many

    items = load_many(list(paths), workers=workers)
    bad = [it for it in items if not it.ok]
    if bad:
        raise DataError(
            f"cannot read training image(s): {'; '.join(str(it.error) for it in bad[:3])} "
            "(remove them from the label file)"
        )
    return [it.image for it in items]


# --------------------------------------------------------------------------- checkpoints


def _latest_checkpoint(out: Path) -> Path | None:
    pointer = out / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = out / CHECKPOINT_DIR / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def _trainable_state(net: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in net.named_parameters() if p.requires_grad}


def _save_checkpoint(acc: Any, out: Path, net: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    root = out / CHECKPOINT_DIR
    name = f"step-{state['global_step']:08d}-e{state['epoch']}-m{state['next_mb']}"
    path = root / name
    if acc.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    acc.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        save_file(_trainable_state(acc.unwrap_model(net)), str(path / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        _write_json(path / "state.json", state)
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = root / (LATEST_FILE + ".tmp")
        tmp.write_text(name + "\n", encoding="utf-8")
        os.replace(tmp, root / LATEST_FILE)
        for other in root.iterdir():
            if other.is_dir() and other.name != name:
                shutil.rmtree(other, ignore_errors=True)
    acc.wait_for_everyone()


def _load_checkpoint(acc: Any, path: Path, net: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(acc.unwrap_model(net).named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != trainable:
        raise DataError(f"checkpoint {path} does not match the model being trained (different trainable weights)")
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_path = path / f"rng-{acc.process_index}.pt"
    if not rng_path.is_file():
        rng_path = path / "rng-0.pt"
    rng = torch.load(rng_path, map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainableQScorer:
    """The model being trained.

    Attributes:
        backend: the transformers backend (its processor encodes prompts; ``backend.model`` is the LoRA model).
        net: the :class:`~lmmiqa.training._q_scorer_torch.QScorerNet` (LoRA model + head).
        spec: the artifact settings (written to ``qscorer.json``).
        answer_lengths: token count of the training answer of each score token.
    """

    backend: Any
    net: Any
    spec: QScorerSpec
    answer_lengths: list[int]


def build_trainable(
    config: QScorerTrainConfig,
    *,
    device: str,
    dtype: str,
    mos_range: tuple[float, float],
    source_higher_is_better: bool = True,
    head_bias: float | None = None,
    dataset: dict[str, Any] | None = None,
    bin_range: tuple[float, float] | None = None,
    bin_source: str = "mos_range",
) -> TrainableQScorer:
    """Load the base model and make it a trainable Q-Scorer (the set-up :func:`train_q_scorer` uses).

    Adds the score tokens (deterministic rows), enables gradient checkpointing when asked, wraps the model with
    LoRA + trainable token rows (+ projector), casts every trainable tensor to float32 and builds the head.
    Seed torch first for a reproducible head and LoRA initialisation.

    Args:
        config: training options (model, tokens, LoRA, head, attention implementation).
        device: torch device string for the model.
        dtype: dtype of the frozen weights (``float32``, ``bfloat16``, ``float16``).
        mos_range: ``(lo, hi)`` recorded in the spec.
        source_higher_is_better: recorded in the spec (false when DMOS labels were flipped).
        head_bias: initial bias of the head's last layer (normalized units), or None for torch's default.
        dataset: data summary recorded in the spec.
        bin_range, bin_source: the score-token bin range and its origin (:func:`resolve_bin_range`); None =
            ``mos_range``.
    """
    import torch

    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.training._q_scorer_torch import QScorerNet, build_head
    from lmmiqa.training.q_scorer_model import add_score_tokens, apply_lora

    backend = TransformersBackend(
        TransformersConfig(model=config.model, device=device, dtype=dtype,
                           attn_implementation=config.attn_implementation, local_files_only=config.local_files_only,
                           max_batch=max(config.eval_batch_size, config.batch_size))
    )
    base = backend.model
    token_ids, n_base = add_score_tokens(backend.tokenizer, base, config.tokens)
    hidden = int(base.get_output_embeddings().in_features)
    spec = QScorerSpec(
        base_model=config.model, k=config.tokens, mos_range=mos_range, hidden_size=hidden, token_ids=tuple(token_ids),
        n_base_tokens=n_base, head=config.head_config(), lora=config.lora_settings(),
        source_higher_is_better=source_higher_is_better, dataset=dataset, bin_range=bin_range, bin_source=bin_source,
    )
    answer_lens = _answer_lengths(backend, spec)
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "config"):
        base.config.use_cache = False
    lm = apply_lora(base, token_ids, spec.lora)
    for p in lm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # optimizer updates in fp32; the forward casts to the base dtype
    head = build_head(hidden, spec.head.dims, spec.head.activation, spec.head.dropout)
    if head_bias is not None:
        with torch.no_grad():
            head[-1].bias.fill_(float(head_bias))
    net = QScorerNet(lm, head.to(backend.device), token_ids)
    backend.model = lm
    net.train()
    return TrainableQScorer(backend=backend, net=net, spec=spec, answer_lengths=answer_lens)


def batch_loss(
    net: Any,
    tq: TrainableQScorer,
    images: Sequence[Any],
    quality: Sequence[float],
    ce_weight: float = 1.0,
    mse_weight: float = 1.0,
    autocast: Any | None = None,
) -> tuple[Any, Any, Any]:
    """The Q-Scorer loss of one batch: ``ce_weight · CE(answer tokens) + mse_weight · MSE(head, normalized MOS)``.

    Args:
        net: ``tq.net`` or its distributed wrapper (the forward runs through it).
        tq: the trainable model (backend, spec, answer lengths).
        images: RGB PIL images.
        quality: their MOS on the spec's range, higher is better.
        ce_weight, mse_weight: loss weights.
        autocast: context-manager factory for the forward (``accelerator.autocast``).

    Returns:
        ``(loss, ce, mse)`` tensors (call ``backward`` on ``loss``). The head output is not clamped.

    Raises:
        DataError: an encoded answer does not end with its score token.
    """
    import torch

    from lmmiqa.training._q_scorer_torch import answer_targets, score_positions
    from lmmiqa.types import Prompt

    spec = tq.spec
    lo, hi = spec.mos_range
    q = np.asarray(quality, dtype=np.float64)
    bins = mos_bins(q, *spec.bins, spec.k) if spec.k > 1 else np.zeros(len(q), dtype=np.int64)
    prompts = [Prompt.simple([im, spec.question], answer_prefix=spec.answer(int(b))) for im, b in zip(images, bins)]
    inputs = tq.backend.encode(prompts)
    ids = inputs["input_ids"]
    rows = torch.arange(ids.shape[0], device=ids.device)
    pos = score_positions(ids, inputs.get("attention_mask"), tq.net.score_ids)
    expected = torch.tensor([spec.token_ids[int(b)] for b in bins], device=ids.device)
    if not bool((ids[rows, pos + 1] == expected).all()):
        raise DataError("an encoded answer does not end with its score token")
    n_ans = torch.tensor([tq.answer_lengths[int(b)] for b in bins], device=ids.device)
    length = ids.shape[1]
    first_needed = int((pos - n_ans + 1).min()) if ce_weight > 0 else int(pos.min())
    keep = length - first_needed
    u_tgt = torch.tensor(normalize_mos(q, lo, hi), dtype=torch.float32, device=ids.device)
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits, u = net(inputs, logits_to_keep=keep)
        mse = torch.mean((u.float() - u_tgt) ** 2)
        if ce_weight > 0:
            mask, targets = answer_targets(ids, pos, n_ans, length - keep, keep)
            ce = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask])
        else:
            ce = torch.zeros((), device=ids.device)
        loss = float(ce_weight) * ce + float(mse_weight) * mse
    return loss, ce, mse


def _precision(torch: Any, config: QScorerTrainConfig) -> tuple[str, str, bool]:
    """(load dtype, accelerate mixed_precision, use cpu)."""
    use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
    dtype = config.dtype
    if dtype == "auto":
        if use_cpu:
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    mixed = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    return dtype, mixed, use_cpu


def train_q_scorer(
    train: Any,
    out: str | os.PathLike[str],
    config: QScorerTrainConfig | None = None,
    *,
    val: Any | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune a Q-Scorer and write its artifact to ``out``.

    Args:
        train: a :class:`lmmiqa.data.Dataset` (e.g. ``load_dataset("koniq10k", root, split="official:train")``)
            or ``(path, MOS)`` pairs (higher is better).
        out: artifact folder; also holds ``checkpoints/`` while training. Rerunning with the same data and
            options resumes from the last checkpoint (or returns at once when training completed).
        config: options (defaults: :class:`QScorerTrainConfig`).
        val: validation data (same forms as ``train``); default: ``config.val_fraction`` of the training groups,
            or none.
        overwrite: start over, discarding the run (checkpoints and artifact) ``out`` holds.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: bad options, ``out`` holds another run and ``overwrite`` is false, or a checkpoint was
            written by another number of processes.
        DataError: empty data, unreadable images, or a checkpoint that does not fit.
    """
    config = config or QScorerTrainConfig()
    torch = require("torch", "hf", "training Q-Scorer")
    require("peft", "train", "training Q-Scorer")
    accelerate = require("accelerate", "hf", "training Q-Scorer")
    transformers = require("transformers", "hf", "training Q-Scorer")

    from lmmiqa.training.q_scorer_model import predict, save_adapter

    # ---------------------------------------------------------------- data
    tr, hib, published, tr_summary = _samples(train, "train")
    if len(tr) == 0:
        raise DataError("no training images")
    va: _Samples | None = None
    va_summary: dict[str, Any] | None = None
    if val is not None:
        va, va_hib, _, va_summary = _samples(val, "val")
        if va_hib != hib:
            raise ConfigError("training and validation labels have different score directions")
    elif config.val_fraction > 0:
        tr_idx, va_idx = _split_val(tr.groups, config.val_fraction, config.seed)
        tr, va = tr.subset(tr_idx), tr.subset(va_idx)
        va_summary = {"held_out_fraction": config.val_fraction, "n": len(va)}
    if config.mos_range is not None:
        lo, hi = config.mos_range
    elif published is not None:
        lo, hi = _check_range(*published)
    else:
        lo, hi = _check_range(float(tr.quality.min()), float(tr.quality.max()))
        log.warning("MOS range not given and not known for this data; using the training min/max [%g, %g]", lo, hi)
    if not hib:  # DMOS: flip onto the same range so that higher is better
        tr.quality = lo + hi - tr.quality
        if va is not None:
            va.quality = lo + hi - va.quality
    bins, bin_source = resolve_bin_range(tr.quality, config.tokens, config.bin_range, (lo, hi), hib)
    fingerprint = _fingerprint(config, tr, va, (lo, hi))

    # ---------------------------------------------------------------- out folder / resume
    out_path = Path(out)
    done_file = out_path / TRAINING_FILE
    ckpt = _latest_checkpoint(out_path)
    previous: dict[str, Any] | None = None
    if done_file.is_file() and (out_path / SPEC_FILE).is_file():
        previous = json.loads(done_file.read_text(encoding="utf-8"))
    elif ckpt is not None:
        previous = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    if previous is not None and (overwrite or previous.get("fingerprint") != fingerprint):
        if not overwrite:
            raise ConfigError(
                f"{out_path} holds a Q-Scorer run with other data or options; pass overwrite=True (CLI: --overwrite) "
                "to start over, or choose another --out"
            )
        previous, ckpt = None, None
        shutil.rmtree(out_path / CHECKPOINT_DIR, ignore_errors=True)
        for name in (SPEC_FILE, TRAINING_FILE):
            (out_path / name).unlink(missing_ok=True)
    if previous is not None and previous.get("complete") and (out_path / SPEC_FILE).is_file():
        log.info("%s already holds this completed run; nothing to do", out_path)
        return TrainResult(out_path, previous.get("history", []), int(previous.get("global_step", 0)), True,
                           previous.get("val_predictions"))

    # ---------------------------------------------------------------- model
    load_dtype, mixed, use_cpu = _precision(torch, config)
    acc = accelerate.Accelerator(cpu=use_cpu, mixed_precision=mixed)
    accelerate.utils.set_seed(config.seed)
    world, rank = acc.num_processes, acc.process_index
    u_train = normalize_mos(tr.quality, lo, hi)
    tq = build_trainable(
        config, device=str(acc.device), dtype=load_dtype, mos_range=(lo, hi), source_higher_is_better=hib,
        bin_range=bins, bin_source=bin_source,
        head_bias=float(u_train.mean()),  # the head starts at the mean training score
        dataset={"train": tr_summary, "val": va_summary, "n_train": len(tr), "n_val": len(va) if va is not None else 0},
    )
    backend, spec, lm, head = tq.backend, tq.spec, tq.net.lm, tq.net.head
    net = tq.net

    lm_params = [p for p in lm.parameters() if p.requires_grad]
    head_params = list(head.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": lm_params, "lr": config.lr},
         {"params": head_params, "lr": config.head_lr if config.head_lr is not None else config.lr}],
        weight_decay=config.weight_decay,
    )
    n_mb = math.ceil(len(tr) / (config.batch_size * world))
    steps_per_epoch = math.ceil(n_mb / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    scheduler = transformers.get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=round(config.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    net, optimizer = acc.prepare(net, optimizer)

    start_epoch, start_mb, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    running = {"loss": 0.0, "ce": 0.0, "mse": 0.0, "n": 0}
    resumed_from = None
    if ckpt is not None:
        saved_world = int(json.loads((ckpt / "state.json").read_text(encoding="utf-8")).get("world_size", 1))
        if saved_world != world:
            raise ConfigError(
                f"the checkpoint in {ckpt} was written by {saved_world} process(es); resume it with the same number "
                f"(this run has {world}), or pass overwrite to start over"
            )
        st = _load_checkpoint(acc, ckpt, net, optimizer, scheduler)
        start_epoch, start_mb, global_step = int(st["epoch"]), int(st["next_mb"]), int(st["global_step"])
        history, running = list(st["history"]), dict(st["running"])
        resumed_from = global_step
        if acc.is_main_process:
            print(f"lmmiqa train q-scorer: resuming {out_path} at step {global_step} (epoch {start_epoch + 1})",
                  file=sys.stderr)

    def state(epoch: int, next_mb: int, complete: bool = False) -> dict[str, Any]:
        return {"fingerprint": fingerprint, "epoch": epoch, "next_mb": next_mb, "global_step": global_step,
                "history": history, "running": running, "complete": complete, "total_steps": total_steps,
                "world_size": world}

    val_pred: dict[str, Any] | None = None

    def validate() -> dict[str, Any] | None:
        nonlocal val_pred
        if va is None:
            return None
        from lmmiqa.evaluation.correlation import plcc, rmse, srcc

        mine = list(range(rank, len(va), world))
        raw = acc.unwrap_model(net)
        raw.eval()
        values: list[float] = []
        chunk = 4 * config.eval_batch_size
        try:
            for s0 in range(0, len(mine), chunk):
                imgs = _load_images([va.paths[i] for i in mine[s0 : s0 + chunk]], config.decode_workers)
                values.extend(predict(raw, backend, imgs, spec, batch_size=config.eval_batch_size,
                                      autocast=acc.autocast).head_norm.tolist())
        finally:
            raw.train()
        parts = accelerate.utils.gather_object(list(zip(mine, values)))
        pred = np.full(len(va), np.nan)
        for i, x in parts:
            pred[i] = x
        mos_pred = lo + pred * (hi - lo)
        val_pred = {"paths": list(va.paths), "mos_pred": mos_pred.tolist()}
        return {"n": len(va), "srcc": srcc(mos_pred, va.quality), "plcc": plcc(mos_pred, va.quality),
                "rmse": rmse(mos_pred, va.quality)}

    bar = None
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    if show and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=global_step, desc="train q-scorer", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    net.train()
    stopped = False
    t_epoch = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            batches = _micro_batches(_epoch_order(len(tr), config.seed, epoch), config.batch_size, world, rank)
            first = start_mb if epoch == start_epoch else 0
            for m in range(first, len(batches)):
                idx = batches[m]
                boundary = (m + 1) % config.grad_accum == 0 or m == len(batches) - 1
                images = _load_images([tr.paths[i] for i in idx], config.decode_workers)
                sync = contextlib.nullcontext() if boundary else acc.no_sync(net)
                with sync:
                    loss, ce, mse = batch_loss(net, tq, images, tr.quality[idx], config.ce_weight, config.mse_weight,
                                               autocast=acc.autocast)
                    acc.backward(loss / config.grad_accum)
                running["loss"] += float(loss.detach())
                running["ce"] += float(ce.detach())
                running["mse"] += float(mse.detach())
                running["n"] += 1
                if not boundary:
                    continue
                if config.max_grad_norm:
                    acc.clip_grad_norm_(lm_params + head_params, float(config.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{running['loss'] / max(running['n'], 1):.4f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2e}", epoch=epoch + 1)
                last_of_epoch = m == len(batches) - 1
                hit_max = config.max_steps is not None and global_step >= int(config.max_steps)
                if not last_of_epoch and (hit_max or (config.checkpoint_every and global_step % config.checkpoint_every == 0)):
                    _save_checkpoint(acc, out_path, net, optimizer, scheduler, state(epoch, m + 1))
                if hit_max and not last_of_epoch:
                    stopped = True
                    break
            if stopped:
                break
            n = max(running["n"], 1)
            entry = {"epoch": epoch + 1, "step": global_step, "train_loss": running["loss"] / n,
                     "train_ce": running["ce"] / n, "train_mse": running["mse"] / n,
                     "lr": scheduler.get_last_lr()[0], "val": validate(),
                     "seconds": time.perf_counter() - t_epoch}
            history.append(entry)
            running = {"loss": 0.0, "ce": 0.0, "mse": 0.0, "n": 0}
            t_epoch = time.perf_counter()
            if acc.is_main_process:
                v = entry["val"]
                vtxt = f", val SRCC {v['srcc']:.4f} PLCC {v['plcc']:.4f} RMSE {v['rmse']:.4g} (n={v['n']})" if v else ""
                msg = f"lmmiqa train q-scorer: epoch {epoch + 1}/{config.epochs} loss {entry['train_loss']:.4f}{vtxt}"
                if bar is None:
                    print(msg, file=sys.stderr)
                else:
                    bar.write(msg, file=sys.stderr)
            _save_checkpoint(acc, out_path, net, optimizer, scheduler, state(epoch + 1, 0))
            if config.max_steps is not None and global_step >= int(config.max_steps) and epoch + 1 < config.epochs:
                stopped = True
                break
    finally:
        if bar is not None:
            bar.close()

    complete = not stopped
    if complete and va is not None and val_pred is None:
        validate()
    training = {
        "fingerprint": fingerprint,
        "complete": complete,
        "global_step": global_step,
        "total_steps": total_steps,
        "config": json_safe(asdict(config)),
        "history": history,
        "val_predictions": val_pred,
        "world_size": world,
        "mixed_precision": mixed,
    }
    if acc.is_main_process:
        save_adapter(out_path, acc.unwrap_model(net).lm, acc.unwrap_model(net).head, spec, training)
        if complete and not config.keep_checkpoints:
            shutil.rmtree(out_path / CHECKPOINT_DIR, ignore_errors=True)
    acc.wait_for_everyone()
    return TrainResult(out_path, history, global_step, complete, val_pred, resumed_from, acc.is_main_process)
