"""Maintenance jobs through a real worker: on demand over HTTP, and cron slots that run once
however many workers enqueue them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arq.constants import in_progress_key_prefix, result_key_prefix

from agent_service.audit.service import writer as audit_writer
from agent_service.config import Settings
from agent_service.worker import build_worker_settings
from tests.support.apps import add_user, app_client
from tests.support.tasks import finished
from tests.support.waiting import wait_for

Start = Callable[..., Any]


async def test_trigger_over_http_answers_in_task_shape(make_settings, start_worker: Start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    temp = tmp_path / "scratch"
    (temp / "sub").mkdir(parents=True)
    old = temp / "sub" / "old.bin"
    old.write_bytes(b"x" * 2048)
    (temp / "new.txt").write_text("keep")
    past = time.time() - 48 * 3600
    os.utime(old, (past, past))
    os.utime(temp / "sub", (past, past))
    settings: Settings = make_settings(temp_dir=str(temp))
    await start_worker(settings)
    async with app_client(settings) as client:
        admin = {"X-API-Key": await add_user(client.app, "ops@example.com", admin=True)}
        assert (await client.post("/api/v1/jobs/maintenance/cleanup_temp_files")).status_code == 403
        assert (await client.post("/api/v1/jobs/maintenance/nope", headers=admin)).status_code == 404
        resp = await client.post("/api/v1/jobs/maintenance/cleanup_temp_files", headers=admin)
        assert resp.status_code == 202 and resp.headers["location"] == resp.json()["status_url"]
        client.headers["X-API-Key"] = admin["X-API-Key"]
        s = await finished(client, resp.json()["task_id"])
        assert s["state"] == "SUCCESS" and s["progress"] == 100 and s["kind"] == "maintenance"
        result = s["result"]
        assert result["deleted_files"] == 1 and result["freed_bytes"] == 2048 and result["deleted_dirs"] == 1
        assert not old.exists() and (temp / "new.txt").exists()
        last = (await client.get("/api/v1/jobs/maintenance")).json()["jobs"]
        by_name = {j["name"]: j for j in last}
        assert set(by_name) == {"cleanup_expired_sessions", "archive_old_audit_logs", "cleanup_token_blacklist",
                                "cleanup_temp_files"}
        assert by_name["cleanup_temp_files"]["last"]["result"]["deleted_files"] == 1
        assert by_name["cleanup_temp_files"]["schedule"] == "0 3 * * *"
        assert by_name["archive_old_audit_logs"]["last"] is None
        # the worker writes its own audit entry for the run (actor: system), within a flush interval

        async def system_entry() -> bool:
            await audit_writer(client.app.state.deps).flush()
            rows = (await client.get("/api/v1/audit-logs", params={"resource_type": "maintenance"})).json()["items"]
            return any(r["actor"] == "system" and r["resource_id"] == "cleanup_temp_files" for r in rows)

        await wait_for(system_entry, timeout=5)


async def test_a_cron_slot_runs_once_across_two_workers(make_settings, start_worker: Start) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings()
    w1 = await start_worker(settings)
    w2 = await start_worker(settings)
    name = settings.redis_key_prefix + "cleanup_token_blacklist"  # the job's arq function name
    slot_id = f"{name}:1767225600000"
    async with app_client(settings) as client:
        deps = client.app.state.deps
        # both workers enqueue the same slot (their clocks disagree, the slot does not)
        jobs = await asyncio.gather(w1.pool.enqueue_job(name, _job_id=slot_id,
                                                        _queue_name=settings.queue_name),
                                    w2.pool.enqueue_job(name, _job_id=slot_id,
                                                        _queue_name=settings.queue_name))
        assert sum(j is not None for j in jobs) == 1
        await wait_for(lambda: deps.redis.exists(result_key_prefix + slot_id), timeout=10)
        # a late worker re-enqueues the slot after arq's guards are gone (result expired, and the
        # in-progress marker arq keeps 60 s after a cron job): our slot claim still stops a second run
        await deps.redis.delete(result_key_prefix + slot_id, in_progress_key_prefix + slot_id)
        again = await w2.pool.enqueue_job(name, _job_id=slot_id, _queue_name=settings.queue_name)
        assert again is not None
        await wait_for(lambda: deps.redis.exists(result_key_prefix + slot_id), timeout=10)

        async def system_runs() -> int:
            for w in (w1, w2):  # what the workers recorded is in their audit writers: write it out
                await audit_writer(w.ctx["deps"]).flush()
            runs = await deps.db.fetchall(
                "SELECT COUNT(*) FROM audit_logs WHERE resource_type = 'maintenance' AND actor = 'system'")
            return int(runs[0][0])

        assert await wait_for(system_runs, timeout=5) == 1
        assert w1.jobs_complete + w2.jobs_complete == 2  # two deliveries, one real run


async def test_cron_jobs_are_registered_with_the_settings_schedules(make_settings) -> None:  # type: ignore[no-untyped-def]
    ws = build_worker_settings(make_settings(cron_cleanup_temp_files="30 4 * * *"))
    # arq names carry REDIS_KEY_PREFIX: arq keys a cron run by "<name>:<slot>" across the whole Redis
    prefix = make_settings().redis_key_prefix
    crons = {c.name.removeprefix(prefix): c for c in ws.cron_jobs}  # type: ignore[attr-defined]
    assert all(c.name.startswith(prefix) for c in ws.cron_jobs)  # type: ignore[attr-defined]
    assert set(crons) == {"cleanup_expired_sessions", "archive_old_audit_logs", "cleanup_token_blacklist",
                          "cleanup_temp_files"}
    assert crons["cleanup_temp_files"].hour == {4} and crons["cleanup_temp_files"].minute == {30}
    assert crons["cleanup_token_blacklist"].hour == {0, 6, 12, 18} and all(c.unique for c in crons.values())
