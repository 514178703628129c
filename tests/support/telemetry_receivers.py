"""Local stand-ins for where errors and traces go: a Sentry ingest endpoint and an OTLP/HTTP collector.

Each is a real HTTP server on 127.0.0.1 (a free port, a background thread) that keeps the raw bytes
it was sent (to search for what must never leave the service) and what they decode to:

    with SentryReceiver() as sentry:        # DSN: sentry.dsn
        ... sentry.events() ...             # the `event` items of every envelope
    with OtlpReceiver() as otlp:            # OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint
        ... otlp.spans() ...                # every span, decoded with opentelemetry-proto
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _decompress(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only if a sender ever picks it (sentry-sdk does when Brotli is installed)

        return bytes(brotli.decompress(body))
    return body


def parse_envelope(raw: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """A Sentry envelope's items: (item header, payload)."""
    _, _, rest = raw.partition(b"\n")
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"]:]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class _Receiver:
    path_suffix = ""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # decompressed, in arrival order
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decompress(raw, self.headers.get("Content-Encoding"))
                ok = self.path.endswith(receiver.path_suffix)
                if ok:
                    with receiver._lock:
                        receiver.bodies.append(body)
                answer = receiver.answer() if ok else b""
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", receiver.content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()

    content_type = "application/json"

    def answer(self) -> bytes:
        return b"{}"

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(self.bodies)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SentryReceiver(_Receiver):
    """Takes envelopes at /api/<project>/envelope/ (what sentry-sdk's HTTP transport posts)."""

    path_suffix = "/envelope/"

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = list(self.bodies)
        return [json.loads(payload) for body in bodies for header, payload in parse_envelope(body)
                if header.get("type") == "event"]


class OtlpReceiver(_Receiver):
    """Takes OTLP/HTTP protobuf exports at /v1/traces."""

    path_suffix = "/v1/traces"
    content_type = "application/x-protobuf"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self) -> bytes:
        return bytes(ExportTraceServiceResponse().SerializeToString())

    def spans(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = list(self.bodies)
        found: list[dict[str, Any]] = []
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append({
                            "name": span.name, "kind": KINDS.get(span.kind, str(span.kind)),
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "attributes": _attributes(span.attributes), "resource": resource,
                            "status": span.status.code,
                        })
        return found


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out
