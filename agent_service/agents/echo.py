"""`echo`: deterministic, streams word by word; metadata can slow it down or make it fail.

metadata:
  delay       seconds to wait before each chunk (0..ECHO_MAX_DELAY; at most 5 outside development)
  fail        "transient" | "permanent"
  fail_times  attempts that fail before it succeeds (default: every attempt)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from agent_service.agents.schemas import (
    USAGE_KEY,
    AgentInput,
    AgentOutput,
    InvalidAgentInput,
    PermanentAgentError,
    StreamMeta,
    TransientAgentError,
    usage_metadata,
)
from agent_service.config import Settings

MAX_DELAY = 60.0
MAX_CHARS = 100_000
PRODUCTION_MAX_DELAY = 5.0
PRODUCTION_MAX_CHARS = 20_000


def _number(meta: dict[str, Any], key: str, *, lo: float, hi: float) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidAgentInput(f"metadata.{key} must be a number between {lo:g} and {hi:g}")
    return float(value)


class EchoAgent:
    name = "echo"
    description = "Echoes the message back, word by word when streaming. For tests and demos."
    available = True

    def __init__(self, max_delay: float = MAX_DELAY, max_chars: int = MAX_CHARS) -> None:
        self.max_delay = max_delay
        self.max_chars = max_chars

    @classmethod
    def for_settings(cls, settings: Settings) -> EchoAgent:
        """Outside development echo is a demo, not a way to hold a worker slot or a stream for long."""
        if settings.is_dev:
            return cls(settings.echo_max_delay, settings.echo_max_chars)
        return cls(min(settings.echo_max_delay, PRODUCTION_MAX_DELAY),
                   min(settings.echo_max_chars, PRODUCTION_MAX_CHARS))

    def validate(self, data: AgentInput) -> tuple[float, str | None, float | None]:
        """Check the metadata (also before a job is queued): (delay, fail, fail_times)."""
        if len(data.message) > self.max_chars:
            raise InvalidAgentInput(f"echo accepts messages of at most {self.max_chars} characters", path="$.message")
        meta = data.metadata
        delay = _number(meta, "delay", lo=0, hi=self.max_delay) or 0.0
        fail = meta.get("fail")
        if fail is not None and fail not in ("transient", "permanent"):
            raise InvalidAgentInput('metadata.fail must be "transient" or "permanent"')
        return delay, fail, _number(meta, "fail_times", lo=0, hi=1000)

    def _plan(self, data: AgentInput) -> tuple[float, list[str]]:
        delay, fail, fail_times = self.validate(data)
        if fail is not None and (fail_times is None or data.attempt <= fail_times):
            if fail == "transient":
                raise TransientAgentError(f"echo: simulated transient failure on attempt {data.attempt}")
            raise PermanentAgentError("echo: simulated permanent failure")
        # keep the whitespace attached to each word so the chunks join back to the text exactly
        chunks = re.findall(r"\s*\S+\s*", data.message) or [data.message]
        return delay, chunks

    async def invoke(self, data: AgentInput) -> AgentOutput:
        delay, chunks = self._plan(data)
        if delay:
            await asyncio.sleep(delay * len(chunks))
        return AgentOutput(
            content=data.message,
            metadata={"agent": self.name, "chunks": len(chunks), "history_length": len(data.history),
                      **_usage(data.message)},
        )

    async def stream(self, data: AgentInput) -> AsyncIterator[str | StreamMeta]:
        delay, chunks = self._plan(data)
        yield StreamMeta(expected_chunks=len(chunks))  # echo knows its size: progress can be exact
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            yield chunk
        yield StreamMeta(metadata=_usage(data.message))


def _usage(message: str) -> dict[str, Any]:
    """Echo's "tokens" are words: in as many as out (it answers with the message)."""
    words = len(message.split())
    return {"model": "echo", USAGE_KEY: usage_metadata(words, words)}
