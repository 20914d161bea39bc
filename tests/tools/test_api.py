"""The tool API: registry entries, run_tool, inputs, bad inputs, thread safety, the catalog an agent shows."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from lmmiqa import registry
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.tools import FR, NR, ToolError, ToolResult, get_tool, list_tools, run_tool, tool_catalog

ALL = registry.names("tool")


@pytest.mark.parametrize("name", ALL)
def test_every_registered_tool_is_complete(name):
    tool = get_tool(name)
    module, _, cls = registry.TOOLS[name].partition(":")
    assert tool.name == name and type(tool).__name__ == cls and module.startswith("lmmiqa.tools.")
    assert tool.kind in (NR, FR)
    assert isinstance(tool.higher_is_better, bool)
    lo, hi = tool.typical_range
    assert lo < hi
    assert len(tool.description) > 40 and tool.citation
    info = tool.info()
    assert info.map_source in ("paper", "synthetic")
    text = info.text()
    assert text.startswith(name) and ("higher is better" in text or "lower is better" in text)
    json.dumps(info.to_dict())
    json.dumps(tool.describe())


@pytest.mark.parametrize("name", ALL)
def test_every_tool_measures_a_photo(name, make_rgb):
    img = make_rgb(seed=11, h=200, w=256)
    if get_tool(name).kind == FR:
        rng = np.random.default_rng(0)
        dist = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        r = run_tool(name, dist, ref=img)
    else:
        r = run_tool(name, img)
    assert r.ok, r.error
    assert np.isfinite(r.raw)
    assert 1.0 <= r.normalized <= 5.0
    assert r.details["map"] in ("paper", "synthetic")
    d = r.to_dict()
    assert list(d)[:4] == ["tool", "image", "raw", "normalized"] and d["image"] == "<memory:0>"
    json.dumps(d)


def test_aliases_and_unknown_names():
    assert get_tool("MS-SSIM").name == "ms_ssim"
    assert get_tool("msssim").name == "ms_ssim"
    with pytest.raises(UnknownNameError, match="did you mean 'niqe'"):
        get_tool("nique")
    with pytest.raises(UnknownNameError):
        run_tool("nique", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="unknown option"):
        get_tool("psnr", peak=1)


def test_inputs_paths_pil_arrays_and_bytes(tmp_path, make_rgb):
    img = make_rgb(seed=5)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    expected = get_tool("sharpness").compute(img)
    assert get_tool("sharpness").compute(str(path)) == expected
    assert get_tool("sharpness").compute(path) == expected
    assert get_tool("sharpness").compute(Image.fromarray(img)) == expected
    assert get_tool("sharpness").compute(path.read_bytes()) == expected
    r = run_tool("sharpness", str(path))
    assert r.image == str(path) and r.ok
    # float arrays in [0, 1] and greyscale arrays are accepted through lmmiqa.images
    assert get_tool("sharpness").compute(img / 255.0) == pytest.approx(expected)
    grey = img[..., 1]
    assert get_tool("contrast").compute(grey) == pytest.approx(grey.std() / 255.0)


def test_bad_inputs_become_errors_not_exceptions(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for bad in (tmp_path / "missing.png", tmp_path / "broken.png", tmp_path / "empty.jpg", tmp_path,
                np.zeros((4, 4, 5)), np.array([[np.nan]]), 3.5):
        r = run_tool("sharpness", bad)
        assert isinstance(r, ToolResult) and not r.ok and r.raw is None and r.normalized is None
        assert r.error, bad


def test_nr_tool_refuses_a_reference(make_rgb):
    img = make_rgb()
    with pytest.raises(ToolError, match="no-reference"):
        get_tool("noise").compute(img, ref=img)
    assert run_tool("noise", img, ref=img).error is not None


def test_image_limits_are_tool_options(make_rgb):
    img = make_rgb(h=100, w=100)
    r = get_tool("contrast", max_pixels=5000).run(img)
    assert r.error is not None and "exceeds the limit" in r.error


def test_tools_are_thread_safe(make_rgb):
    """Concurrent runs of several tools on several images give exactly the sequential results."""
    images = [make_rgb(seed=s, h=192, w=192) for s in range(4)]
    jobs = [(name, i) for name in ("niqe", "brisque", "piqe", "sharpness", "ssim") for i in range(4)]

    def one(job):
        name, i = job
        ref = images[(i + 1) % 4] if get_tool(name).kind == FR else None
        return run_tool(name, images[i], ref=ref).raw

    sequential = [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(one, jobs * 2))
    assert parallel == sequential * 2


def test_catalog_for_agents():
    nr = tool_catalog(kind="nr", include_pyiqa=False)
    fr = tool_catalog(kind="fr", include_pyiqa=False)
    assert {i.name for i in nr} == {"niqe", "brisque", "piqe", "sharpness", "noise", "contrast", "exposure",
                                    "colorfulness", "blockiness"}
    assert {i.name for i in fr} == {"psnr", "ssim", "ms_ssim", "gmsd"}
    assert all(i.kind == "nr" for i in nr)
    assert list_tools(include_pyiqa=False) == ALL
    with pytest.raises(ConfigError):
        tool_catalog(kind="both")


def test_importing_lmmiqa_tools_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, lmmiqa.tools, lmmiqa.tools.niqe, lmmiqa.tools.cues; "
        "print(any(m.split('.')[0] in ('torch', 'skimage', 'pyiqa') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
