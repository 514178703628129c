"""How a Server-Sent Events answer is described under OpenAPI 3.1.

The body is a string of media type `text/event-stream` (so generated clients hand it over raw,
never try to parse it as one JSON object); `contentSchema` says what it decodes to: a sequence of
events, each with its SSE name (the Struct's tag), an optional `id`, and `data` that is JSON of
that event's component schema. OpenAPI 3.2 calls the same item schema `itemSchema`; 3.1 tools
(validators, linters, generators) know only `schema`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.kit.openapi.components import REF
from agent_service.kit.openapi.examples import example_for

MEDIA = "text/event-stream"
DESCRIPTION = (
    "A stream of Server-Sent Events: blocks of `event:`, `id:` (where resumable) and `data:` lines, "
    "each `data` a JSON document whose `type` is the event name. The stream may start with a `retry:` "
    "field and carries `: keep-alive` comment lines; it ends when the server closes it."
)


def _name(event: type) -> str:
    config = getattr(event, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else "message"


def _item(event: type) -> dict[str, Any]:
    return {
        "title": f"{_name(event)} event",
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
    return {
        MEDIA: {
            "schema": {
                "type": "string",
                "description": DESCRIPTION,
                "contentMediaType": MEDIA,
                "contentSchema": {"type": "array", "items": {"oneOf": [_item(e) for e in events]}},
            },
            "examples": {"example": {"value": "".join(_block(e) for e in events[:2])}},
        }
    }
