"""`python -m agent_service dev`: Redis (embedded unless REDIS_URL is set), web and worker on one
machine, their logs interleaved with a prefix each; Ctrl-C stops all three and leaves no orphan."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from agent_service.cli.bootstrap import ensure_dev_admin
from agent_service.cli.embedded import EmbeddedRedis, dev_password
from agent_service.config import Settings

STOP_TIMEOUT = 15.0


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:<6} | ".encode()
    while line := await stream.readline():
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.flush()


async def _spawn(name: str, argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # we deliver the signals ourselves, once, in order
    )
    assert proc.stdout is not None
    asyncio.get_running_loop().create_task(_pump(name, proc.stdout))
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _supervise(settings: Settings, env: dict[str, str]) -> int:
    py = sys.executable
    worker = await _spawn("worker", [py, "-m", "agent_service", "worker"], env)
    web = await _spawn("web", [py, "-m", "agent_service", "web"], env)
    base = f"http://{settings.host}:{settings.port}"
    print(f"dev    | API     {base}/api/v1/agents\ndev    | docs    {base}/docs\n"
          f"dev    | health  {base}/health/ready\ndev    | Ctrl-C stops everything", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(p.wait()) for p in (web, worker)]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*waiters, stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0 if stop.is_set() else 1  # a child that died on its own is an error
    await asyncio.gather(_stop(web), _stop(worker))
    stopper.cancel()
    return code


def run_dev(settings: Settings) -> int:
    env = dict(os.environ, APP_ENV="development")  # the one place development is the default
    # a local receiver (127.0.0.1) is what a developer's webhooks point at; metadata addresses stay refused
    env.setdefault("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    server: EmbeddedRedis | None = None
    if not settings.redis_url:
        var = Path(settings.var_dir)
        server = EmbeddedRedis(var / "redis", password=dev_password(var))
        server.start()
        env["REDIS_URL"] = server.url
        print(f"redis  | embedded server on 127.0.0.1:{server.port}, password in {var / 'redis.password'} "
              f"(AOF under {server.data_dir})", flush=True)
        url_file = var / "redis.url"  # how scripts beside `dev` find it; it holds the password: 0600
        url_file.unlink(missing_ok=True)
        with os.fdopen(os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(server.url + "\n")
    try:
        created = asyncio.run(ensure_dev_admin(settings))
        if created:
            email, password, key = created
            print(f"dev    | first start: created admin {email} (password {password})\n"
                  f"dev    | API key (shown once): {key}\n"
                  f"dev    |   export API_KEY={key}", flush=True)
        return asyncio.run(_supervise(settings, env))
    finally:
        if server is not None:
            server.stop()
            (Path(settings.var_dir) / "redis.url").unlink(missing_ok=True)
