"""A2A v1.0 objects as their JSON-RPC binding spells them (ProtoJSON: camelCase names, enum names
as strings, absent fields left out), after specification/a2a.proto. Inputs ignore unknown fields
(the spec's forward-compatibility rule); outputs carry only what we fill in."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# A2A's own JSON-RPC error codes (spec §5.4)
TASK_NOT_FOUND, NOT_CANCELABLE, PUSH_NOT_SUPPORTED, UNSUPPORTED, CONTENT_TYPE = -32001, -32002, -32003, -32004, -32005
VERSION_NOT_SUPPORTED = -32009

TaskState = Literal[
    "TASK_STATE_SUBMITTED", "TASK_STATE_WORKING", "TASK_STATE_COMPLETED", "TASK_STATE_FAILED",
    "TASK_STATE_CANCELED", "TASK_STATE_INPUT_REQUIRED", "TASK_STATE_REJECTED", "TASK_STATE_AUTH_REQUIRED",
]
TERMINAL = frozenset({"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED"})


class _Obj(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Base of A2A objects: camelCase on the wire, unset fields omitted."""


class Part(_Obj):
    text: str | None = None
    raw: str | None = None  # base64
    url: str | None = None
    data: Any = None
    metadata: dict[str, Any] | None = None
    filename: str | None = None
    media_type: str | None = None


class Message(_Obj):
    message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    role: str | int  # ROLE_USER / ROLE_AGENT (ProtoJSON also allows the enum's number)
    parts: list[Part]
    context_id: str | None = None
    task_id: str | None = None
    metadata: dict[str, Any] | None = None
    extensions: list[str] | None = None
    reference_task_ids: list[str] | None = None


class TaskStatus(_Obj):
    state: TaskState
    message: Message | None = None
    timestamp: str | None = None


class Artifact(_Obj):
    artifact_id: str
    parts: list[Part]
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class Task(_Obj):
    id: str
    context_id: str
    status: TaskStatus
    artifacts: list[Artifact] | None = None
    history: list[Message] | None = None
    metadata: dict[str, Any] | None = None


class TaskStatusUpdateEvent(_Obj):
    task_id: str
    context_id: str
    status: TaskStatus
    metadata: dict[str, Any] | None = None


class TaskArtifactUpdateEvent(_Obj):
    task_id: str
    context_id: str
    artifact: Artifact
    append: bool = False
    last_chunk: bool = False
    metadata: dict[str, Any] | None = None


class SendMessageResponse(_Obj):
    """Exactly one of the two."""

    task: Task | None = None
    message: Message | None = None


class StreamResponse(_Obj):
    """One SSE event of SendStreamingMessage / SubscribeToTask: exactly one of the four."""

    task: Task | None = None
    message: Message | None = None
    status_update: TaskStatusUpdateEvent | None = None
    artifact_update: TaskArtifactUpdateEvent | None = None


class ListTasksResponse(_Obj):
    tasks: list[Task]
    next_page_token: str
    page_size: int
    total_size: int


# --- request params ---------------------------------------------------------------------------

HistoryLength = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class SendMessageConfiguration(_Obj):
    accepted_output_modes: list[str] | None = None
    task_push_notification_config: dict[str, Any] | None = None
    history_length: HistoryLength | None = None
    return_immediately: bool = False


class SendMessageParams(_Obj):
    message: Message
    configuration: SendMessageConfiguration | None = None
    metadata: dict[str, Any] | None = None
    tenant: str | None = None


class GetTaskParams(_Obj):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    history_length: HistoryLength | None = None
    tenant: str | None = None


class TaskIdParams(_Obj):
    """CancelTask and SubscribeToTask."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    metadata: dict[str, Any] | None = None
    tenant: str | None = None


class ListTasksParams(_Obj):
    context_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    status: TaskState | Literal["TASK_STATE_UNSPECIFIED"] | None = None
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    page_token: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    history_length: HistoryLength | None = None
    include_artifacts: bool = False
    status_timestamp_after: str | None = None
    tenant: str | None = None


# --- the agent card ---------------------------------------------------------------------------


class AgentInterface(_Obj):
    url: str
    protocol_binding: str
    protocol_version: str


class AgentCapabilities(_Obj):
    streaming: bool
    push_notifications: bool
    extended_agent_card: bool = False


class AgentSkill(_Obj):
    id: str
    name: str
    description: str
    tags: list[str]
    examples: list[str] | None = None
    input_modes: list[str] | None = None
    output_modes: list[str] | None = None


class AgentProvider(_Obj):
    organization: str
    url: str


class AgentCard(_Obj):
    name: str
    description: str
    supported_interfaces: list[AgentInterface]
    version: str
    capabilities: AgentCapabilities
    default_input_modes: list[str]
    default_output_modes: list[str]
    skills: list[AgentSkill]
    security_schemes: dict[str, dict[str, Any]] | None = None
    security_requirements: list[dict[str, Any]] | None = None
    provider: AgentProvider | None = None
    documentation_url: str | None = None
