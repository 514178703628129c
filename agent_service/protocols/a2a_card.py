"""A2A agent cards: one card per registered agent, each with its own JSON-RPC endpoint.

Why one card per agent rather than one card listing every agent as a skill: A2A addresses an
*agent* by its URL and has no field with which a message picks a skill, so a single card would
need a private metadata convention that no generic client sends. With a card per agent, every
A2A client works unchanged: `create_client(f"{base}/api/v1/a2a/echo")` resolves
`…/a2a/echo/.well-known/agent-card.json` and sends there. The service's own
`/.well-known/agent-card.json` is the default agent's card (DEFAULT_AGENT); GET /api/v1/agents
lists the others.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from agent_service.agents import service as agents
from agent_service.errors import NotFound
from agent_service.kit.deps import Deps
from agent_service.protocols import a2a_schemas as a2a

PATH = "/api/v1/a2a/{agent_id}"
PROTOCOL_VERSIONS = ("1.0", "0.3")  # the JSON-RPC binding of both, at the same URL (method names differ)
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKey": {"apiKeySecurityScheme": {"location": "header", "name": "X-API-Key",
                                        "description": "An API key (`sk_live_…`) with the scopes of each method."}},
    "bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer", "bearerFormat": "JWT",
                                          "description": "An access token from POST /api/v1/auth/token."}},
}
# either one: each requirement object is an alternative
SECURITY: list[dict[str, Any]] = [{"schemes": {"apiKey": {"list": []}}}, {"schemes": {"bearer": {"list": []}}}]


def _version() -> str:
    try:
        return metadata.version("agent-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def endpoint_url(deps: Deps, agent_id: str, base: str | None = None) -> str:
    """The agent's JSON-RPC URL: absolute from PUBLIC_BASE_URL (else the URL the card was asked at)."""
    root = (deps.settings.public_base_url or base or "").rstrip("/")
    return root + PATH.format(agent_id=agent_id)


def card(deps: Deps, agent_id: str | None, *, base: str | None, push: bool) -> a2a.AgentCard:
    name = agent_id or deps.settings.default_agent
    found = next((a for a in agents.list_agents(deps).agents if a.id == name), None)
    if found is None:
        raise NotFound(f"No agent named {name!r}.", code="agent_not_found")
    url = endpoint_url(deps, name, base)
    card = a2a.AgentCard(
        name=found.id, description=found.description,
        supported_interfaces=[a2a.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version=v)
                              for v in PROTOCOL_VERSIONS],
        version=_version(),
        capabilities=a2a.AgentCapabilities(streaming=True, push_notifications=push),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[a2a.AgentSkill(id=found.id, name=found.id, description=found.description,
                               tags=["agent-service", "text"], input_modes=["text/plain"],
                               output_modes=["text/plain"])],
        security_schemes=SECURITY_SCHEMES, security_requirements=SECURITY,
        documentation_url=(deps.settings.public_base_url or base or "").rstrip("/") + "/docs",
    )
    return card


def legacy_fields(card: a2a.AgentCard) -> dict[str, str]:
    """v0.3 clients find the endpoint in `url`/`preferredTransport`/`protocolVersion`; v1.0 clients
    read `supportedInterfaces` and ignore these."""
    return {"url": card.supported_interfaces[0].url, "preferredTransport": "JSONRPC", "protocolVersion": "0.3.0"}
