"""The client's IP, decided here and nowhere else (uvicorn's own proxy-header rewriting is off, see
kit/http_guard.py): the peer address, or — only when the peer is a trusted proxy — the right-most
address of X-Forwarded-For that is not a trusted proxy itself.

Each proxy appends the address it saw, so only the right-hand end of the header was written by
proxies we trust; everything to the left of the first untrusted entry may be forged by the client."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

from agent_service.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_trusted(spec: str) -> list[Network]:
    try:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES is invalid: {exc}") from None


def _address(hop: str) -> Address | None:
    """An X-Forwarded-For entry as an address; some proxies (Azure's, for one) add a port:
    `203.0.113.7:51234`, `[2001:db8::1]:443`."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:hop.find("]")] if "]" in hop else hop
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in trusted)


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str | None:
    peer = scope.get("client")
    address: str | None = peer[0] if peer else None
    if address is None or not trusted or not _trusted(_address(address), trusted):
        return address
    forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-forwarded-for"]
    for hop in reversed(",".join(forwarded).split(",")):
        if not hop.strip():
            continue
        ip = _address(hop)
        if ip is None:
            # not an address: the chain is broken here, and a client could pick any string to key its
            # limits on; the last address we could believe stands
            break
        address = str(ip)
        if not _trusted(ip, trusted):
            break  # the first hop our proxies did not vouch for is the client
    # every hop trusted: the left-most one (a host inside the trusted range called us through them)
    return address
