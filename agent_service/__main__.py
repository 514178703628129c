"""CLI: dev | web | worker | migrate."""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn
from arq.worker import get_kwargs

from agent_service.config import Settings, load_settings
from agent_service.dev import run_dev
from agent_service.errors import ConfigError
from agent_service.jobs.fast_worker import FastWorker
from agent_service.logging import configure_logging
from agent_service.storage.db import Database
from agent_service.storage.migrate import migrate
from agent_service.worker_factory import build_worker_settings


def _web(settings: Settings) -> int:
    uvicorn.run("agent_service.app:create_app", factory=True, host=settings.host, port=settings.port,
                log_config=None, access_log=False, proxy_headers=True, timeout_graceful_shutdown=10)
    return 0


def _worker(settings: Settings) -> int:
    configure_logging(settings, process="worker")
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set (or use `python -m agent_service dev`)")
    FastWorker(**get_kwargs(build_worker_settings(settings))).run()
    return 0


def _migrate(settings: Settings) -> int:
    async def go() -> list[str]:
        db = await Database.open(settings.database_path, busy_timeout_ms=settings.db_busy_timeout_ms)
        try:
            return await migrate(db)
        finally:
            await db.close()

    applied = asyncio.run(go())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _dev(settings: Settings) -> int:
    return run_dev(settings)


COMMANDS = {"dev": _dev, "web": _web, "worker": _worker, "migrate": _migrate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_service")
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return COMMANDS[args.command](settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
