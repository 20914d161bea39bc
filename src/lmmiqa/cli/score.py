"""``lmmiqa score``: score images with any method; stream results to stdout and/or a JSONL file."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from lmmiqa.cli._engine_args import add_engine_args, engine_options, ray_config
from lmmiqa.cli._method_args import add_method_args, method_options, scorer_from_args

FORMATS = ("table", "json", "jsonl", "csv")

CSV_FIELDS = ["image", "score", "higher_is_better", "scale_low", "scale_high", "method", "model", "argmax", "std", "error"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="score images (paths, folders, @list files)",
        description="Score images with a method. Inputs: image paths, folders (recursive), @file lists (one path "
        "per line). Bad images get a per-image error; the rest are scored. Exit status: 0 when at least one "
        "image was scored, 1 when none was, 2 for usage errors.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or @list files")
    add_method_args(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="stdout format (default: table)")
    p.add_argument("--out", default=None, help="append results as JSONL to this file as they arrive; images already "
                   "scored there are skipped (resume); use --no-resume to score them again")
    p.add_argument("--no-resume", action="store_true", help="with --out: score every input even if present in the file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when > 8 images and a terminal)")
    p.add_argument("--explain-image", default=None, metavar="PATH", help="llm-iqa: draw each scored image's regions "
                   "with their scores and weights; PATH is a .png/.jpg file for one input, else a folder that "
                   "receives <name>.regions.png per image")
    add_engine_args(p)
    p.set_defaults(func=run)


def _done_keys(path: Path) -> set[str]:
    """Images already scored successfully in a results file (failed ones are tried again)."""
    from lmmiqa.jsonl import read_jsonl

    return {r["image"] for r in read_jsonl(path) if r.get("error") is None and r.get("score") is not None}


def _fmt_num(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _table_row(d: dict[str, Any]) -> str:
    scale = d.get("scale")
    scale_s = f"[{scale[0]:g}, {scale[1]:g}]" if scale else ""
    det = d.get("details") or {}
    if d.get("error"):
        return f"{d['image']}\tERROR\t{d['error']}"
    extra = []
    if "argmax" in det:
        extra.append(f"argmax={det['argmax']:g}")
    if "std" in det:
        extra.append(f"std={det['std']:.3f}")
    return f"{d['image']}\t{_fmt_num(d['score'])}\t{scale_s}\t{' '.join(extra)}"


def write_results(results: list[dict[str, Any]], fmt: str, stream: TextIO, *, header: bool) -> None:
    """Write result dicts to ``stream`` in ``fmt`` (json is handled by the caller: one array at the end)."""
    if fmt == "jsonl":
        for d in results:
            stream.write(json.dumps(d) + "\n")
    elif fmt == "table":
        if header:
            stream.write("image\tscore\tscale\tdetails\n")
        for d in results:
            stream.write(_table_row(d) + "\n")
    elif fmt == "csv":
        w = csv.DictWriter(stream, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if header:
            w.writeheader()
        for d in results:
            det = d.get("details") or {}
            scale = d.get("scale") or [None, None]
            w.writerow(
                {
                    **d,
                    "model": json.dumps(d["model"]) if isinstance(d.get("model"), list) else d.get("model"),
                    "scale_low": scale[0],
                    "scale_high": scale[1],
                    "argmax": det.get("argmax"),
                    "std": det.get("std"),
                }
            )
    stream.flush()


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _prepare_explain(args: argparse.Namespace) -> None:
    """Validate --explain-image and ask the method to keep its region masks for the pictures."""
    import dataclasses

    from lmmiqa import registry
    from lmmiqa.cli import UsageError
    from lmmiqa.images import expand_inputs

    cls = registry.resolve("method", args.method)
    if "keep_masks" not in {f.name for f in dataclasses.fields(cls.config_cls)}:
        raise UsageError(f"--explain-image needs a method that scores regions (llm-iqa), not {args.method!r}")
    target = Path(args.explain_image)
    if target.suffix.lower() in _PICTURE_SUFFIXES and len(expand_inputs(args.inputs)) > 1:
        raise UsageError("--explain-image FILE takes one input image; pass a folder to draw several")
    args.option = [*(args.option or []), ("keep_masks", True)]


def _explain(scorer: Any, dicts: list[dict[str, Any]], target: Path, used: set[str]) -> int:
    """Write the region picture of each scored result; returns how many were written."""
    from lmmiqa.images import load_input
    from lmmiqa.viz import render_regions

    written = 0
    for d in dicts:
        masks = scorer.region_masks.pop(d["image"], None)
        if d["error"] is not None or "regions" not in (d.get("details") or {}):
            continue
        if target.suffix.lower() in _PICTURE_SUFFIXES:
            path = target
        else:
            stem = Path(d["image"]).stem or "image"
            name, k = f"{stem}.regions.png", 2
            while name in used:
                name, k = f"{stem}-{k}.regions.png", k + 1
            used.add(name)
            path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = load_input(d["image"])
        scale = max(1.0, 768 / max(image.size))  # small images are drawn larger so the labels stay readable
        render_regions(image, d, path, masks=masks, scale=scale, title=Path(d["image"]).name)
        written += 1
    return written


def run(args: argparse.Namespace) -> int:
    if args.explain_image:
        if args.engine == "ray":
            from lmmiqa.cli import UsageError

            raise UsageError("--explain-image needs --engine local (the region masks stay in the Ray actors)")
        _prepare_explain(args)
    engine_options(args)  # Ray flags without --engine ray are a usage error
    scorer = None if args.engine == "ray" else scorer_from_args(args)
    pictures = 0
    used_names: set[str] = set()
    skip: set[str] = set()
    out_f = None
    if args.out:
        out_path = Path(args.out)
        if not args.no_resume:
            skip = _done_keys(out_path)
            if skip:
                print(f"lmmiqa score: {len(skip)} image(s) already scored in {out_path}; skipping them", file=sys.stderr)
        from lmmiqa.jsonl import JsonlAppender

        out_f = JsonlAppender(out_path)
    n_ok = n_total = 0
    collected: list[dict[str, Any]] = []
    first = True
    try:
        if scorer is None:
            from lmmiqa.distributed import ray_score

            batches = ray_score(args.method, args.inputs, options=method_options(args), skip=skip,
                                config=ray_config(args, args.batch_size), progress=args.progress)
        else:
            batches = scorer.iter_score(args.inputs, batch_size=args.batch_size, progress=args.progress, skip=skip)
        for batch in batches:
            dicts = [r.to_dict() for r in batch]
            n_total += len(dicts)
            n_ok += sum(1 for d in dicts if d["error"] is None)
            if out_f is not None:
                out_f.write(dicts)
            if args.format == "json":
                collected.extend(dicts)
            else:
                write_results(dicts, args.format, sys.stdout, header=first)
            first = False
            for d in dicts:
                if d["error"]:
                    print(f"lmmiqa score: {d['image']}: {d['error']}", file=sys.stderr)
            if args.explain_image:
                pictures += _explain(scorer, dicts, Path(args.explain_image), used_names)
    finally:
        if out_f is not None:
            out_f.close()
    if args.format == "json":
        json.dump(collected, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if args.explain_image:
        print(f"lmmiqa score: wrote {pictures} region picture(s) to {args.explain_image}", file=sys.stderr)
    if n_total == 0:
        if skip:
            print("lmmiqa score: nothing left to score", file=sys.stderr)
            return 0
        print("lmmiqa score: no input images found", file=sys.stderr)
        return 1
    return 0 if n_ok > 0 else 1
