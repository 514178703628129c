"""SimpleLLMAgent against a real (fake) OpenAI-compatible HTTP server."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from agent_service.agents.llm import SimpleLLMAgent
from agent_service.agents.schemas import (
    AgentInput,
    AgentUnavailable,
    ChatMessage,
    PermanentAgentError,
    StreamItem,
    StreamMeta,
    TransientAgentError,
)
from agent_service.config import load_settings
from tests.support.fake_openai import FakeOpenAI, error, iter_fake_openai, reply, slow, slow_stream, stream_error


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from iter_fake_openai()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_agent(fake: FakeOpenAI, http: httpx.AsyncClient) -> Callable[..., SimpleLLMAgent]:
    def make(**overrides: Any) -> SimpleLLMAgent:
        values: dict[str, Any] = {
            "llm_base_url": fake.base_url, "llm_api_key": "k", "llm_model": "m", "llm_timeout": 0.5, **overrides
        }
        return SimpleLLMAgent(load_settings({}, env_file=None, **values), http)

    return make


@pytest.fixture
def agent(make_agent: Callable[..., SimpleLLMAgent]) -> SimpleLLMAgent:
    return make_agent()


HISTORY = [
    ChatMessage(role="user", content="earlier question"),
    ChatMessage(role="assistant", content="earlier answer"),
]


async def collect(agent: SimpleLLMAgent, data: AgentInput) -> list[StreamItem]:
    return [item async for item in agent.stream(data)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- success --------------------------------------------------------------------------------------


async def test_invoke_returns_the_reply_with_model_and_usage(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    out = await agent.invoke(AgentInput(message="hello there", history=HISTORY))

    assert out.content == "You said: hello there"
    # prompt: system (5 words) + history (2 + 2) + user (2) = 11; completion: 4 words
    assert out.metadata == {"agent": "simple_llm_agent", "model": "m", "tokens_used": 15,
                            "usage": {"input_tokens": 11, "output_tokens": 4}}
    [req] = fake.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer k"
    assert req.body["model"] == "m"
    assert req.body["stream"] is False
    assert req.messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "hello there"},
    ]


async def test_invoke_reports_the_providers_model_and_omits_missing_usage(
    make_agent: Callable[..., SimpleLLMAgent], fake: FakeOpenAI
) -> None:
    agent = make_agent(llm_api_key=None, llm_system_prompt="Be terse.", llm_base_url=fake.base_url + "/")
    fake.script(reply("fixed answer", model="m-2024-06-01", usage=False))

    out = await agent.invoke(AgentInput(message="q"))

    assert out.content == "fixed answer"
    assert out.metadata == {"agent": "simple_llm_agent", "model": "m-2024-06-01"}
    [req] = fake.requests
    assert req.path == "/v1/chat/completions"  # the trailing slash of the base URL is not doubled
    assert "authorization" not in req.headers
    assert req.messages[0] == {"role": "system", "content": "Be terse."}


async def test_stream_chunks_join_to_the_reply_and_meta_comes_last(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    items = await collect(agent, AgentInput(message="stream me please", history=HISTORY))

    *chunks, meta = items
    assert all(isinstance(c, str) and c for c in chunks)
    assert len(chunks) == 5  # "You ", "said: ", "stream ", "me ", "please"
    assert "".join(chunks) == "You said: stream me please"  # type: ignore[arg-type]
    assert isinstance(meta, StreamMeta)
    # prompt: 5 + 4 + 3 = 12; completion: 5
    assert meta.metadata == {"agent": "simple_llm_agent", "model": "m", "tokens_used": 17,
                             "usage": {"input_tokens": 12, "output_tokens": 5}}
    [req] = fake.requests
    assert req.body["stream"] is True
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.headers["authorization"] == "Bearer k"
    assert req.headers["accept"] == "text/event-stream"
    assert req.messages[-1] == {"role": "user", "content": "stream me please"}
    assert len(req.messages) == 4


async def test_slow_stream_within_the_per_read_timeout_succeeds(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(slow_stream(0.15, content="one two three four"))
    started = time.monotonic()

    items = await collect(agent, AgentInput(message="x"))

    assert time.monotonic() - started > 0.5  # longer in total than llm_timeout, but no single gap is
    assert "".join(i for i in items if isinstance(i, str)) == "one two three four"
    assert isinstance(items[-1], StreamMeta) and items[-1].metadata["tokens_used"] == 6 + 4


# --- provider errors ----------------------------------------------------------------------------


async def test_500_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(500))
    with pytest.raises(TransientAgentError) as info:
        await agent.invoke(AgentInput(message="x"))
    assert "500" in str(info.value)
    assert info.value.retry_after is None
    assert len(fake.requests) == 1  # the agent does not retry by itself


async def test_429_is_transient_with_retry_after(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(429, retry_after="7"), error(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    with pytest.raises(TransientAgentError) as info:
        await agent.invoke(AgentInput(message="x"))
    assert info.value.retry_after == 7.0
    with pytest.raises(TransientAgentError) as info:
        await agent.invoke(AgentInput(message="x"))
    assert info.value.retry_after is None  # an HTTP-date is not a number of seconds


async def test_400_is_permanent(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(400))
    with pytest.raises(PermanentAgentError) as info:
        await agent.invoke(AgentInput(message="x"))
    assert not isinstance(info.value, TransientAgentError)
    assert "400" in str(info.value)


async def test_401_in_a_stream_is_permanent(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(401))
    with pytest.raises(PermanentAgentError):
        await collect(agent, AgentInput(message="x"))


async def test_stream_500_before_streaming_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(503, retry_after="2"))
    items: list[StreamItem] = []
    with pytest.raises(TransientAgentError) as info:
        async for item in agent.stream(AgentInput(message="x")):
            items.append(item)
    assert items == []
    assert info.value.retry_after == 2.0
    assert len(fake.requests) == 1 and fake.requests[0].body["stream"] is True


async def test_stream_error_event_mid_stream_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(stream_error(after=2, content="one two three"))
    items: list[StreamItem] = []
    with pytest.raises(TransientAgentError, match="mid-stream"):
        async for item in agent.stream(AgentInput(message="x")):
            items.append(item)
    assert items == ["one ", "two "]  # no StreamMeta: the reply is not reported as complete


async def test_after_an_error_the_next_call_succeeds(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(error(500))
    with pytest.raises(TransientAgentError):
        await agent.invoke(AgentInput(message="x"))
    assert (await agent.invoke(AgentInput(message="again"))).content == "You said: again"


# --- timeouts and connection errors -------------------------------------------------------------


async def test_slow_response_beyond_timeout_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(slow(2.0))
    started = time.monotonic()
    with pytest.raises(TransientAgentError, match="timed out"):
        await agent.invoke(AgentInput(message="x"))
    assert time.monotonic() - started < 1.5
    assert len(fake.requests) == 1


async def test_stream_stalling_beyond_timeout_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(slow_stream(2.0, content="first second"))
    items: list[StreamItem] = []
    started = time.monotonic()
    with pytest.raises(TransientAgentError, match="timed out"):
        async for item in agent.stream(AgentInput(message="x")):
            items.append(item)
    assert items == ["first "]  # what arrived before the stall was passed on
    assert time.monotonic() - started < 1.5


async def test_slow_stream_start_beyond_timeout_is_transient(agent: SimpleLLMAgent, fake: FakeOpenAI) -> None:
    fake.script(slow(2.0))
    with pytest.raises(TransientAgentError, match="timed out"):
        await collect(agent, AgentInput(message="x"))


async def test_connection_refused_is_transient(make_agent: Callable[..., SimpleLLMAgent]) -> None:
    agent = make_agent(llm_base_url=f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(TransientAgentError, match="unreachable"):
        await agent.invoke(AgentInput(message="x"))
    with pytest.raises(TransientAgentError, match="unreachable"):
        await collect(agent, AgentInput(message="x"))


# --- not configured -----------------------------------------------------------------------------


async def test_unconfigured_agent_is_unavailable(http: httpx.AsyncClient) -> None:
    agent = SimpleLLMAgent(load_settings({}, env_file=None), http)
    assert agent.available is False
    with pytest.raises(AgentUnavailable, match="LLM_BASE_URL"):
        await agent.invoke(AgentInput(message="x"))
    with pytest.raises(AgentUnavailable):
        await collect(agent, AgentInput(message="x"))


async def test_configured_agent_is_available(agent: SimpleLLMAgent) -> None:
    assert agent.available is True
