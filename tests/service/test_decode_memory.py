"""Decoding uploads at the reduced size for every image mode, within its counted cost (issue 24 §1).

In-process and small (a few MP), so that the default suite stays fast; ``benchmarks/bench_service.py`` measures
the server's peak RSS under the issue's 6300² inputs.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import lmmiqa.images as images_mod
from lmmiqa.images import ImageLimits, open_image_bytes, to_rgb
from lmmiqa.service.uploads import decode_upload, planned_size, reduction_factor


def _encode(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _images(w: int, h: int) -> dict[str, bytes]:
    """One file per mode/format the issue named (and the other modes a PNG, TIFF or GIF can hold)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grad = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2
    noise = rng.random((h, w)) * 0.1
    a16 = ((grad * 0.9 + noise) * 65535).astype(np.uint16)
    rgba = Image.fromarray(np.dstack([(a16 >> 8).astype(np.uint8)] * 3 + [(rng.random((h, w)) * 255).astype(np.uint8)]))
    p = rgba.convert("RGB").quantize(64)
    return {
        "png-I;16": _encode(Image.fromarray(a16), "PNG"),
        "png-P-transparency": _encode(p, "PNG", transparency=3),
        "png-RGBA": _encode(rgba, "PNG"),
        "png-LA": _encode(rgba.convert("LA"), "PNG"),
        "png-1": _encode(rgba.convert("1"), "PNG"),
        "webp-RGBA": _encode(rgba, "WEBP", lossless=True),
        "tiff-I;16": _encode(Image.fromarray(a16), "TIFF", compression="tiff_deflate"),
        "tiff-F": _encode(Image.fromarray(a16.astype(np.float32) / 65535), "TIFF"),
        "gif-P": _encode(p, "GIF", transparency=3),
        "pgm-16": _encode(Image.fromarray(a16), "PPM"),
        "jpeg-CMYK": _encode(rgba.convert("CMYK"), "JPEG"),
        "jpeg-progressive": _encode(rgba.convert("RGB"), "JPEG", progressive=True),
    }


@pytest.fixture(scope="module")
def small_images() -> dict[str, bytes]:
    return _images(403, 301)


@pytest.mark.parametrize("kind", list(_images(8, 8)))
def test_reduced_decode_is_the_full_conversion_box_reduced(small_images, kind, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(images_mod, "STRIP_PIXELS", 3000)  # many tiles and strips even on a small image
    import lmmiqa.service.uploads as uploads_mod

    monkeypatch.setattr(uploads_mod, "STRIP_PIXELS", 3000)
    data = small_images[kind]
    target = 4000
    f = reduction_factor(403 * 301, target)
    out = decode_upload(data, "x", ImageLimits(), target)
    assert f == 5 and out.mode == "RGB" and out.size == planned_size(403, 301, target) == (81, 61)
    full = open_image_bytes(data, "x", ImageLimits())  # the library's conversion at full resolution
    assert to_rgb(Image.open(io.BytesIO(data))).size == full.size
    if kind.startswith("jpeg"):  # decoded at a reduced DCT scale, then box-resampled: close, not equal
        diff = np.abs(np.asarray(out, float) - np.asarray(full.resize(out.size, Image.Resampling.BOX), float))
        assert diff.mean() < 6, diff.mean()
    else:  # tile by tile, the very pixels of converting first and reducing after
        assert out.tobytes() == full.reduce(f).tobytes()
    assert decode_upload(data, "x", ImageLimits(), None).tobytes() == full.tobytes()  # full resolution: as the CLI


def test_to_rgb_in_strips_keeps_the_values(monkeypatch):
    """The library's conversion (16-bit → im2uint8, alpha on white, float/32-bit scaled by the peak) gives the
    same pixels whether the image is converted whole or in strips."""
    from PIL import Image

    rng = np.random.default_rng(1)
    cases = [
        Image.fromarray(rng.integers(0, 65536, (57, 43), dtype=np.uint16)),
        Image.fromarray(rng.integers(-300, 900_000, (57, 43)).astype(np.int32), "I"),
        Image.fromarray(rng.integers(-5, 200, (57, 43)).astype(np.int32), "I"),
        Image.fromarray((rng.random((57, 43)) * 400 - 20).astype(np.float32), "F"),
        Image.fromarray(rng.random((57, 43)).astype(np.float32), "F"),
        Image.fromarray(rng.integers(0, 256, (57, 43, 4), dtype=np.uint8), "RGBA"),
    ]
    whole = [to_rgb(im).tobytes() for im in cases]
    monkeypatch.setattr(images_mod, "STRIP_PIXELS", 100)  # two rows per strip
    assert [to_rgb(im).tobytes() for im in cases] == whole
    # hand values: 16-bit 257·k+128 → k (rounds down), 257·k+129 → k+1; alpha 0 → white
    im = Image.fromarray(np.array([[257 * 3 + 128, 257 * 3 + 129, 65535]], dtype=np.uint16))
    assert list(np.asarray(to_rgb(im))[0, :, 0]) == [3, 4, 255]
    clear = Image.fromarray(np.array([[[10, 20, 30, 0]]], dtype=np.uint8), "RGBA")
    assert list(np.asarray(to_rgb(clear))[0, 0]) == [255, 255, 255]


_MEASURE = """
import gc, json, sys
from lmmiqa.images import ImageLimits
from lmmiqa.service.uploads import decode_cost, decode_upload, planned_size, read_header

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
target = int(sys.argv[2])
header = read_header(data)
cost = decode_cost(header, target)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
out = decode_upload(data, "x", ImageLimits(), target)
peak = status("VmHWM") - before
print(json.dumps({"peak": peak, "counted": cost.transient + cost.output, "pixels": header.pixels,
                  "size": list(out.size), "planned": list(planned_size(header.width, header.height, target))}))
"""


@pytest.fixture(scope="module")
def big_images(tmp_path_factory) -> dict[str, str]:
    from PIL import Image

    n = 2500  # 6.25 MP: big enough for the full-resolution buffers to dominate, quick to decode
    grad = Image.linear_gradient("L").resize((n, n))
    a16 = np.asarray(grad, dtype=np.uint16) * 257
    p = grad.convert("P")
    files = {
        "png-I;16": _encode(Image.fromarray(a16), "PNG"),
        "png-P-transparency": _encode(p, "PNG", transparency=0),
        "webp": _encode(grad.convert("RGB"), "WEBP", lossless=True),
        "tiff-I;16": _encode(Image.fromarray(a16), "TIFF", compression="tiff_deflate"),
    }
    folder = tmp_path_factory.mktemp("big")
    out = {}
    for kind, data in files.items():
        path = folder / f"{kind}.bin"
        path.write_bytes(data)
        out[kind] = str(path)
    return out


@pytest.mark.parametrize("kind", ["png-I;16", "png-P-transparency", "webp", "tiff-I;16"])
def test_decode_memory_stays_within_its_counted_cost(big_images, kind):
    """What a decode allocates (peak RSS of a fresh process) stays under :func:`decode_cost`, the amount the
    service reserves from its memory budget before decoding; and the reduced decode of a 16-bit or palette image
    no longer costs a full-resolution conversion (issue 24 §1: +984 MB for a 6300² 16-bit PNG, ~25 B/pixel)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lmmiqa

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(lmmiqa.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, big_images[kind], "12544"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["size"] == m["planned"]
    per_px = m["peak"] / m["pixels"]
    print(f"\n{kind}: peak +{m['peak'] / 2**20:.0f} MB ({per_px:.1f} B/px), counted {m['counted'] / 2**20:.0f} MB")
    assert m["peak"] <= m["counted"], m
    if kind != "webp":  # libwebp's own buffers: 16 B/px, counted as such
        assert per_px < 6, per_px  # the decoder's native image and small tiles, no float copy of it


_MEASURE_JSON = """
import base64, json, os, sys
from lmmiqa.service.budget import body_charge
from lmmiqa.service.uploads import json_request

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

data = base64.b64encode(os.urandom(6 * 2**20))
prefix = b"data:image/png;base64," if sys.argv[1] == "data-url" else b""
body = bytearray(b'{"images": ["' + prefix + data + b'"], "options": {"readout": "expected"}}')
del data
n = len(body)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
json_request(body, 16)
peak = status("VmHWM") - before + n  # the body itself was held before
print(json.dumps({"peak": peak, "body": n, "counted": body_charge("application/json", n)}))
"""


@pytest.mark.parametrize("kind", ["plain", "data-url"])
def test_json_body_memory_stays_within_its_charge(kind):
    """Parsing a JSON body (8 MiB of base64) holds at most what the memory budget charged for it (issue 24 §2)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lmmiqa

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(lmmiqa.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _MEASURE_JSON, kind], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{kind}: peak {m['peak'] / m['body']:.2f} × the body, counted {m['counted'] / m['body']:.2f} ×")
    assert m["peak"] <= m["counted"], m
