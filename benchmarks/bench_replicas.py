"""Throughput of the openai backend over 1, 2, ... replicas of one model (not a test).

Builds the shrunken real-file Qwen2.5-VL (vision depth 3, random weights), converts it to GGUF, starts N
``llama-server`` processes on 127.0.0.1 (llama.cpp's server from ``../shared/tools/llama-server``, ``-np 1``,
``--threads`` each) and scores the same images with q-align through ``--model 'URL1,URL2,...#name'``. For each
replica count it reports images/s, the ratio to one replica, and how many requests each replica answered; the
scores of every configuration are checked equal to one replica's. Configurations run interleaved (1, 2, ..., 1, 2,
...) ``--repeats`` times and the median is reported, so that drift of a shared machine falls on all of them.

On a machine with C cores, N servers of T threads compete for the cores once N·T > C: the ratio then measures the
cores, not the replicas. Give each server its own cores (or GPU) for a fair reading.

    python benchmarks/bench_replicas.py [--replicas 1,2] [--threads 1] [--images 16] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    ap.add_argument("--threads", type=int, default=1, help="llama-server -t per server")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="square image side (a multiple of 28)")
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight per replica")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-files", default=None, help="folder of Qwen2.5-VL-7B-Instruct's real files")
    ap.add_argument("--llama-server", default=None, help="folder with llama-server and convert/")
    ap.add_argument("--gguf", default=None, help="folder with model.gguf and mmproj.gguf already made by this script "
                    "(skips the build and conversion; the level words must be in the model's top-20)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import numpy as np

    import lmmiqa
    from lmmiqa.backends.base import clear_backend_cache
    from lmmiqa.testing import make_image, make_real_file_vlm, shared_hf_folder
    from lmmiqa.testing_llamacpp import LlamaServer, convert_to_gguf, lift_level_tokens, llama_server_folder

    counts = [int(x) for x in args.replicas.split(",")]
    folder = llama_server_folder(args.llama_server)
    hf = shared_hf_folder("Qwen2.5-VL-7B-Instruct", args.hf_files)
    if folder is None or (hf is None and args.gguf is None):
        print("needs ../shared/tools/llama-server and ../shared/data/hf/Qwen2.5-VL-7B-Instruct", file=sys.stderr)
        return 2
    images = [make_image(args.size, args.size, seed=i) for i in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        root = Path(tmp)
        if args.gguf:
            gguf, mmproj = Path(args.gguf) / "model.gguf", Path(args.gguf) / "mmproj.gguf"
        else:
            model_dir = make_real_file_vlm(hf, root / "model", vision_depth=3)
            probe = lmmiqa.create_scorer("q-align", model=str(model_dir), device="cpu")
            lift_level_tokens(model_dir, [([probe.build_prompt(im) for im in images[:3]],
                                           [3873, 7852, 6624, 1661, 9073])])
            clear_backend_cache()
            gguf, mmproj = convert_to_gguf(model_dir, root / "gguf", folder=folder)
        servers = [LlamaServer(gguf, mmproj, alias="m", threads=args.threads, folder=folder,
                               log_path=root / f"server{i}.log") for i in range(max(counts))]
        times: dict[int, list[float]] = {n: [] for n in counts}
        served: dict[int, list[int]] = {}
        scores: dict[int, list[float]] = {}
        try:
            for s in servers:
                s.start()
            for _ in range(args.repeats):
                for n in counts:
                    model = ",".join(s.url for s in servers[:n]) + "#m"
                    scorer = lmmiqa.create_scorer("q-align", backend="openai", model=model,
                                                  backend_options={"concurrency": args.concurrency})
                    scorer.score(images[:2])  # warm: the start-up checks and the servers' first requests
                    before = [s["served"] for s in scorer.backend.replica_stats()]
                    t0 = time.perf_counter()
                    results = scorer.score(images, batch_size=len(images))
                    times[n].append(time.perf_counter() - t0)
                    after = [s["served"] for s in scorer.backend.replica_stats()]
                    served[n] = [a - b for a, b in zip(after, before)]
                    scores[n] = [r.score for r in results]
                    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        finally:
            for s in servers:
                s.stop()
    base = counts[0]
    for n in counts:
        np.testing.assert_allclose(scores[n], scores[base], atol=1e-6)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for n in counts:
        med = statistics.median(times[n])
        rows.append({"replicas": n, "images_per_s": args.images / med, "seconds": med,
                     "ratio": statistics.median(times[base]) / med, "requests_per_replica": served[n]})
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end",
              "threads_per_server": args.threads, "images": args.images, "size": args.size,
              "concurrency_per_replica": args.concurrency, "repeats": args.repeats, "rows": rows}
    print(f"{report['machine']}; {args.images} images of {args.size}², llama-server -t {args.threads} -np 1 each, "
          f"concurrency {args.concurrency} per replica, median of {args.repeats} interleaved runs")
    print("| replicas | images/s | ratio to 1 | requests per replica |")
    print("|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['images_per_s']:.2f} | {r['ratio']:.2f} | {r['requests_per_replica']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
