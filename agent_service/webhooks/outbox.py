"""The consuming side of tasks' `task_events_outbox` (SQL in, Structs out): the dispatcher
(webhooks/dispatch.py) reads its rows and turns each into deliveries, or into nothing, here,
apart from the webhooks' own tables (webhooks/repository.py)."""

from __future__ import annotations

import msgspec

from agent_service.kit.db import Database
from agent_service.webhooks.repository import DeliveryRecord, insert_deliveries
from agent_service.webhooks.schemas import OutboxRow


async def outbox_batch(db: Database, *, limit: int) -> list[OutboxRow]:
    rows = await db.fetchall("SELECT * FROM task_events_outbox ORDER BY id LIMIT ?", (limit,))
    return [msgspec.convert(dict(r), OutboxRow) for r in rows]


async def drop_outbox(db: Database, outbox_ids: list[int]) -> None:
    """Events that make no delivery (most tasks have no webhook and no subscription), in one go."""
    if outbox_ids:
        marks = ", ".join("?" * len(outbox_ids))
        await db.execute(f"DELETE FROM task_events_outbox WHERE id IN ({marks})", outbox_ids)  # noqa: S608


async def take_outbox(db: Database, outbox_id: int, deliveries: list[DeliveryRecord]) -> bool:
    """The event's deliveries in place of its outbox row, in one transaction: whoever deletes the
    row writes them (False: another worker did), and a crash leaves either the row or them."""
    async with db.transaction() as tx:
        if not await tx.execute("DELETE FROM task_events_outbox WHERE id = ?", (outbox_id,)):
            return False
        await insert_deliveries(tx, deliveries)
    return True
