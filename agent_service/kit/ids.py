"""Time-ordered identifiers: UUIDv7 (RFC 9562), as 32 hex digits like the uuid4 ids they replace.

Ids that are primary keys or indexed columns of append-mostly tables (task ids, request ids) are
time-ordered so that each insert lands at the right edge of its B-tree. With random ids every
insert dirties a leaf page somewhere in the tree; once the index outgrows the page cache each
batch of inserts writes (and on SQLite, re-logs to the WAL) one page per row and per index, and
throughput falls as the table grows. 74 random bits remain: an id is not guessable, and every
read of someone else's resource is a 404 regardless.
"""

from __future__ import annotations

import os
import time

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_A_BITS = 12
_RAND_B_BITS = 62


def time_ordered(now_ms: int | None = None) -> str:
    """A UUIDv7 in hex. Ids of the same millisecond are not ordered among themselves; only
    their placement near the B-tree's edge matters."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> (80 - _RAND_A_BITS)
    rand_b = rand & ((1 << _RAND_B_BITS) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | _VERSION | rand_a << 64 | _VARIANT | rand_b
    return f"{value:032x}"
