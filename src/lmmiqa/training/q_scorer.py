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

The loop is the shared trainer (:func:`lmmiqa.training.trainer.fit`, one trainer for every trainable method):
:class:`accelerate.Accelerator` (so ``accelerate launch -m lmmiqa.cli train q-scorer ...`` trains on several GPUs
with DDP; a plain run is one process, CPU in tests), AdamW, a warm-up + cosine/linear/constant schedule, gradient
accumulation and clipping, optional gradient checkpointing, bf16 autocast on GPUs (LoRA, token rows and head
kept in float32), a seeded data order, validation (SRCC/PLCC/RMSE) after every epoch, rolling checkpoints that a
rerun of the same command resumes exactly, and a progress bar. This module is Q-Scorer's *head*
(:class:`QScorerHead`): its recipe options are the fields of :class:`QScorerTrainConfig` (loss weights, LoRA
rank/targets, which modules train — ``tune_projector`` —, the head's shape and learning rate); a published recipe
is a set of values for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.training.q_scorer_model import (
    LORA_TARGET,
    SPEC_FILE,
    HeadConfig,
    LoraSettings,
    QScorerSpec,
    _check_k,
    _check_range,
    data_bin_range,
    mos_bins,
    normalize_mos,
)
from lmmiqa.training.trainer import (
    CHECKPOINT_DIR,  # noqa: F401 - re-exported (the checkpoint folder name inside an adapter folder)
    DEFAULT_MODEL,
    TrainConfig,
    TrainingHead,
    TrainResult,
    fit,
    micro_batches,
    samples_from,
)
from lmmiqa.training.trainer import Samples as _Samples

log = logging.getLogger(__name__)

# names earlier versions defined here
_samples = samples_from
_micro_batches = micro_batches
__all__ = [
    "DEFAULT_MODEL",
    "QScorerHead",
    "QScorerTrainConfig",
    "TrainResult",
    "batch_loss",
    "build_trainable",
    "resolve_bin_range",
    "train_q_scorer",
]


@dataclass
class QScorerTrainConfig(TrainConfig):
    """Options of ``lmmiqa train q-scorer``: the shared trainer options (:class:`~lmmiqa.training.trainer.TrainConfig`:
    model, epochs, batch size, learning rate and schedule, runtime) plus Q-Scorer's recipe (defaults follow the
    reference recipe where it has one: 3 epochs, lr 2e-5, cosine).

    Attributes:
        tokens: number of score tokens, 1 (``<score>``) or 5 (``<score1>``..``<score5>``).
        head_lr: learning rate of the head (None = ``lr``, the rate of LoRA and token rows).
        ce_weight, mse_weight: loss weights of the answer cross-entropy and the head MSE.
        lora_r, lora_alpha, lora_dropout, lora_target: LoRA settings (target: regex over module names).
        tune_projector: also train the vision-language projector (the vision tower stays frozen).
        head_dims, head_activation, head_dropout: the MLP head (reference 2048, 1024, ReLU).
        mos_range: ``(lo, hi)`` of the MOS; default: the dataset's published range, else the training min/max.
        bin_range: ``(lo, hi)`` cut into the k score tokens' equal-width bins, in the labels' own units; default
            (None): the min–max of the training split's MOS, as Q-Align does (bins over a published range the
            data does not fill leave tokens without images). Stored in the artifact.
        tune_vision: train the vision encoder and its projector in full (the official recipe: mPLUG-Owl2's ViT and
            visual abstractor).
        train_lm_head: train the whole LM head (the official recipe's code does).
        train_token_rows: train the score tokens' embedding rows (lmmiqa; the official input rows stay as set).
        token_lstrip: the score tokens absorb the space before them (lmmiqa; the official tokens do not).
        head_target: ``normalized`` (lmmiqa: the head predicts ``(MOS − lo)/(hi − lo)``, the MSE is in those units)
            or ``raw`` (the official recipe: the MOS itself, squared error in MOS units).
        loss_clamp: clamp the head output to ``(lo, hi)`` inside the loss (the official recipe: (0, 5); lmmiqa: None,
            a clamp in the loss kills the gradient outside the range) — also the inference clamp when set.
        image_position: ``before`` (image, then the question: lmmiqa) or ``after`` (the official prompt).
        train_system_prompt: system prompt of the training prompts (the official recipe: vicuna_v1's; inference
            prompts have none, as the official evaluation).
        preset: name of the training recipe these values come from (``lmmiqa train q-scorer --preset``;
            :mod:`lmmiqa.training.q_scorer_recipes`), recorded in the artifact; None: lmmiqa's defaults.
    """

    tokens: int = 5
    head_lr: float | None = None
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
    tune_vision: bool = False
    train_lm_head: bool = False
    train_token_rows: bool = True
    token_lstrip: bool = True
    head_target: str = "normalized"
    loss_clamp: tuple[float, float] | None = None
    image_position: str = "before"
    train_system_prompt: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from lmmiqa.training.q_scorer_model import HEAD_TARGETS, IMAGE_POSITIONS

        if self.head_target not in HEAD_TARGETS:
            raise ConfigError(f"unknown head_target {self.head_target!r}; known: {', '.join(HEAD_TARGETS)}")
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"unknown image_position {self.image_position!r}; known: {', '.join(IMAGE_POSITIONS)}")
        if self.loss_clamp is not None:
            self.loss_clamp = _check_range(*self.loss_clamp)
        self.tokens = _check_k(self.tokens)
        if self.head_lr is not None and float(self.head_lr) <= 0:
            raise ConfigError("learning rates must be > 0")
        if float(self.ce_weight) < 0 or float(self.mse_weight) < 0 or float(self.ce_weight) + float(self.mse_weight) == 0:
            raise ConfigError("ce_weight and mse_weight must be >= 0 and not both 0")
        if self.mos_range is not None:
            self.mos_range = _check_range(*self.mos_range)
        if self.bin_range is not None:
            self.bin_range = _check_range(*self.bin_range)
        self.head_dims = tuple(int(d) for d in self.head_dims)
        # validated by their own dataclasses
        self.head_config()
        self.lora_settings()

    def head_config(self) -> HeadConfig:
        return HeadConfig(self.head_dims, self.head_activation, self.head_dropout)

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target, self.tune_projector,
                            self.tune_vision, self.train_lm_head, self.train_token_rows)


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


def _answer_lengths(backend: Any, spec: QScorerSpec) -> list[int]:
    """Token count of each training answer as a continuation of the generation prompt (checked to end with the
    score token, and not to merge with the prompt)."""
    tok = backend.tokenizer
    conv = [{"role": "user", "content": [{"type": "text", "text": spec.question}]}]
    ctx = backend.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ctx_ids = tok.encode(ctx, add_special_tokens=False)
    join = getattr(backend.processor, "join_answer_prefix", None)  # a family's "ASSISTANT:" + " answer"
    out = []
    for i, tid in enumerate(spec.token_ids):
        full = tok.encode(join(ctx, spec.answer(i)) if callable(join) else ctx + spec.answer(i),
                          add_special_tokens=False)
        if full[: len(ctx_ids)] != ctx_ids or full[-1] != tid:
            raise DataError(
                f"the answer {spec.answer(i)!r} does not tokenize as a continuation of the prompt ending in the "
                f"score token: {tok.convert_ids_to_tokens(full[-12:])}"
            )
        out.append(len(full) - len(ctx_ids))
    return out



# --------------------------------------------------------------------------- the model being trained


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
    token_ids, n_base = add_score_tokens(backend.tokenizer, base, config.tokens, lstrip=config.token_lstrip)
    hidden = int(base.get_output_embeddings().in_features)
    spec = QScorerSpec(
        base_model=config.model, k=config.tokens, mos_range=mos_range, hidden_size=hidden, token_ids=tuple(token_ids),
        n_base_tokens=n_base, head=config.head_config(), lora=config.lora_settings(),
        source_higher_is_better=source_higher_is_better, dataset=dataset, bin_range=bin_range, bin_source=bin_source,
        image_position=config.image_position, head_target=config.head_target, score_clamp=config.loss_clamp,
        token_lstrip=config.token_lstrip, train_system_prompt=config.train_system_prompt, recipe=config.preset,
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
    """The Q-Scorer loss of one batch: ``ce_weight · CE(answer tokens) + mse_weight · MSE(head, target)`` (the target
    is the normalized MOS, or the MOS for a ``raw`` head; the head output is clamped first when the spec says so —
    the official recipe: ``0.05 · (CE + Σ (clamp(head, 0, 5) − MOS)² / B)``).

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
    q = np.asarray(quality, dtype=np.float64)
    bins = mos_bins(q, *spec.bins, spec.k) if spec.k > 1 else np.zeros(len(q), dtype=np.int64)
    prompts = [Prompt.simple(spec.prompt_parts(im), system=spec.train_system_prompt, answer_prefix=spec.answer(int(b)))
               for im, b in zip(images, bins)]
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
    u_tgt = torch.tensor(spec.mos_to_head(q), dtype=torch.float32, device=ids.device)
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits, u = net(inputs, logits_to_keep=keep)
        pred = u.float()
        if spec.score_clamp is not None:  # the official recipe clamps inside the loss (no gradient outside)
            pred = pred.clamp(min=spec.score_clamp[0], max=spec.score_clamp[1])
        mse = torch.mean((pred - u_tgt) ** 2)
        if ce_weight > 0:
            mask, targets = answer_targets(ids, pos, n_ans, length - keep, keep)
            ce = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask])
        else:
            ce = torch.zeros((), device=ids.device)
        loss = float(ce_weight) * ce + float(mse_weight) * mse
    return loss, ce, mse


class QScorerHead(TrainingHead):
    """Q-Scorer on the shared trainer: score tokens + LoRA + an MLP regression head (METHODS §4)."""

    name: ClassVar[str] = "q-scorer"
    spec_file: ClassVar[str] = SPEC_FILE
    loss_parts: ClassVar[tuple[str, ...]] = ("ce", "mse")

    def __init__(self, config: QScorerTrainConfig) -> None:
        super().__init__(config)
        self.config: QScorerTrainConfig = config
        self.mos_range: tuple[float, float] = (1.0, 5.0)
        self.higher_is_better = True
        self.bins: tuple[float, float] | None = None
        self.bin_source = "mos_range"
        self.head_bias = 0.5
        self.tq: TrainableQScorer | None = None

    def setup(self, train: _Samples, val: _Samples | None, higher_is_better: bool,
              published_range: tuple[float, float] | None) -> None:
        config = self.config
        if config.mos_range is not None:
            lo, hi = config.mos_range
        elif published_range is not None:
            lo, hi = _check_range(*published_range)
        else:
            lo, hi = _check_range(float(train.quality.min()), float(train.quality.max()))
            log.warning("MOS range not given and not known for this data; using the training min/max [%g, %g]", lo, hi)
        if not higher_is_better:  # DMOS: flip onto the same range so that higher is better
            train.quality = lo + hi - train.quality
            if val is not None:
                val.quality = lo + hi - val.quality
        if config.loss_clamp is not None and config.head_target == "raw":
            c_lo, c_hi = config.loss_clamp
            q_lo, q_hi = float(np.min(train.quality)), float(np.max(train.quality))
            if q_lo < c_lo or q_hi > c_hi:
                raise ConfigError(
                    f"the training scores span [{q_lo:g}, {q_hi:g}], outside the loss clamp [{c_lo:g}, {c_hi:g}] of a raw "
                    "head (the official recipe expects MOS on a 0-5 scale): rescale the labels or change loss_clamp"
                )
        self.mos_range, self.higher_is_better = (lo, hi), higher_is_better
        self.bins, self.bin_source = resolve_bin_range(train.quality, config.tokens, config.bin_range, (lo, hi),
                                                       higher_is_better)
        # the head starts at the mean training score (in the head's units)
        mean = float(np.mean(train.quality))
        self.head_bias = mean if config.head_target == "raw" else float(normalize_mos(mean, lo, hi))

    def fingerprint(self) -> dict[str, Any]:
        return {"range": list(self.mos_range)}

    def build(self, *, device: str, dtype: str, dataset: dict[str, Any]) -> Any:
        require("peft", "train", "training Q-Scorer")
        self.tq = build_trainable(
            self.config, device=device, dtype=dtype, mos_range=self.mos_range,
            source_higher_is_better=self.higher_is_better, bin_range=self.bins, bin_source=self.bin_source,
            head_bias=self.head_bias, dataset=dataset,
        )
        return self.tq.net

    def param_groups(self, net: Any) -> list[dict[str, Any]]:
        c = self.config
        return [{"params": [p for p in net.lm.parameters() if p.requires_grad], "lr": c.lr},
                {"params": list(net.head.parameters()), "lr": c.head_lr if c.head_lr is not None else c.lr}]

    def loss(self, net: Any, images: Sequence[Any], train: _Samples, idx: np.ndarray,
             autocast: Callable[[], Any] | None) -> tuple[Any, dict[str, Any]]:
        assert self.tq is not None
        loss, ce, mse = batch_loss(net, self.tq, images, train.quality[idx], self.config.ce_weight,
                                   self.config.mse_weight, autocast=autocast)
        return loss, {"ce": ce, "mse": mse}

    def predict(self, net: Any, images: Sequence[Any], val: _Samples, idx: Sequence[int],
                autocast: Callable[[], Any] | None) -> np.ndarray:
        from lmmiqa.training.q_scorer_model import predict

        assert self.tq is not None
        out = predict(net, self.tq.backend, images, self.tq.spec, batch_size=self.config.eval_batch_size,
                      autocast=autocast)
        return out.head_norm[:, None]

    def metrics(self, pred: np.ndarray, val: _Samples) -> tuple[dict[str, Any], dict[str, Any]]:
        from lmmiqa.evaluation.correlation import plcc, rmse, srcc

        assert self.tq is not None
        mos_pred = self.tq.spec.head_to_mos(pred[:, 0])
        metrics = {"n": len(val), "srcc": srcc(mos_pred, val.quality), "plcc": plcc(mos_pred, val.quality),
                   "rmse": rmse(mos_pred, val.quality)}
        return metrics, {"paths": list(val.paths), "mos_pred": mos_pred.tolist()}

    def format_metrics(self, m: dict[str, Any]) -> str:
        return f"SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f} RMSE {m['rmse']:.4g} (n={m['n']})"

    def save(self, out: Path, net: Any, training: dict[str, Any]) -> None:
        from lmmiqa.training.q_scorer_model import save_adapter

        assert self.tq is not None
        save_adapter(out, net.lm, net.head, self.tq.spec, training)


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
        :class:`~lmmiqa.training.trainer.TrainResult` (``val_predictions``: ``paths`` and unclamped ``mos_pred``).

    Raises:
        ConfigError: bad options, ``out`` holds another run and ``overwrite`` is false, or a checkpoint was
            written by another number of processes.
        DataError: empty data, unreadable images, or a checkpoint that does not fit.
    """
    config = config or QScorerTrainConfig()
    require("peft", "train", "training Q-Scorer")
    return fit(QScorerHead(config), train, out, val=val, overwrite=overwrite)
