"""The bare floor of `POST invoke-async`: a Starlette route that reads the JSON body and enqueues
it into arq, nothing else (no auth, no limits, no audit, no SQL row). What scripts/bench_http.py
compares the service's request path against.

    REDIS_URL=redis://… uvicorn scripts.anchors.floor_arq:app   (or run by bench_http.py)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from arq.connections import ArqRedis, RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUEUE = os.environ.get("FLOOR_QUEUE", "arq:floor")
pool: ArqRedis | None = None


def _serialize(obj: dict[str, Any]) -> bytes:
    return msgspec.msgpack.encode(obj)  # as the service does: no pickle on either side of the comparison


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global pool
    pool = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]), job_serializer=_serialize,
                             default_queue_name=QUEUE)
    yield
    await pool.aclose()


async def invoke_async(request: Request) -> Response:
    body = msgspec.json.decode(await request.body())
    assert pool is not None
    job = await pool.enqueue_job("invoke_agent", request.path_params["agent_id"], body, _job_id=uuid.uuid4().hex)
    assert job is not None
    return Response(msgspec.json.encode({"task_id": job.job_id, "status": "queued"}), status_code=202,
                    media_type="application/json")


app = Starlette(routes=[Route("/api/v1/agents/{agent_id}/invoke-async", invoke_async, methods=["POST"])],
                lifespan=lifespan)
