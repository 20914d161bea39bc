"""Automatic LEAF crop side / inference crops (lmmiqa.distill.views) and explicit options winning."""

import pytest

from lmmiqa.distill.views import auto_crop_size, auto_crops, choose_views


def test_auto_crop_size_grows_with_the_image_bounded_and_stride_rounded():
    assert auto_crop_size(96, 64) == 64  # half of 96 is below the student's crop
    assert auto_crop_size(256, 64) == 128
    assert auto_crop_size(300, 64) == 144  # 150 rounded down to 16
    assert auto_crop_size(384, 64) == 192
    assert auto_crop_size(512, 64) == 192  # bounded (half would be 256)
    assert auto_crop_size(2000, 64) == 192
    assert auto_crop_size(512, 224) == 224 and auto_crop_size(256, 224) == 224  # never below the student's crop
    with pytest.raises(ValueError):
        auto_crop_size(0, 64)


def test_auto_crops_tile_the_image_within_bounds():
    assert auto_crops(256, 256, 128) == 4
    assert auto_crops(384, 512, 128) == 9  # 3 x 4 cells, capped
    assert auto_crops(96, 96, 64) == 4
    assert auto_crops(96, 96, 64, layout="corners") == 4
    assert auto_crops(512, 1024, 128, layout="corners") == 5


def test_choose_views_auto_and_explicit_options_win():
    sizes = [(512, 384), (512, 512), (640, 512)]
    auto = choose_views(sizes, 64)
    # median short side 512 -> 192² crops (capped), a 3 x 3 grid tiles 512 x 512
    assert auto["image_size"] == 192 and auto["crops"] == 9 and auto["auto_image_size"] and auto["auto_crops"]
    fixed = choose_views(sizes, 64, image_size=96, crops=2)
    assert fixed["image_size"] == 96 and fixed["crops"] == 2
    assert not fixed["auto_image_size"] and not fixed["auto_crops"]
    half = choose_views(sizes, 64, image_size=128)
    assert half["image_size"] == 128 and half["crops"] == 9 and half["auto_crops"]
    with pytest.raises(ValueError):
        choose_views([], 64)
