"""Image loading: every input kind, every mode, and per-item errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.images import (
    ImageLimits,
    array_to_image,
    expand_inputs,
    load_item,
    load_many,
    open_image,
    pad_to_square,
)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_expand_folder_recursive_and_list_file(folder, tmp_path):
    found = expand_inputs(str(folder))
    assert [p.rsplit("/", 1)[-1] for p in found] == ["a.png", "b.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\na.png\n\nsub/b.jpg\nmissing.png\n")
    assert expand_inputs([f"@{lst}"]) == [str(tmp_path / "a.png"), str(tmp_path / "sub/b.jpg"), str(tmp_path / "missing.png")]


def test_modes_convert_to_rgb(tmp_path):
    cases = {
        "P": Image.new("P", (8, 6)),
        "RGBA": Image.new("RGBA", (8, 6), (10, 20, 30, 0)),
        "L": Image.new("L", (8, 6), 77),
        "CMYK": Image.new("CMYK", (8, 6), (0, 0, 0, 0)),
        "I;16": Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)),
        "LA": Image.new("LA", (8, 6), (50, 255)),
    }
    for mode, img in cases.items():
        ext = "tiff" if mode in ("CMYK", "I;16") else "png"
        path = tmp_path / f"{mode.replace(';', '')}.{ext}"
        img.save(path)
        out = open_image(path)
        assert out.mode == "RGB" and out.size == (8, 6), mode
    assert open_image(tmp_path / "I16.tiff").getpixel((0, 0)) == (255, 255, 255)
    assert open_image(tmp_path / "RGBA.png").getpixel((0, 0)) == (255, 255, 255)  # transparent over white


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert open_image(tmp_path / "o.jpg").size == (20, 40)


def test_arrays():
    assert array_to_image(np.zeros((5, 7), np.uint8)).size == (7, 5)
    assert array_to_image(np.ones((5, 7, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert array_to_image(np.zeros((5, 7, 4), np.uint8)).mode == "RGB"
    item = load_item(np.zeros((3, 4, 2)), 3)
    assert not item.ok and "shape" in item.error and item.key == "<memory:3>"


def test_bad_inputs_are_per_item_errors(tmp_path, folder):
    good = folder / "a.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.txt"
    data = good.read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 5000)).save(huge)
    items = load_many(
        [str(good), str(tmp_path / "nope.png"), str(empty), str(text), str(trunc), str(corrupt), str(huge), str(good)],
        ImageLimits(max_pixels=10_000_000),
    )
    assert [it.ok for it in items] == [True, False, False, False, False, False, False, True]
    msgs = [it.error for it in items]
    assert "not found" in msgs[1]
    assert "empty" in msgs[2]
    assert "not an image" in msgs[3]
    assert "truncated" in msgs[4] or "corrupt" in msgs[4]
    assert "corrupt" in msgs[5] or "not an image" in msgs[5]
    assert "exceeds the limit" in msgs[6]


def test_byte_limit(folder):
    item = load_item(str(folder / "a.png"), 0, ImageLimits(max_bytes=10))
    assert not item.ok and "bytes exceeds" in item.error


def test_pad_to_square():
    out = pad_to_square(Image.new("RGB", (10, 4), (0, 0, 0)))
    assert out.size == (10, 10)
    assert out.getpixel((0, 0)) == (122, 116, 104) and out.getpixel((5, 5)) == (0, 0, 0)


def test_pixel_limit_option_is_a_scorer_option():
    # images.py names the option without importing the methods layer; the scorer config must have it
    import dataclasses

    from lmmiqa.images import PIXEL_LIMIT_OPTION, pixel_limit_option
    from lmmiqa.methods.base import ScorerConfig

    assert pixel_limit_option() == PIXEL_LIMIT_OPTION
    assert PIXEL_LIMIT_OPTION in {f.name for f in dataclasses.fields(ScorerConfig)}
    cfg = ScorerConfig(**{PIXEL_LIMIT_OPTION: 100})
    assert cfg.max_image_pixels == 100
