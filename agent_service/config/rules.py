"""Checks of a setting's value that need more than its type: URLs, origins, addresses."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_origin(value: str) -> bool:
    """What a browser sends as `Origin`: scheme, host and optional port, nothing else."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path and not parts.query
            and not parts.fragment and "@" not in parts.netloc and "?" not in value and "#" not in value)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{name} must start with {' or '.join(s + '://' for s in schemes)} "
                         f"(got {parts.scheme + '://' if parts.scheme else 'no scheme'})")
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        raise ValueError(f"{name} has an invalid port") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{name} names no host")
    if schemes[0] == "postgresql" and not parts.path.strip("/"):
        raise ValueError(f"{name} names no database (postgresql://user:password@host:port/DATABASE)")
