"""Agents used by tests through the AGENTS setting (a user agent loaded by dotted path)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from agent_service.agents.schemas import AgentInput, AgentOutput


class StubbornAgent:
    """Ignores the first cancellation (the soft limit), so only the hard limit can stop it."""

    name = "stubborn"
    description = "ignores a soft time limit"
    available = True

    async def invoke(self, data: AgentInput) -> AgentOutput:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)
        return AgentOutput(content="never")

    async def stream(self, data: AgentInput) -> AsyncIterator[str]:
        yield (await self.invoke(data)).content


class EndlessAgent:
    """Streams until stopped; writes "closed" to metadata["marker"] when its stream is closed."""

    name = "endless"
    description = "streams forever"
    available = True

    async def invoke(self, data: AgentInput) -> AgentOutput:
        return AgentOutput(content="endless")

    async def stream(self, data: AgentInput) -> AsyncIterator[str]:
        i = 0
        try:
            while True:
                yield f"tick{i} "
                i += 1
                await asyncio.sleep(0.05)
        finally:
            marker = data.metadata.get("marker")
            if isinstance(marker, str):
                # written aside and renamed into place: the marker never exists half-written
                with open(marker + ".tmp", "w") as fh:
                    fh.write(f"closed after {i}")
                os.replace(marker + ".tmp", marker)


class CustomAgent:
    """The smallest user agent: the registry must load it by dotted path beside the built-in ones."""

    name = "custom"
    description = "a user agent"
    available = True

    async def invoke(self, data: AgentInput) -> AgentOutput:
        raise NotImplementedError

    async def stream(self, data: AgentInput) -> AsyncIterator[str]:
        yield "x"
