"""Types, registry, errors, and the lightness of ``import lmmiqa``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lmmiqa
from lmmiqa import registry
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.types import ScoreResult


def test_import_lmmiqa_does_not_import_torch():
    code = "import sys, lmmiqa, lmmiqa.cli; lmmiqa.list_methods(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


def test_score_result_to_dict_json_safe_roundtrip():
    r = ScoreResult(
        image="a.png", score=np.float32(3.5), method="q-align", scale=(1.0, 5.0), model="m",
        probabilities={"1": np.float64(0.5), "2": 0.5}, details={"arr": np.arange(2), "nan": float("nan")},
        timings={"forward": 0.1},
    )
    d = r.to_dict()
    assert list(d) == ["image", "score", "higher_is_better", "scale", "method", "model", "probabilities", "details", "error", "timings"]
    s = json.dumps(d, allow_nan=False)
    back = ScoreResult.from_dict(json.loads(s))
    assert back.score == 3.5 and back.scale == (1.0, 5.0) and back.details["arr"] == [0, 1] and back.details["nan"] is None
    assert back.ok


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        lmmiqa.create_scorer("qalgn")
    msg = str(info.value)
    assert "did you mean 'q-align'" in msg and "standard-guided" in msg


def test_unknown_backend_lists_valid_names():
    with pytest.raises(UnknownNameError, match="known: .*openai.*transformers"):
        lmmiqa.create_scorer("q-align", backend="vllm-inprocess")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown option.*levels.*valid:"):
        lmmiqa.create_scorer("q-align", levels=7)


@pytest.mark.parametrize("kind", sorted(registry.TABLES))
def test_every_registry_entry_resolves(kind):
    for name in registry.names(kind):
        obj = registry.resolve(kind, name)
        assert obj is not None, (kind, name)


def test_every_method_has_a_summary_and_config():
    for name in registry.names("method"):
        cls = registry.resolve("method", name)
        assert cls.name == name or name in registry.ALIASES.get("method", {}).values()
        assert lmmiqa.list_methods()[name]
