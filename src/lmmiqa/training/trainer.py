"""The shared fine-tuning loop of lmmiqa's trainable methods: one trainer, several heads.

A *head* (:class:`TrainingHead`) says what is trained and how it is scored; the trainer does everything else:

* **data** — a :class:`lmmiqa.data.Dataset` or ``(path, MOS)`` pairs; a validation set or ``val_fraction`` of the
  training groups (by reference image for synthetic/FR sets) held out;
* **optimisation** — :class:`accelerate.Accelerator` (``accelerate launch -m lmmiqa.cli train ...`` trains on
  several GPUs with DDP; a plain run is one process, CPU in tests), AdamW over the head's parameter groups, a
  learning-rate schedule with linear warm-up (``cosine``, ``linear`` or ``constant``), gradient accumulation and
  clipping, bf16/fp16 autocast on GPUs, a seeded data order;
* **validation** after every epoch (the head's metrics, gathered across processes);
* **checkpoints** — trainable weights, optimizer, scheduler, RNG and the position in the epoch, rolling, so that
  a rerun of the same command resumes exactly; a run fingerprint (options that change the result + the data)
  refuses to resume another run;
* a **progress bar** and a per-epoch line on stderr, ``training.json`` (options, history, validation
  predictions) and the head's artifact.

Heads: :class:`lmmiqa.training.q_scorer.QScorerHead` (Q-Scorer: score tokens + an MLP regression head, METHODS §4)
and :class:`lmmiqa.training.levels.LevelsHead` (Q-Align's level recipe for any method's levels). A *recipe* (e.g. a
paper's published settings) is a set of values of the head's config dataclass — a subclass of
:class:`TrainConfig` whose fields are the recipe options (loss weights, LoRA targets, learning rates and schedule,
which modules train) — applied before :func:`fit` is called.

Nothing heavy is imported at module level: torch, transformers and accelerate are imported inside :func:`fit`.
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "LATEST"
TRAINING_FILE = "training.json"
TRAIN_DTYPES = ("auto", "float32", "bfloat16", "float16")
TRAIN_DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("cosine", "linear", "constant")
#: config fields that do not change the result (excluded from the run fingerprint)
RUNTIME_FIELDS = ("max_steps", "progress", "decode_workers", "checkpoint_every", "keep_checkpoints", "local_files_only")


@dataclass
class TrainConfig:
    """Options every trainable method shares (a head's config subclasses this and adds its recipe options).

    Attributes:
        model: base MLLM (hub id or local folder).
        epochs: passes over the training data.
        batch_size: images per device per micro-batch.
        grad_accum: micro-batches per optimizer step.
        eval_batch_size: images per forward pass during validation (0 = ``2 · batch_size``).
        lr: learning rate of the model's trainable weights.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of optimizer steps with linear warm-up.
        lr_schedule: after warm-up, ``cosine`` (to 0), ``linear`` (to 0) or ``constant``.
        max_grad_norm: gradient clipping (None or 0 = off).
        val_fraction: hold out this fraction of the training groups for validation when no validation set is
            given (0 = no validation).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30 % slower).
        device: ``auto`` (CUDA when available; with ``accelerate launch``, each process's GPU), ``cpu``, ``cuda``.
        dtype: ``auto`` (bf16 on GPUs that support it, else fp16; fp32 on CPU), ``float32``, ``bfloat16``,
            ``float16``: the dtype of the frozen weights; the autocast precision follows it.
        attn_implementation: ``sdpa``, ``flash_attention_2``, ``eager`` or None (transformers' default).
        seed: seed of the initialisation, data order, validation hold-out and dropout.
        checkpoint_every: also checkpoint every N optimizer steps (0 = only at the end of each epoch).
        keep_checkpoints: keep the checkpoint folder after training completes.
        max_steps: stop after this many optimizer steps in total (the artifact is written and the run stays
            resumable: rerun without it to finish).
        decode_workers: threads decoding the images of a batch.
        progress: progress bar on stderr (None = when stderr is a terminal).
        local_files_only: never contact the hub (default: from ``HF_HUB_OFFLINE``).
    """

    model: str = DEFAULT_MODEL
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1
    eval_batch_size: int = 0
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
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
        for name in ("epochs", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        if int(self.eval_batch_size) < 0:
            raise ConfigError(f"eval_batch_size must be >= 0, got {self.eval_batch_size}")
        self.eval_batch_size = int(self.eval_batch_size) or 2 * self.batch_size
        if float(self.lr) <= 0:
            raise ConfigError("learning rates must be > 0")
        if float(self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= float(self.warmup_ratio) < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
        if self.max_grad_norm is not None and float(self.max_grad_norm) < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm}")
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


@dataclass
class TrainResult:
    """What :func:`fit` (and ``train_q_scorer``/``train_levels``) return.

    Attributes:
        out: the artifact folder.
        history: one entry per completed epoch (losses, learning rate, validation metrics, seconds).
        global_step: optimizer steps taken in total.
        complete: false when stopped by ``max_steps`` (rerun to resume).
        val_predictions: the final model's validation predictions (the head's form) and the validation paths,
            when there is a validation set.
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
class Samples:
    """Training or validation images and their scores (``quality``: the head may flip DMOS onto higher-is-better)."""

    paths: list[str]
    quality: np.ndarray
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> Samples:
        return Samples([self.paths[i] for i in idx], self.quality[np.asarray(idx, dtype=np.int64)],
                       [self.groups[i] for i in idx])


def samples_from(data: Any, what: str) -> tuple[Samples, bool, tuple[float, float] | None, dict[str, Any]]:
    """(samples with raw scores, higher_is_better, published range, summary) from a Dataset or (path, score) pairs."""
    if hasattr(data, "items") and hasattr(data, "scores") and hasattr(data, "paths"):
        s = Samples(list(data.paths()), np.asarray(data.scores(), dtype=np.float64), list(data.groups()))
        return s, bool(data.higher_is_better), data.score_range, data.summary()
    try:
        pairs = [(os.fspath(p), float(m)) for p, m in data]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be a lmmiqa.data.Dataset or (path, MOS) pairs: {err}") from err
    s = Samples([p for p, _ in pairs], np.array([m for _, m in pairs], dtype=np.float64), [p for p, _ in pairs])
    return s, True, None, {"name": "pairs", "n": len(pairs)}


def split_val(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): ``fraction`` of the groups (at least one, never all) held out."""
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise DataError("val_fraction needs at least two images (groups) to hold some out")
    rng = np.random.default_rng(int(seed))
    n_val = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    held = {uniq[i] for i in rng.permutation(len(uniq))[:n_val]}
    is_val = np.array([g in held for g in groups], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order of the ``n`` training items in ``epoch`` (the same in every process)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def micro_batches(order: np.ndarray, batch: int, world: int, rank: int) -> list[np.ndarray]:
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


def load_images(paths: Sequence[str], workers: int) -> list[Any]:
    """Decode training images (RGB PIL); an unreadable one stops training with the first few named."""
    from lmmiqa.images import load_many

    items = load_many(list(paths), workers=workers)
    bad = [it for it in items if not it.ok]
    if bad:
        raise DataError(
            f"cannot read training image(s): {'; '.join(str(it.error) for it in bad[:3])} "
            "(remove them from the label file)"
        )
    return [it.image for it in items]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def precision(torch: Any, config: TrainConfig) -> tuple[str, str, bool]:
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


def lr_scheduler(transformers: Any, optimizer: Any, schedule: str, warmup: int, total: int) -> Any:
    """The learning-rate schedule: linear warm-up over ``warmup`` steps, then cosine/linear decay or constant."""
    if schedule == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    if schedule == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    if schedule == "constant":
        return transformers.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    raise ConfigError(f"unknown lr_schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``out/checkpoints/LATEST`` points to, or None."""
    pointer = out / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = out / CHECKPOINT_DIR / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def trainable_state(net: Any) -> dict[str, Any]:
    """The trainable tensors of ``net`` (CPU copies)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in net.named_parameters() if p.requires_grad}


def save_checkpoint(acc: Any, out: Path, net: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """Write a checkpoint (trainable weights, optimizer, scheduler, RNG per process, ``state.json``) and point
    ``LATEST`` at it; older checkpoints are removed once the new one is complete."""
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
        save_file(trainable_state(acc.unwrap_model(net)), str(path / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        write_json(path / "state.json", state)
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = root / (LATEST_FILE + ".tmp")
        tmp.write_text(name + "\n", encoding="utf-8")
        os.replace(tmp, root / LATEST_FILE)
        for other in root.iterdir():
            if other.is_dir() and other.name != name:
                shutil.rmtree(other, ignore_errors=True)
    acc.wait_for_everyone()


def load_checkpoint(acc: Any, path: Path, net: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into ``net``, ``optimizer``, ``scheduler`` and the RNG; return its ``state.json``."""
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


# --------------------------------------------------------------------------- the head protocol


class TrainingHead(ABC):
    """What a trainable method adds to the shared loop (:func:`fit`).

    The trainer calls, in order: :meth:`setup` (ranges and labels from the training data), :meth:`fingerprint`,
    :meth:`build` (load the model, make it trainable), :meth:`param_groups`; per micro-batch :meth:`loss`; per
    validation :meth:`predict` on this process's share of the validation images, then :meth:`metrics` on all of
    them; at the end :meth:`save`.

    Attributes:
        name: the method's name (messages, progress bar: ``lmmiqa train <name>``).
        spec_file: the artifact file whose presence marks a complete artifact (written last by :meth:`save`).
        loss_parts: names of the loss terms :meth:`loss` reports besides the total (history ``train_<part>``).
    """

    name: ClassVar[str] = "model"
    spec_file: ClassVar[str] = "spec.json"
    loss_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def setup(self, train: Samples, val: Samples | None, higher_is_better: bool,
              published_range: tuple[float, float] | None) -> None:
        """Resolve what depends on the data (score range, bins, flipping lower-is-better labels in place)."""

    def fingerprint(self) -> dict[str, Any]:
        """What besides the config and the data makes a run (JSON-safe); resuming needs the same."""
        return {}

    @abstractmethod
    def build(self, *, device: str, dtype: str, dataset: dict[str, Any]) -> Any:
        """Load the base model and return the trainable ``torch.nn.Module`` (frozen parts ``requires_grad=False``).

        Seeded by the trainer beforehand: the initialisation must be reproducible.
        """

    def param_groups(self, net: Any) -> list[dict[str, Any]]:
        """AdamW parameter groups (default: every trainable parameter at ``config.lr``)."""
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": self.config.lr}]

    @abstractmethod
    def loss(self, net: Any, images: Sequence[Any], train: Samples, idx: np.ndarray,
             autocast: Callable[[], Any] | None) -> tuple[Any, dict[str, Any]]:
        """``(loss, {part: tensor})`` of one micro-batch: ``images`` are the decoded ``train.paths[idx]``."""

    @abstractmethod
    def predict(self, net: Any, images: Sequence[Any], val: Samples, idx: Sequence[int],
                autocast: Callable[[], Any] | None) -> np.ndarray:
        """Validation predictions ``[len(idx), m]`` (float) of the images ``val.paths[idx]`` (net in eval mode)."""

    @abstractmethod
    def metrics(self, pred: np.ndarray, val: Samples) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics, predictions to store)`` from every validation prediction ``[len(val), m]``."""

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        """One line for the per-epoch message."""
        return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())

    @abstractmethod
    def save(self, out: Path, net: Any, training: dict[str, Any]) -> None:
        """Write the artifact (``training.json`` with ``training``; :attr:`spec_file` last)."""


# --------------------------------------------------------------------------- the loop


def fingerprint_of(config: TrainConfig, head: TrainingHead, train: Samples, val: Samples | None) -> str:
    """The run fingerprint: the options that change the result, the head's extras and the data."""
    cfg = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS}
    payload = {
        "config": json_safe(cfg),
        **json_safe(head.fingerprint()),
        "train": [train.paths, train.quality.round(9).tolist()],
        "val": [val.paths, val.quality.round(9).tolist()] if val is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    head: TrainingHead,
    train: Any,
    out: str | os.PathLike[str],
    *,
    val: Any | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``head`` on ``train`` and write its artifact to ``out`` (resuming a run ``out`` holds).

    Args:
        head: the head (its ``config`` holds every option).
        train: a :class:`lmmiqa.data.Dataset` or ``(path, MOS)`` pairs (higher is better).
        out: artifact folder; also holds ``checkpoints/`` while training. Rerunning with the same data and
            options resumes from the last checkpoint (or returns at once when training completed).
        val: validation data (same forms as ``train``); default: ``config.val_fraction`` of the training groups,
            or none.
        overwrite: start over, discarding the run (checkpoints and artifact) ``out`` holds.

    Raises:
        ConfigError: bad options, ``out`` holds another run and ``overwrite`` is false, or a checkpoint was
            written by another number of processes.
        DataError: empty data, unreadable images, or a checkpoint that does not fit.
    """
    config = head.config
    torch = require("torch", "hf", f"training {head.name}")
    accelerate = require("accelerate", "hf", f"training {head.name}")
    transformers = require("transformers", "hf", f"training {head.name}")
    what = f"lmmiqa train {head.name}"

    # ---------------------------------------------------------------- data
    tr, hib, published, tr_summary = samples_from(train, "train")
    if len(tr) == 0:
        raise DataError("no training images")
    va: Samples | None = None
    va_summary: dict[str, Any] | None = None
    if val is not None:
        va, va_hib, _, va_summary = samples_from(val, "val")
        if va_hib != hib:
            raise ConfigError("training and validation labels have different score directions")
    elif config.val_fraction > 0:
        tr_idx, va_idx = split_val(tr.groups, config.val_fraction, config.seed)
        tr, va = tr.subset(tr_idx), tr.subset(va_idx)
        va_summary = {"held_out_fraction": config.val_fraction, "n": len(va)}
    head.setup(tr, va, hib, published)
    fingerprint = fingerprint_of(config, head, tr, va)

    # ---------------------------------------------------------------- out folder / resume
    out_path = Path(out)
    done_file = out_path / TRAINING_FILE
    ckpt = latest_checkpoint(out_path)
    previous: dict[str, Any] | None = None
    if done_file.is_file() and (out_path / head.spec_file).is_file():
        previous = json.loads(done_file.read_text(encoding="utf-8"))
    elif ckpt is not None:
        previous = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    if previous is not None and (overwrite or previous.get("fingerprint") != fingerprint):
        if not overwrite:
            raise ConfigError(
                f"{out_path} holds a {head.name} run with other data or options; pass overwrite=True (CLI: "
                "--overwrite) to start over, or choose another --out"
            )
        previous, ckpt = None, None
        shutil.rmtree(out_path / CHECKPOINT_DIR, ignore_errors=True)
        for name in (head.spec_file, TRAINING_FILE):
            (out_path / name).unlink(missing_ok=True)
    if previous is not None and previous.get("complete") and (out_path / head.spec_file).is_file():
        log.info("%s already holds this completed run; nothing to do", out_path)
        return TrainResult(out_path, previous.get("history", []), int(previous.get("global_step", 0)), True,
                           previous.get("val_predictions"))

    # ---------------------------------------------------------------- model
    load_dtype, mixed, use_cpu = precision(torch, config)
    acc = accelerate.Accelerator(cpu=use_cpu, mixed_precision=mixed)
    accelerate.utils.set_seed(config.seed)
    world, rank = acc.num_processes, acc.process_index
    dataset = {"train": tr_summary, "val": va_summary, "n_train": len(tr), "n_val": len(va) if va is not None else 0}
    net = head.build(device=str(acc.device), dtype=load_dtype, dataset=dataset)
    groups = head.param_groups(net)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    n_mb = math.ceil(len(tr) / (config.batch_size * world))
    steps_per_epoch = math.ceil(n_mb / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    scheduler = lr_scheduler(transformers, optimizer, config.lr_schedule, round(config.warmup_ratio * total_steps),
                             total_steps)
    net, optimizer = acc.prepare(net, optimizer)

    parts = ("loss", *head.loss_parts)
    start_epoch, start_mb, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    running: dict[str, float] = {**{p: 0.0 for p in parts}, "n": 0}
    resumed_from = None
    if ckpt is not None:
        saved_world = int(json.loads((ckpt / "state.json").read_text(encoding="utf-8")).get("world_size", 1))
        if saved_world != world:
            raise ConfigError(
                f"the checkpoint in {ckpt} was written by {saved_world} process(es); resume it with the same number "
                f"(this run has {world}), or pass overwrite to start over"
            )
        st = load_checkpoint(acc, ckpt, net, optimizer, scheduler)
        start_epoch, start_mb, global_step = int(st["epoch"]), int(st["next_mb"]), int(st["global_step"])
        history, running = list(st["history"]), dict(st["running"])
        resumed_from = global_step
        if acc.is_main_process:
            print(f"{what}: resuming {out_path} at step {global_step} (epoch {start_epoch + 1})", file=sys.stderr)

    def state(epoch: int, next_mb: int, complete: bool = False) -> dict[str, Any]:
        return {"fingerprint": fingerprint, "epoch": epoch, "next_mb": next_mb, "global_step": global_step,
                "history": history, "running": running, "complete": complete, "total_steps": total_steps,
                "world_size": world}

    val_pred: dict[str, Any] | None = None

    def validate() -> dict[str, Any] | None:
        nonlocal val_pred
        if va is None:
            return None
        mine = list(range(rank, len(va), world))
        raw = acc.unwrap_model(net)
        raw.eval()
        rows: list[tuple[int, list[float]]] = []
        chunk = 4 * config.eval_batch_size
        try:
            for s0 in range(0, len(mine), chunk):
                idx = mine[s0 : s0 + chunk]
                imgs = load_images([va.paths[i] for i in idx], config.decode_workers)
                with torch.no_grad():
                    pred = np.asarray(head.predict(raw, imgs, va, idx, acc.autocast), dtype=np.float64)
                rows.extend(zip(idx, pred.reshape(len(idx), -1).tolist()))
        finally:
            raw.train()
        gathered = accelerate.utils.gather_object(rows)
        width = len(gathered[0][1]) if gathered else 0
        pred_all = np.full((len(va), width), np.nan)
        for i, x in gathered:
            pred_all[i] = x
        metrics, val_pred = head.metrics(pred_all, va)
        return metrics

    bar = None
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    if show and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=global_step, desc=f"train {head.name}", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    net.train()
    stopped = False
    t_epoch = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            batches = micro_batches(epoch_order(len(tr), config.seed, epoch), config.batch_size, world, rank)
            first = start_mb if epoch == start_epoch else 0
            for m in range(first, len(batches)):
                idx = batches[m]
                boundary = (m + 1) % config.grad_accum == 0 or m == len(batches) - 1
                images = load_images([tr.paths[i] for i in idx], config.decode_workers)
                sync = contextlib.nullcontext() if boundary else acc.no_sync(net)
                with sync:
                    loss, terms = head.loss(net, images, tr, idx, acc.autocast)
                    acc.backward(loss / config.grad_accum)
                running["loss"] += float(loss.detach())
                for p in head.loss_parts:  # a part a batch could not form (e.g. no pair of distinct MOS) adds 0
                    running[p] += float(terms[p].detach()) if p in terms else 0.0
                running["n"] += 1
                if not boundary:
                    continue
                if config.max_grad_norm:
                    acc.clip_grad_norm_(params, float(config.max_grad_norm))
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
                    save_checkpoint(acc, out_path, net, optimizer, scheduler, state(epoch, m + 1))
                if hit_max and not last_of_epoch:
                    stopped = True
                    break
            if stopped:
                break
            n = max(running["n"], 1)
            entry: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "train_loss": running["loss"] / n}
            entry.update({f"train_{p}": running[p] / n for p in head.loss_parts})
            entry.update({"lr": scheduler.get_last_lr()[0], "val": validate(), "seconds": time.perf_counter() - t_epoch})
            history.append(entry)
            running = {**{p: 0.0 for p in parts}, "n": 0}
            t_epoch = time.perf_counter()
            if acc.is_main_process:
                v = entry["val"]
                vtxt = f", val {head.format_metrics(v)}" if v else ""
                msg = f"{what}: epoch {epoch + 1}/{config.epochs} loss {entry['train_loss']:.4f}{vtxt}"
                if bar is None:
                    print(msg, file=sys.stderr)
                else:
                    bar.write(msg, file=sys.stderr)
            save_checkpoint(acc, out_path, net, optimizer, scheduler, state(epoch + 1, 0))
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
        head.save(out_path, acc.unwrap_model(net), training)
        if complete and not config.keep_checkpoints:
            shutil.rmtree(out_path / CHECKPOINT_DIR, ignore_errors=True)
    acc.wait_for_everyone()
    return TrainResult(out_path, history, global_step, complete, val_pred, resumed_from, acc.is_main_process)
