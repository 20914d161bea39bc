"""Level scales and the read-out math, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmmiqa.errors import ConfigError, TokenizationError
from lmmiqa.levels import (
    LETTER_SCALE,
    QALIGN_SCALE,
    argmax_level,
    closed_set_probs,
    covered_mass,
    expected_score,
    level_details,
    readout,
    resolve_token_ids,
    score_std,
    standard_scale,
)


def test_qalign_scale_order_and_values():
    assert QALIGN_SCALE.tokens == ("bad", "poor", "fair", "good", "excellent")
    assert QALIGN_SCALE.values == (1, 2, 3, 4, 5)
    assert QALIGN_SCALE.keys == ["1", "2", "3", "4", "5"]
    assert LETTER_SCALE.tokens == ("E", "D", "C", "B", "A")


def test_standard_scale_k7_matches_paper():
    s = standard_scale(7)
    assert dict(zip(s.tokens, s.words)) == {
        "7": "Perfect", "6": "Excellent", "5": "Good", "4": "Fair", "3": "Bad", "2": "Poor", "1": "Very Bad",
    }


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_standard_scales_supported(k):
    s = standard_scale(k)
    assert s.k == k and s.low == 1 and s.high == k and len(set(s.words)) == k


@pytest.mark.parametrize("k", [2, 4, 10, "x"])
def test_standard_scale_rejects_unsupported(k):
    with pytest.raises(ConfigError, match="3, 5, 7, 9"):
        standard_scale(k)


def test_candidates_leading_space_depends_on_prefix():
    assert QALIGN_SCALE.candidates("The quality of the image is")[0] == " bad"
    assert QALIGN_SCALE.candidates("The quality of the image is ")[0] == "bad"
    assert standard_scale(3).candidates("") == ["1", "2", "3"]


def test_closed_set_probs_hand_values():
    p = closed_set_probs(np.log(np.array([[0.1, 0.3, 0.1]])))
    np.testing.assert_allclose(p, [[0.2, 0.6, 0.2]])
    # shift invariance and -inf handling
    p2 = closed_set_probs(np.array([[-1000.0, -1000.0 + math.log(3), -np.inf]]))
    np.testing.assert_allclose(p2, [[0.25, 0.75, 0.0]])
    # a row with no visible candidate is NaN, not a made-up distribution
    p3 = closed_set_probs(np.array([[-np.inf, -np.inf]]))
    assert np.isnan(p3).all()


def test_expected_std_argmax_hand_values():
    p = np.array([[0.0, 0.5, 0.5, 0.0, 0.0]])
    v = [1, 2, 3, 4, 5]
    assert expected_score(p, v)[0] == pytest.approx(2.5)
    assert score_std(p, v)[0] == pytest.approx(0.5)
    # tie -> lower level, deterministically
    assert argmax_level(p, v)[0] == 2.0
    assert readout(p, v, "argmax")[0] == 2.0
    assert readout(p, v, "expected")[0] == pytest.approx(2.5)
    one_hot = np.array([[0, 0, 0, 0, 1.0]])
    assert expected_score(one_hot, v)[0] == 5.0 and score_std(one_hot, v)[0] == 0.0
    with pytest.raises(ConfigError, match="expected, argmax"):
        readout(p, v, "mean")


def test_covered_mass():
    lp = np.log(np.array([[0.2, 0.3, 1e-9]]))
    assert covered_mass(lp)[0] == pytest.approx(0.5, abs=1e-8)
    assert covered_mass(np.array([[-np.inf, np.log(0.4)]]))[0] == pytest.approx(0.4)


def test_level_details_keys():
    probs, det = level_details(np.array([0.1, 0.2, 0.3, 0.2, 0.2]), QALIGN_SCALE)
    assert list(probs) == ["1", "2", "3", "4", "5"]
    assert det["level_words"]["5"] == "excellent"
    assert det["argmax"] == 3.0
    assert det["expected"] == pytest.approx(0.1 + 0.4 + 0.9 + 0.8 + 1.0)


class _Tok:
    """A minimal word-level tokenizer: known words are one token, others split by characters."""

    vocab = {"The": 0, " quality": 1, " is": 2, " good": 3, " bad": 4, "1": 5, "2": 6}

    def encode(self, text, add_special_tokens=False):
        out = []
        i = 0
        while i < len(text):
            for w in sorted(self.vocab, key=len, reverse=True):
                if text.startswith(w, i):
                    out.append(self.vocab[w])
                    i += len(w)
                    break
            else:
                out.append(100 + ord(text[i]))
                i += 1
        return out

    def convert_ids_to_tokens(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return [inv.get(i, chr(i - 100)) for i in ids]


def test_resolve_token_ids_in_context():
    tok = _Tok()
    assert resolve_token_ids(tok, [" good", " bad"], "The quality is") == [3, 4]
    assert resolve_token_ids(tok, ["1", "2"], "") == [5, 6]


def test_resolve_token_ids_fails_loudly_listing_pieces():
    with pytest.raises(TokenizationError, match=r"' fair' -> 5 tokens"):
        resolve_token_ids(_Tok(), [" good", " fair"], "The quality is")
    with pytest.raises(TokenizationError, match="duplicate"):
        resolve_token_ids(_Tok(), [" good", " good"], "The quality is")
