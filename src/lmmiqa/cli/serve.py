"""``lmmiqa serve``: the HTTP API and web page (see :mod:`lmmiqa.service.app`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lmmiqa.cli._method_args import _key_value, add_method_args, method_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the scoring API and web page over HTTP",
        description="Serve POST /v1/score (multipart uploads or JSON with base64 images), POST /v1/assess, "
        "GET /v1/methods, /healthz, /metrics (Prometheus), /docs (OpenAPI) and the web page at /. Requests "
        "from concurrent clients are micro-batched. Binding a non-loopback address requires --api-key-env.",
    )
    add_method_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--allow-method", action="append", default=[], metavar="METHOD",
                   help="another method a request may choose with its 'method' field; shares the loaded model (repeatable)")
    g.add_argument("--assess-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="an option of the agentic method behind POST /v1/assess, e.g. max_new_tokens=128 (repeatable)")
    g.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the API key clients must send (Authorization: Bearer KEY); "
                   "off by default on loopback, required for any other address")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=int, default=16, help="most images per backend batch (default 16)")
    b.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="longest wait for a batch to fill, in milliseconds (default 10)")
    b.add_argument("--max-queue", type=int, default=256, help="most images waiting; beyond it 429 (default 256)")
    b.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    b.add_argument("--max-images", type=int, default=16, help="most images per request (default 16)")
    b.add_argument("--max-image-pixels", type=int, default=40_000_000, dest="max_image_pixels",
                   help="largest width*height of one uploaded image; beyond it 413 (default 40000000). The pixel "
                   "budget given to the model is --max-pixels")
    b.add_argument("--timeout", type=float, default=60.0, help="request timeout in seconds (default 60)")
    b.add_argument("--decode-workers", type=int, default=4, help="threads decoding uploads (default 4)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~lmmiqa.service.app.ServiceConfig` the command line describes (no model is loaded)."""
    from lmmiqa.cli import UsageError
    from lmmiqa.service.app import ServiceConfig

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    options = method_options(args)
    if options.pop("batch_size", None) is not None:
        raise UsageError("lmmiqa serve forms its batches across requests: use --max-batch, not --batch-size")
    return ServiceConfig(
        method=args.method,
        options=options,
        allow_methods=tuple(args.allow_method),
        assess_options=dict(args.assess_option),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_images=args.max_images,
        max_pixels=args.max_image_pixels,
        request_timeout_s=args.timeout,
        decode_workers=args.decode_workers,
        api_key=api_key,
    )


def run(args: argparse.Namespace) -> int:
    from lmmiqa.service.app import check_bind, serve

    config = build_config(args)
    check_bind(args.host, config.api_key)  # before loading the model
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0
