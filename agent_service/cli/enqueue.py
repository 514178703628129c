"""Enqueue by hand: `python -m agent_service enqueue` and `scripts/enqueue.py`.

Queues an agent invocation (or a maintenance job, `--job NAME`) straight into Redis, as the web
API would, prints the task id, and with --wait draws a progress bar from the task's live events
until it ends. The exit code is 0 for SUCCESS and 1 otherwise. An entry-point module: only entry points import it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from agent_service.agents.schemas import InvokeAsyncRequest
from agent_service.compose import MAINTENANCE, provide_parts
from agent_service.config import Settings
from agent_service.errors import AppError, NotFound, ValidationFailed
from agent_service.identity import repository as repo
from agent_service.kit.deps import Deps, open_deps
from agent_service.logging import configure_logging
from agent_service.tasks import admin as job_admin
from agent_service.tasks import lifecycle
from agent_service.tasks import service as task_service
from agent_service.tasks.schemas import FINISHED_STATES, ChunkEvent, ProgressEvent, StateEvent

BAR = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default=None, help="agent id (default: DEFAULT_AGENT)")
    parser.add_argument("--message", "-m", help="the message (agent invocations)")
    parser.add_argument("--job", choices=sorted(j.name for j in MAINTENANCE), help="run a maintenance job instead")
    parser.add_argument("--session", default=None, help="conversation session id")
    parser.add_argument("--stream", action="store_true", help="run the streaming job")
    parser.add_argument("--metadata", default=None, help="JSON object passed to the agent")
    parser.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    parser.add_argument("--as", dest="as_email", default=None, help="owner's email (default: DEV_ADMIN_EMAIL)")
    parser.add_argument("--wait", action="store_true", help="show progress until the task ends")


def _bar(progress: int, state: str) -> str:
    filled = BAR * progress // 100
    return f"\r[{'#' * filled}{'.' * (BAR - filled)}] {progress:3d}% {state:<8}"


async def _follow(deps: Deps, task_id: str, owner_id: str) -> str:
    after = "0"
    progress, state = 0, "PENDING"
    live = lifecycle.live(deps)
    while state not in FINISHED_STATES:
        for event_id, event in await live.read(task_id, after=after, block_ms=1000):
            after = event_id
            if isinstance(event, StateEvent | ProgressEvent | ChunkEvent):
                progress = event.progress
            if isinstance(event, StateEvent):
                state = event.state
        record = await task_service.get_record(deps, task_id, owner_id=owner_id, is_admin=True)
        state = record.state if record.state in FINISHED_STATES else state
        sys.stderr.write(_bar(lifecycle.progress_of(state, progress), state))
        sys.stderr.flush()
    sys.stderr.write("\n")
    return state


async def run(settings: Settings, args: argparse.Namespace) -> int:
    # stdout carries the task id and the result; logs go to stderr, and only warnings
    configure_logging(settings, process="enqueue", stream=sys.stderr, level="WARNING")
    deps = await open_deps(settings)
    provide_parts(deps)
    try:
        email = args.as_email or settings.dev_admin_email
        user = await repo.user_by_email(deps.db, email)
        if user is None:
            raise NotFound(f"No user {email!r}: create one with `python -m agent_service create-user`.")
        if args.job:
            accepted = await job_admin.trigger_maintenance(deps, args.job, owner_id=user.id, request_id=None)
        else:
            if not args.message:
                raise ValidationFailed("--message is required unless --job is given.")
            meta: dict[str, Any] | None = msgspec.json.decode(args.metadata) if args.metadata else None
            req = msgspec.convert({"message": args.message, "session_id": args.session, "metadata": meta,
                                   "stream": args.stream, "priority": args.priority}, InvokeAsyncRequest)
            accepted, _ = await task_service.enqueue(deps, args.agent or settings.default_agent, req,
                                                   owner_id=user.id, request_id=None, tier=user.tier,
                                                   is_admin="admin" in user.roles)
        print(accepted.task_id, flush=True)
        if not args.wait:
            return 0
        state = await _follow(deps, accepted.task_id, user.id)
        final = await task_service.get_status(deps, accepted.task_id, owner_id=user.id, is_admin=True)
        print(msgspec.json.format(msgspec.json.encode(final), indent=2).decode())
        return 0 if state == "SUCCESS" else 1
    except (AppError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    finally:
        await deps.aclose()


def main(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(run(settings, args))
