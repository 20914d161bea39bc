"""Backend for any OpenAI-compatible chat-completions server (``vllm serve``, SGLang, llama.cpp's ``llama-server``,
hosted APIs), one server or several replicas of one model.

Level log-probabilities come from one completion token with ``logprobs=True, top_logprobs=20, max_tokens=1``.
The answer prefix is sent as a partial assistant message to be continued (``continue_final_message``, which
vLLM, SGLang and llama-server accept). When the backend is created it checks each server once
(:mod:`lmmiqa.backends.server_checks`): it must answer and serve the model (else
:class:`~lmmiqa.errors.ServerUnavailableError`, a run-level error naming the URL and what to check), and it must
really continue a prefix. For a server that cannot (it refuses ``continue_final_message``, or ignores it and
closes the assistant turn), ``prefix_mode="auto"`` folds the prefix into the instruction (results say so in
``details.prefix_mode``) and ``prefix_mode="continue"`` refuses with one message.

**Levels outside the top-k.** A server lists only its top-k next tokens. A level missing from the listing is at
most as likely as the last token listed. When the missing levels could hold more than ``missing_tolerance`` of
the level probability, the item is asked again with ``max_top_logprobs`` (llama-server accepts large values,
vLLM up to its ``--max-logprobs``; a server's cap is read from its error and kept for the run). Levels still
missing get log-probability ``-inf`` and :meth:`OpenAIBackend.last_level_floors` says how likely they could be
at most, so that scorers report them and the bound on the error (``details.missing_levels``; a
:class:`~lmmiqa.methods.coverage.MissingLevelsWarning` once per run).

Which listed tokens count for a candidate (``candidate_match``, reported in ``details.candidate_match``):

* ``exact`` — the token text equals the candidate as produced in context (``" good"`` after
  ``"... is"``): one vocabulary entry per level, exactly what the in-process backends read (one token id per
  candidate), so both backends give the same distribution. The default when the answer prefix is continued.
* ``surface`` — every surface variant of the word (case and surrounding whitespace: ``" good"``, ``"good"``,
  ``"Good"``) is summed. Used when the prefix had to be folded into the instruction (the reply then starts
  fresh, usually capitalised, so the in-context form does not exist), or when asked for.

The chosen token (``logprobs.content[0]``) is counted once: OpenAI-compatible servers (OpenAI, vLLM, SGLang,
llama-server) already list it among its ``top_logprobs``; it is added only when a server leaves it out.

Model string: ``"http://127.0.0.1:8000/v1#served-model-name"`` (the part after ``#`` is the model name; without
it, the server's first listed model is used). Several replicas of one model: comma-separated URLs before the
``#`` (``"http://a:8000/v1,http://b:8000/v1#name"``); requests are spread over them (:mod:`.replicas`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.backends.base import Backend
from lmmiqa.backends.openai_wire import (
    fold_prefix,
    image_data_url,
    listing_floor,
    logprobs_cap,
    match_candidates,
    parse_model_url,
    parse_model_urls,
    top_from_content,
)
from lmmiqa.backends.pixels import DEFAULT_MAX_PIXELS, check_budget, fit_pixels, parse_pixels
from lmmiqa.backends.replicas import Replica, ReplicaPool, backoff, connection_problem
from lmmiqa.backends.server_checks import (
    model_problem,
    probe_continuation,
    status_problem,
    strip_echo,
    unavailable,
)
from lmmiqa.config import build_config
from lmmiqa.errors import BackendError, ConfigError, ServerUnavailableError, require
from lmmiqa.types import Prompt

__all__ = [
    "CANDIDATE_MATCHES",
    "PREFIX_MODES",
    "OpenAIBackend",
    "OpenAIConfig",
    "fold_prefix",
    "image_data_url",
    "match_candidates",
    "parse_model_url",
    "parse_model_urls",
    "top_from_content",
]

log = logging.getLogger(__name__)

PREFIX_MODES = ("auto", "continue", "fold")
#: how listed tokens are matched to level candidates (see the module docstring)
CANDIDATE_MATCHES = ("auto", "exact", "surface")
#: seconds the start-up checks wait for one answer at most
CHECK_TIMEOUT_S = 10.0


@dataclass
class OpenAIConfig:
    """Options of the OpenAI-compatible backend.

    Attributes:
        model: ``"URL#name"``; URL is the API base (ending in ``/v1``); several replicas: ``"URL1,URL2#name"``.
        api_key_env: environment variable holding the API key (``"EMPTY"`` is sent when unset, as vLLM expects).
        timeout: seconds per request.
        max_retries: retries with exponential backoff on 429/5xx, and probes of a server that stopped answering
            before the run ends (a request to a replica that cannot be reached moves to another one at once).
        concurrency: requests in flight at once per server.
        top_logprobs: how many alternatives the first request of an item asks for (OpenAI and vLLM allow 20 by
            default).
        max_top_logprobs: how many a second request asks for when levels are missing from the first listing and
            could matter (see ``missing_tolerance``); a server's lower cap is read from its error. 0: never ask again.
        missing_tolerance: ask again when the levels missing from a listing could hold more than this share of the
            level probability (each is at most as likely as the last token listed).
        prefix_mode: ``auto`` (continue; fold when the server cannot), ``continue`` (refuse a server that cannot)
            or ``fold``.
        image_format: ``png`` (lossless, default) or ``jpeg`` (smaller requests).
        candidate_match: ``auto`` (``exact`` when the answer prefix is continued, ``surface`` when it is folded),
            ``exact`` (the in-context token only, as the in-process backends) or ``surface`` (sum case and
            whitespace variants of each level word).
        max_pixels: images larger than this many pixels are downscaled (aspect kept) before they are encoded,
            so the server sees the same pixel budget as the transformers backend (default 1024×1024);
            ``"model"`` sends them as they are and leaves the limit to the server.
        min_pixels: smaller images are upscaled to this many pixels (default: sent as they are).
        check: check the servers when the backend is created (reachable, the model served, a prefix continued).
    """

    model: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 4
    concurrency: int = 8
    top_logprobs: int = 20
    max_top_logprobs: int = 1000
    missing_tolerance: float = 1e-3
    prefix_mode: str = "auto"
    image_format: str = "png"
    candidate_match: str = "auto"
    max_pixels: int | str | None = DEFAULT_MAX_PIXELS
    min_pixels: int | str | None = None
    check: bool = True

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
        if int(self.max_top_logprobs) < 0 or int(self.max_retries) < 0:
            raise ConfigError("max_top_logprobs and max_retries must be >= 0")
        if not 0.0 <= float(self.missing_tolerance) < 1.0:
            raise ConfigError(f"missing_tolerance must be in [0, 1), got {self.missing_tolerance!r}")
        parse_model_urls(self.model)


class RequestRejected(BackendError):
    """The server answered 400 to one request; ``message`` is its own explanation."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: request rejected: {message}")
        self.message = message


def _missing_share(lp: np.ndarray, floor: float) -> float:
    """The largest share of the level probability that the levels missing from ``lp`` (``-inf``) can hold when
    each is at most ``exp(floor)``."""
    seen = np.isfinite(lp)
    m = int((~seen).sum())
    if m == 0:
        return 0.0
    hidden = m * float(np.exp(floor))
    total = float(np.exp(lp[seen]).sum()) + hidden
    return hidden / total if total > 0 else 1.0


class OpenAIBackend(Backend):
    """Scores through one or several OpenAI-compatible chat-completions servers of one model."""

    name: ClassVar[str] = "openai"

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        openai = require("openai", "openai", "the openai backend")
        self.config = config
        self.model_id = config.model
        self.urls, self.served_name = parse_model_urls(config.model)
        self.base_url = self.urls[0]
        self._openai = openai
        api_key = os.environ.get(config.api_key_env) or "EMPTY"
        replicas = [
            Replica(u, openai.OpenAI(base_url=u, api_key=api_key, timeout=config.timeout, max_retries=0))
            for u in self.urls
        ]
        self.client = replicas[0].client
        self.pool = ReplicaPool(
            replicas,
            concurrency=int(config.concurrency),
            max_retries=int(config.max_retries),
            probe=self._probe_replica,
            is_connection_error=lambda e: isinstance(e, openai.APIConnectionError),
            is_retryable=lambda e: isinstance(e, (openai.RateLimitError, openai.InternalServerError)),
            timeout=float(config.timeout),
        )
        self.prefix_mode = "folded" if config.prefix_mode == "fold" else "continue"
        #: whether the server repeats the answer prefix in ``message.content`` (found by the start-up check)
        self.echoes_prefix = False
        #: what the start-up check found about continuing a prefix (for ``describe()`` and messages)
        self.prefix_check = "not checked"
        self._probed = False
        self._cap: int | None = None  # the server's top_logprobs cap, once an error named it
        self._mode_lock = threading.Lock()
        self._local = threading.local()
        workers = int(config.concurrency) * len(self.urls)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmmiqa-openai")
        if config.check:
            try:
                self.check()
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_options(cls, **options: Any) -> OpenAIBackend:
        if options.get("model") is None:
            raise ConfigError("the openai backend needs model='http://host:port/v1#served-name'")
        return cls(build_config(OpenAIConfig, options, what="the openai backend"))

    # ----------------------------------------------------------------------------------- start-up checks
    def _list_models(self, rep: Replica, timeout: float) -> list[str]:
        """Served model ids of one replica; ServerUnavailableError with what to check when it cannot be used."""
        o = self._openai
        client = rep.client.with_options(timeout=timeout, max_retries=0)
        attempt = 0
        while True:
            try:
                return [m.id for m in client.models.list().data]
            except o.APIConnectionError as err:
                raise unavailable(rep.url, connection_problem(err, rep.url, timeout)) from err
            except o.APIStatusError as err:
                if err.status_code in (429, 502, 503, 504) and attempt < int(self.config.max_retries):
                    attempt += 1  # loading (llama-server answers 503 while it loads) or busy: wait a little
                    import time

                    time.sleep(backoff(attempt))
                    continue
                msg = _error_message(err)
                raise unavailable(rep.url, status_problem(rep.url, err.status_code, msg, self.config.api_key_env)) from err

    def _probe_replica(self, rep: Replica) -> None:
        """Raises when ``rep`` does not answer ``GET /models`` (used to bring a replica set aside back)."""
        rep.client.with_options(timeout=min(float(self.config.timeout), CHECK_TIMEOUT_S), max_retries=0).models.list()

    def check(self) -> None:
        """Check every server once: reachable and serving the model (else :class:`ServerUnavailableError`), and
        whether it continues an answer prefix (``prefix_mode``, ``echoes_prefix``; see
        :mod:`lmmiqa.backends.server_checks`)."""
        timeout = min(float(self.config.timeout), CHECK_TIMEOUT_S)
        reps = self.pool.replicas
        outcomes: list[list[str] | ServerUnavailableError] = []
        with ThreadPoolExecutor(max_workers=len(reps)) as ex:
            for fut in [ex.submit(self._list_models, r, timeout) for r in reps]:
                try:
                    outcomes.append(fut.result())
                except ServerUnavailableError as err:
                    outcomes.append(err)
        failed = [(r, o) for r, o in zip(reps, outcomes) if isinstance(o, ServerUnavailableError)]
        if len(failed) == len(reps):
            if len(reps) == 1:
                raise failed[0][1]
            raise ServerUnavailableError(
                f"none of the {len(reps)} replicas can be used: " + "; ".join(str(e) for _, e in failed)
            )
        live = [(r, o) for r, o in zip(reps, outcomes) if not isinstance(o, ServerUnavailableError)]
        if self.served_name is None:
            self.served_name = live[0][1][0] if live[0][1] else None
        for rep, served in live:
            why = model_problem(rep.url, list(served), self.served_name)  # type: ignore[arg-type]
            if why:
                raise ServerUnavailableError(f"cannot use the model server at {rep.url}: {why}")
        for rep, err in failed:
            self.pool.mark_down(rep, str(err))
            log.warning("%s; scoring on the other %d replica(s)", err, len(live))
        if self.config.prefix_mode != "fold":
            self._check_continuation()
        self._probed = True

    def _check_continuation(self) -> None:
        o = self._openai
        model = self.model_name()

        def create(messages: list[dict[str, Any]], extra: dict[str, Any]) -> Any:
            return self.pool.call(lambda rep: rep.client.chat.completions.create(
                model=model, messages=messages, extra_body=extra, max_tokens=1, temperature=0.0))

        where = self.base_url if len(self.urls) == 1 else f"the servers at {', '.join(self.urls)}"
        try:
            probe = probe_continuation(create)
        except o.BadRequestError as err:
            self._cannot_continue(f"{where} rejects continue_final_message ({_error_message(err)})")
            return
        except o.APIStatusError as err:
            raise self._status_error(err) from err
        self.echoes_prefix = probe.echoes_prefix
        if probe.continues is False:
            self._cannot_continue(f"{where}: {probe.detail}")
        elif probe.continues is None:
            self.prefix_check = f"unverified: {probe.detail}"
            log.warning("%s: cannot check that answer prefixes are continued (%s); scoring as if they are",
                        where, probe.detail)
        else:
            self.prefix_check = "continued"

    def _cannot_continue(self, why: str) -> None:
        if self.config.prefix_mode == "continue":
            raise ServerUnavailableError(
                f"{why}. prefix_mode='continue' needs a server that continues an answer prefix (vLLM, SGLang, "
                "llama.cpp's llama-server; not llama-cpp-python's server); use prefix_mode='auto' or 'fold' to fold "
                "the prefix into the instruction instead (scores then differ from the method's own prompt)"
            )
        self.prefix_mode = "folded"
        self.prefix_check = f"folded: {why}"
        log.warning("%s; folding answer prefixes into the instruction (details.prefix_mode='folded')", why)

    # ------------------------------------------------------------------------------------------ requests
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
                    # adjacent texts go as one part: llama-server tokenizes each text part after an image on its
                    # own, which changed the tokens (and log-probs by ~1e-2) of prompts such as the agent's
                    if parts and parts[-1]["type"] == "text":
                        parts[-1] = {"type": "text", "text": parts[-1]["text"] + c}
                    else:
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

    def _status_error(self, err: Any) -> BackendError:
        """An HTTP error answered to a request: run-level for the key or the model (every request would fail the
        same way), per item otherwise."""
        msg = _error_message(err)
        if err.status_code in (401, 403, 404):
            where = getattr(getattr(err, "request", None), "url", None) or self.base_url
            why = status_problem(str(where), err.status_code, msg, self.config.api_key_env)
            if err.status_code == 404:
                why = f"{where} answered 404 ({msg}): is the model name right (--model 'URL#name') and the URL's /v1?"
            return ServerUnavailableError(f"cannot use the model server: {why}")
        return BackendError(f"{self.base_url}: {type(err).__name__}: {msg}")

    def _raw(self, prompt: Prompt, folded: bool, **kwargs: Any) -> Any:
        """One chat completion through the replica pool (openai exceptions pass through)."""
        extra: dict[str, Any] = {}
        if prompt.answer_prefix and not folded:
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        messages = self._messages(prompt, folded)
        model = self.model_name()
        return self.pool.call(lambda rep: rep.client.chat.completions.create(
            model=model, messages=messages, extra_body=extra or None, **kwargs))

    def _create(self, prompt: Prompt, **kwargs: Any) -> Any:
        folded = self.prefix_mode == "folded"
        try:
            return self._raw(prompt, folded, **kwargs)
        except self._openai.BadRequestError as err:
            if (not self._probed and prompt.answer_prefix and not folded and self.config.prefix_mode == "auto"
                    and logprobs_cap(_error_message(err), 10**9) is None):
                # no start-up check (check=False): the first refusal of a continued prefix folds, as before
                with self._mode_lock:
                    if self.prefix_mode != "folded":
                        log.warning("%s cannot continue a message (%s); folding answer prefixes", self.base_url, err)
                        self.prefix_mode = "folded"
                return self._create(prompt, **kwargs)
            raise RequestRejected(self.base_url, _error_message(err)) from err
        except self._openai.APIStatusError as err:
            raise self._status_error(err) from err
        except self._openai.APIError as err:
            raise BackendError(f"{self.base_url}: {type(err).__name__}: {err}") from err

    def _top(self, prompt: Prompt, k: int) -> tuple[list[tuple[str, float]], float | None, int]:
        """(listing, floor, k asked) for one prompt; a server's cap on ``top_logprobs`` is read from its error,
        kept, and the request repeated under it."""
        while True:
            k_eff = min(int(k), self._cap) if self._cap else int(k)
            try:
                resp = self._create(prompt, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=k_eff)
            except RequestRejected as err:
                msg = err.message
                cap = logprobs_cap(msg, k_eff)
                if cap is None and "logprob" in msg.lower() and k_eff > int(self.config.top_logprobs):
                    cap = int(self.config.top_logprobs)  # a cap the message does not name: back to the first k
                if cap is None:
                    raise
                with self._mode_lock:
                    if self._cap is None or cap < self._cap:
                        log.warning("%s accepts top_logprobs <= %d (%s); asking for at most that many",
                                    self.base_url, cap, msg)
                        self._cap = cap
                continue
            choice = resp.choices[0]
            content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
            if not content:
                raise BackendError(f"{self.base_url}: the server returned no log-probabilities (does it support logprobs?)")
            return top_from_content(content[0]), listing_floor(content[0], k_eff), k_eff

    @property
    def candidate_match(self) -> str:
        """The matching rule in force (``exact`` or ``surface``); reported in ``details.candidate_match``."""
        if self.config.candidate_match != "auto":
            return self.config.candidate_match
        return "surface" if self.prefix_mode == "folded" else "exact"

    def _levels_one(self, prompt: Prompt, candidates: Sequence[str]) -> tuple[np.ndarray, Any, Any]:
        cfg = self.config
        top, floor, k = self._top(prompt, int(cfg.top_logprobs))
        lp = match_candidates(top, candidates, self.candidate_match)
        if floor is not None and not np.isfinite(lp).all():
            more = int(cfg.max_top_logprobs)
            if self._cap:
                more = min(more, self._cap)
            if more > k and _missing_share(lp, floor) > float(cfg.missing_tolerance):
                top2, floor2, k2 = self._top(prompt, more)
                if k2 > k:
                    top, floor, k = top2, floor2, k2
                    lp = match_candidates(top, candidates, self.candidate_match)
        hidden = (float(floor), int(k)) if floor is not None and not np.isfinite(lp).all() else None
        return lp, hidden, top

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        rows = list(self._pool.map(lambda p: self._levels_one(p, candidates), prompts))
        self._local.floors = [r[1] for r in rows]
        self._local.tops = [r[2] for r in rows]
        if not rows:
            return np.zeros((0, len(candidates)))
        return np.stack([r[0] for r in rows])

    def last_level_floors(self) -> list[tuple[float, int] | None]:
        """For each prompt of this thread's last :meth:`level_logprobs` call: None when every candidate was
        listed (or nothing was hidden), else ``(floor, k)`` — the server listed its top ``k`` tokens and each
        missing candidate has a log-probability of at most ``floor``."""
        return list(getattr(self._local, "floors", None) or [])

    def last_level_top(self, row: int, k: int = 8) -> list[tuple[str, float]]:
        """The server's most likely next tokens for prompt ``row`` of this thread's last :meth:`level_logprobs`
        call (what the covered-mass warning lists)."""
        tops = getattr(self._local, "tops", None) or []
        if not 0 <= row < len(tops):
            return []
        return sorted(tops[row], key=lambda t: -float(t[1]))[:k]

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Only the new text: an answer prefix that the server repeats at the start of its reply (llama-server) is
        removed."""

        def one(p: Prompt) -> str:
            resp = self._create(p, max_tokens=int(max_new_tokens), temperature=float(temperature))
            text = resp.choices[0].message.content or ""
            if self.echoes_prefix and self.prefix_mode == "continue":
                text = strip_echo(text, p.answer_prefix)
            return text

        return list(self._pool.map(one, prompts))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id, "prefix_mode": self.prefix_mode,
                "candidate_match": self.candidate_match}

    def replica_stats(self) -> list[dict[str, Any]]:
        """Requests answered and failures per server."""
        return self.pool.stats()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for rep in self.pool.replicas:
            rep.client.close()


def _error_message(err: Any) -> str:
    """The server's own message of an openai status error (its JSON ``error.message`` when there is one)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(getattr(err, "message", None) or err)
