"""Reading Server-Sent Events in tests: a whole body (a finished task's replay) or a streaming
response as its events arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, Any]


def parse_sse(text: str) -> list[Event]:
    """Every event with data in `text` (comments, keep-alives and the `retry:` line skipped)."""
    events: list[Event] = []
    for block in text.split("\n\n"):
        fields = [line.partition(":")[::2] for line in block.split("\n") if line and not line.startswith(":")]
        values = {k: v.removeprefix(" ") for k, v in fields}
        if "data" in values:
            events.append(Event(values.get("event", "message"), values.get("id"), json.loads(values["data"])))
    return events


async def sse_events(resp: httpx.Response) -> AsyncIterator[Event]:
    """The events of a streaming response as they arrive."""
    block: list[str] = []
    async for line in resp.aiter_lines():
        if line:
            block.append(line)
            continue
        for event in parse_sse("\n".join(block)):
            yield event
        block = []


def is_final(event: Event) -> bool:
    """The last event of a task's stream: its closing state, or an error."""
    return event.name == "error" or (event.name == "state" and event.data.get("state") in FINISHED)


def answer(events: list[Event]) -> str:
    """The chunks' contents joined: the agent's answer as the stream told it."""
    return "".join(e.data["content"] for e in events if e.name == "chunk")
