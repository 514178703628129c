"""A webhook receiver on 127.0.0.1, as a user would run one: it verifies each message's signature
with the `standardwebhooks` library, answers as the test planned (200 by default; 500s, a hold past
the sender's timeout, a redirect) and records what arrived. Plus a resolver the tests control."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from agent_service.kit.ssrf import SystemResolver


@dataclass
class Received:
    webhook_id: str
    path: str
    host: str
    headers: dict[str, str]
    body: dict[str, Any]
    verified_by: list[str]  # which of the receiver's secrets verify it (empty: none does)
    answered: str  # what the plan said to do


@dataclass
class Receiver:
    port: int = 0
    secrets: list[str] = field(default_factory=list)
    plan: deque[str] = field(default_factory=deque)  # "ok", "500", "hold", "redirect:<url>"; then "ok"
    received: list[Received] = field(default_factory=list)
    hold_seconds: float = 3.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]

    def verify(self, body: bytes, headers: dict[str, str]) -> list[str]:
        ok: list[str] = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            ok.append(secret)
        return ok


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            action = receiver.plan.popleft() if receiver.plan else "ok"
            receiver.received.append(Received(
                webhook_id=headers.get("webhook-id", ""), path=self.path, host=headers.get("host", ""),
                headers=headers, body=json.loads(raw or b"{}"), verified_by=receiver.verify(raw, headers),
                answered=action))
            if action == "hold":
                time.sleep(receiver.hold_seconds)
            if action.startswith("redirect:"):
                self.send_response(302)
                self.send_header("Location", action.removeprefix("redirect:"))
            else:
                self.send_response(500 if action == "500" else 200)
            body = b'{"ok": true}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the sender gave up (its timeout)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_receiver(*secrets: str) -> Iterator[Receiver]:
    receiver = Receiver(secrets=list(secrets))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class StaticResolver:
    """A resolver answering from a table the test changes as it goes (a DNS answer that changes);
    other names go to the system's resolver (`localhost` resolves as it always does)."""

    answers: dict[str, list[str]] = field(default_factory=dict)

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.answers:
            return list(self.answers[host])
        return await SystemResolver().resolve(host, port)
