"""A small OpenAI-compatible chat-completions server backed by the in-process transformers backend.

It answers ``POST /v1/chat/completions`` (text and ``data:`` image URLs, ``logprobs``/``top_logprobs``,
``continue_final_message``) and ``GET /v1/models``, computing log-probabilities with a real model. It exists so
that the ``openai`` backend can be tested end to end on this machine, and so that a model loaded once can serve
several lmmiqa clients. For throughput use ``vllm serve`` instead (see the README). Server-side fetching of
``http(s)://`` image URLs is refused on purpose.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from lmmiqa.errors import ImageLoadError, require
from lmmiqa.images import open_image_bytes
from lmmiqa.types import Message, Prompt


def _decode_image(url: str) -> Any:
    import base64

    if not url.startswith("data:"):
        raise ImageLoadError("only data: URLs are accepted (no server-side fetching)")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageLoadError("data URL must be base64-encoded")
    return open_image_bytes(base64.b64decode(payload), "<data-url>")


def request_to_prompt(body: dict[str, Any], *, close_turn: bool = False) -> Prompt:
    """Convert an OpenAI chat request body into a :class:`Prompt` (last assistant message -> answer prefix
    when ``continue_final_message`` is set, unless ``close_turn``: then it stays a finished assistant turn and a
    new one is opened, as llama-cpp-python's server does)."""
    raw = list(body.get("messages") or [])
    if not raw:
        raise ValueError("messages must be a non-empty list")
    prefix = ""
    if body.get("continue_final_message") and raw[-1].get("role") == "assistant" and not close_turn:
        last = raw.pop()
        content = last.get("content")
        prefix = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
    msgs: list[Message] = []
    for m in raw:
        content = m.get("content")
        parts: list[Any] = []
        if isinstance(content, str):
            parts.append(content)
        else:
            for p in content or []:
                if p.get("type") == "text":
                    parts.append(p.get("text", ""))
                elif p.get("type") == "image_url":
                    iu = p.get("image_url")
                    parts.append(_decode_image(iu["url"] if isinstance(iu, dict) else iu))
                else:
                    raise ValueError(f"unsupported content part type {p.get('type')!r}")
        msgs.append(Message(m.get("role", "user"), tuple(parts)))
    return Prompt(tuple(msgs), prefix)


#: how the app treats ``continue_final_message`` (see :func:`create_app`)
CONTINUE_MODES = ("continue", "reject", "close")


def create_app(
    backend: Any,
    *,
    served_name: str = "tiny",
    allow_continue: bool = True,
    continue_mode: str | None = None,
    echo_prefix: bool = False,
    max_top_logprobs: int | None = None,
) -> Any:
    """FastAPI app answering the chat-completions protocol with ``backend`` (a TransformersBackend).

    Args:
        backend: a backend with ``top_logprobs(prompts, k)``, ``generate(prompts, n)`` and
            ``prompt_token_counts(prompts)`` (for ``usage.prompt_tokens``).
        served_name: the model name clients address.
        allow_continue: when False, requests with ``continue_final_message`` are rejected with 400 (to emulate
            servers that cannot continue a message); same as ``continue_mode="reject"``.
        continue_mode: ``continue`` (vLLM, SGLang, llama-server), ``reject`` (400) or ``close`` (ignore it, close
            the assistant turn and open a new one, answering 200: what llama-cpp-python's server does).
        echo_prefix: repeat a continued assistant prefix at the start of ``message.content`` (llama-server).
        max_top_logprobs: answer 400 with vLLM's message to a larger ``top_logprobs`` (vLLM's ``--max-logprobs``).
    """
    mode = continue_mode or ("continue" if allow_continue else "reject")
    if mode not in CONTINUE_MODES:
        raise ValueError(f"unknown continue_mode {mode!r}; known: {', '.join(CONTINUE_MODES)}")
    fastapi = require("fastapi", "serve", "the OpenAI-compatible server")
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI(title="lmmiqa OpenAI-compatible endpoint")
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "lmmiqa"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        def error(status: int, msg: str) -> Any:
            return JSONResponse(status_code=status, content={"error": {"message": msg, "type": "invalid_request_error", "code": status}})

        if body.get("model") not in (served_name, None):
            return error(404, f"model {body.get('model')!r} not found; served: {served_name}")
        if body.get("continue_final_message") and mode == "reject":
            return error(400, "continue_final_message is not supported by this server")
        try:
            prompt = request_to_prompt(body, close_turn=mode == "close")
        except (ValueError, KeyError, ImageLoadError) as err:
            return error(400, str(err))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        want_lp = bool(body.get("logprobs"))
        k = int(body.get("top_logprobs") or 0)
        if want_lp and max_top_logprobs is not None and k > max_top_logprobs:
            return error(400, f"Requested sample logprobs of {k}, which is greater than max allowed: {max_top_logprobs}")
        with lock:
            n_prompt = int(backend.prompt_token_counts([prompt])[0]["tokens"])
            if want_lp or max_tokens == 1:
                top = backend.top_logprobs([prompt], max(k, 1))[0]
                text = top[0][0]
                lp_content = [
                    {
                        "token": top[0][0],
                        "logprob": top[0][1],
                        "bytes": list(top[0][0].encode("utf-8")),
                        "top_logprobs": [
                            {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in top[: max(k, 0)]
                        ],
                    }
                ]
                if max_tokens > 1:
                    text = backend.generate([prompt], max_tokens, float(body.get("temperature") or 0.0))[0]
            else:
                text = backend.generate([prompt], max_tokens, float(body.get("temperature") or 0.0))[0]
                lp_content = None
        if echo_prefix:
            text = prompt.answer_prefix + text
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": {"content": lp_content} if lp_content is not None else None,
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1},
        }

    return app


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run a FastAPI app with uvicorn in a background thread; yields the base URL (``http://host:port``)."""
    uvicorn = require("uvicorn", "serve", "running the server")
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    with run_server_thread(server, host, port, timeout) as url:
        yield url


@contextlib.contextmanager
def run_server_thread(server: Any, host: str, port: int, timeout: float = 30.0) -> Iterator[str]:
    """Run a ``uvicorn.Server`` in a daemon thread until the block ends; yields ``http://host:port`` once it
    listens (RuntimeError when it has not started within ``timeout`` seconds)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
