"""AgenticIQA benchmark (not a test): backend calls and time per image of the agent on a tiny VLM.

On a tiny random-weight VLM (no download) and in-memory images, it runs ``agentic-iqa`` and reports, per
configuration: backend calls (``generate`` and ``level_logprobs``) and prompts per image, seconds per image, the
share of each stage in the time, and parse failures per image. A random-weight model never writes valid JSON,
so every JSON stage takes all its attempts and then its fallback: this is the agent's **worst case** in calls.
A well-behaved model needs one attempt per stage (6 backend calls per batch with the full plan).

Configurations:

  * ``batched``: ``--batch`` images per batch (the default path: each stage is one backend call per batch);
  * ``per-image``: ``batch_size=1`` (what batching saves);
  * ``no-retries``: batched with ``max_retries=0`` (what the two "return only JSON" retries cost).

The tools' own timings are measured by ``benchmarks/bench_tools.py``; here only the small cue tools run (the
fallback plan picks NIQE for "overall quality" when the parameter files are found via ``$LMMIQA_ASSETS``).
Timings are medians over repeats; only ratios are meaningful on a shared machine.

    python benchmarks/bench_agentic.py [--arch qwen2_5_vl] [--n 8] [--batch 8] [--repeats 2] [--size 256x192]
        [--max-new-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CallCounter:
    """Counts a backend's ``generate`` / ``level_logprobs`` calls and the prompts they carried."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.counts = {"generate": 0, "level_logprobs": 0, "prompts": 0}
        self._orig_generate = backend.generate
        self._orig_levels = backend.level_logprobs
        backend.generate = self._generate
        backend.level_logprobs = self._levels

    def _generate(self, prompts: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        self.counts["generate"] += 1
        self.counts["prompts"] += len(prompts)
        return self._orig_generate(prompts, *args, **kwargs)

    def _levels(self, prompts: Sequence[Any], candidates: Sequence[str]) -> Any:
        self.counts["level_logprobs"] += 1
        self.counts["prompts"] += len(prompts)
        return self._orig_levels(prompts, candidates)

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)

    def close(self) -> None:
        self.backend.generate = self._orig_generate
        self.backend.level_logprobs = self._orig_levels


def _run(scorer: Any, images: list[Any], batch: int, repeats: int, counter: CallCounter) -> dict[str, Any]:
    scorer.score(images[:1], batch_size=1)  # warm-up
    times: list[float] = []
    counts: dict[str, int] = {}
    results: list[Any] = []
    for _ in range(repeats):
        counter.reset()
        t0 = time.perf_counter()
        results = scorer.score(images, batch_size=batch)
        times.append(time.perf_counter() - t0)
        counts = dict(counter.counts)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"assessment failed: {bad[0]}")
    n = len(images)
    t = statistics.median(times)
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            if k not in ("total", "load"):
                stages[k] = stages.get(k, 0.0) + v
    busy = sum(stages.values()) or 1.0
    return {
        "seconds_per_image": t / n,
        "images_per_s": n / t,
        "backend_calls_per_image": (counts["generate"] + counts["level_logprobs"]) / n,
        "generate_calls": counts["generate"],
        "level_calls": counts["level_logprobs"],
        "prompts_per_image": counts["prompts"] / n,
        "parse_failures_per_image": statistics.mean(r.details["parse_failures"] for r in results),
        "stage_share": {k: v / busy for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", default="256x192", help="image size WxH")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default=None, help="a model folder instead of a freshly built tiny VLM")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()

    import lmmiqa
    from lmmiqa.testing import make_image, make_tiny_vlm

    w, h = (int(x) for x in args.size.lower().split("x"))
    images = [make_image(w, h, seed=i) for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_tiny_vlm(args.arch, Path(tmp) / "tiny"))
        common = {"model": model, "device": args.device, "max_new_tokens": args.max_new_tokens}
        configs = {
            "batched": ({**common}, args.batch),
            "per-image": ({**common}, 1),
            "no-retries": ({**common, "max_retries": 0}, args.batch),
        }
        report: dict[str, Any] = {
            "arch": args.arch if not args.model else None, "model": args.model, "n": args.n, "size": args.size,
            "batch": args.batch, "max_new_tokens": args.max_new_tokens, "configs": {},
        }
        counter = None
        for name, (opts, batch) in configs.items():
            scorer = lmmiqa.create_scorer("agentic-iqa", **opts)
            if counter is None:
                counter = CallCounter(scorer.backend)  # the backend is shared (cached) across the scorers
            report["configs"][name] = _run(scorer, images, batch, args.repeats, counter)
        if counter is not None:
            counter.close()

    print(f"agentic-iqa on {args.model or 'tiny ' + args.arch}, {args.n} images {args.size}, "
          f"max_new_tokens {args.max_new_tokens} (random text: worst case, every JSON stage retried then fallback)")
    print(f"{'config':<11} {'s/image':>8} {'img/s':>7} {'calls/img':>10} {'prompts/img':>12} {'fails/img':>10}  stages")
    for name, m in report["configs"].items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in m["stage_share"].items() if v >= 0.01)
        print(f"{name:<11} {m['seconds_per_image']:>8.3f} {m['images_per_s']:>7.2f} {m['backend_calls_per_image']:>10.2f} "
              f"{m['prompts_per_image']:>12.1f} {m['parse_failures_per_image']:>10.1f}  {shares}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
