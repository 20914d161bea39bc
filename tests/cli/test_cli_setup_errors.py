"""Set-up errors end the command once, up front, with exit status 2 (issue 23, parts 2-4): a path-looking --model
that does not exist, a missing @list, label file or --root; and a failed `eval` never blocks its own retry."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lmmiqa.cli import main
from lmmiqa.testing import make_image

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")

#: runs the command, then says on stderr whether torch was imported (it must not be, for an error "at once")
TORCH_PROBE = """
import sys
from lmmiqa.cli import main
rc = main(sys.argv[1:])
print("TORCH_IMPORTED", "torch" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        make_image(40, 32, seed=i).save(d / f"{i}.png")
    (tmp_path / "labels.csv").write_text("dis_img_path,score\n" + "".join(f"imgs/{i}.png,{i + 1}\n" for i in range(3)))
    return d


def test_missing_model_folder_is_one_error_at_once(images, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HOME": str(home), "PYTHONPATH": SRC}
    for ref in ("/models/qwen3-vl-8b", "models/qwen/qwen3-vl-8b"):
        r = subprocess.run([sys.executable, "-c", TORCH_PROBE, "score", str(images), "--model", ref],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("TORCH_IMPORTED")]
        assert len(lines) == 1, r.stderr
        assert f"cannot load model '{ref}': no such folder" in lines[0]
        assert "hf download" not in lines[0] and "Repo id" not in lines[0]  # a path is never taken for a hub id
        assert "TORCH_IMPORTED False" in r.stderr  # refused before the heavy imports: at once
        assert r.stdout == ""


def test_missing_list_labels_and_root_are_setup_errors(images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["score", "@nothere.txt", "--method", "contrast"], "@nothere.txt: list file not found"),
        (["eval", "--method", "contrast", "--labels", "nothere.csv", "--root", ".", "--out", "r1"],
         "label file not found"),
        (["eval", "--method", "contrast", "--labels", "labels.csv", "--root", "nothere", "--out", "r2"],
         "--root " + str(tmp_path / "nothere") + " is not a folder (it does not exist)"),
        (["eval", "--method", "contrast", "--labels", "labels.csv", "--root", "imgs", "--out", "r3"],
         "3 of 3 image file(s) of csv are missing under"),  # the label file's paths are relative to --root
        (["levels-bound", "--labels", "nothere.csv"], "label file not found"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err, err
    assert not (tmp_path / "r1").exists()  # nothing written for a run that could not start


def test_failed_eval_does_not_block_its_retry(run_cli, images, tmp_path, tiny_model_path, capsys):
    pytest.importorskip("torch")
    common = ["eval", "--labels", tmp_path / "labels.csv", "--root", tmp_path, "--out", tmp_path / "run",
              "--n-boot", "0", "--no-plot"]
    # 1. a wrong --model: the run fails once (exit 2) before scoring anything
    r = run_cli([*common, "--model", "./no-such-model"], env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "no such folder" in r.stderr
    run = tmp_path / "run"
    assert (run / "config.json").is_file()  # the failed run's configuration stays...
    assert not (run / ".lock").exists()  # ...but its lock is cleared on every exit
    # 2. the corrected command is not refused ("holds a run with a different configuration ... --force")
    model = str(tiny_model_path("qwen2_5_vl"))
    assert main([*map(str, common), "--model", model, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "holds an earlier run that scored nothing; replacing it" in err and "model" in err
    assert json.loads((run / "config.json").read_text())["model"] == model
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 3
    assert not (run / ".lock").exists()
    # 3. a run that did score something is still protected
    assert main([*map(str, common), "--method", "contrast"]) == 2
    assert "holds a run with a different configuration" in capsys.readouterr().err


def test_what_counts_as_a_path(tmp_path):
    from lmmiqa.errors import ModelLoadError
    from lmmiqa.hub import looks_like_path, missing_folder_message, resolve_local_only

    for hub_id in ("Qwen/Qwen3-VL-8B-Instruct", "gpt2", "facebook/sam2.1-hiera-large"):
        assert not looks_like_path(hub_id) and missing_folder_message(hub_id) is None
    for path in ("/models/x", "./x", "../x", "~/x", "a/b/c", "x/", "C:\\models\\x", "models\\x"):
        assert looks_like_path(path), path
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert "it is a file, not a folder" in missing_folder_message(str(tmp_path / "weights.safetensors"))
    assert missing_folder_message(str(tmp_path)) is None  # an existing folder: loaded as it is
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_local_only(str(tmp_path / "nope" / "x"), False, what="encoder model")
