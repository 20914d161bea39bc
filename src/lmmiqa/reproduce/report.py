"""The result of ``lmmiqa reproduce``: :class:`ReproduceReport` (JSON-safe), its Markdown table and the comparison
plot (published values beside the measured ones with their 95 % intervals)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lmmiqa.types import json_safe

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
COMPARISON_PNG = "comparison.png"
#: bump when the meaning of a field changes
SCHEMA = 1


@dataclass(frozen=True)
class ReproduceReport:
    """A paper's table beside lmmiqa's measurement.

    Attributes:
        method: the method. preset: the preset used (``"paper"``), or None for lmmiqa's defaults.
        preset_summary: what the preset reproduces. model: the model(s) scored.
        rows: one entry per published row: ``published`` (the row), ``status`` (``compared``, ``not run``: a
            dataset was not given, ``not runnable``: lmmiqa cannot run that setting) and, when compared,
            ``srcc``/``plcc`` (or ``mean``) as ``{"published", "measured", "ci", "diff", "within"}``.
        datasets: per ``dataset/protocol``, the measurement: median SRCC/PLCC over splits with intervals, each
            split's numbers and run folder.
        n_boot, seed: bootstrap settings. limit: the per-split ``--limit`` (partial), or None.
        run_dir, versions, created: where, with what, when.
    """

    method: str
    preset: str | None
    model: Any
    rows: tuple[dict[str, Any], ...]
    datasets: dict[str, dict[str, Any]]
    n_boot: int
    seed: int
    limit: int | None = None
    run_dir: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    preset_summary: str | None = None
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["datasets"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                           for k, v in self.datasets.items()}
        return json_safe(out)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReproduceReport:
        """Read ``report.json`` (or the one inside a run folder)."""
        p = Path(path)
        if p.is_dir():
            p = p / REPORT_JSON
        data = json.loads(p.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw["rows"] = tuple(kw.get("rows") or ())
        return cls(**kw)

    # ------------------------------------------------------------------------------------------ markdown
    def to_markdown(self) -> str:
        """The paper's table beside the measured one, the rows not run, each dataset's splits, and notes."""
        preset = (f"`{self.preset}` — {self.preset_summary} (its values: `lmmiqa methods {self.method} --presets`)"
                  if self.preset else "none: lmmiqa's defaults (`--preset default`), not the paper's settings")
        model = ", ".join(self.model) if isinstance(self.model, list) else (self.model or "-")
        lines = [f"# Reproducing {self.method}", "", f"- preset: {preset}", f"- model: {model}",
                 f"- run folder: {self.run_dir or '-'}"]
        if self.limit is not None:
            lines.append(f"- **partial**: only the first {self.limit} images of each split were scored (`--limit`); "
                         "these numbers are not the paper's protocol")
        if any(d.get("synthetic_standin") for d in self.datasets.values()):
            names = ", ".join(dict.fromkeys(d["dataset"] for d in self.datasets.values() if d.get("synthetic_standin")))
            lines.append(f"- **synthetic stand-in**: the folder given for {names} is an `lmmiqa synth` ladder "
                         "(pseudo-MOS from distortion severity), not the dataset: the comparison only exercises the "
                         "protocol")
        lines += ["", "## Published vs measured", "",
                  "| dataset | setting | protocol | published SRCC | measured SRCC [95 % CI] | Δ | in CI | "
                  "published PLCC | measured PLCC [95 % CI] | Δ | in CI | PLCC 4PL | n |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        skipped = []
        for row in self.rows:
            pub = row["published"]
            name = ", ".join(pub["datasets"])
            if row["status"] != "compared":
                skipped.append(f"- {name} ({pub['setting']}; published "
                               + (f"SRCC {pub['srcc']:.4g} / PLCC {pub['plcc']:.4g}" if pub.get("mean") is None
                                  else f"mean (SRCC+PLCC)/2 {pub['mean']:.4g}")
                               + f"): {row['status']}: {row['reason']}")
                continue
            proto = pub["protocol"]["text"]
            if "mean" in row:
                m = row["mean"]
                lines.append(f"| mean (SRCC+PLCC)/2 over {name} | {pub['setting']} | {proto} | {_f(m['published'])} | "
                             f"{_f(m['measured'])} {_ci(m['ci'])} | {_d(m['diff'])} | {_yes(m['within'])} | | | | | | "
                             f"{row['n']} |")
                continue
            s, p = row["srcc"], row["plcc"]
            lines.append(
                f"| {name} | {pub['setting']} | {proto} | {_f(s['published'])} | {_f(s['measured'])} {_ci(s['ci'])} | "
                f"{_d(s['diff'])} | {_yes(s['within'])} | {_f(p['published'])} | {_f(p['measured'])} "
                f"{_ci(p['ci'])} | {_d(p['diff'])} | {_yes(p['within'])} | {_f(row['plcc_4pl'])} | {row['n']} |")
        if skipped:
            lines += ["", "Not compared:", "", *skipped]
        lines += ["", "## Datasets and splits", "",
                  "| dataset | protocol (source) | split | n | failed | SRCC | PLCC | PLCC 4PL | run folder |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in self.datasets.values():
            for sp in d["splits"]:
                lines.append(f"| {d['dataset']} | {d['protocol']['text']} ({d['protocol']['source']}) | {sp['split']} | "
                             f"{sp['n']} | {sp['n_failed']} | {_f(sp['srcc'])} | {_f(sp['plcc'])} | "
                             f"{_f(sp['plcc_4pl'])} | {sp['run_dir']} |")
        lines += [
            "", f"![published vs measured]({COMPARISON_PNG})", "",
            "## How to read this", "",
            f"- Intervals: {self.n_boot} bootstrap resamples (seed {self.seed}) over images, or over reference images "
            "for synthetic sets; for a median over splits, the interval of the median of the splits' replicates; "
            "for an average over datasets, of the average of theirs. `in CI`: the published value lies in the "
            "measured 95 % interval.",
            "- PLCC is compared raw (no fit): papers rarely say whether theirs is fitted; the PLCC after the "
            "4-parameter logistic fit is shown beside it (METHODS §7).",
            "- Each split's scatter plot and full report are in its run folder (`lmmiqa eval` underneath: running the "
            "same command again resumes).",
        ]
        notes = [n for row in self.rows for n in row["published"].get("notes", [])]
        lines += [f"- {n}" for n in dict.fromkeys(notes)]
        sources: dict[str, list[str]] = {}
        for row in self.rows:
            src = row["published"]
            sources.setdefault(src["source"], []).append(", ".join(src["datasets"]))
        lines += [f"- Published numbers of {'; '.join(dict.fromkeys(names))}: {source}." for source, names in sources.items()]
        lines += ["", f"_created {self.created}; lmmiqa {self.versions.get('lmmiqa', '?')}_", ""]
        return "\n".join(lines)


def write_report(rundir: str | os.PathLike[str], report: ReproduceReport, plot: bool = True) -> None:
    """Write ``report.json``, ``report.md`` and (with ``plot``) ``comparison.png`` into ``rundir``."""
    import logging

    from lmmiqa.errors import LmmiqaError

    d = Path(rundir)
    d.mkdir(parents=True, exist_ok=True)
    (d / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (d / REPORT_MD).write_text(report.to_markdown(), encoding="utf-8")
    if plot:
        try:
            comparison_plot(report, d / COMPARISON_PNG)
        except LmmiqaError as err:  # matplotlib missing: the numbers are written
            logging.getLogger(__name__).warning("could not draw %s: %s", COMPARISON_PNG, err)


def comparison_plot(report: ReproduceReport, path: str | os.PathLike[str]) -> Path:
    """Published (crosses) and measured values with 95 % intervals (dots and bars): SRCC and PLCC per compared row,
    and the average rows."""
    import numpy as np

    from lmmiqa.errors import require

    require("matplotlib", "eval", "reproduce plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    compared = [r for r in report.rows if r["status"] == "compared"]
    panels = [("SRCC", "srcc"), ("PLCC (raw)", "plcc"), ("(SRCC+PLCC)/2", "mean")]
    panels = [(t, k) for t, k in panels if any(k in r for r in compared)] or [("SRCC", "srcc")]
    fig = Figure(figsize=(4.0 * len(panels), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, key) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        rows = [r for r in compared if key in r]
        labels = [", ".join(r["published"]["datasets"]) if key != "mean" else "mean" for r in rows]
        x = np.arange(len(rows))
        meas = np.array([r[key]["measured"] for r in rows], dtype=float)
        lo = np.array([r[key]["ci"][0] for r in rows], dtype=float)
        hi = np.array([r[key]["ci"][1] for r in rows], dtype=float)
        pub = np.array([r[key]["published"] for r in rows], dtype=float)
        err = np.vstack([np.where(np.isfinite(lo), meas - lo, 0), np.where(np.isfinite(hi), hi - meas, 0)])
        if rows:
            ax.errorbar(x, meas, yerr=np.clip(err, 0, None), fmt="o", color="tab:blue", capsize=4, label="measured (95 % CI)")
            ax.scatter(x, pub, marker="x", s=60, color="tab:red", zorder=3, label="published")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(min(0.0, float(np.nanmin(np.r_[meas, pub, lo, 0.0]))) - 0.05, 1.02)
        ax.grid(True, axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{report.method}: published vs measured" + (f" (preset {report.preset})" if report.preset
                                                             else " (lmmiqa defaults)"), fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.{nd}f}"


def _d(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):+.4f}"


def _ci(pair: Any) -> str:
    if not pair or any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in pair):
        return "[n/a]"
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _yes(v: Any) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


__all__ = ["COMPARISON_PNG", "REPORT_JSON", "REPORT_MD", "ReproduceReport", "comparison_plot", "write_report"]
