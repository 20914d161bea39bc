"""``lmmiqa export q-scorer ADAPTER --merged DIR``: merge a Q-Scorer adapter into a standalone model folder.

The folder holds the merged model (LoRA folded into the weights, the score-token rows in the resized
embeddings), its processor (tokenizer with the score tokens), the head and ``qscorer.json``; score with
``lmmiqa score --method q-scorer --adapter DIR`` (or ``--model DIR``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained artifact (q-scorer --merged)",
        description="Export a trained artifact. Available: q-scorer.",
    )
    esub = p.add_subparsers(dest="exportable", metavar="METHOD")
    q = esub.add_parser(
        "q-scorer",
        help="merge a Q-Scorer adapter into a standalone model folder",
        description="Merge a Q-Scorer adapter (from `lmmiqa train q-scorer`) into its base model and write a "
        "standalone folder: merged weights with the resized embeddings, processor with the score tokens, "
        "head.safetensors and qscorer.json (merged: true). The merged model scores within float rounding of "
        "the adapter (about 1e-6 in float32). The merge runs on CPU by default and needs RAM for the whole model.",
    )
    q.add_argument("adapter", metavar="ADAPTER", help="adapter folder written by `lmmiqa train q-scorer`")
    q.add_argument("--merged", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    q.add_argument("--model", default=None,
                   help="base model to merge into (default: the one recorded in the adapter; pass a local folder offline)")
    q.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="dtype of the written weights (default auto: the dtype the base checkpoint declares)")
    q.add_argument("--device", default="cpu", help="where to merge: cpu (default), cuda, cuda:N")
    q.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty DIR")
    q.set_defaults(func=run_q_scorer)
    p.set_defaults(func=lambda args: _no_method(p))


def _no_method(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_q_scorer(args: argparse.Namespace) -> int:
    from lmmiqa.training.q_scorer_model import export_merged

    out = export_merged(args.adapter, args.merged, model=args.model, dtype=args.dtype, device=args.device,
                        overwrite=args.overwrite)
    print(f"merged q-scorer written to {out}")
    return 0
