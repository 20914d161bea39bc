"""Shared machinery of MLLM scorers that read quality from level-token probabilities (METHODS §0)."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmmiqa.backends.base import Backend, create_backend
from lmmiqa.backends.pixels import DEFAULT_MAX_PIXELS, MODEL_LIMITS, check_budget, parse_pixels
from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.levels import READOUTS, LevelScale, closed_set_probs, level_details, readout
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.methods.coverage import check_levels
from lmmiqa.types import Prompt, ScoreResult

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"


@dataclass
class MLLMConfig(ScorerConfig):
    """Options shared by MLLM scorers.

    Attributes:
        model: hub id, local folder, or for ``backend="openai"`` ``"http://host:port/v1#served-name"``.
        backend: ``transformers`` (in-process, default) or ``openai`` (OpenAI-compatible server).
        device: transformers backend device (``auto``, ``cpu``, ``cuda``, ...).
        dtype: transformers backend dtype (``auto``, ``float32``, ``bfloat16``, ``float16``).
        readout: ``expected`` (Σ p·v, default) or ``argmax``.
        backend_options: further backend options (e.g. ``attn_implementation``, ``api_key_env``, ``timeout``).
        max_pixels: largest width×height of an image given to the model (default 1024×1024: ≤ 1,024 image tokens
            on Qwen3-VL instead of 11,750 for a 4000×3000 photo; see :mod:`lmmiqa.backends.pixels`); ``"model"``
            keeps the checkpoint's own limit. Applied by the processor where it has the knob (Qwen2-VL family),
            else by downscaling before it (the openai backend downscales before encoding).
        min_pixels: smallest width×height (default: the checkpoint's own).
        max_batch_tokens: transformers backend: padded positions per forward (default: from the free memory;
            0: fixed chunks of ``max_batch`` prompts, no sorting); see :mod:`lmmiqa.backends.planner`.
        trust_remote_code: transformers backend: allow a checkpoint's own hub code for an architecture neither
            transformers nor lmmiqa implements (off by default; the families of :mod:`lmmiqa.families`, e.g.
            mPLUG-Owl2, always run lmmiqa's native code).
    """

    model: str = DEFAULT_MODEL
    backend: str = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    readout: str = "expected"
    backend_options: dict[str, Any] = field(default_factory=dict)
    max_pixels: int | str = DEFAULT_MAX_PIXELS
    min_pixels: int | str | None = None
    max_batch_tokens: int | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.readout not in READOUTS:
            raise ConfigError(f"unknown readout {self.readout!r}; known: {', '.join(READOUTS)}")
        from lmmiqa import registry

        self.backend = registry.canonical("backend", self.backend)
        hi = parse_pixels(self.max_pixels, "max_pixels")
        lo = parse_pixels(self.min_pixels, "min_pixels")
        check_budget(lo, hi)
        self.max_pixels = MODEL_LIMITS if hi is None else hi
        self.min_pixels = lo
        if self.max_batch_tokens is not None:
            if isinstance(self.max_batch_tokens, bool) or int(self.max_batch_tokens) < 0:
                raise ConfigError(f"max_batch_tokens must be >= 0 (0: off), got {self.max_batch_tokens!r}")
            self.max_batch_tokens = int(self.max_batch_tokens)
            if self.backend != "transformers":
                raise ConfigError(
                    f"max_batch_tokens applies to the transformers backend; the {self.backend} backend sends one "
                    "request per prompt (set its concurrency instead)"
                )

    def backend_kwargs(self) -> dict[str, Any]:
        opts = dict(self.backend_options)
        if self.backend == "transformers":
            opts.setdefault("device", self.device)
            opts.setdefault("dtype", self.dtype)
            if self.max_batch_tokens is not None:
                opts.setdefault("max_batch_tokens", self.max_batch_tokens)
            if self.trust_remote_code:
                opts.setdefault("trust_remote_code", True)
        if self.backend in ("transformers", "openai"):
            opts.setdefault("max_pixels", self.max_pixels)
            if self.min_pixels is not None:
                opts.setdefault("min_pixels", self.min_pixels)
        return opts


class MLLMScorer(Scorer):
    """A scorer that talks to one MLLM backend, created lazily from ``model``/``backend`` options or passed in."""

    config_cls = MLLMConfig

    def __init__(self, config: MLLMConfig | None = None, backend: Backend | None = None) -> None:
        super().__init__(config)
        self._backend = backend

    @property
    def backend(self) -> Backend:
        """The backend (created on first use and shared with other scorers of the same model)."""
        if self._backend is None:
            cfg = self.config
            self._backend = create_backend(cfg.backend, cfg.model, **cfg.backend_kwargs())
        return self._backend

    def token_details(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]] | None:
        """``{"image_tokens", "prompt_tokens"}`` per prompt where the backend can count them (transformers),
        else None. The counts of the prompts just scored are reused, not recomputed."""
        return token_details(self.backend, prompts)


def token_details(backend: Any, prompts: Sequence[Prompt]) -> list[dict[str, Any]] | None:
    """Image and total tokens of each prompt as ``backend`` feeds them to its model (None when it cannot say)."""
    fn = getattr(backend, "prompt_token_counts", None)
    if fn is None or not prompts:
        return None
    return [{"image_tokens": int(c["image_tokens"]), "prompt_tokens": int(c["tokens"])} for c in fn(list(prompts))]


class LevelScorer(MLLMScorer):
    """A scorer whose items are prompts answered by one level token (Q-Align, standard-guided, IQARAG ...).

    Subclasses provide :attr:`scale` (a :class:`LevelScale`) and :meth:`build_prompt`.
    """

    @property
    def level_scale(self) -> LevelScale:
        raise NotImplementedError

    @property
    def scale(self) -> tuple[float, float]:
        s = self.level_scale
        return (s.low, s.high)

    @property
    def model_name(self) -> str | list[str] | None:
        return self.config.model

    @abstractmethod
    def build_prompt(self, image: Any) -> Prompt:
        """The prompt for one (already loaded RGB) image."""

    # --------------------------------------------------------------------------------------------------
    def level_probs(self, prompts: Sequence[Prompt], scale: LevelScale | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(closed-set probabilities [B, K], covered mass [B]) for prompts answered on ``scale``."""
        probs, mass, _ = self.level_readout(prompts, scale)
        return probs, mass

    def level_readout(
        self, prompts: Sequence[Prompt], scale: LevelScale | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None]]:
        """:meth:`level_probs` plus, per prompt, the levels a server's top-k listing left out (None when none
        was; see :func:`lmmiqa.methods.coverage.missing_level_details`). Warns once per run when most of the batch
        has a low covered mass, and when levels were left out."""
        scale = scale or self.level_scale
        prefixes = {p.answer_prefix for p in prompts}
        if len(prefixes) > 1:
            raise ConfigError("prompts of one call must share an answer prefix")
        cands = scale.candidates(prompts[0].answer_prefix if prompts else "")
        lp = self.backend.level_logprobs(list(prompts), cands)
        # a wrong template/prompt/model shows itself: warn once per run when most of the batch is low
        mass, missing = check_levels(
            lp, backend=self.backend, prompts=prompts, candidates=cands, what=self.name, keys=scale.keys,
            values=scale.values,
        )
        return closed_set_probs(lp), mass, missing

    def results_from_probs(
        self,
        keys: Sequence[str],
        probs: np.ndarray,
        mass: np.ndarray,
        *,
        scale: LevelScale | None = None,
        extra_details: Sequence[dict[str, Any]] | None = None,
        timings: dict[str, float] | None = None,
        missing: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[ScoreResult]:
        """Build results (score by the configured readout) from closed-set probabilities; ``missing`` (from
        :meth:`level_readout`) becomes ``details.missing_levels``."""
        scale = scale or self.level_scale
        out: list[ScoreResult] = []
        scores = readout(probs, scale.values, self.config.readout)
        for i, key in enumerate(keys):
            if not np.all(np.isfinite(probs[i])):
                out.append(
                    self.failure(
                        key,
                        "no level candidate was visible in the model's answer distribution "
                        f"(candidates {scale.tokens}); the server's top log-probabilities did not include any",
                        timings,
                    )
                )
                continue
            probabilities, details = level_details(probs[i], scale)
            details["readout"] = self.config.readout
            details["covered_mass"] = float(mass[i])
            if getattr(self.backend, "prefix_mode", "continue") != "continue":
                details["prefix_mode"] = self.backend.prefix_mode
            if getattr(self.backend, "candidate_match", None) is not None:  # servers: which tokens counted
                details["candidate_match"] = self.backend.candidate_match
            if missing is not None and missing[i]:
                details["missing_levels"] = missing[i]
            if extra_details is not None:
                details.update(extra_details[i])
            out.append(
                ScoreResult(
                    image=key,
                    score=float(scores[i]),
                    method=self.name,
                    higher_is_better=True,
                    scale=self.scale,
                    model=self.model_name,
                    probabilities=probabilities,
                    details=details,
                    timings=dict(timings or {}),
                )
            )
        return out

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        t0 = time.perf_counter()
        prompts = [self.build_prompt(it.image) for it in items]
        t1 = time.perf_counter()
        probs, mass, missing = self.level_readout(prompts)
        t2 = time.perf_counter()
        n = max(len(items), 1)
        timings = {"prompt": (t1 - t0) / n, "forward": (t2 - t1) / n}
        extra = self.token_details(prompts)
        return self.results_from_probs(
            [it.key for it in items], probs, mass, timings=timings, extra_details=extra, missing=missing
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["scale"] = self.level_scale.to_dict()
        return d
