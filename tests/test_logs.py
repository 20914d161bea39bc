"""How warnings are shown (lmmiqa.logs): one plain line on the command line, one record in a server's log, and
never at the cost of Python callers who record them (issue 23 §6)."""

from __future__ import annotations

import logging
import warnings

import pytest

from lmmiqa.logs import WARNINGS_LOGGER, log_warnings, show_warnings_as_lines, warning_line
from lmmiqa.methods.coverage import LowCoveredMassWarning


def test_warning_line_is_one_plain_line():
    assert warning_line("q-align: low\nmass", LowCoveredMassWarning, "/x/mllm.py", 212) == "warning: q-align: low mass"
    other = warning_line("old API", DeprecationWarning, "/site-packages/ray/data/context.py", 1285)
    assert other == "warning: DeprecationWarning: old API (context.py:1285)"


def test_cli_display_is_one_line_and_recording_still_works():
    plain = warnings.formatwarning("x", UserWarning, "f.py", 1)
    undo = show_warnings_as_lines()
    try:
        # what Python prints for a warning (its formatwarning), not `.../mllm.py:212: LowCoveredMassWarning: ...`
        shown = warnings.formatwarning("q-align: the level tokens hold only 0.01", LowCoveredMassWarning,
                                       "/src/lmmiqa/methods/mllm.py", 212, "warnings.warn(msg)")
        assert shown == "warning: q-align: the level tokens hold only 0.01\n"
        with pytest.warns(LowCoveredMassWarning, match="hold only"):  # Python callers still get the object
            warnings.warn("hold only", LowCoveredMassWarning, stacklevel=1)
    finally:
        undo()
    assert warnings.formatwarning("x", UserWarning, "f.py", 1) == plain  # undone


def test_server_log_gets_one_structured_record(caplog):
    undo = log_warnings()
    try:
        with caplog.at_level(logging.WARNING, logger=WARNINGS_LOGGER), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("standard-guided: low\ncovered mass", LowCoveredMassWarning, stacklevel=1)
    finally:
        undo()
    (rec,) = [r for r in caplog.records if r.name == WARNINGS_LOGGER]
    assert rec.getMessage() == "standard-guided: low covered mass"
    assert rec.warning_category == "LowCoveredMassWarning" and rec.warning_origin.startswith(__file__ + ":")
