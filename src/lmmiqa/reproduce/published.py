"""The papers' published numbers and the evaluation protocol of each, as data (METHODS §1-§7).

Every row names its source (a METHODS section and the paper's table) and the protocol it was measured with; where a
paper does not say how it split a dataset, the protocol is lmmiqa's decision and its source says so. Rows that
cannot be run (a model that is not public, a dataset lmmiqa has no record of) stay in the table with the reason, so
that ``lmmiqa reproduce`` prints the paper's whole table.

A plugin scorer class may carry its own rows in a ``published`` class attribute (a tuple of :class:`Published`);
they are used when the package's table has none for its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmmiqa.errors import ConfigError

#: protocol names (see :class:`Protocol`)
PROTOCOL_KINDS = ("official-test", "full", "random-80-20", "reference-10-90")


@dataclass(frozen=True)
class Protocol:
    """How a dataset is split for one published number.

    Attributes:
        kind: ``official-test`` (the dataset's official test split: KonIQ 2015 images), ``full`` (every image: a
            training-free method, or a cross-dataset test), ``random-80-20`` (the 20 % test parts of ``n_splits``
            seeded 80/20 splits, by reference image for synthetic sets; the median over splits is reported) or
            ``reference-10-90`` (IQARAG: a seeded 10 % part of the dataset is the reference bank, the other 90 %
            is evaluated).
        n_splits: number of seeded splits (``random-80-20``, ``reference-10-90``): seeds 0 .. n-1.
        source: where the protocol comes from ("METHODS §7: ...", or "lmmiqa decision: ...").
    """

    kind: str
    n_splits: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOL_KINDS:
            raise ConfigError(f"unknown protocol {self.kind!r}; known: {', '.join(PROTOCOL_KINDS)}")
        if int(self.n_splits) < 1 or (self.kind in ("official-test", "full") and int(self.n_splits) != 1):
            raise ConfigError(f"protocol {self.kind} cannot have {self.n_splits} splits")

    def describe(self) -> str:
        """One phrase, e.g. ``"median of 10 random 80/20 splits"``."""
        if self.kind == "official-test":
            return "official test split"
        if self.kind == "full":
            return "whole dataset"
        if self.kind == "random-80-20":
            return ("median of " if self.n_splits > 1 else "") + (
                f"{self.n_splits} random 80/20 splits (20 % test parts)" if self.n_splits > 1
                else "one random 80/20 split (seed 0, 20 % test part)")
        return "10 % reference bank / 90 % evaluated" + (f", median of {self.n_splits} splits" if self.n_splits > 1
                                                          else " (seed 0)")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_splits": int(self.n_splits), "source": self.source, "text": self.describe()}


@dataclass(frozen=True)
class Published:
    """One published number: SRCC/PLCC on one dataset, or ``mean`` = (SRCC + PLCC)/2 averaged over ``datasets``.

    Attributes:
        method: lmmiqa method name.
        datasets: registered dataset names (one, or several for an average row); a name lmmiqa has no record of
            makes the row not runnable.
        srcc, plcc: the published correlations (None for an average row).
        mean: the published average of (SRCC + PLCC)/2 over ``datasets`` (IQARAG reports only that).
        setting: what produced the number (model, training data, labels used).
        source: where the number is printed (a METHODS section and the paper's table).
        protocol: how the datasets were split.
        runnable: false when lmmiqa cannot run this setting at all; ``why_not`` says why.
        plcc_kind: whether the paper's PLCC is raw or after a logistic fit, when it says (``"not stated"``);
            ``lmmiqa reproduce`` compares it with the raw PLCC and its interval.
    """

    method: str
    datasets: tuple[str, ...]
    setting: str
    source: str
    protocol: Protocol
    srcc: float | None = None
    plcc: float | None = None
    mean: float | None = None
    runnable: bool = True
    why_not: str = ""
    plcc_kind: str = "not stated"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("a published row needs at least one dataset")
        if self.mean is None and (self.srcc is None or self.plcc is None):
            raise ConfigError(f"{self.method}: a published row needs srcc and plcc, or mean")
        if self.mean is not None and (self.srcc is not None or self.plcc is not None):
            raise ConfigError(f"{self.method}: an average row has only mean")
        if not self.source.strip():
            raise ConfigError(f"{self.method}: a published number needs its source")
        if not self.runnable and not self.why_not:
            raise ConfigError(f"{self.method}: say why a row cannot be run")

    @property
    def is_average(self) -> bool:
        return self.mean is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "datasets": list(self.datasets),
            "srcc": self.srcc,
            "plcc": self.plcc,
            "mean": self.mean,
            "setting": self.setting,
            "source": self.source,
            "protocol": self.protocol.to_dict(),
            "runnable": self.runnable,
            "why_not": self.why_not,
            "plcc_kind": self.plcc_kind,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- protocols

_KONIQ_TEST = Protocol("official-test", source="METHODS §7: KonIQ's official 7058/1000/2015 split, test part")
_TRAINING_FREE = Protocol("full", source="lmmiqa decision: a training-free method sees no training data, so the whole "
                          "dataset is evaluated (the paper does not say otherwise)")
_CROSS = Protocol("full", source="METHODS §7: cross-dataset protocol (trained on KonIQ, tested on the whole other set)")
_LLM_IQA_FULL = Protocol("full", source="METHODS §1: the paper scores whole datasets (all of SPAQ took ~8 h on one "
                         "A6000); lmmiqa decision for the datasets it does not mention")
_RANDOM_10 = Protocol("random-80-20", 10, source="METHODS §7: SPAQ, LIVEC and AGIQA-3K are commonly evaluated on 10 "
                      "random 80/20 splits, median reported; the paper does not say otherwise")
_IQARAG_REF = Protocol("reference-10-90", 1, source="METHODS §2.5: references from the same dataset, ref:test = 1:9; "
                       "lmmiqa decision: one seeded split (seed 0), by reference image for synthetic sets (METHODS §7)")

_LLM_IQA = "LLM-IQA (Dog-IQA) paper, Table 2: training-free, mPLUG-Owl3-7B; METHODS §1"
_QALIGN = "Q-Align paper (trained on KonIQ); METHODS §6"
_QSCORER = "Q-Scorer paper, k = 1 row (trained on KonIQ only); METHODS §4.6"
_LEAF = "LEAF paper (secondary source, unverified), student calibrated on 10 % of the MOS; METHODS §3.4"
_AGENTIC = "AgenticIQA paper, GPT-4o as the VLM; METHODS §5.6"


def _rows() -> tuple[Published, ...]:
    rows: list[Published] = []
    for ds, s, p in (("koniq10k", .864, .875), ("livec", .835, .842), ("spaq", .907, .911), ("kadid10k", .671, .678),
                     ("agiqa3k", .743, .801)):
        rows.append(Published("llm-iqa", (ds,), "training-free, mPLUG-Owl3-7B-240728", _LLM_IQA,
                              _KONIQ_TEST if ds == "koniq10k" else _LLM_IQA_FULL, s, p))
    rows.append(Published(
        "iqarag", ("kadid10k", "koniq10k", "livec", "spaq"), "Qwen3-VL-8B-Instruct with IQARAG (P = 5), ref:test = 1:9",
        "IQARAG paper: average (SRCC + PLCC)/2 over KADID, KonIQ, LIVEC and SPAQ (0.7777 without IQARAG); "
        "METHODS §2.5", _IQARAG_REF, mean=.7972,
        notes=("The paper reports only the average over the four datasets; lmmiqa reproduces it when all four are "
               "given and shows each dataset's own numbers beside it.",)))
    for ds, s, p in (("koniq10k", .867, .903), ("spaq", .896, .902), ("agiqa3k", .841, .899)):
        rows.append(Published("leaf", (ds,), "ConvNeXt-Base student of InternVL3.5-8B, 10 % MOS calibration", _LEAF,
                              _KONIQ_TEST if ds == "koniq10k" else _RANDOM_10, s, p))
    rows.append(Published(
        "leaf", ("koniq10k",), "label-free (no MOS: the uncalibrated student)", _LEAF, _KONIQ_TEST, .777, .801,
        runnable=False, why_not="the label-free row is the uncalibrated student; this run scores the calibrated one "
        "(its SRCC is the same: the calibration is monotone). Run `lmmiqa reproduce leaf --option calibrated=false` "
        "for its PLCC"))
    for ds, s, p in (("tid2013", .9165, .9215), ("bid", .8889, .9093), ("agiqa3k", .7937, .8340)):
        rows.append(Published(
            "agentic-iqa", (ds,), "GPT-4o", _AGENTIC, _TRAINING_FREE, s, p,
            runnable=ds != "bid", why_not="lmmiqa has no record of the BID dataset" if ds == "bid" else "",
            notes=("TID2013 is a full-reference set: `lmmiqa reproduce` scores its distorted images without the "
                   "reference (no-reference mode); the paper's agent may have used the references.",)
            if ds == "tid2013" else ()))
    rows.append(Published("agentic-iqa", ("tid2013",), "fine-tuned Qwen2.5-VL-7B", _AGENTIC, _TRAINING_FREE,
                          .7780, .7982, runnable=False, why_not="the paper's fine-tuned Qwen2.5-VL-7B is not public"))
    for ds, s, p in (("koniq10k", .940, .941), ("spaq", .887, .886), ("livec", .860, .853), ("kadid10k", .684, .674),
                     ("agiqa3k", .735, .772)):
        rows.append(Published("q-align", (ds,), "one-align (mPLUG-Owl2), trained on KonIQ", _QALIGN,
                              _KONIQ_TEST if ds == "koniq10k" else _CROSS, s, p))
    for ds, s, p in (("koniq10k", .950, .960), ("spaq", .899, .900), ("livec", .888, .903), ("kadid10k", .645, .660),
                     ("agiqa3k", .722, .811)):
        rows.append(Published("q-scorer", (ds,), "k = 1 score token, mPLUG-Owl2-LLaMA2-7B + LoRA, trained on KonIQ",
                              _QSCORER, _KONIQ_TEST if ds == "koniq10k" else _CROSS, s, p))
    rows.append(Published("q-scorer", ("koniq10k",), "the released checkpoint Qscorer_lora_5_1 (k = 5)",
                          "Q-Scorer release notes (k = 5 checkpoint); METHODS §4.6", _KONIQ_TEST, .948, .959))
    return tuple(rows)


#: every published number lmmiqa knows, in the papers' order
PUBLISHED: tuple[Published, ...] = _rows()


def published_for(method: str, cls: Any = None) -> tuple[Published, ...]:
    """The published rows of ``method`` (a canonical registered name), else those of the scorer class ``cls``
    (its ``published`` attribute), else ``()``."""
    rows = tuple(r for r in PUBLISHED if r.method == method)
    if rows:
        return rows
    return tuple(getattr(cls, "published", ()) or ())


def methods_with_numbers() -> list[str]:
    """Method names that have published rows, sorted."""
    return sorted({r.method for r in PUBLISHED})


__all__ = ["PROTOCOL_KINDS", "PUBLISHED", "Protocol", "Published", "methods_with_numbers", "published_for"]
