"""Service hardening on 127.0.0.1 (issue 16), bounded in count and time: slow and numerous clients, pixel
budgets, /v1/assess only when allowed and in its own lane, deep JSON, long inputs, headers, the key before the
body. Every server here is the real uvicorn with the settings ``lmmiqa serve`` uses (``svc_fakes.running_service``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import select
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest
from svc_fakes import BrightnessScorer, FakeAgentic, SlowAgentic, png_bytes, running_service

from lmmiqa.images import ImageLimits, open_image_bytes
from lmmiqa.service.app import ServiceConfig
from lmmiqa.service.server import RateLimitFilter, install_log_filter
from lmmiqa.service.uploads import decode_upload, planned_size

pytest.importorskip("torch")


# --------------------------------------------------------------------------------------- helpers


def _port(url: str) -> int:
    return int(urlparse(url).port)


def _trickle(port: int, head: bytes, step: bytes, interval: float, limit_s: float,
             source: str = "127.0.0.1") -> tuple[float, bytes]:
    """Send ``head`` then ``step`` every ``interval`` s until the server answers or closes; (seconds from the
    end of ``head`` to the server's answer or close, what it sent). ``limit_s`` bounds the wait; ``source`` is
    the loopback address the client connects from (each is one client address to the server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit_s, source_address=(source, 0))
    got = b""
    try:
        s.sendall(head)
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            ready, _, _ = select.select([s], [], [], interval)
            if ready:
                s.settimeout(2.0)
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                except (ConnectionResetError, TimeoutError):
                    pass
                return time.monotonic() - t0, got
            try:
                s.sendall(step)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0, got
        return float("inf"), got
    finally:
        s.close()


_BODY_HEAD = (
    b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n"
)
_HEADER_HEAD = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def _latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for k in range(n):
            t0 = time.perf_counter()
            r = c.post("/v1/score", files={"image": (f"{k}.png", png_bytes(), "image/png")})
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


def _hwm_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _gradient(size: int, fmt: str) -> bytes:
    from PIL import Image

    im = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"compress_level": 9} if fmt == "PNG" else {"quality": 80}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return _gradient(6000, "PNG")  # ~120 KB, 36 MP: under the 40 MP per-image limit


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return _gradient(6000, "JPEG")


# --------------------------------------------------------------------------------------- 1. slow clients


def test_slow_bodies_and_headers_are_cut_while_valid_requests_keep_their_latency(fake_methods):
    fake_methods(BrightnessScorer)
    config = ServiceConfig(method="fake-brightness", body_timeout_s=1.5, header_timeout_s=1.5)
    with running_service(config) as (url, _):
        port = _port(url)
        _latencies(url, 3)  # warm
        baseline = _latencies(url, 15)
        with ThreadPoolExecutor(20) as pool:
            # from other client addresses than the measured requests' (one address may hold 16 connections)
            slow_bodies = [pool.submit(_trickle, port, _BODY_HEAD, b"{", 0.2, 8.0, "127.0.0.2") for _ in range(8)]
            slow_heads = [pool.submit(_trickle, port, _HEADER_HEAD, b"a", 0.2, 8.0, "127.0.0.3") for _ in range(8)]
            time.sleep(0.3)
            loaded = _latencies(url, 15)
            bodies = [f.result() for f in slow_bodies]
            heads = [f.result() for f in slow_heads]
    for elapsed, got in bodies:
        assert 1.3 <= elapsed <= 4.0, elapsed  # cut after --body-timeout, not held open
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"--body-timeout" in got
    for elapsed, got in heads:
        assert 1.3 <= elapsed <= 4.0, elapsed  # cut after --header-timeout
        assert got.startswith(b"HTTP/1.1 408") and b"--header-timeout" in got, got[:200]
    p50_base, p50_loaded = statistics.median(baseline), statistics.median(loaded)
    print(f"\n/v1/score p50 {p50_base * 1e3:.1f} ms alone, {p50_loaded * 1e3:.1f} ms beside 16 slow clients")
    assert p50_loaded < 3 * p50_base + 0.1, (baseline, loaded)


def test_idle_connection_is_closed_after_the_header_timeout(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness", header_timeout_s=1.0)) as (url, _):
        s = socket.create_connection(("127.0.0.1", _port(url)), timeout=5)
        t0 = time.monotonic()
        s.settimeout(5)
        got = s.recv(4096)
        while got and (more := s.recv(4096)):
            got += more
        elapsed = time.monotonic() - t0
        s.close()
    assert 0.8 <= elapsed <= 3.0 and got.startswith(b"HTTP/1.1 408"), (elapsed, got[:100])


def test_connections_over_the_cap_are_refused_at_once_and_logged_sparingly(fake_methods, caplog):
    fake_methods(BrightnessScorer)
    config = ServiceConfig(method="fake-brightness", max_connections=6, header_timeout_s=20)
    caplog.set_level(logging.WARNING, logger="lmmiqa.service")
    install_log_filter()._seen.clear()  # a fresh window: earlier tests may have logged refusals
    with running_service(config) as (url, _):
        port = _port(url)
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        time.sleep(0.2)
        refused = []
        t0 = time.monotonic()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            data = s.recv(4096)
            refused.append(data)
            s.close()
        elapsed = time.monotonic() - t0
        for s in held:
            s.close()
        time.sleep(0.3)
        ok = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")}, timeout=10)
    assert all(d.startswith(b"HTTP/1.1 503") and b"--max-connections" in d for d in refused), refused[0]
    assert elapsed < 10  # refused at once, not after a timeout
    assert ok.status_code == 200  # served again once the slots are free
    lines = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert 1 <= len(lines) <= 5, len(lines)  # 40 refusals, at most a burst of log lines


def test_rate_limit_filter_suppresses_floods_and_says_how_many():
    now = [0.0]
    flt = RateLimitFilter(burst=5, window_s=60, clock=lambda: now[0])

    def record(msg: str = "socket.accept() out of system resource") -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    passed = [flt.filter(record()) for _ in range(1000)]
    assert sum(passed) == 5
    assert flt.filter(record("another message"))  # other messages are not affected
    now[0] = 61.0
    nxt = record()
    assert flt.filter(nxt) and "995 similar message(s) suppressed" in nxt.msg


# --------------------------------------------------------------------------------------- 2. pixel budgets


def test_sixteen_6000px_pngs_are_refused_before_decoding(fake_methods, big_png):
    fake_methods(BrightnessScorer)
    files = [("image", (f"{i}.png", big_png, "image/png")) for i in range(16)]
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=0)  # full resolution: no reduction
    with running_service(config) as (url, _):
        _hwm_reset()
        before = _rss_mb()
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/score", files=files, timeout=30)
        elapsed = time.monotonic() - t0
        peak = _hwm_mb() - before
    assert r.status_code == 413, r.text
    msg = r.json()["error"]["message"]
    assert "576000000 pixels" in msg and "--max-request-pixels" in msg and "200000000" in msg
    assert elapsed < 5 and peak < 100, (elapsed, peak)  # headers only: nothing was decoded
    assert BrightnessScorer.batches == []


def test_sixteen_6000px_jpegs_are_decoded_at_the_models_size(tiny_qalign_model, big_jpeg):
    files = [("image", (f"{i}.jpg", big_jpeg, "image/jpeg")) for i in range(16)]
    config = ServiceConfig(method="q-align", options={"model": tiny_qalign_model, "device": "cpu"}, max_wait_ms=50)
    with running_service(config) as (url, service):
        budget = service.decode_target(service.default_scorer)
        assert budget == 12544  # the tiny Qwen2-VL processor's pixel budget (size.longest_edge)
        _hwm_reset()
        before = _rss_mb()
        r = httpx.post(f"{url}/v1/score", files=files, timeout=60)
        peak = _hwm_mb() - before
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 16 and all(d["error"] is None for d in results)
    print(f"\n16 × 6000² JPEG served, peak RSS +{peak:.0f} MB")
    assert peak < 300, peak  # at full resolution they alone would be 16 × 108 MB = 1.7 GB


@pytest.mark.parametrize("name,budget", [("Qwen2.5-VL-7B-Instruct", 12_845_056), ("Qwen3-VL-8B-Instruct", 16_777_216)])
def test_decode_target_is_the_real_processors_pixel_budget(real_file_model, name, budget):
    import lmmiqa
    from lmmiqa.service.scoring import model_pixel_budget

    path = str(real_file_model(name))
    # --max-pixels model: the published processor settings (shared/data/hf)
    scorer = lmmiqa.create_scorer("q-align", model=path, device="cpu", max_pixels="model")
    assert model_pixel_budget(scorer) == budget
    # the default scoring budget (1024×1024) is what the model sees, so uploads decode to it
    scorer = lmmiqa.create_scorer("q-align", model=path, device="cpu")
    assert model_pixel_budget(scorer) == 1024 * 1024


def test_large_pngs_are_reduced_with_bounded_memory(fake_methods, big_png):
    fake_methods(BrightnessScorer)
    files = [("image", (f"{i}.png", big_png, "image/png")) for i in range(3)]
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=1_000_000, decode_workers=1)
    with running_service(config) as (url, _):
        _hwm_reset()
        before = _rss_mb()
        r = httpx.post(f"{url}/v1/score", files=files, timeout=60)
        peak = _hwm_mb() - before
    assert r.status_code == 200, r.text
    assert BrightnessScorer.sizes == [(1000, 1000)] * 3  # 6000² reduced by 6: what a 1 MP model sees
    # documented bound: one full-resolution image per decode thread (6000² RGB = 108 MB) + the reduced ones
    assert peak < 250, peak


def test_server_pixel_budget_is_429_while_full_and_413_when_a_request_can_never_fit(fake_methods):
    fake_methods(BrightnessScorer)
    BrightnessScorer.gate = threading.Event()
    config = ServiceConfig(
        method="fake-brightness", max_batch=1, max_wait_ms=0, max_request_pixels=100 * 100, max_queue_pixels=150 * 100
    )
    img = png_bytes(100, 100)
    with running_service(config) as (url, service), ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/score", files={"image": ("a.png", img, "image/png")}, timeout=30)
        assert BrightnessScorer.entered.wait(10)
        r = httpx.post(f"{url}/v1/score", files={"image": ("b.png", img, "image/png")}, timeout=30)
        assert r.status_code == 429 and "--max-queue-pixels" in r.json()["error"]["message"], r.text
        two = [("image", (f"{i}.png", img, "image/png")) for i in range(2)]
        r = httpx.post(f"{url}/v1/score", files=two, timeout=30)
        assert r.status_code == 413 and "--max-request-pixels" in r.json()["error"]["message"], r.text
        BrightnessScorer.gate.set()
        assert first.result().status_code == 200
        assert service.pixels.used == 0  # released with the answer
        ok = httpx.post(f"{url}/v1/score", files={"image": ("c.png", img, "image/png")}, timeout=30)
        assert ok.status_code == 200


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "P"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGB")])
def test_decode_reduces_to_the_planned_size(fmt, mode):
    from PIL import Image

    im = Image.linear_gradient("L").resize((1603, 1201)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    limits = ImageLimits()
    out = decode_upload(data, "x", limits, 40_000)
    assert out.mode == "RGB" and out.size == planned_size(1603, 1201, 40_000) == (268, 201)  # reduce by 6
    assert out.width * out.height >= 40_000  # never below the model's budget
    assert decode_upload(data, "x", limits, 1_000_000).size == (1603, 1201)  # under 4x the budget: untouched
    full = open_image_bytes(data, "x", limits)
    assert decode_upload(data, "x", limits, None).tobytes() == full.tobytes()


# --------------------------------------------------------------------------------------- 3. assess: allowed, bounded, fair


def test_assess_limits_images_and_query_length(fake_methods):
    fake_methods(BrightnessScorer, FakeAgentic)
    config = ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), max_assess_images=2)
    with running_service(config) as (url, _):
        three = [("image", (f"{i}.png", png_bytes(), "image/png")) for i in range(3)]
        r = httpx.post(f"{url}/v1/assess", files=three, timeout=30)
        assert r.status_code == 413 and "--max-assess-images" in r.json()["error"]["message"], r.text
        assert httpx.post(f"{url}/v1/score", files=three, timeout=30).status_code == 200  # scoring: --max-images
        one = {"image": ("a.png", png_bytes(), "image/png")}
        r = httpx.post(f"{url}/v1/assess", files=one, data={"query": "q" * 1001}, timeout=30)
        assert r.status_code == 422 and "--max-query-chars" in r.json()["error"]["message"], r.text
        assert len(r.text) < 1000
        r = httpx.post(f"{url}/v1/assess", files=one, data={"query": "Is the sky banded?"}, timeout=30)
        assert r.status_code == 200


def test_scoring_latency_does_not_wait_for_a_long_assessment(fake_methods):
    fake_methods(BrightnessScorer, SlowAgentic)
    SlowAgentic.delay = 0.3
    config = ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), max_assess_images=8)
    with running_service(config) as (url, _), ThreadPoolExecutor(1) as pool:
        eight = [("image", (f"{i}.png", png_bytes(), "image/png")) for i in range(8)]
        t0 = time.monotonic()
        assess = pool.submit(httpx.post, f"{url}/v1/assess", files=eight, timeout=60)
        assert SlowAgentic.started.wait(10)
        during = _latencies(url, 8)
        scoring_done = time.monotonic() - t0
        r = assess.result()
        assess_s = time.monotonic() - t0
    assert r.status_code == 200 and len(r.json()["results"]) == 8
    assert scoring_done < assess_s  # the scoring requests finished while the assessment still ran
    assert max(during) < 1.0, during  # not queued behind the 2.4 s assessment


def test_assess_timeout_names_its_flag(fake_methods):
    fake_methods(BrightnessScorer, SlowAgentic)
    SlowAgentic.delay = 2.0
    config = ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), assess_timeout_s=0.5)
    with running_service(config) as (url, _):
        r = httpx.post(f"{url}/v1/assess", files={"image": ("a.png", png_bytes(), "image/png")}, timeout=30)
        assert r.status_code == 504, r.text
        msg = r.json()["error"]["message"]
        assert "still running after 0.5 s" in msg and "--assess-timeout" in msg and "overloaded" not in msg
        # scoring has its own, shorter timeout and is unaffected
        assert httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")}).status_code == 200


# --------------------------------------------------------------------------------------- 4. smaller


@pytest.mark.parametrize("where", ["body", "options", "moderate"])
def test_deeply_nested_json_is_400_json(fake_methods, where):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness")) as (url, _):
        if where == "body":
            r = httpx.post(f"{url}/v1/score", content=b"[" * 200_000, headers={"content-type": "application/json"})
        elif where == "options":
            r = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")},
                           data={"options": "{\"a\":" * 10_000 + "1" + "}" * 10_000})  # within the length limit
        else:
            deep: dict = {"x": 1}
            for _ in range(40):
                deep = {"x": deep}
            r = httpx.post(f"{url}/v1/score", json={"images": [], "options": deep})
    assert r.headers["content-type"].startswith("application/json")
    if where == "body":  # read as a request, not as a document: refused at its first character (issue 24 §2)
        assert r.status_code == 422 and "must be an object" in r.json()["error"]["message"], r.text[:200]
        return
    assert r.status_code == 400, r.text[:200]
    assert "nested too deeply" in r.json()["error"]["message"]


def test_error_messages_do_not_echo_megabytes(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness")) as (url, _):
        one = {"image": ("a.png", png_bytes(), "image/png")}
        for data in ({"query": "x" * 1_000_000}, {"offset": "9" * 1_000_000}, {"method": "m" * 1_000_000},
                     {"k" * 100_000: "1"}):
            r = httpx.post(f"{url}/v1/score", files=one, data=data, timeout=30)
            assert r.status_code in (400, 422), r.text[:300]
            assert len(r.content) < 3000, len(r.content)
        b64 = base64.b64encode(png_bytes()).decode()
        r = httpx.post(f"{url}/v1/score", json={"images": [b64], "options": {"readout": "x" * 1_000_000}}, timeout=30)
        assert r.status_code in (413, 422) and len(r.content) < 3000 and "--max-query-chars" in r.text, r.text[:300]
        r = httpx.post(f"{url}/v1/score", json={"images": ["x" * 1_000_000]}, timeout=30)
        assert r.status_code == 400 and len(r.content) < 3000


def test_healthz_names_the_model_not_its_path(tiny_qalign_model):
    config = ServiceConfig(method="q-align", options={"model": tiny_qalign_model, "device": "cpu"})
    with running_service(config) as (url, _):
        h = httpx.get(f"{url}/healthz").json()
    assert "/" not in h["model"] and h["model"] == tiny_qalign_model.rstrip("/").rsplit("/", 1)[-1]


def test_no_cdn_docs_and_security_headers(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness")) as (url, _):
        assert httpx.get(f"{url}/docs").status_code == 404  # Swagger UI would load from a CDN: off
        assert httpx.get(f"{url}/openapi.json").status_code == 200
        page = httpx.get(f"{url}/")
        for r in (page, httpx.get(f"{url}/healthz"), httpx.get(f"{url}/static/app.js")):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "<script src=\"/static/app.js\">" in page.text and "<style>" not in page.text  # nothing inline


def test_key_is_checked_before_the_body_is_read(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness", api_key="s3cret")) as (url, _):
        # announces 60 MB (over the 32 MB limit, under the 64 MB the limit used to drain) and sends none of it
        head = (b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 60000000\r\n\r\n")
        elapsed, got = _trickle(_port(url), head, b"", 0.1, 5.0)
        ok = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")},
                        headers={"X-API-Key": "s3cret"})
    assert got.startswith(b"HTTP/1.1 401") and elapsed < 2.0, (elapsed, got[:200])
    body = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["status"] == 401
    assert ok.status_code == 200


def test_cli_flags_reach_the_config_and_assess_options_need_the_method(capsys, monkeypatch):
    from lmmiqa.cli import build_parser, main
    from lmmiqa.cli.serve import build_config

    args = build_parser().parse_args([
        "serve", "--model", "m", "--allow-method", "agentic-iqa", "--max-assess-images", "2",
        "--max-image-pixels", "1000000", "--max-request-pixels", "5000000", "--max-queue-pixels", "9000000",
        "--decode-max-pixels", "0", "--max-query-chars", "200", "--assess-timeout", "90", "--body-timeout", "7",
        "--header-timeout", "3", "--keep-alive", "2", "--max-connections", "32", "--max-client-connections", "4",
        "--write-timeout", "9", "--max-memory-mb", "256", "--shutdown-grace", "2", "--allowed-host", "IQA.example.org:443",
        "--trusted-proxy", "10.0.0.0/8", "--model-name", "demo-iqa",
    ])
    cfg = build_config(args)
    assert (cfg.max_assess_images, cfg.max_image_pixels, cfg.max_request_pixels, cfg.max_queue_pixels) == (
        2, 1_000_000, 5_000_000, 9_000_000)
    assert (cfg.decode_max_pixels, cfg.max_query_chars, cfg.assess_timeout_s) == (0, 200, 90)
    assert (cfg.body_timeout_s, cfg.header_timeout_s, cfg.keep_alive_s, cfg.max_connections) == (7, 3, 2, 32)
    assert (cfg.max_client_connections, cfg.write_timeout_s, cfg.max_memory_bytes, cfg.shutdown_grace_s) == (
        4, 9, 256 * 2**20, 2)
    assert (cfg.allowed_hosts, cfg.trusted_proxies, cfg.model_name) == (("iqa.example.org",), ("10.0.0.0/8",), "demo-iqa")
    assert cfg.assess_enabled
    assert main(["serve", "--model", "/nonexistent", "--assess-option", "max_new_tokens=8"]) == 2
    assert "--allow-method agentic-iqa" in capsys.readouterr().err
    assert main(["serve", "--model", "/nonexistent", "--body-timeout", "0"]) == 2
    assert "--body-timeout" in capsys.readouterr().err
    assert main(["serve", "--model", "/nonexistent", "--trusted-proxy", "proxy.local"]) == 2
    assert "--trusted-proxy" in capsys.readouterr().err
    assert main(["serve", "--model", "/nonexistent", "--write-timeout", "0"]) == 2
    assert "--write-timeout" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_reduced_decode_keeps_the_exif_orientation(fmt):
    from PIL import Image

    im = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    im.save(buf, format=fmt, exif=exif.tobytes())
    data = buf.getvalue()
    reduced = decode_upload(data, "x", ImageLimits(), 40_000)
    full = open_image_bytes(data, "x", ImageLimits())
    assert full.size == (1200, 1600)  # the library applies the orientation
    assert reduced.size == (200, 267)  # and so does the reduced decode (1200/6, ceil(1600/6))
