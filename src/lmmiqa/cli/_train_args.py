"""Flags every ``lmmiqa train METHOD`` shares (the shared trainer's options: validation, optimisation, runtime)
and the data + validation split every trainer reads, so that ``train q-scorer`` and ``train levels`` name them the
same way."""

from __future__ import annotations

import argparse
from typing import Any

#: TrainConfig fields the shared flags set (a flag left out keeps the method's default)
SHARED_FIELDS = (
    "model", "epochs", "batch_size", "grad_accum", "eval_batch_size", "lr", "weight_decay", "warmup_ratio",
    "lr_schedule", "max_grad_norm", "val_fraction", "gradient_checkpointing", "device", "dtype",
    "attn_implementation", "seed", "checkpoint_every", "keep_checkpoints", "max_steps", "decode_workers", "progress",
)


def add_validation_args(p: argparse.ArgumentParser) -> None:
    v = p.add_argument_group("validation")
    v.add_argument("--val-split", metavar="SPEC", default=None,
                   help="validation split of the same data, evaluated after every epoch (e.g. 'val' = official:val "
                   "for KonIQ, or seed:0:test); bare train/val/test mean the official split")
    v.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="without --val-split: hold out this fraction of the training images (by reference image for "
                   "synthetic sets) for validation; default 0 = no validation")


def add_optimisation_args(p: argparse.ArgumentParser, *, lr_default: str, epochs_default: int = 3,
                          batch_default: int = 4) -> argparse._ArgumentGroup:
    """The optimisation group (the caller may add its own flags to the returned group)."""
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None, help=f"epochs (default {epochs_default})")
    o.add_argument("--batch-size", type=int, default=None,
                   help=f"images per device per micro-batch (default {batch_default})")
    o.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    o.add_argument("--eval-batch-size", type=int, default=None, help="images per forward in validation (default 2 x batch size)")
    o.add_argument("--lr", type=float, default=None, help=f"learning rate (default {lr_default})")
    o.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    o.add_argument("--warmup-ratio", type=float, default=None, help="fraction of steps with linear warmup (default 0.03)")
    o.add_argument("--lr-schedule", choices=("cosine", "linear", "constant"), default=None,
                   help="learning-rate schedule after the warmup (default cosine)")
    o.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping norm, 0 = off (default 1.0)")
    o.add_argument("--gradient-checkpointing", action="store_const", const=True, default=None,
                   help="recompute activations in the backward pass (less memory, slower)")
    o.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and dropout (default 0)")
    return o


def add_runtime_args(p: argparse.ArgumentParser, *, what: str) -> None:
    r = p.add_argument_group("runtime")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="auto (default), cpu or cuda")
    r.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None,
                   help="dtype of the frozen weights and autocast (default auto: bf16 on GPU, fp32 on CPU)")
    r.add_argument("--attn-implementation", default=None, help="sdpa, flash_attention_2 or eager")
    r.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also checkpoint every N optimizer steps (default: end of each epoch only)")
    r.add_argument("--keep-checkpoints", action="store_const", const=True, default=None,
                   help="keep DIR/checkpoints after training completes")
    r.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help=f"stop after N optimizer steps in total (the {what} is written; rerun without it to resume)")
    r.add_argument("--decode-workers", type=int, default=None, help="threads decoding images (default 2)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    r.add_argument("--format", choices=("text", "json"), default="text", help="summary printed at the end")


def shared_options(args: argparse.Namespace, fields: tuple[str, ...] = SHARED_FIELDS) -> dict[str, Any]:
    """The options the flags set (None = left to the config's default)."""
    opts = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if opts.get("max_grad_norm") == 0:
        opts["max_grad_norm"] = None
    return opts


def train_and_val_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The training data and the validation data (``--val-split``) the flags name; None without validation."""
    from lmmiqa.cli import UsageError
    from lmmiqa.cli._data_args import dataset_from_args

    if args.val_split is not None and args.val_fraction is not None:
        raise UsageError("give --val-split or --val-fraction, not both")
    train = dataset_from_args(args)
    val = None
    if args.val_split is not None:
        val_args = argparse.Namespace(**vars(args))
        val_args.split = args.val_split
        val = dataset_from_args(val_args)
        overlap = set(train.paths()) & set(val.paths())
        if overlap:
            raise UsageError(f"--split and --val-split share {len(overlap)} image(s), e.g. {sorted(overlap)[0]}")
    return train, val


def fmt_metric(x: Any) -> str:
    """A metric for display (``nan`` when undefined: fewer than 3 items, or constant predictions)."""
    return "nan" if x is None else f"{x:.4f}"
