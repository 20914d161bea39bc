"""Load and fault tests on 127.0.0.1 (bounded): concurrent clients, bad requests mixed with good ones, backend
failures, a full queue and timeouts. Latency numbers are printed (run with ``-s``), never asserted."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from svc_fakes import BrightnessScorer, png_bytes, running_service

from lmmiqa.images import open_image_bytes
from lmmiqa.service.app import ServiceConfig

pytest.importorskip("torch")
pytest.importorskip("transformers")

N_IMAGES = 8


def _images() -> list[bytes]:
    sizes = [(64, 48), (40, 72), (96, 96), (120, 56), (48, 48), (80, 60), (56, 88), (72, 40)]
    return [png_bytes(w, h, seed) for seed, (w, h) in enumerate(sizes[:N_IMAGES])]


def _reference_scores(service, images: list[bytes]) -> list[float]:
    scorer = service.default_scorer
    return [scorer.score([open_image_bytes(b)])[0].score for b in images]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def load_server(tiny_qalign_model):
    config = ServiceConfig(
        method="q-align",
        options={"model": tiny_qalign_model, "device": "cpu"},
        max_batch=16,
        max_wait_ms=5,
        max_queue=512,
        max_body_bytes=300_000,
        request_timeout_s=120,
    )
    with running_service(config) as (url, service):
        yield url, service


def test_200_requests_from_16_clients_all_correct(load_server):
    url, service = load_server
    images = _images()
    expected = _reference_scores(service, images)
    before = httpx.get(f"{url}/metrics").text
    n_requests, n_clients = 200, 16
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for k in range(worker, n_requests, n_clients):
                i = k % N_IMAGES
                t0 = time.perf_counter()
                r = c.post("/v1/score", files={"image": (f"{k}.png", images[i], "image/png")})
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200:
                        failures.append(f"{k}: HTTP {r.status_code} {r.text[:200]}")
                        continue
                    d = r.json()["results"][0]
                    if d["image"] != f"{k}.png" or d["error"] or abs(d["score"] - expected[i]) > 1e-4:
                        failures.append(f"{k}: {d['image']} score {d['score']} expected {expected[i]} ({d['error']})")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(client, range(n_clients)))
    wall = time.perf_counter() - t0
    assert not failures, failures[:5]
    assert len(latencies) == n_requests
    after = httpx.get(f"{url}/metrics").text
    images_batched = _metric(after, "lmmiqa_batch_size_sum") - _metric(before, "lmmiqa_batch_size_sum")
    batches = _metric(after, "lmmiqa_batch_size_count") - _metric(before, "lmmiqa_batch_size_count")
    assert images_batched == n_requests
    assert batches < n_requests  # concurrent requests shared backend batches
    lat = sorted(latencies)
    print(
        f"\nload: {n_requests} requests, {n_clients} clients, wall {wall:.2f} s ({n_requests / wall:.1f} req/s); "
        f"latency p50 {statistics.median(lat) * 1e3:.1f} ms, p95 {lat[int(0.95 * len(lat)) - 1] * 1e3:.1f} ms, "
        f"max {lat[-1] * 1e3:.1f} ms; {batches:.0f} batches, mean batch {images_batched / batches:.2f} images"
    )


def test_bad_requests_mixed_with_good_ones(load_server):
    url, service = load_server
    images = _images()
    expected = _reference_scores(service, images)
    png = images[0]
    cases: list[tuple[str, dict, int]] = []
    for k in range(60):
        i = k % N_IMAGES
        cases.append((f"good-{i}", {"files": {"image": (f"g{k}.png", images[i], "image/png")}}, 200))
    for k in range(15):
        cases.append(("corrupt", {"files": {"image": (f"c{k}.png", png[: 40 + k], "image/png")}}, 400))
    for _ in range(10):
        cases.append(("oversize", {"files": {"image": ("big.bin", b"\0" * 400_000, "image/png")}}, 413))
    for _ in range(10):
        cases.append(("text-part", {"files": {"image": ("a.txt", b"hello", "text/plain")}}, 415))
    for _ in range(10):
        cases.append(("text-body", {"content": png, "headers": {"content-type": "text/plain"}}, 415))
    import random

    random.Random(0).shuffle(cases)
    problems: list[str] = []

    def send(case: tuple[str, dict, int]) -> None:
        kind, req, status = case
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/v1/score", **req)
        if r.status_code != status:
            problems.append(f"{kind}: expected {status}, got {r.status_code}: {r.text[:200]}")
            return
        if status == 200:
            d = r.json()["results"][0]
            i = int(kind.split("-")[1])
            if d["error"] or abs(d["score"] - expected[i]) > 1e-4:
                problems.append(f"{kind}: wrong result {d}")
        elif "error" not in r.json():
            problems.append(f"{kind}: error body {r.text[:200]}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, cases))
    assert not problems, problems[:5]


def test_backend_error_inside_a_batch_is_isolated(load_server, monkeypatch):
    url, service = load_server
    images = _images()
    expected = _reference_scores(service, images)
    backend = service.default_scorer.backend
    original = backend.level_logprobs
    fail_next = {"n": 0, "calls": 0}

    def flaky(prompts, candidates):
        fail_next["calls"] += 1
        if fail_next["n"] > 0:
            fail_next["n"] -= 1
            raise RuntimeError("simulated CUDA error: an illegal memory access was encountered")
        return original(prompts, candidates)

    monkeypatch.setattr(backend, "level_logprobs", flaky)
    files = [("image", (f"{i}.png", images[i], "image/png")) for i in range(N_IMAGES)]

    # a batch of 8 fails as a whole: it is retried one image at a time and every image is scored
    fail_next["n"] = 1
    r = httpx.post(f"{url}/v1/score", files=files, timeout=120)
    assert r.status_code == 200
    got = r.json()["results"]
    assert [d["error"] for d in got] == [None] * N_IMAGES
    assert [d["score"] for d in got] == pytest.approx(expected, abs=1e-4)
    assert fail_next["calls"] == 1 + N_IMAGES

    # an image whose own forward fails gets a per-item error; the next request is served normally
    fail_next["n"] = 1
    r = httpx.post(f"{url}/v1/score", files=files[:1], timeout=120)
    assert r.status_code == 200
    assert "simulated CUDA error" in r.json()["results"][0]["error"]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda k: httpx.post(
                    f"{url}/v1/score", files={"image": (f"{k}.png", images[k % N_IMAGES], "image/png")}, timeout=120
                ),
                range(16),
            )
        )
    for k, r in enumerate(responses):
        assert r.status_code == 200, r.text
        d = r.json()["results"][0]
        assert d["error"] is None and abs(d["score"] - expected[k % N_IMAGES]) < 1e-4


# --------------------------------------------------------------------------------------- fake method (no model)


def _post(url: str, name: str = "a.png", timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/v1/score", files={"image": (name, png_bytes(), "image/png")}, timeout=timeout)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_server_keeps_serving_after_a_failed_batch(fake_methods):
    fake_methods(BrightnessScorer)
    BrightnessScorer.gate = threading.Event()
    BrightnessScorer.fail_batches = 1
    config = ServiceConfig(method="fake-brightness", max_batch=8, max_wait_ms=0)
    with running_service(config) as (url, service), ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post, url, "first.png")
        assert BrightnessScorer.entered.wait(10)  # the worker holds 'first' at the gate
        later = [pool.submit(_post, url, f"later{k}.png") for k in range(3)]
        _wait_for(lambda: service.batcher.depth == 3)
        BrightnessScorer.gate.set()
        r = first.result()
        assert r.status_code == 503
        assert "simulated backend failure" in r.json()["error"]["message"]
        for f in later:
            assert f.result().status_code == 200
        assert _post(url).status_code == 200
        assert 'lmmiqa_failures_total{reason="unavailable"} 1.0' in httpx.get(f"{url}/metrics").text


def test_full_queue_is_429_and_recovers(fake_methods):
    fake_methods(BrightnessScorer)
    BrightnessScorer.gate = threading.Event()
    config = ServiceConfig(method="fake-brightness", max_batch=1, max_wait_ms=0, max_queue=2, max_images=1)
    with running_service(config) as (url, service), ThreadPoolExecutor(4) as pool:
        running = pool.submit(_post, url, "running.png")
        assert BrightnessScorer.entered.wait(10)
        queued = [pool.submit(_post, url, f"q{k}.png") for k in range(2)]
        _wait_for(lambda: service.batcher.depth == 2)
        r = _post(url, "over.png")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "queue is full" in r.json()["error"]["message"]
        BrightnessScorer.gate.set()
        assert running.result().status_code == 200
        assert all(f.result().status_code == 200 for f in queued)
        assert _post(url).status_code == 200


def test_request_timeout_says_which_limit_and_the_item_is_dropped(fake_methods):
    fake_methods(BrightnessScorer)
    BrightnessScorer.gate = threading.Event()
    config = ServiceConfig(method="fake-brightness", max_batch=1, max_wait_ms=0, request_timeout_s=2.0)
    with running_service(config) as (url, service), ThreadPoolExecutor(2) as pool:
        blocker = pool.submit(_post, url, "blocker.png")
        assert BrightnessScorer.entered.wait(10)
        r = _post(url, "late.png")  # waits behind the blocked batch, then gives up
        assert r.status_code == 503 and "in the score queue without starting" in r.json()["error"]["message"]
        assert "--timeout" in r.json()["error"]["message"]
        BrightnessScorer.gate.set()
        slow = blocker.result()  # it timed out too, while being scored (held at the gate): 504, the flag named
        assert slow.status_code == 504, slow.text
        assert "still running after 2 s" in slow.json()["error"]["message"] and "--timeout" in slow.json()["error"]["message"]
        ok = _post(url, "after.png")
        assert ok.status_code == 200
        _wait_for(lambda: service.batcher.depth == 0)
    assert sum(BrightnessScorer.batches) == 2  # blocker and after: 'late' was dropped before the scorer


def test_large_multi_image_request(load_server):
    url, service = load_server
    images = _images()
    expected = _reference_scores(service, images)
    files = [("image", (f"{i}.png", images[i], "image/png")) for i in range(N_IMAGES)]
    r = httpx.post(f"{url}/v1/score", files=files, timeout=120)
    assert r.status_code == 200
    got = [d["score"] for d in r.json()["results"]]
    assert got == pytest.approx(expected, abs=1e-4)
