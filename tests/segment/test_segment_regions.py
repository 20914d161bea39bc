"""Algorithm 1 of LLM-IQA (Dog-IQA, Liu et al. 2024) and its aggregation on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.errors import ConfigError
from lmmiqa.segment.regions import (
    area_weighted_mean,
    area_weights,
    as_mask_stack,
    crop_regions,
    expand_box,
    mask_bbox,
    masks_to_boxes,
    mix_scores,
    select_regions,
)
from lmmiqa.types import Region

H, W = 10, 20  # 200 pixels; t = 0.05 -> 10 pixels


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_bbox_is_exclusive_and_none_for_empty() -> None:
    assert mask_bbox(rect(3, 2, 7, 5)) == (3, 2, 7, 5)
    assert mask_bbox(np.zeros((H, W), bool)) is None
    m = np.zeros((H, W), bool)
    m[0, 0] = m[9, 19] = True
    assert mask_bbox(m) == (0, 0, 20, 10)
    boxes = masks_to_boxes(np.stack([rect(3, 2, 7, 5), np.zeros((H, W), bool), m]))
    assert boxes.tolist() == [[3, 2, 7, 5], [0, 0, 0, 0], [0, 0, 20, 10]]


def test_threshold_keeps_masks_at_least_t_and_adds_complement() -> None:
    big = rect(0, 0, 10, 10)  # 100 px
    edge = rect(10, 0, 15, 2)  # exactly 10 px = t -> kept (>=)
    small = rect(15, 0, 18, 3)  # 9 px -> dropped
    regions, masks = select_regions([big, edge, small], min_area=0.05)
    assert [r.kind for r in regions] == ["mask", "mask", "complement"]
    assert [r.area for r in regions] == [100, 10, 90]
    assert regions[0].bbox == (0, 0, 10, 10)
    assert regions[1].bbox == (10, 0, 15, 2)
    # complement = everything not covered by the kept masks (the dropped small mask's pixels included)
    assert regions[2].bbox == (10, 0, 20, 10)
    assert masks.shape == (3, H, W) and masks.dtype == bool
    assert np.array_equal(masks[2], ~(big | edge))
    assert masks[2][0:3, 15:18].all()


def test_small_complement_is_dropped() -> None:
    almost_all = np.ones((H, W), bool)
    almost_all[0, :5] = False  # complement of 5 px < 10 px
    regions, masks = select_regions([almost_all], min_area=0.05)
    assert [r.kind for r in regions] == ["mask"]
    assert masks.shape == (1, H, W)


def test_overlapping_masks_count_pixels_for_each_and_complement_uses_union() -> None:
    a = rect(0, 0, 10, 10)  # 100
    b = rect(5, 0, 15, 10)  # 100, overlaps a by 50
    regions, masks = select_regions(np.stack([a, b]), min_area=0.0)
    assert [r.area for r in regions] == [100, 100, 50]
    assert regions[2].bbox == (15, 0, 20, 10)
    assert np.array_equal(masks[2], ~(a | b))


def test_no_masks_gives_whole_image_as_the_only_region() -> None:
    regions, masks = select_regions([], shape=(H, W))
    assert regions == [Region(bbox=(0, 0, W, H), area=H * W, kind="complement")]
    assert masks.shape == (1, H, W) and masks.all()
    # empty masks are never regions, even with t = 0
    regions, _ = select_regions(np.zeros((3, H, W), bool), min_area=0.0)
    assert [r.kind for r in regions] == ["complement"]
    # all masks below the threshold -> same as no masks
    regions, _ = select_regions([rect(0, 0, 2, 2)], min_area=0.05)
    assert [(r.kind, r.area) for r in regions] == [("complement", 200)]


def test_all_covering_masks_give_no_complement() -> None:
    left, right = rect(0, 0, 10, 10), rect(10, 0, 20, 10)
    regions, masks = select_regions([left, right], min_area=0.01)
    assert [r.kind for r in regions] == ["mask", "mask"]
    assert masks.shape == (2, H, W)
    regions, _ = select_regions([np.ones((H, W), bool)], min_area=0.0)
    assert [r.kind for r in regions] == ["mask"]  # empty complement is never a region, even with t = 0


def test_invalid_inputs_raise_config_errors() -> None:
    with pytest.raises(ConfigError):
        select_regions([], min_area=0.01)  # no shape
    with pytest.raises(ConfigError):
        select_regions([rect(0, 0, 2, 2)], min_area=1.5)
    with pytest.raises(ConfigError):
        select_regions([np.zeros((3, 3)), np.zeros((4, 4))])
    with pytest.raises(ConfigError):
        as_mask_stack(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ConfigError):
        as_mask_stack(np.zeros((1, 3, 4)), shape=(4, 3))
    assert as_mask_stack(np.array([[0, 2], [1, 0]])).tolist() == [[[False, True], [True, False]]]


def test_crops_use_the_bounding_box_of_original_pixels() -> None:
    arr = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    image = Image.fromarray(arr)
    ring = np.zeros((H, W), bool)  # an L-shaped mask: its box includes pixels outside the mask
    ring[2:8, 4] = True
    ring[7, 4:12] = True
    regions, _ = select_regions([ring], min_area=0.0)
    crops = crop_regions(image, regions)
    assert regions[0].bbox == (4, 2, 12, 8)
    assert crops[0].size == (8, 6)
    # original pixels everywhere in the box, including those the mask does not cover (no masking/padding)
    assert np.array_equal(np.asarray(crops[0]), arr[2:8, 4:12])
    # the complement's crop is its bounding box of the original image too
    assert np.array_equal(
        np.asarray(crops[1]),
        arr[regions[1].bbox[1] : regions[1].bbox[3], regions[1].bbox[0] : regions[1].bbox[2]],
    )
    # dict regions (from details) work the same way
    assert np.array_equal(np.asarray(crop_regions(image, [{"bbox": [4, 2, 12, 8]}])[0]), arr[2:8, 4:12])
    with pytest.raises(ConfigError):
        crop_regions(image, [Region(bbox=(0, 0, 0, 5), area=1)])
    with pytest.raises(ConfigError):
        crop_regions(image, [Region(bbox=(0, 0, W + 1, 5), area=1)])


def test_area_weighted_mean_by_hand() -> None:
    # (2*100 + 5*50 + 7*50) / 200 = (200 + 250 + 350) / 200 = 4.0
    assert area_weighted_mean([2.0, 5.0, 7.0], [100, 50, 50]) == pytest.approx(4.0)
    # differs from the plain mean (14/3)
    assert area_weighted_mean([2.0, 5.0, 7.0], [100, 50, 50]) != pytest.approx(14 / 3)
    assert area_weighted_mean([3.5], [1]) == pytest.approx(3.5)
    assert area_weights([1, 3]).tolist() == [0.25, 0.75]
    assert area_weighted_mean([], []) is None
    with pytest.raises(ConfigError):
        area_weighted_mean([1.0, 2.0], [1])
    with pytest.raises(ConfigError):
        area_weighted_mean([1.0], [0])
    with pytest.raises(ConfigError):
        area_weighted_mean([1.0, 2.0], [-1, 3])
    with pytest.raises(ConfigError):
        area_weighted_mean([float("nan")], [1])


def test_mix_scores_by_hand_and_edge_cases() -> None:
    assert mix_scores(4.0, 6.0, 1.0) == pytest.approx(5.0)
    assert mix_scores(4.0, 6.0, 3.0) == pytest.approx((4 + 18) / 4)
    assert mix_scores(4.0, 6.0, 0.0) == pytest.approx(4.0)
    assert mix_scores(4.0, None, 1.0) == pytest.approx(4.0)  # no regions -> the global score
    # stays within the level range when both inputs do
    assert 1.0 <= mix_scores(1.0, 7.0, 2.5) <= 7.0
    with pytest.raises(ConfigError):
        mix_scores(4.0, 5.0, -1.0)
    with pytest.raises(ConfigError):
        mix_scores(float("inf"), 5.0, 1.0)


def test_expand_box_grows_thin_boxes_around_their_centre_within_the_image() -> None:
    assert expand_box((4, 2, 12, 8), 4, W, H) == (4, 2, 12, 8)  # large enough: unchanged
    assert expand_box((9, 4, 11, 5), 6, W, H) == (7, 2, 13, 8)  # 2×1 -> 6×6 centred
    assert expand_box((0, 0, 2, 1), 6, W, H) == (0, 0, 6, 6)  # pushed inside at the top-left corner
    assert expand_box((19, 9, 20, 10), 6, W, H) == (14, 4, 20, 10)  # and at the bottom-right corner
    assert expand_box((5, 5, 6, 6), 50, W, H) == (0, 0, W, H)  # limited by the image
    assert expand_box((5, 5, 6, 6), 0, W, H) == (5, 5, 6, 6)
    with pytest.raises(ConfigError):
        expand_box((5, 5, 5, 6), 4, W, H)
    with pytest.raises(ConfigError):
        expand_box((0, 0, 2, 2), -1, W, H)
