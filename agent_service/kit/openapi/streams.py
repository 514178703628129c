"""How a Server-Sent Events answer is described under OpenAPI 3.1.

OpenAPI 3.1 has no `itemSchema` (3.2 does); by the convention tools follow before 3.2
(schemathesis validates every event with it), the `schema` of a `text/event-stream` answer
describes one event. Each event is a component `Sse<Event>`: its SSE name (the Struct's tag), an
optional `id`, and `data` that is JSON of the event's own component schema (`contentMediaType` +
`contentSchema`). One more alternative, a string, is the stream as raw text: what a client that
does not decode SSE receives (openapi-python-client then hands the body over as text, where a
oneOf of objects alone made it parse the stream as one JSON object and crash).
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.kit.openapi.components import REF
from agent_service.kit.openapi.examples import example_for

MEDIA = "text/event-stream"
DESCRIPTION = (
    "One Server-Sent Event: `event:`, `id:` (where resumable) and `data:` lines, the `data` a JSON "
    "document whose `type` is the event name. The stream may start with a `retry:` field and carries "
    "`: keep-alive` comment lines; it ends when the server closes it. Undecoded, the stream is a string."
)
RAW = {"type": "string", "title": "Raw event stream", "description": "The whole stream as text, undecoded."}


def _name(event: type) -> str:
    config = getattr(event, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else "message"


def component_name(event: type) -> str:
    return "Sse" + event.__name__


def event_schema(event: type) -> dict[str, Any]:
    """The component describing one SSE event carrying `event` as its data."""
    return {
        "title": component_name(event),
        "description": f"The `{_name(event)}` event; its `data` is a JSON `{event.__name__}`.",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": _name(event)},
            "id": {"type": "string", "description": "Resume after this event with `Last-Event-ID`."},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"$ref": REF.format(name=event.__name__)}},
        },
    }


def _block(event: type) -> str:
    return f"event: {_name(event)}\ndata: {msgspec.json.encode(example_for(event)).decode()}\n\n"


def media(events: tuple[type, ...]) -> dict[str, Any]:
    """The `content` entry of a streaming answer carrying `events`."""
    alternatives = [{"$ref": REF.format(name=component_name(e))} for e in events]
    return {
        MEDIA: {
            "schema": {"description": DESCRIPTION, "oneOf": [*alternatives, RAW]},
            "examples": {"example": {"value": "".join(_block(e) for e in events[:2])}},
        }
    }
