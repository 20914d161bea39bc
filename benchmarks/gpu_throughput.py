"""GPU throughput of lmmiqa's MLLM scorers on full-size models with random weights (no download).

Builds Qwen2.5-VL-7B-Instruct or Qwen3-VL-8B-Instruct from its published configuration (written below) with
``AutoModelForImageTextToText.from_config`` directly on the GPU in bf16 with SDPA attention, wraps it in
lmmiqa's transformers backend, and measures, for each method (``q-align``, ``standard-guided``, ``llm-iqa`` when
registered), input size (448x448 and 1024x768 by default) and batch size (1..32):

* images/s through the scorer (``Scorer.score_loaded``: prompt building, the processor, the forward, read-out)
  and through the bare forward (``model(**inputs, logits_to_keep=1)`` on pre-processed inputs);
* FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one real scoring call (vision
  tower, language model and LM head, everything the method runs for one image — ``llm-iqa`` scores the whole
  image and each region crop), plus an analytic cross-check (2 x parameters x tokens);
* MFU = FLOPs/image x images/s / the GPU's dense bf16 peak, and the physical limit peak / FLOPs-per-image
  (images/s at 100 % MFU);
* peak GPU memory (``torch.cuda.max_memory_allocated``).

Throughput does not depend on weight values, so random weights measure real speed. The tokenizer is lmmiqa's
tiny test tokenizer (a few hundred tokens; the model keeps its full vocabulary), so the text part of a prompt
tokenizes into slightly different counts than with the real tokenizer; image tokens, which dominate, are exact
(the image processor uses the published patch/merge sizes and pixel limits).

Usage::

    python benchmarks/gpu_throughput.py --model qwen3-vl-8b                    # on a CUDA machine
    python benchmarks/gpu_throughput.py --model qwen2.5-vl-7b --batch-sizes 1,8,32 --json out.json
    python benchmarks/gpu_throughput.py --tiny                                 # CPU smoke test (seconds)

Run from a checkout (``src/`` is put on ``sys.path`` when lmmiqa is not installed). Needs torch, transformers
(extra ``hf``); Pillow. No network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import lmmiqa  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .` (e.g. a bare GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# --------------------------------------------------------------------------------------- published configs
# Values from the models' config.json / preprocessor_config.json on the Hugging Face hub, in the transformers 5
# layout (text_config / vision_config, rope_parameters). Token ids are replaced at build time by the ids of the
# offline tokenizer; the vocabulary size is kept, so embedding and LM-head sizes are the real ones.

QWEN2_5_VL_7B: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    },
    "tie_word_embeddings": False,
}
QWEN2_5_VL_IMAGE_PROCESSOR: dict[str, Any] = {
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

QWEN3_VL_8B: dict[str, Any] = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "attention_bias": False,
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "in_channels": 3,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
        "hidden_act": "gelu_pytorch_tanh",
    },
    "tie_word_embeddings": False,
}
QWEN3_VL_IMAGE_PROCESSOR: dict[str, Any] = {
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 65536,
    "max_pixels": 16777216,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name -> (tiny-tokenizer architecture, model config, image processor settings)
    "qwen2.5-vl-7b": ("qwen2_5_vl", QWEN2_5_VL_7B, QWEN2_5_VL_IMAGE_PROCESSOR),
    "qwen3-vl-8b": ("qwen3_vl", QWEN3_VL_8B, QWEN3_VL_IMAGE_PROCESSOR),
}
TINY_MODELS = {"tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-qwen3-vl": "qwen3_vl"}

#: dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched against torch.cuda.get_device_name()
BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
    ("L4", 121.0),
]


# --------------------------------------------------------------------------------------- building


def _tokenizer(arch: str) -> Any:
    from lmmiqa.testing import _build_tokenizer

    return _build_tokenizer(arch)


def _processor(arch: str, tokenizer: Any, settings: dict[str, Any]) -> Any:
    import transformers

    from lmmiqa.backends.hf_processor import image_only_processor_class

    ip_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    ip = ip_cls(
        size={"shortest_edge": settings["min_pixels"], "longest_edge": settings["max_pixels"]},
        patch_size=settings["patch_size"],
        merge_size=settings["merge_size"],
        temporal_patch_size=settings["temporal_patch_size"],
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
    )
    proc_cls = transformers.Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else transformers.Qwen3VLProcessor
    return image_only_processor_class(proc_cls)(
        image_processor=ip, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def build_full_size(name: str, device: str, attn: str) -> tuple[Any, Any]:
    """(model on ``device`` with random weights, processor) of a published configuration.

    bf16 on CUDA, fp32 on the CPU; on the ``meta`` device nothing is allocated (for ``--analytic``).
    """
    import torch
    import transformers

    arch, cfg_dict, ip_settings = MODELS[name]
    tokenizer = _tokenizer(arch)
    ids = tokenizer.convert_tokens_to_ids
    cfg = json.loads(json.dumps(cfg_dict))
    model_type = cfg.pop("model_type")
    cfg.update(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    cfg["text_config"].update(
        bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id
    )
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    model.eval()
    return model, _processor(arch, tokenizer, ip_settings)


def make_backend(model: Any, processor: Any, name: str, max_batch: int, input_device: Any = None) -> Any:
    """lmmiqa's TransformersBackend around a model built in memory (instead of ``from_pretrained``).

    ``input_device`` overrides where processed inputs are put (``--analytic`` keeps them on the CPU while the
    model lives on the meta device).
    """
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    class InMemoryBackend(TransformersBackend):
        def _load(self) -> None:
            self.model = model
            self.processor = processor
            self.tokenizer = processor.tokenizer
            self.tokenizer.padding_side = "left"
            param = next(model.parameters())
            self.device, self.dtype = param.device, param.dtype
            if input_device is not None:
                self.device = input_device

    return InMemoryBackend(TransformersConfig(model=name, device="cpu", max_batch=max_batch))


def make_scorers(backend: Any, methods: list[str], name: str) -> dict[str, Any]:
    """Scorers of the requested methods sharing ``backend`` (llm-iqa with the weight-free Felzenszwalb segmenter)."""
    from lmmiqa import registry
    from lmmiqa.methods.q_align import QAlign, QAlignConfig
    from lmmiqa.methods.standard_guided import StandardGuided, StandardGuidedConfig

    out: dict[str, Any] = {}
    for m in methods:
        if m == "q-align":
            out[m] = QAlign(QAlignConfig(model=name), backend=backend)
        elif m == "standard-guided":
            out[m] = StandardGuided(StandardGuidedConfig(model=name), backend=backend)
        elif m == "llm-iqa":
            if "llm-iqa" not in registry.names("method"):
                print("llm-iqa is not registered in this checkout; skipped", file=sys.stderr)
                continue
            cls = registry.resolve("method", "llm-iqa")
            member = StandardGuided(StandardGuidedConfig(model=name), backend=backend)
            out[m] = cls(cls.config_cls(model=name, segmenter="felzenszwalb"), members=[member])
        else:
            raise SystemExit(f"unknown method {m!r}; known: q-align, standard-guided, llm-iqa")
    return out


# --------------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One measured configuration."""

    method: str
    size: str
    batch: int
    images_per_s: float | None = None
    forward_images_per_s: float | None = None
    gflops_per_image: float | None = None
    analytic_gflops_per_image: float | None = None
    mfu: float | None = None
    limit_images_per_s: float | None = None
    peak_mem_gib: float | None = None
    prompts_per_image: float | None = None
    tokens_per_prompt: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def _median_seconds(fn: Any, device: Any, iters: int) -> float:
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _PromptCounter:
    """Counts the prompts and (unpadded) tokens the backend processes, by wrapping ``backend.encode``."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.prompts = 0
        self.tokens = 0
        self._orig = backend.encode

    def __enter__(self) -> _PromptCounter:
        def encode(prompts: Any) -> Any:
            inputs = self._orig(prompts)
            self.prompts += len(prompts)
            self.tokens += int(inputs["attention_mask"].sum())
            return inputs

        self.backend.encode = encode
        return self

    def __exit__(self, *exc: Any) -> None:
        self.backend.encode = self._orig


def count_flops(scorer: Any, item: Any) -> tuple[float, int, int]:
    """(FLOPs, prompts, tokens) of scoring one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with _PromptCounter(scorer_backend(scorer)) as pc, counter:
        scorer.score_loaded([item])
    return float(counter.get_total_flops()), pc.prompts, pc.tokens


def scorer_backend(scorer: Any) -> Any:
    members = getattr(scorer, "members", None)
    return members[0].backend if members else scorer.backend


def analytic_flops(model: Any, tokens: int, patches: int, merge: int = 2) -> float:
    """A cross-check of the counted FLOPs without the attention term: 2 x parameters x the tokens they see.

    Language-model matrices see every prompt token, the vision tower's every patch, and the patch mergers (the
    main one and Qwen3-VL's deepstack mergers) every merged token (``patches / merge**2``). Embedding tables
    and the LM head (one position with ``logits_to_keep=1``) are left out.
    """
    lm = vision = merger = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embed_tokens" in name or "lm_head" in name or "pos_embed" in name:
            continue
        if ".visual." in f".{name}":
            if "merger" in name:
                merger += p.numel()
            else:
                vision += p.numel()
        else:
            lm += p.numel()
    return 2.0 * (lm * tokens + vision * patches + merger * patches / merge**2)


def attention_flops(config: Any, tokens: int, grid_h: int, grid_w: int) -> float:
    """FLOPs of the attention products (QK^T and AV, dense as SDPA computes them) for one prompt.

    Language model: every layer over ``tokens`` positions. Vision tower over a ``grid_h x grid_w`` patch grid:
    Qwen2.5-VL's windowed layers attend within windows of ``window_size`` pixels (edge windows smaller) and its
    ``fullatt_block_indexes`` layers over the whole image; Qwen3-VL's layers all attend over the whole image.
    """
    tc, vc = config.text_config, config.vision_config
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    lm = tc.num_hidden_layers * 4.0 * tokens**2 * heads * head_dim
    d = vc.hidden_size
    patches = grid_h * grid_w
    full = 4.0 * patches**2 * d
    full_layers = list(getattr(vc, "fullatt_block_indexes", None) or [])
    if full_layers:
        m = vc.spatial_merge_size
        win = vc.window_size // m // vc.patch_size  # merged units per window side

        def sides(n: int) -> list[int]:
            return [win] * (n // win) + ([n % win] if n % win else [])

        windowed = sum(4.0 * (a * b * m * m) ** 2 * d for a in sides(grid_h // m) for b in sides(grid_w // m))
        vision = len(full_layers) * full + (vc.depth - len(full_layers)) * windowed
    else:
        vision = vc.depth * full
    return lm + vision


def analytic_table(name: str, methods: list[str], sizes: list[tuple[int, int]], peak: float) -> list[Row]:
    """FLOPs per image computed from the configuration (meta device: nothing is allocated, no GPU needed)."""
    import torch

    model, processor = build_full_size(name, "meta", "sdpa")
    backend = make_backend(model, processor, name, 1, input_device=torch.device("cpu"))
    scorers = make_scorers(backend, [m for m in methods if m != "llm-iqa"], name)
    head = 2.0 * model.config.text_config.hidden_size * model.config.text_config.vocab_size
    rows = []
    for method, scorer in scorers.items():
        for w, h in sizes:
            image = _images(w, h, 1)[0].image
            inputs = backend.encode([scorer.build_prompt(image)])
            tokens = int(inputs["attention_mask"].sum())
            _, gh, gw = (int(x) for x in inputs["image_grid_thw"][0])
            merge = model.config.vision_config.spatial_merge_size
            flops = analytic_flops(model, tokens, gh * gw, merge) + head + attention_flops(model.config, tokens, gh, gw)
            rows.append(Row(method, f"{w}x{h}", 1, gflops_per_image=flops / 1e9, analytic_gflops_per_image=flops / 1e9,
                            limit_images_per_s=peak / flops, prompts_per_image=1, tokens_per_prompt=tokens,
                            note=f"computed, not measured; {gh * gw} patches"))
    return rows


def _images(w: int, h: int, n: int) -> list[Any]:
    from lmmiqa.images import ImageItem
    from lmmiqa.testing import make_image

    return [ImageItem(key=f"img{i}", image=make_image(w, h, seed=i)) for i in range(n)]


def bf16_peak(device_name: str) -> float | None:
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if pattern.lower() in device_name.lower():
            return tflops * 1e12
    return None


def measure(
    scorers: dict[str, Any],
    sizes: list[tuple[int, int]],
    batch_sizes: list[int],
    *,
    iters: int,
    warmup: int,
    peak_flops: float | None,
    model: Any,
) -> list[Row]:
    import torch

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    rows: list[Row] = []
    for method, scorer in scorers.items():
        backend = scorer_backend(scorer)
        for w, h in sizes:
            size = f"{w}x{h}"
            probe = _images(w, h, 1)[0]
            flops, prompts, tokens = count_flops(scorer, probe)
            grid = backend.encode([backend_prompt(scorer, probe.image)]).get("image_grid_thw")
            patches = int(grid.prod(-1).sum()) if grid is not None else 0
            analytic = analytic_flops(model, tokens, patches) if prompts == 1 else None
            oom = False
            for bs in batch_sizes:
                row = Row(method, size, bs, gflops_per_image=flops / 1e9, prompts_per_image=prompts,
                          tokens_per_prompt=tokens / max(prompts, 1),
                          analytic_gflops_per_image=analytic / 1e9 if analytic else None)
                if oom:
                    row.note = "skipped (a smaller batch ran out of memory)"
                    rows.append(row)
                    continue
                items = _images(w, h, bs)
                try:
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    for _ in range(warmup):
                        scorer.score_loaded(items)
                    t = _median_seconds(lambda s=scorer, items=items: s.score_loaded(items), device, iters)
                    row.images_per_s = bs / t
                    if prompts == 1:  # the bare forward on pre-processed inputs
                        with torch.inference_mode():
                            inputs = backend.encode([backend_prompt(scorer, it.image) for it in items])
                            for _ in range(warmup):
                                model(**inputs, logits_to_keep=1)
                            tf = _median_seconds(lambda inputs=inputs: model(**inputs, logits_to_keep=1), device, iters)
                        row.forward_images_per_s = bs / tf
                    if cuda:
                        row.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
                except torch.cuda.OutOfMemoryError:
                    row.note = "out of memory"
                    oom = True
                    if cuda:
                        torch.cuda.empty_cache()
                if peak_flops:
                    row.limit_images_per_s = peak_flops / flops
                    if row.images_per_s:
                        row.mfu = flops * row.images_per_s / peak_flops
                rows.append(row)
                print(_fmt_row(row), flush=True)
    return rows


def backend_prompt(scorer: Any, image: Any) -> Any:
    """The (first) prompt a scorer sends for an image (the global prompt for llm-iqa)."""
    return scorer.build_prompt(image)


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


HEADER = (
    "| method | input | batch | img/s (scorer) | img/s (forward) | GFLOP/img | MFU | limit img/s | peak GiB | note |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _fmt_row(r: Row) -> str:
    mfu = "–" if r.mfu is None else f"{100 * r.mfu:.1f}%"
    return (
        f"| {r.method} | {r.size} | {r.batch} | {_f(r.images_per_s, '.2f')} | {_f(r.forward_images_per_s, '.2f')} | "
        f"{_f(r.gflops_per_image, '.4g')} | {mfu} | {_f(r.limit_images_per_s, '.1f')} | "
        f"{_f(r.peak_mem_gib, '.2f')} | {r.note} |"
    )


# --------------------------------------------------------------------------------------- main


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        out.append((int(w), int(h)))
    return out


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-vl-8b", choices=[*MODELS, *TINY_MODELS])
    ap.add_argument("--model-path", default=None, metavar="DIR",
                    help="benchmark a saved model folder instead (real weights, or a tiny test model)")
    ap.add_argument("--methods", default="q-align,standard-guided,llm-iqa")
    ap.add_argument("--sizes", default="448x448,1024x768", help="input sizes WxH (default 448x448,1024x768)")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    ap.add_argument("--iters", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of the device in TFLOP/s (default: looked up from the GPU name)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows and environment as JSON")
    ap.add_argument("--analytic", action="store_true",
                    help="no GPU needed: compute FLOPs/image and the images/s limit from the configuration (meta "
                    "device) for single-prompt methods; --peak-tflops (default 989.4, H100 SXM) sets the peak")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke test: tiny random Qwen2.5-VL, small inputs, batches 1 and 2, one iteration")
    args = ap.parse_args(argv)

    import torch
    import transformers

    if args.tiny:
        if args.model not in TINY_MODELS:
            args.model = "tiny-qwen2.5-vl"
        args.sizes = "64x48,96x72" if args.sizes == ap.get_default("sizes") else args.sizes
        args.batch_sizes = "1,2" if args.batch_sizes == ap.get_default("batch_sizes") else args.batch_sizes
        args.iters, args.warmup = min(args.iters, 1), min(args.warmup, 0)
        args.device = args.device or "cpu"
    if args.analytic:
        peak = (args.peak_tflops or 989.4) * 1e12
        rows = analytic_table(args.model, [m.strip() for m in args.methods.split(",")], _sizes(args.sizes), peak)
        print(f"analytic FLOPs of {args.model}; limit at {peak / 1e12:.1f} TFLOP/s dense bf16", file=sys.stderr)
        print("| method | input | LM tokens | GFLOP/img | limit img/s | note |\n|---|---|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r.method} | {r.size} | {r.tokens_per_prompt:.0f} | {r.gflops_per_image:.0f} | "
                  f"{r.limit_images_per_s:.0f} | {r.note} |")
        return rows
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    with contextlib.ExitStack() as stack:
        if args.model_path or args.model in TINY_MODELS:
            from lmmiqa.backends.base import create_backend
            from lmmiqa.testing import make_tiny_vlm

            path = args.model_path
            if path is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory())
                path = make_tiny_vlm(TINY_MODELS[args.model], Path(tmp) / "model")
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
            backend = create_backend("transformers", str(path), cache=False, device=device, dtype=dtype,
                                     attn_implementation=args.attn, max_batch=max(batch_sizes))
            model = backend.model
            args.model = str(args.model_path or args.model)
        else:
            if not device.startswith("cuda"):
                print("warning: a full-size model on the CPU is very slow; use --tiny for a smoke test",
                      file=sys.stderr)
            t0 = time.perf_counter()
            model, processor = build_full_size(args.model, device, args.attn)
            print(f"built {args.model} with random weights on {device} in {time.perf_counter() - t0:.1f} s "
                  f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters)", file=sys.stderr)
            backend = make_backend(model, processor, args.model, max(batch_sizes))
        scorers = make_scorers(backend, methods, args.model)
        dev = next(model.parameters()).device
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
        peak = args.peak_tflops * 1e12 if args.peak_tflops else (bf16_peak(device_name) if dev.type == "cuda" else None)
        print(f"device: {device_name}; bf16 peak: {'unknown (pass --peak-tflops)' if not peak else f'{peak / 1e12:.0f} TFLOP/s'}; "
              f"torch {torch.__version__}, transformers {transformers.__version__}", file=sys.stderr)
        print(HEADER)
        rows = measure(scorers, _sizes(args.sizes), batch_sizes, iters=args.iters, warmup=args.warmup,
                       peak_flops=peak, model=model)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model,
            "device": device_name,
            "peak_flops": peak,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "attn": args.attn,
            "rows": [asdict(r) for r in rows],
        }, indent=2))
    return rows


if __name__ == "__main__":
    main()
