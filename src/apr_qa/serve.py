"""`apr-qa serve`: an OpenAI-compatible HTTP server on the built-in runtime (stdlib only).

GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with `stream: true` as
server-sent events in OpenAI's chunk format (`chat.completion.chunk` / `text_completion`), ending with
`data: [DONE]`. One model, one generation at a time (a lock): the runtime is not re-entrant. At most
`max_queue` requests wait for that lock; one more gets 503 at once, type `server_busy`, with a
`Retry-After` (whole seconds: the recent mean generation time times the requests ahead, at least 1). GET
/health and /v1/models never wait. Connections are served by threads, each socket with a timeout, so a
slow or half-sent request only holds its own thread. Errors are OpenAI-shaped (`{"error": {"message",
"type", "param", "code"}}`): bodies over a size limit get 413; a body that is not JSON, or JSON nested
too deeply to parse, 400; sampling parameters out of OpenAI's ranges 400 (`max_tokens` an integer in [1,
limit], `temperature` [0, 2], `top_p` (0, 1] and `top_k` an integer >= 0, both passed to the sampler,
`n` 1, `seed` an integer, `presence_penalty` / `frequency_penalty` [-2, 2], checked but not applied); a
refusal of the runtime (an AprQaError) 400 and any other runtime exception 500, both naming the
exception type (`error.exception`). A client that goes away before taking its whole answer (closes or
resets its connection mid-stream, which stops the generation, or before reading) leaves one line on
stderr, `apr-qa serve: client HOST:PORT went away during /v1/...`, not a traceback. On start it prints
one JSON line {"event": "listening", "url": ..., "model": ...} to stdout, so callers may ask for port 0.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from .errors import AprQaError

MAX_BODY_BYTES = 1 << 20     # a chat prompt far longer than any context we serve still fits
MAX_TOKENS_LIMIT = 1024      # per request; the model's context length may refuse sooner
SOCKET_TIMEOUT_S = 15.0      # per read/write on one connection: a stalled client loses its connection
MAX_QUEUE = 16               # requests that may wait for the generation lock; more get 503 at once
FINISH = {"eos": "stop", "length": "length", "timeout": "length"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 exception: str | None = None, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param
        self.exception = exception  # the runtime exception's type, when one caused this answer
        self.retry_after = retry_after  # seconds, sent as the Retry-After header (503)

    def body(self) -> dict:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}
        if self.exception is not None:  # the certification judges refusals by it (certify.scenarios.judge)
            error["exception"] = self.exception
        return {"error": error}


class ClientGone(Exception):
    """The client closed or stalled its connection mid-stream: generation stops, nothing more is sent."""


def _number(body: dict, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """body[key] (default when absent or null), a number in [lo, hi] ((lo, hi] when lo_open), else a 400."""
    value = body.get(key)
    if value is None:
        return default
    # NaN fails both comparisons; JSON booleans are Python ints, and not numbers here
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (lo < value if lo_open else lo <= value) and value <= hi):
        raise ApiError(400, f"'{key}' must be a number in {'(' if lo_open else '['}{lo}, {hi}]", param=key)
    return value


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    """body[key] (default when absent or null), an integer in [lo, hi] (hi None: no upper bound), else a 400."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ApiError(400, f"'{key}' must be an integer {allowed}", param=key)
    return value


def retry_after_s(mean_generation_s: float | None, ahead: int) -> int:
    """Whole seconds a refused client should wait: the requests ahead of it at the recent mean generation
    time (1 s each before any generation has finished), at least 1."""
    per_request = 1.0 if mean_generation_s is None else mean_generation_s
    return max(1, math.ceil(per_request * ahead))


def default_model_id(model_path: str | Path) -> str:
    """The name clients see: a folder's name, or a file's name without its last suffix."""
    path = Path(model_path)
    return path.name if path.is_dir() else path.stem


@dataclass
class Job:
    """One validated request: what to generate and how to answer."""
    kind: str                       # "chat" | "text"
    prompt: str
    params: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


class Engine:
    """Turns OpenAI request bodies into runtime calls and runtime results into OpenAI responses."""

    def __init__(self, model, model_id: str, timeout_s: float = 120.0, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                 max_queue: int = MAX_QUEUE):
        self.model, self.model_id, self.timeout_s = model, model_id, timeout_s
        self.max_tokens_limit, self.max_queue = max_tokens_limit, max_queue
        self.lock = threading.Lock()      # held by the one generation running
        self._queue_lock = threading.Lock()  # guards `waiting`
        self.waiting = 0                  # requests blocked on `lock`
        self._durations: deque[float] = deque(maxlen=16)  # seconds of the recent finished generations

    # -- validation ---------------------------------------------------------------------------------
    def _params(self, body: dict) -> dict[str, Any]:
        if _integer(body, "n", 1, 1) != 1:
            raise ApiError(400, "only n = 1 is supported", param="n")
        for key in ("presence_penalty", "frequency_penalty"):  # OpenAI's range; the runtime does not apply them
            _number(body, key, 0.0, -2.0, 2.0)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        return {"max_new_tokens": _integer(body, key, 16, 1, self.max_tokens_limit),
                "temperature": float(_number(body, "temperature", 1.0, 0.0, 2.0)),
                "top_p": float(_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)),
                "top_k": _integer(body, "top_k", 0, 0),   # 0: no top-k cut
                "seed": _integer(body, "seed", None, -(1 << 63), (1 << 64) - 1)}  # torch's seed range

    def _job(self, kind: str, prompt: str, body: dict) -> Job:
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise ApiError(404, f"model '{model}' is not served here (this server serves '{self.model_id}')",
                           "model_not_found")
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise ApiError(400, "'stream' must be a boolean")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "'stream_options' must be an object")
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return Job(kind, prompt, self._params(body), bool(stream), bool(options.get("include_usage")),
                   f"{prefix}-{uuid.uuid4().hex}")

    def completion_job(self, body: dict) -> Job:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (or a list of one string)")
        return self._job("text", prompt, body)

    def chat_job(self, body: dict) -> Job:
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} strings")
        job = self._job("chat", "", body)
        try:
            job.prompt = self.model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as exc:
            raise ApiError(400, f"cannot apply the chat template: {exc}") from None
        return job

    # -- generation ---------------------------------------------------------------------------------
    def _acquire(self) -> None:
        """Takes the generation lock, waiting in the bounded queue; a full queue is a 503 at once."""
        if self.lock.acquire(blocking=False):
            return
        with self._queue_lock:
            if self.waiting >= self.max_queue:
                durations = list(self._durations)
                mean = sum(durations) / len(durations) if durations else None
                raise ApiError(503, f"server busy: {self.waiting} requests already wait for the model "
                               f"(max queue {self.max_queue}); retry later", "server_busy",
                               retry_after=retry_after_s(mean, self.waiting + 1))  # + the one running
            self.waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._queue_lock:
                self.waiting -= 1

    def _generate(self, job: Job, on_token: Callable[[int, int], None] | None = None) -> Any:
        if getattr(self.model, "kind", "decoder") != "decoder":
            raise ApiError(400, f"model {self.model_id} is an encoder: it does not generate text")
        self._acquire()
        try:
            started = time.perf_counter()
            g = self.model.generate([job.prompt], timeout_s=self.timeout_s, on_token=on_token, **job.params)[0]
            self._durations.append(time.perf_counter() - started)  # finished ones only: refusals take ~0 s
            return g
        except ClientGone:
            raise
        except AprQaError as exc:  # the runtime's refusal (too long, empty prompt...) is the client's answer
            raise ApiError(400, f"{type(exc).__name__}: {exc}", exception=type(exc).__name__) from None
        except Exception as exc:  # anything else is the server failing, not a refusal
            raise ApiError(500, f"{type(exc).__name__}: {exc}", "server_error",
                           exception=type(exc).__name__) from None
        finally:
            self.lock.release()

    def _usage(self, g) -> dict[str, int]:
        n_prompt, n_new = len(g.prompt_ids), len(g.token_ids)
        return {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}

    def respond(self, job: Job) -> dict:
        g = self._generate(job)
        finish = FINISH.get(g.finish_reason, g.finish_reason)
        if job.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": g.text, "finish_reason": finish, "logprobs": None,
                      "token_ids": list(g.token_ids)}
            obj = "text_completion"
        return {"id": job.id, "object": obj, "created": job.created, "model": self.model_id,
                "choices": [choice], "usage": self._usage(g)}

    def stream(self, job: Job, send: Callable[[dict], None]) -> None:
        """Generates `job`, calling send(chunk) for each text delta, then the finish chunk (and usage)."""
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
            if job.kind == "chat":
                delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": job.id, "object": obj, "created": job.created, "model": self.model_id,
                    "choices": [choice]}

        tokens: list[int] = []
        sent = [""]
        tokenizer = self.model.tokenizer

        def emit_upto(text: str) -> None:
            # a partial UTF-8 sequence decodes to U+FFFD: hold it back until its remaining bytes arrive
            if text.endswith("\ufffd") or not text.startswith(sent[0]) or text == sent[0]:
                return
            send(chunk(text[len(sent[0]):], None))
            sent[0] = text

        def on_token(_row: int, token: int) -> None:
            if not tokens and job.kind == "chat":
                send(chunk(None, None, first=True))
            tokens.append(token)
            emit_upto(tokenizer.decode(tokens))

        g = self._generate(job, on_token)
        if g.text.startswith(sent[0]) and g.text != sent[0]:
            send(chunk(g.text[len(sent[0]):], None))
        send(chunk(None, FINISH.get(g.finish_reason, g.finish_reason)))
        if job.include_usage:
            send({"id": job.id, "object": obj, "created": job.created, "model": self.model_id,
                  "choices": [], "usage": self._usage(g)})

    def models(self) -> dict:
        return {"object": "list",
                "data": [{"id": self.model_id, "object": "model", "created": 0, "owned_by": "apr-qa"}]}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128    # bursts of concurrent clients wait in the backlog rather than retrying SYNs


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0, *, max_body_bytes: int = MAX_BODY_BYTES,
                socket_timeout_s: float = SOCKET_TIMEOUT_S) -> ThreadingHTTPServer:
    routes_get = {"/health": lambda: {"status": "ok", "model": engine.model_id}, "/v1/models": engine.models}
    routes_post = {"/v1/completions": engine.completion_job, "/v1/chat/completions": engine.chat_job}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = socket_timeout_s   # StreamRequestHandler puts it on the socket: every read and write

        _route: str | None = None   # the request being answered on this connection
        _answered: str | None = None  # the last one answered

        def handle_one_request(self) -> None:
            self._route = None
            try:
                super().handle_one_request()
            except (ClientGone, ConnectionError):
                # the client closed or reset its connection (BrokenPipeError, ConnectionResetError...) before
                # taking its whole answer: one line in the log, not a traceback, and this connection ends.
                # A reset can also surface on the read of the next request, after the answer left us.
                self.close_connection = True
                host, port = self.client_address[:2]
                where = (f"during {self._route}" if self._route else
                         f"after {self._answered}" if self._answered else "before sending a request")
                sys.stderr.write(f"apr-qa serve: client {host}:{port} went away {where}\n")
            else:
                self._answered = self._route or self._answered

        def _send(self, status: int, payload: dict, retry_after: int | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, exc: ApiError) -> None:
            self._send(exc.status, exc.body(), exc.retry_after)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._route = self.path.split("?")[0]
            route = routes_get.get(self._route)
            if route is None:
                return self._error(ApiError(404, f"no route GET {self.path}", "not_found"))
            self._send(200, route())

        def _read_body(self) -> dict:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.close_connection = True
                raise ApiError(411, "a Content-Length is required (chunked request bodies are not accepted)")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                raise ApiError(400, "Content-Length is not a non-negative integer")
            if length > max_body_bytes:
                self.close_connection = True   # the unread body must not be parsed as the next request
                raise ApiError(413, f"request body of {length} bytes is over the limit of {max_body_bytes}")
            raw = self.rfile.read(length)
            if len(raw) < length:
                self.close_connection = True
                raise ApiError(400, f"request body ended after {len(raw)} of {length} bytes")
            try:
                body = json.loads(raw or b"null")
            except ValueError as exc:
                raise ApiError(400, f"body is not JSON: {exc}") from None
            except RecursionError:  # e.g. 50,000 nested brackets: the parser refuses past ~1000 levels
                raise ApiError(400, "body JSON is nested too deeply to parse") from None
            if not isinstance(body, dict):
                raise ApiError(400, "body must be a JSON object")
            return body

        def do_POST(self) -> None:  # noqa: N802
            self._route = self.path.split("?")[0]
            route = routes_post.get(self._route)
            try:
                if route is None:
                    self.close_connection = True
                    raise ApiError(404, f"no route POST {self.path}", "not_found")
                job = route(self._read_body())
                if job.stream:
                    self._stream(job)
                else:
                    self._send(200, engine.respond(job))
            except ApiError as exc:
                self._error(exc)
            except TimeoutError:   # the client sent part of the body, then stalled
                self.close_connection = True
                self.log_message("request timed out after %ss", socket_timeout_s)
            # ClientGone and ConnectionError go up to handle_one_request, which logs them

        def _stream(self, job: Job) -> None:
            started = [False]

            def write(data: bytes) -> None:
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                except OSError as exc:   # broken pipe, reset, or a write stalled past the socket timeout
                    raise ClientGone(str(exc)) from None

            def send(chunk: dict) -> None:
                if not started[0]:   # headers wait for the first chunk, so a refusal is still a JSON 400
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Transfer-Encoding", "chunked")
                    started[0] = True
                    try:   # the first write: a client already gone fails here, inside the generation
                        self.end_headers()
                    except OSError as exc:
                        raise ClientGone(str(exc)) from None
                write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

            try:
                engine.stream(job, send)
            except ApiError as exc:
                if not started[0]:
                    raise
                write(b"data: " + json.dumps(exc.body()).encode() + b"\n\n")
            write(b"data: [DONE]\n\n")
            write(b"")   # the last chunk of a chunked body

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"apr-qa serve: {self.address_string()} {fmt % args}\n")

    return Server((host, port), Handler)


def serve(model_path: str, host: str = "127.0.0.1", port: int = 0, device: str = "cpu",
          timeout_s: float = 120.0, weights: str = "packed", model_id: str | None = None,
          max_tokens_limit: int = MAX_TOKENS_LIMIT, max_body_bytes: int = MAX_BODY_BYTES,
          socket_timeout_s: float = SOCKET_TIMEOUT_S, max_queue: int = MAX_QUEUE) -> int:
    if max_queue < 0:
        raise AprQaError(f"--max-queue must be 0 or more, not {max_queue}")
    from .runtime import load_model

    model = load_model(model_path, device=device, weights=weights)
    engine = Engine(model, model_id or default_model_id(model_path), timeout_s, max_tokens_limit, max_queue)
    server = make_server(engine, host, port, max_body_bytes=max_body_bytes, socket_timeout_s=socket_timeout_s)
    h, p = cast(tuple[str, int], server.server_address[:2])  # an AF_INET server
    sys.stdout.write(json.dumps({"event": "listening", "url": f"http://{h}:{p}", "model": engine.model_id}) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
