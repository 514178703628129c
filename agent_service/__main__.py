"""CLI: dev | web | worker | migrate | create-user | create-api-key | enqueue."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

import msgspec
import uvicorn
from arq.worker import get_kwargs

from agent_service.cli import bootstrap
from agent_service.cli import enqueue as enqueue_cli
from agent_service.cli.dev import run_dev
from agent_service.config import Settings, load_settings, read_env_file
from agent_service.errors import AppError, ConfigError
from agent_service.identity import accounts
from agent_service.identity.schemas import TIERS
from agent_service.kit.deps import open_deps, open_migrated
from agent_service.kit.fast_worker import FastWorker
from agent_service.kit.http_guard import server_options
from agent_service.logging import configure_logging
from agent_service.worker import build_worker_settings


def _web(settings: Settings) -> int:
    settings.require_stores()
    uvicorn.run("agent_service.app:create_app", **server_options(settings))
    return 0


def _worker(settings: Settings) -> int:
    configure_logging(settings, process="worker")
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set (or use `python -m agent_service dev`)")
    settings.require_stores()
    FastWorker(**get_kwargs(build_worker_settings(settings)), outage_exit_seconds=settings.worker_outage_exit_seconds,
               lease_seconds=settings.job_lease_seconds).run()
    return 0


def _migrate(settings: Settings) -> int:
    """Apply the migrations (the Procfile's `release:` step) and create the bootstrap admin."""
    settings.require_stores()
    configure_logging(settings, process="migrate")

    async def go() -> tuple[list[str], bool]:
        db, applied = await open_migrated(settings)
        await db.close()
        deps = await open_deps(msgspec.structs.replace(settings, redis_url=settings.redis_url or NO_REDIS))
        try:
            return applied, await accounts.ensure_bootstrap_admin(deps)
        finally:
            await deps.aclose()

    applied, admin = asyncio.run(go())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    if admin:
        print("created the bootstrap admin (BOOTSTRAP_ADMIN_EMAIL)")
    return 0


def _dev(settings: Settings) -> int:
    return run_dev(settings)


def _with_dev_redis(settings: Settings) -> Settings:
    """Scripts run beside `dev` find its embedded server through var/redis.url."""
    url_file = Path(settings.var_dir) / "redis.url"
    if settings.redis_url or not url_file.is_file():
        return settings
    return msgspec.structs.replace(settings, redis_url=url_file.read_text().strip())


def _development_where_meant(command: str, settings: Settings) -> Settings:
    """Production is the default; development only for `dev`, and for the CLI tools run beside a
    running `dev` (it left var/redis.url) when APP_ENV is not set anywhere."""
    if command == "dev" or (command in TOOLS_BESIDE_DEV and "APP_ENV" not in _explicit_env()
                            and (Path(settings.var_dir) / "redis.url").is_file()):
        return msgspec.structs.replace(settings, app_env="development")
    return settings


def _explicit_env() -> set[str]:
    return set(os.environ) | set(read_env_file(Path(".env")))


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _create_user(settings: Settings, args: argparse.Namespace) -> int:
    user_id = asyncio.run(bootstrap.create_user(settings, email=args.email, password=_read_password(),
                                                admin=args.admin, name=args.name, tier=args.tier))
    print(f"created user {args.email} ({user_id}){' as admin' if args.admin else ''}")
    return 0


def _create_api_key(settings: Settings, args: argparse.Namespace) -> int:
    scopes = tuple(args.scopes.split(",")) if args.scopes else None
    key = asyncio.run(bootstrap.create_api_key(settings, email=args.email, name=args.name, scopes=scopes,
                                               tier=args.tier))
    print(key)
    return 0


COMMANDS = {"dev": _dev, "web": _web, "worker": _worker, "migrate": _migrate}
TOOLS_BESIDE_DEV = ("create-user", "create-api-key", "enqueue")
NO_REDIS = "redis://127.0.0.1:1/0"  # `migrate` needs no Redis: a lazily-connecting pool never used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_service")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        cmd = sub.add_parser(name)
        if name == "web":
            cmd.add_argument("--host", help="bind address (default: HOST)")
            cmd.add_argument("--port", type=int, help="port (default: PORT)")
    cu = sub.add_parser("create-user", help="create a user; the password is read from stdin or a prompt")
    cu.add_argument("--email", required=True)
    cu.add_argument("--admin", action="store_true")
    cu.add_argument("--name", default="")
    cu.add_argument("--tier", choices=TIERS)
    ck = sub.add_parser("create-api-key", help="mint an API key for a user and print it once")
    ck.add_argument("--email", required=True)
    ck.add_argument("--name", default="cli")
    ck.add_argument("--scopes", help="comma-separated; default: everything the user may hold")
    ck.add_argument("--tier", choices=TIERS)
    enqueue_cli.add_arguments(sub.add_parser("enqueue", help="queue an agent invocation by hand"))
    args = parser.parse_args(argv)
    try:
        settings = _development_where_meant(args.command, _with_dev_redis(load_settings()))
        if args.command == "web":
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
            settings = msgspec.structs.replace(settings, **overrides)
        if args.command in ("dev", "web"):
            settings.check_bind()  # after --host: the address that will really be bound
        if args.command == "enqueue":
            return enqueue_cli.main(settings, args)
        if args.command == "create-user":
            return _create_user(settings, args)
        if args.command == "create-api-key":
            return _create_api_key(settings, args)
        return COMMANDS[args.command](settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except AppError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
