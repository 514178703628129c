"""The seed's design of `POST invoke-async`: a FastAPI route (pydantic body) that calls
`celery_task.delay(...)` on a Redis broker, as the FastAPI + Celery service this project replaces
did. Runs in `.venv-bench/` (Celery's Redis-client pin conflicts with arq's); scripts/bench_http.py
creates that virtualenv and starts this app with its uvicorn.

    REDIS_URL=redis://… .venv-bench/bin/uvicorn seed_celery:app --app-dir scripts/anchors
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from fastapi import FastAPI
from pydantic import BaseModel

celery_app = Celery("agent_service_seed", broker=os.environ["REDIS_URL"])
celery_app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="agent-tasks",
                       broker_connection_retry_on_startup=True)
app = FastAPI()


@celery_app.task(name="invoke_agent_async")
def invoke_agent_async(agent_id: str, request: dict[str, Any]) -> dict[str, Any]:  # run by a worker, never here
    return {"agent_id": agent_id, "request": request}


class AgentRequest(BaseModel):
    message: str
    metadata: dict[str, Any] | None = None
    session_id: str | None = None


class TaskAccepted(BaseModel):
    task_id: str
    status: str


@app.post("/api/v1/agents/{agent_id}/invoke-async", status_code=202, response_model=TaskAccepted)
async def invoke_async(agent_id: str, request: AgentRequest) -> TaskAccepted:
    task = invoke_agent_async.delay(agent_id, request.model_dump())
    return TaskAccepted(task_id=task.id, status="queued")
