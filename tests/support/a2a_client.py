"""The official A2A SDK (a2a-sdk) as a test's client of the live service: a client per agent URL
that authenticates with an API key, and raw JSON-RPC posts for what the SDK would never send."""

from __future__ import annotations

from typing import Any

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.types.a2a_pb2 import AgentCard, Message, Part, Role, SendMessageRequest, StreamResponse
from google.protobuf.json_format import MessageToDict


def agent_url(base: str, agent: str = "echo") -> str:
    return f"{base}/api/v1/a2a/{agent}"


async def resolve(base: str, agent: str = "echo") -> AgentCard:
    async with httpx.AsyncClient(timeout=10) as http:
        return await A2ACardResolver(http, agent_url(base, agent)).get_agent_card()


def client(card: AgentCard, headers: dict[str, str], *, streaming: bool, timeout: float = 30.0,
           version: str | None = None) -> tuple[Client, httpx.AsyncClient]:
    """A client of `card` (only its interfaces of `version` when given: "0.3" picks the SDK's
    v0.3 transport) and the HTTP client to close after it."""
    if version is not None:
        keep = [i for i in card.supported_interfaces if i.protocol_version == version]
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(keep)
    http = httpx.AsyncClient(headers=headers, timeout=timeout)
    return ClientFactory(ClientConfig(streaming=streaming, httpx_client=http)).create(card), http


def message(text: str, *, metadata: dict[str, Any] | None = None, context_id: str | None = None,
            message_id: str | None = None, **config: Any) -> SendMessageRequest:
    msg = Message(message_id=message_id or f"m-{abs(hash(text)) % 10**9}", role=Role.ROLE_USER,
                  parts=[Part(text=text)])
    if context_id:
        msg.context_id = context_id
    req = SendMessageRequest(message=msg)
    if metadata:
        req.metadata.update(metadata)
    for key, value in config.items():
        setattr(req.configuration, key, value)
    return req


def as_dict(event: StreamResponse) -> dict[str, Any]:
    found: dict[str, Any] = MessageToDict(event)
    return found


def chunks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The artifact updates among stream events, as dicts."""
    return [e["artifactUpdate"] for e in events if "artifactUpdate" in e]


async def rpc(base: str, headers: dict[str, str], body: Any, *, agent: str = "echo",
              content: bytes | None = None, extra: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        if content is not None:
            return await http.post(agent_url(base, agent), content=content,
                                   headers={**headers, "Content-Type": "application/json", **(extra or {})})
        return await http.post(agent_url(base, agent), json=body, headers={**headers, **(extra or {})})
