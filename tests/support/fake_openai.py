"""A small OpenAI-compatible Chat Completions server for tests: real HTTP, real SSE framing.

    with start_fake_openai() as fake:
        fake.script(error(500), reply("hi"))     # the next two answers, in order
        ... SimpleLLMAgent(load_settings({}, env_file=None, llm_base_url=fake.base_url), client) ...
        fake.requests[0].headers["authorization"]

It serves `POST /v1/chat/completions` on 127.0.0.1 (a free port) from a background thread.
With nothing scripted it answers normally, echoing the last user message as "You said: <msg>".
Streams are `text/event-stream` over chunked HTTP/1.1: `data: {...}\\n\\n` events, a usage
chunk when `stream_options.include_usage` is set, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Response:
    """One scripted answer. Build with `reply`, `error`, `slow` or `slow_stream`."""

    status: int = 200
    content: str | None = None  # None: "You said: <last user message>"
    model: str | None = None  # None: the requested model
    usage: bool = True  # report token usage (always for non-stream; stream only if include_usage)
    delay: float = 0.0  # seconds to wait before sending anything
    chunk_delay: float = 0.0  # seconds to wait between stream events after the first content chunk
    headers: dict[str, str] = field(default_factory=dict)
    error_after: int | None = None  # stream: send this many content chunks, then an error event and [DONE]


def reply(
    content: str | None = None, *, model: str | None = None, usage: bool = True, delay: float = 0.0,
    chunk_delay: float = 0.0,
) -> Response:
    return Response(content=content, model=model, usage=usage, delay=delay, chunk_delay=chunk_delay)


def error(status: int, *, retry_after: str | float | None = None, delay: float = 0.0) -> Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Response(status=status, headers=headers, delay=delay)


def slow(seconds: float, content: str | None = None) -> Response:
    """Wait `seconds` before answering at all."""
    return Response(content=content, delay=seconds)


def slow_stream(chunk_delay: float, content: str | None = None) -> Response:
    """A stream that sends its first content chunk at once, then one event every `chunk_delay` s."""
    return Response(content=content, chunk_delay=chunk_delay)


def stream_error(after: int = 1, content: str | None = None) -> Response:
    """A stream that fails mid-way: `after` content chunks, then `data: {"error": {...}}` and `[DONE]`."""
    return Response(content=content, error_after=after)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the decoded JSON body, or None if it was not JSON

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


def _words(text: str) -> list[str]:
    """Split keeping the whitespace, so the pieces join back to `text`."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _count(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Response] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()

    def script(self, *responses: Response) -> FakeOpenAI:
        """Queue the next answers, in order; once they are used up, answers are normal again."""
        with self._lock:
            self._queue.extend(responses)
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()  # wakes handlers sleeping in a delay
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- used by the handler thread ----------------------------------------------------
    def _take(self, request: RecordedRequest) -> Response:
        with self._lock:
            self.requests.append(request)
            return self._queue.popleft() if self._queue else Response()

    def _sleep(self, seconds: float) -> bool:
        """Sleep; True if the server is closing and the handler should give up."""
        return seconds > 0 and self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client closing its keep-alive connection, or giving up mid-answer
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        request = RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.server.fake
        if self.path != PATH:
            with fake._lock:
                fake.requests.append(request)
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        response = fake._take(request)
        try:
            if fake._sleep(response.delay):
                self.close_connection = True
                return
            if response.status != 200:
                self._send_error(response)
            elif not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                self._send_json(400, {"error": {"message": "messages is required", "type": "invalid_request_error"}})
            elif body.get("stream"):
                self._send_stream(body, response)
            else:
                self._send_completion(body, response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, response: Response) -> None:
        kind = "rate_limit_error" if response.status == 429 else (
            "server_error" if response.status >= 500 else "invalid_request_error"
        )
        payload = {"error": {"message": f"scripted {response.status}", "type": kind, "code": None}}
        self._send_json(response.status, payload, response.headers)

    @staticmethod
    def _answer(body: dict[str, Any], response: Response) -> tuple[str, str, dict[str, int]]:
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        text = response.content
        if text is None:
            text = f"You said: {users[-1].get('content', '') if users else ''}"
        prompt = sum(_count(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict))
        completion = _count(text)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return text, response.model or str(body.get("model", "fake-model")), usage

    def _send_completion(self, body: dict[str, Any], response: Response) -> None:
        text, model, usage = self._answer(body, response)
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        if response.usage:
            payload["usage"] = usage
        self._send_json(200, payload, response.headers)

    def _send_stream(self, body: dict[str, Any], response: Response) -> None:
        text, model, usage = self._answer(body, response)
        include_usage = response.usage and bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()

        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events: list[Any] = [chunk({"role": "assistant", "content": ""})]
        pieces = _words(text)
        if response.error_after is not None:
            events += [chunk({"content": piece}) for piece in pieces[: response.error_after]]
            events.append({"error": {"message": "scripted failure mid-stream", "type": "server_error", "code": None}})
        else:
            events += [chunk({"content": piece}) for piece in pieces]
            events.append(chunk({}, "stop"))
            if include_usage:
                events.append({**base, "choices": [], "usage": usage})
        events.append("[DONE]")
        for i, event in enumerate(events):
            if i >= 2 and self.server.fake._sleep(response.chunk_delay):
                self.close_connection = True
                return
            data = event if isinstance(event, str) else json.dumps(event)
            self._write_chunk(f"data: {data}\n\n".encode())
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def start_fake_openai() -> FakeOpenAI:
    """Start a server; use it as a context manager or call `.close()`."""
    return FakeOpenAI()


def iter_fake_openai() -> Iterator[FakeOpenAI]:
    """For a pytest fixture: `yield from iter_fake_openai()`."""
    with start_fake_openai() as fake:
        yield fake
