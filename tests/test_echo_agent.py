import pytest

from agent_service.agents.echo import EchoAgent
from agent_service.agents.registry import AgentRegistry
from agent_service.agents.schemas import (
    AgentInput,
    InvalidAgentInput,
    PermanentAgentError,
    StreamMeta,
    TransientAgentError,
)
from agent_service.config import load_settings
from agent_service.errors import ConfigError


async def test_stream_joins_back_to_the_message() -> None:
    msg = "  hello   big\nworld "
    items = [c async for c in EchoAgent().stream(AgentInput(message=msg))]
    # echo announces its size first, so a streaming task's progress can be exact
    assert items[0] == StreamMeta(expected_chunks=3)
    # and reports its usage last (words in, words out)
    assert items[-1] == StreamMeta(metadata={"model": "echo", "usage": {"input_tokens": 3, "output_tokens": 3}})
    chunks = items[1:-1]
    assert len(chunks) == 3 and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == msg  # type: ignore[arg-type]


async def test_invoke_is_deterministic() -> None:
    out = await EchoAgent().invoke(AgentInput(message="hi there"))
    assert out.content == "hi there" and out.metadata["chunks"] == 2


@pytest.mark.parametrize("attempt", [1, 2])
async def test_transient_failure_for_the_first_n_attempts(attempt: int) -> None:
    data = AgentInput(message="x", metadata={"fail": "transient", "fail_times": 2}, attempt=attempt)
    with pytest.raises(TransientAgentError):
        await EchoAgent().invoke(data)


async def test_succeeds_after_fail_times() -> None:
    data = AgentInput(message="x", metadata={"fail": "transient", "fail_times": 2}, attempt=3)
    assert (await EchoAgent().invoke(data)).content == "x"


async def test_permanent_failure() -> None:
    with pytest.raises(PermanentAgentError):
        await EchoAgent().invoke(AgentInput(message="x", metadata={"fail": "permanent"}))


@pytest.mark.parametrize("meta", [{"delay": "slow"}, {"delay": -1}, {"delay": 61}, {"fail": "sometimes"},
                                  {"fail": "transient", "fail_times": True}])
async def test_bad_metadata_is_invalid_input(meta: dict[str, object]) -> None:
    with pytest.raises(InvalidAgentInput):
        await EchoAgent().invoke(AgentInput(message="x", metadata=meta))


async def test_registry_loads_user_agents_by_dotted_path() -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        s = load_settings({"AGENTS": "tests.support.agents:CustomAgent"}, env_file=None)
        reg = AgentRegistry.from_settings(s, client)
        assert {a.name for a in reg.all()} == {"echo", "simple_llm_agent", "custom"}
        assert reg.get("simple_llm_agent") is not None and not reg.get("simple_llm_agent").available  # type: ignore[union-attr]
        for bad in ("nope", "tests.nothing:X", "tests.support.agents:Missing", "tests.support.agents:asyncio"):
            with pytest.raises(ConfigError, match="AGENTS"):
                AgentRegistry.from_settings(load_settings({"AGENTS": bad}, env_file=None), client)
        with pytest.raises(ConfigError, match="DEFAULT_AGENT"):
            AgentRegistry.from_settings(load_settings({"DEFAULT_AGENT": "ghost"}, env_file=None), client)
