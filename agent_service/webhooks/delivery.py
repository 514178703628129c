"""One HTTP attempt of a delivery: the SSRF guard again (kit/ssrf.py: resolve, check every address),
then a POST to the checked address itself — the URL's host stays in the Host header and as the
TLS server name (SNI and certificate check) — with no redirect followed, WEBHOOK_TIMEOUT for the
whole attempt and at most WEBHOOK_MAX_RESPONSE_BYTES of the answer read.

The client ignores proxy variables (a proxy would resolve the name itself) and keeps no
connection alive (a pooled connection is keyed by address, not by host name)."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec

from agent_service.kit import ssrf
from agent_service.kit.deps import Deps

USER_AGENT = "agent-service-webhooks/1"
EXCERPT_CHARS = 200


class Result(msgspec.Struct, kw_only=True):
    ok: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    response: str | None


def client(deps: Deps) -> httpx.AsyncClient:
    """The webhooks' own HTTP client (a part, closed with the process)."""
    http = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=deps.settings.webhook_timeout,
                             limits=httpx.Limits(max_keepalive_connections=0))
    deps.on_close(http.aclose)
    return http


def _host_header(target: ssrf.Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == ssrf.SCHEMES[target.scheme] else f"{host}:{target.port}"


async def _post(deps: Deps, target: ssrf.Target, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    pinned = httpx.URL(target.url).copy_with(host=str(target.address))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    request = deps.part(client).build_request(
        "POST", pinned, content=body, extensions=extensions,
        headers={**headers, "Host": _host_header(target), "Content-Type": "application/json",
                 "User-Agent": USER_AGENT})
    response = await deps.part(client).send(request, stream=True)
    cap = deps.settings.webhook_max_response_bytes
    read = bytearray()
    try:
        async for chunk in response.aiter_raw():
            read += chunk
            if len(read) >= cap:
                break
    finally:
        await response.aclose()
    return response.status_code, bytes(read[:cap])


def _verdict(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed; point the webhook at the final URL."
    return f"HTTP {status}"


async def send(deps: Deps, url: str, body: bytes, headers: dict[str, str]) -> Result:
    """POST `body` to `url`; never raises for anything the receiver or the network does."""
    limit = deps.settings.webhook_timeout
    started = time.monotonic()

    def done(status: int | None = None, error: str | None = None, answer: bytes = b"") -> Result:
        text = answer.decode("utf-8", "replace")[:EXCERPT_CHARS] or None
        return Result(ok=status is not None and error is None, status_code=status, error=error, response=text,
                      latency_ms=int((time.monotonic() - started) * 1000))

    try:
        async with asyncio.timeout(limit):
            target = await ssrf.check(deps, url)
            status, answer = await _post(deps, target, body, headers)
    except ssrf.UnsafeUrl as exc:
        return done(error=f"Refused: {exc}")
    except (TimeoutError, httpx.TimeoutException):
        return done(error=f"No answer within {limit:g} s.")
    except httpx.HTTPError as exc:
        return done(error=f"Connection failed ({type(exc).__name__}).")
    except OSError as exc:
        return done(error=f"Connection failed ({type(exc).__name__}).")
    return done(status, _verdict(status), answer)
