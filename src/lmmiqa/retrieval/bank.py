"""The IQARAG reference bank (METHODS §2.1–2.2): rated images, their embeddings and a faiss index, on disk.

A bank folder is self-describing:

* ``bank.json`` — schema name and version, the encoder (spec, kind, model, pooling), whether vectors are L2
  normalized, count and dimension, the MOS range and direction, the index kind and parameters, the data it was
  built from, and the lmmiqa version that wrote it. Written last: a folder without it is not a bank.
* ``items.csv`` — ``id, path, mos, mos_norm, bin, content_hash``; row *i* is bank item *i*. ``mos`` is the score
  as published; ``mos_norm`` is min–max normalized over the bank to ``[0, 1]`` with **1 = best** (lower-is-better
  scores such as DMOS are flipped; ``bank.json`` records it); ``bin`` is its MOS fifth (1..5, see
  :mod:`lmmiqa.retrieval.select`); ``content_hash`` identifies the decoded pixels (the query itself is never its
  own reference, even under another file name).
* ``embeddings.npy`` — float32 [count, dim], row *i* = item *i* (L2-normalized when ``normalize`` is true).
* ``index.faiss`` — the search index over those rows: exact ``IndexFlatL2`` (default) or, for banks of more
  than ~100k items, approximate ``hnsw`` (``IndexHNSWFlat``) or ``ivf`` (``IndexIVFFlat``).

Decision: vectors are L2-normalized by default (``normalize=True``), so that L2 distance ranks like cosine
similarity and the norm of pooled features (which varies with image content for mean-pooled tokens) does not
dominate; the paper specifies L2 distance and does not say whether features are normalized.

Building is resumable: vectors are written in chunks under ``DIR/partial/`` (each chunk atomically), and running
the same build again continues after the last finished chunk; the bank files appear only when every chunk is
done. faiss (extra ``rag``) and the encoders' torch/transformers are imported lazily.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError, LmmiqaError, require
from lmmiqa.retrieval.encoders import Encoder, EncoderSpec
from lmmiqa.retrieval.select import mos_bins, normalize_mos

if TYPE_CHECKING:
    from lmmiqa.data.loader import Dataset

log = logging.getLogger(__name__)

SCHEMA = "lmmiqa.bank"
SCHEMA_VERSION = 1
BANK_JSON = "bank.json"
ITEMS_CSV = "items.csv"
EMBEDDINGS_NPY = "embeddings.npy"
INDEX_FAISS = "index.faiss"
PARTIAL_DIR = "partial"
BUILD_JSON = "build.json"
ITEM_COLUMNS = ["id", "path", "mos", "mos_norm", "bin", "content_hash"]

#: index kinds; ``auto`` = ``flat`` up to :data:`APPROX_THRESHOLD` items, ``hnsw`` above
INDEX_KINDS = ("flat", "hnsw", "ivf", "auto")
APPROX_THRESHOLD = 100_000
DEFAULT_CHUNK = 512
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
#: faiss recommends at least 39 training points per IVF list
IVF_MIN_POINTS_PER_LIST = 39
#: IVF searches 1/8 of its lists by default (nprobe = ceil(nlist / 8))
IVF_PROBE_FRACTION = 8


def content_hash(img: Any) -> str:
    """Hash of an RGB image's decoded pixels and size (same picture in another file -> same hash)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.width}x{img.height}:{img.mode}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _faiss() -> Any:
    return require("faiss", "rag", "reference banks (IQARAG)")


def resolve_index_kind(kind: str, n: int) -> str:
    """``auto`` -> ``flat`` up to :data:`APPROX_THRESHOLD` items, else ``hnsw``; others unchanged (validated)."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        return "flat" if n <= APPROX_THRESHOLD else "hnsw"
    return kind


def build_index(vectors: np.ndarray, kind: str = "flat", params: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """A faiss L2 index over ``vectors`` (float32 [n, d]) and the parameters used (saved in ``bank.json``).

    Args:
        vectors: the bank vectors.
        kind: ``flat`` (exact), ``hnsw`` or ``ivf`` (approximate), or ``auto``.
        params: ``hnsw``: ``M``, ``ef_construction``, ``ef_search``; ``ivf``: ``nlist``, ``nprobe``.
    """
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = resolve_index_kind(kind, n)
    p = dict(params or {})
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
        used: dict[str, Any] = {}
    elif kind == "hnsw":
        m = int(p.get("M", HNSW_M))
        index = faiss.IndexHNSWFlat(d, m)
        index.hnsw.efConstruction = int(p.get("ef_construction", HNSW_EF_CONSTRUCTION))
        used = {"M": m, "ef_construction": int(index.hnsw.efConstruction), "ef_search": int(p.get("ef_search", HNSW_EF_SEARCH))}
    else:  # ivf
        default_nlist = max(1, min(int(4 * math.sqrt(n)), n // IVF_MIN_POINTS_PER_LIST))
        nlist = int(p.get("nlist", default_nlist))
        if not 1 <= nlist <= n:
            raise ConfigError(f"ivf nlist must be in 1..{n}, got {nlist}")
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        index.train(x)
        used = {"nlist": nlist, "nprobe": int(p.get("nprobe", max(1, -(-nlist // IVF_PROBE_FRACTION))))}
    index.add(x)
    _apply_search_params(index, kind, used)
    return index, {"kind": kind, "params": used}


def _apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(params.get("ef_search", HNSW_EF_SEARCH))
    elif kind == "ivf":
        index.nprobe = int(params.get("nprobe", 1))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    v = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


# --------------------------------------------------------------------------- the loaded bank


@dataclass(frozen=True)
class BankItem:
    """One rated reference image of a bank."""

    id: str
    path: str
    mos: float
    mos_norm: float
    bin: int
    content_hash: str


@dataclass
class Bank:
    """A loaded reference bank (see the module docstring for the folder layout).

    Attributes:
        dir: the bank folder.
        meta: the parsed ``bank.json``.
        items: the rated images, row order.
        index: the faiss index (``None`` when loaded with ``index=False``).
    """

    dir: Path
    meta: dict[str, Any]
    items: list[BankItem]
    index: Any = None
    _by_path: dict[str, int] | None = field(default=None, repr=False)
    _by_hash: dict[str, int] | None = field(default=None, repr=False)

    # -- description -------------------------------------------------------------------------------------
    @property
    def encoder(self) -> EncoderSpec:
        """The encoder the vectors come from (queries must use the same)."""
        return EncoderSpec.from_dict(self.meta["encoder"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def normalize(self) -> bool:
        return bool(self.meta.get("normalize", True))

    @property
    def fingerprint(self) -> str:
        """Short hash of ``bank.json`` (changes whenever the bank is rebuilt)."""
        text = json.dumps(self.meta, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def bins(self) -> np.ndarray:
        """MOS bin (1..5) of every item, row order."""
        return np.array([it.bin for it in self.items], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """What ``lmmiqa bank info`` prints (JSON-safe)."""
        counts = np.bincount(self.bins(), minlength=6)[1:]
        return {
            "dir": str(self.dir),
            "schema": f"{self.meta['schema']} v{self.meta['schema_version']}",
            "encoder": self.meta["encoder"]["spec"],
            "pooling": self.meta["encoder"].get("pooling"),
            "normalize": self.normalize,
            "count": self.count,
            "dim": self.dim,
            "index": self.meta["index"],
            "mos": self.meta["mos"],
            "bins": {str(i + 1): int(c) for i, c in enumerate(counts)},
            "source": self.meta.get("source"),
            "n_skipped": self.meta.get("n_skipped", 0),
            "created": self.meta.get("created"),
            "created_with": self.meta.get("created_with"),
            "fingerprint": self.fingerprint,
        }

    # -- search --------------------------------------------------------------------------------------------
    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Query vectors as the bank stores vectors: float32 and, for a normalized bank, unit length."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if v.shape[1] != self.dim:
            raise ConfigError(
                f"query vectors have dimension {v.shape[1]} but the bank's are {self.dim} "
                f"(encoder {self.meta['encoder']['spec']})"
            )
        return l2_normalize(v) if self.normalize else np.ascontiguousarray(v)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query: (Euclidean distances [B, k], rows [B, k]); ``-1`` = no hit.

        ``vectors`` are raw encoder outputs (normalized here when the bank is).
        """
        if self.index is None:
            raise ConfigError("this bank was loaded without its index (index=False)")
        q = self.prepare(vectors)
        k = max(1, min(int(k), self.count))
        d2, ix = self.index.search(q, k)
        return np.sqrt(np.maximum(d2.astype(np.float64), 0.0)), ix.astype(np.int64)

    # -- identity ------------------------------------------------------------------------------------------
    def row_of_path(self, path: str) -> int | None:
        """The row of the item stored at ``path`` (compared after resolving links and ``..``), or ``None``."""
        if self._by_path is None:
            self._by_path = {_canon(it.path): i for i, it in enumerate(self.items)}
        return self._by_path.get(_canon(path))

    def row_of_hash(self, digest: str) -> int | None:
        """The row of the item with this :func:`content_hash`, or ``None``."""
        if self._by_hash is None:
            self._by_hash = {}
            for i, it in enumerate(self.items):
                self._by_hash.setdefault(it.content_hash, i)
        return self._by_hash.get(digest)

    def overlap(self, paths: Sequence[str], *, limits: Any = None, workers: int = 0) -> int:
        """How many of ``paths`` are bank items: the same file, or the same picture under another name or in
        another folder (same :func:`content_hash` of the decoded pixels). See :meth:`overlap_report`."""
        return int(self.overlap_report(paths, limits=limits, workers=workers)["n"])

    def overlap_report(self, paths: Sequence[str], *, limits: Any = None, workers: int = 0) -> dict[str, Any]:
        """The leakage check behind ``lmmiqa eval``'s guard: which of ``paths`` are bank items.

        A path that is a bank item's file counts at once; every other file is decoded (``limits``, ``workers``
        threads) and counts when its pixels hash to a bank item's ``content_hash`` — a copy, a re-encoded
        lossless file or a renamed file of a bank image would otherwise leak its own score into an evaluation.

        Returns:
            ``{"n", "by_path", "by_content", "unreadable", "examples"}`` (counts of distinct paths; up to five
            overlapping paths; unreadable files cannot be compared and are not counted).
        """
        from lmmiqa.images import load_many

        uniq = list(dict.fromkeys(p for p in paths if isinstance(p, (str, os.PathLike))))
        uniq = [os.fspath(p) for p in uniq]
        by_path = [p for p in uniq if self.row_of_path(p) is not None]
        rest = [p for p in uniq if self.row_of_path(p) is None]
        by_content: list[str] = []
        unreadable = 0
        step = 64  # decode in chunks: bounded memory on large evaluation sets
        for start in range(0, len(rest), step):
            chunk = rest[start : start + step]
            for p, it in zip(chunk, load_many(chunk, limits, workers=int(workers))):
                if not it.ok:
                    unreadable += 1
                elif self.row_of_hash(content_hash(it.image)) is not None:
                    by_content.append(p)
        found = by_path + by_content
        return {"n": len(found), "by_path": len(by_path), "by_content": len(by_content), "unreadable": unreadable,
                "examples": found[:5]}

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None, index: bool = True) -> Bank:
        """Load and verify a bank folder.

        Args:
            path: the bank folder.
            root: rebase item paths onto this folder (``root/id``), for a bank moved to another machine.
            index: also load ``index.faiss`` (needed for :meth:`search`).

        Raises:
            DataError: missing file, unfinished build, wrong schema, or counts/dimensions that disagree between
                ``bank.json``, ``items.csv``, ``embeddings.npy`` and ``index.faiss``.
        """
        d = Path(path)
        if not d.is_dir():
            raise DataError(f"bank folder not found: {d}")
        meta_path = d / BANK_JSON
        if not meta_path.is_file():
            if (d / PARTIAL_DIR).is_dir():
                raise DataError(
                    f"{d}: the bank build did not finish ({PARTIAL_DIR}/ holds its progress); run the same "
                    "`lmmiqa bank build` command again to resume it"
                )
            raise DataError(f"{d} is not a reference bank: {BANK_JSON} is missing (build one with `lmmiqa bank build`)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{meta_path} is not valid JSON: {err}") from err
        _check_meta(meta, meta_path)
        needed = [ITEMS_CSV, EMBEDDINGS_NPY] + ([INDEX_FAISS] if index else [])
        missing = [name for name in needed if not (d / name).is_file()]
        if missing:
            raise DataError(f"bank {d} is incomplete: missing {', '.join(missing)} (rebuild it with `lmmiqa bank build`)")
        count, dim = int(meta["count"]), int(meta["dim"])
        items = _read_items(d / ITEMS_CSV, root)
        if len(items) != count:
            raise DataError(f"bank {d}: {ITEMS_CSV} has {len(items)} rows but {BANK_JSON} says count = {count}")
        try:
            emb = np.load(d / EMBEDDINGS_NPY, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"bank {d}: cannot read {EMBEDDINGS_NPY}: {err}") from err
        if emb.dtype != np.float32 or emb.ndim != 2:
            raise DataError(f"bank {d}: {EMBEDDINGS_NPY} must be a 2-D float32 array, got {emb.dtype} {emb.shape}")
        if emb.shape != (count, dim):
            raise DataError(
                f"bank {d}: {EMBEDDINGS_NPY} has shape {emb.shape} but {BANK_JSON} says count = {count}, dim = {dim}"
            )
        del emb
        faiss_index = None
        if index:
            faiss = _faiss()
            try:
                faiss_index = faiss.read_index(str(d / INDEX_FAISS))
            except Exception as err:  # faiss raises RuntimeError with its own message
                raise DataError(f"bank {d}: cannot read {INDEX_FAISS}: {err}") from err
            if int(faiss_index.ntotal) != count or int(faiss_index.d) != dim:
                raise DataError(
                    f"bank {d}: {INDEX_FAISS} holds {faiss_index.ntotal} vectors of dimension {faiss_index.d} but "
                    f"{BANK_JSON} says count = {count}, dim = {dim}"
                )
            idx_meta = meta.get("index") or {}
            _apply_search_params(faiss_index, str(idx_meta.get("kind", "flat")), dict(idx_meta.get("params") or {}))
        return cls(dir=d, meta=meta, items=items, index=faiss_index)

    def embeddings(self) -> np.ndarray:
        """The bank vectors (memory-mapped, read-only), [count, dim]."""
        return np.load(self.dir / EMBEDDINGS_NPY, mmap_mode="r")


def _canon(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _check_meta(meta: Any, where: Path) -> None:
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        found = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{where} is not an lmmiqa reference bank (schema {found!r}, expected {SCHEMA!r})")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise DataError(f"{where}: invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{where}: bank schema version {version} was written by a newer lmmiqa; this one reads up to "
            f"version {SCHEMA_VERSION} (upgrade lmmiqa)"
        )
    for key in ("encoder", "count", "dim", "mos", "index"):
        if key not in meta:
            raise DataError(f"{where}: missing field {key!r}")
    try:
        EncoderSpec.from_dict(meta["encoder"])
        if int(meta["count"]) < 1 or int(meta["dim"]) < 1:
            raise ValueError("count and dim must be >= 1")
    except (KeyError, TypeError, ValueError, LmmiqaError) as err:
        raise DataError(f"{where}: invalid bank description: {err}") from err


def _read_items(path: Path, root: str | os.PathLike[str] | None) -> list[BankItem]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in ITEM_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}; columns: {', '.join(header)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    base = os.path.abspath(os.fspath(root)) if root is not None else None
    items = []
    for line, row in enumerate(rows, start=2):
        try:
            mos_norm = float(row["mos_norm"])
            b = int(row["bin"])
            item = BankItem(
                id=row["id"],
                path=os.path.join(base, row["id"]) if base is not None else row["path"],
                mos=float(row["mos"]),
                mos_norm=mos_norm,
                bin=b,
                content_hash=row["content_hash"],
            )
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}:{line}: malformed row ({err})") from err
        if not (0.0 <= mos_norm <= 1.0) or not 1 <= b <= 5:
            raise DataError(f"{path}:{line}: mos_norm {mos_norm} / bin {b} out of range")
        items.append(item)
    return items


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BankSource:
    """The rated images a bank is built from: ids (relative paths), on-disk paths and scores."""

    ids: tuple[str, ...]
    paths: tuple[str, ...]
    scores: tuple[float, ...]
    higher_is_better: bool = True
    root: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.paths) == len(self.scores)):
            raise ConfigError("ids, paths and scores must have the same length")
        if not self.ids:
            raise DataError("no images to build a bank from")

    @classmethod
    def from_dataset(cls, ds: Dataset) -> BankSource:
        """From a loaded :class:`lmmiqa.data.Dataset` (a named dataset or a label CSV, already split)."""
        return cls(
            ids=tuple(ds.ids()),
            paths=tuple(ds.paths()),
            scores=tuple(float(s) for s in ds.scores()),
            higher_is_better=ds.higher_is_better,
            root=ds.root,
            summary=ds.summary(),
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, p, s in zip(self.ids, self.paths, self.scores):
            h.update(f"{i}\0{p}\0{s!r}\n".encode())
        h.update(str(self.higher_is_better).encode())
        return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib import metadata

    import lmmiqa

    out = {"lmmiqa": lmmiqa.__version__}
    for pkg in ("faiss-cpu", "faiss-gpu", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def build_bank(
    out: str | os.PathLike[str],
    source: Dataset | BankSource,
    encoder: Encoder,
    *,
    index: str = "flat",
    index_params: dict[str, Any] | None = None,
    normalize: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    decode_workers: int = 4,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool | None = None,
    max_pixels: int | None = None,
) -> Bank:
    """Embed rated images and write a bank folder (resumable; see the module docstring).

    Args:
        out: the bank folder (created).
        source: a loaded :class:`lmmiqa.data.Dataset` (any named dataset or label CSV, split applied), or a
            :class:`BankSource`.
        encoder: the image encoder (:func:`lmmiqa.retrieval.encoders.create_encoder`).
        index: ``flat`` (exact, default), ``hnsw``/``ivf`` (approximate, for > ~100k items) or ``auto``.
        index_params: see :func:`build_index`.
        normalize: L2-normalize vectors (bank and queries); recorded in ``bank.json``.
        chunk_size: images embedded and saved per chunk (the unit of resumption).
        decode_workers: threads decoding images.
        skip_bad: leave out images that cannot be decoded (counted in ``bank.json`` as ``n_skipped``) instead of
            stopping with an error.
        force: rebuild when ``out`` already holds a bank, or an unfinished build of different data or encoder.
        progress: progress bar on stderr (default: when stderr is a terminal).
        max_pixels: decompression-bomb guard for the images (default: :mod:`lmmiqa.images`' limit).

    Returns:
        The loaded bank.

    Raises:
        DataError: unreadable images (without ``skip_bad``), constant scores, an existing bank or an unfinished
            build of something else (without ``force``).
    """
    from lmmiqa.images import ImageLimits, load_many

    src = source if isinstance(source, BankSource) else BankSource.from_dataset(source)
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    resolve_index_kind(index, len(src.ids))  # validate early
    d = Path(out)
    partial = d / PARTIAL_DIR
    bank_files = [d / n for n in (BANK_JSON, ITEMS_CSV, EMBEDDINGS_NPY, INDEX_FAISS)]
    if (d / BANK_JSON).exists():
        if not force:
            raise DataError(f"{d} already holds a bank; pass --force (force=True) to rebuild it")
        for f in bank_files:
            f.unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    plan = {
        "encoder": encoder.spec.to_dict(),
        "normalize": bool(normalize),
        "chunk_size": int(chunk_size),
        "n": len(src.ids),
        "source": src.fingerprint(),
    }
    build_json = partial / BUILD_JSON
    if build_json.exists():
        try:
            old = json.loads(build_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != plan:
            if not force:
                diff = sorted(k for k in plan if not isinstance(old, dict) or old.get(k) != plan[k])
                raise DataError(
                    f"{d} holds an unfinished bank build of different {', '.join(diff) or 'settings'}; pass --force "
                    "(force=True) to discard it and start over, or use another folder"
                )
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(build_json, json.dumps(plan, indent=2) + "\n")

    limits = ImageLimits(max_pixels=max_pixels) if max_pixels else ImageLimits()
    n = len(src.ids)
    n_chunks = (n + chunk_size - 1) // chunk_size
    chunk_files = [partial / f"chunk_{c:06d}.npz" for c in range(n_chunks)]
    done = [f.exists() for f in chunk_files]
    if any(done):
        log.info("%s: resuming bank build, %d of %d chunk(s) already done", d, sum(done), n_chunks)
    bar = _progress(n, progress, desc=f"bank {encoder.spec.kind}")
    t0 = time.perf_counter()
    try:
        if bar is not None:
            bar.update(sum(min(chunk_size, n - c * chunk_size) for c in range(n_chunks) if done[c]))
        for c in range(n_chunks):
            if done[c]:
                continue
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            loaded = load_many(list(src.paths[lo:hi]), limits, start=lo, workers=int(decode_workers))
            bad = [(src.paths[lo + j], it.error) for j, it in enumerate(loaded) if not it.ok]
            if bad and not skip_bad:
                listed = "; ".join(f"{p}: {e}" for p, e in bad[:5])
                raise DataError(
                    f"{len(bad)} image(s) of the bank cannot be opened ({listed}{' ...' if len(bad) > 5 else ''}); "
                    "fix or remove them, or pass --skip-bad (skip_bad=True) to leave them out"
                )
            ok = np.array([it.ok for it in loaded], dtype=bool)
            good = [it.image for it in loaded if it.ok]
            hashes = np.array([content_hash(it.image) if it.ok else "" for it in loaded], dtype=object)
            if good:
                vecs = encoder.embed(good)
                if normalize:
                    vecs = l2_normalize(vecs)
            else:
                vecs = np.zeros((0, 0), dtype=np.float32)
            _atomic_save_npz(chunk_files[c], emb=vecs, ok=ok, hash=hashes.astype(str))
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    return _finish(d, src, encoder, chunk_files, index, index_params, normalize, seconds)


def _finish(
    d: Path,
    src: BankSource,
    encoder: Encoder,
    chunk_files: list[Path],
    index: str,
    index_params: dict[str, Any] | None,
    normalize: bool,
    seconds: float,
) -> Bank:
    embs, oks, hashes = [], [], []
    for f in chunk_files:
        with np.load(f, allow_pickle=False) as z:
            if z["emb"].size:
                embs.append(z["emb"])
            oks.append(z["ok"])
            hashes.append(z["hash"])
    ok = np.concatenate(oks)
    if not ok.any():
        raise DataError("no image of the bank could be opened")
    dims = {e.shape[1] for e in embs}
    if len(dims) != 1:
        raise DataError(f"chunks of the unfinished build have different dimensions {sorted(dims)}; rebuild with --force")
    vectors = np.ascontiguousarray(np.concatenate(embs, axis=0), dtype=np.float32)
    keep = np.flatnonzero(ok)
    if vectors.shape[0] != keep.size:
        raise DataError("the unfinished build is inconsistent (vectors vs images); rebuild with --force")
    all_hash = np.concatenate(hashes)
    scores = np.asarray(src.scores, dtype=np.float64)[keep]
    try:
        norm, lo, hi = normalize_mos(scores, src.higher_is_better)
    except ConfigError as err:
        raise DataError(f"cannot build a bank: {err}") from err
    bins = mos_bins(norm)
    faiss = _faiss()
    faiss_index, index_meta = build_index(vectors, index, index_params)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ITEM_COLUMNS)
    for row, j in enumerate(keep):
        w.writerow([src.ids[j], src.paths[j], repr(float(scores[row])), repr(float(norm[row])), int(bins[row]), all_hash[j]])
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(d / ITEMS_CSV, buf.getvalue())
    tmp = d / (EMBEDDINGS_NPY + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, vectors)
    os.replace(tmp, d / EMBEDDINGS_NPY)
    faiss.write_index(faiss_index, str(d / (INDEX_FAISS + ".tmp")))
    os.replace(d / (INDEX_FAISS + ".tmp"), d / INDEX_FAISS)
    n_skipped = int((~ok).sum())
    meta = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "encoder": encoder.spec.to_dict(),
        "model": encoder.spec.model,
        "normalize": bool(normalize),
        "metric": "l2",
        "dtype": "float32",
        "count": int(keep.size),
        "dim": int(vectors.shape[1]),
        "mos": {
            "min": lo,
            "max": hi,
            "higher_is_better": bool(src.higher_is_better),
            "flipped": not src.higher_is_better,
            "normalization": "min-max over the bank items; mos_norm 1 = best",
            "bins": 5,
        },
        "index": index_meta,
        "source": src.summary or {"root": src.root},
        "root": src.root,
        "n_skipped": n_skipped,
        "skipped_examples": [src.paths[j] for j in np.flatnonzero(~ok)[:5]],
        "build_seconds": round(seconds, 3),
        "created": _now(),
        "created_with": _versions(),
    }
    _atomic_write_text(d / BANK_JSON, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(d / PARTIAL_DIR, ignore_errors=True)
    if n_skipped:
        log.warning("bank %s: %d image(s) could not be opened and were left out (--skip-bad)", d, n_skipped)
    return Bank.load(d)
