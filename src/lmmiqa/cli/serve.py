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
        "GET /v1/methods, /healthz, /metrics (Prometheus), /openapi.json and the web page at /. Requests "
        "from concurrent clients are micro-batched; agentic assessments run in their own queue. Binding a "
        "non-loopback address requires --api-key-env; put a reverse proxy in front (docs/serving.md).",
    )
    add_method_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--allow-method", action="append", default=[], metavar="METHOD",
                   help="another method a request may choose with its 'method' field; shares the loaded model "
                   "(repeatable). POST /v1/assess is served only with --allow-method agentic-iqa")
    g.add_argument("--assess-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="an option of the agentic method behind POST /v1/assess, e.g. max_new_tokens=128 (repeatable; "
                   "needs --allow-method agentic-iqa)")
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
    b.add_argument("--max-assess-images", type=int, default=4,
                   help="most images per request of the agentic method, POST /v1/assess (default 4)")
    b.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="largest width*height of one image, read from its header before decoding (default 40000000); "
                   "the pixel budget given to the model is --max-pixels")
    b.add_argument("--max-request-pixels", type=int, default=200_000_000,
                   help="most decoded pixels of all images of one request, after --decode-max-pixels "
                   "(default 200000000); beyond it 413")
    b.add_argument("--max-queue-pixels", type=int, default=800_000_000,
                   help="most decoded pixels held by all requests in flight (default 800000000, ~2.4 GB as RGB); "
                   "beyond it 429")
    b.add_argument("--decode-max-pixels", type=int, default=None, metavar="PIXELS",
                   help="decode large images straight to about this many pixels (JPEG draft, integer reduce "
                   "otherwise; never below it). Default: the model's own pixel budget read from its processor; "
                   "0: always full resolution")
    b.add_argument("--max-query-chars", type=int, default=1000,
                   help="longest string option of a request, e.g. the agentic query (default 1000)")
    b.add_argument("--timeout", type=float, default=60.0,
                   help="longest wait of a scoring request for its results, in seconds (default 60)")
    b.add_argument("--assess-timeout", type=float, default=300.0,
                   help="the same for POST /v1/assess, whose generations take longer (default 300)")
    b.add_argument("--decode-workers", type=int, default=4, help="threads decoding uploads (default 4)")
    c = p.add_argument_group("connections (slow or numerous clients)")
    c.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client may take to send a request body after its headers; beyond it 408 and "
                   "the connection is closed (default 30)")
    c.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client may take to send its request headers; beyond it the connection is "
                   "closed (default 10)")
    c.add_argument("--keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    c.add_argument("--max-connections", type=int, default=64,
                   help="most open connections; more are answered 503 and closed at once (default 64; keep it "
                   "well under ulimit -n)")
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
        max_assess_images=args.max_assess_images,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        max_queue_pixels=args.max_queue_pixels,
        decode_max_pixels=args.decode_max_pixels,
        max_query_chars=args.max_query_chars,
        request_timeout_s=args.timeout,
        assess_timeout_s=args.assess_timeout,
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
        decode_workers=args.decode_workers,
        api_key=api_key,
    )


def run(args: argparse.Namespace) -> int:
    from lmmiqa.logs import log_warnings
    from lmmiqa.service.app import check_bind, serve

    config = build_config(args)
    check_bind(args.host, config.api_key)  # before loading the model
    log_warnings()  # a warning (low covered mass, ...) is one record of the service log, not a source listing
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0
