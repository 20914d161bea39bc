"""Automatic LEAF crop side / inference crops (lmmiqa.distill.views) and explicit options winning."""

import pytest

from lmmiqa.distill.views import auto_crop_size, auto_crops, choose_views


def test_auto_crop_size_grows_with_the_image_bounded_and_stride_rounded():
    assert auto_crop_size(96, 64) == 64  # half of 96 is below the student's crop
    assert auto_crop_size(256, 64) == 128
    assert auto_crop_size(300, 64) == 144  # 150 rounded down to 16
    assert auto_crop_size(512, 64) == 256
    assert auto_crop_size(2000, 64) == 256  # bounded
    assert auto_crop_size(512, 224) == 256 and auto_crop_size(256, 224) == 224
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
    assert auto["image_size"] == 256 and auto["crops"] == 4 and auto["auto_image_size"] and auto["auto_crops"]
    fixed = choose_views(sizes, 64, image_size=96, crops=2)
    assert fixed["image_size"] == 96 and fixed["crops"] == 2
    assert not fixed["auto_image_size"] and not fixed["auto_crops"]
    half = choose_views(sizes, 64, image_size=128)
    assert half["image_size"] == 128 and half["crops"] == 9 and half["auto_crops"]
    with pytest.raises(ValueError):
        choose_views([], 64)
