"""Every MLLM method, proven on a model that sees quality (issue 22 §3) — a benchmark, not a test.

A random-weight model proves the plumbing of a method, not its semantics: a pair prompt asked the wrong way round
or an anchor with the wrong level word passes on it. This runs each method on a quality-aware model (default
:func:`lmmiqa.testing.quality_aware_vlm`, a shrunken Qwen2.5-VL fine-tuned with ``lmmiqa train levels`` on a
synthetic distortion ladder of the built-in photos) and checks, on **held-out reference images** (never seen in
training; every distorted version of a reference is on one side of the split):

* ``q-align``, ``standard-guided``: SRCC/PLCC with the distortion severity (target SRCC ≥ 0.7).
* ``llm-iqa``: images whose one half is degraded (the strongest severity) and the other pristine, segmented into
  tiles that never straddle the middle (so every crop LLM-IQA scores lies in one half): the crops over the
  degraded half score lower than those over the pristine half, and the mixed score lies between.
* ``iqarag``: a bank of the TRAINING references' ladder images (vision-tower embeddings); held-out SRCC with
  anchors vs without (q-align's prompt); the bank's anchor words agree with its MOS bins; a bank whose MOS is
  reversed (every anchor word wrong) must do worse than the right bank.
* ``leaf``: the quality-aware model (q-align) as teacher on the training ladder, points and pairs; pairs asked in
  both orders agree with the points' ranking on most pairs; a small-cnn student's held-out SRCC vs the teacher's
  (target: within 0.05).
* ``q-scorer``: ``train q-scorer`` from the quality-aware model on the training ladder; held-out SRCC ≥ the base
  model's q-align SRCC − 0.02.
* ``agentic-iqa``: the summarizer's A–E readout (Σ p_c·c of ``details.fusion``) tracks severity; the fused score
  and the tools alone (``q_bar``) reported beside it.

Severity and the ladder's pseudo-MOS (``5 − 4·severity/S``) are affine in each other, so SRCC/PLCC with either
are the same numbers. Writes ``benchmarks/results/quality_model.{json,md}`` (or ``--out``).

    python benchmarks/bench_quality_model.py [--model DIR] [--ladder DIR] [--held-out-refs A,B | --held-out N]
        [--only q-align llm-iqa ...] [--size 64] [--levels 5] [--out benchmarks/results/quality_model]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("q-align", "standard-guided", "llm-iqa", "iqarag", "leaf", "q-scorer", "agentic-iqa")
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- data


class Ladder:
    """The ladder dataset split by reference image."""

    def __init__(self, ds: Any, held_out: list[str]) -> None:
        self.ds = ds
        refs = sorted({it.ref_id for it in ds.items})
        missing = sorted(set(held_out) - set(refs))
        if missing:
            raise SystemExit(f"held-out references {missing} are not in the ladder; its references: {refs}")
        self.held_out = sorted(held_out)
        self.train_refs = [r for r in refs if r not in set(held_out)]
        self.test = ds.subset([it.ref_id in set(held_out) for it in ds.items])
        self.train = ds.subset([it.ref_id not in set(held_out) for it in ds.items])
        self.root = Path(ds.root or ".")

    @staticmethod
    def severity(ds: Any) -> np.ndarray:
        """Severity from the pseudo-MOS (``5 − 4·s/S``): ``(5 − MOS)/4`` is ``s/S``, affine in ``s``."""
        return np.array([(5.0 - it.score) / 4.0 for it in ds.items])


def load_ladder(args: argparse.Namespace) -> Ladder:
    from lmmiqa.data import load_dataset
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.evaluation.semantics import reference_split

    if args.ladder:
        ds = load_dataset("synthetic", root=args.ladder)
    elif getattr(args, "own_ladder", False):
        # the quality-aware model's own ladder and held-out photos (never trained on, not even as crops)
        from lmmiqa import testing

        ds = load_dataset("synthetic", root=testing.quality_ladder_folder())
        held_stems = set(testing.QUALITY_RECIPE["held_out"])
        refs = sorted({it.ref_id for it in ds.items})
        return Ladder(ds, [r for r in refs if Path(r).stem in held_stems])
    else:
        folder = Path(tempfile.mkdtemp(prefix="lmmiqa-ladder-"))
        ds = make_ladder(folder, "builtin", severities=args.severities, types=args.types, size=args.size,
                         seed=args.seed, max_images=args.max_images)
    refs = sorted({it.ref_id for it in ds.items})
    if args.held_out_refs:
        held = [r.strip() for r in args.held_out_refs.split(",") if r.strip()]
    else:
        _, held = reference_split(refs, args.held_out, seed=args.seed)
    return Ladder(ds, held)


def default_model() -> str:
    """The quality-aware test model of issue 22 §2 (no silent substitute when it is not available)."""
    from lmmiqa import testing

    build = getattr(testing, "quality_aware_vlm", None)
    if build is None:
        raise SystemExit("lmmiqa.testing.quality_aware_vlm is not available in this checkout: pass --model DIR")
    return str(build())


# --------------------------------------------------------------------------- helpers


def _check(name: str, value: float, target: str, passed: bool) -> dict[str, Any]:
    return {"check": name, "value": value, "target": target, "passed": bool(passed)}


def _scores(results: list[Any]) -> np.ndarray:
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(results)} images failed, first: {bad[0].image}: {bad[0].error}")
    return np.array([float(r.score) for r in results])


def _corr(scores: np.ndarray, ds: Any, higher_is_better: bool = True) -> dict[str, Any]:
    from lmmiqa.evaluation.semantics import severity_correlation

    return severity_correlation(scores, Ladder.severity(ds), higher_is_better=higher_is_better)


def _mllm(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "device": "cpu", "dtype": "float32"}


# --------------------------------------------------------------------------- methods


def run_q_align(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa

    scorer = lmmiqa.create_scorer("q-align", **_mllm(args))
    c = _corr(_scores(scorer.score(lad.test.paths(), batch_size=args.batch)), lad.test)
    cache["q-align"] = c
    return {**c, "checks": [_check("held-out SRCC with severity", c["srcc"], ">= 0.7", c["srcc"] >= 0.7)]}


def run_standard_guided(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa

    scorer = lmmiqa.create_scorer("standard-guided", levels=args.levels, **_mllm(args))
    c = _corr(_scores(scorer.score(lad.test.paths(), batch_size=args.batch)), lad.test)
    return {**c, "levels": args.levels,
            "checks": [_check("held-out SRCC with severity", c["srcc"], ">= 0.7", c["srcc"] >= 0.7)]}


def _half_segmenter(blocks: int) -> Any:
    from lmmiqa.evaluation.semantics import half_masks
    from lmmiqa.segment.base import Segmenter, as_rgb_image

    class HalfTiles(Segmenter):
        """Tiles of each half of the image (left/right), none straddling the middle."""

        name = "half-tiles"

        def segment(self, image: Any) -> np.ndarray:
            w, h = as_rgb_image(image).size
            return half_masks(w, h, blocks=blocks)

    return HalfTiles()


def run_llm_iqa(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    from lmmiqa.data.synth import distort
    from lmmiqa.evaluation.semantics import half_check, half_degraded
    from lmmiqa.methods.llm_iqa import LLMIQA, LLMIQAConfig

    cfg = LLMIQAConfig(levels=args.levels, segmenter="felzenszwalb", min_area=0.01, **_mllm(args))
    scorer = LLMIQA(cfg, segmenter=_half_segmenter(2))
    refs = [Image.open(lad.root / r).convert("RGB") for r in lad.held_out]
    cases = []
    for kind in args.half_kinds:
        for side in ("left", "right"):
            for ref_id, img in zip(lad.held_out, refs):
                hd = half_degraded(img, lambda a, k=kind: distort(a, k, args.severities, args.severities, seed=0),
                                   side)
                cases.append((ref_id, kind, side, hd))
    results = scorer.score([c[3].image for c in cases], batch_size=args.batch)
    rows = []
    for (ref_id, kind, side, hd), r in zip(cases, results):
        if not r.ok:
            raise RuntimeError(f"llm-iqa failed on {ref_id} ({kind}, {side}): {r.error}")
        rows.append({"ref": ref_id, "kind": kind, "side": side,
                     **half_check(r.details, r.score, hd.degraded_box, hd.pristine_box)})
    crops_ok = float(np.mean([row["degraded"] < row["pristine"] for row in rows]))
    between = float(np.mean([row["degraded"] <= row["mixed"] <= row["pristine"] for row in rows]))
    passed = float(np.mean([row["passed"] for row in rows]))
    return {
        "cases": len(rows),
        "degraded_crops_mean": float(np.mean([r["degraded"] for r in rows])),
        "pristine_crops_mean": float(np.mean([r["pristine"] for r in rows])),
        "mixed_mean": float(np.mean([r["mixed"] for r in rows])),
        "rows": rows,
        "checks": [
            _check("degraded-half crops < pristine-half crops (share of images)", crops_ok, ">= 0.8", crops_ok >= 0.8),
            _check("mixed score between the halves (share of images)", between, ">= 0.8", between >= 0.8),
            _check("both (share of images)", passed, "report", True),
        ],
    }


def _bank_dataset(lad: Ladder, reverse: bool, folder: Path) -> Any:
    """The training ladder as a label file; ``reverse`` writes MOS 6 − MOS (every anchor word wrong)."""
    from lmmiqa.data import load_dataset

    lines = ["dis_img_path,score"]
    for it in lad.train.items:
        mos = 6.0 - it.score if reverse else it.score
        lines.append(f"{it.id},{mos:.6f}")
    labels = folder / ("bank_reversed.csv" if reverse else "bank.csv")
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_dataset(labels=labels, root=lad.root)


def ladder_bank(lad: Ladder, reverse: bool, folder: Path, encoder: Any) -> tuple[Any, float]:
    """Build an IQARAG bank of the training ladder in ``folder``; return it and its anchor-word agreement.

    Agreement: the share of bank items whose anchor word (``level_word(bin)``, what IQARAG shows) is the word of
    the item's TRUE MOS bin, binned min-max over the bank as the bank itself does (METHODS §2.4). ``reverse``
    builds the bank from MOS ``6 − MOS``: every anchor word but the middle one is then wrong.
    """
    from lmmiqa.evaluation.semantics import bank_word_agreement
    from lmmiqa.methods.iqarag import level_word
    from lmmiqa.retrieval import build_bank
    from lmmiqa.retrieval.bank import Bank

    folder.mkdir(parents=True, exist_ok=True)
    build_bank(folder / "bank", _bank_dataset(lad, reverse, folder), encoder, progress=False)
    bank = Bank.load(folder / "bank", index=False)
    true_mos = {it.id: it.score for it in lad.train.items}
    truth = [true_mos[it.id] for it in bank.items]
    words = [level_word(it.bin) for it in bank.items]
    return bank, bank_word_agreement(truth, words, (min(truth), max(truth)))


def run_iqarag(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.retrieval import create_encoder

    if "q-align" not in cache:
        cache["q-align"] = run_q_align(args, lad, cache)
    work = Path(tempfile.mkdtemp(prefix="lmmiqa-iqarag-"))
    enc = create_encoder("vision-tower", model=args.model, device="cpu")
    out: dict[str, Any] = {"bank_items": len(lad.train.items), "without_anchors": cache["q-align"]}
    for name, reverse in (("right_words", False), ("reversed_words", True)):
        bank, agree = ladder_bank(lad, reverse, work / name, enc)
        scorer = lmmiqa.create_scorer("iqarag", bank=str(bank.dir), **_mllm(args))
        c = _corr(_scores(scorer.score(lad.test.paths(), batch_size=args.batch)), lad.test)
        out[name] = {**c, "word_bin_agreement": agree}
    right, wrong, plain = out["right_words"], out["reversed_words"], out["without_anchors"]
    out.update(srcc=right["srcc"], plcc=right["plcc"], n=right["n"])
    out["checks"] = [
        _check("anchor words agree with the bank's MOS bins", right["word_bin_agreement"], "== 1",
               right["word_bin_agreement"] == 1.0),
        _check("reversed bank: words disagree with true MOS bins", wrong["word_bin_agreement"], "< 0.5",
               wrong["word_bin_agreement"] < 0.5),
        _check("SRCC right words − reversed words", right["srcc"] - wrong["srcc"], "> 0",
               right["srcc"] > wrong["srcc"]),
        _check("SRCC with anchors − without", right["srcc"] - plain["srcc"], "report", True),
    ]
    return out


def run_leaf(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.distill.teacher import PAIRS_FILE, POINTS_FILE, TeacherConfig, teach
    from lmmiqa.distill.train import TrainConfig, train_student
    from lmmiqa.evaluation.semantics import pair_order_consistency
    from lmmiqa.jsonl import read_jsonl

    if "q-align" not in cache:
        cache["q-align"] = run_q_align(args, lad, cache)
    work = Path(tempfile.mkdtemp(prefix="lmmiqa-leaf-"))
    t0 = time.perf_counter()
    tcfg = TeacherConfig(method="q-align", options=_mllm(args), pairs=args.leaf_pairs, pair_mode="prompt",
                         batch_size=args.batch, progress=False)
    teach(lad.train.paths(), work / "teacher", tcfg)
    t_teach = time.perf_counter() - t0
    points = {r["image"]: r["score"] for r in read_jsonl(work / "teacher" / POINTS_FILE) if r.get("score") is not None}
    order = sorted(points)
    idx = {p: i for i, p in enumerate(order)}
    pairs = [r for r in read_jsonl(work / "teacher" / PAIRS_FILE) if r.get("p_ab") is not None]
    pair_args = ([points[p] for p in order], [(idx[r["a"]], idx[r["b"]]) for r in pairs],
                 [r["p_ab"] for r in pairs], [r["p_ba"] for r in pairs])
    # the teacher samples close pairs on purpose (close_fraction): pairs whose point scores nearly tie have no
    # ranking to agree with, so the check counts pairs at least half a level apart; every pair is reported too
    cons = pair_order_consistency(*pair_args, margin=args.leaf_pair_margin)
    cons_all = pair_order_consistency(*pair_args)
    t0 = time.perf_counter()
    train_student(work / "teacher", work / "student",
                  TrainConfig(student="small-cnn", epochs=args.leaf_epochs, device="cpu", progress=False))
    t_train = time.perf_counter() - t0
    student = lmmiqa.create_scorer("leaf", student=str(work / "student"), device="cpu")
    c = _corr(_scores(student.score(lad.test.paths())), lad.test)
    teacher = cache["q-align"]
    gap = teacher["srcc"] - c["srcc"]
    return {
        **c, "teacher": {"srcc": teacher["srcc"], "plcc": teacher["plcc"]}, "pairs": cons, "pairs_all": cons_all,
        "seconds": {"teach": t_teach, "train": t_train},
        "checks": [
            _check(f"pairs (both orders) agree with points more than {args.leaf_pair_margin:g} apart",
                   cons["agree"], ">= 0.7", cons["agree"] >= 0.7),
            _check("pairs (both orders) agree with points, every pair", cons_all["agree"], "report", True),
            _check("pairs whose two orders prefer the same image, every pair", cons_all["order_consistent"],
                   "report", True),
            _check("teacher SRCC − student SRCC", gap, "<= 0.05", gap <= 0.05),
        ],
    }


def run_q_scorer(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.training.q_scorer import QScorerTrainConfig, train_q_scorer

    if "q-align" not in cache:
        cache["q-align"] = run_q_align(args, lad, cache)
    out = Path(tempfile.mkdtemp(prefix="lmmiqa-qscorer-")) / "adapter"
    t0 = time.perf_counter()
    cfg = QScorerTrainConfig(model=args.model, epochs=args.q_scorer_epochs, device="cpu", dtype="float32",
                             head_dims=(64, 32), lora_r=4, lora_alpha=8.0, lr=args.q_scorer_lr, val_fraction=0.0,
                             max_steps=args.q_scorer_steps, progress=False)
    train_q_scorer(lad.train, out, cfg)
    t_train = time.perf_counter() - t0
    scorer = lmmiqa.create_scorer("q-scorer", adapter=str(out), device="cpu", dtype="float32")
    c = _corr(_scores(scorer.score(lad.test.paths(), batch_size=args.batch)), lad.test)
    base = cache["q-align"]["srcc"]
    return {**c, "base_q_align_srcc": base, "seconds": {"train": t_train},
            "checks": [_check("SRCC − (base q-align SRCC − 0.02)", c["srcc"] - (base - 0.02), ">= 0",
                              c["srcc"] >= base - 0.02)]}


def run_agentic(args: argparse.Namespace, lad: Ladder, cache: dict[str, Any]) -> dict[str, Any]:
    import lmmiqa

    opts: dict[str, Any] = {**_mllm(args), "max_new_tokens": args.agentic_tokens}
    if args.agentic_tools:
        opts["tools"] = tuple(args.agentic_tools.split(","))
    scorer = lmmiqa.create_scorer("agentic-iqa", **opts)
    results = scorer.score(lad.test.paths(), batch_size=args.batch)
    fused = _scores(results)
    letters, tools = [], []
    for r in results:
        f = r.details["fusion"]
        p = {float(k): float(v) for k, v in f["p"].items()}
        letters.append(sum(c * v for c, v in p.items()) / sum(p.values()))
        tools.append(np.nan if f["q_bar"] is None else float(f["q_bar"]))
    summ = _corr(np.array(letters), lad.test)
    out: dict[str, Any] = {"summarizer": summ, "fused": _corr(fused, lad.test)}
    t = np.array(tools)
    out["tools"] = _corr(t, lad.test) if np.isfinite(t).sum() >= 3 else {"srcc": None, "plcc": None,
                                                                        "n": int(np.isfinite(t).sum())}
    out.update(srcc=out["fused"]["srcc"], plcc=out["fused"]["plcc"], n=out["fused"]["n"])
    out["checks"] = [_check("summarizer A–E readout SRCC with severity", summ["srcc"], ">= 0.7",
                            summ["srcc"] >= 0.7)]
    return out


RUNNERS: dict[str, Callable[[argparse.Namespace, Ladder, dict[str, Any]], dict[str, Any]]] = {
    "q-align": run_q_align, "standard-guided": run_standard_guided, "llm-iqa": run_llm_iqa,
    "iqarag": run_iqarag, "leaf": run_leaf, "q-scorer": run_q_scorer, "agentic-iqa": run_agentic,
}


# --------------------------------------------------------------------------- report


def _fmt(x: Any) -> str:
    return "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Measured {env['date']} on {env['machine']} (load {env['load']}), model `{env['model']}`, "
        f"held-out references {', '.join(report['held_out'])} ({report['held_out_images']} images).", "",
        "| method | held-out SRCC | PLCC | check | value | target | pass | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        if "error" in r:
            lines.append(f"| {m} | — | — | error: {r['error']} | | | ✗ | {_fmt(r.get('seconds_total'))} |")
            continue
        for k, c in enumerate(r["checks"]):
            head = (f"| {m} | {_fmt(r.get('srcc'))} | {_fmt(r.get('plcc'))} " if k == 0 else "| | | ")
            tail = f"| {_fmt(r['seconds_total'])} |" if k == 0 else "| |"
            lines.append(f"{head}| {c['check']} | {_fmt(c['value'])} | {c['target']} | "
                         f"{'✓' if c['passed'] else '✗'} {tail}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: lmmiqa.testing.quality_aware_vlm())")
    p.add_argument("--ladder", help="a `lmmiqa synth` ladder folder (default: the quality-aware model's own ladder "
                   "and held-out photos without --model; built here from the built-in photos with --model)")
    p.add_argument("--held-out-refs", help="comma-separated reference ids (ref_img_path) held out of training")
    p.add_argument("--held-out", type=int, default=2, help="held-out references when --held-out-refs is not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="ladder image side when the ladder is built here")
    p.add_argument("--severities", type=int, default=5)
    p.add_argument("--types", nargs="+", default=None, help="distortion types of a ladder built here (default: all)")
    p.add_argument("--max-images", type=int, default=None, help="source photos of a ladder built here")
    p.add_argument("--levels", type=int, default=5, help="standard-guided / llm-iqa levels K")
    p.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--half-kinds", nargs="+", default=["gaussian_blur", "gaussian_noise"])
    p.add_argument("--leaf-pairs", type=int, default=64)
    p.add_argument("--leaf-epochs", type=int, default=None)
    p.add_argument("--leaf-pair-margin", type=float, default=0.5,
                   help="pairs whose teacher point scores differ by more than this (1-5 scale) enter the pair check")
    p.add_argument("--q-scorer-epochs", type=int, default=1)
    p.add_argument("--q-scorer-steps", type=int, default=None, help="cap on q-scorer optimizer steps")
    p.add_argument("--q-scorer-lr", type=float, default=1e-3,
                   help="q-scorer learning rate (default 1e-3: the small test model; train q-scorer's 2e-5 is for 7B)")
    p.add_argument("--agentic-tools", default=None, help="comma-separated tool allow-list (default: all built-in)")
    p.add_argument("--agentic-tokens", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "quality_model"), help="output path without extension")
    args = p.parse_args(argv)
    args.own_ladder = args.model is None and not args.ladder
    args.model = args.model or default_model()
    lad = load_ladder(args)
    report: dict[str, Any] = {
        "environment": {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "model": args.model,
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "held_out": lad.held_out, "train_refs": lad.train_refs,
        "held_out_images": len(lad.test.items), "train_images": len(lad.train.items), "methods": {},
    }
    cache: dict[str, Any] = {}
    for m in args.only:
        t0 = time.perf_counter()
        try:
            r = RUNNERS[m](args, lad, cache)
        except Exception as err:  # a method that breaks is reported in the table, the others still run
            r = {"error": f"{type(err).__name__}: {err}"}
        r["seconds_total"] = time.perf_counter() - t0
        report["methods"][m] = r
        print(f"{m}: {json.dumps({k: v for k, v in r.items() if k not in ('rows',)}, default=str)[:600]}",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
