"""LEAF student training (METHODS §3.2): joint point-wise + pair-wise distillation, weighted by reliability.

One epoch visits every training image once (point batches of ``batch_size``); each step also takes the next
``pairs_per_batch`` pairs (default ``batch_size // 2``, so a step sees at most twice ``batch_size`` images) from a
stream of seeded permutations of all training pairs that continues across epochs. Each step runs the student
once on the union of the images it needs and minimizes :func:`lmmiqa.distill.losses.joint_loss`:

* regression of the student score to the *standardized* teacher score ``z = (s − mean)/std`` (so that learning
  rates and the pair term do not depend on the teacher's unit; the raw output is mapped back to the teacher unit
  at inference);
* KL to the teacher's level distribution through the K-way head (teachers with distributions);
* the fidelity loss on P(A > B) = Φ((z_A − z_B)/√2), matching the Thurstone form of derived pairs.

AdamW with linear warm-up and cosine decay (:func:`lmmiqa.distill.losses.cosine_lr`), gradient clipping, and
horizontal flips (quality-preserving) as the only augmentation. A checkpoint is written after every epoch
(``train_state/checkpoint.pt``); running again resumes from it, and the run is deterministic for a seed (data order
and flips come from ``numpy.random.default_rng([seed, epoch])``, so an interrupted and resumed run equals an
uninterrupted one). Resuming with a larger ``epochs`` continues training; the learning-rate schedule is then
recomputed for the new total.
At the end the artifact (:mod:`lmmiqa.distill.artifact`) is written to the same folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.config import config_to_dict
from lmmiqa.distill.losses import PAIR_PROBABILITIES
from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

STATE_DIR = "train_state"
#: inference crops per image outside ``crops`` mode's automatic choice (``crops=None`` tiles the image, see
#: :mod:`lmmiqa.distill.views`)
DEFAULT_CROPS = 4
#: |SRCC| of the student against its teacher below which training warns that the student did not learn it
LOW_FIDELITY = 0.3
#: optimizer steps below which a low-fidelity warning suggests more epochs (bench_leaf: 80 steps fell short, ~380
#: sufficed for the BRISQUE-taught small-cnn; the NIQE-taught one with the automatic views missed its teacher by
#: 0.06-0.20 after 384 steps in 6 of 6 runs (3 seeds) and met it after 640 steps in 4 of 4 (2 seeds), at 256² and 512²)
MIN_STEPS_HINT = 640
#: ``epochs=None``: at least DEFAULT_EPOCHS, more on small caches until about MIN_STEPS_HINT optimizer steps
DEFAULT_EPOCHS = 10
MAX_AUTO_EPOCHS = 200
#: ``batch_size=None``: SMALL_BATCH images per point batch below SMALL_CACHE_IMAGES training images (the setting
#: bench_leaf measured: 12-20 epochs of steps of 8 images + 4 pairs), else LARGE_BATCH; a step costs per image view,
#: so on a small cache batch 32 made the same number of steps four times as expensive as the measured setting
SMALL_BATCH = 8
LARGE_BATCH = 32
SMALL_CACHE_IMAGES = 1000
#: ``val_fraction > 0``: the held-out fidelity is measured about this many times per run (and after the last epoch)
VAL_CHECKS = 10
#: ``val_fraction=None``: hold out this share when the cache has at least AUTO_VAL_MIN_IMAGES images
AUTO_VAL_FRACTION = 0.1
AUTO_VAL_MIN_IMAGES = 50
#: training images (a seeded sample) on which the final in-sample fidelity is measured (each with all its inference
#: crops: with 256 images it took ~50 s of a 4-min 512² run; 128 keep the SRCC's standard error under ~0.1)
FIT_CHECK_IMAGES = 128
CHECKPOINT_FILE = "checkpoint.pt"
#: options that may change between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "device", "progress", "workers", "cache_mb", "preset")


@dataclass
class TrainConfig:
    """Options of :func:`train_student`.

    Attributes:
        student: registered student name (see ``lmmiqa distill train --help``).
        student_options: options of the student spec (e.g. ``{"channels": [8, 16, 32, 64]}`` for small-cnn).
        student_model: hub id or local folder of the student checkpoint (default: the student's own hub id).
        pretrained: load pretrained weights (default: yes for students that have them; ``small-cnn`` has none).
        image_size: input side, the crop side in ``crops`` mode (default ``None``: in ``crops`` mode about half
            the training images' median short side, at least the student's ``default_crop`` — small-cnn 64,
            ConvNeXt/ResNet 224 — at most 192, see :func:`lmmiqa.distill.views.auto_crop_size`; else the
            student's ``default_size``).
        resize_mode: ``crops`` (default: random ``image_size`` crops at native resolution in training, the mean of
            ``crops`` deterministic crops at inference), ``resize`` (whole image squashed) or ``center-crop``.
        crops: inference crops per image in ``crops`` mode (also used for the validation fidelity); ``None``
            (default): enough grid crops to tile the image, 4 to 9 (:func:`lmmiqa.distill.views.auto_crops`).
        crop_layout: ``grid`` or ``corners`` (centre + 4 corners; at most 5 crops).
        epochs: passes over the training images (default ``None``: 10, or more on small caches so that training
            makes about 640 optimizer steps — :func:`auto_epochs`; at most 200).
        batch_size: images per point batch (default ``None``: 8 below 1000 training images, else 32 —
            :func:`auto_batch_size`).
        pairs_per_batch: pairs per step (default: ``batch_size // 2``; 0: no pair term).
        lr: AdamW learning rate (default: the student's).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps spent warming up the learning rate.
        w_point: weight of the point-wise regression term.
        w_kl: weight of the KL term (used when the teacher has level distributions).
        w_pair: weight of the pair-wise fidelity term.
        pair_prob: ``thurstone`` (Φ(Δ/√2)) or ``sigmoid`` for the student's pair probability.
        flip: random horizontal flips.
        val_fraction: share of the images held out to report student-vs-teacher SRCC (every ``ceil(epochs/10)``
            epochs and after the last; 0: none; default ``None``: 0.1 when the cache has at least 50 images, else
            none). At the end the held-out fidelity (and
            the in-sample one on up to 128 training images) is stored in ``training.json`` and a warning is
            logged when it is below :data:`LOW_FIDELITY`.
        seed: seed of initialization, data order and flips.
        device: ``auto``, ``cpu``, ``cuda``, …
        cache_mb: memory for decoded, resized images (beyond it images are decoded again each epoch).
        workers: threads decoding images (default: the CPU count, at most 8); the next step's images are decoded
            in the background while the current step runs.
        progress: progress bar on stderr (default: when stderr is a terminal).
        preset: the preset these options were built over (:func:`train_config`; recorded in ``training.json``), or
            None.
    """

    student: str = "small-cnn"
    student_options: dict[str, Any] = field(default_factory=dict)
    student_model: str | None = None
    pretrained: bool | None = None
    image_size: int | None = None
    resize_mode: str = "crops"
    crops: int | None = None
    crop_layout: str = "grid"
    epochs: int | None = None
    batch_size: int | None = None
    pairs_per_batch: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    w_point: float = 1.0
    w_kl: float = 0.5
    w_pair: float = 1.0
    pair_prob: str = "thurstone"
    flip: bool = True
    val_fraction: float | None = None
    seed: int = 0
    device: str = "auto"
    cache_mb: int = 2048
    workers: int | None = None
    progress: bool | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        from lmmiqa import registry
        from lmmiqa.distill.students import CROP_LAYOUTS, RESIZE_MODES

        self.student = registry.canonical("student", self.student)
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {self.resize_mode!r}; known: {', '.join(RESIZE_MODES)}")
        if self.crop_layout not in CROP_LAYOUTS:
            raise ConfigError(f"unknown crop layout {self.crop_layout!r}; known: {', '.join(CROP_LAYOUTS)}")
        if self.crops is not None and (int(self.crops) < 1 or (self.crop_layout == "corners" and int(self.crops) > 5)):
            raise ConfigError(f"crops must be >= 1 (at most 5 with the corners layout), got {self.crops}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size is not None and int(self.image_size) < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")
        if self.pairs_per_batch is not None and int(self.pairs_per_batch) < 0:
            raise ConfigError(f"pairs_per_batch must be >= 0, got {self.pairs_per_batch}")
        if self.lr is not None and not float(self.lr) > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "w_point", "w_kl", "w_pair"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.w_point == 0 and self.w_kl == 0 and self.w_pair == 0:
            raise ConfigError("at least one of w_point, w_kl and w_pair must be > 0")
        if not 0.0 <= float(self.warmup_fraction) < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.val_fraction is not None and not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.pair_prob not in PAIR_PROBABILITIES:
            raise ConfigError(f"unknown pair probability {self.pair_prob!r}; known: {', '.join(PAIR_PROBABILITIES)}")
        if self.workers is None:
            self.workers = min(8, os.cpu_count() or 1)
        if int(self.cache_mb) < 0 or int(self.workers) < 0:
            raise ConfigError("cache_mb and workers must be >= 0")


def train_config(preset: str | None = None, **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` from keyword options over the values of ``preset`` (``"paper"``: the LEAF paper's
    student, :data:`lmmiqa.distill.presets.TRAIN_PAPER`); explicit options (not None) win; unknown names are a
    ConfigError listing the valid ones."""
    from lmmiqa.config import build_config
    from lmmiqa.distill.presets import STAGE_PRESETS, TRAIN
    from lmmiqa.presets import apply_preset, get_preset

    opts = apply_preset(STAGE_PRESETS[TRAIN], preset, options, f"`lmmiqa {TRAIN}`")
    if preset is not None:
        opts["preset"] = get_preset(STAGE_PRESETS[TRAIN], preset, f"`lmmiqa {TRAIN}`").name
    return build_config(TrainConfig, opts, what=f"`lmmiqa {TRAIN}`")


@dataclass(frozen=True)
class TrainSummary:
    """Outcome of :func:`train_student`."""

    out: str
    student: str
    epochs: int
    resumed_from_epoch: int
    n_train: int
    n_val: int
    n_pairs: int
    history: list[dict[str, Any]]
    seconds: float
    fidelity: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the crop side and inference crops used (``auto_*``: chosen by :mod:`lmmiqa.distill.views`)
    views: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self.__dict__)


class ImageBank:
    """Decoded uint8 images by index (:meth:`Preprocess.base`: resized, or native in ``crops`` mode), cached in
    memory up to ``cache_mb``; training views are cut from them."""

    def __init__(self, paths: Sequence[str], preprocess: Any, cache_mb: int = 2048, workers: int = 2) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.budget = int(cache_mb) * 1024 * 1024
        self.used = 0
        self.workers = int(workers)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self, i: int) -> np.ndarray:
        from lmmiqa.errors import ImageLoadError
        from lmmiqa.images import open_image

        try:
            return self.preprocess.base(open_image(self.paths[i]))
        except ImageLoadError as err:
            raise DataError(f"a teacher-judged image cannot be opened any more: {err}") from err

    def bases(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The base arrays of ``indices`` (in order)."""
        idx = [int(i) for i in indices]
        with self._lock:
            missing = [i for i in dict.fromkeys(idx) if i not in self._cache]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            if self.workers > 1 and len(missing) > 1:
                with ThreadPoolExecutor(max_workers=self.workers) as pool:
                    loaded = list(pool.map(self._load, missing))
            else:
                loaded = [self._load(i) for i in missing]
            fresh = dict(zip(missing, loaded))
            with self._lock:
                for i, arr in fresh.items():
                    if self.used + arr.nbytes <= self.budget:
                        self._cache[i] = arr
                        self.used += arr.nbytes
        with self._lock:
            return [self._cache[i] if i in self._cache else fresh[i] for i in idx]

    def arrays(self, indices: Sequence[int], seed: Sequence[int] | None = None) -> np.ndarray:
        """Training views uint8 [B, S, S, 3] for ``indices`` (in order): in ``crops`` mode one random crop per
        image, drawn from ``numpy.random.default_rng(seed)`` (deterministic for a seed)."""
        rng = np.random.default_rng(list(seed) if seed is not None else 0)
        return np.stack([self.preprocess.random_view(b, rng) for b in self.bases(indices)])


class PairStream:
    """Pair indices per global step: consecutive slices of seeded permutations of all pairs, continuing across
    epochs (permutation ``k`` is ``default_rng([seed, 104729, k])``), so every pair is used equally often."""

    def __init__(self, n_pairs: int, per_step: int, seed: int) -> None:
        self.m = int(n_pairs)
        self.per_step = int(per_step) if n_pairs else 0
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, k: int) -> np.ndarray:
        if k not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[k] = np.random.default_rng([self.seed, 104729, k]).permutation(self.m)
        return self._perms[k]

    def batch(self, global_step: int) -> np.ndarray:
        """The pair indices of step ``global_step`` (empty when there are no pairs)."""
        if not self.per_step:
            return np.zeros(0, dtype=np.int64)
        start = global_step * self.per_step
        out = []
        pos = start
        end = start + self.per_step
        while pos < end:
            k, off = divmod(pos, self.m)
            take = min(end - pos, self.m - off)
            out.append(self._perm(k)[off : off + take])
            pos += take
        return np.concatenate(out).astype(np.int64)


def _fingerprint(config: TrainConfig, labels: Any) -> str:
    h = hashlib.sha256()
    cfg = {k: v for k, v in config_to_dict(config).items() if k not in RESUMABLE_CHANGES}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update("\n".join(labels.images).encode())
    h.update(np.ascontiguousarray(labels.scores).tobytes())
    h.update(np.ascontiguousarray(labels.pairs).tobytes())
    h.update(np.ascontiguousarray(labels.pair_prob).tobytes())
    return h.hexdigest()


def _split_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    n_val = max(1, round(fraction * n))
    if n - n_val < 2:
        raise DataError(f"val_fraction {fraction} leaves fewer than 2 training images out of {n}")
    perm = np.random.default_rng([int(seed), 7919]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_student(
    teacher_labels: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    restart: bool = False,
) -> TrainSummary:
    """Distill a student from a teacher cache and write the artifact to ``out``.

    Args:
        teacher_labels: a teacher cache folder (``lmmiqa distill teach --out``) or loaded
            :class:`~lmmiqa.distill.teacher.TeacherLabels`.
        out: the student folder (artifact + ``train_state/``).
        config: options.
        restart: ignore (and overwrite) a checkpoint in ``out``.

    Returns:
        A :class:`TrainSummary`.

    Raises:
        DataError: the teacher cache is unusable (e.g. constant scores), or ``out`` holds a checkpoint of a
        different run (use ``restart``).
    """
    torch = require("torch", "hf", "training LEAF students")
    from lmmiqa.distill.artifact import save_artifact
    from lmmiqa.distill.losses import cosine_lr
    from lmmiqa.distill.students import build_network, get_student
    from lmmiqa.distill.teacher import TeacherLabels, load_teacher_labels
    from lmmiqa.torch_utils import pick_device

    config = config or TrainConfig()
    t_start = time.perf_counter()
    labels = teacher_labels if isinstance(teacher_labels, TeacherLabels) else load_teacher_labels(teacher_labels)
    n = len(labels)
    if n < 2:
        raise DataError(f"the teacher cache has {n} judged image(s); at least 2 are needed")
    spec = get_student(config.student, **config.student_options)
    pretrained = spec.has_pretrained if config.pretrained is None else bool(config.pretrained)
    arch = spec.arch(pretrained=pretrained, source=config.student_model)
    views = resolve_views(config, labels.images, spec.default_crop)
    preprocess = spec.preprocessing(size=views["image_size"], pretrained=pretrained, source=config.student_model)
    from dataclasses import replace

    preprocess = replace(preprocess, mode=config.resize_mode, crops=int(views["crops"]), crop_layout=config.crop_layout)
    lr = float(config.lr if config.lr is not None else spec.default_lr)
    device = pick_device(config.device)

    val_fraction = config.val_fraction
    if val_fraction is None:
        val_fraction = AUTO_VAL_FRACTION if n >= AUTO_VAL_MIN_IMAGES else 0.0
    train_idx, val_idx = _split_val(n, float(val_fraction), int(config.seed))
    in_train = np.zeros(n, dtype=bool)
    in_train[train_idx] = True
    pair_keep = in_train[labels.pairs[:, 0]] & in_train[labels.pairs[:, 1]] if len(labels.pairs) else np.zeros(0, bool)
    pairs = labels.pairs[pair_keep]
    pair_p = labels.pair_prob[pair_keep]
    pair_w = labels.pair_reliability[pair_keep]
    mean = float(np.mean(labels.scores[train_idx]))
    std = float(np.std(labels.scores[train_idx]))
    if not std > 0:
        raise DataError("the teacher gave every training image the same score; there is nothing to distill")
    z = (labels.scores - mean) / std
    probs = labels.probs
    k_levels = int(probs.shape[1]) if probs is not None else None

    torch.manual_seed(int(config.seed))
    weights_from = arch.get("source") if pretrained else None
    net = build_network(spec, arch, k_levels, weights_from=weights_from).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=float(config.weight_decay))

    root = Path(out)
    ckpt_path = root / STATE_DIR / CHECKPOINT_FILE
    fingerprint = _fingerprint(config, labels)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if restart:
        ckpt_path.unlink(missing_ok=True)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise DataError(
                f"{root} holds a checkpoint of a different run (other teacher labels or options); use another "
                "--out folder, or --restart to train from scratch"
            )
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it; the CPU generator needs a CPU tensor
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming %s from epoch %d", root, start_epoch)

    bank = ImageBank(labels.images, preprocess, config.cache_mb, config.workers)
    n_train = len(train_idx)
    batch_size = int(config.batch_size) if config.batch_size is not None else auto_batch_size(n_train)
    steps = math.ceil(n_train / batch_size)
    m = len(pairs)
    per_step = (batch_size // 2 if config.pairs_per_batch is None else int(config.pairs_per_batch)) if m else 0
    pair_stream = PairStream(m, per_step, int(config.seed))
    epochs = int(config.epochs) if config.epochs is not None else auto_epochs(steps)
    total_steps = steps * epochs
    val_every = max(1, math.ceil(epochs / VAL_CHECKS))  # every epoch's check cost ~ a tenth of the run on 80 epochs
    warmup = round(float(config.warmup_fraction) * total_steps)
    targets = _Targets.build(z, labels, probs, pair_p, pair_w, device, torch)
    bar = _bar((epochs - start_epoch) * steps, config)
    try:
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            rng = np.random.default_rng([int(config.seed), epoch])
            order = train_idx[rng.permutation(n_train)]
            net.train()
            sums = {"loss": 0.0, "point": 0.0, "kl": 0.0, "pair": 0.0}
            plan = _step_plan(order, steps, batch_size, pair_stream, epoch, pairs, int(config.seed))
            for step, (pts, sel, need, arr) in enumerate(_prefetched(plan, bank)):
                global_step = epoch * steps + step
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(global_step, total_steps, lr, warmup)
                if config.flip:
                    flip = rng.random(len(need)) < 0.5
                    arr[flip] = arr[flip][:, :, ::-1]
                x = torch.from_numpy(preprocess.normalize(arr)).to(device)
                losses = _step_losses(net, x, pts, sel, need, pairs, targets, config, device, torch)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                for key in sums:
                    sums[key] += float(losses[key].detach())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(losses['loss'].detach()):.4f}")
            entry: dict[str, Any] = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()},
                                     "lr_end": opt.param_groups[0]["lr"]}
            if len(val_idx) and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
                entry["val_srcc_vs_teacher"] = _val_srcc(net, bank, preprocess, val_idx, labels.scores, device, torch)
            entry["seconds"] = time.perf_counter() - t_epoch
            history.append(entry)
            _save_checkpoint(ckpt_path, torch, net, opt, epoch + 1, history, fingerprint)
            log.info("epoch %d: %s", epoch + 1, entry)
    finally:
        if bar is not None:
            bar.close()

    fidelity: dict[str, Any] = {"n_val": len(val_idx), "optimizer_steps": steps * epochs}
    if len(val_idx):
        fidelity["val_srcc"] = history[-1].get("val_srcc_vs_teacher") if history else None
        if fidelity["val_srcc"] is None:
            fidelity["val_srcc"] = _val_srcc(net, bank, preprocess, val_idx, labels.scores, device, torch)
    check = train_idx if n_train <= FIT_CHECK_IMAGES else np.sort(
        np.random.default_rng([int(config.seed), 15485863]).choice(train_idx, FIT_CHECK_IMAGES, replace=False))
    fidelity["train_srcc"] = _val_srcc(net, bank, preprocess, check, labels.scores, device, torch)
    fidelity["n_train_checked"] = len(check)
    warning = fidelity_warning(fidelity)
    if warning:
        log.warning("%s", warning)
    training = {
        "config": config_to_dict(config),
        "views": views,
        "epochs": epochs,
        "val_fraction": float(val_fraction),
        "fidelity": fidelity,
        "warnings": [warning] if warning else [],
        "images": {"train": [labels.images[i] for i in train_idx], "val": [labels.images[i] for i in val_idx]},
        "pretrained": pretrained,
        "lr": lr,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "pairs_per_step": per_step,
        "n_train": n_train,
        "n_val": len(val_idx),
        "n_pairs": m,
        "history": history,
        "seconds": time.perf_counter() - t_start,
    }
    save_artifact(
        root,
        net.state_dict(),
        student=spec.name,
        arch=arch,
        preprocess=preprocess,
        k_levels=k_levels,
        levels=labels.teacher.get("levels") if k_levels else None,
        output={"target_mean": mean, "target_std": std},
        teacher=labels.summary(),
        training=training,
    )
    return TrainSummary(
        out=str(root),
        student=spec.name,
        epochs=epochs,
        resumed_from_epoch=start_epoch,
        n_train=n_train,
        n_val=len(val_idx),
        n_pairs=m,
        history=history,
        seconds=time.perf_counter() - t_start,
        fidelity=fidelity,
        warnings=[warning] if warning else [],
        views=views,
    )


@dataclass(frozen=True)
class _Targets:
    """The teacher's judgments as tensors on the training device."""

    z: Any
    reliability: Any
    probs: Any | None
    pair_p: Any
    pair_w: Any

    @classmethod
    def build(cls, z: np.ndarray, labels: Any, probs: np.ndarray | None, pair_p: np.ndarray, pair_w: np.ndarray,
              device: Any, torch: Any) -> _Targets:
        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device)

        return cls(t(z), t(labels.point_reliability), t(probs) if probs is not None else None, t(pair_p), t(pair_w))


def _step_plan(order: np.ndarray, steps: int, batch_size: int, pair_stream: PairStream, epoch: int,
               pairs: np.ndarray, seed: int = 0) -> Any:
    """Per step of an epoch: (point indices, pair indices, sorted union of the images they need, crop seed)."""
    for step in range(steps):
        pts = order[step * batch_size : (step + 1) * batch_size]
        sel = pair_stream.batch(epoch * steps + step)
        need = np.unique(np.concatenate([pts, pairs[sel, 0], pairs[sel, 1]]))
        yield pts, sel, need, (int(seed), epoch, step, 7907)


def _prefetched(plan: Any, bank: ImageBank) -> Any:
    """``(pts, sel, need, images)`` per step, decoding the next step's images in a background thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        it = iter(plan)
        nxt = next(it, None)
        fut = pool.submit(bank.arrays, nxt[2], nxt[3]) if nxt is not None else None
        while nxt is not None:
            cur, arr = nxt, fut.result()  # type: ignore[union-attr]
            nxt = next(it, None)
            fut = pool.submit(bank.arrays, nxt[2], nxt[3]) if nxt is not None else None
            yield (*cur[:3], arr)


def _step_losses(net: Any, x: Any, pts: np.ndarray, sel: np.ndarray, need: np.ndarray, pairs: np.ndarray,
                 targets: _Targets, config: TrainConfig, device: Any, torch: Any) -> dict[str, Any]:
    """One forward over the step's images and the joint loss of its points and pairs."""
    from lmmiqa.distill.losses import joint_loss

    score, logits = net(x)

    def pos(idx: np.ndarray) -> Any:
        return torch.from_numpy(np.searchsorted(need, idx)).to(device)

    ip = pos(pts)
    ipts = torch.from_numpy(pts).to(device)
    isel = torch.from_numpy(sel).to(device)
    return joint_loss(
        score=score[ip],
        target=targets.z[ipts],
        point_weights=targets.reliability[ipts],
        logits=logits[ip] if logits is not None else None,
        target_probs=targets.probs[ipts] if targets.probs is not None else None,
        score_a=score[pos(pairs[sel, 0])],
        score_b=score[pos(pairs[sel, 1])],
        pair_target=targets.pair_p[isel],
        pair_weights=targets.pair_w[isel],
        w_point=float(config.w_point),
        w_kl=float(config.w_kl),
        w_pair=float(config.w_pair),
        pair_kind=config.pair_prob,
    )


def _val_srcc(net: Any, bank: ImageBank, preprocess: Any, val_idx: np.ndarray, scores: np.ndarray, device: Any,
              torch: Any) -> float:
    """SRCC of the student (inference views, as the ``leaf`` method scores) against the teacher on ``val_idx``."""
    from lmmiqa.distill.artifact import forward_views
    from lmmiqa.evaluation.correlation import srcc

    preds = []
    for start in range(0, len(val_idx), 64):
        chunk = val_idx[start : start + 64]
        views = [preprocess.views(b) for b in bank.bases(chunk)]
        (mean, _), _ = forward_views(net, preprocess, views, device, torch)
        preds.append(mean)
    return srcc(np.concatenate(preds), scores[val_idx])


def resolve_views(config: TrainConfig, images: Sequence[str], default_crop: int) -> dict[str, Any]:
    """The crop side and inference crops of a run: ``config``'s when given, else chosen from the median size of
    up to :data:`~lmmiqa.distill.views.SIZE_SAMPLE` evenly spaced ``images`` (headers only) in ``crops`` mode;
    outside ``crops`` mode the student's default size and one view."""
    from lmmiqa.distill.views import SIZE_SAMPLE, choose_views

    if config.resize_mode != "crops":
        return {"image_size": config.image_size, "crops": int(config.crops or DEFAULT_CROPS),
                "auto_image_size": False, "auto_crops": False}
    if config.image_size is not None and config.crops is not None:
        return {"image_size": int(config.image_size), "crops": int(config.crops),
                "auto_image_size": False, "auto_crops": False}
    from PIL import Image

    pick = np.unique(np.linspace(0, len(images) - 1, min(SIZE_SAMPLE, len(images))).round().astype(int))
    sizes = []
    for i in pick:
        try:
            with Image.open(images[int(i)]) as im:
                sizes.append(im.size)
        except OSError as err:
            raise DataError(f"a teacher-judged image cannot be opened any more: {images[int(i)]}: {err}") from err
    return choose_views(sizes, default_crop, image_size=config.image_size, crops=config.crops,
                        layout=config.crop_layout)


def auto_batch_size(n_train: int) -> int:
    """Default point batch: :data:`SMALL_BATCH` below :data:`SMALL_CACHE_IMAGES` training images (bench_leaf's
    measured setting), else :data:`LARGE_BATCH`."""
    return SMALL_BATCH if int(n_train) < SMALL_CACHE_IMAGES else LARGE_BATCH


def auto_epochs(steps_per_epoch: int) -> int:
    """Default epochs: :data:`DEFAULT_EPOCHS`, or enough for ~:data:`MIN_STEPS_HINT` optimizer steps on a small
    cache (bench_leaf: 80 steps left students far from their teacher), at most :data:`MAX_AUTO_EPOCHS`."""
    return int(min(MAX_AUTO_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS_HINT / max(int(steps_per_epoch), 1)))))


def fidelity_warning(fidelity: dict[str, Any]) -> str | None:
    """A warning when the student does not follow its teacher (``|SRCC|`` < :data:`LOW_FIDELITY` on held-out
    images, or on the training images when there are none), else ``None``."""
    for key, where in (("val_srcc", "held-out"), ("train_srcc", "training")):
        v = fidelity.get(key)
        if v is None or not math.isfinite(float(v)):
            continue
        if abs(float(v)) < LOW_FIDELITY:
            n = fidelity.get("n_val" if key == "val_srcc" else "n_train_checked")
            steps = fidelity.get("optimizer_steps")
            few = (f" The run made only {steps} optimizer steps; students in benchmarks/bench_leaf.py needed "
                   f"~{MIN_STEPS_HINT}: raise --epochs (or lower --batch-size)."
                   if steps is not None and int(steps) < MIN_STEPS_HINT else "")
            return (
                f"the student barely follows its teacher: SRCC {float(v):+.3f} against the teacher on {n} {where} "
                f"image(s) (below {LOW_FIDELITY}). Calibrating or evaluating it measures noise.{few} Otherwise try "
                "more teacher-judged images, or --resize-mode crops (whole-image resizing removes the noise, "
                "blur and blocking a quality teacher reacts to)"
            )
        return None
    return None


def _save_checkpoint(path: Path, torch: Any, net: Any, opt: Any, epoch: int, history: list[dict[str, Any]],
                     fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict(), "history": history,
         "torch_rng": torch.get_rng_state(), "fingerprint": fingerprint},
        tmp,
    )
    os.replace(tmp, path)


def _bar(total: int, config: TrainConfig) -> Any:
    enabled = config.progress
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="distill train", unit="step", file=sys.stderr, dynamic_ncols=True)
