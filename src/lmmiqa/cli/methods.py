"""``lmmiqa methods``: the registered scoring methods (one line each, with aliases and presets), and with
``--presets`` each method's presets beside lmmiqa's defaults, with the source of every value."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "methods",
        help="list scoring methods (--presets: the papers' settings beside lmmiqa's defaults)",
        description="List the registered scoring methods with their aliases and presets. --presets shows, per "
        "method, every value of its presets (e.g. 'paper': the model and options its paper fixes) beside lmmiqa's "
        "default for the same option, with the source of each value ('lmmiqa decision: ...' where the paper is "
        "silent), including the presets of the commands that make the method's artifact (LEAF: distill "
        "teach/train/calibrate).",
    )
    p.add_argument("method", nargs="*", metavar="METHOD", help="only these methods (names or aliases)")
    p.add_argument("--presets", action="store_true", help="show the presets beside lmmiqa's defaults, with sources")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text, or json (without --presets: name -> summary; with --presets: the full entries)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa.methods.catalog import catalog

    entries = catalog(args.method or None)
    if args.format == "json":
        data: Any = entries if args.presets else {n: e["summary"] for n, e in entries.items()}
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif args.presets:
        print(presets_text(entries, selected=bool(args.method)), end="")
    else:
        print(list_text(entries), end="")
    return 0


def list_text(entries: dict[str, dict[str, Any]]) -> str:
    """One line per method: name, summary, then its presets and aliases."""
    width = max(len(n) for n in entries)
    lines = []
    for name, e in entries.items():
        extra = []
        if e["presets"]:
            extra.append("presets: " + ", ".join(e["presets"]))
        if e["aliases"]:
            extra.append("aliases: " + ", ".join(e["aliases"]))
        lines.append(f"{name:<{width}}  {e['summary']}" + (f"  [{'; '.join(extra)}]" if extra else ""))
    lines += ["", "`lmmiqa methods --presets [METHOD ...]` shows each preset beside lmmiqa's defaults, with the source "
              "of every value."]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "(unset)"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def _table(preset: dict[str, Any], title: str) -> list[str]:
    lines = [f"### {title}: preset `{preset['name']}`", "", preset["summary"] + ".", "",
             f"Reference: {preset['reference']}", "",
             "| option | lmmiqa default | " + preset["name"] + " | source |", "|---|---|---|---|"]
    for key, v in preset["values"].items():
        default = _cell(v["default"]) if v["has_default"] else "—"
        value = _cell(v["value"]) + (" *" if v["differs"] else "")
        lines.append(f"| {key} | {default} | {value} | {_cell(v['source'])} |")
    lines.append("")
    lines += [f"- {n}" for n in preset["notes"]]
    if preset["notes"]:
        lines.append("")
    return lines


def presets_text(entries: dict[str, dict[str, Any]], selected: bool = False) -> str:
    """Markdown: per method with presets, a table per preset (and per step preset); then the methods without a
    paper preset. ``selected``: the methods were named on the command line (each one gets a section)."""
    lines: list[str] = []
    without = [n for n, e in entries.items() if not e["has_paper_preset"]]
    for name, e in entries.items():
        if not e["presets"] and not e["stage_presets"] and not selected:
            continue
        lines += [f"## {name}", "", e["summary"] + ("" if not e["aliases"] else f" (aliases: {', '.join(e['aliases'])})"),
                  ""]
        if not e["has_paper_preset"]:
            lines += [f"{name} has no `paper` preset: lmmiqa's defaults are all it offers "
                      "(`lmmiqa reproduce` refuses it).", ""]
        for preset in e["presets"].values():
            lines += _table(preset, f"lmmiqa score --method {name}")
        for step, table in e["stage_presets"].items():
            for preset in table.values():
                lines += _table(preset, f"lmmiqa {step}")
    lines += ["`*`: the preset's value differs from lmmiqa's default. Explicit options override a preset's values "
              "(`--preset paper --model DIR`); results record the preset (`details.preset`)."]
    if without and not selected:
        lines += ["", "Without a `paper` preset (lmmiqa's defaults only): " + ", ".join(without) + "."]
    return "\n".join(lines) + "\n"
