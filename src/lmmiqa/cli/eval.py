"""``lmmiqa eval``: evaluate a method on a dataset split into a resumable run folder.

Writes RUNDIR/config.json, RUNDIR/predictions.jsonl (incrementally), and at the end RUNDIR/report.json,
report.md and scatter.png. Re-running the same command resumes; see :mod:`lmmiqa.evaluation.runner`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from lmmiqa.cli._data_args import add_data_args, dataset_from_args
from lmmiqa.cli._engine_args import add_engine_args, engine_options
from lmmiqa.cli._method_args import add_method_args, method_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a method on a dataset (SRCC/KRCC/PLCC, resumable)",
        description="Score a dataset split with a method and report SRCC, KRCC (tau-b), PLCC raw and after 4- and "
        "5-parameter logistic fits, RMSE and bootstrap 95% intervals. Predictions are appended to "
        "RUNDIR/predictions.jsonl as they arrive; running the same command again resumes. --method also accepts "
        "'package.module:Class' for a Scorer subclass of a plugin. Exit status: 0 when items were scored, 1 when "
        "none could be, 2 for usage errors (including a RUNDIR that holds a different configuration).",
    )
    add_method_args(p)
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", "-o", required=True, metavar="RUNDIR", help="run folder (created; resumed when it exists)")
    g.add_argument("--force", action="store_true", help="start RUNDIR over when it holds a different configuration")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N items (partial report)")
    g.add_argument("--retry-failed", action="store_true", help="score again items whose earlier result was a failure")
    g.add_argument("--n-boot", type=int, default=1000, metavar="B", help="bootstrap resamples for the 95%% intervals (default 1000; 0 = none)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument("--no-plot", action="store_true", help="do not draw scatter.png")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with rate and ETA on stderr (default: when stderr is a terminal)")
    g.add_argument("--format", choices=("md", "json"), default="md", help="summary printed at the end (default md)")
    g.add_argument("--no-dataset-resize", action="store_true",
                   help="score the images as published instead of resized as the dataset's paper evaluates them "
                   "(SPAQ: shorter side 512); the resize used is recorded in RUNDIR/config.json")
    g.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even when the method's reference data (an IQARAG --bank) holds images of the split")
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa.evaluation.runner import evaluate, make_scorer

    options = method_options(args)
    batch_size = options.get("batch_size")
    scorer = make_scorer(args.method, **options)
    ds = dataset_from_args(args)
    report = evaluate(
        scorer,
        ds,
        out=args.out,
        limit=args.limit,
        batch_size=batch_size,
        progress=args.progress,
        force=args.force,
        retry_failed=args.retry_failed,
        n_boot=args.n_boot,
        seed=args.seed,
        plot=not args.no_plot,
        engine=args.engine,
        engine_options=engine_options(args),
        skip_missing=bool(args.skip_missing),
        allow_overlap=bool(args.allow_overlap),
        dataset_resize=not args.no_dataset_resize,
        verbose=True,
    )
    if args.format == "json":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.to_markdown())
    print(f"lmmiqa eval: wrote {args.out}/report.json, report.md" + ("" if args.no_plot else ", scatter.png"),
          file=sys.stderr)
    if report.n == 0:
        print("lmmiqa eval: no item could be scored", file=sys.stderr)
        return 1
    if not math.isfinite(report.srcc):
        print("lmmiqa eval: correlations are undefined (too few items or constant predictions)", file=sys.stderr)
    return 0
