"""``lmmiqa train levels``: Q-Align's level recipe (Wu et al., ICML 2024; METHODS §6) for any method's levels.

Example::

    lmmiqa train levels --model Qwen/Qwen2.5-VL-7B-Instruct --dataset koniq10k --root /data/koniq \\
        --split train --val-split val --methods q-align standard-guided --out models/qwen-levels
    lmmiqa score photo.jpg --method q-align --model models/qwen-levels
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._data_args import add_data_args
from lmmiqa.cli._train_args import (
    SHARED_FIELDS,
    add_optimisation_args,
    add_runtime_args,
    add_validation_args,
    fmt_metric,
    shared_options,
    train_and_val_data,
)

_LEVEL_FIELDS = ("levels", "target", "soft_sigma", "tuning", "lora_r", "lora_alpha", "lora_dropout", "lora_target",
                 "max_pixels", "vision_lr")


def register_levels(tsub: Any) -> None:
    """Add ``levels`` to ``lmmiqa train``'s subcommands."""
    from lmmiqa.training.levels import LEVEL_METHODS

    q = tsub.add_parser(
        "levels",
        help="teach an MLLM to answer the level of an image's MOS at a method's answer position (Q-Align)",
        description="Fine-tune a transformers VLM with Q-Align's recipe (Wu et al., ICML 2024; METHODS §6): each "
        "training image's MOS becomes a level by equal-width bins over the training split's MOS min-max (or "
        "--bin-range), and the model is trained so that, at a method's own answer position, its next token is "
        "that level: cross-entropy on the level token (--target onehot) or on a Gaussian over neighbouring levels "
        "(--target soft). The prompts are the methods' own: q-align's five words (also IQARAG's anchors and the "
        "LEAF teacher's point prompts), standard-guided's digits 1..K (LLM-IQA), agentic's summarizer letters A-E, "
        "leaf-pairs' comparison of two images answered A or B (the LEAF teacher's pair prompt; each image of a "
        "batch is compared with the next, the better one's letter is the target); several methods train in one run. LoRA for large checkpoints, full fine-tuning for small ones (--tuning "
        "auto). Writes a merged model folder to --out (weights, processor files, levels.json, training.json) that "
        "`lmmiqa score --model OUT` loads; rerunning the same command resumes from OUT/checkpoints. Validation "
        "(--val-split or --val-fraction) reports each trained method's SRCC/PLCC after every epoch. Data: "
        "--dataset NAME --root DIR or --labels CSV --root DIR, as for `lmmiqa eval`.",
    )
    q.add_argument("--out", "-o", required=True, metavar="DIR", help="model folder to write (resumed when it holds this run)")
    q.add_argument("--overwrite", action="store_true",
                   help="start over, discarding the run DIR holds (needed when it holds one with other data or options)")
    q.add_argument("--model", default=None, help="base VLM: hub id or local folder (default: Qwen/Qwen3-VL-8B-Instruct)")
    add_data_args(q)
    add_validation_args(q)
    m = q.add_argument_group("levels")
    m.add_argument("--methods", nargs="+", default=None, metavar="METHOD", choices=LEVEL_METHODS,
                   help=f"method prompts to train, one or several: {', '.join(LEVEL_METHODS)} (default q-align)")
    m.add_argument("--levels", type=int, choices=(3, 5, 7, 9), default=None,
                   help="K of standard-guided's digit scale (default 5)")
    m.add_argument("--target", choices=("onehot", "soft"), default=None,
                   help="one-hot level of the MOS, or a Gaussian over neighbouring levels (default onehot)")
    m.add_argument("--soft-sigma", type=float, default=None, help="width of the soft target in levels (default 0.5)")
    m.add_argument("--bin-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="MOS range cut into equal-width level bins, in the labels' units (default: the training "
                   "split's MOS min-max, as Q-Align)")
    m.add_argument("--tuning", choices=("auto", "lora", "full"), default=None,
                   help="LoRA, full fine-tuning, or auto (default: full below 200M parameters, else LoRA)")
    m.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 16)")
    m.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 32)")
    m.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default 0.05)")
    m.add_argument("--lora-target", default=None, metavar="REGEX",
                   help="modules to adapt (default: the language model's q/k/v/o and MLP projections)")
    m.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="pixel budget of the images given to the processor (default: the backend's)")
    o = add_optimisation_args(q, lr_default="2e-5")
    o.add_argument("--vision-lr", type=float, default=None, metavar="LR",
                   help="full fine-tuning: learning rate of the vision tower and its projector (default: --lr; 0 "
                   "freezes them, e.g. a tower already trained to see quality)")
    add_runtime_args(q, what="model folder")
    q.set_defaults(func=run_levels)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~lmmiqa.training.levels.LevelsTrainConfig` the flags describe."""
    from lmmiqa.config import build_config
    from lmmiqa.training.levels import LevelsTrainConfig

    opts = shared_options(args, SHARED_FIELDS + _LEVEL_FIELDS)
    if args.methods is not None:
        opts["methods"] = tuple(args.methods)
    if args.bin_range is not None:
        opts["bin_range"] = tuple(args.bin_range)
    return build_config(LevelsTrainConfig, opts, what="lmmiqa train levels")


def run_levels(args: argparse.Namespace) -> int:
    from lmmiqa.training.levels import train_levels

    config = config_from_args(args)
    train, val = train_and_val_data(args)
    result = train_levels(train, args.out, config, val=val, overwrite=args.overwrite)
    if not result.main_process:
        return 0
    last = result.history[-1] if result.history else None
    val_m = (last or {}).get("val") or None
    spec_path = result.out / "levels.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    summary = {
        "out": str(result.out),
        "complete": result.complete,
        "global_step": result.global_step,
        "resumed_from": result.resumed_from,
        "epochs": len(result.history),
        "methods": list(config.methods),
        "tuning": spec.get("tuning"),
        "bins": spec.get("bins"),
        "last_epoch": last,
    }
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    state = "complete" if result.complete else "stopped (--max-steps; rerun without it to resume)"
    line = f"level-trained model written to {result.out}: {result.global_step} step(s), {state}"
    if spec.get("tuning"):
        line += f", {spec['tuning']} fine-tuning"
    if spec.get("bins"):
        lo, hi = spec["bins"]
        line += f"; levels binned over [{lo:g}, {hi:g}]"
    print(line)
    if val_m:
        parts = [f"{m} SRCC {fmt_metric(val_m.get(m + '_srcc'))} PLCC {fmt_metric(val_m.get(m + '_plcc'))}"
                 for m in config.methods]
        print(f"validation (n={val_m.get('n')}): " + "; ".join(parts))
    return 0
