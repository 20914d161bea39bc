"""Test kit for the openai backend against a real server: llama.cpp's ``llama-server`` on a shrunken real-file model.

The project's test data holds a ``llama-server`` binary and llama.cpp's GGUF converter (``shared/tools/llama-server``;
found by :func:`llama_server_folder`). With them a test can

1. build a shrunken random-weight model with a real checkpoint's tokenizer, template and processor
   (:func:`lmmiqa.testing.make_real_file_vlm`, ``vision_depth=3`` for Qwen2.5-VL: the mmproj converter cannot map
   a tower of depth 2);
2. lift the level tokens into the model's top-k (:func:`lift_level_tokens`) — a random model spreads its next-token
   probability almost evenly over 152k tokens, so the levels would be outside any server's top-20 — without
   changing any closed-set probability (every level of a group gets the same logit offset at the answer
   position of the prompts it was measured on, and a softmax over the group ignores a common offset);
3. convert it to GGUF (:func:`convert_to_gguf`: f32 weights and the f32 vision projector);
4. serve it on 127.0.0.1 (:class:`LlamaServer`, with :data:`PARITY_FLAGS`: no flash attention and an f32 KV cache,
   which bring llama.cpp within ~1e-4 of transformers on the same weights), stopped by its PID.

Nothing here downloads anything; a missing binary or converter raises :class:`~lmmiqa.errors.ConfigError` naming
what is missing (tests skip on it).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from lmmiqa.errors import ConfigError

#: environment variable naming the folder that holds ``llama-server`` and ``convert/``
LLAMA_SERVER_ENV = "LMMIQA_LLAMA_SERVER"
#: llama-server flags that bring its numbers within ~1e-4 of transformers on the same weights (see the tool's README)
PARITY_FLAGS: tuple[str, ...] = ("-c", "8192", "-np", "1", "-fa", "off", "--cache-type-k", "f32", "--cache-type-v", "f32")


def llama_server_folder(root: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
    """The folder holding an executable ``llama-server`` and ``convert/convert_hf_to_gguf.py``, or None.

    Args:
        root: that folder; default ``$LMMIQA_LLAMA_SERVER``, else ``shared/tools/llama-server`` beside the current
            directory or one of its parents (the project's test data).
    """
    if root is not None:
        candidates = [pathlib.Path(root)]
    elif os.environ.get(LLAMA_SERVER_ENV):
        candidates = [pathlib.Path(os.environ[LLAMA_SERVER_ENV])]
    else:
        here = pathlib.Path.cwd().resolve()
        candidates = [p / "shared" / "tools" / "llama-server" for p in (here, *here.parents)]
    for folder in candidates:
        binary = folder / "llama-server"
        if binary.is_file() and os.access(binary, os.X_OK) and (folder / "convert" / "convert_hf_to_gguf.py").is_file():
            return folder
    return None


def _require_folder(folder: str | os.PathLike[str] | None) -> pathlib.Path:
    found = llama_server_folder(folder)
    if found is None:
        where = folder or os.environ.get(LLAMA_SERVER_ENV) or "shared/tools/llama-server"
        raise ConfigError(f"no llama-server with its convert/ folder at {where} (set ${LLAMA_SERVER_ENV})")
    return found


def convert_to_gguf(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    folder: str | os.PathLike[str] | None = None,
    mmproj: bool = True,
    python: str | None = None,
) -> tuple[pathlib.Path, pathlib.Path | None]:
    """Convert a transformers checkpoint folder to GGUF with llama.cpp's converter (f32).

    Args:
        model_dir: the checkpoint (e.g. from :func:`lmmiqa.testing.make_real_file_vlm`).
        out_dir: where ``model.gguf`` (and ``mmproj.gguf``) are written (created).
        folder: the llama-server folder (default :func:`llama_server_folder`).
        mmproj: also write the vision projector.
        python: the interpreter to run the converter with (default: this one; it needs torch, numpy,
            sentencepiece, pyyaml and requests).

    Returns:
        ``(model.gguf, mmproj.gguf or None)``.

    Raises:
        ConfigError: no converter, or the conversion failed (with the end of its output).
    """
    script = _require_folder(folder) / "convert" / "convert_hf_to_gguf.py"
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets: list[tuple[pathlib.Path, list[str]]] = [(out / "model.gguf", [])]
    if mmproj:
        targets.append((out / "mmproj.gguf", ["--mmproj"]))
    for path, extra in targets:
        cmd = [python or sys.executable, str(script), str(model_dir), *extra, "--outtype", "f32", "--outfile", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not path.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
            raise ConfigError(f"GGUF conversion of {model_dir} failed ({' '.join(cmd[1:])}):\n{tail}")
    return targets[0][0], (targets[1][0] if mmproj else None)


def lift_level_tokens(
    model_dir: str | os.PathLike[str],
    groups: Sequence[tuple[Sequence[Any], Sequence[int]]],
    lift: float = 12.0,
) -> None:
    """Give each group of level tokens the same large logit offset on the prompts of that group, in place.

    For each ``(prompts, token_ids)``, the mean last-layer hidden state ``h̄`` at the answer position of the prompts
    is measured and ``lift·h̄/|h̄|²`` is added to the output-embedding rows of the tokens: at an answer position
    whose hidden state is near ``h̄``, every token of the group gains ≈ ``lift`` in logit (the same for all of
    them), so they rise above the 152k random tokens into a server's top-20 while their closed-set softmax — and
    any score read from it — is unchanged. Writes ``model.safetensors`` back (untied output embeddings only).

    Args:
        model_dir: a checkpoint folder with one ``model.safetensors`` and untied ``lm_head.weight``.
        groups: ``(prompts, token ids)`` pairs: lmmiqa :class:`~lmmiqa.types.Prompt` objects answered by those tokens.
        lift: the logit offset at ``h̄``.
    """
    from safetensors.torch import load_file, save_file

    from lmmiqa.backends.base import create_backend

    path = pathlib.Path(model_dir) / "model.safetensors"
    tensors = load_file(str(path))
    if "lm_head.weight" not in tensors:
        raise ConfigError(f"{path} has no lm_head.weight (tied embeddings cannot be lifted alone)")
    backend = create_backend("transformers", str(model_dir), device="cpu", dtype="float32", cache=False)
    head = backend.model.get_output_embeddings()
    seen: dict[str, Any] = {}

    def grab(_module: Any, inputs: Any, _output: Any) -> None:
        seen["h"] = inputs[0][:, -1].detach().float().clone()

    handle = head.register_forward_hook(grab)
    weight = tensors["lm_head.weight"]
    try:
        for prompts, ids in groups:
            backend.last_logits(list(prompts))
            hbar = seen["h"].mean(dim=0)
            weight[list(ids)] += (lift * hbar / hbar.norm() ** 2).to(weight.dtype)
    finally:
        handle.remove()
        backend.close()
    save_file(tensors, str(path), metadata={"format": "pt"})


class LlamaServer:
    """One ``llama-server`` process on 127.0.0.1 (a free port), ready when ``/health`` answers 200.

    Use as a context manager, or :meth:`start` and :meth:`stop` (by PID; safe to call twice). Its output goes to
    ``log_path`` (shown in the error when it does not come up).

    Args:
        model: the GGUF model.
        mmproj: the GGUF vision projector (None: text only).
        alias: the served model name (``--model URL#alias``).
        flags: further flags (default :data:`PARITY_FLAGS`).
        threads: ``-t``.
        folder: the llama-server folder (default :func:`llama_server_folder`).
        log_path: where its output goes (default: beside the model).
        timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        mmproj: str | os.PathLike[str] | None = None,
        *,
        alias: str = "model",
        flags: Sequence[str] = PARITY_FLAGS,
        threads: int = 2,
        folder: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.binary = _require_folder(folder) / "llama-server"
        self.model = pathlib.Path(model)
        self.mmproj = pathlib.Path(mmproj) if mmproj is not None else None
        self.alias = alias
        self.flags = list(flags)
        self.threads = int(threads)
        self.log_path = pathlib.Path(log_path) if log_path else self.model.with_suffix(".server.log")
        self.timeout = float(timeout)
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self.port is None:
            raise ConfigError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI API base, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base}/v1"

    @property
    def model_string(self) -> str:
        """``URL#alias`` for ``--model`` / ``model=``."""
        return f"{self.url}#{self.alias}"

    def start(self) -> LlamaServer:
        from lmmiqa.service.openai_compat import free_port

        self.port = free_port()
        cmd = [str(self.binary), "-m", str(self.model), "-a", self.alias, "--host", "127.0.0.1", "--port",
               str(self.port), "-t", str(self.threads), *self.flags]
        if self.mmproj is not None:
            cmd[3:3] = ["--mmproj", str(self.mmproj)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise ConfigError(f"llama-server exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"llama-server did not answer /health within {self.timeout:g} s:\n{self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
