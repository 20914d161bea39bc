"""``lmmiqa levels-bound``: upper bound of K-level integer scorers on a dataset (quantize the MOS itself)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._data_args import add_data_args, dataset_from_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "levels-bound",
        help="best SRCC/PLCC a K-level integer scorer can reach (quantized MOS vs MOS)",
        description="Quantize the MOS with the LLM-IQA paper's formula s_hat = Round(K*(s-min)/(max-min)) "
        "(this gives K+1 values 0..K; kept as published) and report SRCC, PLCC and their mean against the "
        "unquantized MOS. Needs only the label file: --labels CSV, or --dataset NAME with --labels or --root.",
    )
    add_data_args(p, split=True, images=False)
    p.add_argument("--levels", type=int, nargs="+", default=[3, 5, 7, 9], metavar="K", help="level counts (default: 3 5 7 9)")
    p.add_argument("--format", choices=("md", "json", "csv"), default="md", help="output format (default md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa.evaluation.bounds import FORMULA, NOTE, levels_bound

    ds = dataset_from_args(args)
    rows = levels_bound(ds.scores(), args.levels)
    if args.format == "json":
        out = {
            "labels": ds.labels,
            "dataset": ds.name,
            "score_column": ds.format.score_column,
            "split": ds.split,
            "n": len(ds),
            "formula": FORMULA,
            "note": NOTE,
            "levels": rows,
        }
        from lmmiqa.types import json_safe

        json.dump(json_safe(out), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.format == "csv":
        sys.stdout.write("k,srcc,plcc,mean\n")
        for r in rows:
            sys.stdout.write(f"{r['k']},{r['srcc']:.6f},{r['plcc']:.6f},{r['mean']:.6f}\n")
    else:
        sys.stdout.write(f"# levels-bound: {ds.name} ({ds.labels}, column {ds.format.score_column}, n = {len(ds)})\n\n")
        sys.stdout.write(f"Formula: {FORMULA}.\nNote: {NOTE}.\n\n")
        sys.stdout.write("| K | SRCC | PLCC | (SRCC+PLCC)/2 |\n|---|---|---|---|\n")
        for r in rows:
            sys.stdout.write(f"| {r['k']} | {r['srcc']:.4f} | {r['plcc']:.4f} | {r['mean']:.4f} |\n")
    return 0
