"""The webhooks tables (SQL in, Structs out): subscriptions, deliveries and their attempts. The
consuming side of tasks' `task_events_outbox` is webhooks/outbox.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database, Row, Tx
from agent_service.kit.pagination import Keyset
from agent_service.kit.pagination import where as where_sql
from agent_service.webhooks.schemas import AttemptRecord, Outcome

KEYSET = Keyset(time="created_at", id="id")


class SubscriptionRecord(msgspec.Struct, kw_only=True):
    id: str
    owner_id: str
    url: str
    events: list[str]
    description: str
    task_id: str | None
    secret: str
    previous_secret: str | None
    previous_expires_at: datetime | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryRecord(msgspec.Struct, kw_only=True):
    id: str
    owner_id: str
    subscription_id: str | None
    task_id: str | None
    event: str
    url: str
    payload: str
    state: str
    attempts: int
    step: int
    next_attempt_at: datetime | None
    claimed_until: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    batch_id: str | None = None  # a batch's own webhook: signed with the batch's secret


def _sub(row: Row) -> SubscriptionRecord:
    data = dict(row)
    data["events"] = msgspec.json.decode(data["events"])
    return msgspec.convert(data, SubscriptionRecord, strict=False)


def _delivery(row: Row) -> DeliveryRecord:
    return msgspec.convert(dict(row), DeliveryRecord)


# --- subscriptions --------------------------------------------------------------------------

async def create_subscription(db: Database, rec: SubscriptionRecord, *, max_live: int) -> bool:
    """False (nothing written) if the owner already holds `max_live` subscriptions of their own
    (those for one task, made by a protocol, do not count)."""
    changed = await db.execute(
        "INSERT INTO webhook_subscriptions (id, owner_id, url, events, description, task_id, secret, enabled,"
        " created_at, updated_at) SELECT ?, ?, ?, ?, ?, ?, ?, 1, ?, ?"
        " WHERE (SELECT COUNT(*) FROM webhook_subscriptions WHERE owner_id = ? AND task_id IS NULL) < ?",
        (rec.id, rec.owner_id, rec.url, msgspec.json.encode(rec.events).decode(), rec.description, rec.task_id,
         rec.secret, iso(rec.created_at), iso(rec.updated_at), rec.owner_id,
         max_live if rec.task_id is None else 2**62),
    )
    return changed > 0


async def get_subscription(db: Database, sub_id: str, *, owner_id: str | None) -> SubscriptionRecord | None:
    """`owner_id=None`: whoever owns it (the delivery side)."""
    sql, params = "SELECT * FROM webhook_subscriptions WHERE id = ?", [sub_id]
    if owner_id is not None:
        sql += " AND owner_id = ?"
        params.append(owner_id)
    row = await db.fetchone(sql, params)
    return _sub(row) if row else None


async def list_subscriptions(db: Database, *, owner_id: str, limit: int,
                             cursor: str | None) -> tuple[list[SubscriptionRecord], str | None]:
    where, params = ["owner_id = ?"], [owner_id]
    if (after := KEYSET.after(cursor)) is not None:
        where.append(after.sql)
        params += after.params
    rows = await db.fetchall(f"SELECT * FROM webhook_subscriptions{where_sql(where)}{KEYSET.order_limit}",
                             (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_sub(r) for r in page], nxt


async def subscriptions_for(db: Database, *, owner_id: str, task_id: str | None) -> list[SubscriptionRecord]:
    """The owner's enabled subscriptions that may hear about this task (its own and the general
    ones); with `task_id` None, all of them (the caller filters by task)."""
    if task_id is None:
        rows = await db.fetchall("SELECT * FROM webhook_subscriptions WHERE owner_id = ? AND enabled = 1",
                                 (owner_id,))
    else:
        rows = await db.fetchall("SELECT * FROM webhook_subscriptions WHERE owner_id = ? AND enabled = 1 "
                                 "AND (task_id IS NULL OR task_id = ?)", (owner_id, task_id))
    return [_sub(r) for r in rows]


async def update_subscription(db: Database, sub_id: str, *, owner_id: str, now: datetime,
                              values: dict[str, Any]) -> bool:
    """Set `values` (column → value; `events` a list); enabling clears the reason and the failures."""
    if "events" in values:
        values = {**values, "events": msgspec.json.encode(values["events"]).decode()}
    if values.get("enabled") is True:
        values = {**values, "disabled_reason": None, "disabled_at": None, "failing_since": None}
    sets = ", ".join(f"{column} = ?" for column in values)
    params = [int(v) if isinstance(v, bool) else v for v in values.values()]
    changed = await db.execute(
        f"UPDATE webhook_subscriptions SET {sets}{', ' if sets else ''}updated_at = ? WHERE id = ? AND owner_id = ?",
        (*params, iso(now), sub_id, owner_id))
    return changed > 0


async def rotate_secret(db: Database, sub_id: str, *, owner_id: str, secret: str, previous_until: datetime,
                        now: datetime) -> bool:
    changed = await db.execute(
        "UPDATE webhook_subscriptions SET previous_secret = secret, previous_expires_at = ?, secret = ?,"
        " updated_at = ? WHERE id = ? AND owner_id = ?",
        (iso(previous_until), secret, iso(now), sub_id, owner_id))
    return changed > 0


async def delete_subscription(db: Database, sub_id: str, *, owner_id: str) -> bool:
    """The subscription and its deliveries' history, at once."""
    async with db.transaction() as tx:
        changed = await tx.execute("DELETE FROM webhook_subscriptions WHERE id = ? AND owner_id = ?",
                                   (sub_id, owner_id))
        if changed:
            await tx.execute("DELETE FROM webhook_attempts WHERE delivery_id IN"
                             " (SELECT id FROM webhook_deliveries WHERE subscription_id = ?)", (sub_id,))
            await tx.execute("DELETE FROM webhook_deliveries WHERE subscription_id = ?", (sub_id,))
    return changed > 0


# --- deliveries -----------------------------------------------------------------------------

# an id already there is kept as it is: a message whose id is derived from what it is about (a
# batch's `batch.completed`) is written once, however many workers see its cause
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (id, owner_id, subscription_id, task_id, batch_id, event, url, payload, state,"
    " attempts, step, next_attempt_at, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?) ON CONFLICT DO NOTHING")


async def insert_deliveries(tx: Tx, deliveries: list[DeliveryRecord]) -> None:
    for d in deliveries:
        await tx.execute(_INSERT_DELIVERY, (d.id, d.owner_id, d.subscription_id, d.task_id, d.batch_id, d.event, d.url,
                                            d.payload, iso(d.next_attempt_at), iso(d.created_at), iso(d.created_at)))


async def add_deliveries(db: Database, deliveries: list[DeliveryRecord]) -> None:
    async with db.transaction() as tx:
        await insert_deliveries(tx, deliveries)


async def claim_due(db: Database, *, now: datetime, until: datetime, limit: int) -> list[DeliveryRecord]:
    """Up to `limit` due deliveries, each claimed for this worker until `until` and counted as an
    attempt; rows another worker is claiming are skipped, not waited for (PostgreSQL)."""
    lock = f"{db.for_update} SKIP LOCKED" if db.for_update else ""  # SQLite: the statement holds the file lock
    rows = await db.fetchall(
        "UPDATE webhook_deliveries SET claimed_until = ?, attempts = attempts + 1, updated_at = ? WHERE id IN"
        " (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
        f" AND (claimed_until IS NULL OR claimed_until <= ?) ORDER BY next_attempt_at LIMIT ?{lock})"
        " AND state = 'pending' RETURNING *",
        (iso(until), iso(now), iso(now), iso(now), limit))
    return [_delivery(r) for r in rows]


async def finish_attempt(db: Database, d: DeliveryRecord, out: Outcome, *, disable_before: datetime,
                         disable_reason: str) -> bool:
    """Record the attempt and its delivery's next state; a subscription failing since before
    `disable_before` is disabled (its pending deliveries fail with it). True if it was disabled."""
    a, now = out.attempt, iso(out.now)
    ok = out.state == "succeeded"
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error, response)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (a.delivery_id, a.attempt, iso(a.started_at), a.status_code, a.latency_ms, a.error, a.response))
        await tx.execute(
            "UPDATE webhook_deliveries SET state = ?, step = ?, next_attempt_at = ?, claimed_until = NULL,"
            " last_status = ?, last_error = ?, updated_at = ?, completed_at = ? WHERE id = ?",
            (out.state, out.step, iso(out.next_attempt_at), a.status_code, a.error, now,
             None if out.state == "pending" else now, d.id))
        if d.subscription_id is None:
            return False
        if ok:
            await tx.execute("UPDATE webhook_subscriptions SET failing_since = NULL WHERE id = ?"
                             " AND failing_since IS NOT NULL", (d.subscription_id,))
            return False
        await tx.execute("UPDATE webhook_subscriptions SET failing_since = COALESCE(failing_since, ?) WHERE id = ?",
                         (iso(a.started_at), d.subscription_id))
        disabled = await tx.execute(
            "UPDATE webhook_subscriptions SET enabled = 0, disabled_reason = ?, disabled_at = ?, updated_at = ?"
            " WHERE id = ? AND enabled = 1 AND failing_since <= ?",
            (disable_reason, now, now, d.subscription_id, iso(disable_before)))
        if disabled:
            await tx.execute(
                "UPDATE webhook_deliveries SET state = 'failed', last_error = ?, completed_at = ?, updated_at = ?"
                " WHERE subscription_id = ? AND state = 'pending'",
                ("The subscription was disabled.", now, now, d.subscription_id))
    return disabled > 0


async def abandon(db: Database, delivery_id: str, *, reason: str, now: datetime) -> None:
    """Failed without an attempt (its subscription or task is gone or disabled)."""
    await db.execute(
        "UPDATE webhook_deliveries SET state = 'failed', last_error = ?, claimed_until = NULL, completed_at = ?,"
        " updated_at = ? WHERE id = ?", (reason, iso(now), iso(now), delivery_id))


async def rearm(db: Database, delivery_id: str, *, now: datetime) -> bool:
    """Due now, with the retry schedule from its start (a redelivery); the same id."""
    changed = await db.execute(
        "UPDATE webhook_deliveries SET state = 'pending', step = 0, next_attempt_at = ?, claimed_until = NULL,"
        " completed_at = NULL, updated_at = ? WHERE id = ? AND (claimed_until IS NULL OR claimed_until <= ?"
        " OR state <> 'pending')", (iso(now), iso(now), delivery_id, iso(now)))
    return changed > 0


async def get_delivery(db: Database, delivery_id: str) -> DeliveryRecord | None:
    row = await db.fetchone("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,))
    return _delivery(row) if row else None


async def list_deliveries(db: Database, *, owner_id: str | None, subscription_id: str | None = None,
                          task_id: str | None = None, state: str | None, limit: int,
                          cursor: str | None) -> tuple[list[DeliveryRecord], str | None]:
    filters = {"owner_id": owner_id, "subscription_id": subscription_id, "task_id": task_id, "state": state}
    where = [f"{column} = ?" for column, value in filters.items() if value is not None]
    params: list[Any] = [value for value in filters.values() if value is not None]
    if (after := KEYSET.after(cursor)) is not None:
        where.append(after.sql)
        params += after.params
    rows = await db.fetchall(f"SELECT * FROM webhook_deliveries{where_sql(where)}{KEYSET.order_limit}",
                             (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_delivery(r) for r in page], nxt


async def with_attempts(db: Database, ids: list[str]) -> list[tuple[DeliveryRecord, list[AttemptRecord]]]:
    """The deliveries `ids` (in that order) with their attempts, oldest first, read in one statement:
    a delivery is never shown older or newer than its history."""
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    rows = await db.fetchall(
        "SELECT d.*, a.attempt AS a_attempt, a.started_at AS a_started_at, a.status_code AS a_status_code,"
        " a.latency_ms AS a_latency_ms, a.error AS a_error, a.response AS a_response FROM webhook_deliveries d"
        f" LEFT JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.id IN ({marks}) ORDER BY a.attempt, a.id",
        ids)
    found: dict[str, tuple[DeliveryRecord, list[AttemptRecord]]] = {}
    for r in rows:
        if r["id"] not in found:
            found[r["id"]] = (msgspec.convert({k: r[k] for k in DeliveryRecord.__struct_fields__}, DeliveryRecord), [])
        if r["a_attempt"] is not None:
            fields = {k: r[f"a_{k}"] for k in AttemptRecord.__struct_fields__ if k != "delivery_id"}
            found[r["id"]][1].append(msgspec.convert({**fields, "delivery_id": r["id"]}, AttemptRecord))
    return [found[i] for i in ids if i in found]
