"""The web process's own HTTP bounds (kit/http_guard.py) and whose X-Forwarded-For it believes
(kit/client_ip.py), against a real `python -m agent_service web` process over raw sockets: header
size (431), header deadline (408, slowloris), concurrent connections (503), and a forged
X-Forwarded-For that must neither dodge the per-IP login limit nor reach the audit log."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from agent_service.cli.embedded import free_port
from tests.support.processes import Process, bootstrap_user
from tests.support.waiting import wait_http_ok, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.sqlite_only]  # child processes; nothing here is about SQL

ADMIN = "guard-admin@example.com"
GET = b"GET /health/live HTTP/1.1\r\nHost: guard\r\n\r\n"


@dataclass
class Web:
    port: int
    admin: dict[str, str]
    process: Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def web(env: dict[str, str], spawn: Callable[..., Process]) -> Callable[..., Web]:
    """Start the web process with these settings (no worker: nothing here runs a job)."""

    def start(**settings: str) -> Web:
        key = bootstrap_user(env, ADMIN, admin=True)
        port = free_port()
        proc = spawn("web", env, PORT=str(port), **settings)
        wait_http_ok(f"http://127.0.0.1:{port}/health/live", on_fail=lambda: proc.output()[-3000:])
        return Web(port, {"X-API-Key": key}, proc)

    return start


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes its side (the socket's timeout bounds it)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One response (head and Content-Length body) from a connection kept open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def statuses(data: bytes) -> list[int]:
    return [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:]]


def header_of(size: int) -> bytes:
    return b"X-Big: " + b"a" * size + b"\r\n"


# --- header size ------------------------------------------------------------------------------

def test_oversized_headers_get_431_and_normal_requests_still_work(web: Callable[..., Web]) -> None:
    svc = web(HTTP_MAX_HEADER_BYTES="8192")
    with connect(svc.port) as s:  # 64 KB of one header: refused while it streams in, never buffered whole
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: guard\r\n" + header_of(64 * 1024) + b"\r\n")
        answer = read_to_eof(s)
    assert statuses(answer) == [431] and b"application/problem+json" in answer, answer[:300]
    assert b'"code":"header_fields_too_large"' in answer
    with connect(svc.port) as s:  # headers that never end are refused as soon as they pass the limit
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: guard\r\n" + header_of(9000))
        assert statuses(read_to_eof(s)) == [431]
    with connect(svc.port) as s:  # many small headers count as much as one big one
        s.sendall(b"GET /health/live HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1500)) + b"\r\n")
        assert statuses(read_to_eof(s)) == [431]
    with connect(svc.port) as s:  # within the limit: served, and the connection kept alive for more
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: guard\r\n" + header_of(7000) + b"\r\n")
        assert statuses(read_response(s)) == [200]
        s.sendall(GET)
        assert statuses(read_response(s)) == [200]
    with connect(svc.port) as s:  # a big body in the same read as small headers is no header
        body = b'{"email": "nobody@example.com", "password": "%s"}' % (b"x" * 30_000)
        s.sendall(b"POST /api/v1/auth/token HTTP/1.1\r\nHost: guard\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert statuses(read_response(s))[0] in (401, 413, 422)
    assert httpx.get(f"{svc.base}/health/live", timeout=5).status_code == 200


def test_an_oversized_pipelined_request_is_answered_in_turn(web: Callable[..., Web]) -> None:
    svc = web(HTTP_MAX_HEADER_BYTES="4096")
    with connect(svc.port) as s:  # complete (so parsed at once) but too large, behind a good one
        s.sendall(GET + b"GET /health/live HTTP/1.1\r\nHost: guard\r\n" + header_of(6000) + b"\r\n")
        assert statuses(read_to_eof(s)) == [200, 431]


# --- header deadline --------------------------------------------------------------------------

class Slowloris:
    """Connections that send a request line and then one header byte at a time, forever; each
    records when the server closed it and what it answered."""

    def __init__(self, port: int, count: int, *, idle: int = 0) -> None:
        self.started = time.monotonic()
        self.socks = [connect(port) for _ in range(count + idle)]
        self.closed_after: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(len(self.socks))]
        self._threads.append(threading.Thread(target=self._dribble, args=(self.socks[:count],), daemon=True))
        for t in self._threads:
            t.start()

    def _read(self, i: int) -> None:
        try:
            self.answers[i] = read_to_eof(self.socks[i])
        except OSError as exc:
            self.answers[i] = repr(exc).encode()
        self.closed_after[i] = time.monotonic() - self.started

    def _dribble(self, socks: list[socket.socket]) -> None:
        for s in socks:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: guard\r\nX-Slow: ")
        live = list(socks)
        while live and not self._stop.wait(0.05):  # the attack's pace, not a wait for the server
            for s in list(live):
                try:
                    s.send(b"a")
                except OSError:
                    live.remove(s)

    def close(self) -> None:
        self._stop.set()
        for s in self.socks:
            s.close()


@pytest.fixture
def slowloris() -> Iterator[Callable[..., Slowloris]]:
    made: list[Slowloris] = []

    def start(port: int, count: int, *, idle: int = 0) -> Slowloris:
        made.append(Slowloris(port, count, idle=idle))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_slowloris_connections_are_cut_off_while_others_are_served(
        web: Callable[..., Web], slowloris: Callable[..., Slowloris]) -> None:
    timeout = 1.0
    svc = web(HTTP_HEADER_TIMEOUT=str(timeout))
    attack = slowloris(svc.port, 30, idle=5)  # 30 dribbling, 5 that never send a byte
    with httpx.Client(base_url=svc.base, timeout=5) as normal:  # served meanwhile
        assert normal.get("/health/live").status_code == 200
        assert normal.get("/health/live").status_code == 200
    wait_until(lambda: len(attack.closed_after) == 35, timeout=timeout + 6,
               message=lambda: f"still open: {35 - len(attack.closed_after)}")
    assert max(attack.closed_after.values()) < timeout + 4, attack.closed_after
    for i in range(30):  # a started request gets its 408; an empty connection is just closed
        assert statuses(attack.answers[i]) == [408], attack.answers[i][:200]
    assert all(attack.answers[i] == b"" for i in range(30, 35))
    assert httpx.get(f"{svc.base}/health/live", timeout=5).status_code == 200


def test_complete_headers_stop_the_clock(web: Callable[..., Web], slowloris: Callable[..., Slowloris]) -> None:
    """The deadline is for the headers only: a body (or a response) may take longer, and an idle
    keep-alive connection is the keep-alive timeout's business."""
    svc = web(HTTP_HEADER_TIMEOUT="1", HTTP_KEEPALIVE_TIMEOUT="30")
    body = b'{"email": "nobody@example.com", "password": "wrong"}'
    with connect(svc.port) as s:
        s.sendall(b"POST /api/v1/auth/token HTTP/1.1\r\nHost: guard\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        attack = slowloris(svc.port, 1)  # opened after our headers were sent: its 408 proves ours is past
        wait_until(lambda: attack.closed_after, timeout=8)
        s.sendall(body)
        assert statuses(read_response(s)) == [401]
        later = slowloris(svc.port, 1)  # idle on keep-alive past another header deadline: still usable
        wait_until(lambda: later.closed_after, timeout=8)
        s.sendall(GET)
        assert statuses(read_response(s)) == [200]


# --- concurrent connections -------------------------------------------------------------------

def test_connections_beyond_the_limit_get_503(web: Callable[..., Web]) -> None:
    limit = 3
    svc = web(HTTP_MAX_CONNECTIONS=str(limit), HTTP_KEEPALIVE_TIMEOUT="60", HTTP_HEADER_TIMEOUT="60")
    held: list[socket.socket] = []

    def hold_one() -> bool:  # retried: the readiness probe's connection may not be gone yet
        s = connect(svc.port)
        s.sendall(GET)
        if statuses(read_response(s)) == [200]:
            held.append(s)
            return True
        s.close()
        return False

    try:
        for _ in range(limit):
            wait_until(hold_one, timeout=10)
        with connect(svc.port) as extra:
            extra.sendall(GET)
            answer = read_to_eof(extra)
        assert statuses(answer) == [503], answer[:200]
        held[0].sendall(GET)  # the ones within the limit go on being served
        assert statuses(read_response(held[0])) == [200]
        held.pop().close()  # a freed place is taken again
        wait_until(hold_one, timeout=10)
    finally:
        for s in held:
            s.close()


# --- X-Forwarded-For ----------------------------------------------------------------------------

def failed_logins(svc: Web, forwarded: list[str]) -> list[int]:
    with httpx.Client(base_url=svc.base, timeout=10) as c:
        return [c.post("/api/v1/auth/token", json={"email": "victim@example.com", "password": "wrong"},
                       headers={"X-Forwarded-For": xff}).status_code for xff in forwarded]


def audited_ips(svc: Web) -> set[str]:
    """The client addresses of the FAILED_AUTH audit rows. The writer flushes its buffer in order,
    so once a later marker row is readable every failure before it is too."""

    def rows(**query: str) -> list[dict[str, str]]:
        r = httpx.get(f"{svc.base}/api/v1/audit-logs", params={"limit": "100", **query}, headers=svc.admin,
                      timeout=10)
        assert r.status_code == 200, r.text
        items: list[dict[str, str]] = r.json()["items"]
        return items

    marker = f"guard-{uuid.uuid4().hex[:12]}"
    created = httpx.post(f"{svc.base}/api/v1/api-keys", json={"name": "marker", "scopes": ["audit:read"]},
                         headers={**svc.admin, "X-Request-ID": marker}, timeout=10)
    assert created.status_code == 201, created.text
    wait_until(lambda: rows(request_id=marker), timeout=10)
    return {row["client_ip"] for row in rows(action="FAILED_AUTH")}


def test_forwarded_for_from_an_untrusted_peer_is_ignored(web: Callable[..., Web]) -> None:
    svc = web(RATE_LIMIT_LOGIN_PER_IP="5", LOGIN_FAILURES_BEFORE_DELAY="1000", TRUSTED_PROXIES="")
    forged = [f"198.51.100.{i}" for i in range(1, 41)]
    assert failed_logins(svc, forged) == [401] * 5 + [429] * 35  # one address, one limit
    assert audited_ips(svc) == {"127.0.0.1"}


def test_forwarded_for_from_a_trusted_proxy_names_the_client(web: Callable[..., Web]) -> None:
    svc = web(RATE_LIMIT_LOGIN_PER_IP="2", LOGIN_FAILURES_BEFORE_DELAY="1000", TRUSTED_PROXIES="127.0.0.1")
    # the right-most address our proxy did not vouch for, not the left-most the client wrote
    chains = [f"198.51.100.1, 203.0.113.{i}" for i in range(1, 4)] + ["203.0.113.50, 127.0.0.1"]
    assert failed_logins(svc, chains) == [401] * 4  # four clients, each under its own limit
    assert failed_logins(svc, ["203.0.113.9"] * 3) == [401, 401, 429]  # and the limit is theirs
    ips = audited_ips(svc)
    assert {"203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.50", "203.0.113.9"} <= ips, ips
    assert not ips & {"198.51.100.1", "127.0.0.1"}, ips
