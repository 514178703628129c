"""The A2A facade judged by the official A2A SDK (a2a-sdk) as its client, against real uvicorn + a
worker: resolve the card, send blocking and streaming messages, get, list, cancel, and subscribe
again after a dropped stream with nothing missing; an A2A task is one of our tasks; v0.3 clients
(the SDK's v0.3 transport) too; bad input gets JSON-RPC error objects, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from a2a.client.client import ClientCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError, UnsupportedOperationError

from tests.support.a2a_client import agent_url, as_dict, chunks, client, message, resolve, rpc
from tests.support.processes import Live, bootstrap_user
from tests.support.stack import audit_rows, status
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import running_receiver

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(12))


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    # push notifications go to a receiver on 127.0.0.1
    return {**env, "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "WEBHOOK_POLL_SECONDS": "1"}


@pytest.fixture
def other(live_service: Live, env: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": bootstrap_user(env, "other@example.com")}


@pytest.fixture
def admin(live_service: Live, env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield {"X-API-Key": bootstrap_user(env, "auditor@example.com", admin=True)}


async def test_card_and_blocking_send_make_one_of_our_tasks(live_service: Live, admin: dict[str, str]) -> None:
    live = live_service
    async with httpx.AsyncClient() as http:
        root = (await http.get(f"{live.base}/.well-known/agent-card.json")).json()
    card = await resolve(live.base)
    assert root["name"] == card.name == "echo" and card.capabilities.streaming
    assert [(i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces] == [
        (agent_url(live.base), "JSONRPC", "1.0"), (agent_url(live.base), "JSONRPC", "0.3")]
    assert {"apiKey", "bearer"} <= set(card.security_schemes)
    assert card.security_schemes["apiKey"].api_key_security_scheme.name == "X-API-Key"

    a2a, http = client(card, live.headers, streaming=False)
    async with http:
        events = [e async for e in a2a.send_message(message("hello there"))]
    assert len(events) == 1
    task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text == "hello there"
    assert task.history[0].parts[0].text == "hello there" and task.context_id
    # the A2A task is one of ours: the tasks API has it, with its session
    ours = status(live.base, live.headers, task.id)
    assert (ours["state"], ours["result"]["content"]) == ("SUCCESS", "hello there")
    wait_until(lambda: any(r["metadata"].get("protocol") == "a2a" and r["metadata"].get("task_id") == task.id
                           for r in audit_rows(live.base, admin, resource_type="agent")),
               timeout=10, interval=0.1, message="no audit row of the A2A send")


async def test_streaming_send_get_list_and_cancel(live_service: Live) -> None:
    live = live_service
    card = await resolve(live.base)
    a2a, http = client(card, live.headers, streaming=True)
    async with http:
        events = [as_dict(e) async for e in a2a.send_message(message(WORDS))]
        assert "task" in events[0]
        task_id = events[0]["task"]["id"]
        assert "".join(c["artifact"]["parts"][0]["text"] for c in chunks(events)) == WORDS
        assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        assert all(c.get("metadata", {}).get("eventId") for c in chunks(events))

        got = await a2a.get_task(GetTaskRequest(id=task_id, history_length=0))
        assert got.status.state == TaskState.TASK_STATE_COMPLETED and not got.history
        assert got.artifacts[0].parts[0].text == WORDS

        # a slow one to cancel (non-blocking: answered at once, still running)
        sender, sender_http = client(await resolve(live.base), live.headers, streaming=False)
        async with sender_http:
            slow = [e async for e in sender.send_message(
                message(WORDS, metadata={"delay": 0.5}, message_id="slow-1", return_immediately=True))]
        slow_id = slow[0].task.id
        assert slow[0].task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
        cancelled = await a2a.cancel_task(CancelTaskRequest(id=slow_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        again = await a2a.cancel_task(CancelTaskRequest(id=slow_id))  # idempotent
        assert again.status.state == TaskState.TASK_STATE_CANCELED
        with pytest.raises(TaskNotCancelableError):
            await a2a.cancel_task(CancelTaskRequest(id=task_id))

        page1 = await a2a.list_tasks(ListTasksRequest(page_size=1))
        assert page1.total_size == 2 and len(page1.tasks) == 1 and page1.next_page_token
        page2 = await a2a.list_tasks(ListTasksRequest(page_size=1, page_token=page1.next_page_token))
        assert {page1.tasks[0].id, page2.tasks[0].id} == {task_id, slow_id} and page2.next_page_token == ""
        done = await a2a.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_CANCELED))
        assert [t.id for t in done.tasks] == [slow_id]


async def test_subscribe_after_a_drop_misses_nothing(live_service: Live) -> None:
    live = live_service
    card = await resolve(live.base)
    a2a, http = client(card, live.headers, streaming=True)
    async with http:
        seen: list[dict[str, Any]] = []
        stream = a2a.send_message(message(WORDS, metadata={"delay": 0.15}))
        async for event in stream:  # read a few chunks, then drop the connection
            seen.append(as_dict(event))
            if len(chunks(seen)) == 3:
                break
        await stream.aclose()
        task_id = seen[0]["task"]["id"]
        last = chunks(seen)[-1]["metadata"]["eventId"]
        await asyncio.sleep(0.6)  # events keep coming while nobody listens

        ctx = ClientCallContext(service_parameters={"Last-Event-ID": last})
        resumed = [as_dict(e) async for e in a2a.subscribe(SubscribeToTaskRequest(id=task_id), context=ctx)]
        # a finished task has nothing to follow without a resume point
        with pytest.raises(UnsupportedOperationError):
            [e async for e in a2a.subscribe(SubscribeToTaskRequest(id=task_id))]
    assert resumed[0]["task"]["id"] == task_id  # the task first, then every event after the last one seen
    got = chunks(seen) + chunks(resumed)
    assert [c["metadata"]["index"] for c in got] == list(range(12))
    assert "".join(c["artifact"]["parts"][0]["text"] for c in got) == WORDS
    assert resumed[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"


async def test_another_users_task_is_not_found(live_service: Live, other: dict[str, str]) -> None:
    live = live_service
    card = await resolve(live.base)
    mine, http = client(card, live.headers, streaming=False)
    theirs, http2 = client(await resolve(live.base), other, streaming=False)
    async with http, http2:
        sent = [e async for e in mine.send_message(message("mine"))]
        task = sent[0].task
        for call in (theirs.get_task(GetTaskRequest(id=task.id)), theirs.cancel_task(CancelTaskRequest(id=task.id))):
            with pytest.raises(TaskNotFoundError):
                await call
        assert (await theirs.list_tasks(ListTasksRequest())).tasks == []


async def test_v03_clients_use_the_same_endpoint(live_service: Live) -> None:
    live = live_service
    a2a, http = client(await resolve(live.base), live.headers, streaming=True, version="0.3")
    async with http:
        events = [as_dict(e) async for e in a2a.send_message(message("old client here"))]
        task_id = events[0]["task"]["id"]
        assert "".join(c["artifact"]["parts"][0]["text"] for c in chunks(events)) == "old client here"
        got = await a2a.get_task(GetTaskRequest(id=task_id))
    assert got.status.state == TaskState.TASK_STATE_COMPLETED
    raw = await rpc(live.base, live.headers, {"jsonrpc": "2.0", "id": 7, "method": "tasks/get",
                                              "params": {"id": task_id}})
    body = raw.json()["result"]
    assert (body["kind"], body["status"]["state"]) == ("task", "completed")
    assert body["artifacts"][0]["parts"][0] == {"kind": "text", "text": "old client here"}


@pytest.mark.parametrize(("body", "code"), [
    (None, -32700),
    ([{"jsonrpc": "2.0", "id": 1, "method": "GetTask"}], -32600),
    ({"jsonrpc": "1.0", "id": 1, "method": "GetTask", "params": {}}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "NoSuchMethod", "params": {}}, -32601),
    ({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": 5}}, -32602),
    ({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {"messageId": "x", "role": "ROLE_USER",
                                                                                 "parts": [{"url": "http://x"}]}}},
     -32005),
    ({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "nope"}}, -32001),
])
async def test_bad_input_gets_json_rpc_errors(live_service: Live, body: Any, code: int) -> None:
    live = live_service
    resp = await rpc(live.base, live.headers, body, content=b"{not json" if body is None else None)
    # a call's error is a 200; a body that is no call at all a 400 (whose body is a problem too)
    assert resp.status_code == (400 if code in (-32700, -32600) else 200), resp.text
    if resp.status_code == 400:
        assert resp.headers["content-type"] == "application/problem+json" and resp.json()["status"] == 400
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and isinstance(err.get("data", []), list)


async def test_limits_and_scopes_are_ours(live_service: Live) -> None:
    live = live_service
    deep = b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": ' + b"[" * 100 + b"]" * 100 + b"}"
    assert (await rpc(live.base, live.headers, None, content=deep)).json()["error"]["code"] == -32600
    huge = b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "' + b"x" * 2_000_000 + b'"}}'
    too_large = await rpc(live.base, live.headers, None, content=huge)
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, -32600)
    assert (await rpc(live.base, {}, {"jsonrpc": "2.0", "id": 1, "method": "GetTask"})).status_code == 401
    async with httpx.AsyncClient() as http:
        key = (await http.post(f"{live.base}/api/v1/api-keys", headers=live.headers,
                               json={"name": "ro", "scopes": ["tasks:read"]})).json()["key"]
    send = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}
    err = (await rpc(live.base, {"X-API-Key": key}, send)).json()["error"]
    assert err["data"][0]["reason"] == "INSUFFICIENT_SCOPE"
    unknown = (await rpc(live.base, live.headers, send, agent="nobody")).json()["error"]
    assert unknown["data"][0]["reason"] == "AGENT_NOT_FOUND"


async def test_push_notification_configs_are_our_webhooks(live_service: Live, other: dict[str, str]) -> None:
    live = live_service
    card = await resolve(live.base)
    a2a, http = client(card, live.headers, streaming=False)
    theirs, http2 = client(await resolve(live.base), other, streaming=False)
    with running_receiver() as receiver:
        async with http, http2:
            # inline: the task's own webhook from its submission on (no event of a fast task is missed)
            req = message("pushed", message_id="push-1")
            req.configuration.task_push_notification_config.url = receiver.url + "?inline"
            sent = [e async for e in a2a.send_message(req)]
            task = sent[0].task
            receiver.secrets.append(task.metadata["pushNotificationAuthentication"]["credentials"])
            # CRUD for a running task: a webhook subscription to its events
            queued = [e async for e in a2a.send_message(message(WORDS, metadata={"delay": 0.2}, message_id="push-2",
                                                                return_immediately=True))]
            slow = queued[0].task
            created = await a2a.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=slow.id, url=receiver.url + "?crud"))
            assert created.id and created.authentication.scheme == "StandardWebhooks"
            receiver.secrets.append(created.authentication.credentials)
            got = await a2a.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=slow.id, id=created.id))
            assert got.url == receiver.url + "?crud"
            listed = await a2a.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(
                task_id=slow.id))
            assert [c.id for c in listed.configs] == [created.id]
            with pytest.raises(TaskNotFoundError):
                await theirs.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=slow.id, id=created.id))
            wait_until(lambda: {r.path for r in receiver.received if r.verified_by
                                and r.body["type"] == "task.succeeded"} >= {"/hook?inline", "/hook?crud"},
                       timeout=30, interval=0.1, message=lambda: f"pushed: {receiver.received}")
            for _ in range(2):  # deleting is idempotent
                await a2a.delete_task_push_notification_config(
                    DeleteTaskPushNotificationConfigRequest(task_id=slow.id, id=created.id))
            assert not (await a2a.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=slow.id))).configs
