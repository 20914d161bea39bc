"""The HTTP API on 127.0.0.1: scoring (multipart and JSON), methods and options, limits, errors, auth, metrics."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from svc_fakes import BrightnessScorer, FakeAgentic, RegionsScorer, png_bytes, running_service

import lmmiqa
from lmmiqa.cli import main
from lmmiqa.errors import ConfigError
from lmmiqa.service.app import ServiceConfig, check_bind, is_loopback
from lmmiqa.testing import make_image

pytest.importorskip("torch")
pytest.importorskip("transformers")


# --------------------------------------------------------------------------------------- tiny model server


@pytest.fixture(scope="module")
def qalign_server(tiny_qalign_model):
    config = ServiceConfig(
        method="q-align",
        options={"model": tiny_qalign_model, "device": "cpu"},
        allow_methods=("standard-guided",),
        max_body_bytes=400_000,
        max_images=4,
        max_image_pixels=200 * 200,
    )
    with running_service(config) as (url, service), httpx.Client(base_url=url, timeout=60) as client:
        yield client, service


def test_multipart_scores_match_the_library(qalign_server, tiny_qalign_model):
    client, _ = qalign_server
    data = [png_bytes(64, 48, 0), png_bytes(40, 72, 1, "JPEG")]
    r = client.post(
        "/v1/score",
        files=[("image", ("a.png", data[0], "image/png")), ("image", ("dir/b.jpg", data[1], "image/jpeg"))],
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [d["image"] for d in results] == ["a.png", "b.jpg"]
    from PIL import Image

    local = lmmiqa.create_scorer("q-align", model=tiny_qalign_model, device="cpu").score(
        [Image.open(io.BytesIO(b)) for b in data]
    )
    for d, ref in zip(results, local):
        expected = ref.to_dict()
        assert d["score"] == pytest.approx(expected["score"], abs=1e-5)
        assert set(d) == set(expected)
        assert d["scale"] == [1.0, 5.0] and d["method"] == "q-align" and d["error"] is None
        assert d["probabilities"].keys() == expected["probabilities"].keys()
        assert "queue" in d["timings"]


def test_json_base64_data_url_and_named_images(qalign_server):
    client, _ = qalign_server
    raw = png_bytes(50, 50, 3)
    b64 = base64.b64encode(raw).decode()
    r = client.post(
        "/v1/score",
        json={"images": [b64, f"data:image/png;base64,{b64}", {"data": b64, "name": "named.png"}]},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [d["image"] for d in results] == ["<memory:0>", "<memory:1>", "named.png"]
    assert len({round(d["score"], 6) for d in results}) == 1  # same bytes, same score


def test_other_method_and_per_request_options(qalign_server):
    client, _ = qalign_server
    img = ("a.png", png_bytes(), "image/png")
    r = client.post("/v1/score", files={"image": img}, data={"method": "standard-guided", "levels": "5"})
    assert r.status_code == 200, r.text
    d = r.json()["results"][0]
    assert d["method"] == "standard-guided" and d["scale"] == [1.0, 5.0]
    r = client.post("/v1/score", files={"image": img}, data={"options": '{"readout": "argmax"}'})
    assert r.status_code == 200
    assert r.json()["results"][0]["score"] in (1.0, 2.0, 3.0, 4.0, 5.0)


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"method": "llm-iqa-nope"}, "unknown method"),
        ({"options": '{"levels": 4}', "method": "standard-guided"}, "levels"),
        ({"model": "/etc"}, "Options a request may set"),  # the model is the server's, never the client's
        ({"device": "cuda"}, "Options a request may set"),
        ({"readout": "median"}, "readout"),
    ],
)
def test_invalid_method_or_options_are_422(qalign_server, fields, fragment):
    client, _ = qalign_server
    r = client.post("/v1/score", files={"image": ("a.png", png_bytes(), "image/png")}, data=fields)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]


def test_method_not_served_is_422(qalign_server):
    client, service = qalign_server
    assert "llm-iqa" not in service.config.served_methods
    from lmmiqa import registry

    if "llm-iqa" not in registry.names("method"):
        pytest.skip("llm-iqa is not registered in this checkout")
    r = client.post("/v1/score", files={"image": ("a.png", png_bytes(), "image/png")}, data={"method": "llm-iqa"})
    assert r.status_code == 422 and "not served here" in r.json()["error"]["message"]


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG file whose header claims w x h pixels (a decompression bomb: never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _big_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    make_image(w, h, 0).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind,status",
    [
        ("corrupt", 400),
        ("truncated", 400),
        ("empty-request", 400),
        ("text-part", 415),
        ("text-body", 415),
        ("no-content-type", 415),
        ("too-many-images", 413),
        ("too-many-pixels", 413),
        ("bomb", 413),
        ("body-too-large", 413),
        ("url", 400),
        ("bad-base64", 400),
        ("bad-json", 400),
        ("json-not-object", 422),
        ("json-unknown-field", 422),
        ("string-as-image-field", 400),
    ],
)
def test_bad_requests_get_json_errors(qalign_server, kind, status):
    client, _ = qalign_server
    png = png_bytes()
    req: dict = {}
    if kind == "corrupt":
        req = {"files": {"image": ("x.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")}}
    elif kind == "truncated":
        req = {"files": {"image": ("x.png", png[: len(png) // 2], "image/png")}}
    elif kind == "empty-request":
        req = {"json": {"images": []}}
    elif kind == "text-part":
        req = {"files": {"image": ("x.txt", b"hello", "text/plain")}}
    elif kind == "text-body":
        req = {"content": b"hello", "headers": {"content-type": "text/plain"}}
    elif kind == "no-content-type":
        req = {"content": png}
    elif kind == "too-many-images":
        req = {"files": [("image", (f"{i}.png", png, "image/png")) for i in range(5)]}
    elif kind == "too-many-pixels":
        req = {"files": {"image": ("big.png", _big_png(300, 200), "image/png")}}
    elif kind == "bomb":
        req = {"files": {"image": ("bomb.png", _png_header_only(30000, 30000), "image/png")}}
    elif kind == "body-too-large":
        req = {"files": {"image": ("big.bin", b"\0" * 500_000, "application/octet-stream")}}
    elif kind == "url":
        req = {"json": {"images": ["https://example.com/photo.jpg"]}}
    elif kind == "bad-base64":
        req = {"json": {"images": ["@@@not base64@@@"]}}
    elif kind == "bad-json":
        req = {"content": b"{oops", "headers": {"content-type": "application/json"}}
    elif kind == "json-not-object":
        req = {"json": ["a"]}
    elif kind == "json-unknown-field":
        req = {"json": {"images": [], "url": "x"}}
    elif kind == "string-as-image-field":
        req = {"data": {"image": "photo.jpg"}, "files": {"other": ("a.png", png, "image/png")}}
    r = client.post("/v1/score", **req)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["message"] and err["type"]


def test_streamed_body_over_the_limit_is_413(qalign_server):
    client, _ = qalign_server

    def chunks():
        for _ in range(10):
            yield b"\0" * 50_000

    r = client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["error"]["message"]


def test_methods_health_metrics_openapi(qalign_server):
    client, _ = qalign_server
    m = client.get("/v1/methods").json()
    assert m["default"] == "q-align" and set(m["methods"]) == {"q-align", "standard-guided"}
    assert set(m["methods"]["q-align"]["options"]["properties"]) == {"readout", "pad_to_square"}
    assert "levels" in m["methods"]["standard-guided"]["options"]["properties"]
    assert m["limits"]["max_images"] == 4
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["auth_required"] is False
    client.post("/v1/score", files={"image": ("a.png", png_bytes(), "image/png")})
    text = client.get("/metrics").text
    for series in (
        'lmmiqa_requests_total{endpoint="/v1/score",status="200"}',
        "lmmiqa_request_latency_seconds_bucket",
        "lmmiqa_batch_size_bucket",
        "lmmiqa_images_total",
        "lmmiqa_queue_depth",
    ):
        assert series in text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "ScoreJSONRequest" in spec["components"]["schemas"]
    assert "ScoreResponse" in spec["components"]["schemas"]
    assert {"413", "415", "422", "429", "503"} <= set(spec["paths"]["/v1/score"]["post"]["responses"])
    page = client.get("/")
    assert page.status_code == 200 and "lmmiqa" in page.text
    assert client.get("/static/app.js").status_code == 200
    # the page names its icon, so browsers do not ask for /favicon.ico (a 404 in the log)
    assert '<link rel="icon" href="/static/favicon.svg"' in page.text
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.text.startswith("<svg")


def test_assess_is_404_unless_the_agentic_method_is_allowed(qalign_server):
    client, service = qalign_server
    assert not service.config.assess_enabled  # started for q-align (and standard-guided) only
    r = client.post("/v1/assess", files={"image": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 404, r.text
    assert "--allow-method agentic-iqa" in r.json()["error"]["message"]
    assert client.get("/v1/methods").json()["assess_available"] is False


# --------------------------------------------------------------------------------------- fake methods (no model)


def test_assess_uses_the_agentic_method_when_registered(fake_methods):
    fake_methods(BrightnessScorer, FakeAgentic)
    with running_service(ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",))) as (url, _):
        r = httpx.post(f"{url}/v1/assess", files={"image": ("a.png", png_bytes(), "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
        d = r.json()["results"][0]
        assert d["method"] == "agentic-iqa"
        assert d["details"]["explanation"] and d["details"]["tools"]["niqe"]["raw"] == 4.25
        assert httpx.get(f"{url}/v1/methods").json()["assess_available"] is True


def test_assess_options_and_per_request_query(fake_methods):
    fake_methods(BrightnessScorer, FakeAgentic)
    config = ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), assess_options={"offset": 1.0})
    with running_service(config) as (url, _):
        files = {"image": ("a.png", png_bytes(), "image/png")}
        plain = httpx.post(f"{url}/v1/score", files=files).json()["results"][0]["score"]
        r = httpx.post(f"{url}/v1/assess", files=files, data={"query": "Is the sky banded?"}).json()["results"][0]
        assert r["score"] == pytest.approx(plain + 1.0)  # the server's assess option
        assert "Is the sky banded?" in r["details"]["explanation"]  # the client's question
    with pytest.raises(ConfigError, match="unknown option"):
        running_service(
            ServiceConfig(method="fake-brightness", allow_methods=("agentic-iqa",), assess_options={"nope": 1})
        ).__enter__()
    with pytest.raises(ConfigError, match="--allow-method agentic-iqa"):
        ServiceConfig(method="fake-brightness", assess_options={"offset": 1.0})


def test_request_options_never_include_server_or_resource_fields():
    from lmmiqa import registry
    from lmmiqa.service.options import SERVER_FIELDS, request_fields, validate_options

    for name in registry.names("method"):
        try:
            cls = registry.resolve("method", name)
        except ImportError:
            continue
        fields = request_fields(cls)
        assert not set(fields) & SERVER_FIELDS, name
        assert not any(part in f for f in fields for part in ("path", "dir", "file", "url")), (name, fields)
    if "agentic-iqa" in registry.names("method"):
        agentic = registry.resolve("method", "agentic-iqa")
        assert validate_options(agentic, {"query": "Is it sharp?"}) == {"query": "Is it sharp?"}
        with pytest.raises(ConfigError, match="max_new_tokens"):
            validate_options(agentic, {"max_new_tokens": 100000})


def test_api_key(fake_methods):
    fake_methods(BrightnessScorer)
    config = ServiceConfig(method="fake-brightness", api_key="s3cret")
    with running_service(config) as (url, _):
        files = {"image": ("a.png", png_bytes(), "image/png")}
        assert httpx.post(f"{url}/v1/score", files=files).status_code == 401
        bad = httpx.post(f"{url}/v1/score", files=files, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(f"{url}/v1/score", files=files, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.post(f"{url}/v1/score", files=files, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{url}/v1/methods").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200 and health.json()["auth_required"] is True
        assert httpx.get(f"{url}/").status_code == 200  # the page itself is public; it asks for the key


def test_binding_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(ConfigError, match="without an API key"):
        check_bind("0.0.0.0", None)


def test_cli_refuses_public_bind_without_key_before_loading(capsys, monkeypatch):
    monkeypatch.delenv("LMMIQA_TEST_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent/model"]) == 2
    assert "without an API key" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--api-key-env", "LMMIQA_TEST_KEY", "--model", "/x"]) == 2
    assert "LMMIQA_TEST_KEY" in capsys.readouterr().err
    assert main(["serve", "--batch-size", "8", "--model", "/x"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_cli_serve_config(monkeypatch):
    from lmmiqa.cli import build_parser
    from lmmiqa.cli.serve import build_config

    monkeypatch.setenv("K", "abc")
    args = build_parser().parse_args(
        ["serve", "--method", "q-align", "--model", "m", "--allow-method", "standard-guided", "--max-batch", "8",
         "--max-wait-ms", "5", "--max-body-mb", "1", "--api-key-env", "K", "--readout", "argmax"]
    )
    cfg = build_config(args)
    assert cfg.method == "q-align" and cfg.options == {"model": "m", "readout": "argmax"}
    assert cfg.allow_methods == ("standard-guided",) and cfg.max_batch == 8 and cfg.max_wait_ms == 5
    assert cfg.max_body_bytes == 1024 * 1024 and cfg.api_key == "abc"


def test_regions_payload_round_trips(fake_methods):
    fake_methods(RegionsScorer)
    with running_service(ServiceConfig(method="fake-regions")) as (url, _):
        r = httpx.post(f"{url}/v1/score", files={"image": ("a.png", png_bytes(60, 40), "image/png")})
        d = r.json()["results"][0]
        assert [reg["bbox"] for reg in d["details"]["regions"]] == [[0, 0, 30, 20], [30, 13, 60, 40]]
