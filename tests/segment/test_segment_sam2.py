"""SAM 2 automatic mask generation end to end with a tiny random-weight model (offline).

Random weights give arbitrary masks (logits near 0, predicted IoU near 0.5), so these tests check the
mechanics: loading from a local folder, shapes and dtypes, what each threshold does, NMS, the coarse
selection, crop layers, batching and the error for missing weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.errors import ConfigError, ModelLoadError
from lmmiqa.segment import create_segmenter
from lmmiqa.segment.sam2 import Sam2Segmenter, Sam2SegmenterConfig

pytest.importorskip("torch")
pytest.importorskip("transformers")

OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_masks": None, "max_overlap": None}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))  # 64 wide, 48 high


def test_segment_returns_bool_masks_of_the_image_shape(tiny_sam2_path: str, image: Image.Image) -> None:
    seg = create_segmenter("sam2", model=tiny_sam2_path, points_per_side=4, **OPEN, box_nms_thresh=1.0)
    masks = seg.segment(image)
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (48, 64)
    # no filter and no NMS: 3 masks per point (multimask), minus empty ones
    assert 0 < masks.shape[0] <= 4 * 4 * 3
    assert masks.any(axis=(1, 2)).all()
    single = create_segmenter(
        "sam2", model=tiny_sam2_path, points_per_side=4, **OPEN, box_nms_thresh=1.0, multimask_output=False
    ).segment(image)
    assert 0 < single.shape[0] <= 16


def test_thresholds_nms_and_coarse_selection(tiny_sam2_path: str, image: Image.Image) -> None:
    def run(**kw: object) -> np.ndarray:
        opts = {"model": tiny_sam2_path, "points_per_side": 4, **OPEN, **kw}
        return create_segmenter("sam2", **opts).segment(image)

    everything = run(box_nms_thresh=1.0)
    # predicted IoU of a sigmoid head is < 1: a threshold of 1 removes every mask
    assert run(pred_iou_thresh=1.0).shape == (0, 48, 64)
    # near-zero random logits are unstable: SAM's default stability threshold removes them all
    assert run(stability_score_thresh=0.95).shape == (0, 48, 64)
    # NMS can only remove masks; with threshold 0 no two kept boxes overlap
    nms = run(box_nms_thresh=0.0)
    assert 1 <= nms.shape[0] <= everything.shape[0]
    from lmmiqa.segment.amg import box_iou
    from lmmiqa.segment.regions import masks_to_boxes

    iou = box_iou(masks_to_boxes(nms), masks_to_boxes(nms))
    assert np.allclose(iou[~np.eye(len(nms), dtype=bool)], 0.0)
    # coarse selection: at most max_masks, largest first, and no mask mostly inside larger ones
    coarse = run(box_nms_thresh=1.0, max_masks=3, max_overlap=0.0)
    assert 1 <= coarse.shape[0] <= 3
    assert not (coarse.sum(axis=0) > 1).any()  # max_overlap=0: disjoint
    areas = coarse.sum(axis=(1, 2))
    assert list(areas) == sorted(areas, reverse=True)


def test_crop_layers_clean_up_and_large_image(tiny_sam2_path: str, image: Image.Image) -> None:
    seg = create_segmenter(
        "sam2",
        model=tiny_sam2_path,
        points_per_side=2,
        crop_n_layers=1,
        min_mask_region_area=10,
        work_max_side=32,
        **OPEN,
    )
    out = seg.segment_many([image, image.resize((100, 30))])
    assert [m.shape[1:] for m in out] == [(48, 64), (30, 100)]
    assert all(m.dtype == bool for m in out)


def test_segment_many_matches_one_at_a_time_in_shape(tiny_sam2_path: str, image: Image.Image) -> None:
    seg = create_segmenter("sam2", model=tiny_sam2_path, points_per_side=2, image_batch_size=2, **OPEN)
    other = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((40, 40))
    batched = seg.segment_many([image, other, image])
    assert [m.shape[1:] for m in batched] == [(48, 64), (40, 40), (48, 64)]
    assert seg.segment_many([]) == []
    assert seg.segment(np.asarray(image)).shape[1:] == (48, 64)  # numpy input


def test_missing_weights_give_an_actionable_error(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_segmenter("sam2", model=str(missing)).segment(Image.new("RGB", (8, 8)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="felzenszwalb"):
        create_segmenter("sam2", model=str(empty), local_files_only=True).segment(Image.new("RGB", (8, 8)))


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        Sam2SegmenterConfig(points_per_side=0)
    with pytest.raises(ConfigError):
        Sam2SegmenterConfig(pred_iou_thresh=1.5)
    with pytest.raises(ConfigError):
        Sam2SegmenterConfig(dtype="float64")
    with pytest.raises(ConfigError, match="valid"):
        create_segmenter("sam2", points_per_sid=8)
    with pytest.raises(ConfigError):
        Sam2Segmenter(config=object())  # type: ignore[arg-type]


def test_normalisation_comes_from_the_checkpoint_preprocessor_config(tiny_sam2_path: str, tmp_path) -> None:
    import json
    import shutil

    folder = tmp_path / "with-preprocessor"
    shutil.copytree(tiny_sam2_path, folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    seg = create_segmenter("sam2", model=str(folder), points_per_side=1, **OPEN)
    assert seg.segment(Image.new("RGB", (32, 32))).shape[1:] == (32, 32)
    assert seg._mean.tolist() == [0.5, 0.5, 0.5] and seg._std.tolist() == [0.25, 0.25, 0.25]


def test_importing_segmentation_modules_loads_no_heavy_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lmmiqa, lmmiqa.segment, lmmiqa.segment.sam2, lmmiqa.segment.felzenszwalb, lmmiqa.viz;"
        "heavy = [m for m in ('torch', 'transformers', 'skimage', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
