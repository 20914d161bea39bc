"""IQARAG benchmark (not a test): the reference-image cache, and bank search latency (exact vs approximate).

1. **Reference cache** — on a tiny random-weight VLM (no download) with a vision-tower bank of JPEG photos of a
   realistic size, score the same queries with the cache on and off (``cache_items=0``), interleaved, and report
   s/query and the ratio; once keeping references as they are, once with ``reference_max_side`` (the cache then
   also saves the downscaling). Each repeat starts from an empty cache, so the ratio counts the misses of the
   first queries too: it is what a run over these queries gains; a last pass with every reference hot gives the
   steady state of a long run.
2. **Search** — random unit vectors (default dim 1024; clustered like image embeddings, or ``--data uniform``, the
   worst case for approximate search) in banks of 10k and 100k items: build time and latency
   of ``flat`` (exact ``IndexFlatL2``), ``hnsw`` and ``ivf`` for one query and for a batch, and recall@K of the
   approximate indexes against the exact top-K.

Timings are medians of repeats measured in one run; on a shared machine only the ratios are meaningful.

    python benchmarks/bench_iqarag.py [--skip-cache] [--skip-search] [--sizes 10000 100000] [--dim 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _median(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cache(args: argparse.Namespace) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.data import load_dataset
    from lmmiqa.retrieval import build_bank, create_encoder
    from lmmiqa.testing import make_image, make_tiny_vlm

    w, h = (int(x) for x in args.size.split("x"))
    out: dict[str, Any] = {"bank_items": args.bank, "queries": args.queries, "image_size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(make_tiny_vlm(args.arch, root / "model"))
        (root / "imgs").mkdir()
        lines = ["dis_img_path,score"]
        for i in range(args.bank + args.queries):
            make_image(w, h, seed=i).save(root / "imgs" / f"{i:04d}.jpg", quality=90)
            lines.append(f"imgs/{i:04d}.jpg,{1 + 4 * ((i * 7) % 11) / 10:.3f}")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        ds = load_dataset(labels=root / "labels.csv", root=root)
        bank_ds = ds.subset([i < args.bank for i in range(len(ds))])
        queries = ds.paths()[args.bank :]
        build_bank(root / "bank", bank_ds, create_encoder("vision-tower", model=model, device="cpu"))
        for side in (None, args.max_side):
            on = lmmiqa.create_scorer("iqarag", model=model, bank=str(root / "bank"), device="cpu",
                                      reference_max_side=side)
            off = lmmiqa.create_scorer("iqarag", model=model, bank=str(root / "bank"), device="cpu",
                                       reference_max_side=side, cache_items=0)
            off.score(queries[:2])  # warm-up
            t_on, t_off, prep_on, prep_off = [], [], [], []
            for _ in range(args.repeats):  # interleaved
                on.cache.clear()
                for scorer, total, prep in ((on, t_on, prep_on), (off, t_off, prep_off)):
                    t0 = time.perf_counter()
                    res = scorer.score(queries, batch_size=8)
                    total.append(time.perf_counter() - t0)
                    # the step the cache serves: opening, decoding (and downscaling) the references of a query
                    prep.append(sum(r.timings["references"] for r in res))
            st = on.cache.stats
            t0 = time.perf_counter()  # a second pass over the same queries: every reference is hot
            warm = on.score(queries, batch_size=8)
            t_warm = time.perf_counter() - t0
            prep_warm = sum(r.timings["references"] for r in warm)
            key = "as_is" if side is None else f"max_side_{side}"
            n = len(queries)
            out[key] = {
                "s_per_query_cache": statistics.median(t_on) / n,
                "s_per_query_no_cache": statistics.median(t_off) / n,
                "speedup": statistics.median(t_off) / statistics.median(t_on),
                "reference_prep_ms_cache": statistics.median(prep_on) / n * 1e3,
                "reference_prep_ms_no_cache": statistics.median(prep_off) / n * 1e3,
                "reference_prep_speedup": statistics.median(prep_off) / max(statistics.median(prep_on), 1e-9),
                "hit_rate": st.hits / max(st.hits + st.misses, 1),
                "s_per_query_hot": t_warm / n,
                "reference_prep_ms_hot": prep_warm / n * 1e3,
            }
            r = out[key]
            print(f"cache ({key}): {r['s_per_query_no_cache'] * 1e3:.1f} ms/query without, "
                  f"{r['s_per_query_cache'] * 1e3:.1f} ms/query with: x{r['speedup']:.2f} end to end; reference "
                  f"preparation {r['reference_prep_ms_no_cache']:.1f} -> {r['reference_prep_ms_cache']:.1f} ms/query "
                  f"(x{r['reference_prep_speedup']:.1f}); hit rate {r['hit_rate']:.2f}; all references hot: "
                  f"{r['s_per_query_hot'] * 1e3:.1f} ms/query, preparation {r['reference_prep_ms_hot']:.2f} ms/query",
                  flush=True)
    return out


def bench_search(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from lmmiqa.retrieval.bank import build_index, l2_normalize

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"dim": args.dim, "k": args.k, "batch": args.batch, "data": args.data}
    for n in args.sizes:
        if args.data == "clustered":
            # image embeddings are clustered (scenes, content, distortions): a mixture of n/100 Gaussian clusters
            centers = rng.standard_normal((max(1, n // 100), args.dim), dtype=np.float32)
            x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, args.dim), dtype=np.float32)
        else:  # uniform on the sphere: the worst case for approximate search
            x = rng.standard_normal((n, args.dim), dtype=np.float32)
        x = l2_normalize(x)
        # queries near bank items, as real queries are near their neighbours
        q = l2_normalize(x[rng.integers(0, n, args.batch)] + 0.02 * rng.standard_normal((args.batch, args.dim),
                                                                                           dtype=np.float32))
        exact = None
        for kind in ("flat", "hnsw", "ivf"):
            t0 = time.perf_counter()
            index, meta = build_index(x, kind)
            build_s = time.perf_counter() - t0
            single = _median(lambda index=index, q=q: index.search(q[:1], args.k), args.repeats * 5)
            batch = _median(lambda index=index, q=q: index.search(q, args.k), args.repeats)
            _, ix = index.search(q, args.k)
            if kind == "flat":
                exact = ix
                recall = 1.0
            else:
                recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ix, exact)]))
            row = {"build_s": build_s, "ms_single": single * 1e3, "ms_per_query_batched": batch * 1e3 / args.batch,
                   f"recall@{args.k}": recall, "params": meta["params"]}
            results[f"{n}/{kind}"] = row
            print(f"search n={n} {kind:<4}: build {build_s:7.2f} s, 1 query {single * 1e3:8.2f} ms, "
                  f"batch of {args.batch}: {batch * 1e3 / args.batch:7.3f} ms/query, recall@{args.k} {recall:.3f}",
                  flush=True)
            del index
        del x
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--bank", type=int, default=40, help="bank images for the cache benchmark")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--size", default="1024x768", help="photo size WxH (KonIQ's)")
    ap.add_argument("--max-side", type=int, default=448, help="reference_max_side of the second cache run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--data", choices=("clustered", "uniform"), default="clustered",
                    help="bank vectors: a mixture of Gaussian clusters (default) or uniform on the sphere")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_cache:
        out["cache"] = bench_cache(args)
    if not args.skip_search:
        out["search"] = bench_search(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
