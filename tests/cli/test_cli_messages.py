"""Messages in the words of the interface used, quiet pipes, readable tables (issue 15, part 5)."""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def small_images(tmp_path):
    from lmmiqa.testing import make_image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        make_image(64, 48, seed=i).save(d / f"{i}.png")
    return d


# ----------------------------------------------------------------------------------------------- tables


def test_table_shows_direction_and_scale_and_names_a_missing_path_once(run_cli, small_images, tmp_path):
    img = small_images / "0.png"
    r = run_cli(["score", img, "--method", "exposure"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split("\t")[2] == "[0, 1], lower is better"
    r = run_cli(["score", img, "--method", "noise"])
    assert r.stdout.splitlines()[1].split("\t")[2] == "unbounded, typically 0-30, lower is better"
    r = run_cli(["score", img, "nothere.jpg", "--method", "contrast"])
    assert r.returncode == 0
    assert r.stdout.splitlines()[1].split("\t")[2] == "[0, 0.5], higher is better"
    assert "nothere.jpg\tERROR\tfile not found" in r.stdout.splitlines()
    assert "lmmiqa score: nothere.jpg: file not found" in r.stderr.splitlines()


def test_niqe_table_says_lower_is_better(run_cli, small_images, shared_dir):
    from lmmiqa.testing import make_image

    big = small_images / "big.png"
    make_image(256, 192, seed=3).save(big)
    r = run_cli(["score", big, "--method", "niqe"], env={"LMMIQA_ASSETS": str(shared_dir / "data" / "params")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split("\t")[2].endswith("lower is better")


def test_table_says_when_a_leaf_student_is_uncalibrated():
    import io

    from lmmiqa.cli.score import write_results

    raw = {"image": "a.png", "score": 0.37, "higher_is_better": True, "scale": None, "method": "leaf",
           "details": {"calibrated": False}, "error": None}
    calibrated = {**raw, "scale": [1.0, 5.0], "details": {"calibrated": True}}
    buf = io.StringIO()
    write_results([raw, calibrated], "table", buf, header=False)
    rows = [line.split("\t") for line in buf.getvalue().splitlines()]
    assert rows[0][2] == "uncalibrated, unbounded, higher is better"
    assert rows[1][2] == "[1, 5], higher is better"


def test_missing_list_entries_say_how_they_were_resolved(run_cli, small_images, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text("imgs/0.png\nnothere.png\n")  # written relative to the current folder
    r = run_cli(["score", "@lists/l.txt", "--method", "contrast"], cwd=tmp_path)
    assert r.returncode == 1
    warning = [x for x in r.stderr.splitlines() if "@lists/l.txt" in x]
    assert len(warning) == 1, r.stderr
    assert "2 of 2 entries not found" in warning[0] and "resolved against the list file's folder 'lists'" in warning[0]
    assert "1 of them exist relative to the current folder (e.g. 'imgs/0.png')" in warning[0]


# ----------------------------------------------------------------------------------------------- help


def _all_parsers():
    from lmmiqa.cli import build_parser

    todo = [("lmmiqa", build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {sub}", p) for sub, p in action.choices.items())


def test_help_texts_print_percent_signs_once():
    helps = {name: parser.format_help() for name, parser in _all_parsers()}
    assert "95% intervals" in helps["lmmiqa eval"]
    assert [name for name, text in helps.items() if "%%" in text] == []


def test_readme_contents_lists_every_section():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(#([^)]+)\)", contents))

    def anchor(title: str) -> str:
        return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")

    sections = [m for m in re.findall(r"^## (.+)$", text, flags=re.M) if m.strip() != "Contents"]
    assert [s for s in sections if anchor(s) not in linked] == []
    assert linked <= {anchor(s) for s in sections}  # no dangling links


# ----------------------------------------------------------------------------------------------- pipes


def test_closed_pipe_ends_quietly(small_images, tmp_path):
    from lmmiqa.testing import make_image

    many = tmp_path / "many"
    many.mkdir()
    for i in range(300):  # ~130 kB of JSONL: more than a pipe buffer, so the writer meets the closed pipe
        make_image(8, 8, seed=i).save(many / f"{i:03d}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = f"'{sys.executable}' -m lmmiqa score '{many}' --method exposure --format jsonl | head -n 1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.startswith('{"image"') and len(r.stdout.splitlines()) == 1
    assert r.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert r.returncode == 141  # 128 + SIGPIPE, as a Unix tool stopped by `head`


# ----------------------------------------------------------------------------------------------- hints


def test_hints_speak_python_in_python(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    from lmmiqa.errors import ImageLoadError, ModelLoadError
    from lmmiqa.images import ImageLimits, open_image, pixel_limit_option
    from lmmiqa.segment.base import create_segmenter
    from lmmiqa.testing import make_image

    monkeypatch.delenv("LMMIQA_INTERFACE", raising=False)
    with pytest.raises(ModelLoadError) as info:
        create_segmenter("sam2", model="nobody/no-sam").segment(make_image(16, 16))
    msg = str(info.value)
    assert "hf download nobody/no-sam --local-dir ./sam2" in msg
    assert "model='./sam2'" in msg and "segmenter='felzenszwalb'" in msg and "--" not in msg.replace("--local-dir", "")
    path = tmp_path / "x.png"
    make_image(40, 40).save(path)
    with pytest.raises(ImageLoadError, match=rf"raise {pixel_limit_option()} to accept it"):
        open_image(path, ImageLimits(max_pixels=100))


def test_oversize_hint_names_the_flag_on_the_cli(run_cli, small_images):
    from lmmiqa.images import pixel_limit_option

    name = pixel_limit_option()
    r = run_cli(["score", small_images / "0.png", "--method", "contrast", "--option", f"{name}=100"])
    assert r.returncode == 1
    assert f"pixels exceeds the limit of 100 (raise --option {name}=N to accept it)" in r.stdout


def test_one_download_spelling_everywhere():
    hits = []
    for path in [*(REPO / "src").rglob("*.py"), REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        if "huggingface-cli" in path.read_text(encoding="utf-8"):
            hits.append(str(path.relative_to(REPO)))
    assert hits == []


# ----------------------------------------------------------------------------------------------- ray


def _ray_running_here() -> bool:
    """True when some Ray cluster runs on this machine (``auto`` finds it by its processes, e.g. another test's)."""
    psutil = pytest.importorskip("psutil")
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("gcs_server"):
            return True
    return False


def test_ray_address_without_a_cluster_is_one_line(run_cli, small_images, tmp_path):
    pytest.importorskip("ray")
    env = {"RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": None}
    t0 = time.perf_counter()
    r = run_cli(["score", small_images, "--method", "contrast", "--engine", "ray", "--ray-address", "127.0.0.1:9"],
                env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nothing answers at 127.0.0.1:9" in r.stderr and "drop --ray-address" in r.stderr
    assert time.perf_counter() - t0 < 60  # Ray alone retries a dead address for minutes
    if _ray_running_here():
        pytest.skip("a Ray cluster runs on this machine now: --ray-address auto would join it")
    r = run_cli(["score", small_images, "--method", "contrast", "--engine", "ray", "--ray-address", "auto"], env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "lmmiqa score: error: --ray-address auto: no Ray cluster is running on this machine; start one first with "
        "`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head` (on 127.0.0.1 only; export the variable for this "
        "command too), or drop --ray-address to start a local Ray instance for this run"
    ]


def test_ray_connection_errors_are_worded_for_the_interface(monkeypatch):
    from lmmiqa.distributed import _connect_hint
    from lmmiqa.errors import set_interface

    monkeypatch.delenv("LMMIQA_INTERFACE", raising=False)
    msg = _connect_hint("auto", ConnectionError("Could not find any running Ray instance."))
    assert msg.startswith("address='auto': no Ray cluster is running") and "leave address=None" in msg
    set_interface("cli")
    msg = _connect_hint("auto", ConnectionError("Could not find any running Ray instance."))
    assert msg.startswith("--ray-address auto: no Ray cluster") and "drop --ray-address" in msg


def test_ray_actor_that_cannot_load_its_model_ends_the_run_with_its_message(run_cli, small_images, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("transformers")
    r = run_cli(["score", small_images, "--model", "nobody/no-such-model", "--engine", "ray"],
                env={"RAY_ADDRESS": None}, timeout=300)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("lmmiqa score:")]
    assert len(errors) == 1 and errors[0].startswith("lmmiqa score: error: cannot load model 'nobody/no-such-model'")
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "\x1b[" not in r.stderr  # Ray's relayed worker lines come without colour codes (RAY_COLOR_PREFIX=0)


def test_cli_words_only_while_the_command_runs(monkeypatch, capsys):
    from lmmiqa.cli import main
    from lmmiqa.errors import interface, spell

    monkeypatch.delenv("LMMIQA_INTERFACE", raising=False)
    seen = []
    monkeypatch.setattr("lmmiqa.cli.methods.run", lambda args: seen.append(spell(cli="--x", python="x=")) or 0)
    assert main(["methods"]) == 0
    assert seen == ["--x"]  # inside the command: CLI words
    assert interface() == "python"  # after it, a Python caller gets Python words again
