"""Q-Scorer: score tokens + a regression head on a LoRA-fine-tuned MLLM (METHODS §4).

The scorer loads an artifact made by ``lmmiqa train q-scorer`` (an adapter folder) or by
``lmmiqa export q-scorer ADAPTER --merged DIR`` (a standalone merged model), asks
"How would you rate the quality of this image?" with the answer prefix "The quality of the image is", and
runs **one forward pass** per batch up to the position that predicts the score token:

* ``score`` — the head's output on the MOS scale of the training data, clamped to that range
  (``details.head_raw`` holds the unclamped value, ``details.clamped`` says whether clamping changed it);
* ``probabilities`` — for k = 5, the distribution over ``<score1>`` … ``<score5>`` (keys ``"1"``..``"5"``, the
  bin index; ``details.level_words`` names the tokens, ``details.argmax``/``std``/``expected`` describe it in bin
  units, ``details.token_mos`` is its expectation mapped to the MOS of the centres of the bins the adapter was
  trained with (``details.bin_range``: the training split's MOS min–max unless a fixed range was given) and
  ``details.covered_mass`` the full-vocabulary probability of the five tokens). For k = 1 ``probabilities`` is
  ``None`` and ``details.score_token_prob`` is the full-vocabulary probability of ``<score>``.

Q-Scorer's **official release** (``adapter_config.json`` + ``non_lora_trainables.bin`` on mPLUG-Owl2; a local folder
or the hub id ``2kxx/Qscorer_lora_5_1``, preset ``paper``) is loaded as its ``builder.py`` loads it and scored as its
``iqa_eval.py`` scores (:mod:`lmmiqa.methods.q_scorer_release`): score = the ``deepmlp`` head clamped to
[0, 5], ``probabilities`` over ``<score1>`` … ``<score5>`` after the greedy token (``iqa_eval.py``'s two steps).

Prompts are encoded with the transformers backend's own :meth:`~lmmiqa.backends.transformers_local.TransformersBackend.encode`
(left padding), so batching behaves as for every other MLLM method.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lmmiqa.backends.pixels import DEFAULT_MAX_PIXELS, check_budget, parse_pixels
from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.types import ScoreResult


@dataclass
class QScorerConfig(ScorerConfig):
    """Q-Scorer options.

    Attributes:
        adapter: the artifact folder (adapter from ``lmmiqa train q-scorer``, or a merged export). May be
            omitted when ``model`` is a merged export.
        model: with an adapter, the base model to apply it to (default: the id recorded in the adapter; pass a
            local folder when offline); without an adapter, a merged export folder.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        merge_lora: fold the LoRA weights into the base weights at load (faster; scores move by float rounding).
        max_pixels: largest width×height of an image given to the model (default 1024×1024, as in training;
            ``"model"``: the checkpoint's own limits). min_pixels: smallest (default: the checkpoint's).
        max_batch_tokens: padded positions per forward (default: from the free memory; 0: fixed chunks).
        backend_options: further transformers backend options (``attn_implementation``, ``max_batch``,
            ``local_files_only``).
    """

    adapter: str | None = None
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    merge_lora: bool = False
    max_pixels: int | str = DEFAULT_MAX_PIXELS
    min_pixels: int | str | None = None
    max_batch_tokens: int | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        from lmmiqa.methods.q_scorer_release import is_hub_release, is_release
        from lmmiqa.training.q_scorer_model import is_artifact

        if not self.adapter and is_release(self.model):  # Q-Scorer's official release given as the model
            self.adapter, self.model = self.model, None
        if not self.adapter:
            if self.model and is_artifact(self.model):
                self.adapter = str(self.model)
                self.model = None
            else:
                raise ConfigError(
                    "q-scorer needs a trained adapter: adapter=DIR (CLI: --adapter DIR), made by "
                    "`lmmiqa train q-scorer`, or model=DIR of a merged export (`lmmiqa export q-scorer --merged`), "
                    "or Q-Scorer's released folder (adapter_config.json + non_lora_trainables.bin) with model= its "
                    "mPLUG-Owl2 base"
                )
        self.adapter = str(self.adapter)
        if not (is_artifact(self.adapter) or is_release(self.adapter) or is_hub_release(self.adapter)):
            raise ConfigError(
                f"q-scorer: {self.adapter!r} is neither an lmmiqa Q-Scorer folder (qscorer.json, from `lmmiqa train "
                "q-scorer` or `lmmiqa export q-scorer`) nor Q-Scorer's released folder (adapter_config.json + "
                "non_lora_trainables.bin) nor a hub id of such a release"
            )
        if not isinstance(self.merge_lora, bool):
            raise ConfigError(f"merge_lora must be true or false, got {self.merge_lora!r}")
        check_budget(parse_pixels(self.min_pixels, "min_pixels"), parse_pixels(self.max_pixels, "max_pixels"))
        allowed = {"attn_implementation", "max_batch", "local_files_only"}
        unknown = sorted(set(self.backend_options) - allowed)
        if unknown:
            raise ConfigError(f"unknown backend option(s) {', '.join(unknown)} for q-scorer; valid: {', '.join(sorted(allowed))}")


PAPER = Preset(
    name="paper",
    target="q-scorer",
    summary="Q-Scorer's released checkpoint (k = 5 score tokens) on mPLUG-Owl2-LLaMA2-7B, scored as the official "
    "iqa_eval.py: its prompt, the hidden state after the greedy token, the deepmlp head clamped to [0, 5]",
    reference="Tang et al., Revisiting MLLM Based Image Quality Assessment: Errors and Remedy (Q-Scorer, AAAI 2026); "
    "2kxx/Q-Scorer (MIT)",
    values={
        "adapter": PresetValue("2kxx/Qscorer_lora_5_1", "Q-Scorer README: the released LoRA (k = 5), KonIQ SRCC .948 / "
                                                        "PLCC .959"),
        "model": PresetValue("MAGAer13/mplug-owl2-llama2-7b", "Q-Scorer train_lora.sh / builder.py: the base model the "
                                                              "LoRA and non_lora_trainables.bin apply to"),
    },
    notes=(
        "The release's tensor names were reconstructed from train_mem.py (shared/data/official/q-scorer/derived), not "
        "read from the release, which could not be obtained here; a release whose files differ fails naming them.",
        "The official evaluation runs float16 (builder.py); lmmiqa's dtype 'auto' is bfloat16 on CUDA and float32 on "
        "a CPU (--dtype float16 for the official precision).",
        "iqa_eval.py reads the hidden state at the greedy token after the prompt (for a trained model the lone '▁' "
        "the LLaMA-2 tokenizer puts before a score token added without lstrip: the position the training loss read) "
        "and writes the head's output unclamped; the official score() clamps to [0, 5]. lmmiqa does as they do: "
        "the score is clamped, details.head_raw is not.",
    ),
)


class QScorer(Scorer):
    """Q-Scorer: regression head on the hidden state that predicts the score token (one forward per batch)."""

    name = "q-scorer"
    config_cls = QScorerConfig
    presets: ClassVar[dict[str, Preset]] = {"paper": PAPER}
    summary = "Q-Scorer: LoRA-tuned MLLM with score tokens and an MLP head on the MOS scale (needs --adapter)"

    def __init__(self, config: QScorerConfig | None = None, loaded: Any | None = None) -> None:
        super().__init__(config)
        self._loaded = loaded
        self._lock = threading.RLock()

    @classmethod
    def from_loaded(cls, loaded: Any, **options: Any) -> QScorer:
        """A scorer around an already loaded :class:`~lmmiqa.training.q_scorer_model.LoadedQScorer`."""
        cfg = QScorerConfig(adapter=str(loaded.path), **options)
        return cls(cfg, loaded)

    # -------------------------------------------------------------------------------------------------
    @property
    def is_release(self) -> bool:
        """Whether the adapter is Q-Scorer's official release (:mod:`lmmiqa.methods.q_scorer_release`)."""
        from lmmiqa.methods.q_scorer_release import is_hub_release, is_release

        return is_release(self.config.adapter) or is_hub_release(self.config.adapter)

    @property
    def loaded(self) -> Any:
        """The loaded artifact (model, head, backend), loaded on first use."""
        with self._lock:
            if self._loaded is None and self.is_release:
                from lmmiqa.methods.q_scorer_release import load_release

                cfg = self.config
                opts = {k: v for k, v in cfg.backend_options.items() if k != "local_files_only"}
                self._loaded = load_release(
                    cfg.adapter, model=cfg.model, device=cfg.device, dtype=cfg.dtype,
                    max_batch_tokens=cfg.max_batch_tokens,
                    local_files_only=cfg.backend_options.get("local_files_only"), **opts,
                )
            if self._loaded is None:
                from lmmiqa.training.q_scorer_model import load_q_scorer

                cfg = self.config
                self._loaded = load_q_scorer(
                    cfg.adapter, model=cfg.model, device=cfg.device, dtype=cfg.dtype, merge_lora=cfg.merge_lora,
                    max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels, max_batch_tokens=cfg.max_batch_tokens,
                    **cfg.backend_options,
                )
            return self._loaded

    @property
    def spec(self) -> Any:
        if self._loaded is not None:
            return self._loaded.spec
        if self.is_release:
            from lmmiqa.methods.q_scorer_release import read_release

            return read_release(self.config.adapter, local_files_only=self.config.backend_options.get("local_files_only"))
        from lmmiqa.training.q_scorer_model import read_spec

        return read_spec(self.config.adapter)

    @property
    def scale(self) -> tuple[float, float]:
        spec = self.spec
        return tuple(getattr(spec, "clamp_range", spec.mos_range))  # type: ignore[return-value]

    @property
    def model_name(self) -> str:
        return str(self.config.adapter)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        spec = self.spec
        d.update({"base_model": spec.base_model, "k": spec.k, "mos_range": list(spec.mos_range), "merged": spec.merged,
                  "bin_range": list(spec.bins), "bin_source": spec.bin_source})
        return d

    # -------------------------------------------------------------------------------------------------
    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        if self.is_release:
            return self._score_release(items)
        from lmmiqa.training.q_scorer_model import predict

        loaded = self.loaded
        spec = loaded.spec
        t0 = time.perf_counter()
        with self._lock:
            pred = predict(loaded.net, loaded.backend, [it.image for it in items], spec,
                           batch_size=loaded.backend.config.max_batch)
        t1 = time.perf_counter()
        timings = {"forward": (t1 - t0) / max(len(items), 1)}
        from lmmiqa.methods.mllm import token_details
        from lmmiqa.types import Prompt

        # the cost of each prompt (image and total tokens), counted from the image sizes without a second forward
        prompts = [Prompt.simple(spec.prompt_parts(it.image), answer_prefix=spec.score_prefix) for it in items]
        counts = token_details(loaded.backend, prompts) or [{} for _ in items]
        if spec.k > 1:
            self._check_mass(pred, loaded.backend, prompts, spec)
        out = []
        for i, it in enumerate(items):
            r = self._result(it.key, pred.head_norm[i], pred.token_logprobs[i], spec, timings)
            r.details.update(counts[i])
            out.append(r)
        return out

    def _check_mass(self, pred: Any, backend: Any, prompts: list[Any], spec: Any) -> None:
        """The covered-mass warning for the score tokens (read here, outside the level scorer), with the model's own
        most likely next tokens from the same forward."""
        from lmmiqa.levels import covered_mass
        from lmmiqa.methods.coverage import check_covered_mass

        tops = None
        if pred.top_ids is not None:
            decode = backend.tokenizer.decode
            tops = [[(decode([int(t)]), float(v)) for t, v in zip(ids, vals)]
                    for ids, vals in zip(pred.top_ids, pred.top_logprobs)]
        check_covered_mass(covered_mass(pred.token_logprobs), backend=backend, prompts=prompts,
                           candidates=list(spec.tokens), what=self.name, tops=tops)

    def _result(self, key: str, u: float, token_lp: np.ndarray, spec: Any, timings: dict[str, float]) -> ScoreResult:
        from lmmiqa.levels import closed_set_probs, covered_mass, level_details
        from lmmiqa.training.q_scorer_model import bin_centers

        lo, hi = spec.clamp_range
        raw = float(spec.head_to_mos(u))
        score = float(min(max(raw, lo), hi))
        details: dict[str, Any] = {
            "head_raw": raw,
            "clamped": score != raw,
            "k": spec.k,
            "base_model": spec.base_model,
        }
        if getattr(spec, "recipe", None):
            details["recipe"] = spec.recipe
        probabilities: dict[str, float] | None = None
        if spec.k == 1:
            details["score_token_prob"] = float(np.exp(token_lp[0]))
        else:
            probs = closed_set_probs(token_lp[None])[0]
            probabilities, level = level_details(probs, _token_scale(spec))
            details.update(level)
            details["token_mos"] = float(probs @ bin_centers(*spec.bins, spec.k))
            details["bin_range"] = list(spec.bins)
            details["covered_mass"] = float(covered_mass(token_lp[None])[0])
        return ScoreResult(
            image=key,
            score=score,
            method=self.name,
            higher_is_better=True,
            scale=(lo, hi),
            model=self.model_name,
            probabilities=probabilities,
            details=details,
            timings=dict(timings),
        )

    def _score_release(self, items: list[ImageItem]) -> list[ScoreResult]:
        """Q-Scorer's official release, scored as its iqa_eval.py (see :mod:`lmmiqa.methods.q_scorer_release`)."""
        from lmmiqa.levels import closed_set_probs, covered_mass, level_details
        from lmmiqa.methods.mllm import token_details
        from lmmiqa.methods.q_scorer_release import predict_release
        from lmmiqa.types import Prompt

        loaded = self.loaded
        spec = loaded.spec
        t0 = time.perf_counter()
        with self._lock:
            pred = predict_release(loaded, [it.image for it in items])
        timings = {"forward": (time.perf_counter() - t0) / max(len(items), 1)}
        prompts = [Prompt.simple([spec.question, it.image], answer_prefix=spec.answer_prefix) for it in items]
        counts = token_details(loaded.backend, prompts) or [{} for _ in items]
        lo, hi = spec.mos_range
        tokenizer = loaded.backend.tokenizer
        out = []
        for i, it in enumerate(items):
            raw = float(pred.head_raw[i])
            lp = np.asarray(pred.token_logprobs[i], dtype=np.float64)
            probs = closed_set_probs(lp[None])[0]
            probabilities, level = level_details(probs, _token_scale(spec))
            details: dict[str, Any] = {
                "head_raw": raw,
                "clamped": not lo <= raw <= hi,
                "k": spec.k,
                "base_model": loaded.source_model,
                "release": True,
                "hidden_state_at": "the greedy token after the prompt (iqa_eval.py's second step)",
                "greedy_token": tokenizer.decode([pred.next_token[i]]),
                "covered_mass": float(covered_mass(lp[None])[0]),
                **level,
                **counts[i],
            }
            out.append(ScoreResult(image=it.key, score=float(min(max(raw, lo), hi)), method=self.name,
                                   higher_is_better=True, scale=(lo, hi), model=self.model_name,
                                   probabilities=probabilities, details=details, timings=dict(timings)))
        return out


def _token_scale(spec: Any) -> Any:
    from lmmiqa.levels import LevelScale

    return LevelScale(
        name=f"qscorer{spec.k}",
        tokens=tuple(spec.tokens),
        values=tuple(float(i) for i in range(1, spec.k + 1)),
        words=tuple(spec.tokens),
    )
