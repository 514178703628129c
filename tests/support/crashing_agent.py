"""An agent with a bug, loaded by dotted path through AGENTS (imports nothing beyond the agent
protocol, so a process that loads it imports no SDK because of it)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from agent_service.agents.schemas import AgentInput, AgentOutput

LOCAL_MARKER = "frame-local-marker-77ab"


class CrashingAgent:
    """Its invoke raises, with the LLM_API_KEY setting's value in the message and a marker in a
    frame local: neither may reach an error report."""

    name = "crashing"
    description = "raises in invoke"
    available = True

    async def invoke(self, data: AgentInput) -> AgentOutput:
        secret_local = LOCAL_MARKER  # noqa: F841  (a frame local that must not be reported)
        raise RuntimeError(f"agent bug (configured with {os.environ.get('LLM_API_KEY')})")

    async def stream(self, data: AgentInput) -> AsyncIterator[str]:
        yield (await self.invoke(data)).content
