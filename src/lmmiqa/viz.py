"""Pictures: LLM-IQA region overlays (scatter plots of predictions vs MOS come later, in this module too).

:func:`render_regions` draws what LLM-IQA (Dog-IQA, Liu et al. 2024) scored on an image, in the spirit of the
paper's figure: each region's bounding box (and its mask, translucent with an outline, when masks are given)
labelled with its score and area weight, and the global, local and final scores in a caption.

matplotlib is imported lazily and only through its object-oriented API with the Agg canvas (no pyplot, no
global backend switch), so this works headless and in threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, require

#: tab10 colours (RGB in [0, 1]) used for regions, in order
_PALETTE = (
    (0.122, 0.467, 0.706),
    (1.000, 0.498, 0.055),
    (0.173, 0.627, 0.173),
    (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294),
    (0.890, 0.467, 0.761),
    (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "—"


def _details_of(result: Any) -> tuple[dict[str, Any], Any]:
    """``(details, final score)`` from a ScoreResult, its ``to_dict()``, or a bare details mapping."""
    if hasattr(result, "details") and hasattr(result, "score"):
        return dict(result.details or {}), result.score
    if isinstance(result, Mapping):
        if "details" in result and isinstance(result["details"], Mapping):
            return dict(result["details"]), result.get("score")
        d = dict(result)
        return d, d.get("final", d.get("score"))
    raise ConfigError(f"render_regions needs a ScoreResult or a details mapping, got {type(result).__name__}")


def render_regions(
    image: Any,
    details: Any,
    out_path: str | os.PathLike[str] | None = None,
    *,
    masks: np.ndarray | Sequence[np.ndarray] | None = None,
    scale: float = 1.0,
    title: str | None = None,
) -> Any:
    """Draw LLM-IQA's regions, their scores and area weights over the image.

    Args:
        image: the RGB ``PIL.Image`` that was scored (a path or array is loaded with :mod:`lmmiqa.images`).
        details: a :class:`~lmmiqa.types.ScoreResult` of ``llm-iqa``, its ``to_dict()``, or its ``details``
            mapping. Used keys: ``regions`` (list of ``{"bbox": [x0, y0, x1, y1], "area", "score", "weight",
            "kind"}``), ``global``, ``local``, ``lambda``; the final score is the result's ``score`` (or
            ``details["final"]``). Missing scores are drawn as "—".
        out_path: also save the picture there (format from the extension, e.g. ``.png``).
        masks: optional ``bool [K, H, W]`` masks in the same order as ``details["regions"]``; drawn as a
            translucent fill with an outline. Without masks only the boxes are drawn.
        scale: the picture is ``round(W·scale) × round(H·scale)`` pixels (W×H = the image's size).
        title: optional first caption line (e.g. the file name).

    Returns:
        The picture as an RGB ``PIL.Image`` of exactly that size.
    """
    require("matplotlib", "eval", "region pictures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image

    from lmmiqa.images import load_input

    img = image if isinstance(image, Image.Image) else load_input(image)
    img = img.convert("RGB")
    det, final = _details_of(details)
    regions = list(det.get("regions") or [])
    if float(scale) <= 0:
        raise ConfigError(f"scale must be > 0, got {scale!r}")
    w, h = img.size
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    mask_stack = None
    if masks is not None:
        from lmmiqa.segment.regions import as_mask_stack

        mask_stack = as_mask_stack(masks, (h, w))
        if mask_stack.shape[0] != len(regions):
            raise ConfigError(f"{mask_stack.shape[0]} masks but {len(regions)} regions in details")

    dpi = 100.0
    fig = Figure(figsize=(out_w / dpi, out_h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.imshow(np.asarray(img), extent=(0, w, h, 0), interpolation="antialiased")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    # font size in points, proportional to the picture (readable from ~256 px upwards)
    base_pt = max(4.0, min(out_w, out_h) / 40.0 * 72.0 / dpi)
    line_w = max(0.8, min(out_w, out_h) / 300.0)

    for k, region in enumerate(regions):
        colour = _PALETTE[k % len(_PALETTE)]
        if mask_stack is not None:
            m = mask_stack[k]
            overlay = np.zeros((h, w, 4), dtype=np.float32)
            overlay[m] = (*colour, 0.35)
            ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
            if m.any() and not m.all():
                ax.contour(
                    np.arange(w) + 0.5,
                    np.arange(h) + 0.5,
                    m.astype(np.float32),
                    levels=[0.5],
                    colors=[colour],
                    linewidths=line_w,
                )
        bbox = region.get("bbox") if isinstance(region, Mapping) else getattr(region, "bbox", None)
        if bbox is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in bbox)
        ax.add_patch(
            Rectangle(
                (x0, y0),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=colour,
                linewidth=line_w * 1.5,
                linestyle="--"
                if (isinstance(region, Mapping) and region.get("kind") == "complement")
                else "-",
            )
        )
        get = region.get if isinstance(region, Mapping) else lambda key, _r=region: getattr(_r, key, None)
        label = f"#{k + 1} s={_fmt(get('score'))} w={_fmt(get('weight'))}"
        right = x0 > 0.7 * w  # keep labels of boxes near the right border inside the picture
        ax.text(
            (x1 - 2) if right else (x0 + 2),
            y0 + 2,
            label,
            fontsize=base_pt,
            color="white",
            va="top",
            ha="right" if right else "left",
            bbox={"facecolor": colour, "alpha": 0.8, "pad": 1.5, "edgecolor": "none"},
        )

    lam = det.get("lambda")
    caption = f"global {_fmt(det.get('global'))} · local {_fmt(det.get('local'))} · final {_fmt(final)}" + (
        f" (λ={_fmt(lam, 2)})" if lam is not None else ""
    )
    if title:
        caption = f"{title}\n{caption}"
    ax.text(
        0.5,
        0.01,
        caption,
        transform=ax.transAxes,
        fontsize=base_pt * 1.1,
        color="white",
        ha="center",
        va="bottom",
        bbox={"facecolor": "black", "alpha": 0.65, "pad": 3, "edgecolor": "none"},
    )
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    picture = Image.fromarray(rgba[..., :3].copy(), "RGB")
    if picture.size != (out_w, out_h):  # guard against rounding of the figure size in inches
        picture = picture.resize((out_w, out_h), Image.BILINEAR)
    if out_path is not None:
        picture.save(os.fspath(out_path))
    return picture
