"""A process's JSON log lines as records, so tests match fields, not one rendering of them."""

from __future__ import annotations

import json
from typing import Any


def records(output: str) -> list[dict[str, Any]]:
    """Every JSON line of `output` (other lines — a banner, a traceback's text — are skipped)."""
    found = []
    for line in output.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def matching(output: str, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in records(output) if all(r.get(k) == v for k, v in fields.items())]


def logged(output: str, **fields: Any) -> bool:
    """Some line has every one of `fields` with that value (`event` is the line's name)."""
    return bool(matching(output, **fields))
