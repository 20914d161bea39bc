"""IQARAG: retrieval-augmented, training-free image quality assessment with an MLLM — METHODS.md §2.

For each query image:

1. **Embed** it with the bank's own encoder (recorded in ``bank.json``: the MLLM's vision tower, CLIP, SigLIP or
   DINOv2; see :mod:`lmmiqa.retrieval.encoders`). For a ``vision-tower`` bank of the scorer's own model, the
   scorer's loaded model is reused (no second copy of the weights).
2. **Retrieve** the ``top_k`` (default 50) nearest bank items by L2 distance, split the normalized MOS range
   ``[0, 1]`` into five equal bins and keep the nearest hit of each bin: ``P ≤ 5`` references, bins without a hit
   skipped (:func:`lmmiqa.retrieval.select.select_references`). The query itself — the same file, the same
   decoded pixels, or distance ≈ 0 — is never its own reference.
3. **Prompt** (one user turn, the wording of METHODS §2.4 frozen in :mod:`lmmiqa.prompts`):
   ``"Give you P images."``, then per reference the image and ``"This image's quality is <level>."`` (the
   Q-Align word of its bin: bad for the lowest fifth ... excellent for the highest), then the query image and
   ``"How would you rate the quality of this image?"``; the answer continues ``"The quality of this image is"``.
   References are listed from the lowest bin to the highest by default (``order="quality"``), or nearest first
   (``order="distance"``).
4. **Score**: the Q-Align five-word expectation (1..5) at the answer position — one multi-image forward per query,
   batched across queries.

``details.references`` lists ``{id, path, mos, bin, distance}`` per reference in prompt order (``mos`` as
published, ``bin`` 1..5, ``distance`` Euclidean in the bank's vector space).

Speed: reference images recur across queries, so their decoded (and, with ``reference_max_side``, downscaled)
images are kept in a bounded LRU cache (:class:`lmmiqa.retrieval.cache.ImageLRU`).

The backend must accept several images in one prompt (``backend.supports_multi_image``); otherwise, or when the
model fails on such prompts, items fail with an error that says so. With ``backend="openai"``, a ``vision-tower``
bank still needs the model's weights in this process for the query embeddings (the encoder loads them through the
transformers backend); CLIP/SigLIP/DINOv2 banks only load that small encoder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import BackendError, ConfigError, ImageLoadError, LmmiqaError, UnsupportedError
from lmmiqa.images import ImageItem, ImageLimits, open_image, resize_max_side
from lmmiqa.levels import QALIGN_SCALE, LevelScale
from lmmiqa.methods.mllm import LevelScorer, MLLMConfig
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.prompts import (
    IQARAG_ANSWER_PREFIX,
    IQARAG_INTRO_TEMPLATE,
    IQARAG_QUESTION,
    IQARAG_REFERENCE_TEMPLATE,
)
from lmmiqa.retrieval.bank import Bank, content_hash
from lmmiqa.retrieval.cache import ImageLRU
from lmmiqa.retrieval.encoders import Encoder, create_encoder
from lmmiqa.retrieval.select import (
    DEFAULT_TOP_K,
    N_BINS,
    ORDERS,
    Selected,
    select_references,
    self_hits,
)
from lmmiqa.types import Prompt, Reference, ScoreResult

#: extra neighbours fetched beyond ``top_k`` so that excluding the query itself still leaves ``top_k`` hits
_SEARCH_SLACK = 8


@dataclass
class IQARAGConfig(MLLMConfig):
    """IQARAG options (on top of ``model``, ``backend``, ``device``, ``dtype``, ``readout``, ``batch_size`` ...).

    Attributes:
        bank: the reference bank folder (``lmmiqa bank build``). Required.
        top_k: nearest bank items considered before one per MOS bin is kept (the paper does not publish K;
            default 50).
        references: P, the most references shown (1..5, default 5: one per MOS bin, the paper's best). With
            fewer than 5, the nearest P of the per-bin picks are kept (lmmiqa's decision: the paper varies P but
            does not say which bins it keeps).
        order: references in the prompt from the lowest MOS bin to the highest (``quality``, default) or from
            the nearest to the farthest (``distance``).
        answer_prefix: the text the answer continues (default ``"The quality of this image is"``, "this" as in the
            IQARAG paper; Q-Align and Q-Scorer say "the").
        bank_root: rebase the bank's image paths onto this folder (``root/id``), for a bank moved elsewhere.
        encoder_model: load the bank's encoder weights from here instead (e.g. a local copy of the same hub
            model); the encoder kind always comes from the bank.
        encoder_device: device of the query encoder when it is not the scorer's own model (default: ``device``).
        encoder_batch_size: images per encoder forward.
        reference_max_side: downscale reference images so their longer side is at most this many pixels before
            the processor (fewer image tokens per prompt; cached). ``None`` (default) keeps them as they are.
        cache_items: most reference images kept decoded (0 disables the cache).
        cache_mb: most megabytes of decoded reference pixels kept.
        self_distance: a hit closer than ``self_distance · ‖q‖`` counts as the query itself.
    """

    bank: str | None = None
    top_k: int = DEFAULT_TOP_K
    references: int = N_BINS
    order: str = "quality"
    answer_prefix: str = IQARAG_ANSWER_PREFIX
    bank_root: str | None = None
    encoder_model: str | None = None
    encoder_device: str | None = None
    encoder_batch_size: int = 16
    reference_max_side: int | None = None
    cache_items: int = 512
    cache_mb: float = 512.0
    self_distance: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bank:
            raise ConfigError("iqarag needs bank=DIR (CLI: --bank DIR); build one with `lmmiqa bank build`")
        self.bank = os.fspath(self.bank)
        if int(self.top_k) < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        self.top_k = int(self.top_k)
        if isinstance(self.references, bool) or not 1 <= int(self.references) <= N_BINS:
            raise ConfigError(f"references (P) must be in 1..{N_BINS} (one per MOS bin at most), got {self.references!r}")
        self.references = int(self.references)
        if self.order not in ORDERS:
            raise ConfigError(f"unknown order {self.order!r}; known: {', '.join(ORDERS)}")
        if not isinstance(self.answer_prefix, str) or not self.answer_prefix.strip():
            raise ConfigError(f"answer_prefix must be a non-empty string, got {self.answer_prefix!r}")
        if int(self.encoder_batch_size) < 1:
            raise ConfigError(f"encoder_batch_size must be >= 1, got {self.encoder_batch_size}")
        if self.reference_max_side is not None and int(self.reference_max_side) < 16:
            raise ConfigError(f"reference_max_side must be >= 16 pixels, got {self.reference_max_side}")
        if int(self.cache_items) < 0 or float(self.cache_mb) < 0:
            raise ConfigError("cache_items and cache_mb must be >= 0")
        if not float(self.self_distance) >= 0:
            raise ConfigError(f"self_distance must be >= 0, got {self.self_distance}")


def level_word(bin_: int, scale: LevelScale = QALIGN_SCALE) -> str:
    """The level word of a MOS bin (1 -> ``bad`` ... 5 -> ``excellent``)."""
    if not 1 <= int(bin_) <= scale.k:
        raise ConfigError(f"bin must be in 1..{scale.k}, got {bin_}")
    return scale.words[int(bin_) - 1]


def iqarag_prompt(references: Sequence[tuple[Any, str]], query: Any, answer_prefix: str = IQARAG_ANSWER_PREFIX) -> Prompt:
    """The IQARAG prompt (METHODS §2.4) for ``[(reference image, level word), ...]`` and the query image."""
    content: list[Any] = [IQARAG_INTRO_TEMPLATE.format(n=len(references))]
    for image, word in references:
        content += [image, IQARAG_REFERENCE_TEMPLATE.format(level=word)]
    content += [query, IQARAG_QUESTION]
    return Prompt.simple(content, answer_prefix=answer_prefix)


#: IQARAG as its paper evaluates it (``--preset paper``; METHODS §2)
IQARAG_PAPER = Preset(
    name="paper",
    target="iqarag",
    summary="IQARAG as the paper evaluates it: Qwen3-VL-8B-Instruct, P = 5 rated references (one per MOS fifth) "
    "among the 50 nearest, the 'this' answer prefix",
    reference="IQARAG: training-free retrieval-augmented image quality assessment for large multimodal models "
    "(KADID, KonIQ, LIVE Challenge, SPAQ); lmmiqa METHODS §2",
    values={
        "model": PresetValue("Qwen/Qwen3-VL-8B-Instruct", "METHODS §2.5: the paper's numbers are Qwen3-VL-8B's"),
        "references": PresetValue(N_BINS, "METHODS §2.3 and §2.5: one reference per MOS fifth, P = 5 (the "
                                  "paper's best; P = 1 is worse than none)"),
        "top_k": PresetValue(DEFAULT_TOP_K, "lmmiqa decision: the paper does not publish K (METHODS §2.3)"),
        "answer_prefix": PresetValue(IQARAG_ANSWER_PREFIX, "METHODS §2.4: the paper's answer prefix says 'this' "
                                     "(Q-Align and Q-Scorer say 'the')"),
        "readout": PresetValue("expected", "METHODS §2.4: Q-Align-style expectation over the five words"),
        "order": PresetValue("quality", "lmmiqa decision: the paper does not say in which order the references are "
                             "shown (lowest MOS bin first)"),
    },
    notes=(
        "The bank is data, not an option: the paper's best encoder is the MLLM's own vision tower (METHODS §2.2): "
        "`lmmiqa bank build --encoder vision-tower --model Qwen/Qwen3-VL-8B-Instruct ...`.",
        "The paper's references come from the evaluated dataset itself, ref:test = 1:9 (METHODS §2.5); "
        "`lmmiqa reproduce iqarag` builds such a bank per dataset.",
    ),
)


class IQARAG(LevelScorer):
    """IQARAG: Q-Align-style expectation (1..5) with up to five rated reference images retrieved from a bank.

    Args:
        config: :class:`IQARAGConfig`.
        backend: an already created backend (optional).
        bank: an already loaded :class:`~lmmiqa.retrieval.bank.Bank` (optional; else loaded from ``config.bank``).
        encoder: the query encoder (optional; else built from the bank's encoder spec).
    """

    name = "iqarag"
    config_cls = IQARAGConfig
    summary = "IQARAG: Q-Align 1-5 expectation with up to 5 rated reference images retrieved from a bank"
    presets = {"paper": IQARAG_PAPER}
    #: options a service request may set (the bank, models and devices are fixed by the server)
    request_options: ClassVar[tuple[str, ...]] = ("top_k", "order", "readout")

    def __init__(
        self,
        config: IQARAGConfig | None = None,
        backend: Any | None = None,
        bank: Bank | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        if config is None:
            raise ConfigError("iqarag needs a config with bank=DIR")
        super().__init__(config, backend)
        # loaded (and verified) now, so that a wrong --bank fails before any image is read
        self._bank = bank if bank is not None else Bank.load(config.bank, root=config.bank_root)
        self._encoder = encoder
        self._init_lock = threading.RLock()
        self.cache = ImageLRU(int(config.cache_items), int(float(config.cache_mb) * 1024 * 1024))

    # ------------------------------------------------------------------------------------------ parts
    @property
    def level_scale(self) -> LevelScale:
        return QALIGN_SCALE

    @property
    def bank(self) -> Bank:
        """The reference bank (loaded and verified when the scorer is created)."""
        return self._bank

    @property
    def encoder(self) -> Encoder:
        """The query encoder: the bank's encoder; for a ``vision-tower`` bank of this scorer's model, its own model."""
        with self._init_lock:
            if self._encoder is None:
                cfg = self.config
                spec = self.bank.encoder
                if cfg.encoder_model:
                    spec = replace(spec, model=cfg.encoder_model)
                if spec.kind == "vision-tower" and cfg.backend == "transformers" and spec.model == cfg.model:
                    self._encoder = create_encoder(spec, backend=self.backend, batch_size=cfg.encoder_batch_size)
                else:
                    self._encoder = create_encoder(
                        spec,
                        device=cfg.encoder_device or cfg.device,
                        dtype=cfg.dtype,
                        batch_size=cfg.encoder_batch_size,
                    )
            return self._encoder

    def check_overlap(self, paths: Sequence[str]) -> int:
        """How many of ``paths`` are images of the bank — the same file, or the same pixels under another name
        (the evaluation runner's leakage guard calls this; :meth:`Bank.overlap_report`)."""
        limits = ImageLimits(max_pixels=self.config.max_pixels, max_bytes=self.config.max_bytes)
        return self.bank.overlap(paths, limits=limits, workers=4)

    def reference_image(self, path: str) -> Any:
        """A reference image, decoded (and downscaled with ``reference_max_side``) once and then cached."""
        side = self.config.reference_max_side
        limits = ImageLimits(max_pixels=self.config.max_image_pixels, max_bytes=self.config.max_bytes)

        def load() -> Any:
            img = open_image(path, limits)
            return resize_max_side(img, int(side)) if side else img

        return self.cache.get_or_load((path, side), load)

    # ------------------------------------------------------------------------------------------ retrieval
    def retrieve(self, vectors: np.ndarray, items: Sequence[ImageItem]) -> list[tuple[list[Selected], bool]]:
        """References of each query (prompt order) and whether the query itself was found in the bank."""
        bank = self.bank
        cfg = self.config
        prepared = bank.prepare(vectors)
        norms = np.linalg.norm(prepared, axis=1)
        own: list[set[int]] = []
        for it in items:
            rows: set[int] = set()
            if isinstance(it.source, (str, os.PathLike)):
                r = bank.row_of_path(os.fspath(it.source))
                if r is not None:
                    rows.add(r)
            r = bank.row_of_hash(content_hash(it.image))
            if r is not None:
                rows.add(r)
            own.append(rows)
        bins = bank.bins()
        k = min(bank.count, cfg.top_k + _SEARCH_SLACK)
        while True:
            dist, idx = bank.search(prepared, k)
            masks = [
                self_hits(dist[b], float(norms[b]), same_item=np.isin(idx[b], list(own[b])), rel_tol=cfg.self_distance)
                for b in range(len(items))
            ]
            short = any(int(((idx[b] >= 0) & ~masks[b]).sum()) < cfg.top_k for b in range(len(items)))
            if not short or k >= bank.count:
                break
            k = min(bank.count, 2 * k)
        out = []
        for b in range(len(items)):
            sel = select_references(dist[b], idx[b], bins, top_k=cfg.top_k, n_bins=N_BINS, exclude=masks[b],
                                    order=cfg.order, max_refs=cfg.references)
            out.append((sel, bool(own[b]) or bool(masks[b].any())))
        return out

    def build_prompt(self, image: Any) -> Prompt:
        """The IQARAG prompt of one loaded image (retrieval included)."""
        item = ImageItem(key="<memory:0>", image=image, source=image)
        vec = self.encoder.embed([image])
        (sel, _), = self.retrieve(vec, [item])
        if not sel:
            raise ConfigError("no reference left in the bank for this image (the bank holds only the image itself)")
        refs = [(self.reference_image(self.bank.items[s.index].path), level_word(s.bin)) for s in sel]
        return iqarag_prompt(refs, image, self.config.answer_prefix)

    # ------------------------------------------------------------------------------------------ scoring
    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        backend = self.backend
        if not getattr(backend, "supports_multi_image", True):
            raise UnsupportedError(
                f"iqarag puts up to {N_BINS + 1} images in one prompt, but the {backend.name} backend of "
                f"{self.config.model} takes one image per prompt; use a multi-image model/backend"
            )
        bank = self.bank
        t0 = time.perf_counter()
        vectors = self.encoder.embed([it.image for it in items])
        t1 = time.perf_counter()
        selections = self.retrieve(vectors, items)
        t2 = time.perf_counter()

        out: list[ScoreResult | None] = [None] * len(items)
        prompts: list[Prompt] = []
        good: list[int] = []
        extra: list[dict[str, Any]] = []
        for i, (it, (sel, found_self)) in enumerate(zip(items, selections)):
            if not sel:
                out[i] = self.failure(it.key, f"no reference left in the bank {bank.dir} for this image (the bank "
                                      "holds only the image itself)")
                continue
            try:
                refs = [(self.reference_image(bank.items[s.index].path), level_word(s.bin)) for s in sel]
            except ImageLoadError as err:
                out[i] = self.failure(it.key, f"a reference image of the bank {bank.dir} cannot be opened: {err}")
                continue
            prompts.append(iqarag_prompt(refs, it.image, self.config.answer_prefix))
            good.append(i)
            references = [
                Reference(
                    id=bank.items[s.index].id,
                    path=bank.items[s.index].path,
                    mos=bank.items[s.index].mos,
                    bin=s.bin,
                    distance=s.distance,
                ).to_dict()
                for s in sel
            ]
            extra.append({
                "references": references,
                "n_references": len(references),
                "self_in_bank": found_self,
                "bank": str(bank.dir),
                "encoder": bank.encoder.spec,
                "top_k": self.config.top_k,
                "order": self.config.order,
            })
        t3 = time.perf_counter()
        if prompts:
            try:
                probs, mass, missing = self.level_readout(prompts)
            except LmmiqaError:
                raise
            except Exception as err:
                most = max(len(p.images) for p in prompts)
                raise BackendError(
                    f"{self.config.model} failed on IQARAG's multi-image prompts (up to {most} images each): "
                    f"{type(err).__name__}: {err}. IQARAG needs a model that accepts several images in one prompt"
                ) from err
            t4 = time.perf_counter()
            for e, tok in zip(extra, self.token_details(prompts) or [{}] * len(extra)):
                e.update(tok)
            n = max(len(items), 1)
            timings = {
                "embed": (t1 - t0) / n,
                "retrieve": (t2 - t1) / n,
                "references": (t3 - t2) / n,
                "forward": (t4 - t3) / max(len(prompts), 1),
            }
            scored = self.results_from_probs(
                [items[i].key for i in good], probs, mass, extra_details=extra, timings=timings, missing=missing
            )
            for i, r in zip(good, scored):
                out[i] = r
        return [r for r in out if r is not None]

    def describe(self) -> dict[str, Any]:
        """Method, model, config — with the bank's fingerprint in the config, so that a run folder evaluated with
        one bank is not resumed with a rebuilt one."""
        d = super().describe()
        bank = self.bank
        d["config"] = {**d["config"], "bank_fingerprint": bank.fingerprint}
        d["bank"] = {"dir": str(bank.dir), "encoder": bank.encoder.spec, "count": bank.count, "dim": bank.dim}
        d["cache"] = self.cache.stats.to_dict()
        return d
