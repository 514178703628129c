"""Job payloads: msgspec Structs, sent as msgpack maps (never pickle)."""

from __future__ import annotations

from typing import Any

import msgspec


class AgentJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    task_id: str
    agent_id: str
    message: str
    session_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    owner_id: str | None = None
    request_id: str | None = None
    stream: bool = False
