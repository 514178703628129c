#!/usr/bin/env python3
"""A bounded set of attacks against a running agent-service, printed as a table.

    .venv/bin/python scripts/attack.py --base-url http://127.0.0.1:8000 --api-key "$API_KEY"

The key should be an ordinary user's with the default scopes (it mints and revokes a few keys of
its own, and opens streams on a task it schedules an hour ahead and cancels at the end). Each
attack sends at most a few hundred requests; the whole run takes under a minute against
`./scripts/dev`. Exit status 0 when every attack got the expected answer.

The attacks read the service's limits from its responses (RateLimit-* headers, 429s), so they
work with any configuration; where a limit is set so high that the run's budget cannot reach it,
the row says `not reached` and counts as failed, since the default configuration reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

API = "/api/v1"


@dataclass
class Outcome:
    attack: str
    expected: str
    observed: str
    ok: bool


class Attacks:
    def __init__(self, base: str, key: str, budget: int) -> None:
        self.base = base.rstrip("/")
        self.key = key
        self.budget = budget
        self.http = httpx.AsyncClient(base_url=self.base, timeout=15, limits=httpx.Limits(max_connections=400))
        self.minted: list[str] = []
        self.tasks: list[str] = []

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    # --- credentials ----------------------------------------------------------------------

    async def forged_forwarded_for(self) -> Outcome:
        """Wrong passwords, each with a new X-Forwarded-For: the per-IP limit must still apply."""
        run = uuid.uuid4().hex[:8]
        # a new account each time, so that only the per-address limit can stop it
        seen = await self._until(lambda i: self.http.post(
            f"{API}/auth/token", json={"email": f"attack-{run}-{i}@example.com", "password": "wrong"},
            headers={"X-Forwarded-For": f"203.0.113.{i % 250}"}), {429})
        return Outcome("logins with forged X-Forwarded-For", "429 rate_limited", seen,
                       seen.startswith("429 rate_limited"))

    async def account_throttle(self) -> Outcome:
        """Wrong passwords for one account: slowed down whatever address they come from."""
        email = f"attack-{uuid.uuid4().hex[:8]}@example.com"
        codes: list[str] = []
        i = 0
        for i in range(min(self.budget, 30)):
            resp = await self.http.post(f"{API}/auth/token", json={"email": email, "password": f"guess-{i}"})
            if resp.status_code == 429:
                codes.append(_code(resp))
                break
        observed = f"429 {codes[0]} after {i} tries" if codes else "not reached"
        return Outcome("password guessing on one account", "429 login_throttled", observed,
                       observed.startswith("429 login_throttled"))

    async def bad_credential_flood(self) -> Outcome:
        seen = await self._until(lambda i: self.http.get(f"{API}/auth/me", headers={"X-API-Key": f"sk_live_{i:040d}"}),
                                 {429})
        return Outcome("flood of invalid API keys", "429 too_many_auth_failures", seen,
                       "too_many_auth_failures" in seen)

    async def both_credentials(self) -> Outcome:
        resp = await self.http.get(f"{API}/auth/me", headers={**self.auth, "Authorization": "Bearer nonsense"})
        observed = f"{resp.status_code} {_code(resp)}"
        return Outcome("Authorization and X-API-Key together", "400 conflicting_credentials", observed,
                       observed == "400 conflicting_credentials")

    async def public_route_with_bad_credentials(self) -> Outcome:
        resp = await self.http.get("/openapi.json", headers={"Authorization": "Bearer nonsense"})
        return Outcome("bad credentials on a public route", "200", str(resp.status_code), resp.status_code == 200)

    async def tier_escalation(self) -> Outcome:
        me = (await self.http.get(f"{API}/auth/me", headers=self.auth)).json()
        if me.get("tier") == "enterprise":
            return Outcome("mint a key above my tier", "403 tier_not_grantable", "skipped (enterprise key)", True)
        resp = await self.http.post(f"{API}/api-keys", headers=self.auth,
                                    json={"name": "attack", "scopes": ["tasks:read"], "tier": "enterprise"})
        if resp.status_code == 201:
            self.minted.append(resp.json()["id"])
        observed = f"{resp.status_code} {_code(resp)}"
        return Outcome("mint a key above my tier", "403 tier_not_grantable", observed,
                       observed == "403 tier_not_grantable")

    async def key_cap(self) -> Outcome:
        for _ in range(min(self.budget, 200)):
            resp = await self.http.post(f"{API}/api-keys", headers=self.auth,
                                        json={"name": "attack", "scopes": ["tasks:read"]})
            if resp.status_code != 201:
                observed = f"{resp.status_code} {_code(resp)} after {len(self.minted)} keys"
                return Outcome("mint keys without end", "409 api_key_limit", observed,
                               observed.startswith("409 api_key_limit"))
            self.minted.append(resp.json()["id"])
        return Outcome("mint keys without end", "409 api_key_limit", "not reached", False)

    async def session_without_scope(self) -> Outcome:
        resp = await self.http.post(f"{API}/api-keys", headers=self.auth,
                                    json={"name": "attack-invoke-only", "scopes": ["agents:invoke"]})
        if resp.status_code != 201:
            return Outcome("session_id with only agents:invoke", "403 insufficient_scope",
                           f"setup failed: {resp.status_code} {_code(resp)}", False)
        self.minted.append(resp.json()["id"])
        resp = await self.http.post(f"{API}/agents/invoke", headers={"X-API-Key": resp.json()["key"]},
                                    json={"message": "hi", "session_id": "attack-session"})
        observed = f"{resp.status_code} {_code(resp)}"
        return Outcome("session_id with only agents:invoke", "403 insufficient_scope", observed,
                       observed == "403 insufficient_scope")

    # --- input and transport ----------------------------------------------------------------

    async def deep_json(self) -> Outcome:
        body = "[" * 1000 + "]" * 1000
        resp = await self.http.post(f"{API}/agents/invoke", headers={**self.auth, "Content-Type": "application/json"},
                                    content=body)
        observed = f"{resp.status_code} {_code(resp)}"
        return Outcome("JSON nested 1000 deep", "400 json_too_deep", observed, observed == "400 json_too_deep")

    async def huge_header(self) -> Outcome:
        status = await asyncio.to_thread(self._raw_request, {"X-Padding": "a" * 200_000})
        return Outcome("a 200 KB request header", "431", status, status.startswith("431"))

    async def slowloris(self) -> Outcome:
        elapsed = await asyncio.to_thread(self._slow_headers, 30.0)
        closed = elapsed is not None
        return Outcome("headers sent one byte a second", "connection closed by the server",
                       f"closed after {elapsed:.1f} s" if closed else "still open after 30 s", closed)

    async def cache_headers(self) -> Outcome:
        resp = await self.http.get(f"{API}/auth/me", headers=self.auth)
        docs = await self.http.get("/docs")
        csp = "content-security-policy" in docs.headers
        observed = f"me: {resp.headers.get('cache-control')}; docs CSP: {'yes' if csp else 'no'}"
        return Outcome("private responses cacheable / docs without CSP", "me: no-store; docs CSP: yes", observed,
                       resp.headers.get("cache-control") == "no-store" and csp)

    async def stream_flood(self) -> Outcome:
        """Open event streams on one far-future task until refused."""
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        resp = await self.http.post(f"{API}/agents/echo/invoke-async", headers=self.auth,
                                    json={"message": "later", "run_at": later})
        if resp.status_code != 202:
            return Outcome("hundreds of event streams", "429 too_many_streams",
                           f"setup failed: {resp.status_code} {_code(resp)}", False)
        task_id = resp.json()["task_id"]
        self.tasks.append(task_id)
        url = f"{API}/agents/tasks/{task_id}/events"
        opened: list[httpx.Response] = []
        observed = "not reached"
        try:
            for _ in range(min(self.budget, 300)):
                request = self.http.build_request("GET", url, headers=self.auth)
                r = await self.http.send(request, stream=True)
                if r.status_code != 200:
                    await r.aread()
                    observed = f"{r.status_code} {_code(r)} after {len(opened)} streams"
                    await r.aclose()
                    break
                opened.append(r)
        finally:
            await asyncio.gather(*(r.aclose() for r in opened), return_exceptions=True)
        return Outcome("hundreds of event streams", "429 too_many_streams", observed, "too_many_streams" in observed)

    # --- plumbing ----------------------------------------------------------------------------

    async def _until(self, send: Callable[[int], Awaitable[httpx.Response]], stop: set[int]) -> str:
        for i in range(self.budget):
            resp = await send(i)
            if resp.status_code in stop:
                return f"{resp.status_code} {_code(resp)} after {i} requests"
        return "not reached"

    def _connect(self) -> socket.socket:
        parts = urlsplit(self.base)
        if parts.scheme != "http":
            raise SystemExit("the raw-socket attacks need an http:// base URL")
        return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)

    def _raw_request(self, headers: dict[str, str]) -> str:
        host = urlsplit(self.base).netloc
        head = f"GET /health/live HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with self._connect() as s:
            try:
                s.sendall((head + "\r\n").encode())
                reply = s.recv(200).decode("latin-1")
            except OSError as exc:
                return f"connection dropped ({exc.__class__.__name__})"
        return reply.split("\r\n")[0].partition(" ")[2] or "connection closed"

    def _slow_headers(self, limit: float) -> float | None:
        started = time.monotonic()
        with self._connect() as s:
            s.settimeout(1.0)
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() - started < limit:
                try:
                    s.sendall(b"X")
                    if s.recv(1024) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    continue
                except OSError:
                    return time.monotonic() - started
                else:
                    return time.monotonic() - started  # the server answered (408) and will close
        return None

    async def cleanup(self) -> None:
        for key_id in self.minted:
            await self.http.delete(f"{API}/api-keys/{key_id}", headers=self.auth)
        for task_id in self.tasks:
            await self.http.post(f"{API}/agents/tasks/{task_id}/cancel", headers=self.auth)
        await self.http.aclose()


def _code(resp: httpx.Response) -> str:
    try:
        return str(json.loads(resp.content).get("code", ""))
    except (ValueError, AttributeError):
        return ""


ORDER = ("both_credentials", "public_route_with_bad_credentials", "deep_json", "huge_header", "cache_headers",
         "tier_escalation", "session_without_scope", "key_cap", "stream_flood", "account_throttle",
         "forged_forwarded_for", "bad_credential_flood", "slowloris")


async def run(base: str, key: str, budget: int, only: list[str]) -> list[Outcome]:
    attacks = Attacks(base, key, budget)
    results: list[Outcome] = []
    try:
        for name in only or ORDER:
            try:
                results.append(await getattr(attacks, name)())
            except (httpx.HTTPError, OSError) as exc:
                results.append(Outcome(name, "an answer", f"{exc.__class__.__name__}: {exc}", False))
    finally:
        await attacks.cleanup()
    return results


def print_table(results: list[Outcome]) -> None:
    rows = [("attack", "expected", "observed", "")] + [
        (r.attack, r.expected, r.observed, "ok" if r.ok else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", required=True, help="an ordinary user's key (default scopes)")
    parser.add_argument("--budget", type=int, default=120, help="most requests one attack may send")
    parser.add_argument("--only", nargs="*", default=[], choices=ORDER, metavar="ATTACK")
    args = parser.parse_args()
    results = asyncio.run(run(args.base_url, args.api_key, args.budget, args.only))
    print_table(results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
