"""A Python client of the agent-service HTTP API, sync and async, on httpx and msgspec.

    from agent_service.client import AgentServiceClient

    with AgentServiceClient("http://127.0.0.1:8000", api_key="sk_live_…") as client:
        task = client.submit("hello", agent="echo")
        result = task.wait(timeout=60)        # like Celery's task.get(timeout=60)

Importing it loads no server module (no Starlette, arq or Redis client): httpx and msgspec are all
it needs.
"""

from agent_service.client._async import AsyncAgentServiceClient, AsyncChunkStream, AsyncTaskHandle
from agent_service.client._errors import (
    AgentFailed,
    AgentServiceError,
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    FieldError,
    Forbidden,
    GatewayTimeout,
    NotFound,
    RateLimited,
    ResultExpired,
    ServerError,
    ServiceUnavailable,
    StreamFailed,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskTimeout,
    Unauthorized,
    ValidationError,
)
from agent_service.client._models import (
    AgentInfo,
    AgentList,
    AgentResult,
    ChunkEvent,
    InvokeResult,
    ProgressEvent,
    StateEvent,
    StreamChunk,
    StreamDone,
    TaskAccepted,
    TaskEvent,
    TaskPage,
    TaskStatus,
    TaskSummary,
    TokenPair,
)
from agent_service.client._sync import AgentServiceClient, ChunkStream, TaskHandle

__all__ = [
    "AgentFailed",
    "AgentInfo",
    "AgentList",
    "AgentResult",
    "AgentServiceClient",
    "AgentServiceError",
    "ApiError",
    "AsyncAgentServiceClient",
    "AsyncChunkStream",
    "AsyncTaskHandle",
    "BadRequest",
    "ChunkEvent",
    "ChunkStream",
    "Conflict",
    "ConnectionFailed",
    "FieldError",
    "Forbidden",
    "GatewayTimeout",
    "InvokeResult",
    "NotFound",
    "ProgressEvent",
    "RateLimited",
    "ResultExpired",
    "ServerError",
    "ServiceUnavailable",
    "StateEvent",
    "StreamChunk",
    "StreamDone",
    "StreamFailed",
    "TaskAccepted",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskPage",
    "TaskStatus",
    "TaskSummary",
    "TaskTimeout",
    "TokenPair",
    "Unauthorized",
    "ValidationError",
]
