"""kit/ids.py: time-ordered ids are RFC 9562 UUIDv7s, ordered by their millisecond, unpredictable within it."""

from __future__ import annotations

import uuid

from agent_service.kit.ids import time_ordered


def test_an_id_is_a_uuid7_in_32_hex_digits() -> None:
    value = time_ordered()
    parsed = uuid.UUID(hex=value)
    assert len(value) == 32 and value == parsed.hex
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_sort_by_their_millisecond() -> None:
    stamps = [0, 1, 1_700_000_000_000, 1_700_000_000_001, 2**48 - 1]
    ids = [time_ordered(ms) for ms in stamps]
    assert ids == sorted(ids)
    assert [int(i[:12], 16) for i in ids] == stamps


def test_ids_of_one_millisecond_differ_in_their_random_bits() -> None:
    ids = {time_ordered(1_700_000_000_000) for _ in range(1000)}
    assert len(ids) == 1000
