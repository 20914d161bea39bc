"""``lmmiqa demo``: the real scoring pipeline on a tiny random-weight model, fully offline.

Builds a tiny VLM with :mod:`lmmiqa.testing` (no download), writes the built-in sample photos to a folder and
scores them through exactly the path a real model takes (``--model FOLDER``). The scores are meaningless
because the weights are random; the demo shows that the installation works end to end. It also explains the
low covered mass (the level tokens' share of the next-token probability) that random weights give, instead of
the generic warning lmmiqa prints when a real model's covered mass is low (:mod:`lmmiqa.methods.coverage`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any


def covered_mass_note(results: list[Any], scorer: Any) -> str:
    """Why the covered mass is low here: random weights spread the next-token probability almost evenly over the
    vocabulary, so K level tokens get about K/V of it."""
    import numpy as np

    from lmmiqa.methods.coverage import COVERED_MASS_THRESHOLD

    masses = [r.details.get("covered_mass") for r in results if r.ok and r.details]
    masses = [float(m) for m in masses if m is not None]
    if not masses:
        return "\ncovered mass: not reported by this method"
    k = scorer.level_scale.k
    head = scorer.backend.model.get_output_embeddings()
    vocab = int(getattr(head, "out_features", 0) or len(scorer.backend.tokenizer))
    return (
        f"\ncovered mass (the {k} level tokens' share of the next-token probability): median "
        f"{float(np.median(masses)):.4f}. It is low because the weights are random: the next-token distribution is "
        f"close to uniform over the {vocab}-token vocabulary, so the levels get about K/V = {k}/{vocab} = "
        f"{k / vocab:.4f}. A real checkpoint whose chat template fits the prompt puts most of it on the levels "
        f"(often > 0.9); with a real model lmmiqa warns when most of a batch is below {COVERED_MASS_THRESHOLD} "
        "(a wrong template, a thinking model, a wrong answer prefix) and lists the model's top next tokens."
    )


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmmiqa" / "demo"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="offline smoke test: tiny random model scores sample photos",
        description="Build a tiny random-weight VLM (no download) and score built-in sample photos through the "
        "real pipeline. The scores are meaningless (random weights).",
    )
    p.add_argument("--arch", default="qwen2_5_vl", help="tiny architecture: qwen2_5_vl, qwen3_vl, llava_onevision, internvl")
    p.add_argument("--method", default="q-align", help="q-align or standard-guided (default: q-align)")
    p.add_argument("--dir", default=None, help=f"where to put the tiny model and sample images (default: {_cache_dir()})")
    p.add_argument("--format", choices=("table", "json", "jsonl", "csv"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa import create_scorer
    from lmmiqa.cli.score import write_results
    from lmmiqa.images import sample_images
    from lmmiqa.methods.coverage import LowCoveredMassWarning
    from lmmiqa.testing import make_tiny_vlm

    root = Path(args.dir) if args.dir else _cache_dir()
    model_dir = root / f"tiny-{args.arch}"
    if not (model_dir / "config.json").exists():
        print(f"building a tiny random-weight {args.arch} model in {model_dir} ...", file=sys.stderr)
        make_tiny_vlm(args.arch, model_dir)
    img_dir = root / "samples"
    img_dir.mkdir(parents=True, exist_ok=True)
    for name, img in sample_images():
        path = img_dir / f"{name}.png"
        if not path.exists():
            img.save(path)
    scorer = create_scorer(args.method, model=str(model_dir), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        # random weights always give a low covered mass: explained below rather than warned about
        warnings.simplefilter("always", LowCoveredMassWarning)
        results = scorer.score(str(img_dir))
    for w in caught:
        if not issubclass(w.category, LowCoveredMassWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    dicts = [r.to_dict() for r in results]
    if args.format == "json":
        import json

        print(json.dumps(dicts, indent=2))
    else:
        write_results(dicts, args.format, sys.stdout, header=True)
    print(covered_mass_note(results, scorer), file=sys.stderr)
    print(
        "\nNOTE: these scores come from a tiny model with RANDOM weights: they are meaningless. The demo only "
        "shows that the pipeline runs end to end. For real scores: lmmiqa score IMAGES --model Qwen/Qwen3-VL-8B-Instruct",
        file=sys.stderr,
    )
    return 0 if any(r.ok for r in results) else 1
