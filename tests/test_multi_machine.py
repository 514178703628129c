"""A multi-machine deployment: two web and two worker processes, each in its own working directory
with its own VAR_DIR (no file in common), sharing only one valkey and one PostgreSQL. What one
machine does must be seen by every other one, a cron slot runs once however many workers there
are, and stopping and restarting every machine loses nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from signal import SIGTERM
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import EmbeddedRedis
from agent_service.cli.embedded_postgres import EmbeddedPostgres
from tests.support.logs import logged, matching
from tests.support.stack import (
    HTTP_TIMEOUT,
    Machine,
    all_items,
    audit_rows,
    create_user,
    key_prefix,
    postgres_server,
    read_events,
    status,
    submit,
    wait_ready,
    wait_state,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.com", "admin password!"
USER_EMAIL, USER_PASSWORD = "user@example.com", "user password!"
CRON_JOB = "cleanup_temp_files"


class Stack:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.web_a = Machine(root, "web-a", "web", env)
        self.web_b = Machine(root, "web-b", "web", env)
        self.worker_a = Machine(root, "worker-a", "worker", env)
        self.worker_b = Machine(root, "worker-b", "worker", env)
        self.admin: dict[str, str] = {}
        self.user: dict[str, str] = {}

    @property
    def machines(self) -> list[Machine]:
        return [self.web_a, self.web_b, self.worker_a, self.worker_b]

    @property
    def workers(self) -> list[Machine]:
        return [self.worker_a, self.worker_b]

    def logs(self) -> str:
        return "\n".join(m.tail() for m in self.machines)

    def start(self) -> None:
        for m in self.machines:  # all at once: four processes migrating one database under its lock
            m.start()

    def stop(self) -> dict[str, int | None]:
        # web first (nothing new is queued), then the workers drain
        return {m.name: m.stop() for m in self.machines}

    def wait_up(self) -> None:
        for web in (self.web_a, self.web_b):
            wait_ready(web.base, timeout=40, on_fail=self.logs)

    def wait_workers(self, count: int = 2) -> list[dict[str, Any]]:
        """Until the admin overview (from either web) lists `count` workers with a fresh heartbeat."""
        def enough() -> list[dict[str, Any]] | None:
            resp = httpx.get(f"{self.web_a.base}/api/v1/jobs", headers=self.admin, timeout=HTTP_TIMEOUT)
            assert resp.status_code == 200, resp.text
            workers: list[dict[str, Any]] = resp.json()["workers"]
            return workers if len(workers) >= count else None

        found: list[dict[str, Any]] = wait_until(enough, timeout=30, interval=0.1,
                                                 message=lambda: "workers missing\n" + self.logs())
        return found


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis,
          postgres: EmbeddedPostgres) -> Iterator[Stack]:
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": postgres.create_database(),
        "REDIS_KEY_PREFIX": key_prefix(),
        "CRON_CLEANUP_TEMP_FILES": "* * * * *",  # a slot every minute
        "WORKER_DRAIN_SECONDS": "5",
        "DB_POOL_MAX": "5",
    }
    s = Stack(tmp_path_factory.mktemp("machines"), env)
    s.start()
    try:
        s.wait_up()
        # the users are made through the CLI on a machine of their own (it too shares only the stores)
        cli = Machine(s.root, "cli", "cli", env)
        s.admin = {"X-API-Key": create_user(cli, ADMIN_EMAIL, ADMIN_PASSWORD, admin=True)}
        s.user = {"X-API-Key": create_user(cli, USER_EMAIL, USER_PASSWORD)}
        s.wait_workers(2)
        yield s
    finally:
        s.stop()


def tokens(base: str, email: str, password: str) -> dict[str, Any]:
    resp = httpx.post(f"{base}/api/v1/auth/token", json={"email": email, "password": password}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def succeeded_in(machine: Machine, task_id: str) -> int:
    """How many `job.succeeded` lines this worker logged for the task."""
    return len(matching(machine.output(), event="job.succeeded", task_id=task_id))


@pytest.mark.timeout(120)
def test_tasks_cancel_events_and_logout_cross_machines(stack: Stack) -> None:
    a, b, user = stack.web_a.base, stack.web_b.base, stack.user

    # tasks submitted to either web complete, each run by exactly one of the workers
    submitted = {submit(web, user, {"message": f"hello {i} via {name}", "stream": i % 2 == 1}): (web, i, name)
                 for i in range(6) for web, name in ((a, "a"), (b, "b"))}
    for task_id, (web, i, name) in submitted.items():
        other = b if web == a else a
        done = wait_state(other, user, task_id, timeout=30)
        assert done["state"] == "SUCCESS", done
        assert done["result"]["content"] == f"hello {i} via {name}"
    for task_id in submitted:
        def runs(t: str = task_id) -> list[int]:
            return [succeeded_in(w, t) for w in stack.workers]

        wait_until(lambda: sum(runs()), timeout=10, message=stack.logs)  # the log line follows the state
        assert sorted(runs()) == [0, 1], (task_id, runs())

    # a task submitted on A and cancelled through B ends REVOKED
    words = " ".join(f"w{i}" for i in range(40))
    long_task = submit(a, user, {"message": words, "stream": True, "metadata": {"delay": 0.25}})
    wait_state(b, user, long_task, ("STARTED",), timeout=20)
    cancel = httpx.post(f"{b}/api/v1/agents/tasks/{long_task}/cancel", headers=user, timeout=HTTP_TIMEOUT)
    assert cancel.status_code == 202, cancel.text  # running on one of the workers: it stops shortly
    revoked = wait_state(a, user, long_task, timeout=15)
    assert revoked["state"] == "REVOKED", revoked
    assert status(b, user, long_task)["state"] == "REVOKED"
    assert sum(succeeded_in(w, long_task) for w in stack.workers) == 0

    # the events of a task submitted on A, followed from B, to its end
    message = "one two three four five"
    followed = submit(a, user, {"message": message, "stream": True, "metadata": {"delay": 0.2}})
    events = read_events(b, user, followed, timeout=30)
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states[-1] == "SUCCESS" and "STARTED" in states, events
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == message, events

    # a logout on A makes the token a 401 on B at once
    t = tokens(a, USER_EMAIL, USER_PASSWORD)
    bearer = {"Authorization": f"Bearer {t['access_token']}"}
    for web in (a, b):
        assert httpx.get(f"{web}/api/v1/auth/me", headers=bearer, timeout=HTTP_TIMEOUT).status_code == 200
    out = httpx.post(f"{a}/api/v1/auth/logout", headers=bearer, json={"refresh_token": t["refresh_token"]},
                     timeout=HTTP_TIMEOUT)
    assert out.status_code == 204, out.text
    for web in (b, a):
        resp = httpx.get(f"{web}/api/v1/auth/me", headers=bearer, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 401 and resp.json()["code"] == "token_revoked", resp.text
    refresh = httpx.post(f"{b}/api/v1/auth/refresh", json={"refresh_token": t["refresh_token"]}, timeout=HTTP_TIMEOUT)
    assert refresh.status_code == 401, refresh.text

    # the machines share no file: each one's cwd and VAR_DIR hold only its own, and no SQLite file exists
    for m in stack.machines:
        assert not list(m.dir.rglob("*.db")), list(m.dir.rglob("*"))
    for m in stack.machines:
        assert "Traceback" not in m.output() and not logged(m.output(), status=500), m.tail()


def cron_rows(stack: Stack) -> list[dict[str, Any]]:
    rows = audit_rows(stack.web_b.base, stack.admin, resource_type="maintenance", resource_id=CRON_JOB)
    return [r for r in rows if r["metadata"].get("trigger") == "cron"]


@pytest.mark.timeout(120)
def test_a_cron_slot_runs_once_with_two_workers(stack: Stack) -> None:
    started_ms = int(time.time() * 1000)
    # the next minute boundary (at most 60 s away) is the first slot both workers see
    first: list[dict[str, Any]] = wait_until(
        lambda: [r for r in cron_rows(stack) if int(r["metadata"]["slot"]) > started_ms], timeout=75, interval=0.5,
        message=lambda: "no cron run of the next slot\n" + stack.logs())
    slot = first[0]["metadata"]["slot"]
    assert datetime.fromtimestamp(int(slot) / 1000, UTC).second == 0  # arq runs a cron at hh:mm:00.123456

    # both workers are past the slot (each has sent a heartbeat well after it), so each has had its go
    def both_past() -> bool:
        workers = stack.wait_workers(2)
        return sum(datetime.fromisoformat(w["last_heartbeat"]).timestamp() > int(slot) / 1000 + 3
                   for w in workers) >= 2

    wait_until(both_past, timeout=20, interval=0.2, message=stack.logs)
    # the workers' audit writers flush every AUDIT_FLUSH_INTERVAL: a second run would be in by now
    runs = [r for r in cron_rows(stack) if r["metadata"]["slot"] == slot]
    assert len(runs) == 1, runs
    assert runs[0]["actor"] == "system" and runs[0]["status"] == 200

    done_lines = [ln for w in stack.workers for ln in matching(w.output(), event="maintenance.done", job=CRON_JOB,
                                                                 slot=slot)]
    assert len(done_lines) == 1, done_lines

    resp = httpx.get(f"{stack.web_a.base}/api/v1/jobs/maintenance", headers=stack.admin, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    job = next(j for j in resp.json()["jobs"] if j["name"] == CRON_JOB)
    assert job["schedule"] == "* * * * *"
    assert job["last"]["trigger"] == "cron" and int(job["last"]["slot"]) >= int(slot), job


def snapshot(stack: Stack) -> dict[str, Any]:
    a, admin, user = stack.web_a.base, stack.admin, stack.user
    return {
        "users": sorted(u["id"] for u in all_items(a, "/api/v1/users", admin)),
        "keys": sorted(k["id"] for k in all_items(a, "/api/v1/api-keys", user)),
        "sessions": {s["id"]: s["message_count"] for s in all_items(a, "/api/v1/sessions", user)},
        "tasks": {t["task_id"]: t["state"] for t in all_items(a, "/api/v1/agents/tasks", user)},
    }


@pytest.mark.timeout(120)
def test_stopping_and_restarting_every_machine_loses_nothing(stack: Stack) -> None:
    a, b, user = stack.web_a.base, stack.web_b.base, stack.user

    # a key minted over HTTP on B, sessions written through either web, a task from each
    made = httpx.post(f"{b}/api/v1/api-keys", headers=user, json={"name": "restart", "scopes": ["agents:invoke"]},
                      timeout=HTTP_TIMEOUT)
    assert made.status_code == 201, made.text
    new_key = {"X-API-Key": made.json()["key"]}
    session = f"s-{uuid.uuid4().hex[:8]}"
    for web, text in ((a, "first on a"), (b, "second on b")):
        resp = httpx.post(f"{web}/api/v1/agents/echo/invoke", headers=user,
                          json={"message": text, "session_id": session}, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, resp.text
    for web in (a, b):
        wait_state(web, user, submit(web, user, {"message": "before restart"}), ("SUCCESS",), timeout=30)

    # audit rows: what is stored up to now (proved flushed by waiting for a marked request's row) …
    marker = f"flushed-{uuid.uuid4().hex[:8]}"
    resp = httpx.post(f"{a}/api/v1/agents/echo/invoke", headers={**user, "X-Request-ID": marker},
                      json={"message": "marker"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    wait_until(lambda: audit_rows(b, stack.admin, request_id=marker), timeout=15, message=stack.logs)
    cutoff = datetime.now(UTC).isoformat()
    stored = {r["id"] for r in audit_rows(b, stack.admin, until=cutoff)}

    before = snapshot(stack)
    assert session in before["sessions"] and before["sessions"][session] == 4, before["sessions"]

    # … and requests answered just before the stop, whose rows may still sit in the writers' buffers
    last_ids = [f"last-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
    for i, rid in enumerate(last_ids):
        web = (a, b)[i % 2]
        resp = httpx.post(f"{web}/api/v1/agents/echo/invoke", headers={**user, "X-Request-ID": rid},
                          json={"message": f"last {i}", "session_id": session}, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, resp.text

    codes = stack.stop()
    # a clean stop: workers exit 0; uvicorn re-raises the SIGTERM it handled once it has shut down
    assert codes == {"web-a": -SIGTERM, "web-b": -SIGTERM, "worker-a": 0, "worker-b": 0}, f"{codes}\n{stack.logs()}"
    for web in (stack.web_a, stack.web_b):
        assert "Application shutdown complete." in web.output(), web.tail()
    stack.start()
    stack.wait_up()
    stack.wait_workers(2)

    after = snapshot(stack)
    assert after["users"] == before["users"]
    assert after["keys"] == before["keys"]
    assert after["sessions"] == {**before["sessions"], session: before["sessions"][session] + 8}
    for task_id, state in before["tasks"].items():
        assert after["tasks"].get(task_id) == state, (task_id, state, after["tasks"].get(task_id))
    assert stored <= {r["id"] for r in audit_rows(a, stack.admin, until=cutoff)}
    for rid in last_ids:
        assert audit_rows(a, stack.admin, request_id=rid), f"audit row of {rid} lost\n{stack.logs()}"

    # the credentials still work on both webs, and work goes on
    for web in (a, b):
        assert httpx.get(f"{web}/api/v1/auth/me", headers=new_key, timeout=HTTP_TIMEOUT).status_code == 200
        assert tokens(web, USER_EMAIL, USER_PASSWORD)["access_token"]
        done = wait_state(web, user, submit(web, user, {"message": "after restart"}), timeout=30)
        assert done["state"] == "SUCCESS", done
    history = httpx.get(f"{b}/api/v1/sessions/{session}", headers=user, timeout=HTTP_TIMEOUT)
    assert history.status_code == 200, history.text
    assert [m["content"] for m in history.json()["messages"] if m["role"] == "user"] == [
        "first on a", "second on b", *(f"last {i}" for i in range(4))], json.dumps(history.json())[:2000]
