"""Files that survive interruption: append-only JSONL (read skipping a torn line, append after cutting it off) and
JSON written atomically."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmmiqa.types import json_safe

log = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file (none when it does not exist); a torn line (interrupted write) is skipped."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a torn line (interrupted write)", path)
    return rows


class JsonlAppender:
    """Append JSON rows, flushed and fsync'd per call; a torn last line left by a killed run is cut off first,
    so the next row never gets glued to it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                with self.path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._f.write("".join(json.dumps(json_safe(r)) + "\n" for r in rows))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON-safe ``data`` atomically (a temporary file, then a rename): readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
