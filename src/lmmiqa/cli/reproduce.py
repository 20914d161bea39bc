"""``lmmiqa reproduce METHOD --dataset NAME=DIR ... --out RUNDIR``: a paper's evaluation protocol on the datasets a
user has, its published numbers beside the measured ones (see :mod:`lmmiqa.reproduce`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._engine_args import add_engine_args, engine_options
from lmmiqa.cli._method_args import _key_value, add_method_args, method_options


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _dataset_option(text: str) -> tuple[str, str, Any]:
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE (e.g. spaq:student=students/spaq), got {text!r}")
    key, value = _key_value(rest)
    return name.strip(), key, value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run a paper's evaluation protocol on your datasets; its published numbers beside the measured ones",
        description="Run METHOD's paper protocol (METHODS §7 and the paper: KonIQ's official test split, whole "
        "datasets for training-free and cross-dataset rows, median of 10 seeded 80/20 splits where the paper used "
        "them, IQARAG's 10 % reference bank) on the datasets given, with the method's `paper` preset (--preset "
        "default: lmmiqa's defaults instead), and write RUNDIR/report.md, report.json and comparison.png: the "
        "published SRCC/PLCC, the measured ones with bootstrap 95 % intervals, the difference and whether the "
        "published value lies in the interval. Each dataset is scored by `lmmiqa eval` into RUNDIR/<dataset>/...: "
        "running the same command again resumes. Options may contain {seed} and {dataset}, filled per split. "
        "`--list` prints the paper's table and what each dataset folder must hold.",
    )
    p.add_argument("method", nargs="?", metavar="METHOD", help="a method with published numbers (see --list)")
    p.add_argument("--dataset", dest="datasets", action="append", type=_name_value, default=[], metavar="NAME=DIR",
                   help="a dataset you have and its folder (repeatable), e.g. koniq=/data/koniq")
    p.add_argument("--labels", dest="label_files", action="append", type=_name_value, default=[], metavar="NAME=CSV",
                   help="read this label file for dataset NAME instead of the one in its folder (repeatable)")
    p.add_argument("--dataset-option", action="append", type=_dataset_option, default=[], metavar="NAME:KEY=VALUE",
                   help="a method option for one dataset only (repeatable), e.g. koniq:student=students/koniq")
    p.add_argument("--out", "-o", metavar="RUNDIR", help="run folder (created; resumed when it exists)")
    p.add_argument("--list", action="store_true", help="print the published table (of METHOD, or of every method) "
                   "with protocols and sources, and how each dataset folder must look; run nothing")
    g = p.add_argument_group("run")
    g.add_argument("--bank-encoder", default=None, metavar="SPEC",
                   help="iqarag: encoder of the reference banks reproduce builds (default vision-tower: the scored "
                   "model's own, the paper's best; or clip:MODEL, siglip:MODEL, dinov2:MODEL)")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N images of each split (a quick, partial check)")
    g.add_argument("--n-boot", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument("--force", action="store_true", help="start run folders over when they hold another configuration")
    g.add_argument("--skip-missing", action="store_true", help="leave out image files that are missing (counted)")
    g.add_argument("--no-plot", action="store_true", help="draw no plots")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")
    g.add_argument("--format", choices=("md", "json"), default="md", help="summary printed at the end (default md)")
    add_method_args(p, method_flag=False)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa.errors import ConfigError

    if args.list:
        print(list_text(args.method), end="")
        return 0
    if not args.method:
        raise ConfigError("name the method to reproduce (lmmiqa reproduce METHOD ...; --list shows the papers' tables)")
    if not args.out:
        raise ConfigError("give the run folder: --out RUNDIR")
    if not args.datasets:
        raise ConfigError("give the datasets you have: --dataset NAME=DIR (repeatable); `lmmiqa reproduce "
                          f"{args.method} --list` shows which ones the paper reports and how their folders look")
    from lmmiqa.reproduce.runner import reproduce

    options = method_options(args)
    preset = options.pop("preset", "paper")
    batch_size = options.get("batch_size")
    per_dataset: dict[str, dict[str, Any]] = {}
    for name, key, value in args.dataset_option:
        per_dataset.setdefault(name, {})[key] = value
    report = reproduce(
        args.method,
        dict(args.datasets),
        args.out,
        preset=preset,
        options=options,
        dataset_options=per_dataset,
        labels=dict(args.label_files),
        bank_encoder=args.bank_encoder,
        limit=args.limit,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=batch_size,
        progress=args.progress,
        force=args.force,
        skip_missing=args.skip_missing,
        plot=not args.no_plot,
        engine=args.engine,
        engine_options=engine_options(args),
        verbose=True,
    )
    if args.format == "json":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.to_markdown())
    compared = [r for r in report.rows if r["status"] == "compared"]
    if not compared:
        print("lmmiqa reproduce: no published row could be compared (see 'Not compared' in the report)",
              file=sys.stderr)
        return 1
    return 0


def list_text(method: str | None) -> str:
    """The published table (one method, or all) with protocols and sources, and the dataset folder layouts."""
    from lmmiqa import registry
    from lmmiqa.data.records import get_record
    from lmmiqa.reproduce.published import PUBLISHED, published_for

    if method:
        canonical = registry.canonical("method", method) if ":" not in method else method
        rows = published_for(canonical, registry.resolve_method(canonical))
    else:
        rows = PUBLISHED
    lines = ["| method | dataset(s) | setting | SRCC | PLCC | (SRCC+PLCC)/2 | protocol | source |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(x: float | None) -> str:
            return "" if x is None else f"{x:.4g}"

        setting = r.setting + ("" if r.runnable else f" — not runnable: {r.why_not}")
        lines.append(f"| {r.method} | {', '.join(r.datasets)} | {setting} | {f(r.srcc)} | {f(r.plcc)} | {f(r.mean)} | "
                     f"{r.protocol.describe()} ({r.protocol.source}) | {r.source} |")
    names = sorted({d for r in rows if r.runnable for d in r.datasets})
    lines += ["", "Dataset folders (--dataset NAME=DIR):", ""]
    for name in names:
        lines.append(f"- {name}: {get_record(name).layout()}")
    return "\n".join(lines) + "\n"
