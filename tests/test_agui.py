"""The AG-UI facade judged by the official AG-UI SDK (ag-ui-protocol): every event the run
endpoint sends is parsed with the SDK's own event types, against real uvicorn + a worker. A run
streams one assistant message between RUN_STARTED and RUN_FINISHED (or ends with RUN_ERROR); its
thread is our session; bad input is an ordinary API error before any event."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from ag_ui.core import EventType, RunAgentInput, UserMessage
from ag_ui.core.events import Event
from pydantic import TypeAdapter

from tests.support.processes import Live, bootstrap_user
from tests.support.stack import audit_rows
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

EVENTS: TypeAdapter[Any] = TypeAdapter(Event)
WORDS = "one two three four"


def run_input(text: str, *, thread: str = "thread-1", run: str = "run-1", **extra: Any) -> dict[str, Any]:
    """A RunAgentInput as the SDK writes it (camelCase JSON)."""
    body = RunAgentInput(thread_id=thread, run_id=run, messages=[UserMessage(id="u1", content=text)], state={},
                         tools=[], context=[], forwarded_props=extra or None)
    return body.model_dump(mode="json", by_alias=True)


def read_run(base: str, headers: dict[str, str], body: dict[str, Any], agent: str = "echo") -> list[Any]:
    """POST the run and parse each SSE event with ag-ui's types (its SSE name is its type)."""
    events: list[Any] = []
    with httpx.stream("POST", f"{base}/api/v1/ag-ui/{agent}", json=body, headers=headers, timeout=30) as resp:
        assert resp.status_code == 200, resp.read().decode()
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                event = EVENTS.validate_json(line[len("data: "):])
                assert event.type.value == name
                events.append(event)
    return events


@pytest.fixture
def admin(live_service: Live, env: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": bootstrap_user(env, "auditor@example.com", admin=True)}


def test_a_run_streams_one_assistant_message(live_service: Live, admin: dict[str, str]) -> None:
    live = live_service
    events = read_run(live.base, live.headers, run_input(WORDS))
    types = [e.type for e in events]
    assert types == [EventType.RUN_STARTED, EventType.TEXT_MESSAGE_START, *[EventType.TEXT_MESSAGE_CONTENT] * 4,
                     EventType.TEXT_MESSAGE_END, EventType.RUN_FINISHED]
    assert (events[0].thread_id, events[0].run_id, events[0].protocol_version) == ("thread-1", "run-1", "1.0")
    assert events[1].role == "assistant" and {e.message_id for e in events[1:-1]} == {events[1].message_id}
    assert "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT) == WORDS
    assert (events[-1].thread_id, events[-1].run_id) == ("thread-1", "run-1")
    wait_until(lambda: any(r["metadata"].get("protocol") == "ag-ui" and r["metadata"].get("run_id") == "run-1"
                           for r in audit_rows(live.base, admin, resource_type="agent")),
               timeout=10, interval=0.1, message="no audit row of the AG-UI run")


def test_the_thread_is_our_session(live_service: Live) -> None:
    live = live_service
    read_run(live.base, live.headers, run_input("first turn", thread="chat-42", run="r1"))
    read_run(live.base, live.headers, run_input("second turn", thread="chat-42", run="r2"))
    session = httpx.get(f"{live.base}/api/v1/sessions/chat-42", headers=live.headers, timeout=10).json()
    assert [m["content"] for m in session["messages"]] == ["first turn", "first turn", "second turn", "second turn"]


def test_an_agent_failure_is_run_error(live_service: Live) -> None:
    live = live_service
    events = read_run(live.base, live.headers, run_input("x", metadata={"fail": "permanent"}))
    assert [e.type for e in events] == [EventType.RUN_STARTED, EventType.RUN_ERROR]
    assert events[1].code == "agent_error" and "permanent" in events[1].message
    refused = read_run(live.base, live.headers, run_input("x", metadata={"delay": "slow"}))
    assert refused[-1].type == EventType.RUN_ERROR and refused[-1].code == "validation_error"


@pytest.mark.parametrize(("body", "status"), [
    ({"threadId": "t", "runId": "r"}, 422),  # no messages
    ({"threadId": "t", "runId": "r", "messages": [{"id": "a", "role": "assistant", "content": "hi"}]}, 422),
    ({"threadId": 5, "runId": "r", "messages": []}, 422),
    ("not json", 400),
])
def test_bad_input_is_refused_before_any_event(live_service: Live, body: Any, status: int) -> None:
    live = live_service
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp = httpx.post(f"{live.base}/api/v1/ag-ui/echo", content=content, timeout=10,
                      headers={**live.headers, "Content-Type": "application/json"})
    assert resp.status_code == status and resp.headers["content-type"] == "application/problem+json", resp.text
    missing = httpx.post(f"{live.base}/api/v1/ag-ui/nobody", json=run_input("hi"), headers=live.headers, timeout=10)
    assert missing.status_code == 404
    assert httpx.post(f"{live.base}/api/v1/ag-ui/echo", json=run_input("hi"), timeout=10).status_code == 401
