"""Q-Scorer score-token bins (issue 13 §2): equal-width bins over the training split's MOS min-max (Q-Align),
stored in the artifact, with a fixed range as an option."""

from __future__ import annotations

import numpy as np
import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.training.q_scorer import QScorerTrainConfig, resolve_bin_range
from lmmiqa.training.q_scorer_model import QScorerSpec, data_bin_range, mos_bins

#: shared label file -> (dataset name, training split)
LABELS = {
    "KonIQ-10k.csv": ("koniq10k", "official:train"),
    "SPAQ.csv": ("spaq", "seed:0:train"),
    "LIVE_Challenge.csv": ("livec", "seed:0:train"),
    "KADID-10k.csv": ("kadid10k", "seed:0:train"),
    "AGIQA-3k.csv": ("agiqa3k", "seed:0:train"),
    "AGIQA-1k.csv": ("agiqa1k", "seed:0:train"),
    "CSIQ.csv": ("csiq", "seed:0:train"),
    "TID2013.csv": ("tid2013", "seed:0:train"),
    "LIVE.csv": ("live", "seed:0:train"),
}


def _training_quality(shared_dir, fname):
    """The training split's higher-is-better MOS exactly as train_q_scorer prepares it (DMOS flipped)."""
    from lmmiqa.data import load_dataset
    from lmmiqa.training.q_scorer import _samples

    name, split = LABELS[fname]
    ds = load_dataset(name, labels=shared_dir / "data" / "labels" / fname, split=split, check_files=False)
    samples, hib, published, _ = _samples(ds, "train")
    lo, hi = published
    q = samples.quality if hib else lo + hi - samples.quality
    return q, hib, (lo, hi)


@pytest.mark.parametrize("fname", sorted(LABELS))
def test_every_score_token_gets_images_on_the_shared_label_files(shared_dir, fname):
    q, hib, published = _training_quality(shared_dir, fname)
    bins, source = resolve_bin_range(q, 5, None, published, hib)
    assert source == "training min-max" and bins == (q.min(), q.max())
    counts = np.bincount(mos_bins(q, *bins, 5), minlength=5)
    assert (counts > 0).all(), f"{fname}: images per token {counts.tolist()}"


def test_koniq_published_range_starves_score5(shared_dir):
    """Why: KonIQ's published range is 1-5 but its MOS spans 1.10-4.31; bins over 1-5 give <score5> almost
    nothing (3 of 10,073 images), bins over the min-max give it 17.6 % (all images)."""
    from lmmiqa.data import load_dataset

    ds = load_dataset("koniq10k", labels=shared_dir / "data" / "labels" / "KonIQ-10k.csv", check_files=False)
    q = ds.scores()
    published = np.bincount(mos_bins(q, *ds.score_range, 5), minlength=5) / len(q)
    minmax = np.bincount(mos_bins(q, *data_bin_range(q), 5), minlength=5) / len(q)
    assert published[4] < 0.001
    assert minmax[4] == pytest.approx(0.176, abs=0.001)


def test_fixed_bin_range_option_and_dmos_flip():
    q = np.array([2.0, 3.0, 4.0])
    assert resolve_bin_range(q, 5, (1.0, 5.0), (1.0, 5.0), True) == ((1.0, 5.0), "fixed")
    # a fixed range is given in the labels' own units and flipped with them (DMOS 0-100 -> quality)
    assert resolve_bin_range(q, 5, (10.0, 60.0), (0.0, 100.0), False) == ((40.0, 90.0), "fixed")
    assert resolve_bin_range(q, 1, None, (1.0, 5.0), True) == (None, "mos_range")  # one token: no bins
    with pytest.raises(ConfigError, match="every training score is 3"):
        resolve_bin_range(np.array([3.0, 3.0]), 5, None, (1.0, 5.0), True)
    with pytest.raises(ConfigError, match="LO < HI"):
        QScorerTrainConfig(model="x", bin_range=(5.0, 1.0))


def test_spec_records_the_bin_range_and_reads_old_artifacts():
    spec = QScorerSpec(base_model="m", k=5, mos_range=(1.0, 5.0), hidden_size=8, token_ids=(1, 2, 3, 4, 5),
                       n_base_tokens=1, bin_range=(1.1, 4.31), bin_source="training min-max")
    d = spec.to_dict()
    assert d["bin_range"] == [1.1, 4.31] and d["bin_source"] == "training min-max"
    back = QScorerSpec.from_dict(d)
    assert back.bins == (1.1, 4.31) and back.bin_source == "training min-max"
    del d["bin_range"], d["bin_source"]  # an artifact written before the bin range was recorded
    old = QScorerSpec.from_dict(d)
    assert old.bins == (1.0, 5.0) and old.bin_source == "mos_range"


def test_cli_bin_range_flag():
    import argparse

    from lmmiqa.cli.train import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "q-scorer", "--out", "x", "--labels", "l.csv", "--root", ".",
                              "--bin-range", "1", "5"])
    assert config_from_args(args).bin_range == (1.0, 5.0)
