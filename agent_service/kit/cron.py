"""Cron schedules from settings ("minute hour * * *", UTC) turned into arq `cron()` arguments.

Only the minute and hour fields may be set: numbers, lists (1,2), ranges (1-5) and steps (*/6).
"""

from __future__ import annotations

from agent_service.errors import ConfigError


def _field(text: str, lo: int, hi: int) -> set[int] | None:
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = int(a), int(b)
        else:
            start = end = int(base)
        if not (lo <= start <= end <= hi) or step < 1:
            raise ValueError(part)
        values.update(range(start, end + 1, step))
    return values


def parse(name: str, spec: str) -> dict[str, set[int] | None]:
    """`{"minute": …, "hour": …}` for arq.cron; a bad spec is a ConfigError naming the variable."""
    fields = spec.split()
    try:
        if len(fields) != 5 or fields[2:] != ["*", "*", "*"]:
            raise ValueError(spec)
        return {"minute": _field(fields[0], 0, 59), "hour": _field(fields[1], 0, 23)}
    except ValueError:
        raise ConfigError(
            f"{name.upper()}={spec!r} is invalid: expected 'minute hour * * *' (numbers, lists, ranges, */n)"
        ) from None
