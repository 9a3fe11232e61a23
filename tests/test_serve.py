"""The OpenAI-compatible server on a real (tiny) model, driven by raw HTTP and by the official `openai`
client (streaming included); and JUnit counts on hand-made records."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

from apr_qa.certify.junit import build
from apr_qa.evidence import Evidence


@pytest.fixture(scope="module")
def server(tiny_llama):
    from apr_qa.serve import Engine, make_server
    from apr_qa.runtime import load_model

    model = load_model(tiny_llama)
    srv = make_server(Engine(model, "tiny", max_tokens_limit=64), "127.0.0.1", 0,
                      max_body_bytes=4096, socket_timeout_s=SOCKET_TIMEOUT_S)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield model, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


SOCKET_TIMEOUT_S = 1.0


def call(url: str, body: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_models(server):
    _, base = server
    assert call(f"{base}/health") == (200, {"status": "ok", "model": "tiny"})
    status, body = call(f"{base}/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny" and body["object"] == "list"


def test_completion_equals_direct_greedy_generation(server):
    model, base = server
    status, body = call(f"{base}/v1/completions",
                        {"model": "tiny", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion"
    direct = model.generate(["The capital of France is"], max_new_tokens=5, temperature=0.0)[0]
    choice = body["choices"][0]
    assert choice["text"] == direct.text and choice["token_ids"] == direct.token_ids
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] == len(direct.token_ids)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + len(direct.token_ids)


def test_chat_completion(server):
    model, base = server
    messages = [{"role": "user", "content": "Hello!"}]
    status, body = call(f"{base}/v1/chat/completions", {"messages": messages, "max_tokens": 4, "temperature": 0})
    assert status == 200, body
    prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    direct = model.generate([prompt], max_new_tokens=4, temperature=0.0)[0]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": direct.text}


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "not served"),
    ("/v1/completions", {"prompt": "x" * 5000}, 413, "over the limit"),
    ("/v1/completions", {"prompt": "x", "stream": True, "max_tokens": 60000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": 9}, 400, "temperature"),
    ("/v1/completions", {"prompt": ""}, 400, "token"),   # the runtime's own refusal, passed on
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/nothing", {}, 404, "no route"),
])
def test_errors_are_openai_shaped(server, path, body, status, fragment):
    _, base = server
    got, payload = call(base + path, body)
    assert got == status and fragment in payload["error"]["message"]


def test_bad_json_body(server):
    _, base = server
    got, payload = call(f"{base}/v1/completions", raw=b"{not json")
    assert got == 400 and "not JSON" in payload["error"]["message"]


def test_junit_counts():
    recs = [
        Evidence("C5", "magic", True, "41505200", "41505200", "halt"),
        Evidence("C6", "params", False, 10, 12, "halt", "source 12, .apr 10"),
        Evidence("T2", "latency", False, 9.0, 5.0, "warn", "slow"),
        Evidence("QUAL:s1", "run", False, "crash", "ok", "fail", "", {"outcome": "crash", "category": "QUAL"}),
        Evidence("QUAL:s2", "run", False, "timeout", "ok", "fail", "", {"outcome": "timeout", "category": "QUAL"}),
        Evidence("QUAL:s3", "run", False, "skip", "ok", "fail", "", {"outcome": "skip", "reason": "no CUDA"}),
    ]
    root = ET.fromstring(ET.tostring(build([("m", "validate", recs)])))
    assert [root.get(k) for k in ("tests", "failures", "errors", "skipped")] == ["6", "1", "2", "1"]
    failure = root.find(".//failure")
    assert failure.get("message") == "C6: measured 10, threshold 12 - source 12, .apr 10"
    assert "slow" in root.find(".//system-out").text
    assert root.find(".//skipped").get("message") == "no CUDA"


# -- the official openai client against the real server ------------------------------------------------

@pytest.fixture(scope="module")
def client(server):
    import openai  # the test extra installs it
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_completion_and_chat(server, client):
    model, _ = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    got = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, temperature=0)
    direct = model.generate(["Once upon"], max_new_tokens=6, temperature=0.0)[0]
    assert got.choices[0].text == direct.text and got.usage.completion_tokens == len(direct.token_ids)
    messages = [{"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert chat.choices[0].message.content == model.generate([prompt], max_new_tokens=5, temperature=0.0)[0].text


def test_openai_client_streams_chat_deltas_that_add_up(server, client):
    model, _ = server
    messages = [{"role": "user", "content": "Tell me a story"}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    direct = model.generate([prompt], max_new_tokens=12, temperature=0.0)[0]
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == direct.text
    assert len(with_choices) >= 3   # role chunk, at least one delta, finish chunk: really incremental
    assert [c.choices[0].finish_reason for c in with_choices][-1] in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].usage.completion_tokens == len(direct.token_ids) and not chunks[-1].choices


def test_openai_client_streams_text_completion(server, client):
    model, _ = server
    chunks = list(client.completions.create(model="tiny", prompt="The sea", max_tokens=8, temperature=0,
                                            stream=True))
    direct = model.generate(["The sea"], max_new_tokens=8, temperature=0.0)[0]
    assert "".join(c.choices[0].text for c in chunks) == direct.text
    assert chunks[-1].choices[0].finish_reason == {"eos": "stop"}.get(direct.finish_reason, "length")


def test_openai_client_sees_openai_errors(client):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=100000, stream=True)


def test_raw_stream_is_sse_ending_with_done(server):
    _, base = server
    req = urllib.request.Request(f"{base}/v1/completions", json.dumps(
        {"prompt": "abc", "max_tokens": 3, "stream": True, "temperature": 0}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = [line for line in resp.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def _raw_connection(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def test_half_sent_and_silent_requests_time_out_without_blocking_others(server):
    _, base = server
    half = _raw_connection(base)
    half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
    silent = _raw_connection(base)   # connects, never sends a byte
    started = time.perf_counter()
    assert call(f"{base}/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
    assert time.perf_counter() - started < SOCKET_TIMEOUT_S   # answered while both others still hang
    for sock in (half, silent):
        assert sock.recv(4096) == b""   # closed by the server once its socket timeout passed
        sock.close()
    assert time.perf_counter() - started < 10 * SOCKET_TIMEOUT_S + 5


def test_client_that_leaves_mid_stream_does_not_wedge_the_server(server):
    _, base = server
    sock = _raw_connection(base)
    body = json.dumps({"prompt": "go", "max_tokens": 60, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    sock.recv(64)
    sock.close()
    assert call(f"{base}/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_bounded_loopback_load_has_no_errors(server, client):
    """50 requests, 8 at once, 2 tokens each, through the openai client: every one answered."""
    def one(i: int) -> str:
        if i % 2:
            return client.completions.create(model="tiny", prompt=f"n{i}", max_tokens=2).choices[0].finish_reason
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"n{i}"}],
                                                max_tokens=2, stream=True)
        return [c.choices[0].finish_reason for c in stream if c.choices][-1]

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(one, range(50)))
    assert len(reasons) == 50 and set(reasons) <= {"stop", "length"}


def test_cli_serves_under_the_file_stem_and_a_given_id(tiny_llama, tmp_path):
    from apr_qa.serve import default_model_id

    assert default_model_id(tiny_llama) == tiny_llama.name
    assert default_model_id(tmp_path / "smollm2-135m.q4_k.apr") == "smollm2-135m.q4_k"
    proc = subprocess.Popen([sys.executable, "-m", "apr_qa.cli", "serve", str(tiny_llama), "--port", "0",
                             "--model-id", "org/tiny-chat"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "listening" and line["model"] == "org/tiny-chat"
        assert call(f"{line['url']}/v1/models")[1]["data"][0]["id"] == "org/tiny-chat"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.real_model
def test_openai_client_streams_from_smollm2(smollm2_gguf):
    """The real shipped model (Q4_1 GGUF, packed weights) behind the server: streamed chat equals direct."""
    import openai

    from apr_qa.serve import Engine, default_model_id, make_server
    from apr_qa.runtime import load_model

    model = load_model(smollm2_gguf)
    srv = make_server(Engine(model, default_model_id(smollm2_gguf)), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", api_key="unused",
                               max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        stream = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages,
                                                max_tokens=12, temperature=0, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        assert text == model.generate([prompt], max_new_tokens=12, temperature=0.0)[0].text
        assert "Paris" in text
    finally:
        srv.shutdown()
        srv.server_close()


# -- hardening: a bounded queue, parameter ranges, deep JSON, clients that leave -------------------------

class GatedModel:
    """The real tiny model behind a gate: each generation waits there until the test opens it, so a test
    decides how long a request holds the generation lock. The server and the runtime are the real ones."""

    def __init__(self, model):
        self._model = model
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)   # released as each generation reaches the gate

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        self.entered.release()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return self._model.generate(*args, **kwargs)


@pytest.fixture(scope="module")
def gated_server(tiny_llama):
    """A server with --max-queue 1 and the default body limit (1 MiB) on a gated tiny model."""
    from apr_qa.serve import Engine, make_server
    from apr_qa.runtime import load_model

    model = GatedModel(load_model(tiny_llama))
    engine = Engine(model, "tiny", max_tokens_limit=64, max_queue=1)
    srv = make_server(engine, "127.0.0.1", 0, socket_timeout_s=SOCKET_TIMEOUT_S)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield engine, model, f"http://127.0.0.1:{srv.server_address[1]}"
    model.gate.set()
    srv.shutdown()
    srv.server_close()


def request(url: str, body: dict | None = None):
    """(status, headers, JSON body) of one request; error statuses included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after_and_the_server_recovers(gated_server):
    engine, model, base = gated_server
    url = f"{base}/v1/completions"
    body = {"prompt": "slow", "max_tokens": 4, "temperature": 0}
    model.entered = threading.Semaphore(0)
    model.gate.clear()
    pool = ThreadPoolExecutor(8)
    try:
        running = pool.submit(request, url, body)
        assert model.entered.acquire(timeout=60)   # it holds the generation lock, waiting at the gate
        queued = pool.submit(request, f"{base}/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        _wait_for(lambda: engine.waiting == 1)       # the queue (max 1) is full
        extra = [pool.submit(request, url, {**body, "stream": i % 2 == 0}) for i in range(4)]  # all at once
        for future in extra:
            status, headers, payload = future.result(timeout=30)   # at once: admitted ones would hang here
            assert status == 503, payload
            assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) >= 1
            error = payload["error"]
            assert error["type"] == "server_busy" and error["code"] == 503 and "busy" in error["message"]
        assert request(f"{base}/health")[0] == 200          # never queued
        assert request(f"{base}/v1/models")[0] == 200
    finally:
        model.gate.set()
    first, second = running.result(timeout=60), queued.result(timeout=60)
    pool.shutdown()
    assert first[0] == 200 and first[2]["choices"][0]["finish_reason"] == "length"
    assert second[0] == 200 and second[2]["object"] == "chat.completion"
    assert engine.waiting == 0
    assert request(url, body)[0] == 200   # keeps serving


def test_retry_after_is_the_recent_mean_times_the_requests_ahead():
    from apr_qa.serve import retry_after_s

    assert retry_after_s(None, 3) == 3        # before any generation finished: 1 s each
    assert retry_after_s(2.5, 3) == 8         # rounded up to whole seconds
    assert retry_after_s(0.01, 2) == 1        # at least 1


@pytest.mark.parametrize("params", [
    {"top_p": 1.5}, {"top_p": 0}, {"top_p": -1}, {"top_p": "0.5"},
    {"temperature": -0.1}, {"temperature": 2.5}, {"temperature": True},
    {"top_k": -1}, {"top_k": 2.5}, {"top_k": True},
    {"max_tokens": 2.5}, {"max_tokens": "4"}, {"max_tokens": -3}, {"max_completion_tokens": 0},
    {"n": 2}, {"n": 0}, {"n": 1.5},
    {"seed": "7"}, {"seed": 1.5},
    {"presence_penalty": 2.5}, {"frequency_penalty": -3},
], ids=lambda p: "-".join(f"{k}={v!r}" for k, v in p.items()))
def test_sampling_parameters_out_of_range_are_400(server, params):
    _, base = server
    (key,) = params
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        status, payload = call(base + path, {**body, "max_tokens": 2, **params})
        assert status == 400, payload
        error = payload["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == key
        assert f"'{key}'" in error["message"] or (key == "n" and "n = 1" in error["message"])


def test_nan_top_p_is_400(server):
    _, base = server
    status, payload = call(f"{base}/v1/completions", raw=b'{"prompt": "x", "top_p": NaN}')
    assert status == 400 and "'top_p' must be a number in (0.0, 1.0]" in payload["error"]["message"]


def test_sampling_parameters_at_their_bounds_are_accepted(server):
    _, base = server
    for params in ({"top_p": 1, "temperature": 2, "top_k": 0, "presence_penalty": -2, "frequency_penalty": 2,
                    "n": 1, "seed": 3},
                   {"top_p": 1e-9, "temperature": 0, "top_k": 50, "max_tokens": 1},
                   {"top_p": None, "top_k": None, "n": None, "seed": None, "temperature": None}):
        status, payload = call(f"{base}/v1/completions", {"prompt": "x", "max_tokens": 2, **params})
        assert status == 200, (params, payload)


def test_top_k_and_top_p_reach_the_sampler(server):
    model, base = server
    greedy = model.generate(["Once upon"], max_new_tokens=6, temperature=0.0)[0].token_ids

    def sampled(**cut) -> list[int]:
        status, body = call(f"{base}/v1/completions",
                            {"prompt": "Once upon", "max_tokens": 6, "temperature": 2, "seed": 0, **cut})
        assert status == 200, body
        return body["choices"][0]["token_ids"]

    assert sampled() != greedy   # hot sampling wanders (seeded: deterministic)...
    assert sampled(top_k=1) == greedy == sampled(top_p=1e-9)   # ...unless only the top token may be drawn


@pytest.mark.parametrize("nested", [b"[" * 50_000 + b"]" * 50_000,
                                    b'{"a":' * 50_000 + b"1" + b"}" * 50_000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_a_400_not_a_dropped_connection(gated_server, nested):
    _, _, base = gated_server
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, payload = call(base + path, raw=nested)
        assert status == 400 and "nested too deeply" in payload["error"]["message"]
    assert call(f"{base}/health")[0] == 200


@pytest.fixture(scope="module")
def cli_server(tiny_llama, tmp_path_factory):
    """`apr-qa serve` in a subprocess, its stderr (the server's log) in a file the tests read."""
    log = tmp_path_factory.mktemp("serve-log") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "apr_qa.cli", "serve", str(tiny_llama), "--port", "0",
                                 "--max-queue", "4"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = json.loads(proc.stdout.readline())
        yield line["url"], log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def _gone_lines(log) -> list[str]:
    return [line for line in log.read_text().splitlines() if " went away " in line]


@pytest.mark.parametrize("path,body,how", [
    # mid-stream: reads the first bytes, then closes with the rest unread (the kernel resets the connection)
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go"}], "stream": True}, "mid-stream"),
    ("/v1/completions", {"prompt": "go", "stream": True}, "mid-stream"),
    # before reading the answer: resets the connection right after sending the request
    ("/v1/completions", {"prompt": "go"}, "reset"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go"}]}, "reset"),
    ("/v1/completions", {"prompt": "go", "stream": True}, "reset"),
])
def test_a_client_that_leaves_early_leaves_one_log_line(cli_server, path, body, how):
    base, log = cli_server
    before = len(_gone_lines(log))
    data = json.dumps({**body, "max_tokens": 64, "temperature": 0}).encode()
    sock = _raw_connection(base)
    port = sock.getsockname()[1]
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), len(data), data))
    if how == "mid-stream":
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    sock.close()
    _wait_for(lambda: len(_gone_lines(log)) > before)
    assert call(f"{base}/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200   # still serving
    lines = _gone_lines(log)[before:]
    assert len(lines) == 1, lines   # exactly one, even once the server has answered another request
    assert re.fullmatch(rf"apr-qa serve: client 127\.0\.0\.1:{port} went away (during|after) {re.escape(path)}",
                        lines[0]), lines[0]
    assert "Traceback" not in log.read_text() and '" 500 ' not in log.read_text()   # no server error either


def test_cli_refuses_a_negative_max_queue(tiny_llama, capsys):
    from apr_qa.cli import main

    assert main(["serve", str(tiny_llama), "--max-queue", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "apr-qa: error: --max-queue must be 0 or more, not -1"
