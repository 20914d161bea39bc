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
                   "scored there are skipped (resume); use --no-resume to score them again. The method, model and "
                   "options are kept beside it (FILE.meta.json): a file of another method, model or options is refused")
    p.add_argument("--no-resume", action="store_true", help="with --out: score every input even if present in the file")
    p.add_argument("--overwrite", action="store_true", help="with --out: start the file over (its earlier results "
                   "are discarded), e.g. to reuse it for another method or model")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when > 8 images and a terminal)")
    p.add_argument("--explain-image", default=None, metavar="PATH", help="llm-iqa: draw each scored image's regions "
                   "with their scores and weights; PATH is a .png/.jpg file for one input, else a folder that "
                   "receives <name>.regions.png per image")
    add_engine_args(p)
    p.set_defaults(func=run)


#: options that change how fast results come or which inputs are accepted, not the scores: a resume may change
#: them (so may the input pixel limit, see :func:`lmmiqa.images.pixel_limit_option`)
RESUME_FREE_OPTIONS = frozenset({"batch_size", "decode_workers", "workers", "keep_masks", "max_bytes", "device"})


def meta_path(out: Path) -> Path:
    """The sidecar that says what a results file holds: ``FILE.meta.json``."""
    return out.with_name(out.name + ".meta.json")


def run_fingerprint(method: str, config: Any) -> dict[str, Any]:
    """What must match for results to be appended to a file: method, model and the options that change scores."""
    from lmmiqa.config import config_to_dict
    from lmmiqa.images import pixel_limit_option

    free = RESUME_FREE_OPTIONS | {pixel_limit_option()}
    options = {k: v for k, v in config_to_dict(config).items() if k not in free}
    model = options.get("models") or options.get("model")
    return {"method": method, "model": model, "options": options}


def _describe_mismatch(have: dict[str, Any], want: dict[str, Any]) -> str:
    diffs = []
    for key in ("method", "model"):
        if have.get(key) != want.get(key):
            diffs.append(f"{key} {have.get(key)!r} (now {want.get(key)!r})")
    if have.get("options") is not None and have.get("method") == want.get("method"):
        a, b = have.get("options") or {}, want.get("options") or {}
        for k in sorted(set(a) | set(b)):
            if k not in ("model", "models") and a.get(k) != b.get(k):
                diffs.append(f"option {k}={a.get(k)!r} (now {b.get(k)!r})")
    return "; ".join(diffs)


def check_out_file(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready to receive results of this method/model/options, or refuse with a usage error.

    The sidecar ``FILE.meta.json`` records what the file holds; a file written before sidecars existed is
    judged by the ``method`` and ``model`` of its rows. ``overwrite`` starts the file over.
    """
    from lmmiqa.cli import UsageError
    from lmmiqa.jsonl import read_jsonl

    meta = meta_path(out)
    if overwrite or not out.exists() or out.stat().st_size == 0:
        # a sidecar left beside a deleted or empty results file says nothing about what it holds
        for path in (out, meta):
            path.unlink(missing_ok=True)
    have: dict[str, Any] | None = None
    if meta.exists():
        try:
            have = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{meta} is not valid JSON; use another --out file, or --overwrite to start "
                             f"{out} over") from err
    elif out.exists():
        rows = read_jsonl(out)
        kinds = {(r.get("method"), json.dumps(r.get("model"))) for r in rows}
        if len(kinds) > 1:
            raise UsageError(f"{out} mixes results of several methods/models; use another --out file, or "
                             "--overwrite to start it over")
        if kinds:
            method, model = next(iter(kinds))
            have = {"method": method, "model": json.loads(model), "options": None}
    if have is not None:
        diff = _describe_mismatch(have, fingerprint)
        if diff:
            raise UsageError(
                f"{out} holds results of another run: {diff}. Resuming would mix them; use another --out file, "
                "or --overwrite to start it over (its earlier results are discarded)"
            )
        if have.get("options") is not None:
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    from lmmiqa import __version__

    meta.write_text(json.dumps({**fingerprint, "lmmiqa": __version__}, indent=2) + "\n", encoding="utf-8")


def _done_keys(path: Path) -> set[str]:
    """Images already scored successfully in a results file (failed ones are tried again)."""
    from lmmiqa.jsonl import read_jsonl

    return {r["image"] for r in read_jsonl(path) if r.get("error") is None and r.get("score") is not None}


def _fmt_num(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _scale_text(d: dict[str, Any]) -> str:
    """The table's scale column: range, direction, and "uncalibrated" for a raw LEAF student."""
    det = d.get("details") or {}
    scale = d.get("scale")
    if scale:
        rng = f"[{scale[0]:g}, {scale[1]:g}]"
    elif det.get("typical_range"):
        lo, hi = det["typical_range"]
        rng = f"unbounded, typically {lo:g}-{hi:g}"
    else:
        rng = "unbounded"
    parts = [rng, "higher is better" if d.get("higher_is_better", True) else "lower is better"]
    if det.get("calibrated") is False:
        parts.insert(0, "uncalibrated")
    return ", ".join(parts)


def error_text(d: dict[str, Any]) -> str:
    """The error of a result without a leading copy of its image path (the table/stderr already name it)."""
    import os

    err = str(d.get("error") or "")
    image = str(d.get("image"))
    for prefix in (f"{image}: ", f"{os.path.normpath(image)}: "):  # "photos/" is reported as "photos"
        if err.startswith(prefix):
            return err[len(prefix):]
    return err


def _table_row(d: dict[str, Any]) -> str:
    det = d.get("details") or {}
    if d.get("error"):
        return f"{d['image']}\tERROR\t{error_text(d)}"
    extra = []
    if "argmax" in det:
        extra.append(f"argmax={det['argmax']:g}")
    if "std" in det:
        extra.append(f"std={det['std']:.3f}")
    return f"{d['image']}\t{_fmt_num(d['score'])}\t{_scale_text(d)}\t{' '.join(extra)}"


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
    if args.overwrite and not args.out:
        from lmmiqa.cli import UsageError

        raise UsageError("--overwrite applies to the --out file; give --out FILE")
    if args.out:
        out_path = Path(args.out)
        if scorer is not None:
            method, config = scorer.name, scorer.config
        else:
            from lmmiqa.distributed import scorer_spec

            cls, config = scorer_spec(args.method, method_options(args))
            method = cls.name
        check_out_file(out_path, run_fingerprint(method, config), args.overwrite)
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
                    print(f"lmmiqa score: {d['image']}: {error_text(d)}", file=sys.stderr)
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
