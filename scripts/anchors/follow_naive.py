"""The plain design of a task's live events, the anchor of scripts/bench_followers.py: a Starlette
route whose SSE body blocks on the task's Redis stream (`XREAD BLOCK`) with a connection of its
own, as a follower did before issue 16 (and as most SSE-over-Redis code does). No auth, no
stream slots, no SQL row: only the reading and the writing.

    REDIS_URL=redis://… EVENTS_PREFIX=<prefix>task: uvicorn follow_naive:app --app-dir scripts/anchors
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import msgspec
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

PREFIX = os.environ.get("EVENTS_PREFIX", "agent-service:task:")
FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}
redis = Redis.from_url(os.environ["REDIS_URL"])  # redis-py's pool: a connection for each blocked read


class _End(msgspec.Struct):
    type: str
    state: str | None = None


_end = msgspec.json.Decoder(_End)


async def events(request: Request) -> StreamingResponse:
    key = f"{PREFIX}{request.path_params['task_id']}:events"

    async def body() -> AsyncIterator[bytes]:
        after = "0"
        while True:
            reply = await redis.xread({key: after}, count=500, block=5000)
            if not reply:
                yield b": keep-alive\n\n"
                continue
            for eid, fields in reply[0][1]:
                after = eid.decode()
                data = fields[b"e"]
                yield b"id: " + eid + b"\ndata: " + data + b"\n\n"
                end = _end.decode(data)
                if end.type == "state" and end.state in FINISHED:
                    return

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


app = Starlette(routes=[Route("/api/v1/agents/tasks/{task_id}/events", events)])
