"""The client's IP: the peer address, or — only when the peer is a trusted proxy — the nearest
untrusted address in X-Forwarded-For (so a client cannot forge its IP by sending the header)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

from agent_service.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(spec: str) -> list[Network]:
    try:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES is invalid: {exc}") from None


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str | None:
    peer = scope.get("client")
    address: str | None = peer[0] if peer else None
    if address is None or not _trusted(address, trusted):
        return address
    forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-forwarded-for"]
    hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()]
    for hop in reversed(hops):  # walk back from our proxy until the first address we don't trust
        if not _trusted(hop, trusted):
            return hop[:64]
    return address
