"""Prompts and level tables are frozen: a change of wording must be a deliberate, reviewed diff.

To accept a deliberate change, run ``LMMIQA_UPDATE_GOLDEN=1 pytest tests/test_golden_prompts.py`` and commit
the updated ``tests/golden/*.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmmiqa import levels, prompts

GOLDEN = Path(__file__).parent / "golden"


def _current() -> dict:
    out = {
        "q-align": {"question": prompts.QALIGN_QUESTION, "answer_prefix": prompts.QALIGN_ANSWER_PREFIX,
                    "scale": levels.QALIGN_SCALE.to_dict()},
        "letters": levels.LETTER_SCALE.to_dict(),
    }
    for k in levels.SUPPORTED_K:
        s = levels.standard_scale(k)
        out[f"standard-guided-{k}"] = {"system": prompts.standard_system(s), "user": prompts.standard_user(s),
                                       "scale": s.to_dict()}
    # other modules append their named prompt constants to lmmiqa.prompts: freeze every public string
    out["constants"] = {
        name: value for name, value in sorted(vars(prompts).items()) if name.isupper() and isinstance(value, str)
    }
    return out


def test_prompts_match_golden():
    path = GOLDEN / "prompts.json"
    current = _current()
    if os.environ.get("LMMIQA_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    golden = json.loads(path.read_text(encoding="utf-8"))
    assert current == golden, "prompt wording changed: review and run with LMMIQA_UPDATE_GOLDEN=1 to accept"


def test_paper_wording_k7():
    s = levels.standard_scale(7)
    assert prompts.standard_system(s) == (
        "You are a helpful assistant to evaluate image quality. You will be given standards for each quality level. "
        "The quality standard is listed as follows: 7: Perfect, 6: Excellent, 5: Good, 4: Fair, 3: Bad, 2: Poor, "
        "1: Very Bad. The higher the image quality is, the higher the score should be."
    )
    assert prompts.standard_user(s) == "Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7]."
    assert prompts.QALIGN_QUESTION == "How would you rate the quality of this image?"
    assert prompts.QALIGN_ANSWER_PREFIX == "The quality of the image is"
