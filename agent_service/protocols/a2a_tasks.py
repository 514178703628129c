"""Our tasks as A2A sees them, and A2A messages as our invocations: a task record (and its status)
as an A2A Task, each event of the task's event stream as one StreamResponse, a message's parts as
our message text and its contextId as our session. Pure functions: no I/O.

States map one to one where A2A has a state for ours (PENDING → SUBMITTED, STARTED → WORKING,
SUCCESS → COMPLETED, FAILURE → FAILED, REVOKED → CANCELED); RETRY is still work in progress, so
WORKING with a status message saying it retries. REJECTED, INPUT_REQUIRED and AUTH_REQUIRED are
never produced: input we refuse is a JSON-RPC error before any task exists, and our agents
neither ask for input nor for credentials mid-task.

Every streamed event carries its event id in `metadata.eventId` (the SSE `id:` too): the id to
send back as `Last-Event-ID` on SubscribeToTask to get everything after it, none twice.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from agent_service.kit.endpoint import Caller
from agent_service.protocols import a2a_schemas as a2a
from agent_service.protocols.jsonrpc import INVALID_PARAMS, SERVER_ERROR, RpcError
from agent_service.tasks.schemas import ChunkEvent, JobResult, ProgressEvent, StateEvent, TaskEvent, TaskStatus
from agent_service.tasks.service import TaskRecord

STATES: dict[str, a2a.TaskState] = {
    "PENDING": "TASK_STATE_SUBMITTED",
    "STARTED": "TASK_STATE_WORKING",
    "RETRY": "TASK_STATE_WORKING",
    "SUCCESS": "TASK_STATE_COMPLETED",
    "FAILURE": "TASK_STATE_FAILED",
    "REVOKED": "TASK_STATE_CANCELED",
}
# ListTasks' `status` filter in our states (an A2A state we never produce lists nothing)
OUR_STATES: dict[str, tuple[str, ...]] = {}
for ours, theirs in STATES.items():
    OUR_STATES[theirs] = (*OUR_STATES.get(theirs, ()), ours)


_SESSION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TEXT_MODES = ("text/plain", "text/*", "*/*", "text")
OUR_PATHS = {"$.message": "$.message.parts", "$.session_id": "$.message.contextId"}  # our body's → A2A's


def message_text(msg: a2a.Message, accepted: list[str] | None) -> str:
    """The user's text (text parts only: our agents take and give text/plain)."""
    if msg.role not in ("ROLE_USER", 1, "user"):
        raise RpcError(INVALID_PARAMS, "The message must come from the user (ROLE_USER).", reason="validation_error",
                       errors=[{"path": "$.message.role", "message": "Expected ROLE_USER"}])
    if accepted and not any(m in TEXT_MODES for m in accepted):
        raise RpcError(a2a.CONTENT_TYPE, "This agent answers in text/plain only.", reason="content_type_not_supported")
    texts: list[str] = []
    for i, part in enumerate(msg.parts):
        if part.text is None or part.raw is not None or part.url is not None or part.data is not None:
            raise RpcError(a2a.CONTENT_TYPE, f"Part {i} is not text: this agent takes text/plain parts only.",
                           reason="content_type_not_supported")
        texts.append(part.text)
    return "\n".join(texts)


def session_of(caller: Caller, msg: a2a.Message) -> str | None:
    """The session of the message: its contextId (the caller's own conversation; using one needs
    the `sessions` scope), or a new one when the caller may hold sessions, else none."""
    if msg.context_id is not None:
        if not _SESSION_ID.match(msg.context_id):
            raise RpcError(INVALID_PARAMS, "contextId must be 1-128 letters, digits or `._:-`.",
                           reason="validation_error", errors=[{"path": "$.message.contextId", "message": "Invalid"}])
        if not caller.has_scope("sessions"):
            raise RpcError(SERVER_ERROR, "Continuing a context (contextId) needs the `sessions` scope.",
                           reason="insufficient_scope", status=403)
        return msg.context_id
    return f"ctx-{uuid.uuid4().hex}" if caller.has_scope("sessions") else None


def stamp(when: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`, as the spec's timestamps are."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context_of(record: TaskRecord) -> str:
    """A task's contextId: its conversation session, or (no session) a context of its own."""
    return record.session_id or record.id


def answer_id(attempt: int) -> str:
    """The artifact of one attempt's answer: a re-run's chunks start a new answer, not a continuation."""
    return f"answer-{attempt}"


def _agent_message(record: TaskRecord, text: str, suffix: str) -> a2a.Message:
    return a2a.Message(message_id=f"{record.id}-{suffix}", role="ROLE_AGENT", parts=[a2a.Part(text=text)],
                       context_id=context_of(record), task_id=record.id)


def request_message(record: TaskRecord) -> a2a.Message | None:
    """The user's message, read back from the job the task keeps."""
    if not record.payload:
        return None
    job = msgspec.json.decode(record.payload)
    text = job.get("message") if isinstance(job, dict) else None
    if not isinstance(text, str):
        return None
    return a2a.Message(message_id=f"{record.id}-request", role="ROLE_USER", parts=[a2a.Part(text=text)],
                       context_id=context_of(record), task_id=record.id)


def status_message(record: TaskRecord, state: str, error: str | None) -> a2a.Message | None:
    if not error or state not in ("FAILURE", "RETRY", "REVOKED"):
        return None
    return _agent_message(record, f"Retrying: {error}" if state == "RETRY" else error, f"status-{state.lower()}")


def task_of(record: TaskRecord, status: TaskStatus | None = None, *, history_length: int | None = None,
            artifacts: bool = True) -> a2a.Task:
    """The A2A Task of a record; with its status (tasks' service), its answer as an artifact."""
    state = status.state if status is not None else record.state
    error = status.error if status is not None else record.error
    meta: dict[str, Any] = {"agentId": record.agent_id}
    found: list[a2a.Artifact] = []
    if status is not None:
        meta["progress"] = status.progress
        if isinstance(status.result, JobResult):
            if status.result.incomplete:
                meta["incomplete"] = True
            found.append(a2a.Artifact(artifact_id=answer_id(max(status.tries, 1)), name="answer",
                                      parts=[a2a.Part(text=status.result.content)]))
    history = [m for m in (request_message(record),) if m is not None]
    if history_length is not None:
        history = history[len(history) - history_length:] if history_length else []
    return a2a.Task(
        id=record.id, context_id=context_of(record),
        status=a2a.TaskStatus(state=STATES.get(state, "TASK_STATE_FAILED"), timestamp=stamp(record.updated_at),
                              message=status_message(record, state, error)),
        artifacts=found if artifacts else None, history=history or None, metadata=meta,
    )


def _event_time(event_id: str | None) -> str:
    """An event's time: its stream id begins with the Redis time it was added at, in ms."""
    ms = int(event_id.split("-", 1)[0]) if event_id else None
    return stamp(datetime.fromtimestamp(ms / 1000, UTC) if ms is not None else datetime.now(UTC))


def stream_event(record: TaskRecord, event: TaskEvent, event_id: str | None) -> a2a.StreamResponse | None:
    """One event of the task's stream as an A2A update (None: nothing A2A would show)."""
    meta: dict[str, Any] = {"eventId": event_id} if event_id else {}
    task_id, context_id = record.id, context_of(record)
    if isinstance(event, ChunkEvent):
        artifact = a2a.Artifact(artifact_id=answer_id(event.attempt), name="answer",
                                parts=[a2a.Part(text=event.content)])
        return a2a.StreamResponse(artifact_update=a2a.TaskArtifactUpdateEvent(
            task_id=task_id, context_id=context_id, artifact=artifact, append=event.index > 0,
            metadata={**meta, "progress": event.progress, "attempt": event.attempt, "index": event.index}))
    if isinstance(event, StateEvent | ProgressEvent):
        state = event.state if isinstance(event, StateEvent) else "STARTED"
        error = event.error if isinstance(event, StateEvent) else None
        status = a2a.TaskStatus(state=STATES.get(state, "TASK_STATE_FAILED"), timestamp=_event_time(event_id),
                                message=status_message(record, state, error))
        return a2a.StreamResponse(status_update=a2a.TaskStatusUpdateEvent(
            task_id=task_id, context_id=context_id, status=status,
            metadata={**meta, "progress": event.progress, "attempt": event.attempt}))
    return None  # an error event of the stream itself: the stream's end says it
