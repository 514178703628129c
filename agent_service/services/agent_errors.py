"""Map agent failures to client-facing errors (safe messages only)."""

from __future__ import annotations

from agent_service.agents.base import (
    AgentError,
    AgentUnavailable,
    InvalidAgentInput,
    PermanentAgentError,
    TransientAgentError,
)
from agent_service.errors import AgentFailed, AppError, ServiceUnavailable, ValidationFailed


def to_app_error(exc: AgentError) -> AppError:
    if isinstance(exc, InvalidAgentInput):
        return ValidationFailed(str(exc), errors=[{"path": "$.metadata", "message": str(exc)}])
    if isinstance(exc, AgentUnavailable):
        return ServiceUnavailable(str(exc), code="agent_unavailable")
    if isinstance(exc, TransientAgentError):
        retry = str(int(exc.retry_after)) if exc.retry_after else "5"
        return ServiceUnavailable(str(exc), code="agent_temporarily_unavailable", headers={"Retry-After": retry})
    if isinstance(exc, PermanentAgentError):
        return AgentFailed(str(exc))
    return AgentFailed("The agent failed.")
