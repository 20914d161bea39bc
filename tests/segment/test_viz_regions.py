"""render_regions: a smoke test of the LLM-IQA region picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.errors import ConfigError
from lmmiqa.segment.regions import area_weights, select_regions
from lmmiqa.types import ScoreResult
from lmmiqa.viz import render_regions

pytest.importorskip("matplotlib")


def _details(masks: np.ndarray) -> tuple[dict, np.ndarray]:
    regions, region_masks = select_regions(masks, 0.01)
    weights = area_weights([r.area for r in regions])
    det = {
        "global": 4.5,
        "local": 5.25,
        "lambda": 1.0,
        "regions": [
            {**r.to_dict(), "score": 4.0 + k, "weight": float(w)}
            for k, (r, w) in enumerate(zip(regions, weights))
        ],
    }
    return det, region_masks


def test_render_regions_writes_a_png_of_the_image_size(tmp_path) -> None:
    img = Image.fromarray(np.full((120, 200, 3), 128, np.uint8))
    m = np.zeros((1, 120, 200), bool)
    m[0, 20:80, 30:120] = True
    det, region_masks = _details(m)
    out = tmp_path / "regions.png"
    pic = render_regions(img, det, out, masks=region_masks, title="grey")
    assert pic.size == (200, 120) and pic.mode == "RGB"
    with Image.open(out) as saved:
        assert saved.format == "PNG" and saved.size == (200, 120)
    assert np.asarray(pic).std() > 0  # something was drawn over the flat image
    # boxes only, from a ScoreResult, at twice the size
    result = ScoreResult(image="x.png", score=4.875, method="llm-iqa", details=det)
    assert render_regions(img, result, scale=2.0).size == (400, 240)
    assert render_regions(img, result.to_dict()).size == (200, 120)


def test_render_regions_rejects_mismatched_masks() -> None:
    img = Image.new("RGB", (40, 30))
    det, region_masks = _details(np.zeros((0, 30, 40), bool))
    with pytest.raises(ConfigError):
        render_regions(img, det, masks=np.concatenate([region_masks, region_masks]))
