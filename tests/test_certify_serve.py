"""The OpenAI-compatible server on a real (tiny) model; and JUnit counts on hand-made records."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from apr_qa.certify.junit import build
from apr_qa.evidence import Evidence


@pytest.fixture(scope="module")
def server(tiny_llama):
    from apr_qa.certify.serve import Engine, make_server
    from apr_qa.runtime import load_model

    model = load_model(tiny_llama)
    srv = make_server(Engine(model, "tiny"), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield model, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


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
    ("/v1/completions", {"prompt": "x", "stream": True}, 400, "stream"),
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
