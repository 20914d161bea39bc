"""Service latency under hostile and heavy load (not a test): p50/p95 of ``POST /v1/score``.

Starts the hardened server (the uvicorn settings of ``lmmiqa serve``) on 127.0.0.1 with a tiny random-weight
q-align model (no download) and ``agentic-iqa`` allowed, then measures sequential ``/v1/score`` requests (one
64×48 PNG each):

  * alone;
  * beside slow clients: ``--slow`` connections that send the headers of ``POST /v1/score`` and then one body
    byte per second, plus ``--slow // 4`` that send their headers one byte per second (all under the connection
    cap; with a short ``--body-timeout``/``--header-timeout`` they are cut and reconnect);
  * beside concurrent assessments: ``--assessors`` clients posting ``/v1/assess`` in a loop, with scoring and
    assessment in separate lanes (as served) and, for comparison, forced into one lane (the behaviour before:
    one batch worker for both).

Server and clients share this process and the machine is shared: compare rows of one run, not absolute numbers.

    python benchmarks/bench_service.py [--n 40] [--slow 40] [--assessors 2] [--single-lane-n 4]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _png() -> bytes:
    import io

    from lmmiqa.testing import make_image

    buf = io.BytesIO()
    make_image(64, 48, 0).save(buf, format="PNG")
    return buf.getvalue()


def _measure(url: str, n: int, png: bytes, timeout: float = 300) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for k in range(n):
            t0 = time.perf_counter()
            r = c.post("/v1/score", files={"image": (f"{k}.png", png, "image/png")})
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"/v1/score answered {r.status_code}: {r.text[:200]}")
    return out


def _slow_client(port: int, head: bytes, step: bytes, stop: threading.Event, cut: list[int]) -> None:
    """Trickle ``step`` once a second after ``head``; reconnect when the server cuts the connection."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head)
                while not stop.wait(1.0):
                    s.sendall(step)
        except OSError:
            cut[0] += 1


def _assessor(url: str, png: bytes, images: int, stop: threading.Event, done: list[int]) -> None:
    import httpx

    files = [("image", (f"a{i}.png", png, "image/png")) for i in range(images)]
    with httpx.Client(base_url=url, timeout=600) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = c.post("/v1/assess", files=files)
            if r.status_code != 200:
                raise RuntimeError(f"/v1/assess answered {r.status_code}: {r.text[:200]}")
            done.append(time.perf_counter() - t0)


def _row(name: str, lat: list[float]) -> str:
    lat = sorted(lat)
    p95 = lat[max(0, round(0.95 * len(lat)) - 1)]
    return f"| {name} | {len(lat)} | {statistics.median(lat) * 1e3:.0f} | {p95 * 1e3:.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="/v1/score requests per row")
    ap.add_argument("--slow", type=int, default=40, help="slow-body clients (plus a quarter as many slow-header ones)")
    ap.add_argument("--assessors", type=int, default=2, help="concurrent /v1/assess clients")
    ap.add_argument("--single-lane-n", type=int, default=4, help="/v1/score requests in the one-lane comparison row")
    ap.add_argument("--assess-images", type=int, default=4, help="images per /v1/assess request")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="agentic generation budget per stage")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise on a shared machine)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from lmmiqa.service.app import ScoringService, ServiceConfig, create_app
    from lmmiqa.service.server import serve_in_thread
    from lmmiqa.testing import make_tiny_vlm

    png = _png()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_tiny_vlm("qwen2_5_vl", Path(tmp) / "model"))
        config = ServiceConfig(
            method="q-align",
            options={"model": model, "device": "cpu"},
            allow_methods=("agentic-iqa",),
            assess_options={"max_new_tokens": args.max_new_tokens, "tools": "niqe"},
            max_connections=max(64, args.slow + args.slow // 4 + 16),
            body_timeout_s=5.0,
            header_timeout_s=5.0,
            assess_timeout_s=600,
            request_timeout_s=600,
        )
        service = ScoringService(config)
        app = create_app(service)
        try:
            with serve_in_thread(app, config) as url:
                port = int(urlparse(url).port)
                _measure(url, 5, png)  # warm-up
                rows.append(_row("alone", _measure(url, args.n, png)))

                stop = threading.Event()
                cut = [0]
                body_head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n")
                header_head = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-Slow: "
                threads = [threading.Thread(target=_slow_client, args=(port, body_head, b"{", stop, cut), daemon=True)
                           for _ in range(args.slow)]
                threads += [threading.Thread(target=_slow_client, args=(port, header_head, b"a", stop, cut), daemon=True)
                            for _ in range(args.slow // 4)]
                for t in threads:
                    t.start()
                time.sleep(1.0)
                t0 = time.perf_counter()
                lat = _measure(url, args.n, png)
                if time.perf_counter() - t0 < 6:  # make sure the cut-and-reconnect cycle happened meanwhile
                    time.sleep(6 - (time.perf_counter() - t0))
                    lat += _measure(url, args.n // 2, png)
                stop.set()
                rows.append(_row(f"beside {len(threads)} slow clients (cut after 5 s, reconnecting)", lat))
                for t in threads:
                    t.join(timeout=10)

                for lanes in ("separate lanes (served)", "one lane (before)"):
                    if lanes.startswith("one"):
                        service.lane = lambda method: "score"  # type: ignore[method-assign]
                    stop = threading.Event()
                    done: list[float] = []
                    workers = [
                        threading.Thread(target=_assessor, args=(url, png, args.assess_images, stop, done), daemon=True)
                        for _ in range(args.assessors)
                    ]
                    for t in workers:
                        t.start()
                    time.sleep(2.0)  # let the assessments start
                    n = args.n if lanes.startswith("separate") else args.single_lane_n
                    lat = _measure(url, n, png)
                    stop.set()
                    for t in workers:
                        t.join(timeout=600)
                    assess = f"{statistics.median(done):.1f} s" if done else "n/a"
                    if lanes.startswith("separate"):
                        lock = getattr(getattr(service.scorer_for(config.method, {}), "backend", None), "_lock", None)
                        print(f"generations lent the model to scoring {getattr(lock, 'lends', 'n/a')} times "
                              "(between two generated tokens)", flush=True)
                    rows.append(_row(
                        f"beside {args.assessors} clients looping /v1/assess ({args.assess_images} images, median "
                        f"{assess}), {lanes}", lat,
                    ))
                del service.lane  # back to the served lanes
                rows.append(_row("alone, again (drift of the shared machine)", _measure(url, args.n, png)))
        finally:
            service.close()
    print("| /v1/score, one 64×48 PNG per request | requests | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    for r in rows:
        print(r)
    print(f"\nslow-client connections cut by the server: {cut[0]}")


if __name__ == "__main__":
    main()
