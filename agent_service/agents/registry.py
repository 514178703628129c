"""The agent registry: built-ins plus user agents named by `module:attr` in the AGENTS setting."""

from __future__ import annotations

import importlib
from typing import Any

import httpx

from agent_service.agents.echo import EchoAgent
from agent_service.agents.llm import SimpleLLMAgent
from agent_service.agents.schemas import Agent
from agent_service.config import Settings
from agent_service.errors import ConfigError
from agent_service.kit.deps import Deps


def _load(path: str) -> Agent:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"AGENTS: {path!r} is not of the form 'package.module:Name'")
    try:
        target: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"AGENTS: cannot import {path!r}: {exc}") from None
    agent = target() if isinstance(target, type) else target
    if not isinstance(agent, Agent):
        raise ConfigError(f"AGENTS: {path!r} does not provide name, description, invoke and stream")
    return agent


class AgentRegistry:
    def __init__(self, agents: list[Agent]) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            self._agents[agent.name] = agent

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient) -> AgentRegistry:
        agents: list[Agent] = [EchoAgent.for_settings(settings), SimpleLLMAgent(settings, client)]
        agents += [_load(p.strip()) for p in settings.agents.split(",") if p.strip()]
        registry = cls(agents)
        if settings.default_agent not in registry._agents:
            raise ConfigError(f"DEFAULT_AGENT: no agent named {settings.default_agent!r}")
        return registry

    @classmethod
    def of(cls, deps: Deps) -> AgentRegistry:
        return cls.from_settings(deps.settings, deps.http)

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    def all(self) -> list[Agent]:
        return list(self._agents.values())
