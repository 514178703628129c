"""Server-Sent Events as the WHATWG spec parses them, fed one line at a time (no I/O here, so the
sync and async clients share it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    event: str
    data: str
    id: str | None  # the id this message came with; the resume point is Decoder.last_event_id


KEEPALIVE = Message("", "", None)  # returned for a comment line, so a reader can look at its clock


class Decoder:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.last_event_id: str | None = None
        self._id_in_message: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> Message | None:
        """A line without its end. Returns a message when a blank line completes one, KEEPALIVE for
        a comment, else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return KEEPALIVE
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value or None
            self._id_in_message = value or None
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Message | None:
        event, data, own_id = self._event or "message", self._data, self._id_in_message
        self._event, self._data, self._id_in_message = "", [], None
        if not data:
            return None
        return Message(event, "\n".join(data), own_id)
