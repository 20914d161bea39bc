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

``--part attacks`` (issue 24) starts ``lmmiqa serve`` as its own process (tiny model, ``--max-memory-mb``
``--memory-mb``) and measures, for each attack of the issue, the server's peak RSS (sampled every 10 ms) against
its idle RSS plus the memory budget, the answers the attackers got, and the p50/p95 of a control client's
``/v1/score`` requests during the attack (each on a new connection):

  * 8 clients × 16 uploads of one 6300² image each, for each costly mode: 16-bit grey PNG (92 KB), palette PNG
    with transparency, WebP, 16-bit TIFF;
  * 32 clients × one 29 MB base64 JSON body; 4 clients × one 32 MB body of 11 M empty image strings (with
    ``/healthz`` latency);
  * 70 slow readers (each from its own loopback address) pipelining 400 GETs of ``/static/app.js`` and never
    reading, against a server with an API key (the control client sends the key) and one without;
  * 500 connections from one address;
  * shutdown (SIGINT) while an assessment generates: time to exit and the in-flight client's answer.

    python benchmarks/bench_service.py [--part latency|attacks|all] [--n 40] [--slow 40] [--assessors 2]
        [--single-lane-n 4] [--memory-mb 512] [--attack-s 20]
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


# ----------------------------------------------------------------------------------------------- attacks


def _encode(im, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _worst_inputs(n: int = 6300) -> dict[str, tuple[bytes, str]]:
    """The issue's costliest uploads at n² (issue 24 §1), with their content types."""
    import numpy as np
    from PIL import Image

    grad = Image.linear_gradient("L").resize((n, n))
    a16 = np.asarray(grad, dtype=np.uint16) * 257
    return {
        "16-bit grey PNG": (_encode(Image.fromarray(a16), "PNG", compress_level=9), "image/png"),
        "palette PNG with transparency": (_encode(grad.convert("P"), "PNG", transparency=0, compress_level=9),
                                          "image/png"),
        "WebP": (_encode(grad.convert("RGB"), "WEBP", lossless=True, quality=0), "image/webp"),
        "16-bit TIFF": (_encode(Image.fromarray(a16), "TIFF", compression="tiff_deflate"), "image/tiff"),
    }


class _Server:
    """``lmmiqa serve`` in its own process on 127.0.0.1, its RSS sampled every 10 ms while ``sampling``."""

    def __init__(self, model: str, args: list[str], env_key: str | None = None) -> None:
        import os
        import subprocess

        from lmmiqa.service.openai_compat import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        if env_key:
            env["BENCH_KEY"] = env_key
        cmd = [sys.executable, "-m", "lmmiqa", "serve", "--model", model, "--device", "cpu", "--port", str(self.port),
               "--log-level", "error", *args, *(["--api-key-env", "BENCH_KEY"] if env_key else [])]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.headers = {"X-API-Key": env_key} if env_key else {}
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lmmiqa serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("lmmiqa serve did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def start_sampling(self) -> None:
        self._peak = 0
        self._stop.clear()

        def sample() -> None:
            while not self._stop.is_set():
                try:
                    self._peak = max(self._peak, self.rss_mb())
                except OSError:
                    return
                time.sleep(0.01)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self._peak

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()


def _control(url: str, headers: dict[str, str], png: bytes, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    """Sequential /v1/score requests until ``stop``, each on a new connection (competing for a slot like any
    newcomer): (latency, status) of each."""
    import httpx

    with httpx.Client(base_url=url, timeout=60, headers={**headers, "Connection": "close"}) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = c.post("/v1/score", files={"image": ("c.png", png, "image/png")}).status_code
            except httpx.HTTPError:
                status = 0
            out.append((time.perf_counter() - t0, status))
            time.sleep(0.05)


def _attack_row(server: _Server, name: str, attack, png: bytes, idle_mb: float, budget_mb: float) -> str:
    """Run ``attack()`` (returns a description of the attackers' answers) beside a control client."""
    import collections

    stop = threading.Event()
    control: list[tuple[float, int]] = []
    server.start_sampling()
    ctl = threading.Thread(target=_control, args=(server.url, server.headers, png, stop, control), daemon=True)
    ctl.start()
    time.sleep(0.5)
    answers = attack()
    stop.set()
    ctl.join(60)
    peak = server.stop_sampling()
    lat = sorted(t for t, st in control if st == 200)
    fails = collections.Counter(st for _, st in control if st != 200)
    p50 = statistics.median(lat) * 1e3 if lat else float("nan")
    p95 = lat[max(0, round(0.95 * len(lat)) - 1)] * 1e3 if lat else float("nan")
    within = "yes" if peak <= idle_mb + budget_mb + 64 else "NO"
    return (f"| {name} | {peak:.0f} (+{peak - idle_mb:.0f}) | {within} | {answers} | {len(control)} | {p50:.0f} | "
            f"{p95:.0f} | {dict(fails) or 0} |")


def _flood_uploads(url: str, headers: dict[str, str], data: bytes, ctype: str, clients: int, each: int) -> str:
    import collections

    import httpx

    counts: collections.Counter[int] = collections.Counter()

    def client(k: int) -> None:  # each client from its own loopback address (one address may hold 16 connections)
        transport = httpx.HTTPTransport(local_address=f"127.0.2.{2 + k}")
        with httpx.Client(base_url=url, timeout=300, headers=headers, transport=transport) as c:
            for i in range(each):
                try:
                    counts[c.post("/v1/score", files={"image": (f"{k}-{i}", data, ctype)}).status_code] += 1
                except httpx.HTTPError:
                    counts[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ", ".join(f"{n}× {code}" for code, n in sorted(counts.items()))


def _flood_json(url: str, headers: dict[str, str], body: bytes, clients: int, health: list[float] | None = None) -> str:
    import collections

    import httpx

    counts: collections.Counter[int] = collections.Counter()
    done = threading.Event()

    def client(k: int) -> None:  # each client from its own loopback address
        try:
            with httpx.Client(transport=httpx.HTTPTransport(local_address=f"127.0.3.{2 + k}"), timeout=300) as c:
                r = c.post(f"{url}/v1/score", content=body, headers={**headers, "content-type": "application/json"})
            counts[r.status_code] += 1
        except httpx.HTTPError:
            counts[0] += 1

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                health.append(time.perf_counter() - t0)  # type: ignore[union-attr]
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True) if health is not None else None
    if poller:
        poller.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    if poller:
        poller.join(60)
    out = ", ".join(f"{n}× {code}" for code, n in sorted(counts.items()))
    if health:
        out += f"; /healthz max {max(health) * 1e3:.0f} ms"
    return out


def _tcp_open(s) -> bool:
    """True while the connection is established (the server has neither closed nor dropped it)."""
    import socket
    import struct

    try:
        return struct.unpack("B", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0] == 1  # TCP_ESTABLISHED
    except OSError:
        return False


def _slow_readers(port: int, n: int, seconds: float) -> str:
    """``n`` connections, each from its own loopback address, pipelining 400 GETs and never reading."""
    import socket

    socks, refused = [], 0
    request = b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 400
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        try:
            s.bind((f"127.0.{1 + i // 250}.{2 + i % 250}", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    t0 = time.monotonic()
    closed: dict[int, float] = {}
    while time.monotonic() - t0 < seconds and len(closed) < len(socks):
        time.sleep(0.5)
        for k, s in enumerate(socks):
            if k not in closed and not _tcp_open(s):
                closed[k] = time.monotonic() - t0
    for s in socks:
        s.close()
    at_once = sum(t < 2 for t in closed.values())  # over the cap, or without the key in the key holders' reserve
    later = sorted(t for t in closed.values() if t >= 2)
    span = f" ({later[0]:.0f}-{later[-1]:.0f} s after connecting)" if later else ""
    return (f"{len(socks)} connected ({refused} refused); {at_once} closed at once, {len(later)} dropped at the write "
            f"deadline{span}, {len(socks) - len(closed)} still open after {seconds:g} s")


def _one_address(port: int, n: int, seconds: float) -> str:
    import socket

    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    time.sleep(1.0)
    held = sum(_tcp_open(s) for s in socks)
    time.sleep(max(0.0, seconds - 1.0))
    for s in socks:
        s.close()
    return f"{n} connections from 127.0.0.2: {held} held open, {len(socks) - held} answered 503 and closed at once"


def attacks(args: argparse.Namespace, model: str) -> None:
    import base64
    import signal

    import httpx

    png = _png()
    budget = float(args.memory_mb)
    common = ["--max-memory-mb", str(budget), "--max-body-mb", "40"]
    rows = []
    print(f"building the {args.size}² inputs ...", flush=True)
    worst = _worst_inputs(args.size)
    server = _Server(model, common)
    try:
        for _ in range(3):
            httpx.post(f"{server.url}/v1/score", files={"image": ("w.png", png, "image/png")}, timeout=60)
        idle = server.rss_mb()
        print(f"server idle RSS {idle:.0f} MB (tiny model loaded, warmed up); memory budget {budget:.0f} MB", flush=True)
        for name, (data, ctype) in worst.items():
            rows.append(_attack_row(
                server, f"8 clients × 16 uploads of a {args.size}² {name} ({len(data) // 1024} KB)",
                lambda d=data, c=ctype: _flood_uploads(server.url, {}, d, c, 8, 16), png, idle, budget,
            ))
            print(rows[-1], flush=True)
        blob = base64.b64encode(worst["16-bit grey PNG"][0] * 240)[: 29 * 2**20]  # 29 MB of valid base64 (not an image)
        body = b'{"images": ["' + blob + b'"]}'
        rows.append(_attack_row(server, "32 clients × a 29 MB base64 JSON body",
                                lambda: _flood_json(server.url, {}, body, 32), png, idle, budget))
        print(rows[-1], flush=True)
        empty = b'{"images": [' + b'"",' * 11_000_000 + b'""]}'
        rows.append(_attack_row(server, "4 clients × a 32 MB body of 11 M empty image strings",
                                lambda: _flood_json(server.url, {}, empty, 4, health=[]), png, idle, budget))
        print(rows[-1], flush=True)
        rows.append(_attack_row(server, "500 connections from one address",
                                lambda: _one_address(server.port, 500, args.attack_s), png, idle, budget))
        print(rows[-1], flush=True)
    finally:
        server.close()
    for key in ("bench-key", None):
        srv = _Server(model, [*common, "--write-timeout", "10"], env_key=key)
        try:
            idle_k = srv.rss_mb()
            who = "with a key; the control client sends it" if key else "without a key"
            rows.append(_attack_row(srv, f"70 slow readers, each from its own address, pipelining 400 GETs of "
                                    f"/static/app.js and never reading (server {who}, --write-timeout 10)",
                                    lambda s=srv: _slow_readers(s.port, 70, args.reader_s), png, idle_k, budget))
            print(rows[-1], flush=True)
        finally:
            srv.close()

    print("\n| attack | server peak RSS MB (+ over idle) | within idle + budget + 64 MB | attackers' answers | "
          "control requests | control p50 ms | control p95 ms | control failures |")
    print("|---|---:|---|---|---:|---:|---:|---|")
    for r in rows:
        print(r)

    # shutdown while an assessment generates
    srv = _Server(model, [*common, "--allow-method", "agentic-iqa", "--assess-option", "max_new_tokens=4000",
                          "--assess-option", "tools=niqe", "--assess-timeout", "600"])
    try:
        box: list[httpx.Response | Exception] = []
        answered: list[float] = []

        def assess() -> None:
            try:
                box.append(httpx.post(f"{srv.url}/v1/assess", files={"image": ("a.png", png, "image/png")}, timeout=600))
            except Exception as err:  # reported below
                box.append(err)
            answered.append(time.monotonic())

        t = threading.Thread(target=assess, daemon=True)
        t.start()
        time.sleep(3.0)  # the assessment is generating
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        srv.proc.wait(120)
        exited = time.monotonic() - t0
        t.join(10)
        got = box[0] if box else None
        answer = (f"{got.status_code} {got.headers.get('content-type')}: {got.text[:120]}" if isinstance(got, httpx.Response)
                  else repr(got))
        got_after = f"{answered[0] - t0:.1f} s" if answered else "never"
        print(f"\nshutdown (SIGINT) during an assessment (--shutdown-grace 5): the in-flight client got {answer} "
              f"after {got_after}; the process exited after {exited:.1f} s")
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="/v1/score requests per row")
    ap.add_argument("--slow", type=int, default=40, help="slow-body clients (plus a quarter as many slow-header ones)")
    ap.add_argument("--assessors", type=int, default=2, help="concurrent /v1/assess clients")
    ap.add_argument("--single-lane-n", type=int, default=4, help="/v1/score requests in the one-lane comparison row")
    ap.add_argument("--assess-images", type=int, default=4, help="images per /v1/assess request")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="agentic generation budget per stage")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise on a shared machine)")
    ap.add_argument("--part", choices=("latency", "attacks", "all"), default="all",
                    help="latency: p50/p95 beside slow clients and assessments (in-process); attacks: issue 24's "
                    "attacks against `lmmiqa serve` in its own process (peak RSS); all: both")
    ap.add_argument("--memory-mb", type=float, default=512, help="the attacked server's --max-memory-mb")
    ap.add_argument("--attack-s", type=float, default=20, help="seconds the connection attacks hold their sockets")
    ap.add_argument("--reader-s", type=float, default=120, help="longest time the slow readers hold their connections")
    ap.add_argument("--size", type=int, default=6300, help="side of the attacks' costly images (the issue's 6300)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.part in ("attacks", "all"):
        from lmmiqa.testing import make_tiny_vlm

        with tempfile.TemporaryDirectory() as tmp:
            attacks(args, str(make_tiny_vlm("qwen2_5_vl", Path(tmp) / "model")))
        if args.part == "attacks":
            return

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
