"""kit/client_ip.py: whose address a request is charged to. X-Forwarded-For counts only from a
trusted proxy, and then only its right-hand end (what our proxies appended): the left-most entries
are whatever the client chose to send."""

from __future__ import annotations

import pytest

from agent_service.errors import ConfigError
from agent_service.kit.client_ip import client_ip, parse_trusted

pytestmark = pytest.mark.sqlite_only  # no SQL here

PROXIES = parse_trusted("10.0.0.0/8, 192.0.2.1, 2001:db8:ffff::/48")


def ip(peer: str | None, *forwarded: str, trusted: str | None = None) -> str | None:
    scope = {"type": "http", "client": (peer, 5000) if peer else None,
             "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}
    return client_ip(scope, PROXIES if trusted is None else parse_trusted(trusted))


def test_the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert ip("203.0.113.5", "198.51.100.1") == "203.0.113.5"
    assert ip("127.0.0.1", "198.51.100.1") == "127.0.0.1"
    assert ip("10.1.2.3", "198.51.100.1", trusted="") == "10.1.2.3"  # TRUSTED_PROXIES empty: never believed
    assert ip(None, "198.51.100.1") is None


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # the client forged "198.51.100.66"; our proxy appended the address it saw
    assert ip("10.0.0.2", "198.51.100.66, 203.0.113.7") == "203.0.113.7"
    # walking from the right past every trusted proxy, whatever the client wrote before them
    assert ip("10.0.0.2", "198.51.100.66, 203.0.113.7, 192.0.2.1, 10.9.9.9") == "203.0.113.7"
    # several header lines are one list, in order
    assert ip("10.0.0.2", "198.51.100.66", "203.0.113.7, 10.0.0.3") == "203.0.113.7"
    assert ip("10.0.0.2", "2001:db8::5, 2001:db8:ffff::1") == "2001:db8::5"


def test_edge_cases_of_the_header() -> None:
    assert ip("10.0.0.2") == "10.0.0.2"  # no header: the proxy itself
    assert ip("10.0.0.2", " , ") == "10.0.0.2"
    assert ip("10.0.0.2", "10.0.0.7, 10.0.0.8") == "10.0.0.7"  # all trusted: the furthest back
    # ports, as some proxies write them, are not part of the address
    assert ip("10.0.0.2", "203.0.113.7:51234") == "203.0.113.7"
    assert ip("10.0.0.2", "[2001:db8::5]:443") == "2001:db8::5"
    # something that is no address ends the walk: nothing to its left can be believed, and a client
    # must not key its own limit with a string of its choosing
    assert ip("10.0.0.2", "198.51.100.66, not-an-ip") == "10.0.0.2"
    assert ip("10.0.0.2", "198.51.100.66, bogus, 10.0.0.9") == "10.0.0.9"
    assert ip("10.0.0.2", "unknown, 203.0.113.7") == "203.0.113.7"


def test_a_bad_trusted_proxies_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        parse_trusted("10.0.0.0/8, not-a-network")
