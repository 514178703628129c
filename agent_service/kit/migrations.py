"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied once, under the write lock.

Web and worker both run this at start; BEGIN IMMEDIATE makes the second one wait for the
first and then find nothing left to do.
"""

from __future__ import annotations

import re
from importlib import resources

from agent_service.clock import iso, utcnow
from agent_service.kit.db import Database

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """(version, filename, sql) for every bundled migration, in order."""
    found = []
    for entry in resources.files("agent_service.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration numbers: {sorted(versions)}")
    return sorted(found)


def _statements(sql: str) -> list[str]:
    # our migrations hold no triggers or string literals with ';', so a split is enough
    return [s.strip() for s in sql.split(";") if s.strip()]


async def migrate(db: Database) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    applied_now: list[str] = []
    async with db.transaction() as tx:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        async with tx.execute("SELECT version FROM schema_migrations") as cur:
            done = {row[0] for row in await cur.fetchall()}
        for version, name, sql in available():
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
