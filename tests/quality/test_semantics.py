"""Fast tests of the semantic-check helpers of issue 22 §3 (lmmiqa.evaluation.semantics)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.data.synth import distort
from lmmiqa.errors import ConfigError
from lmmiqa.evaluation.semantics import (
    bank_word_agreement,
    half_check,
    half_degraded,
    half_masks,
    pair_order_consistency,
    reference_split,
    region_halves,
    severity_correlation,
)
from lmmiqa.segment.regions import crop_regions, expand_box, select_regions


def _photo(w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_reference_split_is_disjoint_deterministic_and_stable() -> None:
    refs = [f"ref{i}" for i in range(8)]
    train, test = reference_split(refs * 3, held_out=2, seed=1)
    assert len(test) == 2 and len(train) == 6 and not set(train) & set(test)
    assert reference_split(refs, 2, seed=1) == (train, test)
    assert reference_split(refs, 2, seed=2) != (train, test) or reference_split(refs, 2, seed=3) != (train, test)
    # adding a reference never moves an existing one from test to train unless it takes its place
    _, test9 = reference_split([*refs, "ref8"], 3, seed=1)
    assert set(test) <= set(test9)
    with pytest.raises(ConfigError, match="held_out"):
        reference_split(refs, 8)


def test_severity_correlation_sign() -> None:
    sev = [1, 2, 3, 4, 5]
    good = severity_correlation([5.0, 4.1, 3.2, 2.0, 1.5], sev)
    assert good["srcc"] == pytest.approx(1.0) and good["plcc"] > 0.95
    assert severity_correlation([1, 2, 3, 4, 5], sev)["srcc"] == pytest.approx(-1.0)
    assert severity_correlation([1, 2, 3, 4, 5], sev, higher_is_better=False)["srcc"] == pytest.approx(1.0)


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_half_degraded_touches_only_its_half(side: str) -> None:
    img = _photo()
    hd = half_degraded(img, lambda a: distort(a, "gaussian_noise", 5, seed=0), side)
    a, b = np.asarray(img).astype(int), np.asarray(hd.image).astype(int)
    x0, y0, x1, y1 = hd.degraded_box
    px0, py0, px1, py1 = hd.pristine_box
    assert np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() > 5
    assert np.array_equal(a[py0:py1, px0:px1], b[py0:py1, px0:px1])
    assert hd.degraded_box != hd.pristine_box


def test_half_masks_regions_through_llm_iqa_crop_layout_land_in_one_half() -> None:
    """The crops LLM-IQA would score (select_regions -> expand_box -> crop_regions) each lie in one half."""
    img = _photo(96, 64)
    hd = half_degraded(img, lambda a: 255 - a, "left")
    masks = half_masks(96, 64, blocks=2)
    regions, _ = select_regions(masks, 0.01)
    assert [r.kind for r in regions] == ["mask"] * 4  # tiles cover the image: no complement
    boxes = [expand_box(r.bbox, 32, 96, 64) for r in regions]
    crops = crop_regions(hd.image, [{"bbox": b} for b in boxes])
    scored = [{"crop": list(b), "score": float(np.asarray(c).mean())} for b, c in zip(boxes, crops)]
    halves = region_halves(scored, hd.degraded_box, hd.pristine_box)
    assert len(halves["degraded"]) == 2 and len(halves["pristine"]) == 2 and not halves["mixed"]
    # the crops really show their half: inverted pixels only in the degraded ones
    inv = 255 - np.asarray(img).astype(float)
    x0, y0, x1, y1 = boxes[0]
    assert np.allclose(np.asarray(crops[0]).astype(float), inv[y0:y1, x0:x1])


def test_half_check_pass_and_fail() -> None:
    deg, pri = (0, 0, 32, 48), (32, 0, 64, 48)
    regions = [{"crop": [0, 0, 32, 24], "score": 2.0}, {"crop": [0, 24, 32, 48], "score": 2.2},
               {"crop": [32, 0, 64, 24], "score": 4.0}, {"crop": [32, 24, 64, 48], "score": 4.1}]
    ok = half_check({"regions": regions, "global": 3.0}, 3.1, deg, pri)
    assert ok["passed"] and ok["degraded"] == pytest.approx(2.1) and ok["pristine"] == pytest.approx(4.05)
    assert not half_check({"regions": regions}, 4.5, deg, pri)["passed"]  # mixed score outside
    assert not half_check({"regions": regions}, 3.0, pri, deg)["passed"]  # halves swapped: wrong way round
    straddle = [{"crop": [16, 0, 48, 48], "score": 3.0}]
    assert half_check({"regions": straddle}, 3.0, deg, pri)["straddling"] == 1


def test_bank_word_agreement_matches_iqarag_bins_and_catches_wrong_words() -> None:
    from lmmiqa.methods.iqarag import level_word
    from lmmiqa.retrieval.select import mos_bins

    mos = np.array([1.0, 1.9, 2.5, 3.3, 4.2, 5.0])
    bins = mos_bins((mos - 1) / 4)
    right = [level_word(int(b)) for b in bins]
    assert bank_word_agreement(mos, right, (1, 5)) == 1.0
    reversed_words = [level_word(6 - int(b)) for b in bins]
    assert bank_word_agreement(mos, reversed_words, (1, 5)) < 0.5
    with pytest.raises(ConfigError, match="mos_range"):
        bank_word_agreement(mos, right, (5, 1))


def test_pair_order_consistency_detects_flipped_prompt_and_position_bias() -> None:
    points = [1.0, 2.0, 3.0, 4.0]
    pairs = [(i, j) for i in range(4) for j in range(4) if i < j] + [(3, 0)]
    right = [0.9 if points[i] > points[j] else 0.1 for i, j in pairs]  # P(i better), either order
    good = pair_order_consistency(points, pairs, right, right)
    assert good["agree"] == 1.0 and good["order_consistent"] == 1.0 and good["pairs"] == 7
    # a prompt whose answer letters are read the wrong way round flips every answer
    flipped = pair_order_consistency(points, pairs, [1 - p for p in right], [1 - p for p in right])
    assert flipped["agree"] == 0.0 and flipped["order_consistent"] == 1.0
    # a position-biased model (always picks the image shown first): P(i better) is high with i first, low with
    # j first -> the orders disagree on every pair
    biased = pair_order_consistency(points, pairs, [0.8] * 7, [0.2] * 7)
    assert biased["order_consistent"] == 0.0 and biased["agree"] == 0.0
    # ties are skipped
    assert pair_order_consistency([1.0, 1.0, 2.0], [(0, 1), (0, 2)], [0.9, 0.1], [0.9, 0.1])["pairs"] == 1
