"""The identity domain's maintenance: sweep revoked-token entries whose token has expired."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from agent_service.clock import Clock, iso, utcnow
from agent_service.identity.schemas import BlacklistCleanup
from agent_service.identity.tokens import revoked_prefix
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob
from agent_service.logging import get_logger

log = get_logger("agent_service.maintenance")
# keys per SCAN step and per pipeline: each round trip is short, so Redis never stalls
BLACKLIST_SCAN_COUNT = 500


def _parse_exp(raw: bytes | str) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


async def cleanup_token_blacklist(
    redis: Redis, now: datetime, *, key_prefix: str, clock: Clock = utcnow, scan_count: int = BLACKLIST_SCAN_COUNT
) -> dict[str, Any]:
    """Remove revoked-token entries whose token has expired; leave live ones (restoring a lost TTL).

    Entries normally expire by their own TTL; this catches those that lost it (restored from a
    backup or AOF without TTLs, written by hand). SCAN may return a key twice during a rehash, so
    `scanned`/`remaining` are approximate in that case; `removed` counts actual deletions."""
    now_ts = now.timestamp()
    scanned = removed = remaining = ttl_restored = 0
    cursor: int = 0
    while True:
        cursor, keys = await redis.scan(cursor, match=revoked_prefix(key_prefix) + "*", count=scan_count)
        if keys:
            read = redis.pipeline(transaction=False)
            for key in keys:
                read.get(key)
                read.ttl(key)
            # a key of the wrong type answers GET with an error: treated like an unparsable value
            replies = await read.execute(raise_on_error=False)
            write = redis.pipeline(transaction=False)
            ops: list[str] = []
            for i, key in enumerate(keys):
                value, ttl = replies[2 * i], replies[2 * i + 1]
                scanned += 1
                if isinstance(ttl, Exception):
                    raise ttl
                if isinstance(value, Exception):
                    value = f"<{value}>"
                if value is None:  # expired or removed since the SCAN
                    continue
                exp = _parse_exp(value)
                if exp is None:
                    if ttl >= 0:  # it will go by itself; we cannot tell when its token expires
                        remaining += 1
                        continue
                    log.warning("maintenance.blacklist_unparsable", key=_text(key), value=_text(value)[:64])
                elif exp > now_ts:
                    remaining += 1
                    if ttl == -1:
                        write.expireat(key, math.ceil(exp))
                        ops.append("expire")
                    continue
                write.unlink(key)
                ops.append("unlink")
            if ops:
                for op, outcome in zip(ops, await write.execute(), strict=True):
                    removed += int(outcome) if op == "unlink" else 0
                    ttl_restored += int(bool(outcome)) if op == "expire" else 0
        if cursor == 0:
            break
    result = {
        "scanned": scanned,
        "removed": removed,
        "remaining": remaining,
        "ttl_restored": ttl_restored,
        "status": "success",
        "started_at": iso(now),
        "completed_at": iso(clock()),
    }
    log.info("maintenance.blacklist_cleaned", **result)
    return result



def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def _run(deps: Deps) -> BlacklistCleanup:
    result = await cleanup_token_blacklist(deps.redis, deps.clock(), key_prefix=deps.prefix, clock=deps.clock)
    return msgspec.convert(result, BlacklistCleanup)


CLEANUP_TOKEN_BLACKLIST = MaintenanceJob(name="cleanup_token_blacklist",
                                         schedule_setting="cron_cleanup_token_blacklist", run=_run)
