"""Shared command-line options that pick a method and its model/backend (used by score, eval, serve, ...).

Method-specific flags are declared with ``dest="opt_<name>"``: every such flag that the user set is passed to
the method as option ``<name>``. ``--option KEY=VALUE`` passes anything else (VALUE parsed as JSON when it
parses, else kept as a string). An option the method does not accept is a usage error listing the valid ones.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

OPT_PREFIX = "opt_"


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.strip().replace("-", "_"), value


def add_method_args(parser: argparse.ArgumentParser, default_method: str = "q-align", method_flag: bool = True) -> None:
    """Add --method (unless ``method_flag`` is false: the command takes the method otherwise), --model (repeatable),
    --backend, --device, --dtype, --levels, --readout, --batch-size, --option."""
    g = parser.add_argument_group("method and model")
    if method_flag:
        g.add_argument("--method", default=default_method,
                       help=f"scoring method (default: {default_method}; see `lmmiqa methods`)")
    g.add_argument(
        "--model",
        action="append",
        default=None,
        help="hub id, local folder, or for --backend openai 'http://host:port/v1#name'; repeat for an ensemble "
        "(methods that support it). Default: Qwen/Qwen3-VL-8B-Instruct",
    )
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="a named set of option values, e.g. 'paper' (the method's paper: model, prompt, readout); "
                   "explicit options override it; `lmmiqa methods` lists each method's presets")
    g.add_argument("--backend", default=None, help="transformers (in-process, default) or openai (OpenAI-compatible server)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    g.add_argument("--levels", type=int, default=None, dest="opt_levels", help="number of levels K for standard-guided/llm-iqa (3, 5, 7, 9)")
    g.add_argument("--readout", default=None, dest="opt_readout", choices=["expected", "argmax"], help="expected (default) or argmax")
    g.add_argument("--pad-to-square", action="store_const", const=True, default=None, dest="opt_pad_to_square", help="q-align: pad to a square like Q-Align's preprocessing")
    g.add_argument("--segmenter", default=None, dest="opt_segmenter", metavar="NAME", help="llm-iqa: sam2 (default, the paper's) or felzenszwalb (weight-free fallback)")
    g.add_argument("--bank", default=None, dest="opt_bank", metavar="DIR", help="iqarag: reference bank folder (lmmiqa bank build)")
    g.add_argument("--top-k", type=int, default=None, dest="opt_top_k", metavar="K", help="iqarag: nearest bank items considered (default 50)")
    g.add_argument("--adapter", default=None, dest="opt_adapter", metavar="DIR", help="q-scorer: adapter folder (lmmiqa train q-scorer) or merged export")
    g.add_argument("--student", default=None, dest="opt_student", metavar="DIR", help="leaf: student folder (lmmiqa distill train)")
    g.add_argument("--tool-maps", default=None, dest="opt_tool_maps", metavar="FILE",
                   help="agentic-iqa: refitted tool maps to use (a file from `lmmiqa tools fit`, a bundle, or a folder "
                   "of them); default: the shipped maps, never the user cache's refitted ones")
    g.add_argument("--batch-size", type=int, default=None, help="images per batch (default 8)")
    g.add_argument(
        "--max-pixels", default=None, dest="opt_max_pixels", metavar="N|model",
        help="MLLM methods: largest width*height of an image given to the model, e.g. 1048576 or 1024*1024 "
        "(default 1024*1024: a 4000x3000 photo becomes ~1k image tokens on Qwen3-VL instead of 11,750); "
        "'model' keeps the checkpoint's own limit",
    )
    g.add_argument("--min-pixels", default=None, dest="opt_min_pixels", metavar="N|model",
                   help="MLLM methods: smallest width*height given to the model (default: the checkpoint's own)")
    g.add_argument(
        "--max-batch-tokens", type=int, default=None, dest="opt_max_batch_tokens", metavar="N",
        help="transformers backend: padded token positions per forward (batch size x longest prompt); prompts "
        "are sorted by length and cut so padding stays small. Default: from the free device memory; 0: off "
        "(fixed chunks in input order)",
    )
    g.add_argument("--trust-remote-code", action="store_const", const=True, default=None, dest="opt_trust_remote_code",
                   help="transformers backend: run a checkpoint's own hub code for an architecture neither transformers "
                   "nor lmmiqa implements (off by default; mPLUG-Owl2/Owl3 checkpoints always run lmmiqa's native code)")
    g.add_argument("--option", action="append", type=_key_value, default=[], metavar="KEY=VALUE", help="any other method option (repeatable)")


def check_device_args(args: argparse.Namespace) -> None:
    """--device and --dtype checked once, before anything is scored (a usage error, not an error per image).

    The spelling is always checked; whether the device exists only for work in this process (with
    ``--engine ray`` the actors may run on other machines).
    """
    from lmmiqa.torch_utils import check_device_name, check_dtype_name

    device, dtype = getattr(args, "device", None), getattr(args, "dtype", None)
    if dtype is not None:
        check_dtype_name(dtype)
    if device is not None:
        check_device_name(device)
        if getattr(args, "engine", "local") != "ray" and getattr(args, "backend", None) in (None, "transformers"):
            import contextlib

            from lmmiqa.errors import MissingDependencyError
            from lmmiqa.torch_utils import pick_device

            with contextlib.suppress(MissingDependencyError):  # reported by the method that needs torch
                pick_device(device)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the method options the user set on the command line (--device/--dtype checked first)."""
    check_device_args(args)
    opts: dict[str, Any] = {}
    models = getattr(args, "model", None)
    if models:
        if len(models) == 1:
            opts["model"] = models[0]
        else:
            opts["models"] = list(models)
    for name in ("preset", "backend", "device", "dtype", "batch_size"):
        value = getattr(args, name, None)
        if value is not None:
            opts[name] = value
    for key, value in vars(args).items():
        if key.startswith(OPT_PREFIX) and value is not None:
            opts[key[len(OPT_PREFIX) :]] = value
    for key, value in getattr(args, "option", []) or []:
        opts[key] = value
    return opts


def scorer_from_args(args: argparse.Namespace) -> Any:
    """Create the scorer the command line describes."""
    import lmmiqa

    return lmmiqa.create_scorer(args.method, **method_options(args))
