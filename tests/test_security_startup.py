"""Start-up refusals of the hardening, as an operator meets them: the CLI run as a child process with a
clean environment in an empty directory (no .env), and the embedded valkey's password."""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from agent_service.cli.embedded import EmbeddedRedis, dev_password, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sqlite_only  # no SQL reached: each command stops before it opens a store

UNREACHABLE_STORES = {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgresql://app@127.0.0.1:1/app"}


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m agent_service …` with only PATH, HOME and `env`, in a directory of its own. A
    command that starts instead of refusing is stopped once it answers (or after 30 s)."""
    port = env.pop("PORT", str(free_port()))
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PORT": port,
             "VAR_DIR": str(tmp_path / "var"), **env}
    proc = subprocess.Popen([sys.executable, "-m", "agent_service", *args], cwd=tmp_path, env=clean, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ended_or_serving() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ended_or_serving, timeout=30, interval=0.1)
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode not in (0, None, -15), (result.returncode, result.stderr[-2000:])
    assert "configuration error" in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


# --- 10. production unless told otherwise; development only on this machine -------------------------------

@pytest.mark.parametrize("command", ["web", "worker", "migrate"])
def test_with_no_app_env_a_service_command_is_production_and_names_what_is_missing(tmp_path: Path, redis_url: str,
                                                                                   command: str) -> None:
    refused(cli(tmp_path, command), "REDIS_URL")
    # given a Redis it still wants the PostgreSQL every machine of a deployment shares, not a local file
    refused(cli(tmp_path, command, REDIS_URL=redis_url), "DATABASE_URL")
    assert not (tmp_path / "var").exists()


def test_production_web_with_its_stores_still_needs_a_jwt_secret(tmp_path: Path) -> None:
    refused(cli(tmp_path, "web", **UNREACHABLE_STORES), "JWT_SECRET")
    refused(cli(tmp_path, "web", JWT_SECRET="secret", **UNREACHABLE_STORES), "JWT_SECRET")


@pytest.mark.parametrize("app_env", ["test", "development"])
@pytest.mark.parametrize("secret", ["secret", "changeme", "x" * 31])
def test_a_weak_jwt_secret_is_refused_in_test_and_development_too(tmp_path: Path, redis_url: str, app_env: str,
                                                                  secret: str) -> None:
    # with a reachable Redis, so that nothing but the secret could stop it
    refused(cli(tmp_path, "web", APP_ENV=app_env, JWT_SECRET=secret, REDIS_URL=redis_url), "JWT_SECRET")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_development_serves_loopback_only(tmp_path: Path, redis_url: str, host: str) -> None:
    refused(cli(tmp_path, "web", APP_ENV="development", HOST=host, REDIS_URL=redis_url), "loopback")
    refused(cli(tmp_path, "dev", HOST=host), "loopback")  # `dev` is development whatever APP_ENV says
    assert not (tmp_path / "var" / "redis").exists()  # refused before its valkey was started


def test_development_serves_loopback_only_when_the_host_comes_from_the_command_line(tmp_path: Path,
                                                                                    redis_url: str) -> None:
    port = str(free_port())
    refused(cli(tmp_path, "web", "--host", "0.0.0.0", "--port", port, APP_ENV="development", PORT=port,
                REDIS_URL=redis_url), "loopback")


# --- 12. the embedded valkey's password -------------------------------------------------------------------

def raw_ping(port: int, *, auth: str | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"AUTH {auth}\r\n" if auth else "").encode() + b"PING\r\n")
        reply = b""
        while reply.count(b"\r\n") < (2 if auth else 1):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
        return reply


def test_an_embedded_valkey_with_a_password_refuses_others_and_keeps_it_off_the_command_line(tmp_path: Path) -> None:
    password = secrets.token_hex(24)
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False, password=password).start()
    try:
        assert server.process is not None
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline, cmdline  # every local user can read a command line
        assert raw_ping(server.port).startswith(b"-NOAUTH")
        assert raw_ping(server.port, auth="not-it").startswith(b"-WRONGPASS")
        with redis.Redis(port=server.port) as anon, pytest.raises(redis.exceptions.AuthenticationError):
            anon.set("k", "v")
        with redis.Redis.from_url(server.url) as owner:
            assert owner.ping()
        for path in (server.data_dir / "auth.conf", server.data_dir):  # what holds it: the owner's alone
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    finally:
        server.stop()


def test_dev_password_is_made_once_per_var_dir_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    first = dev_password(tmp_path / "var")
    assert len(first) >= 32 and first == dev_password(tmp_path / "var")
    assert stat.S_IMODE((tmp_path / "var" / "redis.password").stat().st_mode) == 0o600
    assert dev_password(tmp_path / "other") != first
