"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied once each, under a lock.

One set serves both dialects; where PostgreSQL needs other SQL, `migrations/postgresql/NNNN_….sql`
replaces the file of the same number. Web, worker and `migrate` all run this at start: the lock
(BEGIN IMMEDIATE on SQLite, a transaction-scoped advisory lock on PostgreSQL) makes every other
process wait for the first and then find nothing left to do, so ten processes starting at once
apply each migration exactly once.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from agent_service.clock import iso, utcnow
from agent_service.kit.db import Database, Dialect

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
ADVISORY_LOCK_KEY = 0x6167_656E_7473  # "agents": one lock id for this schema's migrations


def _files(folder: Traversable) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            version = int(m.group(1))
            if version in found:
                raise RuntimeError(f"duplicate migration number {version} in {folder}")
            found[version] = (entry.name, entry.read_text(encoding="utf-8"))
    return found


def available(dialect: Dialect = "sqlite") -> list[tuple[int, str, str]]:
    """(version, filename, sql) for every bundled migration of `dialect`, in order."""
    root = resources.files("agent_service.migrations")
    found = _files(root)
    own = root / dialect
    if own.is_dir():
        found.update(_files(own))
    return sorted((v, name, sql) for v, (name, sql) in found.items())


def _statements(sql: str) -> list[str]:
    # our migrations hold no triggers or string literals with ';', so a split is enough
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def migrate(db: Database) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    applied_now: list[str] = []
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            await tx.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in await tx.fetchall("SELECT version FROM schema_migrations")}
        for version, name, sql in available(db.dialect):
            if version in done:
                continue
            for statement in _statements(sql):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, iso(utcnow())),
            )
            applied_now.append(name)
    return applied_now
