"""Pure pieces of the SAM 2 automatic mask generator (no torchvision): grid, stability, NMS, crops."""

from __future__ import annotations

import numpy as np
import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.segment import amg


def test_point_grid_cell_centres() -> None:
    g = amg.point_grid(2)
    assert g.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    assert amg.point_grid(1).tolist() == [[0.5, 0.5]]
    assert amg.point_grid(16).shape == (256, 2)
    with pytest.raises(ConfigError):
        amg.point_grid(0)


def test_stability_score_by_hand() -> None:
    logits = np.array(
        [
            [[5.0, 5.0], [0.5, -5.0]],  # > 1: 2 px; > -1: 3 px -> 2/3
            [[5.0, 5.0], [5.0, 5.0]],  # stable: 4/4
            [[-5.0, -5.0], [-5.0, -5.0]],  # empty at both thresholds -> 0
        ]
    )
    s = amg.stability_score(logits, mask_threshold=0.0, offset=1.0)
    assert s.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    # a shifted threshold: > 1.5 (2 px) vs > -0.5 (3 px)
    assert amg.stability_score(logits[:1], mask_threshold=0.5, offset=1.0).tolist() == pytest.approx([2 / 3])
    # leading batch dims are kept
    assert amg.stability_score(logits.reshape(3, 1, 2, 2)).shape == (3, 1)


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 8]])
    iou = amg.box_iou(a, b)
    assert iou.shape == (1, 4)
    assert iou[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0, 0.0])


def test_box_nms_greedy_by_score() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],  # score .9
            [1, 0, 11, 10],  # IoU with #0 = 90/110 = .818 -> suppressed at .7
            [5, 0, 15, 10],  # IoU with #0 = .333 -> kept
            [50, 50, 60, 60],  # disjoint
        ]
    )
    scores = np.array([0.9, 0.95, 0.8, 0.1])
    # #1 has the top score, so it suppresses #0 (IoU .818); #2 vs #1: 60/140 = .43 -> kept
    assert amg.box_nms(boxes, scores, 0.7).tolist() == [1, 2, 3]
    # threshold above every IoU keeps all, ordered by score
    assert amg.box_nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
    # threshold 0: any overlap suppresses
    assert amg.box_nms(boxes, scores, 0.0).tolist() == [1, 3]
    # ties keep the lower index first
    assert amg.box_nms(boxes[:2], np.array([0.5, 0.5]), 0.7).tolist() == [0]
    assert amg.box_nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ConfigError):
        amg.box_nms(boxes, scores[:2], 0.5)


def test_crop_boxes_and_edge_filter() -> None:
    boxes, layers = amg.crop_boxes(100, 80, 0)
    assert boxes == [[0, 0, 100, 80]] and layers == [0]
    boxes, layers = amg.crop_boxes(100, 80, 1)
    assert len(boxes) == 5 and layers == [0, 1, 1, 1, 1]
    for x0, y0, x1, y1 in boxes[1:]:
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 80
    # the union of the layer-1 crops covers the image
    cover = np.zeros((80, 100), bool)
    for x0, y0, x1, y1 in boxes[1:]:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    crop = [0, 0, 60, 50]
    near = amg.near_crop_edge(
        np.array([[40, 10, 59, 30], [5, 5, 20, 20], [0, 0, 10, 10]]), crop, [0, 0, 100, 80], atol=2
    )
    # touching the crop's right border (inside the image) -> dropped; the image border is fine
    assert near.tolist() == [True, False, False]


def test_remove_small_regions() -> None:
    m = np.zeros((10, 10), bool)
    m[1:8, 1:8] = True
    m[4, 4] = False  # a 1-px hole
    m[9, 9] = True  # a 1-px island
    filled, changed = amg.remove_small_regions(m, 3, "holes")
    assert changed and filled[4, 4] and filled[9, 9]
    cleaned, changed = amg.remove_small_regions(filled, 3, "islands")
    assert changed and not cleaned[9, 9] and cleaned[1:8, 1:8].all()
    same, changed = amg.remove_small_regions(cleaned, 3, "islands")
    assert not changed and np.array_equal(same, cleaned)
    tiny = np.zeros((5, 5), bool)
    tiny[0, 0] = tiny[4, 4] = True
    kept, _ = amg.remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 1  # every island is small: the largest (first) is kept
    with pytest.raises(ConfigError):
        amg.remove_small_regions(m, 3, "bogus")


def test_select_coarse_keeps_largest_mostly_disjoint() -> None:
    def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        r = np.zeros((10, 10), bool)
        r[y0:y1, x0:x1] = True
        return r

    masks = np.stack(
        [
            rect(0, 0, 3, 3),  # 9, disjoint from the others
            rect(0, 0, 10, 5),  # 50, largest
            rect(5, 0, 10, 2),  # 10, fully inside #1 -> skipped at max_overlap .5
            rect(0, 4, 10, 10),  # 60 -> first; overlaps #1 by 10 = 20 % of #1 -> kept
            np.zeros((10, 10), bool),  # empty -> never kept
        ]
    )
    assert amg.select_coarse(masks, None, None).tolist() == [3, 1, 2, 0]
    assert amg.select_coarse(masks, None, 0.5).tolist() == [3, 1]  # #0 lies inside #1 too
    assert amg.select_coarse(masks, 2, None).tolist() == [3, 1]
    # any overlap skips: #1 shares a row with #3; #2 and #0 do not touch #3
    assert amg.select_coarse(masks, None, 0.0).tolist() == [3, 2, 0]
    with pytest.raises(ConfigError):
        amg.select_coarse(masks, 0, None)
