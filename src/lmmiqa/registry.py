"""Name -> ``"module:Class"`` tables, resolved lazily on first use.

Adding a method, backend, tool, dataset, segmenter, encoder or student is one file plus one line here.
Nothing is imported until a name is resolved, so ``import lmmiqa`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmmiqa.errors import UnknownNameError

METHODS: dict[str, str] = {
    "q-align": "lmmiqa.methods.q_align:QAlign",
    "standard-guided": "lmmiqa.methods.standard_guided:StandardGuided",
    "llm-iqa": "lmmiqa.methods.llm_iqa:LLMIQA",
    "agentic-iqa": "lmmiqa.methods.agentic.agent:AgenticIQA",
    "iqarag": "lmmiqa.methods.iqarag:IQARAG",
    "q-scorer": "lmmiqa.methods.q_scorer:QScorer",
    "leaf": "lmmiqa.methods.leaf:LEAF",
    "niqe": "lmmiqa.methods.classical:NIQE",
    "brisque": "lmmiqa.methods.classical:BRISQUE",
    "piqe": "lmmiqa.methods.classical:PIQE",
    "sharpness": "lmmiqa.methods.classical:Sharpness",
    "noise": "lmmiqa.methods.classical:Noise",
    "contrast": "lmmiqa.methods.classical:Contrast",
    "exposure": "lmmiqa.methods.classical:Exposure",
    "colorfulness": "lmmiqa.methods.classical:Colorfulness",
    "blockiness": "lmmiqa.methods.classical:Blockiness",
}

BACKENDS: dict[str, str] = {
    "transformers": "lmmiqa.backends.transformers_local:TransformersBackend",
    "openai": "lmmiqa.backends.openai_http:OpenAIBackend",
}

TOOLS: dict[str, str] = {
    "niqe": "lmmiqa.tools.niqe:NIQE",
    "brisque": "lmmiqa.tools.brisque:BRISQUE",
    "piqe": "lmmiqa.tools.piqe:PIQE",
    "sharpness": "lmmiqa.tools.cues:Sharpness",
    "noise": "lmmiqa.tools.cues:Noise",
    "contrast": "lmmiqa.tools.cues:Contrast",
    "exposure": "lmmiqa.tools.cues:Exposure",
    "colorfulness": "lmmiqa.tools.cues:Colorfulness",
    "blockiness": "lmmiqa.tools.cues:Blockiness",
    "psnr": "lmmiqa.tools.psnr:PSNR",
    "ssim": "lmmiqa.tools.ssim:SSIM",
    "ms_ssim": "lmmiqa.tools.ssim:MSSSIM",
    "gmsd": "lmmiqa.tools.gmsd:GMSD",
}

DATASETS: dict[str, str] = {
    "koniq10k": "lmmiqa.data.records:KONIQ10K",
    "spaq": "lmmiqa.data.records:SPAQ",
    "livec": "lmmiqa.data.records:LIVEC",
    "kadid10k": "lmmiqa.data.records:KADID10K",
    "agiqa3k": "lmmiqa.data.records:AGIQA3K",
    "agiqa1k": "lmmiqa.data.records:AGIQA1K",
    "csiq": "lmmiqa.data.records:CSIQ",
    "tid2013": "lmmiqa.data.records:TID2013",
    "live": "lmmiqa.data.records:LIVE",
    "synthetic": "lmmiqa.data.records:SYNTHETIC",
}

SEGMENTERS: dict[str, str] = {
    "sam2": "lmmiqa.segment.sam2:Sam2Segmenter",
    "felzenszwalb": "lmmiqa.segment.felzenszwalb:FelzenszwalbSegmenter",
}

ENCODERS: dict[str, str] = {
    "vision-tower": "lmmiqa.retrieval.encoders:VisionTowerEncoder",
    "clip": "lmmiqa.retrieval.encoders:CLIPEncoder",
    "siglip": "lmmiqa.retrieval.encoders:SiglipEncoder",
    "dinov2": "lmmiqa.retrieval.encoders:Dinov2Encoder",
}

STUDENTS: dict[str, str] = {
    "small-cnn": "lmmiqa.distill.students:SmallCNN",
    "convnext-base": "lmmiqa.distill.students:ConvNextBase",
    "convnext-tiny": "lmmiqa.distill.students:ConvNextTiny",
    "resnet-50": "lmmiqa.distill.students:ResNet50",
}

#: model families lmmiqa implements natively (architectures transformers does not ship; see lmmiqa.families):
#: the checkpoint's config.json ``model_type`` -> ``"module:FAMILY"``
FAMILIES: dict[str, str] = {
    "mplug_owl2": "lmmiqa.families.mplug_owl2:FAMILY",
    "mplugowl3": "lmmiqa.families.mplug_owl3:FAMILY",
}

#: alternative names -> canonical name, per kind
ALIASES: dict[str, dict[str, str]] = {
    "method": {"qalign": "q-align", "sg": "standard-guided", "dog-iqa": "llm-iqa", "dogiqa": "llm-iqa", "qscorer": "q-scorer", "q_scorer": "q-scorer", "llmiqa": "llm-iqa",
               "agentic": "agentic-iqa", "agenticiqa": "agentic-iqa"},
    "backend": {"hf": "transformers"},
    "encoder": {"vision_tower": "vision-tower", "visiontower": "vision-tower", "vt": "vision-tower"},
    "student": {"small_cnn": "small-cnn", "smallcnn": "small-cnn", "convnext_base": "convnext-base",
                "convnext_tiny": "convnext-tiny", "resnet50": "resnet-50", "resnet_50": "resnet-50"},
    "tool": {"ms-ssim": "ms_ssim", "msssim": "ms_ssim"},
    "dataset": {"koniq": "koniq10k", "koniq-10k": "koniq10k", "kadid": "kadid10k", "kadid-10k": "kadid10k",
                "live-challenge": "livec", "livechallenge": "livec", "live_challenge": "livec",
                "agiqa-3k": "agiqa3k", "agiqa-1k": "agiqa1k", "tid": "tid2013"},
}

TABLES: dict[str, dict[str, str]] = {
    "method": METHODS,
    "backend": BACKENDS,
    "tool": TOOLS,
    "dataset": DATASETS,
    "segmenter": SEGMENTERS,
    "encoder": ENCODERS,
    "student": STUDENTS,
    "family": FAMILIES,
}

_cache: dict[str, Any] = {}


def canonical(kind: str, name: str) -> str:
    """The canonical registered name for ``name`` (resolving aliases); raises UnknownNameError."""
    table = TABLES[kind]
    key = name.strip().lower()
    key = ALIASES.get(kind, {}).get(key, key)
    if key not in table:
        raise UnknownNameError(kind, name, list(table), ALIASES.get(kind, {}))
    return key


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted (aliases excluded)."""
    return sorted(TABLES[kind])


def aliases(kind: str, name: str) -> list[str]:
    """The alternative names accepted for the registered ``name`` of ``kind``, sorted."""
    return sorted(alias for alias, target in ALIASES.get(kind, {}).items() if target == name)


def resolve(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` for ``kind``."""
    key = canonical(kind, name)
    target = TABLES[kind][key]
    if target not in _cache:
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        _cache[target] = getattr(module, attr)
    return _cache[target]


def resolve_method(method: str) -> Any:
    """The Scorer class for a registered method name, or for ``package.module:Class`` (a plugin's subclass)."""
    if ":" not in method:
        return resolve("method", method)
    from lmmiqa.errors import ConfigError
    from lmmiqa.methods.base import Scorer

    module_name, _, attr = method.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import scorer class {method!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise ConfigError(f"{method!r} is not a Scorer subclass")
    return cls

