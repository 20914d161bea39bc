"""Backend for any OpenAI-compatible chat-completions server (``vllm serve``, SGLang, hosted APIs).

Level log-probabilities come from one completion token with ``logprobs=True, top_logprobs=20, max_tokens=1``.
The answer prefix is sent as a partial assistant message to be continued (``continue_final_message``, which
vLLM and SGLang accept). For a server that cannot continue a message, the prefix is folded into the instruction
(``prefix_mode == "folded"``; results say so in ``details.prefix_mode``). Candidates absent from the top-k get
probability 0 (log-probability ``-inf``); the covered probability mass is reported by the scorer.

Which listed tokens count for a candidate (``candidate_match``, reported in ``details.candidate_match``):

* ``exact`` — the token text equals the candidate as produced in context (``" good"`` after
  ``"... is"``): one vocabulary entry per level, exactly what the in-process backends read (one token id per
  candidate), so both backends give the same distribution. The default when the answer prefix is continued.
* ``surface`` — every surface variant of the word (case and surrounding whitespace: ``" good"``, ``"good"``,
  ``"Good"``) is summed. Used when the prefix had to be folded into the instruction (the reply then starts
  fresh, usually capitalised, so the in-context form does not exist), or when asked for.

The chosen token (``logprobs.content[0]``) is counted once: OpenAI-compatible servers (OpenAI, vLLM, SGLang)
already list it among its ``top_logprobs``; it is added only when a server leaves it out.

Model string: ``"http://127.0.0.1:8000/v1#served-model-name"`` (the part after ``#`` is the model name; without
it, the server's first listed model is used).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.backends.base import Backend
from lmmiqa.backends.pixels import DEFAULT_MAX_PIXELS, check_budget, fit_pixels, parse_pixels
from lmmiqa.config import build_config
from lmmiqa.errors import BackendError, ConfigError, require
from lmmiqa.types import Prompt

log = logging.getLogger(__name__)

PREFIX_MODES = ("auto", "continue", "fold")
#: how listed tokens are matched to level candidates (see the module docstring)
CANDIDATE_MATCHES = ("auto", "exact", "surface")


@dataclass
class OpenAIConfig:
    """Options of the OpenAI-compatible backend.

    Attributes:
        model: ``"URL#name"``; URL is the API base (ending in ``/v1``).
        api_key_env: environment variable holding the API key (``"EMPTY"`` is sent when unset, as vLLM expects).
        timeout: seconds per request.
        max_retries: retries with exponential backoff on 429/5xx and connection errors (the openai client's).
        concurrency: requests in flight at once.
        top_logprobs: how many alternatives to request (servers usually cap this at 20).
        prefix_mode: ``auto`` (continue, and fold if the server refuses), ``continue`` or ``fold``.
        image_format: ``png`` (lossless, default) or ``jpeg`` (smaller requests).
        candidate_match: ``auto`` (``exact`` when the answer prefix is continued, ``surface`` when it is folded),
            ``exact`` (the in-context token only, as the in-process backends) or ``surface`` (sum case and
            whitespace variants of each level word).
        max_pixels: images larger than this many pixels are downscaled (aspect kept) before they are encoded,
            so the server sees the same pixel budget as the transformers backend (default 1024×1024);
            ``"model"`` sends them as they are and leaves the limit to the server.
        min_pixels: smaller images are upscaled to this many pixels (default: sent as they are).
    """

    model: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 4
    concurrency: int = 8
    top_logprobs: int = 20
    prefix_mode: str = "auto"
    image_format: str = "png"
    candidate_match: str = "auto"
    max_pixels: int | str | None = DEFAULT_MAX_PIXELS
    min_pixels: int | str | None = None

    def __post_init__(self) -> None:
        if self.candidate_match not in CANDIDATE_MATCHES:
            raise ConfigError(
                f"unknown candidate_match {self.candidate_match!r}; known: {', '.join(CANDIDATE_MATCHES)}"
            )
        if self.prefix_mode not in PREFIX_MODES:
            raise ConfigError(f"unknown prefix_mode {self.prefix_mode!r}; known: {', '.join(PREFIX_MODES)}")
        if self.image_format not in ("png", "jpeg"):
            raise ConfigError(f"unknown image_format {self.image_format!r}; known: png, jpeg")
        check_budget(parse_pixels(self.min_pixels, "min_pixels"), parse_pixels(self.max_pixels, "max_pixels"))
        if int(self.concurrency) < 1 or int(self.top_logprobs) < 1:
            raise ConfigError("concurrency and top_logprobs must be >= 1")
        if not str(self.model).startswith(("http://", "https://")):
            raise ConfigError(
                f"the openai backend needs model='http://host:port/v1#served-name', got {self.model!r}"
            )


def parse_model_url(model: str) -> tuple[str, str | None]:
    """``"http://h:p/v1#name"`` -> ``("http://h:p/v1", "name")``."""
    url, _, name = model.partition("#")
    return url.rstrip("/"), (name or None)


def image_data_url(image: Any, fmt: str = "png") -> str:
    """RGB PIL image -> ``data:image/...;base64,...``."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def fold_prefix(prompt: Prompt) -> Prompt:
    """Move the answer prefix into the last user instruction (for servers that cannot continue a message)."""
    if not prompt.answer_prefix:
        return prompt
    from lmmiqa.types import Message

    msgs = list(prompt.messages)
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i].role == "user":
            note = f'\nAnswer with a single word that completes: "{prompt.answer_prefix} ..."'
            msgs[i] = Message("user", (*msgs[i].content, note))
            break
    return Prompt(tuple(msgs), "")


def match_candidates(
    top: Sequence[tuple[str, float]], candidates: Sequence[str], rule: str = "surface"
) -> np.ndarray:
    """Log-probability of each candidate from a top-k list.

    Args:
        top: (token text, log-probability) pairs, each token listed once.
        candidates: the level candidates as produced in context (``" good"``).
        rule: ``"exact"`` — a token counts only when its text equals the candidate (one vocabulary entry, as the
            in-process backends read); ``"surface"`` — surface variants (case, surrounding whitespace) are summed.

    Returns:
        ``-inf`` for candidates not present in ``top``.
    """
    if rule not in ("exact", "surface"):
        raise ConfigError(f"unknown candidate rule {rule!r}; known: exact, surface")
    out = np.full(len(candidates), -np.inf)
    norm = list(candidates) if rule == "exact" else [c.strip().lower() for c in candidates]
    for token, lp in top:
        key = token if rule == "exact" else token.strip().lower()
        for j, c in enumerate(norm):
            if key == c and lp is not None and math.isfinite(lp):
                out[j] = np.logaddexp(out[j], lp)
    return out


def top_from_content(first: Any) -> list[tuple[str, float]]:
    """(token, log-probability) pairs of one ``logprobs.content`` entry: its ``top_logprobs``, plus the chosen
    token only when the server did not list it there (so that it is never counted twice)."""
    top = [(t.token, t.logprob) for t in (getattr(first, "top_logprobs", None) or [])]
    if first.token not in {t for t, _ in top}:
        top.append((first.token, first.logprob))
    return top


class OpenAIBackend(Backend):
    """Scores through an OpenAI-compatible chat-completions server."""

    name: ClassVar[str] = "openai"

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        openai = require("openai", "openai", "the openai backend")
        self.config = config
        self.model_id = config.model
        self.base_url, self.served_name = parse_model_url(config.model)
        api_key = os.environ.get(config.api_key_env) or "EMPTY"
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key, timeout=config.timeout, max_retries=config.max_retries
        )
        self._openai = openai
        self.prefix_mode = "folded" if config.prefix_mode == "fold" else "continue"
        self._mode_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=int(config.concurrency), thread_name_prefix="lmmiqa-openai")

    @classmethod
    def from_options(cls, **options: Any) -> OpenAIBackend:
        if options.get("model") is None:
            raise ConfigError("the openai backend needs model='http://host:port/v1#served-name'")
        return cls(build_config(OpenAIConfig, options, what="the openai backend"))

    # ------------------------------------------------------------------
    def model_name(self) -> str:
        if self.served_name is None:
            try:
                models = self.client.models.list()
                self.served_name = models.data[0].id
            except Exception as err:
                raise BackendError(
                    f"{self.base_url}: no model name given (use URL#name) and listing models failed: {err}"
                ) from err
        return self.served_name

    def _fit(self, image: Any) -> Any:
        """The image downscaled (or upscaled) client-side to the pixel budget."""
        cfg = self.config
        return fit_pixels(image, parse_pixels(cfg.min_pixels, "min_pixels"), parse_pixels(cfg.max_pixels, "max_pixels"))

    def _messages(self, prompt: Prompt, folded: bool) -> list[dict[str, Any]]:
        p = fold_prefix(prompt) if folded else prompt
        msgs: list[dict[str, Any]] = []
        for m in p.messages:
            parts: list[dict[str, Any]] = []
            for c in m.content:
                if isinstance(c, str):
                    parts.append({"type": "text", "text": c})
                else:
                    parts.append({"type": "image_url", "image_url": {"url": image_data_url(self._fit(c), self.config.image_format)}})
            if m.role == "system" and all(x["type"] == "text" for x in parts):
                msgs.append({"role": "system", "content": "".join(x["text"] for x in parts)})
            else:
                msgs.append({"role": m.role, "content": parts})
        if p.answer_prefix:
            msgs.append({"role": "assistant", "content": p.answer_prefix})
        return msgs

    def _create(self, prompt: Prompt, **kwargs: Any) -> Any:
        folded = self.prefix_mode == "folded"
        extra: dict[str, Any] = {}
        if prompt.answer_prefix and not folded:
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        try:
            return self.client.chat.completions.create(
                model=self.model_name(), messages=self._messages(prompt, folded), extra_body=extra or None, **kwargs
            )
        except self._openai.BadRequestError as err:
            if prompt.answer_prefix and not folded and self.config.prefix_mode == "auto":
                with self._mode_lock:
                    if self.prefix_mode != "folded":
                        log.warning("%s cannot continue a message (%s); folding answer prefixes", self.base_url, err)
                        self.prefix_mode = "folded"
                return self._create(prompt, **kwargs)
            raise BackendError(f"{self.base_url}: request rejected: {err}") from err
        except self._openai.APIError as err:
            raise BackendError(f"{self.base_url}: {type(err).__name__}: {err}") from err

    def _top(self, prompt: Prompt) -> list[tuple[str, float]]:
        resp = self._create(
            prompt, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=int(self.config.top_logprobs)
        )
        choice = resp.choices[0]
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if not content:
            raise BackendError(f"{self.base_url}: the server returned no log-probabilities (does it support logprobs?)")
        return top_from_content(content[0])

    @property
    def candidate_match(self) -> str:
        """The matching rule in force (``exact`` or ``surface``); reported in ``details.candidate_match``."""
        if self.config.candidate_match != "auto":
            return self.config.candidate_match
        return "surface" if self.prefix_mode == "folded" else "exact"

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        tops = list(self._pool.map(self._top, prompts))
        rule = self.candidate_match  # after the requests: an ``auto`` fold during them switches the rule
        return np.stack([match_candidates(t, candidates, rule) for t in tops]) if tops else np.zeros((0, len(candidates)))

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        def one(p: Prompt) -> str:
            resp = self._create(p, max_tokens=int(max_new_tokens), temperature=float(temperature))
            return resp.choices[0].message.content or ""

        return list(self._pool.map(one, prompts))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id, "prefix_mode": self.prefix_mode,
                "candidate_match": self.candidate_match}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()
