"""A2A's operations over our tasks (JSON-RPC binding, v1.0 method names; a2a_compat.py turns v0.3
calls into these). An A2A task *is* one of our tasks: submitted through tasks' service as a
streaming job (same scopes, ownership, limits, fairness and idempotency), listed by the tasks API
and the dashboard; its contextId is our conversation session.

Re-attaching without loss: every streamed event names its id (`metadata.eventId`, and the SSE
`id:`). SubscribeToTask with the header `Last-Event-ID: <eventId>` answers the task as it is now,
then every event after that id from the task's event stream, none twice, ending with the task.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from agent_service.agents.schemas import InvokeAsyncRequest
from agent_service.errors import AppError, NotFound
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller
from agent_service.kit.io import field_errors
from agent_service.kit.sse import StreamError
from agent_service.protocols import a2a_push as push
from agent_service.protocols import a2a_schemas as a2a
from agent_service.protocols import a2a_tasks as view
from agent_service.protocols import waiting
from agent_service.protocols.a2a_schemas import (
    NOT_CANCELABLE,
    TASK_NOT_FOUND,
    UNSUPPORTED,
)
from agent_service.protocols.jsonrpc import INVALID_PARAMS, SERVER_ERROR, RpcError, from_app_error, params_as
from agent_service.tasks import service as tasks
from agent_service.tasks.schemas import FINISHED_STATES, ChunkEvent, ProgressEvent, StateEvent

CODES = {"task_not_found": TASK_NOT_FOUND, "task_finished": NOT_CANCELABLE}
SCOPES = {"SendMessage": "agents:invoke", "SendStreamingMessage": "agents:invoke", "GetTask": "tasks:read",
          "ListTasks": "tasks:read", "CancelTask": "tasks:cancel", "SubscribeToTask": "tasks:read",
          "GetExtendedAgentCard": None}
PUSH_METHODS = ("CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig",
                "ListTaskPushNotificationConfigs", "DeleteTaskPushNotificationConfig")
STREAMING = frozenset({"SendStreamingMessage", "SubscribeToTask"})
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
CANCEL_WAIT_SECONDS = 5.0  # a running task stops within a second: CancelTask waits to answer CANCELED

TASK_EVENTS = (StateEvent, ProgressEvent, ChunkEvent, StreamError)
Item = tuple[Any, str | None]  # a StreamResponse (or v0.3 result) and its event id


@dataclass
class Call:
    deps: Deps
    caller: Caller
    agent_id: str
    request_id: str | None = None
    last_event_id: str | None = None  # the Last-Event-ID header
    push_secret: str | None = None  # an inline push config's signing secret: shown once, in the first task answered


@dataclass
class Answer:
    value: Any = None
    stream: AsyncIterator[Item] | None = None
    task_id: str | None = None  # for the audit row


def error_data(err: RpcError) -> list[dict[str, Any]]:
    """The spec's error details: an ErrorInfo naming our reason, and BadRequest's field violations."""
    meta = {k: str(v) for k, v in (("status", err.status), ("retryAfter", err.headers.get("Retry-After")))
            if v is not None}
    data: list[dict[str, Any]] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                   "reason": (err.reason or "error").upper(), "domain": "agent-service",
                                   **({"metadata": meta} if meta else {})}]
    if err.errors:
        data.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": e["path"], "description": e["message"]} for e in err.errors]})
    return data


def _rpc(exc: AppError) -> RpcError:
    return from_app_error(exc, CODES)


def check_scope(caller: Caller, method: str) -> None:
    scope = SCOPES.get(method)
    if scope and not caller.has_scope(scope):
        raise RpcError(SERVER_ERROR, f"{method} needs the `{scope}` scope.", reason="insufficient_scope", status=403)


async def dispatch(call: Call, method: str, params: dict[str, Any]) -> Answer:
    handlers: dict[str, Callable[[Call, dict[str, Any]], Any]] = {
        "SendMessage": send_message, "SendStreamingMessage": send_streaming, "GetTask": get_task,
        "ListTasks": list_tasks, "CancelTask": cancel_task, "SubscribeToTask": subscribe,
    }
    if method in PUSH_METHODS:
        return await _push(call, method, params)
    if method == "GetExtendedAgentCard":
        raise RpcError(UNSUPPORTED, "This agent has no extended agent card.", reason="unsupported_operation")
    check_scope(call.caller, method)
    try:
        answer: Answer = await handlers[method](call, params)
    except AppError as exc:
        raise _rpc(exc) from None
    return answer


# --- sending -------------------------------------------------------------------------------


async def _submit(call: Call, params: dict[str, Any]) -> tuple[str, a2a.SendMessageParams]:
    p = params_as(params, a2a.SendMessageParams)
    cfg = p.configuration or a2a.SendMessageConfiguration()
    text = view.message_text(p.message, cfg.accepted_output_modes)
    if p.message.task_id is not None:  # a follow-up to a task: ours take no further input
        await _record(call, p.message.task_id)
        raise RpcError(UNSUPPORTED, "This agent's tasks take no further messages; send a new message (with the "
                       "task's contextId to continue the conversation).", reason="unsupported_operation")
    session_id = view.session_of(call.caller, p.message)
    body: dict[str, Any] = {"message": text, "session_id": session_id, "stream": True,
                            "metadata": {**(p.metadata or {}), **(p.message.metadata or {})}}
    if cfg.task_push_notification_config is not None:  # the task's own webhook, from its submission on
        body["webhook"] = {"url": push.inline_url(cfg.task_push_notification_config)}
    try:
        req = msgspec.convert(body, InvokeAsyncRequest)
    except msgspec.ValidationError:
        errors = [{"path": view.OUR_PATHS.get(e["path"], e["path"]), "message": e["message"]}
                  for e in field_errors(body, InvokeAsyncRequest)]
        raise RpcError(INVALID_PARAMS, "Invalid parameters", reason="validation_error", errors=errors) from None
    # a message sent again with the same messageId (a client's retry) is the same task
    key = f"a2a:{p.message.message_id}" if _KEY.match(p.message.message_id) else None
    accepted, _ = await tasks.enqueue(call.deps, call.agent_id, req, owner_id=call.caller.user_id,
                                      request_id=call.request_id, idempotency_key=key, tier=call.caller.tier,
                                      is_admin=call.caller.is_admin)
    call.push_secret = accepted.webhook_secret
    return accepted.task_id, p


async def _record(call: Call, task_id: str) -> tasks.TaskRecord:
    """The caller's task of this agent: each agent's endpoint is an A2A agent of its own, so another
    agent's task (like another user's) is not found here."""
    record = await tasks.get_record(call.deps, task_id, owner_id=call.caller.user_id, is_admin=call.caller.is_admin)
    if record.agent_id != call.agent_id:
        raise NotFound(f"No task with id {task_id!r}.", code="task_not_found")
    return record


async def _task(call: Call, task_id: str, *, history_length: int | None = None) -> a2a.Task:
    record = await _record(call, task_id)
    return view.task_of(record, await tasks.status_of(call.deps, record), history_length=history_length)


async def _wait_end(call: Call, task_id: str, seconds: float) -> None:
    await waiting.until_end(call.deps, task_id, owner_id=call.caller.user_id, is_admin=call.caller.is_admin,
                            seconds=seconds)


async def send_message(call: Call, params: dict[str, Any]) -> Answer:
    """Blocking by default: the answer is the finished task (or, after SYNC_INVOKE_TIMEOUT, the task
    as it is then: follow it with GetTask or SubscribeToTask); `returnImmediately` answers at once."""
    task_id, p = await _submit(call, params)
    cfg = p.configuration or a2a.SendMessageConfiguration()
    if not cfg.return_immediately:
        await _wait_end(call, task_id, call.deps.settings.sync_invoke_timeout)
    task = _with_secret(call, await _task(call, task_id, history_length=cfg.history_length))
    return Answer(value=a2a.SendMessageResponse(task=task), task_id=task_id)


def _with_secret(call: Call, task: a2a.Task) -> a2a.Task:
    if call.push_secret is not None:
        task.metadata = {**(task.metadata or {}), "pushNotificationAuthentication": {
            "scheme": push.SCHEME, "credentials": call.push_secret}}
    return task


async def _push(call: Call, method: str, params: dict[str, Any]) -> Answer:
    """Push notification configs of the caller's task of this agent (the webhooks domain's)."""
    check_scope(call.caller, "GetTask")  # the webhooks API's own scope: tasks:read
    handler = {"CreateTaskPushNotificationConfig": push.create, "GetTaskPushNotificationConfig": push.get,
               "ListTaskPushNotificationConfigs": push.list_configs,
               "DeleteTaskPushNotificationConfig": push.delete}[method]
    task_id = params.get("taskId")
    if not isinstance(task_id, str):
        raise RpcError(INVALID_PARAMS, "`taskId` names the task.", reason="validation_error",
                       errors=[{"path": "$.taskId", "message": "Required"}])
    try:
        await _record(call, task_id)
        return Answer(value=await handler(call.deps, call.caller.user_id, params), task_id=task_id)
    except AppError as exc:
        raise _rpc(exc) from None


async def send_streaming(call: Call, params: dict[str, Any]) -> Answer:
    task_id, _ = await _submit(call, params)
    try:
        stream = await _follow(call, task_id, None)
    except AppError:  # no stream to be had (too many open): the message is not taken either
        await tasks.cancel(call.deps, task_id, owner_id=call.caller.user_id, is_admin=call.caller.is_admin)
        raise
    return Answer(stream=stream, task_id=task_id)


# --- reading and following -----------------------------------------------------------------


async def get_task(call: Call, params: dict[str, Any]) -> Answer:
    p = params_as(params, a2a.GetTaskParams)
    return Answer(value=await _task(call, p.id, history_length=p.history_length))


async def list_tasks(call: Call, params: dict[str, Any]) -> Answer:
    """The caller's own tasks, newest first, `pageToken` the opaque cursor of the tasks API."""
    p = params_as(params, a2a.ListTasksParams)
    if p.status_timestamp_after is not None:
        raise RpcError(UNSUPPORTED, "statusTimestampAfter is not supported; page through the list instead.",
                       reason="unsupported_operation")
    states: tuple[str, ...] = ()
    if p.status not in (None, "TASK_STATE_UNSPECIFIED"):
        states = view.OUR_STATES.get(p.status, ())
        if not states:  # a state our tasks never take
            return Answer(value=a2a.ListTasksResponse(tasks=[], next_page_token="", page_size=0, total_size=0))
    size = p.page_size or 50
    owner = call.caller.user_id
    records, nxt = await tasks.list_records(call.deps, owner_id=owner, agent_id=call.agent_id, states=states,
                                            session_id=p.context_id, limit=size, cursor=p.page_token or None)
    total = await tasks.count_records(call.deps, owner_id=owner, agent_id=call.agent_id, states=states,
                                      session_id=p.context_id)
    found = [view.task_of(r, await tasks.status_of(call.deps, r) if p.include_artifacts else None,
                          history_length=p.history_length, artifacts=p.include_artifacts) for r in records]
    return Answer(value=a2a.ListTasksResponse(tasks=found, next_page_token=nxt or "", page_size=len(found),
                                              total_size=total))


async def cancel_task(call: Call, params: dict[str, Any]) -> Answer:
    """Idempotent: cancelling a cancelled task answers it again; a completed or failed one is -32002."""
    p = params_as(params, a2a.TaskIdParams)
    owner, admin = call.caller.user_id, call.caller.is_admin
    record = await _record(call, p.id)
    if record.state == "REVOKED":
        return Answer(value=await _task(call, p.id), task_id=p.id)
    if record.state in FINISHED_STATES:
        raise RpcError(NOT_CANCELABLE, f"Task {p.id!r} has already finished ({view.STATES[record.state]}).",
                       reason="task_finished")
    await tasks.cancel(call.deps, p.id, owner_id=owner, is_admin=admin)
    await _wait_end(call, p.id, CANCEL_WAIT_SECONDS)
    return Answer(value=await _task(call, p.id), task_id=p.id)


async def subscribe(call: Call, params: dict[str, Any]) -> Answer:
    p = params_as(params, a2a.TaskIdParams)
    record = await _record(call, p.id)
    if record.state in FINISHED_STATES and call.last_event_id is None:
        raise RpcError(UNSUPPORTED, "The task has finished: GetTask reads it (or send Last-Event-ID to get the events "
                       "after that one).", reason="task_finished")
    return Answer(stream=await _follow(call, p.id, call.last_event_id))


async def _follow(call: Call, task_id: str, after: str | None) -> AsyncIterator[Item]:
    """Open now (so access, the resume point and the stream bounds are errors before any byte);
    then the task as it is, then its events after `after` (all of them without one)."""
    events = await tasks.open_events(call.deps, task_id, owner_id=call.caller.user_id,
                                     is_admin=call.caller.is_admin, last_event_id=after)
    try:
        record = await tasks.get_record(call.deps, task_id, owner_id=call.caller.user_id,
                                        is_admin=call.caller.is_admin)
        status = await tasks.status_of(call.deps, record)
    except BaseException:  # broad: the opened stream (and its slot) is closed whatever failed, then re-raised
        await events.aclose()
        raise
    return _items(call, record, status, events)


async def _items(call: Call, record: tasks.TaskRecord, status: Any, events: Any) -> AsyncIterator[Item]:
    try:
        # artifacts only once the task has finished: while it runs, its chunks follow as updates
        first = view.task_of(record, status, artifacts=record.state in FINISHED_STATES)
        yield a2a.StreamResponse(task=_with_secret(call, first)), None
        async for item in events:
            if item.event is None:
                yield None, None  # keep-alive
                continue
            if not isinstance(item.event, TASK_EVENTS):
                return  # the follower's own last word (lifetime over, let go): resume with Last-Event-ID
            update = view.stream_event(record, item.event, item.event_id)
            if update is not None:
                yield update, item.event_id
    finally:
        await events.aclose()
