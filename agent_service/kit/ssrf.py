"""The SSRF guard for URLs a user chose for us to call (webhooks, push notifications): only http(s),
and no address inside our own network unless WEBHOOK_ALLOW_PRIVATE_NETWORKS says so.

A host name is resolved and **every** address it has is checked (one private answer among public
ones refuses the URL: the connection could pick it). The caller then connects to an address
checked here — never resolving the name again — so a DNS answer that changes between this check
and the connection (DNS rebinding) cannot reach anything else. Checked at registration (a 422
naming the field) and again at every delivery.

Refused: loopback, private (RFC 1918, ULA), shared (100.64/10), link-local, multicast, reserved,
unspecified, documentation and benchmark ranges, and IPv6 forms that carry an IPv4 address
(::ffff:a.b.c.d, 6to4, Teredo, NAT64) when the address they carry is refused. Cloud metadata
addresses are refused even when private networks are allowed.

The resolver is a part (`deps.part(resolver)`), so tests can answer names the way they need.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent_service.errors import ValidationFailed
from agent_service.kit.deps import Deps

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean …
    "169.254.170.2",  # ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(Exception):
    """The URL may not be called; the message says why and is safe to show its owner."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    async def resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolver(deps: Deps) -> Resolver:
    """The process's name resolver (tests provide their own)."""
    return SystemResolver()


@dataclass(frozen=True)
class Target:
    """A URL that passed the guard, and the address to connect to for it."""

    url: str
    scheme: str
    host: str  # as in the URL, lower case (the Host header and TLS name)
    port: int
    address: IP


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def refusal(ip: IP, *, allow_private: bool) -> str | None:
    """Why `ip` may not be called, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None or ip in _NAT64:  # an IPv4 destination written as IPv6: judged as that
            return refusal(_embedded_v4(ip) or ip.ipv4_mapped or ip, allow_private=allow_private)
        inner = _embedded_v4(ip)
        if inner is not None and (why := refusal(inner, allow_private=allow_private)):
            return why
        if ip.scope_id:
            return "an IPv6 address with a zone is not allowed"
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return f"{ip} is not a unicast Internet address"
    if ip.is_private or not ip.is_global:
        return f"{ip} is a private address"
    return None


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL we may call at all, whatever it resolves to."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise UnsafeUrl("The URL is not valid.") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeUrl("Only http and https URLs are allowed.")
    if not host:
        raise UnsafeUrl("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("The URL may not carry a user name or password.")
    if any(c.isspace() for c in url):
        raise UnsafeUrl("The URL may not contain spaces.")
    try:
        host.encode("idna")
    except UnicodeError:
        raise UnsafeUrl("The URL's host name is not valid.") from None
    return scheme, host.lower(), port or SCHEMES[scheme]


async def check(deps: Deps, url: str) -> Target:
    """The address to connect to for `url`; UnsafeUrl if the URL or any of its addresses is refused."""
    scheme, host, port = parse(url)
    allow = deps.settings.webhook_allow_private_networks
    try:
        addresses: list[IP] = [ipaddress.ip_address(host)]
    except ValueError:
        try:  # a registration must not hang on a slow DNS server either
            async with asyncio.timeout(deps.settings.webhook_timeout):
                answers = await deps.part(resolver).resolve(host.encode("idna").decode(), port)
        except TimeoutError:
            raise UnsafeUrl(f"The host {host} did not resolve within {deps.settings.webhook_timeout:g} s.") from None
        addresses = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
            except ValueError:
                continue
        if not addresses:
            raise UnsafeUrl(f"The host {host} does not resolve to an address.") from None
    for ip in addresses:
        if why := refusal(ip, allow_private=allow):
            rule = "" if allow else (" Only public Internet addresses may be called"
                                     " (WEBHOOK_ALLOW_PRIVATE_NETWORKS is off).")
            raise UnsafeUrl(f"The URL's host is or resolves to a refused address: {why}.{rule}")
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


async def validate(deps: Deps, url: str, *, path: str) -> None:
    """`check` at registration: a refused URL is a 422 naming `path`."""
    try:
        await check(deps, url)
    except UnsafeUrl as exc:
        raise ValidationFailed(f"The webhook URL is refused: {exc}", code="webhook_url_refused",
                               errors=[{"path": path, "message": str(exc)}]) from None
