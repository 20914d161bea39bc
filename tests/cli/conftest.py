"""Helpers for the command-line tests: run ``lmmiqa`` in a subprocess, offline, as a user would."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")

#: prints, at exit, how often each named function ran (the counts of loading attempts)
COUNTING = """
import atexit, importlib, sys
counts = {}
def count(path):
    mod_name, _, attr = path.rpartition(":")
    cls_name, _, meth = attr.partition(".")
    owner = getattr(importlib.import_module(mod_name), cls_name)
    original = getattr(owner, meth)
    def wrapper(*a, **k):
        counts[path] = counts.get(path, 0) + 1
        return original(*a, **k)
    setattr(owner, meth, wrapper)
for target in sys.argv[1].split(",") if sys.argv[1] else []:
    count(target)
atexit.register(lambda: print("COUNTS", counts, file=sys.stderr))
from lmmiqa.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": SRC}
    env.pop("LMMIQA_INTERFACE", None)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(args, env=None, count=(), timeout=120, input=None, cwd=None)``: ``python -m lmmiqa ARGS`` offline.

    With ``count`` (``"module:Class.method"`` names) the result's ``counts`` says how often each ran; ``message``
    is stderr without that line.
    """

    def run(args, env=None, count=(), timeout=120, input=None, cwd=None):
        if count:
            cmd = [sys.executable, "-c", COUNTING, ",".join(count), *map(str, args)]
        else:
            cmd = [sys.executable, "-m", "lmmiqa", *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(env), timeout=timeout, input=input,
                           cwd=cwd)
        r.counts = _counts(r.stderr) if count else {}  # type: ignore[attr-defined]
        r.message = "\n".join(x for x in r.stderr.splitlines() if not x.startswith("COUNTS "))  # type: ignore[attr-defined]
        return r

    return run


def _counts(stderr: str) -> dict[str, int]:
    """The ``COUNTS {...}`` line printed by a counting run."""
    import ast

    line = next((x for x in stderr.splitlines() if x.startswith("COUNTS ")), None)
    assert line is not None, stderr
    return ast.literal_eval(line[len("COUNTS "):])
