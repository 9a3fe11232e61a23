"""`apr-qa serve`: an OpenAI-compatible HTTP server on the built-in runtime (stdlib only).

GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (no streaming).
One model, one generation at a time (a lock): the runtime is not re-entrant. On start it prints
one JSON line {"event": "listening", "url": ...} to stdout, so callers may ask for port 0.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20
FINISH = {"eos": "stop", "length": "length", "timeout": "length"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be a number in [{lo}, {hi}]")
    return value


class Engine:
    """Turns OpenAI request bodies into runtime calls and runtime results into OpenAI responses."""

    def __init__(self, model, model_id: str, timeout_s: float = 120.0):
        self.model, self.model_id, self.timeout_s = model, model_id, timeout_s
        self.lock = threading.Lock()

    def _params(self, body: dict) -> dict[str, Any]:
        if body.get("stream"):
            raise ApiError(400, "stream is not supported")
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n = 1 is supported")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ApiError(400, "'seed' must be an integer")
        return {"max_new_tokens": int(_number(body, "max_tokens", 16, 1, 4096)),
                "temperature": float(_number(body, "temperature", 1.0, 0.0, 2.0)), "seed": seed}

    def _generate(self, prompt: str, params: dict) -> Any:
        if getattr(self.model, "kind", "decoder") != "decoder":
            raise ApiError(400, f"model {self.model_id} is an encoder: it does not generate text")
        with self.lock:
            try:
                return self.model.generate([prompt], timeout_s=self.timeout_s, **params)[0]
            except Exception as exc:  # the runtime's refusal (too long, empty prompt...) is the client's answer
                raise ApiError(400, f"{type(exc).__name__}: {exc}") from None

    def _usage(self, prompt: str, g) -> dict[str, int]:
        n_prompt = len(self.model.tokenizer.encode(prompt))
        return {"prompt_tokens": n_prompt, "completion_tokens": len(g.token_ids),
                "total_tokens": n_prompt + len(g.token_ids)}

    def completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (or a list of one string)")
        g = self._generate(prompt, self._params(body))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_id,
                "choices": [{"index": 0, "text": g.text, "finish_reason": FINISH.get(g.finish_reason, g.finish_reason),
                             "logprobs": None, "token_ids": list(g.token_ids)}],
                "usage": self._usage(prompt, g)}

    def chat(self, body: dict) -> dict:
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} strings")
        params = self._params(body)
        try:
            prompt = self.model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as exc:
            raise ApiError(400, f"cannot apply the chat template: {exc}") from None
        g = self._generate(prompt, params)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": FINISH.get(g.finish_reason, g.finish_reason)}],
                "usage": self._usage(prompt, g)}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0, "owned_by": "apr-qa"}]}


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    routes_get = {"/health": lambda: {"status": "ok", "model": engine.model_id}, "/v1/models": engine.models}
    routes_post = {"/v1/completions": engine.completions, "/v1/chat/completions": engine.chat}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, exc: ApiError) -> None:
            self._send(exc.status, {"error": {"message": str(exc), "type": exc.kind, "code": exc.status}})

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            route = routes_get.get(self.path.split("?")[0])
            if route is None:
                return self._error(ApiError(404, f"no route GET {self.path}", "not_found"))
            self._send(200, route())

        def do_POST(self) -> None:  # noqa: N802
            route = routes_post.get(self.path.split("?")[0])
            length = int(self.headers.get("Content-Length") or 0)
            try:
                if route is None:
                    raise ApiError(404, f"no route POST {self.path}", "not_found")
                if length > MAX_BODY:
                    raise ApiError(413, f"request body over {MAX_BODY} bytes")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise ApiError(400, f"body is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise ApiError(400, "body must be a JSON object")
                self._send(200, route(body))
            except ApiError as exc:
                self._error(exc)

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"apr-qa serve: {self.address_string()} {fmt % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def serve(model_path: str, host: str = "127.0.0.1", port: int = 0, device: str = "cpu",
          timeout_s: float = 120.0) -> int:
    from ..runtime import load_model

    model = load_model(model_path, device=device)
    server = make_server(Engine(model, str(model_path), timeout_s), host, port)
    h, p = server.server_address[:2]
    sys.stdout.write(json.dumps({"event": "listening", "url": f"http://{h}:{p}"}) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
