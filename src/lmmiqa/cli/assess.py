"""``lmmiqa assess``: agentic assessment (AgenticIQA, METHODS §5) — a score with an explanation.

Examples::

    lmmiqa assess photo.jpg --model Qwen/Qwen3-VL-8B-Instruct
    lmmiqa assess out.png --ref in.png --query "Is the sky banded after compression?" --format json

With ``--ref`` the assessment is full-reference (one image and its reference, the same size); without it,
several images (files, folders, ``@lists``) are assessed together in batches. ``--format text`` prints each
score with the explanation and the evidence behind it; ``--format json`` prints ``ScoreResult.to_dict()`` (an
object for one image, an array for several).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any, TextIO

from lmmiqa.cli._method_args import add_method_args, method_options, scorer_from_args
from lmmiqa.cli.score import error_text

DEFAULT_METHOD = "agentic-iqa"
FORMATS = ("text", "json")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "assess",
        help="agentic assessment: score, explanation and tool evidence (AgenticIQA)",
        description="Assess images with the AgenticIQA agent: a VLM plans, detects and analyses distortions, runs "
        "classical IQA tools (full-reference ones with --ref) and fuses its judgement with their scores. Prints "
        "the score in [1, 5] and an explanation. Exit status: 0 when at least one image was assessed, 1 when none "
        "was, 2 for usage errors.",
    )
    p.add_argument("inputs", nargs="+", help="image file(s), folders or @list files (exactly one image with --ref)")
    p.add_argument("--ref", default=None, help="reference (undistorted) image: full-reference assessment")
    p.add_argument("--query", default=None, help='free-text question that steers the plan, e.g. "Is the sky banded?"')
    p.add_argument("--format", choices=FORMATS, default="text", help="stdout format (default: text)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr: images done and the agent stage running (planner, distortion "
                   "detection, ..., summarizer); default: when stderr is a terminal")
    p.add_argument("--tools", default=None, dest="opt_tools", metavar="NAMES",
                   help="comma-separated tool allow-list (default: every built-in tool; see `lmmiqa tools list`)")
    add_method_args(p, default_method=DEFAULT_METHOD)
    p.set_defaults(func=run)


def _fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "n/a"
    return format(x, spec)


def score_level_name(score: Any, level_words: dict[str, str]) -> str | None:
    """The name printed after a score: the level nearest to the score, half-way rounding up — the same rule
    (:func:`lmmiqa.methods.agentic.fusion.nearest_level`) as the agent's ``details.level_name`` and its
    templated explanation. None when the method names no levels."""
    from lmmiqa.methods.agentic.fusion import level_name

    try:
        values = [float(k) for k in level_words]
    except (TypeError, ValueError):
        return None
    if score is None or len(values) < 2:
        return None
    return level_name(float(score), values, list(level_words.values()))


def format_text(d: dict[str, Any], stream: TextIO) -> None:
    """A readable rendering of one result: score, explanation, then the evidence and bookkeeping. A failed item
    writes nothing here: its error goes to stderr once (see :func:`run`)."""
    if d.get("error"):
        return
    det = d.get("details") or {}
    scale = d.get("scale") or [1, 5]
    word = score_level_name(d.get("score"), det.get("level_words") or {})
    stream.write(f"{d['image']}: {d['score']:.2f} / {scale[1]:g}" + (f" ({word})" if word else "") + "\n")
    if "explanation" not in det:  # a method without explanations
        return
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="  ")
    stream.write(f"  explanation ({det.get('explanation_source', '?')}):\n")
    stream.write(wrap.fill(str(det.get("explanation") or "")) + "\n")
    if det.get("query_given"):
        stream.write(f"  query: {det.get('query')}\n")
    dist = det.get("distortions") or {}
    found = "; ".join(f"{o}: {', '.join(ds)}" for o, ds in dist.items() if ds) or "none"
    stream.write(f"  distortions ({(det.get('sources') or {}).get('distortions', 'n/a')}): {found}\n")
    for e in det.get("analysis") or []:
        stream.write(f"    - {e['type']} on {e['object']}: {e.get('severity') or 'not measured'} ({e['source']})\n")
    tools = det.get("tools") or {}
    if tools:
        stream.write(f"  tools ({det.get('mode', '')}):\n")
        for name, t in tools.items():
            if t.get("error"):
                stream.write(f"    - {name}: error: {t['error']}\n")
            else:
                stream.write(f"    - {name}: {_fmt(t.get('normalized'))} / 5 (raw {_fmt(t.get('raw'), '.4g')})\n")
    fusion = det.get("fusion") or {}
    stream.write(
        f"  fusion: q_bar {_fmt(fusion.get('q_bar'))}, eta {_fmt(fusion.get('eta'), 'g')}, "
        f"p from {fusion.get('p_source', 'n/a')}\n"
    )
    plan = det.get("plan") or {}
    flags = ", ".join(k for k, v in (plan.get("plan") or {}).items() if v) or "nothing"
    stream.write(
        f"  plan ({plan.get('source', 'n/a')}): {flags}; replans {det.get('replans', 0)}, parse failures "
        f"{det.get('parse_failures', 0)}, backend calls {det.get('backend_calls', 0)}\n"
    )


def run(args: argparse.Namespace) -> int:
    from lmmiqa import registry
    from lmmiqa.cli import UsageError
    from lmmiqa.images import expand_inputs

    cls = registry.resolve("method", args.method)
    has_assess = callable(getattr(cls, "assess", None))
    if (args.ref is not None or args.query is not None) and not has_assess:
        raise UsageError(f"--ref and --query need an agentic method (agentic-iqa), not {args.method!r}")
    inputs = expand_inputs(args.inputs)
    if args.ref is not None and len(inputs) != 1:
        raise UsageError(f"--ref takes exactly one input image, got {len(inputs)}")
    if not inputs:
        print("lmmiqa assess: no input images found", file=sys.stderr)
        return 1
    if args.query is not None and args.ref is None:
        args.option = [*(args.option or []), ("query", args.query)]
    scorer = scorer_from_args(args)
    bar = _progress_bar(len(inputs), args.progress)
    if bar is not None and hasattr(scorer, "on_stage"):
        scorer.on_stage = lambda stage, round_: bar.set_postfix_str(
            stage + (f" (replan {round_})" if round_ else ""), refresh=True)
    results = []
    try:
        if args.ref is not None:
            results = [scorer.assess(inputs[0], ref=args.ref, query=args.query)]
            if bar is not None:
                bar.update(1)
        else:
            batches = scorer.iter_score(inputs, batch_size=method_options(args).get("batch_size"), progress=False)
            for batch in batches:
                results.extend(batch)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.set_postfix_str("done" if len(results) == len(inputs) else "stopped")
            bar.close()
    dicts = [r.to_dict() for r in results]
    if args.format == "json":
        json.dump(dicts[0] if len(dicts) == 1 else dicts, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for d in dicts:
            format_text(d, sys.stdout)
    for d in dicts:
        if d["error"]:
            print(f"lmmiqa assess: {d['image']}: {error_text(d)}", file=sys.stderr)
    return 0 if any(d["error"] is None for d in dicts) else 1


def _progress_bar(total: int, enabled: bool | None) -> Any:
    """A bar over the images on stderr (an assessment takes minutes per batch on a CPU), or None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="assess", unit="img", file=sys.stderr, dynamic_ncols=True)
