"""Make the mPLUG-Owl3 parity fixture: run the *official* mPLUG-Owl3-7B-240728 code on a tiny random config.

This script contains no official code: it imports the checkpoint's own modules at run time from the shared
reference folder (``shared/data/official/mplug-owl3-7b-240728/hf-files``) and records what they compute, so that
lmmiqa's native implementation can be compared with them (``tests/families/test_mplug_owl3_parity.py``).

It needs the official code's environment, not lmmiqa's: transformers 4.41.2 and torchvision (which must never be
installed beside lmmiqa). One way (CPU, ~5.6 GB, from the machine's local wheels)::

    python3 -m venv /work/side/owl3
    /work/side/owl3/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==4.41.2 'numpy<2' einops icecream pillow
    /work/side/owl3/bin/python scripts/owl3_parity_fixture.py            # from the repository root

What is compared (:data:`CASES`): the official processor's ``input_ids``, ``media_offset`` and (sampled)
``pixel_values`` with its default tiling, and the official model's last-position final hidden state (from which
the whole logit row follows: ``lm_head`` is the recipe's) and logits (the seven digit levels, every 50th vocabulary
entry and the top 10), for the LLM-IQA prompt on images of several shapes, plus a text-only prompt and six greedily
generated tokens. Model: :data:`lmmiqa.families.mplug_owl3.tiny.TINY_CONFIG` with the recipe weights
(:func:`lmmiqa.families.mplug_owl3.tiny.recipe_value`); tokenizer: Qwen2's BPE + the inferred special tokens
(:func:`lmmiqa.families.mplug_owl3.tokenizer.derive_tokenizer`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OFFICIAL = SHARED / "official" / "mplug-owl3-7b-240728" / "hf-files"
QWEN2 = SHARED / "hf" / "Qwen2.5-VL-7B-Instruct"
OUT = REPO / "tests" / "families" / "fixtures"

#: (name, image size or None, system prompt?, user text). Sizes chosen to hit different grids and a tiny crop.
CASES: list[tuple[str, tuple[int, int] | None, bool]] = [
    ("landscape_400x300", (400, 300), True),
    ("portrait_120x420", (120, 420), True),
    ("square_256", (256, 256), True),
    ("crop_37x23", (37, 23), True),
    ("text_only", None, False),
]
STRIDE = 50
GENERATE_TOKENS = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=pathlib.Path, default=OFFICIAL, help="the official hf-files folder")
    parser.add_argument("--qwen2", type=pathlib.Path, default=QWEN2, help="a folder with Qwen2's vocab.json, merges.txt")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    t0 = time.time()
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(args.official))
    sys.path.insert(0, str(REPO / "src"))

    import numpy as np
    import torch
    import transformers
    from configuration_mplugowl3 import mPLUGOwl3Config  # the official code, imported at run time
    from image_processing_mplugowl3 import mPLUGOwl3ImageProcessor
    from modeling_mplugowl3 import mPLUGOwl3Model
    from processing_mplugowl3 import mPLUGOwl3Processor

    from lmmiqa.families.mplug_owl3.tiny import TINY_CONFIG, recipe_value
    from lmmiqa.families.mplug_owl3.tokenizer import derive_tokenizer
    from lmmiqa.levels import standard_scale
    from lmmiqa.prompts import standard_system, standard_user
    from lmmiqa.testing import make_image

    tok = derive_tokenizer(args.qwen2 / "vocab.json", args.qwen2 / "merges.txt")
    cfg = mPLUGOwl3Config(**TINY_CONFIG)
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    model = mPLUGOwl3Model(cfg).eval().float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(recipe_value(name, tuple(param.shape))))
    processor = mPLUGOwl3Processor(image_processor=mPLUGOwl3ImageProcessor(image_size=384), tokenizer=tok)

    scale = standard_scale(7)
    system, user = standard_system(scale), standard_user(scale)
    digits = [tok.convert_tokens_to_ids(d) for d in scale.tokens]
    arrays: dict[str, np.ndarray] = {"digit_ids": np.asarray(digits, dtype=np.int64)}
    meta: dict[str, dict] = {}
    for seed, (name, size, with_system) in enumerate(CASES, start=1):
        messages = [{"role": "system", "content": system}] if with_system else []
        if size is None:
            messages.append({"role": "user", "content": "Rate the quality of this image."})
            images = None
        else:
            messages.append({"role": "user", "content": "<|image|>\n" + user})
            images = [make_image(size[0], size[1], seed=seed)]
        messages.append({"role": "assistant", "content": ""})
        asked = json.loads(json.dumps(messages[:-1]))  # the official processor rewrites the messages in place
        inputs = processor(messages, images=images, videos=None)
        pv = inputs.get("pixel_values")
        with torch.inference_mode():
            out = model(
                pixel_values=pv.float() if pv is not None else None,
                input_ids=inputs["input_ids"],
                media_offset=inputs["media_offset"],
                attention_mask=torch.ones_like(inputs["input_ids"]),
                output_hidden_states=True,
            )
        logits = out.logits[0, -1].float()
        top = torch.topk(logits, 10)
        arrays[f"{name}/input_ids"] = inputs["input_ids"][0].numpy().astype(np.int64)
        arrays[f"{name}/media_offset"] = inputs["media_offset"][0].numpy().astype(np.int64)
        arrays[f"{name}/hidden_last"] = out.hidden_states[-1][0, -1].float().numpy()
        arrays[f"{name}/logits_strided"] = logits[::STRIDE].numpy()
        arrays[f"{name}/logits_digits"] = logits[digits].numpy()
        arrays[f"{name}/top_ids"] = top.indices.numpy().astype(np.int64)
        arrays[f"{name}/top_values"] = top.values.numpy()
        info: dict = {"size": size, "system": with_system, "messages": asked}
        if pv is not None:
            flat = pv.float().reshape(-1).numpy()
            arrays[f"{name}/pixel_sample"] = flat[::1009]
            info["pixel_shape"] = list(pv.shape)
            info["pixel_sum"] = float(flat.astype(np.float64).sum())
        meta[name] = info
    # greedy generation with the official generate (the first case)
    name, size, _ = CASES[0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "<|image|>\n" + user},
                {"role": "assistant", "content": ""}]
    inputs = processor(messages, images=[make_image(size[0], size[1], seed=1)], videos=None)
    with torch.inference_mode():
        gen = model.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].float(), media_offset=inputs["media_offset"],
            attention_mask=torch.ones_like(inputs["input_ids"]), tokenizer=tok, max_new_tokens=GENERATE_TOKENS,
            min_new_tokens=GENERATE_TOKENS, do_sample=False, decode_text=False,
        )
    arrays[f"{name}/generated"] = gen[0].numpy().astype(np.int64)

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "mplug_owl3_parity.npz", **arrays)
    summary = {
        "made_by": "scripts/owl3_parity_fixture.py (the official mPLUG-Owl3-7B-240728 code, imported at run time)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "config": TINY_CONFIG,
        "weights": "lmmiqa.families.mplug_owl3.tiny.recipe_value (numpy default_rng(crc32(name)))",
        "tokenizer": "lmmiqa.families.mplug_owl3.tokenizer.derive_tokenizer(Qwen2.5-VL-7B-Instruct vocab.json, merges.txt)",
        "attn_implementation": "sdpa",
        "logits_stride": STRIDE,
        "pixel_stride": 1009,
        "generate_tokens": GENERATE_TOKENS,
        "cases": meta,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "mplug_owl3_parity.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}))


if __name__ == "__main__":
    main()
