"""The weight-free Felzenszwalb fallback segmenter end to end, and the registry of segmenters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa import registry
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.segment import create_segmenter, select_regions
from lmmiqa.segment.felzenszwalb import merge_segments

pytest.importorskip("skimage")


def test_astronaut_gives_5_to_10_disjoint_regions_that_cover_the_image() -> None:
    from skimage import data

    image = Image.fromarray(data.astronaut())
    masks = create_segmenter("felzenszwalb").segment(image)
    assert masks.dtype == bool and masks.shape[1:] == (512, 512)
    assert 5 <= masks.shape[0] <= 10
    coverage = masks.sum(axis=0)
    assert (coverage == 1).all()  # disjoint and covering
    areas = masks.sum(axis=(1, 2))
    assert list(areas) == sorted(areas, reverse=True)
    # Algorithm 1 then keeps every region and adds no complement
    regions, _ = select_regions(masks)
    assert [r.kind for r in regions] == ["mask"] * masks.shape[0]


def test_small_and_non_square_images() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(30, 70, 3), dtype=np.uint8))
    masks = create_segmenter("felzenszwalb", max_regions=3).segment(img)
    assert masks.shape[1:] == (30, 70) and 1 <= masks.shape[0] <= 3
    assert (masks.sum(axis=0) == 1).all()
    flat = create_segmenter("felzenszwalb").segment(Image.new("RGB", (20, 10), (90, 90, 90)))
    assert flat.shape == (1, 10, 20) and flat.all()


def test_merge_segments_merges_smallest_into_most_similar_neighbour() -> None:
    labels = np.array([[0, 0, 1, 1, 2, 2, 2, 2]])
    feats = np.array([[[0.0], [0.0], [9.0], [9.0], [10.0], [10.0], [10.0], [10.0]]])
    # 0 (2 px) and 1 (2 px) tie on size; the lower label (0) merges first, into its only neighbour 1;
    # the output is numbered by decreasing size (ties: first label first)
    merged = merge_segments(labels, feats, max_regions=2)
    assert merged.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    # asking for one region merges everything
    assert merge_segments(labels, feats, max_regions=1).tolist() == [[0] * 8]
    # min_size forces merging below the count limit: 1 (value 9) is closer to 2 (10) than to 0 (0)
    labels2 = np.array([[0, 0, 0, 1, 2, 2, 2, 2]])
    feats2 = np.array([[[0.0], [0.0], [0.0], [9.0], [10.0], [10.0], [10.0], [10.0]]])
    assert merge_segments(labels2, feats2, max_regions=5, min_size=2).tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]


def test_registry_and_config_errors() -> None:
    assert {"sam2", "felzenszwalb"} <= set(registry.names("segmenter"))
    for name in registry.names("segmenter"):
        cls = registry.resolve("segmenter", name)
        assert cls.name == name
    with pytest.raises(UnknownNameError, match="felzenszwalb"):
        create_segmenter("felzenswalb")
    with pytest.raises(ConfigError):
        create_segmenter("felzenszwalb", max_regions=0)
