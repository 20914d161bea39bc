"""``lmmiqa tools``: list, run and refit the classical quality tools.

* ``lmmiqa tools list [--kind nr|fr] [--format text|json]``
* ``lmmiqa tools run TOOL INPUTS... [--ref REF] [--normalized] [--format text|json|jsonl]``
* ``lmmiqa tools fit --tool TOOL (--dataset NAME | --labels CSV) --root DIR [...]`` (``--reset`` to forget)
* ``lmmiqa tools assets [--assets DIR]``: which NIQE/BRISQUE parameter files are used, and how to fix a missing one

Exit status: 0 on success (``run``: at least one image measured), 1 when the work failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

FORMATS = ("text", "json", "jsonl")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tools",
        help="classical quality tools: list, run, fit maps",
        description="Classical image quality tools (NIQE, BRISQUE, PIQE, PSNR, SSIM, MS-SSIM, GMSD and simple "
        "cues), each with a map of its raw value to 1-5.",
    )
    tsub = p.add_subparsers(dest="tools_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _no_action(p))

    pl = tsub.add_parser("list", help="list the tools", description="List the tools: kind, direction, typical "
                         "range, map source and what each is good at.")
    pl.add_argument("--kind", choices=("nr", "fr"), default=None, help="only no-reference or full-reference tools")
    pl.add_argument("--format", choices=("text", "json"), default="text")
    pl.add_argument("--no-pyiqa", action="store_true", help="leave out pyiqa:* tools even if pyiqa is installed")
    pl.set_defaults(func=run_list)

    pr = tsub.add_parser(
        "run",
        help="run one tool on images",
        description="Run one tool on images (paths, folders, @list files). Full-reference tools need --ref: "
        "once for all inputs, or once per input in order. Bad images get an ERROR line; exit status 1 when no "
        "image could be measured.",
    )
    pr.add_argument("tool", help="tool name (see `lmmiqa tools list`)")
    pr.add_argument("inputs", nargs="+", help="image files, folders or @list files")
    pr.add_argument("--ref", action="append", default=None, metavar="IMAGE", help="reference image (FR tools)")
    pr.add_argument("--normalized", action="store_true", help="text output: add the value mapped to 1-5")
    pr.add_argument("--format", choices=FORMATS, default="text", help="stdout format (default: text)")
    pr.add_argument("--assets", default=None, metavar="DIR", help="folder with your own NIQE/BRISQUE parameter files (default: the official ones shipped with lmmiqa)")
    pr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a tool option, e.g. channel=y for niqe (BasicSR's Y of YCbCr; default gray = MATLAB rgb2gray) (repeatable)")
    pr.add_argument("--workers", type=int, default=1, help="images measured in parallel (threads; default 1)")
    pr.set_defaults(func=run_run)

    pf = tsub.add_parser(
        "fit",
        help="refit a tool's 1-5 map on a labeled set",
        description="Measure every image of a labeled set with one tool and fit its 5-parameter logistic map to "
        "the opinion scores (rescaled to 1-5, flipped for lower-is-better scales). The map is stored in the "
        "user cache, where `tools run --normalized` uses it; agentic-iqa uses refitted maps only when "
        "given --tool-maps FILE; --reset removes it.",
    )
    pf.add_argument("--tool", required=True, help="tool name")
    from lmmiqa.cli._data_args import add_data_args

    add_data_args(pf, split=True, images=True, required=False)
    pf.add_argument("--assets", default=None, metavar="DIR", help="folder with your own NIQE/BRISQUE parameter files (default: the official ones shipped with lmmiqa)")
    pf.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a tool option (repeatable)")
    pf.add_argument("--workers", type=int, default=1, help="images measured in parallel (threads; default 1)")
    pf.add_argument("--dry-run", action="store_true", help="fit and print, but do not store the map")
    pf.add_argument("--reset", action="store_true", help="remove the stored map of --tool and stop")
    pf.add_argument("--format", choices=("text", "json"), default="text")
    pf.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when > 8 images and a terminal)")
    pf.set_defaults(func=run_fit)

    pa = tsub.add_parser(
        "assets",
        help="which NIQE/BRISQUE parameter files are used",
        description="Show which parameter file NIQE and BRISQUE use: the official ones ship with lmmiqa (nothing "
        "is downloaded); a folder given with --assets or $LMMIQA_ASSETS holding your own (e.g. refitted) files "
        "comes first, file by file. Prints where each file is, whether it is the official one and its licence; "
        "for a missing file, what to do. Exit status 1 when a file is missing.",
    )
    pa.add_argument("--assets", default=None, metavar="DIR", help="folder with your own parameter files")
    pa.add_argument("--format", choices=("text", "json"), default="text")
    pa.set_defaults(func=run_assets)


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    from lmmiqa.cli import UsageError

    out: dict[str, Any] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE, got {text!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def _tool_from_args(args: argparse.Namespace) -> Any:
    from lmmiqa.tools import get_tool

    options = _parse_options(args.option)
    if args.assets is not None:
        options["assets"] = args.assets
    return get_tool(args.tool, **options)


# --------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    from lmmiqa.tools import tool_catalog

    infos = tool_catalog(kind=args.kind, include_pyiqa=not args.no_pyiqa)
    if args.format == "json":
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    for i in infos:
        rng = f"{i.typical_range[0]:g}..{i.typical_range[1]:g}" if i.typical_range else "?"
        direction = "higher=better" if i.higher_is_better else "lower=better"
        print(f"{i.name:<14} {i.kind.upper():<2}  {direction:<13} {rng:<11} map:{i.map_source or 'none':<9} {i.description}")
    return 0


# --------------------------------------------------------------------------- run


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def run_run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from lmmiqa.cli import UsageError
    from lmmiqa.images import expand_inputs, input_key
    from lmmiqa.tools import FR

    tool = _tool_from_args(args)
    inputs = expand_inputs(args.inputs)
    refs = args.ref or []
    if tool.kind == FR:
        if not refs:
            raise UsageError(f"{tool.name} is a full-reference tool: pass --ref REFERENCE")
        if len(refs) not in (1, len(inputs)):
            raise UsageError(f"give one --ref for all inputs or one per input ({len(inputs)}), not {len(refs)}")
        pairs = [(x, refs[0] if len(refs) == 1 else refs[i]) for i, x in enumerate(inputs)]
    else:
        if refs:
            raise UsageError(f"{tool.name} is a no-reference tool: it takes no --ref")
        pairs = [(x, None) for x in inputs]
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")

    def one(i: int) -> Any:
        x, ref = pairs[i]
        return tool.run(x, ref, key=input_key(x, i))

    if args.workers > 1 and len(pairs) > 1:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(one, range(len(pairs))))
    else:
        results = [one(i) for i in range(len(pairs))]

    dicts = [r.to_dict() for r in results]
    if args.format == "json":
        print(json.dumps(dicts, indent=2))
    elif args.format == "jsonl":
        for d in dicts:
            print(json.dumps(d))
    else:
        # a header naming the columns as the JSON keys do (raw: the tool's own unit; normalized: its [1, 5] map)
        print("image\traw" + ("\tnormalized" if args.normalized else ""))
        for r, d in zip(results, dicts):
            if r.error is not None:
                print(f"{r.image}\tERROR\t{r.error}")
                continue
            raw = d["details"].get("raw_text") or _fmt(r.raw)
            print(f"{r.image}\t{raw}" + (f"\t{_fmt(r.normalized)}" if args.normalized else ""))
    for r in results:
        if r.error is not None:
            where = "" if r.error.startswith(r.image) else f"{r.image}: "
            print(f"lmmiqa tools run: {where}{r.error}", file=sys.stderr)
    sys.stdout.flush()
    return 0 if any(r.ok for r in results) else 1


# --------------------------------------------------------------------------- fit


def run_fit(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from lmmiqa.cli import UsageError
    from lmmiqa.cli._data_args import dataset_from_args
    from lmmiqa.errors import DataError
    from lmmiqa.tools import FR
    from lmmiqa.tools import maps as tool_maps

    tool = _tool_from_args(args)
    if args.reset:
        removed = tool_maps.delete_fitted_map(tool.name)
        where = tool_maps.fitted_map_path(tool.name)
        print(f"removed {where}" if removed else f"no stored map for {tool.name} ({where})")
        return 0
    ds = dataset_from_args(args)
    if ds is None:
        raise UsageError("name the labeled set with --dataset NAME --root DIR, or --labels CSV --root DIR")
    items = list(ds.items)
    if not items:
        raise DataError(f"{ds.labels}: no images to fit on")
    if tool.kind == FR and any(it.ref is None for it in items):
        raise UsageError(f"{tool.name} is a full-reference tool: the labels need a reference column (--ref-column)")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")

    def one(it: Any) -> Any:
        return tool.run(it.path, it.ref if tool.kind == FR else None, key=it.id)

    bar = None
    show = args.progress if args.progress is not None else (len(items) > 8 and sys.stderr.isatty())
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"{tool.name}", unit="img", file=sys.stderr, dynamic_ncols=True)
    results = []
    try:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for r in pool.map(one, items):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    failed = [r for r in results if not r.ok]
    for r in failed[:5]:
        print(f"lmmiqa tools fit: {r.image}: {r.error}", file=sys.stderr)
    if len(failed) > 5:
        print(f"lmmiqa tools fit: ... and {len(failed) - 5} more images failed", file=sys.stderr)
    ok = [(r.raw, it.score) for r, it in zip(results, items) if r.ok]
    extra = {
        "tool": tool.name,
        "dataset": ds.name,
        "labels": ds.labels,
        "root": ds.root,
        "split": ds.split,
        "n_failed": len(failed),
        "synthetic": bool(getattr(ds, "synthetic", False)),
    }
    m = tool_maps.fit_map(
        [raw for raw, _ in ok],
        [mos for _, mos in ok],
        score_range=ds.score_range,
        higher_is_better=ds.higher_is_better,
        source="fitted",
        note=f"refitted on {ds.name} ({ds.labels}, split {ds.split})",
        extra=extra,
    )
    path = None if args.dry_run else tool_maps.save_fitted_map(tool.name, m)
    summary = {"tool": tool.name, "stored": str(path) if path else None, "map": m.to_dict()}
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        f = m.fit
        print(f"{tool.name}: fitted on {f['n']} images ({len(failed)} failed) of {ds.name} ({ds.labels})")
        print(f"  SRCC(raw, MOS) = {_fmt(f['srcc_raw'])}; after the map: PLCC = {_fmt(f['plcc_mapped'])}, "
              f"RMSE = {_fmt(f['rmse_mapped'])} (1-5 scale)")
        print(f"  converged: {f['converged']}" + (f" (fallback: {f['fallback']})" if f["fallback"] else "")
              + (f"; {f['constraint']}" if f["constraint"] else "") + f"; monotone: {f['monotone']}")
        print(f"  β = {', '.join(f'{p:.6g}' for p in m.params)}; domain = {m.domain[0]:.6g}..{m.domain[1]:.6g}")
        print(f"  stored in {path} (used by `lmmiqa tools run --normalized`; the agent uses it only when "
              f"asked: --tool-maps {path})" if path else "  not stored (--dry-run)")
        if not f["converged"] or f["monotone"] is None:
            print("  WARNING: the fit is unreliable (see above); consider more or more varied data",
                  file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- assets


def run_assets(args: argparse.Namespace) -> int:
    from lmmiqa.tools import assets

    rows = assets.describe_assets(args.assets)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if r["found"] is None:
                print(f"{r['file']:<24} MISSING")
                print(f"    problem: {r['problem']}")
                print(f"    fix:     {r['fix']}")
                continue
            status = "official" if r["official"] else "your own (not the official file)"
            print(f"{r['file']:<24} {status:<32} {r['license']:<11} {r['where']}: {r['found']}")
        if all(r["found"] for r in rows):
            print(f"licences: {assets.PACKAGE_DIR} (LICENSE-*); override with --assets DIR or ${assets.ENV_ASSETS}")
    return 0 if all(r["found"] for r in rows) else 1
