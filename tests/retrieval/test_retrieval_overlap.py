"""IQARAG's leakage guard compares content, not only paths (issue 13 §5): a bank image copied, renamed or
re-encoded losslessly is found; a different picture is not."""

from __future__ import annotations

import csv
import shutil

import pytest

from lmmiqa.data import load_dataset
from lmmiqa.retrieval.bank import build_bank
from lmmiqa.retrieval.testing import PixelEncoder
from lmmiqa.testing import make_image

pytest.importorskip("faiss")


@pytest.fixture()
def bank_and_copies(tmp_path):
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score"])
        for i in range(6):
            make_image(30 + i, 24, seed=i).save(root / f"imgs/{i}.png")
            w.writerow([f"imgs/{i}.png", 1 + i * 0.5])
    bank = build_bank(tmp_path / "bank", load_dataset(labels=labels, root=root), PixelEncoder())
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(root / "imgs/0.png", other / "renamed.png")                  # same file, another name
    make_image(32, 24, seed=2).save(other / "reencoded.bmp")                   # same pixels, another format
    changed = make_image(33, 24, seed=3)
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    changed.save(other / "changed.png")                                        # one pixel differs
    make_image(40, 30, seed=99).save(other / "new.png")                        # another picture
    (other / "broken.png").write_bytes(b"not an image")
    return bank, root, other


def test_overlap_by_content(bank_and_copies):
    bank, root, other = bank_and_copies
    queries = [str(other / n) for n in ("renamed.png", "reencoded.bmp", "changed.png", "new.png", "broken.png")]
    rep = bank.overlap_report([str(root / "imgs/5.png"), *queries])
    assert (rep["n"], rep["by_path"], rep["by_content"], rep["unreadable"]) == (3, 1, 2, 1)
    assert rep["examples"] == [str(root / "imgs/5.png"), queries[0], queries[1]]
    assert bank.overlap(queries, workers=2) == 2
    assert bank.overlap([str(other / "new.png"), str(other / "changed.png")]) == 0


def test_eval_guard_refuses_a_renamed_bank_image(bank_and_copies, tiny_model_path):
    """The evaluation runner's guard (IQARAG.check_overlap) sees a renamed copy of a bank image."""
    import lmmiqa

    bank, _root, other = bank_and_copies
    scorer = lmmiqa.create_scorer("iqarag", bank=str(bank.dir), model=str(tiny_model_path("qwen2_5_vl")),
                                  device="cpu")
    assert scorer.check_overlap([str(other / "renamed.png"), str(other / "new.png")]) == 1
