"""Files and directories the service creates hold what other local users must not read (the
SQLite database, audit archives, scratch data): files are created 0600 and directories 0700.

Only what the service itself creates is set: a directory or file that is already there (the
current directory, a path the operator prepared and shares on purpose) keeps its mode.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path | str) -> Path:
    """`path` and its missing parents, each one created here 0700; existing ones are left alone."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it first: its mode is its creator's business
        # mkdir's mode passes through the umask; the directory is ours, so its mode is exactly 0700
        os.chmod(directory, DIR_MODE)
    if not target.is_dir():
        raise NotADirectoryError(str(target))
    return target


def create_private_file(path: Path | str) -> bool:
    """Create `path` empty with mode 0600 unless it exists; True if this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def open_private(path: Path | str, flags: int) -> int:
    """`os.open` for a file that, if this call creates it, is 0600 from its first instant (a later
    chmod would leave a window in which another user could open it)."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
