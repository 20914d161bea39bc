"""Level fine-tuning: Q-Align's recipe for any method's levels (Wu et al., "Q-Align: Teaching LMMs for Visual
Scoring via Discrete Text-Defined Levels", ICML 2024) — METHODS §6.

Each training image's MOS becomes a level by equal-width bins over the training split's MOS min–max (Q-Align); the
model is trained so that, at a method's own answer position, its next token is that level — cross-entropy on the
candidate token (one-hot) or on a soft distribution over the neighbouring levels (``target="soft"``). The
prompts are built by the methods' OWN prompt builders (:meth:`lmmiqa.methods.q_align.QAlign.build_prompt`,
:meth:`lmmiqa.methods.standard_guided.StandardGuided.build_prompt`, the AgenticIQA summarizer's
:func:`lmmiqa.methods.agentic.summarizer.level_prompt`) and encoded by the same transformers backend that scores,
and the candidate token ids are the backend's own (:meth:`level_token_ids`), so training matches inference
exactly. Several methods train in one run (the losses are averaged).

Methods (:data:`LEVEL_METHODS`): ``q-align`` (the five words; also IQARAG's and the LEAF teacher's prompts),
``standard-guided`` (LLM-IQA's digits ``1..K``, ``levels`` K), ``agentic`` (the AgenticIQA summarizer's letters
A–E, asked without tool evidence), ``leaf-pairs`` (the LEAF teacher's comparison prompt, two images answered
``A``/``B``: each image of a batch is paired with the next one, and the answer is the one with the higher MOS).

This is a *head* of the shared trainer (:func:`lmmiqa.training.trainer.fit`): checkpoints, resume, progress and
validation come from there. LoRA (peft) for real checkpoints, full fine-tuning for small models
(``tuning="auto"``). The artifact is a merged model folder (weights + the processor's files + ``levels.json``)
that loads with ``lmmiqa score --model FOLDER``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.training.trainer import Samples, TrainConfig, TrainingHead, TrainResult, fit, write_json

LEVEL_METHODS = ("q-align", "standard-guided", "agentic", "leaf-pairs")
#: the method trained on two-image comparisons (LEAFs pair prompt) rather than one images level
PAIR_METHOD = "leaf-pairs"
TARGETS = ("onehot", "soft")
TUNINGS = ("auto", "lora", "full")
SPEC_FILE = "levels.json"
#: models with fewer parameters than this are fully fine-tuned under ``tuning="auto"``
FULL_TUNING_MAX_PARAMS = 200_000_000
LEVELS_LORA_TARGET = r".*(language_model|model\.layers).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclass
class LevelsTrainConfig(TrainConfig):
    """Options of ``lmmiqa train levels``: the shared trainer options plus the level recipe.

    Attributes:
        methods: the method prompts trained (:data:`LEVEL_METHODS`), one or several.
        levels: K of ``standard-guided`` (3, 5, 7 or 9).
        target: ``onehot`` (the level of the MOS) or ``soft`` (a Gaussian over neighbouring levels, width
            ``soft_sigma`` levels).
        soft_sigma: width of the soft target in levels.
        tuning: ``lora``, ``full`` or ``auto`` (full below :data:`FULL_TUNING_MAX_PARAMS` parameters, else LoRA).
        lora_r, lora_alpha, lora_dropout, lora_target: LoRA settings (target: regex over module names).
        bin_range: ``(lo, hi)`` cut into equal-width level bins; None: the training split's MOS min–max (Q-Align).
        max_pixels: pixel budget of the images given to the processor (None: the backend's default).
        vision_lr: learning rate of the vision tower and its projector (None: ``lr``; 0: frozen, e.g. a tower
            already trained to see quality). Full fine-tuning only (LoRA adapts the language model).
    """

    methods: tuple[str, ...] = ("q-align",)
    levels: int = 5
    target: str = "onehot"
    soft_sigma: float = 0.5
    tuning: str = "auto"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target: str = LEVELS_LORA_TARGET
    bin_range: tuple[float, float] | None = None
    max_pixels: int | None = None
    vision_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from lmmiqa.levels import standard_scale

        self.methods = tuple(self.methods)
        if not self.methods:
            raise ConfigError(f"train levels needs at least one method; known: {', '.join(LEVEL_METHODS)}")
        for m in self.methods:
            if m not in LEVEL_METHODS:
                raise ConfigError(f"unknown level method {m!r}; known: {', '.join(LEVEL_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"a method is listed twice: {', '.join(self.methods)}")
        standard_scale(int(self.levels))
        self.levels = int(self.levels)
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; known: {', '.join(TARGETS)}")
        if float(self.soft_sigma) <= 0:
            raise ConfigError(f"soft_sigma must be > 0, got {self.soft_sigma}")
        if self.tuning not in TUNINGS:
            raise ConfigError(f"unknown tuning {self.tuning!r}; known: {', '.join(TUNINGS)}")
        if int(self.lora_r) < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.bin_range is not None:
            lo, hi = (float(x) for x in self.bin_range)
            if not hi > lo:
                raise ConfigError(f"bin_range must be (lo, hi) with hi > lo, got {self.bin_range}")
            self.bin_range = (lo, hi)
        if self.vision_lr is not None:
            if float(self.vision_lr) < 0:
                raise ConfigError(f"vision_lr must be >= 0, got {self.vision_lr}")
            if self.tuning == "lora":
                raise ConfigError("vision_lr applies to full fine-tuning (tuning 'full' or 'auto'); LoRA trains the "
                                  "language model only")
            self.vision_lr = float(self.vision_lr)


#: module-name pieces of a VLM's vision tower and projector (Qwen ``visual``, Gemma/LLaVA ``vision_tower`` and
#: ``multi_modal_projector``)
VISION_MODULES = ("visual.", "vision_tower.", "vision_model.", "multi_modal_projector.")


def is_vision_param(name: str) -> bool:
    """Whether a parameter name belongs to the vision tower or its projector."""
    return any(piece in name for piece in VISION_MODULES)


def level_bins(quality: Any, lo: float, hi: float, k: int) -> np.ndarray:
    """Level index ``0..k-1`` (0 = worst) of each MOS: equal-width bins of ``[lo, hi]`` (Q-Align), clipped."""
    q = np.asarray(quality, dtype=np.float64)
    if k == 1 or hi <= lo:
        return np.zeros(q.shape, dtype=np.int64)
    return np.clip(np.floor((q - lo) / (hi - lo) * k), 0, k - 1).astype(np.int64)


def level_targets(bins: np.ndarray, k: int, kind: str, sigma: float) -> np.ndarray:
    """Target distributions ``[n, k]`` over the levels: one-hot, or a Gaussian of width ``sigma`` levels around
    the bin (normalised), Q-Align's soft variant."""
    b = np.asarray(bins, dtype=np.int64)
    if kind == "onehot":
        return np.eye(k)[b]
    if kind == "soft":
        d = np.arange(k)[None, :] - b[:, None]
        w = np.exp(-0.5 * (d / float(sigma)) ** 2)
        return w / w.sum(axis=1, keepdims=True)
    raise ConfigError(f"unknown target {kind!r}; known: {', '.join(TARGETS)}")


class _Prompter:
    """One method's prompt builder and level scale (the method's own classes, sharing the training backend)."""

    def __init__(self, method: str, backend: Any, config: LevelsTrainConfig) -> None:
        from lmmiqa.levels import LETTER_SCALE

        self.method = method
        if method == "q-align":
            from lmmiqa.methods.q_align import QAlign, QAlignConfig

            self.scorer: Any = QAlign(QAlignConfig(model=config.model), backend=backend)
            self.scale = self.scorer.level_scale
        elif method == "standard-guided":
            from lmmiqa.methods.standard_guided import StandardGuided, StandardGuidedConfig

            self.scorer = StandardGuided(StandardGuidedConfig(model=config.model, levels=config.levels), backend=backend)
            self.scale = self.scorer.level_scale
        elif method == "agentic":
            self.scorer = None
            self.scale = LETTER_SCALE
        elif method == PAIR_METHOD:
            from lmmiqa.levels import LevelScale

            self.scorer = None
            # the answers in the order the comparison reads them: index 0 = " A" (the first image is better)
            self.scale = LevelScale(name="leaf-pairs", tokens=("A", "B"), values=(0.0, 1.0), words=("first", "second"))
        else:
            raise ConfigError(f"unknown level method {method!r}; known: {', '.join(LEVEL_METHODS)}")

    @property
    def k(self) -> int:
        return len(self.scale.tokens)

    def prompt(self, image: Any) -> Any:
        if self.scorer is not None:
            return self.scorer.build_prompt(image)
        from lmmiqa.methods.agentic.state import ItemState
        from lmmiqa.methods.agentic.summarizer import level_prompt
        from lmmiqa.prompts import AGENTIC_DEFAULT_QUERY

        return level_prompt(ItemState(key="<train>", image=image, query=AGENTIC_DEFAULT_QUERY), {}, False)

    def pair_prompt(self, first: Any, second: Any) -> Any:
        """The LEAF teacher's comparison prompt (:func:`lmmiqa.distill.teacher.judge_pairs_prompt`'s)."""
        from lmmiqa.distill.teacher import _pair_prompt

        return _pair_prompt(first, second)

    def candidate_ids(self, backend: Any, prompts: Sequence[Any]) -> Any:
        """``[B, k]`` token ids of the levels (worst first) at each prompt's answer position.

        Raises:
            ConfigError: a level is not a single token in that context (the pieces are listed).
        """
        import torch

        from lmmiqa.errors import TokenizationError

        if self.method == PAIR_METHOD:
            from lmmiqa.distill.teacher import pair_candidates

            cands = list(pair_candidates())  # " A", " B"
        else:
            cands = list(self.scale.candidates(prompts[0].answer_prefix))
        try:
            ids = backend.level_token_ids(list(prompts), cands)
        except TokenizationError as err:
            raise ConfigError(f"train levels: {self.method}'s level candidates must be single tokens: {err}") from err
        return torch.tensor(ids, dtype=torch.long)


def answer_logprobs(net: Any, backend: Any, prompter: _Prompter, prompts: Sequence[Any],
                    autocast: Callable[[], Any] | None = None) -> Any:
    """Log-probabilities ``[B, k]`` (over the whole vocabulary, not renormalised) of the method's answers at the
    answer position of ``prompts``, through ``net`` (the forward the backend's scoring runs)."""
    import torch

    inputs = backend.encode(list(prompts))
    ids = prompter.candidate_ids(backend, prompts).to(inputs["input_ids"].device)
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits = net(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 1, ids)


def candidate_logprobs(net: Any, backend: Any, prompter: _Prompter, images: Sequence[Any],
                       autocast: Callable[[], Any] | None = None) -> Any:
    """Log-probabilities ``[B, k]`` of the method's levels for one image per prompt (its own prompt builder)."""
    return answer_logprobs(net, backend, prompter, [prompter.prompt(im) for im in images], autocast)


def pair_logprobs(net: Any, backend: Any, prompter: _Prompter, first: Sequence[Any], second: Sequence[Any],
                  autocast: Callable[[], Any] | None = None) -> Any:
    """Log-probabilities ``[B, 2]`` of ``" A"`` (the first image is better) and ``" B"`` at the answer position of
    the LEAF comparison prompt showing ``first[i]`` then ``second[i]``."""
    prompts = [prompter.pair_prompt(a, b) for a, b in zip(first, second)]
    return answer_logprobs(net, backend, prompter, prompts, autocast)


def pair_partners(n: int) -> np.ndarray:
    """The image each validation image is compared with (the next one, cyclically): deterministic, so that
    :meth:`LevelsHead.metrics` knows the pairs :meth:`LevelsHead.predict` asked about."""
    return (np.arange(n) + 1) % max(n, 1)


class LevelsHead(TrainingHead):
    """Q-Align's level recipe on the shared trainer, for one or several methods' prompts."""

    name: ClassVar[str] = "levels"
    spec_file: ClassVar[str] = SPEC_FILE

    def __init__(self, config: LevelsTrainConfig) -> None:
        super().__init__(config)
        self.config: LevelsTrainConfig = config
        self.bins: tuple[float, float] = (1.0, 5.0)
        self.higher_is_better = True
        self.backend: Any = None
        self.prompters: list[_Prompter] = []
        self.tuning = config.tuning

    @property
    def loss_parts(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.config.methods)

    def setup(self, train: Samples, val: Samples | None, higher_is_better: bool,
              published_range: tuple[float, float] | None) -> None:
        if not higher_is_better:  # DMOS: flip so that the best level is the highest
            train.quality = -train.quality
            if val is not None:
                val.quality = -val.quality
        self.higher_is_better = higher_is_better
        if self.config.bin_range is not None:
            lo, hi = self.config.bin_range
            self.bins = (lo, hi) if higher_is_better else (-hi, -lo)
        else:
            lo, hi = float(np.min(train.quality)), float(np.max(train.quality))
            if not hi > lo:
                raise DataError(f"every training score is {lo:g}: levels need scores that differ")
            self.bins = (lo, hi)

    def fingerprint(self) -> dict[str, Any]:
        return {"bins": list(self.bins)}

    def build(self, *, device: str, dtype: str, dataset: dict[str, Any]) -> Any:
        import torch

        from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

        c = self.config
        opts: dict[str, Any] = {}
        if c.max_pixels is not None:
            opts["max_pixels"] = int(c.max_pixels)
        self.backend = TransformersBackend(TransformersConfig(
            model=c.model, device=device, dtype=dtype, attn_implementation=c.attn_implementation,
            local_files_only=c.local_files_only, max_batch=max(c.eval_batch_size, c.batch_size), **opts))
        base = self.backend.model
        if hasattr(base, "config"):
            base.config.use_cache = False
        if c.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        n_params = sum(p.numel() for p in base.parameters())
        self.tuning = c.tuning if c.tuning != "auto" else ("full" if n_params < FULL_TUNING_MAX_PARAMS else "lora")
        if self.tuning == "full":
            net = base
            frozen_vision = c.vision_lr == 0
            for name, p in net.named_parameters():
                p.requires_grad_(not (frozen_vision and is_vision_param(name)))
                if p.dtype != torch.float32:
                    p.data = p.data.float()
        else:
            peft = require("peft", "train", "LoRA level training")
            lcfg = peft.LoraConfig(r=int(c.lora_r), lora_alpha=float(c.lora_alpha), lora_dropout=float(c.lora_dropout),
                                   target_modules=c.lora_target, bias="none")
            net = peft.get_peft_model(base, lcfg)
            for p in net.parameters():
                if p.requires_grad and p.dtype != torch.float32:
                    p.data = p.data.float()
        self.backend.model = net
        self.prompters = [_Prompter(m, self.backend, c) for m in c.methods]
        self.dataset = dataset
        net.train()
        return net

    def param_groups(self, net: Any) -> list[dict[str, Any]]:
        """Every trainable parameter at ``lr``; the vision tower at ``vision_lr`` when that is set."""
        c = self.config
        if self.tuning != "full" or c.vision_lr is None:
            return super().param_groups(net)
        vision, rest = [], []
        for name, p in net.named_parameters():
            if p.requires_grad:
                (vision if is_vision_param(name) else rest).append(p)
        groups = [{"params": rest, "lr": c.lr}]
        if vision:
            groups.append({"params": vision, "lr": c.vision_lr})
        return groups

    def _targets(self, prompter: _Prompter, quality: np.ndarray, device: Any) -> Any:
        import torch

        b = level_bins(quality, *self.bins, prompter.k)
        t = level_targets(b, prompter.k, self.config.target, self.config.soft_sigma)
        return torch.tensor(t, dtype=torch.float32, device=device)

    def loss(self, net: Any, images: Sequence[Any], train: Samples, idx: np.ndarray,
             autocast: Callable[[], Any] | None) -> tuple[Any, dict[str, Any]]:
        terms: dict[str, Any] = {}
        for pr in self.prompters:
            if pr.method == PAIR_METHOD:
                term = self._pair_loss(net, pr, images, train.quality[idx], autocast)
                if term is not None:
                    terms[pr.method] = term
                continue
            lp = candidate_logprobs(net, self.backend, pr, images, autocast)
            tgt = self._targets(pr, train.quality[idx], lp.device)
            terms[pr.method] = -(tgt * lp).sum(dim=1).mean()
        if not terms:  # a batch of a pairs-only run with no two distinct MOS: a zero loss on the graph
            first = next(p for p in net.parameters() if p.requires_grad)
            return first.sum() * 0.0, {}
        total = sum(terms.values()) / len(terms)
        return total, terms

    def _pair_loss(self, net: Any, pr: _Prompter, images: Sequence[Any], quality: np.ndarray,
                   autocast: Callable[[], Any] | None) -> Any:
        """Cross-entropy of the better image's letter, each image paired with the next one of the (shuffled) batch;
        pairs of equal MOS are left out. None when no pair differs."""
        import torch

        n = len(images)
        if n < 2:
            return None
        partner = (np.arange(n) + 1) % n
        keep = [i for i in range(n) if quality[i] != quality[partner[i]]]
        if not keep:
            return None
        lp = pair_logprobs(net, self.backend, pr, [images[i] for i in keep], [images[partner[i]] for i in keep],
                           autocast)
        target = torch.tensor([0 if quality[i] > quality[partner[i]] else 1 for i in keep], device=lp.device)
        return -lp.gather(1, target[:, None]).mean()

    def predict(self, net: Any, images: Sequence[Any], val: Samples, idx: Sequence[int],
                autocast: Callable[[], Any] | None) -> np.ndarray:
        import torch

        from lmmiqa.training.trainer import load_images

        cols = []
        for pr in self.prompters:
            if pr.method == PAIR_METHOD:  # P(this image better than its partner), renormalised over A/B
                partner = pair_partners(len(val))[np.asarray(idx, dtype=np.int64)]
                others = load_images([val.paths[int(j)] for j in partner], self.config.decode_workers)
                lp = pair_logprobs(net, self.backend, pr, images, others, autocast)
                cols.append(torch.softmax(lp, dim=1)[:, 0].cpu().numpy().astype(np.float64))
                continue
            lp = candidate_logprobs(net, self.backend, pr, images, autocast)
            p = torch.softmax(lp, dim=1).cpu().numpy().astype(np.float64)
            cols.append(p @ np.asarray(pr.scale.values, dtype=np.float64))
        return np.stack(cols, axis=1)

    def metrics(self, pred: np.ndarray, val: Samples) -> tuple[dict[str, Any], dict[str, Any]]:
        from lmmiqa.evaluation.correlation import plcc, srcc

        m: dict[str, Any] = {"n": len(val)}
        stored: dict[str, Any] = {"paths": list(val.paths)}
        q = val.quality if self.higher_is_better else -val.quality
        for j, pr in enumerate(self.prompters):
            if pr.method == PAIR_METHOD:
                # pairs: how often the comparison picks the image with the higher MOS; SRCC/PLCC of P(first
                # better) with the MOS difference
                dq = q - q[pair_partners(len(val))]
                used = dq != 0
                p_first = pred[:, j]
                m[f"{pr.method}_accuracy"] = float(np.mean((p_first[used] > 0.5) == (dq[used] > 0))) if used.any() else None
                m[f"{pr.method}_srcc"] = srcc(p_first, dq)
                m[f"{pr.method}_plcc"] = plcc(p_first, dq)
                stored[pr.method] = pred[:, j].tolist()
                continue
            s = pred[:, j] if self.higher_is_better else -pred[:, j]
            m[f"{pr.method}_srcc"] = srcc(s, q)
            m[f"{pr.method}_plcc"] = plcc(s, q)
            stored[pr.method] = pred[:, j].tolist()
        return m, stored

    def format_metrics(self, m: dict[str, Any]) -> str:
        def num(x: Any) -> str:
            return "nan" if x is None else f"{x:.4f}"

        parts = []
        for pr in self.prompters:
            text = f"{pr.method} SRCC {num(m[pr.method + '_srcc'])} PLCC {num(m[pr.method + '_plcc'])}"
            if pr.method == PAIR_METHOD:
                text += f" accuracy {num(m[pr.method + '_accuracy'])}"
            parts.append(text)
        return "; ".join(parts) + f" (n={m['n']})"

    def save(self, out: Path, net: Any, training: dict[str, Any]) -> None:
        """The merged model folder (LoRA merged into the weights), the processor's files, ``training.json`` and
        ``levels.json`` (written last)."""
        import copy

        out.mkdir(parents=True, exist_ok=True)
        model = net
        if self.tuning == "lora":
            model = copy.deepcopy(net).merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        self.backend.processor.save_pretrained(out)
        write_json(out / "training.json", training)
        spec = {
            "kind": "levels", "base_model": self.config.model, "methods": list(self.config.methods),
            "levels": self.config.levels, "target": self.config.target, "tuning": self.tuning,
            "bins": list(self.bins), "higher_is_better": self.higher_is_better,
            "scales": {pr.method: pr.scale.to_dict() for pr in self.prompters},
            "complete": bool(training.get("complete")),
        }
        write_json(out / SPEC_FILE, spec)


def train_levels(
    train: Any,
    out: str | os.PathLike[str],
    config: LevelsTrainConfig | None = None,
    *,
    val: Any | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune a VLM on the levels of its training images' MOS (Q-Align's recipe) and export a merged model.

    Args:
        train: a :class:`lmmiqa.data.Dataset` or ``(path, MOS)`` pairs (higher is better).
        out: the merged model folder (also holds ``checkpoints/`` while training; a rerun resumes).
        config: options (defaults: :class:`LevelsTrainConfig`).
        val: validation data (same forms), or ``config.val_fraction`` of the training groups.
        overwrite: start over, discarding the run ``out`` holds.

    Returns:
        :class:`~lmmiqa.training.trainer.TrainResult` (``val_predictions``: ``paths`` and each method's scores).
    """
    return fit(LevelsHead(config or LevelsTrainConfig()), train, out, val=val, overwrite=overwrite)
