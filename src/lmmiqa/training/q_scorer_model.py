"""Q-Scorer's model pieces and saved artifact (METHODS §4; Q-Scorer: score tokens + a regression head on an
MLLM fine-tuned with LoRA).

* **Score tokens** — ``<score>`` (k = 1) or ``<score1>`` … ``<score5>`` (k = 5) are added to the tokenizer as
  special tokens that absorb the space before them (``lstrip``), so the answer
  ``"The quality of the image is <score3>"`` tokenizes as the answer prefix followed by one score token, and
  the position that predicts it is the last position of the inference prompt (which ends with the prefix).
  Their input *and* output embedding rows are set deterministically to the mean of the rows of the original
  vocabulary (a random row would not be saved with the adapter and would break reloads); with tied
  embeddings the one shared row is set once. MOS → token by equal-width bins (:func:`mos_bins`) of the
  **bin range**: by default the min–max of the training split's MOS, as Q-Align does (on KonIQ-10k, whose
  published 1–5 range the data only spans from 1.10 to 4.31, bins over the published range leave
  ``<score5>`` without a single image; over the data's min–max it gets 17.6 %), or a fixed range when asked
  (``bin_range``). The range is stored in ``qscorer.json`` and used at inference (``details.token_mos``).
* **LoRA** (peft) on ``.*language_model.*\\.(q|k|v|o|gate|up|down)_proj`` by default; the vision tower is frozen,
  its projector optionally trained in full (``tune_projector``); the new token rows are trainable through
  peft's ``trainable_token_indices`` (only those rows are saved).
* **Head** — an MLP on the last-layer hidden state at the position predicting the score token (reference:
  hidden → 2048 → 1024 → 1 with ReLU). It predicts the normalized score ``u = (MOS − lo)/(hi − lo)``; the MOS is
  ``lo + u·(hi − lo)``, clamped to ``[lo, hi]`` at inference only.

Artifact folder (adapter)::

    qscorer.json               kind, registered name "q-scorer", schema version, base model, k, tokens and ids,
                               MOS range, head and LoRA settings, prompt strings
    adapter_model.safetensors  LoRA weights + the score-token rows (peft)
    adapter_config.json        peft configuration
    head.safetensors           the MLP head
    training.json              training options and per-epoch history (when trained by lmmiqa)

A merged export (:func:`export_merged`) is a standalone model folder (``save_pretrained`` of the merged model
with resized embeddings, the processor with the score tokens) plus ``qscorer.json`` (``merged: true``) and
``head.safetensors``. Both load through :func:`load_q_scorer` and the ``q-scorer`` scorer.

torch/transformers/peft are imported inside the functions (extras ``hf`` and ``train``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, UnsupportedError, require
from lmmiqa.prompts import QALIGN_ANSWER_PREFIX, QALIGN_QUESTION
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

ARTIFACT_KIND = "lmmiqa-q-scorer"
REGISTERED_NAME = "q-scorer"
SCHEMA_VERSION = 1
SPEC_FILE = "qscorer.json"
HEAD_FILE = "head.safetensors"
TRAINING_FILE = "training.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: LoRA targets: attention and MLP projections of the language model only (the vision tower stays frozen)
LORA_TARGET = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"
#: numbers of score tokens supported
TOKEN_COUNTS = (1, 5)
HEAD_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
#: where a Q-Scorer's score-token bin range came from (``QScorerSpec.bin_source``)
BIN_SOURCES = ("training min-max", "fixed", "mos_range")
#: module names of vision encoders (``tune_vision``: trained in full with the projector), matched like the projectors
VISION_NAMES = (
    "vision_model",  # mPLUG-Owl2 (its ViT), SigLIP/CLIP towers in several VLMs
    "visual_abstractor",  # mPLUG-Owl2's abstractor (its projector)
    "vision_tower",  # LLaVA(-OneVision), InternVL (transformers)
    "visual",  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL (tower + merger)
)
#: where a head value is read on the MOS scale: ``normalized`` (lmmiqa: (MOS − lo)/(hi − lo)) or ``raw`` (the MOS)
HEAD_TARGETS = ("normalized", "raw")
IMAGE_POSITIONS = ("before", "after")
#: module names of vision-language projectors (``tune_projector``), matched as a name or a dotted suffix
PROJECTOR_NAMES = (
    "multi_modal_projector",  # LLaVA(-OneVision), InternVL (transformers), Idefics-style
    "visual.merger",  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL
    "visual.deepstack_merger_list",  # Qwen3-VL deepstack mergers (expanded to their children)
    "connector",  # Idefics3 / SmolVLM
    "mlp1",  # InternVL remote code
    "mm_projector",  # LLaVA remote code
)


# --------------------------------------------------------------------------- pure functions


def score_tokens(k: int) -> tuple[str, ...]:
    """The score-token strings: ``("<score>",)`` for k = 1, ``("<score1>", …, "<score5>")`` for k = 5."""
    k = _check_k(k)
    return ("<score>",) if k == 1 else tuple(f"<score{i}>" for i in range(1, k + 1))


def _check_k(k: Any) -> int:
    try:
        kk = int(k)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tokens must be one of {list(TOKEN_COUNTS)}, got {k!r}") from err
    if kk not in TOKEN_COUNTS or isinstance(k, bool):
        raise ConfigError(f"tokens must be one of {list(TOKEN_COUNTS)} (<score> or <score1>..<score5>), got {k!r}")
    return kk


def _check_range(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ConfigError(f"MOS range must be two finite numbers LO < HI, got ({lo}, {hi})")
    return lo, hi


def mos_bins(mos: Any, lo: float, hi: float, k: int) -> np.ndarray:
    """0-based score-token index of each MOS: equal-width bins of ``[lo, hi]`` (values outside go to the end bins).

    Bin i covers ``[lo + i·w, lo + (i+1)·w)`` with ``w = (hi − lo)/k``; ``hi`` itself is in the last bin.
    """
    lo, hi = _check_range(lo, hi)
    k = _check_k(k)
    u = (np.asarray(mos, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(np.floor(u * k), 0, k - 1).astype(np.int64)


def data_bin_range(quality: Any) -> tuple[float, float]:
    """The bin range Q-Align uses: min and max of the (training) MOS.

    Raises:
        ConfigError: no finite score, or every score is the same (no range to bin: give a fixed one).
    """
    q = np.asarray(quality, dtype=np.float64)
    q = q[np.isfinite(q)]
    if q.size == 0:
        raise ConfigError("no finite training score to take the score-token bin range from")
    lo, hi = float(q.min()), float(q.max())
    if not hi > lo:
        raise ConfigError(
            f"every training score is {lo:g}: the score tokens' bins need a range; pass a fixed one "
            "(bin_range=(LO, HI), CLI --bin-range LO HI)"
        )
    return lo, hi


def bin_centers(lo: float, hi: float, k: int) -> np.ndarray:
    """MOS at the centre of each of the k equal-width bins."""
    lo, hi = _check_range(lo, hi)
    k = _check_k(k)
    return lo + (np.arange(k) + 0.5) * (hi - lo) / k


def normalize_mos(mos: Any, lo: float, hi: float) -> np.ndarray:
    """``(MOS − lo) / (hi − lo)``: the unit the head is trained in (loss weights do not depend on the scale)."""
    lo, hi = _check_range(lo, hi)
    return (np.asarray(mos, dtype=np.float64) - lo) / (hi - lo)


def denormalize(u: Any, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`normalize_mos`."""
    lo, hi = _check_range(lo, hi)
    return lo + np.asarray(u, dtype=np.float64) * (hi - lo)


# --------------------------------------------------------------------------- settings


@dataclass
class HeadConfig:
    """The regression head.

    Attributes:
        dims: hidden widths of the MLP (reference: 2048, 1024); empty = one linear layer.
        activation: ``relu`` (reference), ``gelu``, ``silu`` or ``tanh``.
        dropout: dropout after each hidden layer during training.
    """

    dims: tuple[int, ...] = (2048, 1024)
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        try:
            self.dims = tuple(int(d) for d in self.dims)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"head dims must be positive integers, got {self.dims!r}") from err
        if any(d < 1 for d in self.dims):
            raise ConfigError(f"head dims must be positive integers, got {list(self.dims)}")
        if self.activation not in HEAD_ACTIVATIONS:
            raise ConfigError(f"unknown head activation {self.activation!r}; known: {', '.join(HEAD_ACTIVATIONS)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"head dropout must be in [0, 1), got {self.dropout}")
        self.dropout = float(self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "activation": self.activation, "dropout": self.dropout}


@dataclass
class LoraSettings:
    """LoRA on the language model (peft).

    Attributes:
        r: rank.
        alpha: scaling numerator (``lora_alpha``).
        dropout: LoRA dropout.
        target: regular expression over module names (peft ``target_modules``); the default adapts the language
            model's attention and MLP projections only.
        tune_projector: also train the vision-language projector in full (saved with the adapter).
        tune_vision: also train the vision encoder and its projector in full (saved with the adapter; Q-Scorer's
            official recipe: mPLUG-Owl2's ViT and visual abstractor).
        train_lm_head: train the whole LM head (saved with the adapter; the official recipe does).
        train_token_rows: train the score tokens' embedding rows (lmmiqa); the official recipe leaves the input rows
            as initialised (with ``train_lm_head`` the output rows train as part of the head).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target: str = LORA_TARGET
    tune_projector: bool = False
    tune_vision: bool = False
    train_lm_head: bool = False
    train_token_rows: bool = True

    def __post_init__(self) -> None:
        if int(self.r) < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.r}")
        self.r = int(self.r)
        if float(self.alpha) <= 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha}")
        self.alpha = float(self.alpha)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.dropout = float(self.dropout)
        try:
            re.compile(self.target)
        except re.error as err:
            raise ConfigError(f"LoRA target {self.target!r} is not a valid regular expression: {err}") from err
        for name in ("tune_projector", "tune_vision", "train_lm_head", "train_token_rows"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target": self.target,
                "tune_projector": self.tune_projector, "tune_vision": self.tune_vision,
                "train_lm_head": self.train_lm_head, "train_token_rows": self.train_token_rows}


@dataclass(frozen=True)
class QScorerSpec:
    """What a Q-Scorer artifact records about itself (``qscorer.json``).

    Attributes:
        base_model: the model id/path the adapter was trained on.
        k: number of score tokens (1 or 5).
        mos_range: ``(lo, hi)`` of the MOS the head predicts (higher is better).
        bin_range: ``(lo, hi)`` over which the MOS is cut into the k score tokens' equal-width bins (training
            targets; ``details.token_mos`` at inference); None = ``mos_range`` (artifacts written before the bin
            range was recorded).
        bin_source: where ``bin_range`` came from: ``"training min-max"`` (default), ``"fixed"`` or
            ``"mos_range"``.
        hidden_size: width of the hidden state the head reads.
        token_ids: vocabulary ids of the score tokens (checked on load).
        n_base_tokens: tokenizer length before the score tokens were added.
        head: head settings.
        lora: LoRA settings.
        question, answer_prefix: the prompt (answer = prefix + " " + token).
        source_higher_is_better: false when the training labels were lower-is-better (DMOS) and were flipped
            onto the same range (``lo + hi − DMOS``), so the score is always higher-is-better.
        merged: the folder is a standalone merged model (no peft adapter).
        merged_from: the adapter folder a merged export came from.
        dataset: summary of the training data.
        image_position: ``before`` (image, then the question: lmmiqa's default) or ``after`` (the question, then
            the image: Q-Scorer's official prompt), at training and inference.
        head_target: ``normalized`` (the head predicts ``(MOS − lo)/(hi − lo)``: lmmiqa) or ``raw`` (the MOS
            itself: the official recipe).
        score_clamp: the range the score is clamped to at inference (None: ``mos_range``; the official [0, 5]).
        token_lstrip: the score tokens absorb the space before them (lmmiqa); false as in the official code, where
            ``... is <score3>`` is written ``▁is ▁ <score3>`` and the prompt is scored with the trailing space.
        train_system_prompt: the system prompt of the training prompts (the official recipe's vicuna_v1 text;
            inference prompts have none, as the official evaluation).
        recipe: the training recipe (preset) the adapter was trained with, None for lmmiqa's defaults.
    """

    base_model: str
    k: int
    mos_range: tuple[float, float]
    hidden_size: int
    token_ids: tuple[int, ...]
    n_base_tokens: int
    head: HeadConfig = field(default_factory=HeadConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    question: str = QALIGN_QUESTION
    answer_prefix: str = QALIGN_ANSWER_PREFIX
    source_higher_is_better: bool = True
    merged: bool = False
    merged_from: str | None = None
    dataset: dict[str, Any] | None = None
    bin_range: tuple[float, float] | None = None
    bin_source: str = "mos_range"
    image_position: str = "before"
    head_target: str = "normalized"
    score_clamp: tuple[float, float] | None = None
    token_lstrip: bool = True
    train_system_prompt: str | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"unknown image_position {self.image_position!r}; known: {', '.join(IMAGE_POSITIONS)}")
        if self.head_target not in HEAD_TARGETS:
            raise ConfigError(f"unknown head_target {self.head_target!r}; known: {', '.join(HEAD_TARGETS)}")
        if self.score_clamp is not None:
            object.__setattr__(self, "score_clamp", _check_range(*self.score_clamp))
        object.__setattr__(self, "k", _check_k(self.k))
        object.__setattr__(self, "mos_range", _check_range(*self.mos_range))
        if self.bin_range is not None:
            object.__setattr__(self, "bin_range", _check_range(*self.bin_range))
        if self.bin_source not in BIN_SOURCES:
            raise ConfigError(f"unknown bin_source {self.bin_source!r}; known: {', '.join(BIN_SOURCES)}")
        object.__setattr__(self, "token_ids", tuple(int(i) for i in self.token_ids))
        if len(self.token_ids) != self.k:
            raise ConfigError(f"{self.k} score tokens need {self.k} token ids, got {list(self.token_ids)}")

    @property
    def tokens(self) -> tuple[str, ...]:
        return score_tokens(self.k)

    @property
    def bins(self) -> tuple[float, float]:
        """The range the score tokens' bins cut: ``bin_range``, else ``mos_range``."""
        return self.bin_range if self.bin_range is not None else self.mos_range

    def answer(self, token_index: int) -> str:
        """The training answer for score token ``token_index`` (0-based)."""
        return f"{self.answer_prefix} {self.tokens[token_index]}"

    @property
    def score_prefix(self) -> str:
        """The answer prefix of inference prompts: ends where the position predicting the score token is (with a
        trailing space when the tokens do not absorb it: its ``▁`` is that position)."""
        return self.answer_prefix if self.token_lstrip else self.answer_prefix + " "

    @property
    def clamp_range(self) -> tuple[float, float]:
        """The range scores are clamped to at inference."""
        return self.score_clamp if self.score_clamp is not None else self.mos_range

    def head_to_mos(self, u: Any) -> np.ndarray:
        """Head outputs on the MOS scale (``raw`` heads predict it directly)."""
        if self.head_target == "raw":
            return np.asarray(u, dtype=np.float64)
        return denormalize(u, *self.mos_range)

    def mos_to_head(self, mos: Any) -> np.ndarray:
        """Training targets of the head for MOS values."""
        if self.head_target == "raw":
            return np.asarray(mos, dtype=np.float64)
        return normalize_mos(mos, *self.mos_range)

    def prompt_parts(self, image: Any) -> list[Any]:
        """The user turn: image and question in the recorded order."""
        return [self.question, image] if self.image_position == "after" else [image, self.question]

    def to_dict(self) -> dict[str, Any]:
        from lmmiqa import __version__

        return json_safe(
            {
                "registered_name": REGISTERED_NAME,
                "kind": ARTIFACT_KIND,
                "schema_version": SCHEMA_VERSION,
                "lmmiqa_version": __version__,
                "base_model": self.base_model,
                "k": self.k,
                "tokens": list(self.tokens),
                "token_ids": list(self.token_ids),
                "n_base_tokens": self.n_base_tokens,
                "mos_range": list(self.mos_range),
                "bin_range": list(self.bins),
                "bin_source": self.bin_source if self.bin_range is not None else "mos_range",
                "higher_is_better": True,
                "source_higher_is_better": self.source_higher_is_better,
                "hidden_size": self.hidden_size,
                "head": self.head.to_dict(),
                "lora": self.lora.to_dict(),
                "question": self.question,
                "answer_prefix": self.answer_prefix,
                "merged": self.merged,
                "merged_from": self.merged_from,
                "dataset": self.dataset,
                "image_position": self.image_position,
                "head_target": self.head_target,
                "score_clamp": list(self.score_clamp) if self.score_clamp is not None else None,
                "token_lstrip": self.token_lstrip,
                "train_system_prompt": self.train_system_prompt,
                "recipe": self.recipe,
                "files": {"head": HEAD_FILE, "adapter": None if self.merged else ADAPTER_WEIGHTS},
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QScorerSpec:
        try:
            head = d.get("head") or {}
            return cls(
                base_model=str(d["base_model"]),
                k=int(d["k"]),
                mos_range=(float(d["mos_range"][0]), float(d["mos_range"][1])),
                hidden_size=int(d["hidden_size"]),
                token_ids=tuple(int(i) for i in d["token_ids"]),
                n_base_tokens=int(d["n_base_tokens"]),
                head=HeadConfig(tuple(head.get("dims", (2048, 1024))), head.get("activation", "relu"),
                                float(head.get("dropout", 0.0))),
                lora=LoraSettings(**(d.get("lora") or {})),
                question=str(d.get("question", QALIGN_QUESTION)),
                answer_prefix=str(d.get("answer_prefix", QALIGN_ANSWER_PREFIX)),
                source_higher_is_better=bool(d.get("source_higher_is_better", True)),
                merged=bool(d.get("merged", False)),
                merged_from=d.get("merged_from"),
                dataset=d.get("dataset"),
                bin_range=(float(d["bin_range"][0]), float(d["bin_range"][1])) if d.get("bin_range") else None,
                bin_source=str(d.get("bin_source", "mos_range")),
                image_position=str(d.get("image_position", "before")),
                head_target=str(d.get("head_target", "normalized")),
                score_clamp=tuple(d["score_clamp"]) if d.get("score_clamp") else None,
                token_lstrip=bool(d.get("token_lstrip", True)),
                train_system_prompt=d.get("train_system_prompt"),
                recipe=d.get("recipe"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DataError(f"malformed {SPEC_FILE}: {type(err).__name__}: {err}") from err


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding ``qscorer.json`` (an adapter or a merged export)."""
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(path: str | os.PathLike[str]) -> QScorerSpec:
    """Read and validate an artifact folder's ``qscorer.json``.

    Raises:
        DataError: not a folder, not a Q-Scorer artifact, a newer schema, or missing weight files.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Q-Scorer adapter folder not found: {root}")
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise DataError(f"{root} is not a Q-Scorer adapter (no {SPEC_FILE}); train one with `lmmiqa train q-scorer`")
    try:
        data = json.loads(spec_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{spec_path} is not valid JSON: {err}") from err
    if data.get("kind") != ARTIFACT_KIND or data.get("registered_name") != REGISTERED_NAME:
        raise DataError(f"{spec_path} describes {data.get('kind') or data.get('registered_name')!r}, not a Q-Scorer")
    version = int(data.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise DataError(f"{root} has schema version {version}; this lmmiqa reads up to {SCHEMA_VERSION} (upgrade lmmiqa)")
    spec = QScorerSpec.from_dict(data)
    needed = [HEAD_FILE] if spec.merged else [HEAD_FILE, ADAPTER_WEIGHTS, "adapter_config.json"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root} is missing {', '.join(missing)}")
    return spec


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- model surgery


def add_score_tokens(tokenizer: Any, model: Any, k: int, lstrip: bool = True) -> tuple[list[int], int]:
    """Add the score tokens to ``tokenizer`` and give them deterministic embedding rows in ``model``.

    The tokens are special and absorb the space before them (``lstrip``; Q-Scorer's official code adds them
    without it: ``lstrip=False``). The embedding matrices grow when the
    new ids do not fit (``mean_resizing=False``; many checkpoints already have spare rows). Every new id's input
    row becomes the mean of the input rows of the original vocabulary, and its output (LM head) row the mean of
    the original output rows; with tied embeddings the shared row is set once.

    Returns:
        ``(token ids, tokenizer length before adding)``.

    Raises:
        ConfigError: the tokenizer already has one of the tokens (e.g. a merged export was given as a base model).
        UnsupportedError: the model has no output embeddings.
    """
    import torch
    from transformers import AddedToken

    strings = score_tokens(k)
    vocab = tokenizer.get_vocab()
    present = [s for s in strings if s in vocab]
    if present:
        raise ConfigError(
            f"the tokenizer already has {', '.join(present)}; is this a merged Q-Scorer export? Load it with "
            "adapter=FOLDER (or model=FOLDER) instead of adding tokens again"
        )
    n_before = len(tokenizer)
    added = tokenizer.add_tokens(
        [AddedToken(s, lstrip=bool(lstrip), rstrip=False, normalized=False, special=True) for s in strings],
        special_tokens=True,
    )
    if added != len(strings):
        raise ConfigError(f"could only add {added} of the score tokens {list(strings)}")
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(list(strings))]
    emb_in = model.get_input_embeddings()
    emb_out = model.get_output_embeddings()
    if emb_out is None:
        raise UnsupportedError(f"{type(model).__name__} has no output embeddings; Q-Scorer needs an LM head")
    rows = int(emb_in.weight.shape[0])
    if max(ids) >= rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb_in = model.get_input_embeddings()
        emb_out = model.get_output_embeddings()
    n_mean = min(n_before, rows)
    tied = emb_in.weight.data_ptr() == emb_out.weight.data_ptr()
    idx = torch.tensor(ids, device=emb_in.weight.device)
    with torch.no_grad():
        w_in = emb_in.weight
        w_in[idx] = w_in[:n_mean].float().mean(dim=0).to(w_in.dtype)
        if not tied:
            w_out = emb_out.weight
            w_out[idx.to(w_out.device)] = w_out[:n_mean].float().mean(dim=0).to(w_out.dtype)
            bias = getattr(emb_out, "bias", None)
            if bias is not None:
                bias[idx.to(bias.device)] = bias[:n_mean].float().mean().to(bias.dtype)
    return ids, n_before


def embeddings_tied(model: Any) -> bool:
    """Whether the input embedding and LM head share one weight tensor (looking through peft wrappers)."""

    def weight(module: Any) -> Any:
        for _ in range(4):  # peft wrappers: TrainableTokensWrapper.original_module, tuner layers' base_layer
            inner = getattr(module, "original_module", None)
            if inner is None and hasattr(module, "get_base_layer"):
                inner = module.get_base_layer()
            if inner is None or inner is module:
                break
            module = inner
        return module.weight

    out = model.get_output_embeddings()
    return out is not None and weight(model.get_input_embeddings()).data_ptr() == weight(out).data_ptr()


def projector_module_names(model: Any) -> list[str]:
    """Full names of the vision-language projector modules (see :data:`PROJECTOR_NAMES`).

    Raises:
        UnsupportedError: no known projector in this architecture (the message lists the names looked for).
    """
    import torch

    found: list[str] = []
    for name, module in model.named_modules():
        for cand in PROJECTOR_NAMES:
            if name == cand or name.endswith("." + cand):
                if isinstance(module, torch.nn.ModuleList):
                    found.extend(f"{name}.{i}" for i in range(len(module)))
                else:
                    found.append(name)
    if not found:
        raise UnsupportedError(
            f"tune_projector: no vision-language projector found in {type(model).__name__} "
            f"(looked for modules named {', '.join(PROJECTOR_NAMES)})"
        )
    return found


def vision_module_names(model: Any) -> list[str]:
    """Full names of the vision encoder and projector modules (``tune_vision``; see :data:`VISION_NAMES` and
    :data:`PROJECTOR_NAMES`), outermost only.

    Raises:
        UnsupportedError: none found (the message lists the names looked for).
    """
    found: list[str] = []
    for name, _module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (last in VISION_NAMES or any(name == c or name.endswith("." + c) for c in PROJECTOR_NAMES)) and not any(
            name.startswith(f + ".") for f in found
        ):
            found.append(name)
    if not found:
        raise UnsupportedError(
            f"tune_vision: no vision encoder found in {type(model).__name__} (looked for modules named "
            f"{', '.join(VISION_NAMES + PROJECTOR_NAMES)})"
        )
    return found


def apply_lora(model: Any, token_ids: Sequence[int], lora: LoraSettings) -> Any:
    """Wrap ``model`` with peft LoRA + trainable score-token rows (+ the projector when ``tune_projector``).

    Only the LoRA matrices, the score-token rows of the input embedding and LM head (one shared set when tied)
    and, optionally, the projector are trainable; everything else is frozen.

    Raises:
        UnsupportedError: peft could not make the LM-head rows of tied embeddings trainable.
    """
    peft = require("peft", "train", "Q-Scorer LoRA")
    names = {id(m): n for n, m in model.named_modules()}
    emb_name = names[id(model.get_input_embeddings())]
    out_name = names[id(model.get_output_embeddings())]
    tied = embeddings_tied(model)
    indices: dict[str, list[int]] | None = (
        {emb_name: list(token_ids)} if tied else {emb_name: list(token_ids), out_name: list(token_ids)}
    )
    save: list[str] = []
    if lora.tune_vision:
        save.extend(vision_module_names(model))
    elif lora.tune_projector:
        save.extend(projector_module_names(model))
    if lora.train_lm_head:
        if tied:
            raise UnsupportedError(f"{type(model).__name__} ties its LM head to the input embedding: train_lm_head "
                                   "would train the embedding too")
        save.append(out_name)
        assert indices is not None
        indices.pop(out_name, None)  # its rows train with the whole head
    if not lora.train_token_rows:
        indices = None if lora.train_lm_head or tied else {out_name: list(token_ids)}
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target,
        trainable_token_indices=indices or None,
        modules_to_save=save or None,
        bias="none",
    )
    import warnings

    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing for the user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        pm = peft.get_peft_model(model, config)
    if tied and indices:
        from peft.utils.other import TrainableTokensWrapper

        if not isinstance(pm.get_output_embeddings(), TrainableTokensWrapper):
            raise UnsupportedError(
                f"{type(model).__name__} ties its input and output embeddings, but peft did not tie the trainable "
                "score-token rows of the LM head (the model config must say tie_word_embeddings=true)"
            )
    return pm


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedQScorer:
    """A Q-Scorer ready to run.

    Attributes:
        spec: the artifact's settings.
        backend: the transformers backend (its processor encodes prompts; ``backend.model`` is the adapted model).
        net: the :class:`~lmmiqa.training._q_scorer_torch.QScorerNet` (model + head), in eval mode.
        path: the artifact folder.
        source_model: the folder/id the weights were loaded from (the base model, or the merged folder).
    """

    spec: QScorerSpec
    backend: Any
    net: Any
    path: Path
    source_model: str


def load_head(path: Path, spec: QScorerSpec, device: Any) -> Any:
    """Build the head from the spec and load ``head.safetensors``."""
    from safetensors.torch import load_file

    from lmmiqa.training._q_scorer_torch import build_head

    head = build_head(spec.hidden_size, spec.head.dims, spec.head.activation, spec.head.dropout)
    state = load_file(str(path / HEAD_FILE))
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{path / HEAD_FILE} does not match the head described in {SPEC_FILE}: {err}") from err
    return head.to(device).eval()


def load_q_scorer(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    local_files_only: bool | None = None,
    max_batch: int = 32,
    merge_lora: bool = False,
    max_pixels: int | str | None = None,
    min_pixels: int | str | None = None,
    max_batch_tokens: int | None = None,
) -> LoadedQScorer:
    """Load a Q-Scorer artifact (adapter folder or merged export).

    Args:
        path: the artifact folder.
        model: the base model to apply an adapter to (default: the one recorded in the artifact; pass a local
            folder when the recorded hub id is not reachable). Must be omitted (or equal ``path``) for merged exports.
        device, dtype, attn_implementation, local_files_only, max_batch, max_pixels, min_pixels, max_batch_tokens:
            transformers backend options (``max_pixels`` None: the backend's default budget).
        merge_lora: merge the LoRA weights into the base weights after loading (faster; scores then differ from
            the unmerged model by float rounding, ~1e-6).

    Raises:
        DataError: not an artifact, or the base model's tokenizer/width differs from the one trained on.
    """
    require("peft", "train", "Q-Scorer adapters")
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.training._q_scorer_torch import QScorerNet

    root = Path(path)
    spec = read_spec(root)
    if spec.merged:
        if model is not None and Path(model).resolve() != root.resolve():
            raise ConfigError(f"{root} is a merged Q-Scorer export (a standalone model); do not pass another model")
        source = str(root)
    else:
        source = model or spec.base_model
    budget: dict[str, Any] = {"min_pixels": min_pixels, "max_batch_tokens": max_batch_tokens}
    if max_pixels is not None:
        budget["max_pixels"] = max_pixels
    backend = TransformersBackend(
        TransformersConfig(model=source, device=device, dtype=dtype, attn_implementation=attn_implementation,
                           local_files_only=local_files_only, max_batch=max_batch, **budget)
    )
    if spec.merged:
        ids = [int(i) for i in backend.tokenizer.convert_tokens_to_ids(list(spec.tokens))]
        if ids != list(spec.token_ids):
            raise DataError(f"the tokenizer in {root} maps {list(spec.tokens)} to {ids}, not {list(spec.token_ids)}")
        lm = backend.model
        width = int(lm.get_output_embeddings().in_features)
        if width != spec.hidden_size:
            raise DataError(f"{source} has hidden size {width}; the head in {root} reads {spec.hidden_size}")
    else:
        width = int(backend.model.get_output_embeddings().in_features)
        if width != spec.hidden_size:
            raise DataError(f"{source} has hidden size {width}; the head in {root} reads {spec.hidden_size}")
        ids, n_before = add_score_tokens(backend.tokenizer, backend.model, spec.k, lstrip=spec.token_lstrip)
        if ids != list(spec.token_ids) or n_before != spec.n_base_tokens:
            raise DataError(
                f"the tokenizer of {source} differs from the one the adapter in {root} was trained with "
                f"(score tokens {ids} vs {list(spec.token_ids)}, base vocabulary {n_before} vs {spec.n_base_tokens})"
            )
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            lm = PeftModel.from_pretrained(backend.model, str(root), is_trainable=False)
        if merge_lora:
            lm = lm.merge_and_unload()
    lm.eval()
    backend.model = lm
    head = load_head(root, spec, backend.device)
    net = QScorerNet(lm, head, ids).eval()
    return LoadedQScorer(spec=spec, backend=backend, net=net, path=root, source_model=source)


@dataclass
class Prediction:
    """Raw Q-Scorer outputs for a list of images.

    Attributes:
        head_norm: the head's unclamped output, float64 [N]: normalized units ``(MOS − lo)/(hi − lo)``, or the MOS
            itself for a ``raw`` head (:meth:`QScorerSpec.head_to_mos` converts either).
        token_logprobs: full-vocabulary log-probabilities of the k score tokens at the score position, [N, k].
        top_ids: the model's most likely next tokens at the score position, [N, 8] (for the covered-mass warning).
        top_logprobs: their log-probabilities, [N, 8].
    """

    head_norm: np.ndarray
    token_logprobs: np.ndarray
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None


def predict(
    net: Any,
    backend: Any,
    images: Sequence[Any],
    spec: QScorerSpec,
    batch_size: int = 8,
    autocast: Any | None = None,
) -> Prediction:
    """One forward pass per batch of ``batch_size`` images up to the score position (no decoding).

    Args:
        net: a :class:`~lmmiqa.training._q_scorer_torch.QScorerNet` (put it in eval mode first).
        backend: the transformers backend whose :meth:`encode` batches the prompts (left padding).
        images: RGB PIL images.
        spec: the artifact settings (prompt strings).
        batch_size: images per forward pass.
        autocast: a context-manager factory to run the forward under (training: ``accelerator.autocast``).

    Raises:
        BackendError: the processor padded on the right (the score position must be the last one).
    """
    import contextlib

    import torch

    from lmmiqa.errors import BackendError
    from lmmiqa.types import Prompt

    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    heads: list[np.ndarray] = []
    lps: list[np.ndarray] = []
    tops: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(images), int(batch_size)):
        chunk = images[start : start + int(batch_size)]
        prompts = [Prompt.simple(spec.prompt_parts(im), answer_prefix=spec.score_prefix) for im in chunk]
        inputs = backend.encode(prompts)
        mask = inputs.get("attention_mask")
        if mask is not None and not bool(mask[:, -1].all()):
            raise BackendError("q-scorer reads the last position of each prompt; the processor must pad on the left")
        ctx = autocast() if autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:  # not inference_mode: the model may cache tensors it reuses in training
            logits, u = net(inputs, logits_to_keep=1)
            full = torch.log_softmax(logits[:, -1].float(), dim=-1)
            lp = full[:, net.score_ids]
            top_v, top_i = torch.topk(full, k=min(8, full.shape[-1]), dim=-1)
        heads.append(u.float().cpu().numpy())
        lps.append(lp.cpu().numpy())
        tops.append((top_i.cpu().numpy(), top_v.cpu().numpy()))
    k = len(spec.token_ids)
    if not heads:
        return Prediction(np.zeros(0), np.zeros((0, k)))
    return Prediction(
        np.concatenate(heads).astype(np.float64),
        np.concatenate(lps).astype(np.float64),
        np.concatenate([t[0] for t in tops]),
        np.concatenate([t[1] for t in tops]).astype(np.float64),
    )


def save_adapter(
    out: str | os.PathLike[str],
    peft_model: Any,
    head: Any,
    spec: QScorerSpec,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write an adapter artifact: peft adapter (LoRA + score-token rows), head, ``qscorer.json``, ``training.json``."""
    from safetensors.torch import save_file

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(root), save_embedding_layers=False)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in head.state_dict().items()}
    tmp = root / (HEAD_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "kind": ARTIFACT_KIND})
    os.replace(tmp, root / HEAD_FILE)
    if training is not None:
        _write_json(root / TRAINING_FILE, training)
    _write_json(root / SPEC_FILE, spec.to_dict())  # last: its presence marks a complete artifact
    return root


def _stored_dtype(model: str, local_files_only: bool | None) -> str:
    """The dtype a checkpoint's config declares (``float32`` when it declares none)."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    cfg = AutoConfig.from_pretrained(model, **kwargs)
    dt = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    name = str(dt).replace("torch.", "") if dt is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def export_merged(
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    local_files_only: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge an adapter into its base model and write a standalone model folder.

    The folder holds the merged model (LoRA folded into the weights, score-token rows in the resized
    embeddings), the processor whose tokenizer knows the score tokens, ``head.safetensors`` and ``qscorer.json``
    with ``merged: true``; load it with the ``q-scorer`` scorer (``adapter=DIR`` or ``model=DIR``).

    Args:
        adapter: the adapter folder.
        out: destination folder (must be empty or absent unless ``overwrite``).
        model: base model override (see :func:`load_q_scorer`).
        dtype: weights dtype; ``auto`` = the dtype the base checkpoint declares.
        device: where to do the merge (``cpu`` by default: needs RAM for the whole model).
        overwrite: replace the contents of a non-empty ``out``.
    """
    spec = read_spec(adapter)
    if spec.merged:
        raise ConfigError(f"{adapter} is already a merged export")
    dest = Path(out)
    if dest.resolve() == Path(adapter).resolve():
        raise ConfigError("the merged export must go to another folder than the adapter")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise ConfigError(f"{dest} is not empty; pass overwrite (CLI: --overwrite) to replace it")
        shutil.rmtree(dest)
    if dtype == "auto":
        dtype = _stored_dtype(model or spec.base_model, local_files_only)
    loaded = load_q_scorer(adapter, model=model, device=device, dtype=dtype, local_files_only=local_files_only,
                           merge_lora=True)
    dest.mkdir(parents=True, exist_ok=True)
    lm = loaded.net.lm
    lm.save_pretrained(str(dest), safe_serialization=True)
    loaded.backend.processor.save_pretrained(str(dest))
    shutil.copyfile(Path(adapter) / HEAD_FILE, dest / HEAD_FILE)
    if (Path(adapter) / TRAINING_FILE).is_file():
        shutil.copyfile(Path(adapter) / TRAINING_FILE, dest / TRAINING_FILE)
    merged = replace(spec, merged=True, merged_from=str(Path(adapter).resolve()))
    _write_json(dest / SPEC_FILE, merged.to_dict())
    log.info("merged %s into %s (%s)", adapter, dest, dtype)
    return dest
