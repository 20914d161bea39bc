"""Load a dataset's label file into a :class:`Dataset` (rows of image path, score, reference, split).

One entry point, :func:`load_dataset`, serves every command that needs data (eval, bank build, distill,
train, tools fit, levels-bound): a named dataset (``koniq10k``, ``spaq``, …) or any CSV label file, a root
folder, an optional split. Nothing is downloaded. Paths in label files are relative to the root and may not
escape it (absolute paths and ``..`` components are rejected). Missing image files are reported with a count
and the first examples; with ``skip_missing=True`` they are dropped and the dataset records how many were.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.data.records import DatasetRecord, LabelFormat, custom_record, get_record
from lmmiqa.data.splits import SplitSpec, official_split_mask, parse_split, seeded_split_mask
from lmmiqa.errors import ConfigError, DataError, InputNotFoundError

log = logging.getLogger(__name__)

#: how many missing files are named in messages
MISSING_EXAMPLES = 5


@dataclass(frozen=True)
class DatasetItem:
    """One labelled image.

    Attributes:
        id: the image path exactly as written in the label file (relative to the root); unique in a dataset.
        path: the image path on disk (``root/id``), or ``id`` when no root was given.
        score: the opinion score as published (MOS or DMOS; see :attr:`Dataset.higher_is_better`).
        ref_id: the reference image path as written in the label file (FR datasets), else ``None``.
        ref: the reference path on disk, else ``None``.
        dis_type: the distortion type column, when the format has one.
        official: the official split part (``train``/``val``/``test``) when known.
    """

    id: str
    path: str
    score: float
    ref_id: str | None = None
    ref: str | None = None
    dis_type: str | None = None
    official: str | None = None

    @property
    def group(self) -> str:
        """The unit of splitting and bootstrapping: the reference image when there is one, else the image."""
        return self.ref_id if self.ref_id is not None else self.id


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset (or one split of it): the record, where it came from, and its items.

    Attributes:
        name: record name (``csv`` for a generic label file).
        record: the :class:`~lmmiqa.data.records.DatasetRecord`.
        format: the label layout actually read.
        labels: path of the label file read.
        root: image root folder, or ``None`` (label-only uses such as ``levels-bound``).
        items: the rows, in label-file order.
        split: the split specification (``all``, ``official:test``, ``seed:0:test`` ...).
        n_rows: rows in the label file before splitting.
        n_missing: image files that were missing and skipped (``skip_missing``).
        missing_examples: the first missing paths.
    """

    name: str
    record: DatasetRecord
    format: LabelFormat
    labels: str
    root: str | None
    items: tuple[DatasetItem, ...]
    split: str = "all"
    n_rows: int = 0
    n_missing: int = 0
    missing_examples: tuple[str, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    # -- basic access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[DatasetItem]:
        return iter(self.items)

    @property
    def higher_is_better(self) -> bool:
        """False for DMOS datasets (CSIQ, LIVE) and ``--lower-better`` label files."""
        return self.format.higher_is_better

    @property
    def score_range(self) -> tuple[float, float] | None:
        """Published range of the score column, when known."""
        return self.format.score_range

    @property
    def synthetic(self) -> bool:
        """True for generated ladders whose scores are pseudo-MOS."""
        return self.record.synthetic

    @property
    def full_reference(self) -> bool:
        """True when items carry reference images."""
        return any(it.ref_id is not None for it in self.items)

    def paths(self) -> list[str]:
        """Image paths on disk, in item order (the keys results are reported under)."""
        return [it.path for it in self.items]

    def ids(self) -> list[str]:
        """Image paths as written in the label file."""
        return [it.id for it in self.items]

    def scores(self) -> np.ndarray:
        """Opinion scores as float64, in item order."""
        return np.array([it.score for it in self.items], dtype=np.float64)

    def groups(self) -> list[str]:
        """Split/bootstrap unit of each item (reference for FR datasets, else the image)."""
        return [it.group for it in self.items]

    def item_for_path(self, path: str) -> DatasetItem | None:
        """The item whose on-disk path is ``path``, or ``None``."""
        if not self._index:
            self._index.update({it.path: i for i, it in enumerate(self.items)})
        i = self._index.get(path)
        return self.items[i] if i is not None else None

    # -- derived datasets -----------------------------------------------------------------------------
    def subset(self, mask: Sequence[bool] | np.ndarray, split: str | None = None) -> Dataset:
        """A dataset with only the items where ``mask`` is true."""
        m = np.asarray(mask, dtype=bool)
        if m.shape != (len(self.items),):
            raise ValueError(f"mask has shape {m.shape}, expected ({len(self.items)},)")
        items = tuple(it for it, keep in zip(self.items, m) if keep)
        return replace(self, items=items, split=split or self.split, _index={})

    def head(self, n: int) -> Dataset:
        """The first ``n`` items (``--limit``)."""
        return replace(self, items=self.items[: max(0, int(n))], _index={})

    def select(self, split: str | SplitSpec | None) -> Dataset:
        """Apply a split specification (see :mod:`lmmiqa.data.splits`) to this dataset."""
        spec = split if isinstance(split, SplitSpec) else parse_split(split)
        if spec.kind == "all":
            return replace(self, split="all")
        if spec.kind == "official":
            if not self.record.has_official_split:
                raise ConfigError(
                    f"dataset {self.name!r} has no official split; use seed:N or seed:N:train "
                    f"(datasets with one: koniq10k)"
                )
            mask = official_split_mask([it.official for it in self.items], spec.part)
            return self.subset(mask, str(spec))
        mask = seeded_split_mask(self.groups(), int(spec.seed or 0), spec.part)
        return self.subset(mask, str(spec))

    def missing_files(self) -> list[str]:
        """On-disk paths of items whose image file does not exist."""
        if self.root is None:
            raise ConfigError("this dataset was loaded without --root; image files cannot be checked")
        return [it.path for it in self.items if not os.path.isfile(it.path)]

    def check_files(self, skip_missing: bool = False) -> Dataset:
        """Verify that every image file exists.

        Raises:
            DataError: files are missing and ``skip_missing`` is false (the message gives the count and the
                first examples).
        Returns:
            ``self``, or with ``skip_missing`` a dataset without the missing items (``n_missing`` set).
        """
        missing = self.missing_files()
        if not missing:
            return self
        examples = tuple(missing[:MISSING_EXAMPLES])
        msg = (
            f"{len(missing)} of {len(self.items)} image file(s) of {self.name} are missing under "
            f"{self.root}: {', '.join(examples)}{' ...' if len(missing) > len(examples) else ''}"
        )
        if not skip_missing:
            raise InputNotFoundError(msg + " (check --root, or pass --skip-missing to evaluate the rest)")
        if len(missing) == len(self.items):
            raise InputNotFoundError(msg + "; none exists, so nothing is left with --skip-missing (check --root)")
        log.warning("%s; skipping them (--skip-missing)", msg)
        gone = set(missing)
        kept = replace(self, n_missing=self.n_missing + len(missing), missing_examples=examples, _index={})
        return kept.subset([it.path not in gone for it in self.items])

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (run configs and reports)."""
        return {
            "name": self.name,
            "title": self.record.title,
            "labels": self.labels,
            "root": self.root,
            "split": self.split,
            "format": self.format.name,
            "image_column": self.format.image_column,
            "score_column": self.format.score_column,
            "ref_column": self.format.ref_column,
            "higher_is_better": self.higher_is_better,
            "score_range": list(self.score_range) if self.score_range else None,
            "synthetic": self.synthetic,
            "full_reference": self.full_reference,
            "n": len(self.items),
            "n_rows": self.n_rows,
            "n_missing": self.n_missing,
            "missing_examples": list(self.missing_examples),
        }


# --------------------------------------------------------------------------- paths


def safe_relpath(path: str, where: str = "label file") -> str:
    """Validate a path from a label file: relative, no ``..`` component, not empty.

    Returns the path with surrounding whitespace removed. Raises DataError otherwise.
    """
    p = (path or "").strip()
    if not p:
        raise DataError(f"{where}: empty image path")
    # absolute POSIX or Windows paths, UNC paths and drive letters (C:, C:\\, C:/)
    if p[0] in "/\\" or (len(p) >= 2 and p[1] == ":" and p[0].isalpha()):
        raise DataError(f"{where}: absolute path {p!r} is not allowed; paths must be relative to --root")
    if ".." in p and ".." in p.replace("\\", "/").split("/"):
        raise DataError(f"{where}: path {p!r} escapes --root ('..' is not allowed)")
    return p


def _join(root: str | None, rel: str) -> str:
    return rel if root is None else os.path.join(root, rel)


# --------------------------------------------------------------------------- reading


def read_label_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV label file: (header, rows). Handles a UTF-8 BOM and CRLF line ends."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"label file not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read label file {p}: {err}") from err
    if not header:
        raise DataError(f"label file {p} is empty")
    return header, rows


def _parse_score(value: str | None, line: int, column: str, labels: str) -> float:
    try:
        v = float(str(value).strip())
    except (TypeError, ValueError) as err:
        raise DataError(f"{labels}:{line}: score column {column!r} has non-numeric value {value!r}") from err
    if not np.isfinite(v):
        raise DataError(f"{labels}:{line}: score column {column!r} is not finite ({value!r})")
    return v


def _official_candidates(record: DatasetRecord, labels: str, root: str | None) -> list[Path]:
    out = [Path(labels).parent / str(record.official_file)]
    if root is not None:
        out.append(Path(root) / str(record.official_file))
    return out


def _official_parts_from_file(record: DatasetRecord, labels: str, root: str | None) -> dict[str, str] | None:
    """Image file name -> official part, read from the record's companion file; ``None`` when it is not found."""
    for cand in _official_candidates(record, labels, root):
        if cand.is_file():
            header, rows = read_label_rows(cand)
            fmt = next((f for f in record.formats if f.split_column and f.matches(header)), None)
            if fmt is None:
                raise DataError(f"{cand} has no official split column; columns: {', '.join(header)}")
            values = {v: k for k, v in fmt.split_values}
            out: dict[str, str] = {}
            for row in rows:
                raw = (row.get(fmt.split_column or "") or "").strip()
                out[os.path.basename(row[fmt.image_column].strip())] = values.get(raw, raw)
            return out
    return None


def load_dataset(
    name: str | None = None,
    root: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    split: str | SplitSpec | None = None,
    *,
    image_column: str | None = None,
    score_column: str | None = None,
    ref_column: str | None = None,
    lower_better: bool | None = None,
    score_range: tuple[float, float] | None = None,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Dataset:
    """Load a named dataset or a generic CSV label file, optionally split, optionally checking image files.

    Args:
        name: a registered dataset name (``koniq10k``, ``spaq``, ``livec``, ``kadid10k``, ``agiqa3k``,
            ``csiq``, ``tid2013``, ``live``, ``synthetic``, ...); ``None`` for a generic CSV (``labels`` then
            required).
        root: folder the image paths of the label file are relative to (made absolute, so that item paths,
            which are the keys of results, do not depend on the working directory).
        labels: label file; for a named dataset defaults to ``root/<record.label_file>``.
        split: split specification (see :mod:`lmmiqa.data.splits`); ``None`` = every row.
        image_column, score_column, ref_column: override the columns of the layout.
        lower_better: override the score direction (``True`` for DMOS-like scores).
        score_range: override the ``(low, high)`` range of the score.
        check_files: verify that image files exist (requires ``root``).
        skip_missing: drop missing files instead of raising (the dataset records how many).

    Raises:
        UnknownNameError: unknown dataset name (lists the valid ones).
        ConfigError: inconsistent arguments (no labels and no root, unknown split, ...).
        DataError: unreadable or malformed label file, unsafe paths, duplicates, missing files.
    """
    root_s = os.path.abspath(os.fspath(root)) if root is not None else None  # stable result keys
    if root_s is not None and not Path(root_s).is_dir():
        raise InputNotFoundError(f"--root {root_s} is not a folder" + ("" if Path(root_s).exists() else " (it does not exist)"))
    if name is not None:
        record = get_record(name)
        if labels is None:
            if root_s is None:
                raise ConfigError(
                    f"dataset {record.name!r} needs --root DIR (holding {record.label_file}) or --labels CSV"
                )
            labels = os.path.join(root_s, record.label_file)
    else:
        if labels is None:
            raise ConfigError("give --dataset NAME --root DIR, or --labels CSV --root DIR")
        record = custom_record(
            image_column=image_column or "dis_img_path",
            score_column=score_column or "score",
            ref_column=ref_column,
            higher_is_better=not lower_better,
            score_range=score_range,
            label_file=os.path.basename(os.fspath(labels)),
        )
    labels_s = os.path.abspath(os.fspath(labels))  # run configs compare it: independent of the working directory
    header, rows = read_label_rows(labels_s)
    if name is not None:
        overridden = any(v is not None for v in (image_column, score_column, ref_column))
        fmt = record.default_format if overridden else record.detect_format(header, where=labels_s)
        fmt = fmt.with_overrides(
            image_column=image_column,
            score_column=score_column,
            ref_column=ref_column,
            higher_is_better=(not lower_better) if lower_better is not None else None,
            score_range=score_range,
        )
    else:
        fmt = record.default_format
    for col in (fmt.image_column, fmt.score_column, fmt.ref_column):
        if col is not None and col not in header:
            raise ConfigError(f"column {col!r} not in {labels_s}; columns: {', '.join(header)}")
    spec = split if isinstance(split, SplitSpec) else parse_split(split)

    split_values = dict((v, k) for k, v in fmt.split_values)
    items: list[DatasetItem] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{labels_s}:{line}"
        rel = safe_relpath(row.get(fmt.image_column) or "", where)
        if rel in seen:
            raise DataError(f"{where}: duplicate image {rel!r} (first on line {seen[rel]})")
        seen[rel] = line
        ref_id = None
        if fmt.ref_column is not None:
            raw_ref = (row.get(fmt.ref_column) or "").strip()
            ref_id = safe_relpath(raw_ref, where) if raw_ref else None
        official = None
        if fmt.split_column is not None:
            raw = (row.get(fmt.split_column) or "").strip()
            official = split_values.get(raw, raw) or None
        dis_type = None
        if fmt.type_column is not None:
            dis_type = (row.get(fmt.type_column) or "").strip() or None
        items.append(
            DatasetItem(
                id=rel,
                path=_join(root_s, rel),
                score=_parse_score(row.get(fmt.score_column), line, fmt.score_column, labels_s),
                ref_id=ref_id,
                ref=_join(root_s, ref_id) if ref_id is not None else None,
                dis_type=dis_type,
                official=official,
            )
        )
    if not items:
        raise DataError(f"label file {labels_s} has no rows")

    if record.official_file and fmt.split_column is None:
        # join the official split from the companion file when it is there (so that .select("official:...")
        # works later too); it is an error only when the official split is asked for now
        parts = _official_parts_from_file(record, labels_s, root_s)
        if parts is not None:
            items = [replace(it, official=parts.get(os.path.basename(it.id))) for it in items]
        elif spec.kind == "official":
            raise DataError(
                f"the official split of {record.title} needs {record.official_file}; looked in "
                f"{', '.join(str(c) for c in _official_candidates(record, labels_s, root_s))} (pass it as "
                "--labels, or place it next to the label file)"
            )

    ds = Dataset(
        name=record.name,
        record=record,
        format=fmt,
        labels=labels_s,
        root=root_s,
        items=tuple(items),
        n_rows=len(items),
    )
    ds = ds.select(spec)
    if check_files:
        if root_s is None:
            raise ConfigError(f"--root DIR is required to find the images of {ds.name}")
        ds = ds.check_files(skip_missing=skip_missing)
    return ds
