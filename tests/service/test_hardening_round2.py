"""Service hardening, round 2 (issue 24; issue 23 §8), on 127.0.0.1 only, each test bounded in count and time:
decoding in the memory budget and stopped when given up, JSON bodies off the event loop, slow readers and the key
holders' reserve, per-client limits, shutdown, Host checks, public model names, protocol-level answers.

Servers are the real uvicorn with the settings ``lmmiqa serve`` uses (``svc_fakes.running_service``); several
client addresses are simulated with other loopback addresses (127.0.0.2, ...), which Linux routes to ``lo``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from svc_fakes import BrightnessScorer, SlowAgentic, png_bytes, running_service

from lmmiqa.errors import Cancelled
from lmmiqa.service.app import ServiceConfig
from lmmiqa.service.server import install_log_filter

pytest.importorskip("torch")

MiB = 2**20


# --------------------------------------------------------------------------------------- helpers


def _port(url: str) -> int:
    return int(urlparse(url).port)


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def _established(s: socket.socket) -> bool:
    """True while the TCP connection is established (the server neither closed nor reset it)."""
    import struct

    return struct.unpack("B", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0] == 1


def _raw(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (or ``timeout``)."""
    s = _connect(port, source, timeout)
    got = b""
    try:
        s.sendall(data)
        while chunk := s.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        s.close()
    return got


def _json_of(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def _png16(size: int) -> bytes:
    """A 16-bit grey PNG (mode I;16): the issue's costliest input (+984 MB at 6300² before)."""
    from PIL import Image

    a16 = np.asarray(Image.linear_gradient("L").resize((size, size)), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(data: bytes, name: str = "a.png", boundary: str = "BOUNDARY") -> bytes:
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()


def _post_head(path: str, length: int, ctype: str = "multipart/form-data; boundary=BOUNDARY", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
            f"{extra}\r\n").encode()


def _wait_for(predicate, limit_s: float = 10.0) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _spy_decode(service, *, until_given_up: bool = False) -> list[str]:
    """Record how each of the service's decodes ended: 'ok', 'cancelled' or the error's name.

    ``until_given_up``: each decode first waits (up to 20 s) until its request's cancellation test fires, so that
    a test of "decoding stops when the request is given up" does not depend on how fast this machine decodes."""
    ends: list[str] = []
    original = service.decode

    def spy(*args, **kwargs):
        if until_given_up:
            from lmmiqa.cancel import cancel_reason

            deadline = time.monotonic() + 20
            while cancel_reason() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            out = original(*args, **kwargs)
        except Cancelled:
            ends.append("cancelled")
            raise
        except Exception as err:
            ends.append(type(err).__name__)
            raise
        ends.append("ok")
        return out

    service.decode = spy
    return ends


# --------------------------------------------------------------------------------------- 1. decoding memory


def test_decoding_is_counted_in_the_memory_budget(fake_methods):
    """A 16-bit PNG's decode is reserved at its real cost: 413 when it can never fit, 429 while the budget is full,
    and every byte is given back."""
    fake_methods(BrightnessScorer)
    png = _png16(2000)  # decoded at native depth: 8 MB, plus tiles and the output
    files = {"image": ("a.png", png, "image/png")}
    small = ServiceConfig(method="fake-brightness", decode_max_pixels=12_544, max_memory_bytes=12 * MiB)
    with running_service(small) as (url, service):
        r = httpx.post(f"{url}/v1/score", files=files, timeout=30)
        assert r.status_code == 413, r.text
        assert "--max-memory-mb" in r.json()["error"]["message"] and service.memory.used == 0
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=12_544, max_memory_bytes=64 * MiB)
    with running_service(config) as (url, service):
        assert service.memory.reserve(50 * MiB)  # most of the budget is held by others
        r = httpx.post(f"{url}/v1/score", files=files, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert "--max-memory-mb" in r.json()["error"]["message"]
        service.memory.release(50 * MiB)
        r = httpx.post(f"{url}/v1/score", files=files, timeout=30)
        assert r.status_code == 200, r.text
        assert BrightnessScorer.sizes == [(118, 118)]  # 2000² reduced by 17, straight from the 16-bit decode
        assert service.memory.used == 0 and service.pixels.used == 0


def test_a_webp_header_is_read_without_its_canvas(fake_methods):
    """Pillow's WebP plugin allocates the whole canvas when it opens a file; the service reads a WebP's size
    itself, so a 16 000² canvas announced by a 100-byte file is refused (413) without allocating it."""
    from PIL import Image

    from lmmiqa.service.uploads import read_header

    fake_methods(BrightnessScorer)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.new("RGB", (2, 2)).save(buf, format="WEBP", exif=exif.tobytes())  # an extended (VP8X) WebP
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (16000 - 1).to_bytes(3, "little") * 2  # the canvas it announces
    header = read_header(bytes(data))
    assert (header.width, header.height, header.format) == (16000, 16000, "WEBP")
    with running_service(ServiceConfig(method="fake-brightness")) as (url, service):
        r = httpx.post(f"{url}/v1/score", files={"image": ("big.webp", bytes(data), "image/webp")}, timeout=30)
        assert r.status_code == 413 and "--max-image-pixels" in r.json()["error"]["message"], r.text
        assert service.memory.used == 0


def test_the_memory_budget_keeps_a_share_for_small_requests():
    from lmmiqa.service.budget import Budget, Hold

    b = Budget(100, small_reserve=10, small=20)
    assert (b.capacity(50), b.capacity(20)) == (90, 100)
    assert b.reserve(50) and not b.reserve(45) and b.reserve(40)  # large holders stop at 90
    assert b.reserve(10) and not b.reserve(1)  # a small one takes the last 10
    b.release(100)
    small = Hold.take(b, 15)
    big = Hold.take(b, 70)
    assert small is not None and big is not None and b.used == 85
    assert not small.grow(10)  # 25 in all: now a large holder, and 95 > 90
    assert small.grow(5) and b.used == 90  # still small (20)
    small.release()
    small.release()  # once only
    big.release()
    assert b.used == 0


def test_concurrent_16bit_uploads_stay_within_the_budget(fake_methods):
    """Eight clients posting 16-bit PNGs at once (the issue's attack, smaller): answered 200 or 429, the budget's
    use never above its limit, and the server's memory back to zero after."""
    fake_methods(BrightnessScorer)
    png = _png16(2000)
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=12_544, max_memory_bytes=48 * MiB,
                           decode_workers=4)
    with running_service(config) as (url, service):
        highest = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                highest[0] = max(highest[0], service.memory.used)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        two = [("image", (f"{i}.png", png, "image/png")) for i in range(2)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/score", files=two, timeout=60), range(8)))
        stop.set()
        sampler.join(5)
        assert service.memory.used == 0
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 429} and 200 in codes, [(r.status_code, r.text[:200]) for r in answers]
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 429)
    assert 0 < highest[0] <= 48 * MiB, highest[0]


def test_decoding_stops_when_the_client_leaves_or_the_timeout_passes(fake_methods):
    fake_methods(BrightnessScorer)
    png = _png16(4000)  # 16 MP: its tiles take about a second to convert
    body = _multipart(png)
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=12_544)
    with running_service(config) as (url, service):
        ends = _spy_decode(service, until_given_up=True)
        s = _connect(_port(url))
        s.sendall(_post_head("/v1/score", len(body)) + body)
        time.sleep(0.2)  # the decode has started
        s.close()  # the client leaves
        assert _wait_for(lambda: ends, 20), "the decode did not end"
        assert ends == ["cancelled"]
        assert _wait_for(lambda: service.memory.used == 0, 5)
        assert BrightnessScorer.batches == []  # nothing was scored for nobody
    config = ServiceConfig(method="fake-brightness", decode_max_pixels=12_544, request_timeout_s=0.3)
    with running_service(config) as (url, service):
        ends = _spy_decode(service, until_given_up=True)
        r = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png, "image/png")}, timeout=30)
        assert r.status_code == 503 and "--timeout" in r.json()["error"]["message"], r.text
        assert _wait_for(lambda: ends, 20) and ends == ["cancelled"]
        assert _wait_for(lambda: service.memory.used == 0, 5)


# --------------------------------------------------------------------------------------- 2. JSON bodies


def test_json_bodies_are_counted_as_they_are_read_and_parsed_off_the_loop(fake_methods):
    """11 M empty image strings (32 MB) are refused at the 17th, off the event loop: /healthz answers meanwhile
    (the issue measured a 50 s stall of every endpoint)."""
    fake_methods(BrightnessScorer)
    body = b'{"images": [' + b'"",' * 11_000_000 + b'""]}'
    with running_service(ServiceConfig(method="fake-brightness", max_body_bytes=40 * MiB)) as (url, service):
        health: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    health.append(time.perf_counter() - t0)
                    time.sleep(0.01)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(
                lambda _: httpx.post(f"{url}/v1/score", content=body, headers={"content-type": "application/json"},
                                     timeout=60),
                range(3),
            ))
        stop.set()
        poller.join(10)
        assert service.memory.used == 0
    for r in answers:
        assert r.status_code == 413 and "more than 16 images" in r.json()["error"]["message"], r.text[:300]
    assert health and max(health) < 2.0, max(health)


def test_json_bodies_are_charged_to_the_memory_budget(fake_methods):
    fake_methods(BrightnessScorer)
    b64 = base64.b64encode(png_bytes()).decode()
    big = json.dumps({"images": [b64], "options": {"offset": 0}}).encode() + b" " * (4 * MiB)  # 4 MB body
    head = {"content-type": "application/json"}
    config = ServiceConfig(method="fake-brightness", max_memory_bytes=16 * MiB)
    with running_service(config) as (url, service):
        r = httpx.post(f"{url}/v1/score", content=big, headers=head, timeout=30)  # 4 x 4 MB + 2 MB: never fits
        assert r.status_code == 413 and "--max-memory-mb" in r.json()["error"]["message"], r.text
    config = ServiceConfig(method="fake-brightness", max_memory_bytes=24 * MiB)
    with running_service(config) as (url, service):
        assert httpx.post(f"{url}/v1/score", content=big, headers=head, timeout=30).status_code == 200
        assert service.memory.reserve(10 * MiB)  # held by other requests
        r = httpx.post(f"{url}/v1/score", content=big, headers=head, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "--max-memory-mb" in r.text, r.text

        def chunks():  # no Content-Length: charged as it arrives
            for i in range(0, len(big), 256 * 1024):
                yield big[i : i + 256 * 1024]

        r = httpx.post(f"{url}/v1/score", content=chunks(), headers=head, timeout=30)
        assert r.status_code == 429 and "--max-memory-mb" in r.text, r.text
        service.memory.release(10 * MiB)
        assert httpx.post(f"{url}/v1/score", content=chunks(), headers=head, timeout=30).status_code == 200
        assert service.memory.used == 0


# --------------------------------------------------------------------------------------- 3, 4. connections


def test_a_reader_that_never_reads_is_dropped_and_key_holders_keep_their_reserve(fake_methods, caplog):
    fake_methods(BrightnessScorer)
    caplog.set_level(logging.WARNING, logger="lmmiqa.service")
    install_log_filter()._seen.clear()
    config = ServiceConfig(method="fake-brightness", api_key="s3cret", max_connections=8, write_timeout_s=1.0,
                           header_timeout_s=30)
    key = {"X-API-Key": "s3cret"}
    with running_service(config) as (url, _):
        port = _port(url)
        # pipelines 300 GETs of a public file and never reads a byte
        reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.bind(("127.0.0.2", 0))
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 300)
        t0 = time.monotonic()
        assert _wait_for(lambda: any("did not read its answers" in r.getMessage() for r in caplog.records), 15)
        dropped_after = time.monotonic() - t0
        assert _wait_for(lambda: not _established(reader), 5)  # reset: the kernel does not keep the answers either
        reader.close()
        assert dropped_after < 10, dropped_after  # --write-timeout 1 (the issue saw > 100 s)

        # six connections without the key fill what is not reserved; the next one must carry the key
        idle = [_connect(port, "127.0.0.3") for _ in range(6)]
        time.sleep(0.2)
        got = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503") and b"x-content-type-options: nosniff" in got.lower(), got[:300]
        assert "API key" in _json_of(got)["error"]["message"]
        r = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")}, headers=key)
        assert r.status_code == 200, r.text
        for s in idle:
            s.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/healthz").status_code == 200  # public again once the reserve is not needed


def test_one_client_address_cannot_take_every_connection(fake_methods):
    fake_methods(BrightnessScorer)
    config = ServiceConfig(method="fake-brightness", max_connections=10, max_client_connections=3, header_timeout_s=30)
    with running_service(config) as (url, _):
        port = _port(url)
        held = [_connect(port, "127.0.0.2") for _ in range(3)]
        time.sleep(0.2)
        got = _raw(port, b"", source="127.0.0.2", timeout=3)
        assert got.startswith(b"HTTP/1.1 503") and b"--max-client-connections" in got, got[:300]
        assert b"x-frame-options: deny" in got.lower()
        r = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")})  # from 127.0.0.1
        assert r.status_code == 200, r.text
        for s in held:
            s.close()


def test_behind_a_trusted_proxy_the_limit_is_per_forwarded_client(fake_methods):
    fake_methods(BrightnessScorer)
    BrightnessScorer.gate = threading.Event()
    config = ServiceConfig(method="fake-brightness", max_client_connections=2, trusted_proxies=("127.0.0.1",))
    one = {"image": ("a.png", png_bytes(), "image/png")}
    try:
        with running_service(config) as (url, _), ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, f"{url}/v1/score", files=one, timeout=30,
                                headers={"X-Forwarded-For": "10.0.0.5"}) for _ in range(2)]
            assert BrightnessScorer.entered.wait(10)
            time.sleep(0.2)
            r = httpx.get(f"{url}/healthz", headers={"X-Forwarded-For": "10.0.0.5"})
            assert r.status_code == 429 and "--max-client-connections" in r.json()["error"]["message"], r.text
            assert httpx.get(f"{url}/healthz", headers={"X-Forwarded-For": "10.0.0.6"}).status_code == 200
            # a client that is not the proxy cannot pose as another one: its own address counts
            got = _raw(_port(url), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.0.0.5\r\n"
                       b"Connection: close\r\n\r\n", source="127.0.0.2")
            assert got.startswith(b"HTTP/1.1 200"), got[:200]
            BrightnessScorer.gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
    finally:
        BrightnessScorer.gate.set()


# --------------------------------------------------------------------------------------- 5. shutdown


def test_shutdown_answers_json_503_and_stops_the_running_assessment(fake_methods):
    from lmmiqa.service.app import ScoringService, create_app
    from lmmiqa.service.openai_compat import free_port, run_server_thread
    from lmmiqa.service.server import make_server

    fake_methods(BrightnessScorer, SlowAgentic)
    SlowAgentic.delay = 30.0  # an assessment that would run 30 s
    config = ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), shutdown_grace_s=0.5)
    service = ScoringService(config)
    app = create_app(service)
    port = free_port()
    server = make_server(app, config, "127.0.0.1", port, log_level="warning", lifespan="off")
    try:
        with run_server_thread(server, "127.0.0.1", port) as url, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/assess", files={"image": ("a.png", png_bytes(), "image/png")},
                                  timeout=60)
            assert SlowAgentic.started.wait(10)
            t0 = time.monotonic()
            server.should_exit = True
            r = pending.result()
            answered = time.monotonic() - t0
            assert _wait_for(lambda: not server.started or server.should_exit, 1)
        exited = time.monotonic() - t0
    finally:
        service.close()
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", (r.status_code, r.text[:200])
    assert "shutting down" in r.json()["error"]["message"] and r.headers["x-content-type-options"] == "nosniff"
    assert answered < 4 and exited < 6, (answered, exited)  # grace 0.5 s, then stopped (was 5 s + the assessment)


def test_generation_stops_between_tokens_when_cancelled(tiny_qalign_model):
    import lmmiqa
    from lmmiqa.cancel import cancel_when
    from lmmiqa.testing import make_image

    scorer = lmmiqa.create_scorer("q-align", model=tiny_qalign_model, device="cpu")
    backend = scorer.backend
    prompt = scorer.build_prompt(make_image(32, 32, 0))
    checks = [0]

    def stop_after_first_token() -> str | None:
        checks[0] += 1
        return "stopped by the test" if checks[0] >= 2 else None  # 1: before the prefill, 2: after token 1

    with cancel_when(stop_after_first_token), pytest.raises(Cancelled, match="stopped by the test"):
        backend.generate([prompt], max_new_tokens=200)
    assert checks[0] == 2
    assert len(backend.generate([prompt], max_new_tokens=2)) == 1  # the model's lock was given back


# --------------------------------------------------------------------------------------- 6. Host


def test_host_names_are_checked_without_a_key(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness", allowed_hosts=("iqa.example.org",))) as (url, _):
        port = _port(url)
        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example"):
            r = httpx.get(f"{url}/v1/methods", headers={"Host": host})
            assert r.status_code == 421 and r.headers["content-type"] == "application/json", (host, r.text)
            assert "--allowed-host" in r.json()["error"]["message"] and r.headers["x-frame-options"] == "DENY"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "127.0.0.2", "iqa.example.org",
                     "IQA.example.org:443"):
            assert httpx.get(f"{url}/v1/methods", headers={"Host": host}).status_code == 200, host
    with running_service(ServiceConfig(method="fake-brightness", api_key="k")) as (url, _):  # a key: any host
        r = httpx.get(f"{url}/v1/methods", headers={"Host": "iqa.example.org", "X-API-Key": "k"})
        assert r.status_code == 200


# --------------------------------------------------------------------------------------- 7. names


def test_served_results_name_the_model_not_its_path(tiny_qalign_model):
    config = ServiceConfig(method="q-align", options={"model": tiny_qalign_model, "device": "cpu"},
                           model_name="demo-iqa")
    b64 = base64.b64encode(png_bytes()).decode()
    with running_service(config) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/score", json={"images": [b64]})
        methods = c.get("/v1/methods")
        health = c.get("/healthz").json()
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["model"] == "demo-iqa"
    assert methods.json()["model"] == "demo-iqa" and health["model"] == "demo-iqa"
    folder = tiny_qalign_model.rstrip("/").rsplit("/", 1)[0]
    for text in (r.text, methods.text, json.dumps(health)):
        assert folder not in text and tiny_qalign_model not in text


def test_default_public_names():
    from lmmiqa.service.naming import ModelNames, default_public_name

    assert default_public_name("Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"  # a hub id as it is
    assert default_public_name("/home/me/.cache/lmmiqa/demo/qwen2-vl-tiny/") == "qwen2-vl-tiny"
    assert default_public_name("http://10.1.2.3:8001/v1#Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"
    names = ModelNames(["/srv/models/a", "/srv/models/b"], "alpha, beta")
    served = names.result({"model": ["/srv/models/a", "/srv/models/b"], "error": "cannot read /srv/models/b/x.bin",
                           "details": {"models": [{"model": "/srv/models/a", "score": 3.0}]}})
    assert served["model"] == ["alpha", "beta"] and served["error"] == "cannot read beta/x.bin"
    assert served["details"] == {"models": [{"model": "alpha", "score": 3.0}]}
    with pytest.raises(ValueError, match="one name per model"):
        ModelNames(["/srv/models/a", "/srv/models/b"], "alpha")


def test_openapi_document_is_the_key_holders(fake_methods):
    fake_methods(BrightnessScorer)
    with running_service(ServiceConfig(method="fake-brightness", api_key="k")) as (url, _):
        assert httpx.get(f"{url}/openapi.json").status_code == 401
        assert httpx.get(f"{url}/openapi.json", headers={"X-API-Key": "k"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/").status_code == 200


# --------------------------------------------------------------------------------------- 8. smaller


def test_protocol_level_refusals_are_json_with_the_security_headers(fake_methods, caplog):
    fake_methods(BrightnessScorer)
    caplog.set_level(logging.WARNING)
    install_log_filter()._seen.clear()
    with running_service(ServiceConfig(method="fake-brightness", max_connections=3)) as (url, _):
        port = _port(url)
        answers = {
            "malformed": _raw(port, b"GARBAGE\r\n\r\n"),
            "smuggling": _raw(port, b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            "head": _raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
        }
        held = [_connect(port) for _ in range(3)]
        time.sleep(0.2)
        answers["cap"] = _raw(port, b"")
        for s in held:
            s.close()
        b64 = base64.b64encode(png_bytes()).decode()
        digits = "1" * 5000
        as_json = httpx.post(f"{url}/v1/score", content=f'{{"images": ["{b64}"], "options": {{"offset": {digits}}}}}',
                             headers={"content-type": "application/json"})
        as_form = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(), "image/png")},
                             data={"options": f'{{"offset": {digits}}}'})
        for i in range(30):  # broken boundaries (python_multipart logs each with its offset)
            bad = b"\r\n" * i + b"--BOUNDARYX\r\n"
            _raw(port, _post_head("/v1/score", len(bad), extra="Connection: close\r\n") + bad)
    expected = {"malformed": b"HTTP/1.1 400", "smuggling": b"HTTP/1.1 400", "head": b"HTTP/1.1 431", "cap": b"HTTP/1.1 503"}
    for what, got in answers.items():
        assert got.startswith(expected[what]), (what, got[:300])
        head = got.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: application/json" in head and b"x-content-type-options: nosniff" in head, (what, head)
        assert _json_of(got)["error"]["status"] == int(expected[what][9:])
    assert "Transfer-Encoding" in _json_of(answers["smuggling"])["error"]["message"]
    for r in (as_json, as_form):  # Python refuses ints over 4300 digits: a 400, not a 500
        assert r.status_code == 400 and "4300 digits" in r.json()["error"]["message"], r.text[:300]
    multipart_lines = [r for r in caplog.records if r.name.startswith("python_multipart")]
    assert 1 <= len(multipart_lines) <= 6, len(multipart_lines)  # 30 broken bodies, a burst of log lines


# --------------------------------------------------------------------------------------- the command


@pytest.mark.slow
@pytest.mark.skipif("'slow' not in (config.option.markexpr or '')",
                    reason="slow (a fresh `lmmiqa serve` process, 15-40 s on the 2-core machine): run with -m slow")
def test_lmmiqa_serve_names_the_model_checks_hosts_and_stops_on_sigint(tiny_qalign_model, tmp_path):
    """``lmmiqa serve`` as a user runs it (subprocess, fresh HOME, offline): ``--model-name``, the Host check, and
    a SIGINT that ends the process at once when nothing runs."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import lmmiqa
    from lmmiqa.service.openai_compat import free_port

    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(Path(lmmiqa.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmmiqa", "serve", "--model", tiny_qalign_model, "--device", "cpu", "--port", str(port),
         "--model-name", "demo-iqa", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: proc.poll() is not None or _healthy(url), 120), "lmmiqa serve did not start"
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        methods = httpx.get(f"{url}/v1/methods").json()
        assert methods["model"] == "demo-iqa" and tiny_qalign_model not in json.dumps(methods)
        assert httpx.get(f"{url}/healthz", headers={"Host": "rebound.example"}).status_code == 421
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = proc.stderr.read()
    assert "Traceback" not in err, err[-2000:]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
