"""Synthetic distortion ladders: KADID-style distorted images with a *pseudo*-MOS, for tests and benchmarks.

From pristine images (the built-in sample photos shipped with scikit-image, scikit-learn and matplotlib, or a
user folder), :func:`make_ladder` writes, for every image, every distortion type and every severity
``1..S``, one distorted PNG, plus the reference, plus a label file in the collection format::

    dis_img_path,dis_type,ref_img_path,score,severity,synthetic
    dist/astronaut__gaussian_blur__1.png,gaussian_blur,refs/astronaut.png,4.2,1,1

**The score is not human opinion.** It is a pseudo-MOS on the 1–5 scale derived from the severity alone:
``score = 5 − 4·severity/S`` (severity 1 of 5 → 4.2, severity 5 → 1.0), equal across distortion types. The
``synthetic`` column is 1 on every row and a ``SYNTHETIC.txt`` note next to the labels says so; reports of runs on
a ladder are marked synthetic.

Distortion types (:data:`DISTORTIONS`), each with monotone parameters from mild to strong: Gaussian blur,
motion blur, Gaussian noise, JPEG, brightness (darkening), contrast (reduction), saturation (reduction),
pixelation. Output is deterministic for a seed (noise is drawn from a generator seeded by seed, image, type and
severity). The ladder loads as ``--dataset synthetic --root DIR`` (splits by reference image).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, InputNotFoundError, UnknownNameError

if TYPE_CHECKING:
    from lmmiqa.data.loader import Dataset

LABEL_FILE = "labels.csv"
NOTE_FILE = "SYNTHETIC.txt"
COLUMNS = ["dis_img_path", "dis_type", "ref_img_path", "score", "severity", "synthetic"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def pseudo_mos(severity: int, severities: int) -> float:
    """The documented pseudo-MOS of a severity: ``5 − 4·severity/severities`` (1–5 scale, higher is better)."""
    if not 1 <= severity <= severities:
        raise ConfigError(f"severity must be in 1..{severities}, got {severity}")
    return round(5.0 - 4.0 * severity / severities, 6)


# --------------------------------------------------------------------------- distortions


@dataclass(frozen=True)
class Distortion:
    """One distortion type: a function ``(rgb uint8 array, parameter, rng) -> rgb uint8 array`` and the
    parameter at the mildest and strongest severity (interpolated linearly in between)."""

    name: str
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    mild: float
    strong: float
    description: str

    def parameters(self, severities: int) -> list[float]:
        """The parameter of each severity 1..S (monotone from ``mild`` to ``strong``)."""
        if severities == 1:
            return [float(self.strong)]
        return [float(v) for v in np.linspace(self.mild, self.strong, severities)]


def _scale(img: np.ndarray) -> float:
    """Blur parameters are given for 256-pixel images and scaled with the image (at least by 1/2, so that the
    severities of small test ladders stay distinct)."""
    return max(min(img.shape[:2]) / 256.0, 0.5)


def _gaussian_blur(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    s = sigma * _scale(img)
    out = gaussian_filter(img.astype(np.float32), sigma=(s, s, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _motion_blur(img: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import convolve1d

    n = max(2, round(length * _scale(img)))
    kernel = np.full(n, 1.0 / n, dtype=np.float32)
    out = convolve1d(img.astype(np.float32), kernel, axis=1, mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gaussian_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, std, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img.astype(np.float32) + noise), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=max(1, round(quality)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _enhance(kind: str) -> Callable[[np.ndarray, float, np.random.Generator], np.ndarray]:
    def apply(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image, ImageEnhance

        enh = getattr(ImageEnhance, kind)(Image.fromarray(img))
        return np.asarray(enh.enhance(float(factor)).convert("RGB"))

    return apply


def _pixelate(img: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    b = max(2, round(block))
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, w // b), max(1, h // b)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


#: every distortion type, in label-file order
DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("gaussian_blur", _gaussian_blur, 0.6, 5.0, "Gaussian blur, sigma in pixels (at 256 px)"),
        Distortion("motion_blur", _motion_blur, 3.0, 25.0, "horizontal motion blur, kernel length (at 256 px)"),
        Distortion("gaussian_noise", _gaussian_noise, 6.0, 55.0, "additive Gaussian noise, std in 0-255 units"),
        Distortion("jpeg", _jpeg, 45.0, 3.0, "JPEG compression, quality"),
        Distortion("brightness", _enhance("Brightness"), 0.8, 0.2, "darkening, brightness factor"),
        Distortion("contrast", _enhance("Contrast"), 0.75, 0.12, "contrast reduction, contrast factor"),
        Distortion("saturation", _enhance("Color"), 0.75, 0.0, "desaturation, colour factor"),
        Distortion("pixelate", _pixelate, 2.0, 10.0, "pixelation, block size in pixels"),
    )
}


def distort(img: np.ndarray, kind: str, severity: int, severities: int = 5, seed: int = 0) -> np.ndarray:
    """Apply distortion ``kind`` at ``severity`` (1..severities) to an RGB uint8 array (deterministic)."""
    if kind not in DISTORTIONS:
        raise UnknownNameError("distortion", kind, DISTORTIONS)
    if not 1 <= severity <= severities:
        raise ConfigError(f"severity must be in 1..{severities}, got {severity}")
    d = DISTORTIONS[kind]
    rng = np.random.default_rng([int(seed), list(DISTORTIONS).index(kind), int(severity)])
    return d.apply(np.ascontiguousarray(img, dtype=np.uint8), d.parameters(severities)[severity - 1], rng)


# --------------------------------------------------------------------------- source images


def builtin_images() -> list[tuple[str, Any]]:
    """Pristine sample photos shipped inside installed packages (no download): ``[(name, RGB PIL image)]``.

    scikit-image (astronaut, chelsea, coffee, rocket, camera), scikit-learn (china, flower) and matplotlib
    (grace_hopper), whichever are installed. (skimage's ``clock`` is left out: it is really motion-blurred.)
    """
    from PIL import Image

    from lmmiqa.images import array_to_image, to_rgb

    out: list[tuple[str, Any]] = []
    try:
        from skimage import data as skdata

        for name in ("astronaut", "chelsea", "coffee", "rocket"):
            out.append((name, array_to_image(getattr(skdata, name)())))
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "datasets" / "images"
        for fname in sorted(folder.glob("*.jpg")):
            with Image.open(fname) as im:
                out.append((fname.stem, to_rgb(im.convert("RGB"))))
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
            im.load()
            out.append(("grace_hopper", to_rgb(im)))
    except (ImportError, OSError, ValueError):
        pass
    if not out:
        raise DataError(
            "no built-in sample images: install scikit-image, scikit-learn or matplotlib "
            "(pip install 'lmmiqa[eval]'), or pass a folder of images"
        )
    return out


def folder_images(folder: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """Images of a folder (sorted, non-recursive), as ``[(file stem, RGB PIL image)]``."""
    from lmmiqa.images import open_image

    root = Path(folder)
    if not root.is_dir():
        raise InputNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: several images share a file stem; rename them so that each stem is unique")
    return [(p.stem, open_image(p)) for p in files]


def square(img: Any, size: int) -> Any:
    """Resize the shorter side to ``size`` and centre-crop to ``size`` × ``size``."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------- the ladder


def make_ladder(
    out: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[tuple[str, Any]] = "builtin",
    severities: int = 5,
    types: Sequence[str] | None = None,
    size: int = 256,
    seed: int = 0,
    max_images: int | None = None,
) -> Dataset:
    """Write a synthetic distortion ladder to ``out`` and return it as a :class:`~lmmiqa.data.loader.Dataset`.

    Args:
        out: output folder (the ``--root`` of the ladder); created if needed. Files of an earlier ladder with
            the same names are overwritten; the label file is rewritten.
        images: ``"builtin"`` (see :func:`builtin_images`), a folder of images, or ``[(name, PIL image)]``.
        severities: number of severity levels S (≥ 1).
        types: distortion types (default: all of :data:`DISTORTIONS`).
        size: side of the square images written (≥ 16).
        seed: seed of the random parts (noise).
        max_images: use only the first N source images.

    Returns:
        The ladder loaded as dataset ``synthetic`` (every row).
    """
    from PIL import Image

    from lmmiqa.data.loader import load_dataset

    if int(severities) < 1:
        raise ConfigError(f"severities must be >= 1, got {severities}")
    if int(size) < 16:
        raise ConfigError(f"size must be >= 16, got {size}")
    kinds = list(types) if types else list(DISTORTIONS)
    for k in kinds:
        if k not in DISTORTIONS:
            raise UnknownNameError("distortion", k, DISTORTIONS)
    if isinstance(images, str) and images == "builtin":
        sources = builtin_images()
    elif isinstance(images, (str, os.PathLike)):
        sources = folder_images(images)
    else:
        sources = list(images)
    if max_images is not None:
        sources = sources[: max(1, int(max_images))]
    if not sources:
        raise DataError("no source images for the ladder")

    root = Path(out)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "dist").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for img_index, (name, pil) in enumerate(sources):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or f"image{img_index}"
        ref = np.asarray(square(pil.convert("RGB"), int(size)), dtype=np.uint8)
        ref_rel = f"refs/{safe}.png"
        Image.fromarray(ref).save(root / ref_rel, format="PNG")
        for kind in kinds:
            for sev in range(1, int(severities) + 1):
                img = distort(ref, kind, sev, int(severities), seed=hash_seed(seed, img_index))
                rel = f"dist/{safe}__{kind}__{sev}.png"
                Image.fromarray(img).save(root / rel, format="PNG")
                rows.append(
                    {
                        "dis_img_path": rel,
                        "dis_type": kind,
                        "ref_img_path": ref_rel,
                        "score": pseudo_mos(sev, int(severities)),
                        "severity": sev,
                        "synthetic": 1,
                    }
                )
    with (root / LABEL_FILE).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (root / NOTE_FILE).write_text(_note(kinds, int(severities), int(size), seed, len(sources)), encoding="utf-8")
    return load_dataset("synthetic", root=root)


def hash_seed(seed: int, index: int) -> int:
    """Deterministic per-image seed (stable across processes, unlike ``hash``)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _note(kinds: list[str], severities: int, size: int, seed: int, n_images: int) -> str:
    lines = [
        "SYNTHETIC DATA — the scores in labels.csv are NOT human opinion scores.",
        "",
        "Generated by lmmiqa (lmmiqa.data.synth.make_ladder / `lmmiqa synth`).",
        f"Pseudo-MOS = 5 - 4 * severity / {severities} (1-5 scale, higher is better), equal across types.",
        f"{n_images} source image(s), {len(kinds)} distortion type(s), {severities} severities, {size}x{size} px, "
        f"seed {seed}.",
        "",
        "Distortion parameters (mild -> strong):",
    ]
    for k in kinds:
        d = DISTORTIONS[k]
        params = ", ".join(f"{p:g}" for p in d.parameters(severities))
        lines.append(f"- {k}: {d.description}: {params}")
    lines += ["", "Load it with: --dataset synthetic --root <this folder>", ""]
    return "\n".join(lines)
