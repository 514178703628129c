"""Failed sign-ins aggregated per client address, so a flood of bad credentials costs a few
audit rows instead of one each.

The first failure from an address in a window is written as usual; the next ones within
WINDOW seconds are only counted, and when the window is over one summary entry is written with
`metadata.repeated` (how many were folded into it) and the window's bounds. Nothing is dropped:
the count is in the log, and the last failure's details (path, status, user agent) with it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from agent_service.audit.schemas import AuditEntry

WINDOW = timedelta(seconds=60)
MAX_ADDRESSES = 10_000  # a spray of addresses must not grow this without bound


class _Window(msgspec.Struct):
    opened: datetime
    repeated: int = 0
    last: AuditEntry | None = None


class FailureAggregator:
    def __init__(self, window: timedelta = WINDOW) -> None:
        self._window = window
        self._open: dict[str, _Window] = {}

    def admit(self, entry: AuditEntry, now: datetime) -> list[AuditEntry]:
        """The entries to write now for this failure: itself if it opens a window (after the
        summary of the address's previous window, if any), else nothing."""
        address = entry.client_ip or "unknown"
        out: list[AuditEntry] = []
        current = self._open.get(address)
        if current is not None and now - current.opened < self._window:
            current.repeated += 1
            current.last = entry
            return out
        if current is not None:
            out += self._summary(current, now)
        if len(self._open) >= MAX_ADDRESSES:
            out += self.due(now, everything=True)
        self._open[address] = _Window(opened=now)
        out.append(entry)
        return out

    def due(self, now: datetime, *, everything: bool = False) -> list[AuditEntry]:
        """Summaries of the windows that are over (all of them when closing)."""
        out: list[AuditEntry] = []
        for address, win in list(self._open.items()):
            if everything or now - win.opened >= self._window:
                del self._open[address]
                out += self._summary(win, now)
        return out

    def _summary(self, win: _Window, now: datetime) -> list[AuditEntry]:
        if not win.repeated or win.last is None:
            return []
        metadata = {**win.last.metadata, "repeated": win.repeated, "window_start": win.opened.isoformat(),
                    "window_end": min(now, win.opened + self._window).isoformat()}
        return [msgspec.structs.replace(win.last, metadata=metadata)]
