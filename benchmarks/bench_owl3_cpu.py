"""What one mPLUG-Owl3-7B-240728 prompt costs on this CPU, measured layer by layer (no download, no 16 GB of RAM).

The full model (8.06 B parameters: 16 GB in bf16, 32 GB in fp32) does not fit beside other work on a 24 GB
machine, and speed does not depend on weight values. So this script builds *one* layer of each kind at full size
from the published config (random weights) and times it on the shapes of an LLM-IQA prompt, then adds up:

* 26 SigLIP-so400m layers (the 27th is not used) over ``views`` × 729 patches (5-7 views per image);
* 24 plain Qwen2 decoder layers and 4 hyper layers (self-attention + the gated cross-attention over the views'
  features) over the prompt's tokens;
* the LM head for one position.

Usage: ``python benchmarks/bench_owl3_cpu.py [--views 7] [--tokens 150] [--dtype bfloat16 float32] [--repeats 3]``.
The estimate is a lower bound of a real run (no processor, no weight loading, no Python overhead between layers).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

from lmmiqa.families.mplug_owl3.configuration import MplugOwl3Config
from lmmiqa.families.mplug_owl3.modeling import MediaLayout, Owl3DecoderLayer, rope_cos_sin

PUBLISHED = pathlib.Path(__file__).resolve().parents[2] / "shared/data/official/mplug-owl3-7b-240728/hf-files/config.json"


def _best(fn, args: tuple, repeats: int) -> float:
    fn(*args)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(views: int, tokens: int, dtype: torch.dtype, repeats: int, config: dict | None = None) -> dict:
    """Seconds per layer kind and the summed per-prompt estimate (``config``: default the published one)."""
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    if config is None and PUBLISHED.is_file():
        config = json.loads(PUBLISHED.read_text())
    cfg = MplugOwl3Config(**(config or {}))
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "views": views, "tokens": tokens, "patches": patches}
    with torch.inference_mode():
        vis = SiglipEncoderLayer(cfg.vision_config).to(dtype).eval()
        x = torch.randn(views, patches, cfg.vision_config.hidden_size, dtype=dtype)
        out["siglip_layer_s"] = _best(vis, (x, None), repeats)
        del vis
        plain = Owl3DecoderLayer(cfg, 1).to(dtype).eval()
        hyper = Owl3DecoderLayer(cfg, 0).to(dtype).eval()  # hyper_layers [1, ...]: layer 0 is hyper
        h = torch.randn(1, tokens, cfg.hidden_size, dtype=dtype)
        cos_sin = rope_cos_sin(torch.arange(tokens)[None], cfg.head_dim, cfg.rope_theta, dtype)
        starts = torch.arange(views) * 6 + 20  # a cut prompt: one 5-token placeholder every ~6 tokens
        mo = torch.zeros(1, tokens, 2, dtype=torch.long)
        mo[0, :, 1] = (torch.arange(tokens)[:, None] > starts[None]).sum(1)
        layout = MediaLayout.from_media_offset(mo, None)
        feats = torch.randn(views, patches, cfg.hidden_size, dtype=dtype)
        absolute = torch.arange(tokens)[None]
        out["decoder_layer_s"] = _best(plain, (h, cos_sin, None, None, None, None, absolute), repeats)
        out["hyper_layer_s"] = _best(hyper, (h, cos_sin, None, None, feats, layout, absolute), repeats)
        del plain, hyper
        head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False).to(dtype)
        last = h[:, -1:].clone(memory_format=torch.contiguous_format)  # as the model hands it to its head
        out["lm_head_s"] = _best(head, (last,), repeats)
    n_vis = cfg.vision_config.num_hidden_layers - 1
    n_hyper = len(cfg.hyper_layer_indices())
    n_plain = cfg.num_hidden_layers - n_hyper
    out["prompt_s"] = (n_vis * out["siglip_layer_s"] + n_plain * out["decoder_layer_s"]
                       + n_hyper * out["hyper_layer_s"] + out["lm_head_s"])
    from lmmiqa.families.mplug_owl3.modeling import MplugOwl3ForConditionalGeneration

    with torch.device("meta"):
        params = sum(p.numel() for p in MplugOwl3ForConditionalGeneration(cfg).parameters())
    out["weights_gb"] = round(params * torch.finfo(dtype).bits / 8 / 1e9, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=7, help="views per image (tiles + global view: 5-7)")
    parser.add_argument("--tokens", type=int, default=150, help="prompt tokens (the LLM-IQA prompt with a 2x3 cut is ~150)")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in args.dtype:
        row = measure(args.views, args.tokens, getattr(torch, name), args.repeats)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
