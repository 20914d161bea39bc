"""Evaluation pictures: MOS vs prediction scatter with the fitted curve and marginal histograms.

matplotlib is imported lazily (extra ``eval``) and drawn on an ``Agg`` canvas directly: no pyplot, so the
caller's interactive backend (e.g. in a notebook) is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.evaluation.logistic import FitResult

#: figure size in inches and resolution: the PNG is SIZE_IN * DPI pixels square
SIZE_IN = 6.0
DPI = 100


def scatter_plot(
    pred: Any,
    mos: Any,
    path: str | Path,
    *,
    fit: FitResult | None = None,
    title: str = "",
    xlabel: str = "prediction",
    ylabel: str = "MOS",
    note: str = "",
) -> Path:
    """Save a scatter of MOS against predictions, the fitted map, and marginal histograms as PNG.

    Args:
        pred, mos: predictions (already oriented) and opinion scores; non-finite pairs are left out.
        path: output PNG path.
        fit: a fitted map drawn as a curve over the prediction range.
        title, xlabel, ylabel: texts. note: a small line under the title (e.g. "SRCC 0.81 · PLCC 0.80").

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The image is ``SIZE_IN·DPI`` pixels square (600 × 600).
    """
    from lmmiqa.errors import require

    require("matplotlib", "eval", "evaluation plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(SIZE_IN, SIZE_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), left=0.12, right=0.97,
                            bottom=0.1, top=0.88, wspace=0.05, hspace=0.05)
    ax = fig.add_subplot(grid[1, 0])
    ax_top = fig.add_subplot(grid[0, 0], sharex=ax)
    ax_right = fig.add_subplot(grid[1, 1], sharey=ax)
    alpha = 0.6 if x.size < 2000 else 0.25
    ax.scatter(x, y, s=8, alpha=alpha, color="tab:blue", edgecolors="none")
    if fit is not None and x.size and np.ptp(x) > 0:
        xs = np.linspace(float(x.min()), float(x.max()), 200)
        label = fit.kind if fit.converged else f"{fit.kind} (fallback)"
        ax.plot(xs, fit.predict(xs), color="tab:red", lw=1.8, label=label)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    bins = max(5, min(40, int(np.sqrt(max(x.size, 1)))))
    if x.size:
        ax_top.hist(x, bins=bins, color="tab:blue", alpha=0.7)
        ax_right.hist(y, bins=bins, orientation="horizontal", color="tab:gray", alpha=0.7)
    ax_top.tick_params(labelbottom=False)
    ax_right.tick_params(labelleft=False)
    fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.5, 0.905, note, ha="center", fontsize=8)
    fig.savefig(out, dpi=DPI, format="png")
    return out
