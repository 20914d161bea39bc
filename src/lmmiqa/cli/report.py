"""``lmmiqa report RUNDIR...``: one table from several evaluation runs, plus a method x dataset matrix."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = ["method", "model", "dataset", "split", "n", "n_failed", "srcc", "krcc", "plcc", "plcc_4pl", "plcc_5pl",
           "fit_4pl", "fit_5pl", "rmse", "partial", "synthetic", "run_dir"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="combine evaluation runs into one table",
        description="Read RUNDIR/report.json of finished `lmmiqa eval` runs and print one table (method x dataset: "
        "SRCC, KRCC, PLCC raw, PLCC after the 4PL and 5PL fits, n), and, when a method was evaluated on several "
        "datasets, a cross-dataset matrix of SRCC / PLCC-4PL. Run folders without a report are listed on stderr (exit "
        "status 1 when any was skipped).",
    )
    p.add_argument("rundirs", nargs="+", metavar="RUNDIR", help="run folders (or report.json files)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md", help="output format (default md)")
    p.set_defaults(func=run)


def model_label(model: Any) -> str:
    """Short text for a model id or a list of them."""
    if model is None:
        return "-"
    if isinstance(model, list):
        return "+".join(model_label(m) for m in model)
    return str(model)


def rows_of(reports: Sequence[Any]) -> list[dict[str, Any]]:
    """One table row per report (a preset is shown with the method: ``iqarag [paper]``)."""
    return [
        {
            "method": r.method + (f" [{r.preset}]" if getattr(r, "preset", None) else ""),
            "model": model_label(r.model),
            "dataset": r.dataset,
            "split": r.split,
            "n": r.n,
            "n_failed": r.n_failed,
            "srcc": r.srcc,
            "krcc": r.krcc,
            "plcc": r.plcc,
            "plcc_4pl": r.plcc_4pl,
            "plcc_5pl": r.plcc_5pl,
            "fit_4pl": r.fell_back("logistic4") or "logistic4",
            "fit_5pl": r.fell_back("logistic5") or "logistic5",
            "rmse": r.rmse,
            "partial": r.partial,
            "synthetic": r.synthetic,
            "run_dir": r.run_dir,
        }
        for r in reports
    ]


def matrix_of(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """``{"datasets": [...], "rows": {method (model): {dataset: {"srcc", "plcc_4pl", "split"}}}}`` when some
    method has runs on two or more datasets, else ``None``. With several runs of one pair the last one wins."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = f"{r['method']} ({r['model']})" if r["model"] != "-" else r["method"]
        by.setdefault(key, {})[r["dataset"]] = {"srcc": r["srcc"], "plcc_4pl": r["plcc_4pl"], "split": r["split"]}
    if not any(len(v) > 1 for v in by.values()):
        return None
    datasets = sorted({d for v in by.values() for d in v})
    return {"datasets": datasets, "rows": by}


def _f(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4f}"


def to_markdown(rows: Sequence[dict[str, Any]], matrix: dict[str, Any] | None) -> str:
    lines = [
        "| method | model | dataset | split | n | failed | SRCC | KRCC | PLCC (raw) | PLCC (4PL fit) | PLCC (5PL fit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fell_back = False
    for r in rows:
        flags = (" (partial)" if r["partial"] else "") + (" (synthetic)" if r["synthetic"] else "")
        p4, p5 = _f(r["plcc_4pl"]), _f(r["plcc_5pl"])
        if r.get("fit_4pl", "logistic4") != "logistic4":
            p4, fell_back = f"{p4} ({r['fit_4pl']})", True
        if r.get("fit_5pl", "logistic5") != "logistic5":
            p5, fell_back = f"{p5} ({r['fit_5pl']})", True
        lines.append(
            f"| {r['method']} | {r['model']} | {r['dataset']}{flags} | {r['split']} | {r['n']} | {r['n_failed']} | "
            f"{_f(r['srcc'])} | {_f(r['krcc'])} | {_f(r['plcc'])} | {p4} | {p5} |"
        )
    if fell_back:
        lines += ["", "(a line), (a constant): that logistic fit did not converge (too few items, or constant "
                  "predictions) and fell back to the map named; the PLCC after it keeps the sign of the relation."]
    if matrix is not None:
        ds = matrix["datasets"]
        lines += ["", "Cross-dataset matrix (SRCC / PLCC after 4PL fit):", "",
                  "| method | " + " | ".join(ds) + " |", "|---|" + "---|" * len(ds)]
        for key, cells in matrix["rows"].items():
            vals = [f"{_f(cells[d]['srcc'])} / {_f(cells[d]['plcc_4pl'])}" if d in cells else "-" for d in ds]
            lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from lmmiqa.errors import DataError
    from lmmiqa.evaluation.report import EvalReport
    from lmmiqa.types import json_safe

    reports = []
    for d in args.rundirs:
        try:
            reports.append(EvalReport.load(d))
        except DataError as err:
            print(f"lmmiqa report: skipping {d}: {err}", file=sys.stderr)
    if not reports:
        raise DataError("none of the given folders holds a report.json")
    rows = rows_of(reports)
    matrix = matrix_of(rows)
    if args.format == "json":
        json.dump(json_safe({"runs": rows, "matrix": matrix}), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (v if not (isinstance(v, float) and not math.isfinite(v)) else "") for k, v in r.items()})
    else:
        sys.stdout.write(to_markdown(rows, matrix))
    return 0 if len(reports) == len(args.rundirs) else 1
