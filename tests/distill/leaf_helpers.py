"""Helpers shared by the LEAF tests (importable because ``tests/distill`` is on ``sys.path``)."""

from __future__ import annotations

import pathlib


def write_blur_set(folder: pathlib.Path, n_images: int = 3, levels: int = 4, size: int = 32) -> list[pathlib.Path]:
    """``n_images`` generated images, each blurred at ``levels`` strengths (0 = sharp): PNGs under ``folder``."""
    from PIL import ImageFilter

    from lmmiqa.testing import make_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_images):
        base = make_image(size, size, seed=i)
        for lvl in range(levels):
            img = base.filter(ImageFilter.GaussianBlur(radius=0.8 * lvl)) if lvl else base
            p = folder / f"img{i}_blur{lvl}.png"
            img.save(p)
            paths.append(p)
    return paths


def blur_level(path: str | pathlib.Path) -> int:
    """The blur level encoded in a :func:`write_blur_set` file name."""
    return int(pathlib.Path(path).stem.rsplit("blur", 1)[1])
