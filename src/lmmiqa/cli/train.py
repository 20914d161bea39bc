"""``lmmiqa train q-scorer``: fine-tune a Q-Scorer (LoRA + score tokens + MLP head; METHODS §4); ``lmmiqa train
levels`` lives in :mod:`lmmiqa.cli.train_levels`.

Example::

    lmmiqa train q-scorer --model Qwen/Qwen3-VL-8B-Instruct --dataset koniq10k --root /data/koniq \\
        --split train --val-split val --tokens 5 --epochs 3 --out adapters/qs-koniq

Several GPUs: ``accelerate launch -m lmmiqa.cli train q-scorer ...`` (one process per GPU, DDP).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._data_args import add_data_args
from lmmiqa.cli._train_args import (
    add_optimisation_args,
    add_runtime_args,
    add_validation_args,
    fmt_metric,
    train_and_val_data,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a trainable method (q-scorer, levels)",
        description="Fine-tune a trainable method. Available: q-scorer (Q-Scorer's score tokens + regression "
        "head), levels (Q-Align's level recipe for the q-align words, standard-guided digits and AgenticIQA letters).",
    )
    tsub = p.add_subparsers(dest="trainable", metavar="METHOD")
    q = tsub.add_parser(
        "q-scorer",
        help="LoRA + score tokens + MLP regression head on an MLLM (Q-Scorer)",
        description="Fine-tune a Q-Scorer (METHODS §4): the answer 'The quality of the image is <scoreX>' is "
        "trained with cross-entropy, and an MLP head on the hidden state that predicts <scoreX> is trained with "
        "MSE against the MOS (unclamped). Writes an adapter folder to --out (LoRA + score-token rows, head, "
        "qscorer.json, training.json) that `lmmiqa score --method q-scorer --adapter OUT` loads. Rerunning the "
        "same command resumes from the last checkpoint in OUT/checkpoints. Several GPUs: "
        "`accelerate launch -m lmmiqa.cli train q-scorer ...`. Data: --dataset NAME --root DIR or --labels CSV "
        "--root DIR; --split/--val-split train, val or test alone mean the official split (KonIQ); the MOS range "
        "is the dataset's (override with --score-range LO HI); lower-is-better labels are flipped onto the same "
        "range, so scores are always higher-is-better. Score tokens: <score1>..<score5> by equal-width bins of the "
        "training split's MOS min-max (Q-Align), or of --bin-range LO HI.",
    )
    q.add_argument("--out", "-o", required=True, metavar="DIR", help="adapter folder to write (resumed when it holds this run)")
    q.add_argument("--overwrite", action="store_true", help="start over, discarding the run DIR holds (needed when it holds one with other data or options)")
    q.add_argument("--model", default=None, help="base MLLM: hub id or local folder (default: Qwen/Qwen3-VL-8B-Instruct)")
    q.add_argument("--preset", default=None, metavar="NAME",
                   help="a training recipe: 'paper' = Q-Scorer's official recipe (mPLUG-Owl2-LLaMA2-7B, LoRA r128 on "
                   "q_proj + v_proj.multiway.1, vision encoder/abstractor/LM head trained, loss 0.05*(CE + squared "
                   "error on the raw MOS clamped to [0, 5]), batch 16); explicit flags override its values; README: "
                   "'Q-Scorer training recipes'")
    add_data_args(q)
    add_validation_args(q)
    m = q.add_argument_group("model")
    m.add_argument("--tokens", type=int, choices=(1, 5), default=None, help="score tokens: 1 (<score>) or 5 (<score1>..<score5>); default 5")
    m.add_argument("--bin-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="MOS range cut into the 5 score tokens' equal-width bins, in the labels' units (default: the "
                   "training split's MOS min-max, as Q-Align; stored in the adapter and used at inference)")
    m.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 16)")
    m.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 32)")
    m.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default 0.05)")
    m.add_argument("--lora-target", default=None, metavar="REGEX",
                   help=r"modules to adapt (default: '.*language_model.*\.(q|k|v|o|gate|up|down)_proj')")
    m.add_argument("--tune-projector", action="store_const", const=True, default=None,
                   help="also train the vision-language projector in full (the vision tower stays frozen)")
    m.add_argument("--tune-vision", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the vision encoder and its projector in full (paper recipe: mPLUG-Owl2's ViT and "
                   "visual abstractor)")
    m.add_argument("--train-lm-head", action=argparse.BooleanOptionalAction, default=None,
                   help="train the whole LM head (paper recipe)")
    m.add_argument("--train-token-rows", action=argparse.BooleanOptionalAction, default=None,
                   help="train the score tokens' embedding rows (default yes; the paper recipe: no)")
    m.add_argument("--token-lstrip", action=argparse.BooleanOptionalAction, default=None,
                   help="score tokens absorb the space before them (default yes; the paper recipe: no)")
    m.add_argument("--head-target", choices=("normalized", "raw"), default=None,
                   help="the head predicts the normalized MOS (default) or the MOS itself (paper recipe)")
    m.add_argument("--loss-clamp", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="clamp the head output inside the loss (paper recipe: 0 5; default: no clamp) and at inference")
    m.add_argument("--image-position", choices=("before", "after"), default=None,
                   help="image before the question (default) or after it (paper recipe)")
    m.add_argument("--train-system-prompt", default=None, metavar="TEXT",
                   help="system prompt of the training prompts (paper recipe: vicuna_v1's; inference has none)")
    m.add_argument("--head-dims", default=None, metavar="D1,D2,...",
                   help="hidden widths of the MLP head (default 2048,1024; 'none' = one linear layer)")
    m.add_argument("--head-activation", choices=("relu", "gelu", "silu", "tanh"), default=None, help="head activation (default relu)")
    m.add_argument("--head-dropout", type=float, default=None, help="head dropout (default 0)")
    o = add_optimisation_args(q, lr_default="2e-5 for LoRA and token rows")
    o.add_argument("--head-lr", type=float, default=None, help="learning rate of the head (default: --lr)")
    o.add_argument("--ce-weight", type=float, default=None, help="weight of the answer cross-entropy (default 1)")
    o.add_argument("--mse-weight", type=float, default=None, help="weight of the head MSE in normalized MOS units (default 1)")
    add_runtime_args(q, what="adapter")
    q.set_defaults(func=run_q_scorer)
    from lmmiqa.cli.train_levels import register_levels

    register_levels(tsub)
    p.set_defaults(func=lambda args: _no_method(p))


def _no_method(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _head_dims(text: str) -> tuple[int, ...]:
    from lmmiqa.errors import ConfigError

    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ConfigError(f"--head-dims expects comma-separated integers, got {text!r}") from err


_FLAG_FIELDS = (
    "model", "tokens", "epochs", "batch_size", "grad_accum", "eval_batch_size", "lr", "head_lr", "weight_decay",
    "warmup_ratio", "lr_schedule", "max_grad_norm", "ce_weight", "mse_weight", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target", "tune_projector", "head_activation", "head_dropout", "val_fraction", "gradient_checkpointing",
    "device", "dtype", "attn_implementation", "seed", "checkpoint_every", "keep_checkpoints", "max_steps",
    "decode_workers", "progress", "tune_vision", "train_lm_head", "train_token_rows", "token_lstrip", "head_target",
    "image_position", "train_system_prompt",
)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~lmmiqa.training.q_scorer.QScorerTrainConfig` the flags describe."""
    from lmmiqa.config import build_config
    from lmmiqa.training.q_scorer import QScorerTrainConfig

    opts: dict[str, Any] = {f: getattr(args, f) for f in _FLAG_FIELDS if getattr(args, f, None) is not None}
    if args.head_dims is not None:
        opts["head_dims"] = _head_dims(args.head_dims)
    if getattr(args, "bin_range", None) is not None:
        opts["bin_range"] = tuple(args.bin_range)
    if getattr(args, "loss_clamp", None) is not None:
        opts["loss_clamp"] = tuple(args.loss_clamp)
    zero_grad_norm = opts.get("max_grad_norm") == 0
    from lmmiqa.training.q_scorer_recipes import recipe_options

    opts = recipe_options(getattr(args, "preset", None), opts)  # explicit flags over the recipe's values
    if zero_grad_norm:
        opts["max_grad_norm"] = None
    return build_config(QScorerTrainConfig, opts, what="lmmiqa train q-scorer")


def run_q_scorer(args: argparse.Namespace) -> int:
    from lmmiqa.training.q_scorer import train_q_scorer

    config = config_from_args(args)
    train, val = train_and_val_data(args)
    result = train_q_scorer(train, args.out, config, val=val, overwrite=args.overwrite)
    if not result.main_process:
        return 0  # `accelerate launch`: the main process reports
    last = result.history[-1] if result.history else None
    from lmmiqa.training.q_scorer_model import is_artifact, read_spec

    spec = read_spec(result.out) if is_artifact(result.out) else None
    summary = {
        "out": str(result.out),
        "complete": result.complete,
        "global_step": result.global_step,
        "resumed_from": result.resumed_from,
        "epochs": len(result.history),
        "last_epoch": last,
        "bin_range": list(spec.bins) if spec is not None and spec.k > 1 else None,
        "bin_source": spec.bin_source if spec is not None and spec.k > 1 else None,
    }
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        state = "complete" if result.complete else "stopped (--max-steps; rerun without it to resume)"
        line = f"q-scorer adapter written to {result.out}: {result.global_step} step(s), {state}"
        if last and last.get("val"):
            val_m = last["val"]
            line += f"; last validation SRCC {fmt_metric(val_m['srcc'])} PLCC {fmt_metric(val_m['plcc'])} (n={val_m['n']})"
        if summary["bin_range"] is not None:
            lo, hi = summary["bin_range"]
            line += f"; score tokens binned over [{lo:g}, {hi:g}] ({summary['bin_source']})"
        print(line)
    return 0
