"""LLM-IQA, a.k.a. Dog-IQA (Liu et al., "Dog-IQA: Standard-guided Zero-shot MLLM for Mix-grained Image Quality
Assessment", 2024): standard-guided, mix-grained, training-free — METHODS.md §1.

For each image:

1. **Global score** ``s_global``: the standard-guided prompt (levels ``1..K``, K = 7 by default) on the whole
   image, read out as ``expected`` (default) or ``argmax`` (the paper's one-token answer).
2. **Regions** (Algorithm 1, :func:`lmmiqa.segment.regions.select_regions`): an automatic mask generator
   (SAM 2, Ravi et al. 2024, in the paper; ``segmenter="felzenszwalb"`` is a weight-free fallback) gives masks;
   masks with area ≥ ``min_area`` (a fraction of the image) are kept and the complement of their union is added
   when it is large enough too.
3. **Local score**: each region's bounding box is cropped from the original image and scored with the same
   prompt; ``s_local`` is the mean of the region scores weighted by their **mask** areas.
4. **Mix**: ``s = (s_global + λ·s_local) / (1 + λ)`` (lmmiqa's decision, so ``s`` stays in ``[1, K]``).
5. **Ensemble** (``models=[...]``): ``s`` is the mean of the per-model final scores; each model's scores are in
   ``details["models"]``.

Batching: all global prompts and all region crops of a batch of images go to each model's backend in one
``level_logprobs`` call (the transformers backend sorts them by length and cuts forwards by its token budget,
:mod:`lmmiqa.backends.planner`, so crops are not padded to the whole images' length), and the
segmenter sees the whole batch at once (``segment_many``). Cost: ``1 + regions`` prompts per image and model
(~8 in the paper).

``ScoreResult.probabilities`` is the mix-grained level distribution
``(p_global + λ·Σ_k w_k p_k) / (1 + λ)`` averaged over models, where ``w_k`` are the area weights; under the
``expected`` readout its expectation is exactly the score.

Decision beyond the paper: a region whose box is thinner than ``min_crop_side`` pixels is scored on a box grown
around its centre to that size (original pixels, clamped to the image), because vision processors reject very
thin crops; ``details["regions"][k]["crop"]`` is the box actually scored.

``preset="paper"`` (:data:`PAPER_PRESET`, CLI ``--preset paper``) is the paper's setting: mPLUG-Owl3-7B-240728 (run
natively, :mod:`lmmiqa.families.mplug_owl3`), K = 7, the ``argmax`` readout (the one greedy token), SAM 2, t = 1 %;
every value with its source. With the ``argmax`` readout, results also say whether the model's greedy token over the
whole vocabulary was a level at all (``details["greedy_is_level"]``, per model ``greedy_token``), where the backend
keeps its top tokens (transformers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.levels import LevelScale, level_details, readout, standard_scale
from lmmiqa.methods.base import Scorer
from lmmiqa.methods.standard_guided import StandardGuided, StandardGuidedConfig
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.segment.regions import (
    DEFAULT_MIN_AREA,
    area_weighted_mean,
    area_weights,
    check_min_area,
    crop_regions,
    expand_box,
    mix_scores,
    select_regions,
)
from lmmiqa.types import Prompt, ScoreResult


@dataclass
class LLMIQAConfig(StandardGuidedConfig):
    """LLM-IQA options (on top of the standard-guided ones: ``model``, ``backend``, ``levels``, ``readout``...).

    Attributes:
        models: several models for an ensemble (the final score is the mean of their final scores); when
            given, it replaces ``model``.
        segmenter: registered segmenter: ``sam2`` (the paper's setting) or ``felzenszwalb`` (weight-free
            fallback, not the paper's).
        segmenter_options: options of the segmenter (e.g. ``{"model": "/path/to/sam2.1-hiera-large"}``).
        min_area: Algorithm 1's threshold ``t`` as a fraction of the image area (the paper does not publish it;
            default 1 %).
        lam: ``λ`` of ``(s_global + λ·s_local) / (1 + λ)``; 0 gives the global score alone.
        min_crop_side: crops thinner than this many pixels are grown around their centre (0 disables).
        keep_masks: keep each image's region masks in :attr:`LLMIQA.region_masks` (for pictures; memory grows
            with the number of images scored).
    """

    models: list[str] | None = None
    segmenter: str = "sam2"
    segmenter_options: dict[str, Any] = field(default_factory=dict)
    min_area: float = DEFAULT_MIN_AREA
    lam: float = 1.0
    min_crop_side: int = 32
    keep_masks: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.models is not None:
            if isinstance(self.models, str) or not all(isinstance(m, str) and m for m in self.models):
                raise ConfigError(f"models must be a list of model ids/paths, got {self.models!r}")
            if len(self.models) == 0:
                raise ConfigError("models must name at least one model")
            self.models = list(self.models)
        from lmmiqa import registry

        self.segmenter = registry.canonical("segmenter", self.segmenter)
        if not isinstance(self.segmenter_options, dict):
            raise ConfigError(
                f"segmenter_options must be a mapping, got {type(self.segmenter_options).__name__}"
            )
        self.min_area = check_min_area(self.min_area)
        try:
            self.lam = float(self.lam)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"lam must be a number >= 0, got {self.lam!r}") from err
        if not np.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if int(self.min_crop_side) < 0:
            raise ConfigError(f"min_crop_side must be >= 0, got {self.min_crop_side!r}")
        self.min_crop_side = int(self.min_crop_side)

    @property
    def model_list(self) -> list[str]:
        """The models scored (``models`` when given, else ``[model]``)."""
        return list(self.models) if self.models else [self.model]


@dataclass
class _Plan:
    """What one image contributes to a batch: its regions, area weights and the rows of its prompts."""

    key: str
    regions: list[Any]
    weights: np.ndarray
    crops: list[tuple[int, int, int, int]]
    global_row: int
    region_rows: list[int]


#: The checkpoint LLM-IQA's published numbers come from.
PAPER_MODEL = "mPLUG/mPLUG-Owl3-7B-240728"

PAPER_PRESET = Preset(
    name="paper",
    target="llm-iqa",
    summary="Dog-IQA / LLM-IQA as published: mPLUG-Owl3-7B-240728, the K = 7 standards, one greedy token, SAM 2 "
    "regions (t = 1 %, complement, bounding-box crops, mask-area weights) mixed with the global score",
    reference="K. Liu et al., 'Dog-IQA: Standard-guided Zero-shot MLLM for Mix-grained Image Quality Assessment', "
    "arXiv:2410.02505 (2024); checkpoint mPLUG/mPLUG-Owl3-7B-240728",
    values={
        "model": PresetValue(
            PAPER_MODEL,
            "paper, Table 2 (training-free results, METHODS §1): the reported numbers are mPLUG-Owl3 based; lmmiqa runs "
            "the checkpoint natively (lmmiqa.families.mplug_owl3, parity with the official code on tiny weights)",
        ),
        "levels": PresetValue(
            7,
            "paper §3.1 and its K ablation: 7 levels (7 Perfect ... 1 Very Bad) are best. The system and user prompts are "
            "the paper's (METHODS §1), rendered in the model's own chat format (mPLUG-Owl3: its ChatML turns, image "
            "before the question)",
        ),
        "readout": PresetValue(
            "argmax",
            "paper §3.1: the model writes one token (greedy). lmmiqa takes the most probable of the K level tokens and "
            "reports in details.greedy_is_level whether the greedy token over the whole vocabulary was a level",
        ),
        "segmenter": PresetValue("sam2", "paper §3.2: SAM 2 automatic mask generation at a coarse granularity"),
        "segmenter_options": PresetValue(
            {},
            "lmmiqa decision: the paper's tuned SAM 2 values are in a supplementary file that is not reachable; "
            "lmmiqa uses its SAM 2 segmenter's coarse defaults (facebook/sam2.1-hiera-large, 16x16 point grid, "
            "pred_iou_thresh 0.88, stability_score_thresh 0.95, at most 10 of the largest masks, each at most 50 % "
            "inside larger kept ones), aimed at the paper's ~7 masks per SPAQ image",
        ),
        "min_area": PresetValue(
            DEFAULT_MIN_AREA,
            "lmmiqa decision (METHODS §1): the paper does not publish Algorithm 1's threshold t; t = 1 % of the image "
            "area, for the masks and for the complement mask",
        ),
        "lam": PresetValue(
            1.0,
            "lmmiqa decision (METHODS §1): the paper writes s = s_global + λ·s_local, says s lies in [1, 7] and gives no "
            "λ; lmmiqa uses (s_global + λ·s_local)/(1 + λ) with λ = 1 (the same ranks, hence SRCC, as the plain sum)",
        ),
        "min_crop_side": PresetValue(
            0,
            "paper §3.2: each region is scored on its mask's bounding box as it is (no growing); mPLUG-Owl3's processor "
            "resizes any box to its 384-pixel views",
        ),
    },
    notes=(
        "The complement mask, bounding-box crops of the original pixels (not masked images) and mask-area weights "
        "(paper §3.2, Algorithm 1) are how lmmiqa's llm-iqa always works; they are no options.",
        "Ensemble: the paper's best row averages several MLLMs, and which ones is not in any source lmmiqa could "
        "reach (no official code was released; METHODS §1 names none). The preset runs mPLUG-Owl3 alone, the model "
        "the reported numbers name; add members with models=[...] (CLI: --model repeated) when they are known.",
        "SAM 2 needs a transformers-format checkpoint folder offline (segmenter_options={'model': FOLDER}); "
        "segmenter='felzenszwalb' runs without weights but is not the paper's.",
    ),
)


class LLMIQA(Scorer):
    """LLM-IQA / Dog-IQA: global standard-guided score mixed with area-weighted region scores (1..K)."""

    name: ClassVar[str] = "llm-iqa"
    config_cls: ClassVar[type] = LLMIQAConfig
    summary: ClassVar[str] = (
        "LLM-IQA (Dog-IQA) mix-grained score (1-K): standard-guided global score mixed with area-weighted "
        "scores of SAM 2 regions; ensembles with several --model; --preset paper: mPLUG-Owl3, argmax"
    )
    presets: ClassVar[dict[str, Preset]] = {"paper": PAPER_PRESET}

    def __init__(
        self,
        config: LLMIQAConfig | None = None,
        *,
        segmenter: Any | None = None,
        members: list[StandardGuided] | None = None,
    ) -> None:
        """Create the scorer; models and the segmenter load on first use.

        Args:
            config: options (see :class:`LLMIQAConfig`).
            segmenter: a ready :class:`~lmmiqa.segment.base.Segmenter` to use instead of ``config.segmenter``.
            members: ready standard-guided scorers, one per model, instead of building them from the config.
        """
        super().__init__(config)
        self._segmenter = segmenter
        if members is not None and len(members) != len(self.config.model_list):
            raise ConfigError(f"{len(members)} member scorers for {len(self.config.model_list)} models")
        self._members = members
        #: image key -> region masks ``bool [K, H, W]`` (only with ``keep_masks``)
        self.region_masks: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ parts
    @cached_property
    def level_scale(self) -> LevelScale:
        return standard_scale(self.config.levels)

    @property
    def scale(self) -> tuple[float, float]:
        return (self.level_scale.low, self.level_scale.high)

    @property
    def model_name(self) -> str | list[str]:
        models = self.config.model_list
        return models if self.config.models else models[0]

    @property
    def members(self) -> list[StandardGuided]:
        """One standard-guided scorer per model (their backends are shared with other scorers of that model)."""
        if self._members is None:
            cfg: LLMIQAConfig = self.config
            self._members = [
                StandardGuided(
                    StandardGuidedConfig(
                        model=m,
                        backend=cfg.backend,
                        device=cfg.device,
                        dtype=cfg.dtype,
                        readout=cfg.readout,
                        backend_options=dict(cfg.backend_options),
                        max_pixels=cfg.max_pixels,
                        min_pixels=cfg.min_pixels,
                        max_batch_tokens=cfg.max_batch_tokens,
                        levels=cfg.levels,
                        batch_size=cfg.batch_size,
                    )
                )
                for m in cfg.model_list
            ]
        return self._members

    @property
    def segmenter(self) -> Any:
        """The segmenter (created on first use)."""
        if self._segmenter is None:
            from lmmiqa.segment.base import create_segmenter

            self._segmenter = create_segmenter(self.config.segmenter, **self.config.segmenter_options)
        return self._segmenter

    def build_prompt(self, image: Any) -> Prompt:
        """The standard-guided prompt for an image or a crop (the same for every model)."""
        return self.members[0].build_prompt(image)

    # ------------------------------------------------------------------ scoring
    def plan(self, items: list[ImageItem]) -> tuple[list[_Plan], list[Prompt], list[np.ndarray]]:
        """Segment a batch and lay out its prompts: the global prompts first, then every region crop."""
        cfg: LLMIQAConfig = self.config
        images = [it.image for it in items]
        masks = self.segmenter.segment_many(images)
        if len(masks) != len(images):
            raise RuntimeError(f"segmenter returned masks for {len(masks)} of {len(images)} images")
        prompts = [self.build_prompt(img) for img in images]
        plans: list[_Plan] = []
        region_masks: list[np.ndarray] = []
        for i, (it, img, m) in enumerate(zip(items, images, masks)):
            regions, rmasks = select_regions(m, cfg.min_area, shape=(img.height, img.width))
            boxes = [expand_box(r.bbox, cfg.min_crop_side, img.width, img.height) for r in regions]
            crops = crop_regions(img, [{"bbox": b} for b in boxes])
            rows = list(range(len(prompts), len(prompts) + len(crops)))
            prompts.extend(self.build_prompt(c) for c in crops)
            weights = area_weights([r.area for r in regions])
            plans.append(_Plan(it.key, regions, weights, boxes, i, rows))
            region_masks.append(rmasks)
        return plans, prompts, region_masks

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        cfg: LLMIQAConfig = self.config
        scale = self.level_scale
        n = max(len(items), 1)
        t0 = time.perf_counter()
        plans, prompts, region_masks = self.plan(items)
        t1 = time.perf_counter()
        per_model: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None]]] = []
        greedy: list[list[tuple[str, bool]] | None] = []
        for member in self.members:
            probs, mass, missing = member.level_readout(prompts, scale)
            per_model.append((probs, mass, missing))
            # right after the member's call: the backend keeps its top tokens per thread for its last call
            greedy.append(greedy_levels(member.backend, probs, mass) if cfg.readout == "argmax" else None)
        t2 = time.perf_counter()
        tokens = [member.token_details(prompts) for member in self.members]
        timings = {"segment": (t1 - t0) / n, "forward": (t2 - t1) / n}
        if cfg.keep_masks:
            for plan, rmasks in zip(plans, region_masks):
                self.region_masks[plan.key] = rmasks
        return [self._result(plan, per_model, timings, tokens, greedy) for plan in plans]

    def _result(
        self,
        plan: _Plan,
        per_model: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None]]],
        timings: dict[str, float],
        tokens: list[list[dict[str, Any]] | None] | None = None,
        greedy: list[list[tuple[str, bool]] | None] | None = None,
    ) -> ScoreResult:
        cfg: LLMIQAConfig = self.config
        scale = self.level_scale
        rows = [plan.global_row, *plan.region_rows]
        model_entries: list[dict[str, Any]] = []
        finals, globals_, locals_ = [], [], []
        mixes, region_scores, region_probs = [], [], []
        tokens = tokens or [None] * len(per_model)
        greedy = greedy or [None] * len(per_model)
        missing_bounds: list[float] = []
        for model_id, (probs, mass, *rest), tok, top in zip(cfg.model_list, per_model, tokens, greedy):
            p = probs[rows]
            missing = [rest[0][r] if rest and rest[0] else None for r in rows]
            if not np.all(np.isfinite(p)):
                bad = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
                what = "the whole image" if bad == 0 else f"region {bad} (box {list(plan.crops[bad - 1])})"
                return self.failure(
                    plan.key,
                    f"{model_id}: no level candidate {list(scale.tokens)} was visible in the answer distribution "
                    f"for {what}",
                    timings,
                )
            s = readout(p, scale.values, cfg.readout)
            s_global = float(s[0])
            s_regions = s[1:]
            s_local = area_weighted_mean(s_regions, plan.weights) if len(s_regions) else None
            final = mix_scores(s_global, s_local, cfg.lam)
            mix = (
                p[0].copy()
                if s_local is None
                else (p[0] + cfg.lam * (plan.weights @ p[1:])) / (1.0 + cfg.lam)
            )
            # levels a server's top-k left out: the final score's error bound mixes the rows' bounds alike
            bounds = np.array([m.get("score_error_at_most", 0.0) if m else 0.0 for m in missing])
            bound = float(mix_scores(float(bounds[0]), area_weighted_mean(bounds[1:], plan.weights)
                                     if len(bounds) > 1 else None, cfg.lam))
            missing_bounds.append(bound)
            finals.append(final)
            globals_.append(s_global)
            if s_local is not None:
                locals_.append(s_local)
            mixes.append(mix)
            region_scores.append(s_regions)
            region_probs.append(p[1:])
            model_entries.append(
                {
                    "model": model_id,
                    "score": final,
                    "global": s_global,
                    "local": s_local,
                    "covered_mass": float(mass[plan.global_row]),
                    "region_scores": [float(x) for x in s_regions],
                    **(
                        {"missing_levels": {
                            "prompts": sum(1 for m in missing if m),
                            "levels": sorted({lv for m in missing if m for lv in m["levels"]}, key=float),
                            "score_error_at_most": bound,
                        }}
                        if any(missing) else {}
                    ),
                    **(
                        {"image_tokens": sum(tok[r]["image_tokens"] for r in rows),
                         "prompt_tokens": sum(tok[r]["prompt_tokens"] for r in rows)}
                        if tok is not None
                        else {}
                    ),
                    **(
                        {"greedy_token": top[plan.global_row][0], "greedy_is_level": top[plan.global_row][1],
                         "regions_greedy_not_level": sum(not top[r][1] for r in plan.region_rows)}
                        if top is not None
                        else {}
                    ),
                }
            )
        mix_mean = np.mean(mixes, axis=0)
        first_tok = tokens[0]
        region_tokens: list[dict[str, Any]] = (
            [{"image_tokens": first_tok[r]["image_tokens"]} for r in plan.region_rows]
            if first_tok is not None
            else [{} for _ in plan.region_rows]
        )
        probabilities, details = level_details(mix_mean, scale)
        mean_region_scores = np.mean(region_scores, axis=0)
        mean_region_probs = np.mean(region_probs, axis=0)
        details.update(
            {
                "readout": cfg.readout,
                "levels": scale.k,
                "global": float(np.mean(globals_)),
                "local": float(np.mean(locals_)) if locals_ else None,
                "lambda": cfg.lam,
                "min_area": cfg.min_area,
                "segmenter": cfg.segmenter,
                "covered_mass": float(np.mean([e["covered_mass"] for e in model_entries])),
                "regions": [
                    {
                        **region.to_dict(),
                        "crop": list(box),
                        "weight": float(w),
                        "score": float(sc),
                        "probabilities": dict(zip(scale.keys, (float(x) for x in pr))),
                        **rt,
                    }
                    for region, box, w, sc, pr, rt in zip(
                        plan.regions, plan.crops, plan.weights, mean_region_scores, mean_region_probs, region_tokens
                    )
                ],
                "models": model_entries,
            }
        )
        if all("greedy_is_level" in e for e in model_entries):
            # the paper reads one greedy token: was it a level at all (whole image, every model)?
            details["greedy_is_level"] = all(e["greedy_is_level"] for e in model_entries)
        if any(missing_bounds):
            details["missing_levels"] = {
                "models": [e["model"] for e in model_entries if "missing_levels" in e],
                "score_error_at_most": float(np.mean(missing_bounds)),
            }
        if all("image_tokens" in e for e in model_entries):
            # the cost of this image: every prompt (whole image + crops) of every model
            details["image_tokens"] = int(sum(e["image_tokens"] for e in model_entries))
            details["prompt_tokens"] = int(sum(e["prompt_tokens"] for e in model_entries))
            details["global_image_tokens"] = int(first_tok[plan.global_row]["image_tokens"])  # type: ignore[index]
        n_prompts = 1 + len(plan.region_rows)
        return ScoreResult(
            image=plan.key,
            score=float(np.mean(finals)),
            method=self.name,
            higher_is_better=True,
            scale=self.scale,
            model=self.model_name,
            probabilities=probabilities,
            details={**details, "prompts": n_prompts * len(cfg.model_list)},
            timings=dict(timings),
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["scale"] = self.level_scale.to_dict()
        return d


def greedy_levels(backend: Any, probs: np.ndarray, mass: np.ndarray, tol: float = 1e-5) -> list[tuple[str, bool]] | None:
    """For each row of the backend's last ``level_logprobs`` call: the model's greedy next token over the whole
    vocabulary (decoded) and whether it was one of the level tokens — what the paper's one generated token would have
    been. None when the backend does not keep its top tokens (``last_level_top``, transformers backend).

    The greedy token is a level when the most probable level's log-probability, ``log(max(probs) · mass)``
    (closed-set probabilities times the covered mass), equals the top log-probability (within ``tol``).
    """
    top_of = getattr(backend, "last_level_top", None)
    if top_of is None:
        return None
    out: list[tuple[str, bool]] = []
    for i in range(len(probs)):
        top = top_of(i, 1)
        if not top:
            return None
        text, logp = top[0]
        if not np.all(np.isfinite(probs[i])) or mass[i] <= 0:
            out.append((text, False))  # no level had any probability
            continue
        best_level = float(np.log(np.max(probs[i]) * mass[i]))
        out.append((text, bool(best_level >= logp - tol)))
    return out
