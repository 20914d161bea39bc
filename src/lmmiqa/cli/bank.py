"""``lmmiqa bank``: build and inspect IQARAG reference banks (METHODS §2; :mod:`lmmiqa.retrieval.bank`).

::

    lmmiqa bank build --dataset koniq10k --root /data/koniq --split train --encoder vision-tower \\
        --model Qwen/Qwen3-VL-8B-Instruct --out banks/koniq-train
    lmmiqa bank build --labels my.csv --root imgs/ --encoder clip:openai/clip-vit-large-patch14 --out banks/mine
    lmmiqa bank info banks/koniq-train
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._data_args import add_data_args, dataset_from_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bank",
        help="build and inspect IQARAG reference banks",
        description="Reference banks for IQARAG: rated images, their embeddings and a faiss index in one folder.",
    )
    bank_sub = p.add_subparsers(dest="bank_command", metavar="SUBCOMMAND")

    b = bank_sub.add_parser(
        "build",
        help="embed a rated dataset split into a bank folder (resumable)",
        description="Embed the images of a dataset split (or any label CSV) with an encoder and write a bank folder: "
        "bank.json, items.csv, embeddings.npy, index.faiss. MOS are min-max normalized over the bank (1 = best; "
        "lower-is-better scores are flipped). Interrupted builds resume when the same command runs again. Exit "
        "status: 0 on success, 1 when the bank could not be built, 2 for usage errors.",
    )
    add_data_args(b)
    g = b.add_argument_group("encoder and bank")
    g.add_argument("--encoder", required=True, metavar="SPEC",
                   help="vision-tower (the MLLM's own vision encoder; needs --model), clip:MODEL, siglip:MODEL or "
                   "dinov2:MODEL (hub id or local folder)")
    g.add_argument("--model", default=None, help="the MLLM whose vision tower encodes (--encoder vision-tower)")
    g.add_argument("--pooling", default=None, help="dinov2: cls (default) or mean")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", default="auto", help="auto (default: bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--batch-size", type=int, default=16, help="images per encoder forward (default 16)")
    g.add_argument("--out", "-o", required=True, metavar="DIR", help="bank folder (created)")
    g.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivf", "auto"),
                   help="faiss index: flat (exact, default), hnsw or ivf (approximate, for banks over ~100k "
                   "items), auto (flat up to 100k items, else hnsw)")
    g.add_argument("--no-normalize", action="store_true", help="keep raw vectors (default: L2-normalize them)")
    g.add_argument("--chunk-size", type=int, default=512, help="images per saved chunk, the unit of resumption (default 512)")
    g.add_argument("--decode-workers", type=int, default=4, help="threads decoding images (default 4)")
    g.add_argument("--skip-bad", action="store_true", help="leave out images that cannot be decoded (counted) instead of stopping")
    g.add_argument("--force", action="store_true", help="rebuild an existing bank, or discard an unfinished build of other settings")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    b.set_defaults(func=run_build)

    i = bank_sub.add_parser("info", help="print a bank's summary", description="Verify a bank folder and print its summary.")
    i.add_argument("dir", metavar="DIR", help="bank folder")
    i.add_argument("--format", choices=("text", "json"), default="text")
    i.set_defaults(func=run_info)

    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_build(args: argparse.Namespace) -> int:
    from lmmiqa.retrieval.bank import build_bank
    from lmmiqa.retrieval.encoders import EncoderSpec, create_encoder

    spec = EncoderSpec.parse(args.encoder, model=args.model, pooling=args.pooling)  # usage errors before loading
    ds = dataset_from_args(args)
    print(f"lmmiqa bank: {len(ds)} image(s) of {ds.name} ({ds.split}) with encoder {spec.spec}", file=sys.stderr)
    encoder = create_encoder(spec, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    bank = build_bank(
        args.out,
        ds,
        encoder,
        index=args.index,
        normalize=not args.no_normalize,
        chunk_size=args.chunk_size,
        decode_workers=args.decode_workers,
        skip_bad=args.skip_bad,
        force=args.force,
        progress=args.progress,
    )
    _print_summary(bank.summary())
    return 0


def run_info(args: argparse.Namespace) -> int:
    from lmmiqa.retrieval.bank import Bank

    summary = Bank.load(args.dir).summary()
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    mos = s["mos"]
    src = s.get("source") or {}
    index = s["index"]
    params = ", ".join(f"{k}={v}" for k, v in (index.get("params") or {}).items())
    lines = [
        f"bank      {s['dir']}",
        f"schema    {s['schema']}  (fingerprint {s['fingerprint']})",
        f"encoder   {s['encoder']}  pooling={s['pooling']}  normalize={s['normalize']}",
        f"items     {s['count']}  dim={s['dim']}" + (f"  skipped={s['n_skipped']}" if s.get("n_skipped") else ""),
        f"index     {index['kind']}" + (f" ({params})" if params else ""),
        f"mos       [{mos['min']:g}, {mos['max']:g}]  "
        + ("higher is better" if mos["higher_is_better"] else "lower is better (flipped: mos_norm 1 = best)"),
        "bins      " + "  ".join(f"{k}:{v}" for k, v in s["bins"].items()) + "  (1 = bad ... 5 = excellent)",
        f"source    {src.get('name', '?')} {src.get('split', '')}  labels={src.get('labels')}  root={src.get('root')}",
        f"created   {s.get('created')}  with " + ", ".join(f"{k} {v}" for k, v in (s.get("created_with") or {}).items()),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
