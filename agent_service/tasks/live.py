"""Every Redis key of a task, in one place: its event stream, live progress, kept result, cancel
flag and deferral count. All expire JOB_RESULT_TTL after their last write; the SQL record
outlives them.

Writes come only from tasks/lifecycle.py (the one writer of task state); services and the
follower read. Each fact is stored once: a chunk is one entry of the event stream (the result's
`chunks` are read back from there), progress is one hash field, and a status read is one
pipelined round trip. A job's writes are added to the round (kit/rounds.py) of the step they
belong to, so that each step of a run costs one round trip whatever it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn, redis_guard
from agent_service.kit.rounds import Reply, Round
from agent_service.tasks.schemas import ChunkEvent, TaskEvent, TaskResult

MAX_EVENTS = 100_000
_enc = msgspec.json.Encoder()
_event = msgspec.json.Decoder(TaskEvent)
_result = msgspec.json.Decoder(TaskResult)


class Snapshot(msgspec.Struct, kw_only=True):
    progress: int | None
    result: TaskResult | None
    chunks: list[str] | None


Published = tuple[TaskEvent, int | None]  # an event, and the task's progress once it is out (None: unchanged)


class RunClaim:
    """What a run's start read and wrote in its round: the deferrals so far, the run mark it
    replaced (a run that never ended: its worker was lost) and whether a cancel was asked for."""

    def __init__(self, deferrals: Reply, previous: Reply, cancel: Reply) -> None:
        self._deferrals, self._previous, self._cancel = deferrals, previous, cancel

    @property
    def deferrals(self) -> int:
        return int(self._deferrals.value or 0)

    @property
    def previous(self) -> bytes | None:
        value: bytes | None = self._previous.value
        return value

    @property
    def worker_lost(self) -> bool:
        return self.previous is not None

    @property
    def cancel_requested(self) -> bool:
        return bool(self._cancel.value)


class TaskLive:
    def __init__(self, redis: RedisConn, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}task:"
        self._ttl = ttl

    @classmethod
    def of(cls, deps: Deps) -> TaskLive:
        return cls(deps.redis, prefix=deps.prefix, ttl=deps.settings.job_result_ttl)

    # --- key names ------------------------------------------------------------------------

    def events_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:events"

    def live_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:live"

    def result_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:result"

    def cancel_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:cancel"

    def deferrals_key(self, task_id: str) -> str:
        return f"{self._prefix}{task_id}:deferrals"

    def run_key(self, task_id: str) -> str:
        """Set while a run is in progress: still there when the next run starts = that worker died."""
        return f"{self._prefix}{task_id}:run"

    # --- writes (tasks/lifecycle.py only) ------------------------------------------------

    @redis_guard
    async def append(self, task_id: str, event: TaskEvent, *, progress: int | None = None) -> None:
        """One event on the task's stream, and its progress, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        if progress is not None:
            pipe.hset(self.live_key(task_id), "progress", str(progress))
            pipe.expire(self.live_key(task_id), self._ttl)
        pipe.xadd(self.events_key(task_id), {"e": _enc.encode(event)}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(self.events_key(task_id), self._ttl)
        await pipe.execute()

    @redis_guard
    async def store_result(self, task_id: str, result: TaskResult) -> None:
        await self._redis.set(self.result_key(task_id), _enc.encode(result), ex=self._ttl)

    def append_into(self, rnd: Round, task_id: str, events: Sequence[Published]) -> None:
        """Events on the task's stream, in order, and the progress the last of them sets."""
        if not events:
            return
        pipe = rnd.pipe
        progress = next((p for _, p in reversed(events) if p is not None), None)
        if progress is not None:
            pipe.hset(self.live_key(task_id), "progress", str(progress))
            pipe.expire(self.live_key(task_id), self._ttl)
        for event, _ in events:
            pipe.xadd(self.events_key(task_id), {"e": _enc.encode(event)}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(self.events_key(task_id), self._ttl)

    def store_result_into(self, rnd: Round, task_id: str, result: TaskResult) -> None:
        rnd.pipe.set(self.result_key(task_id), _enc.encode(result), ex=self._ttl)

    def claim_run_into(self, rnd: Round, task_id: str, token: str) -> RunClaim:
        """Mark a run as in progress; the claim tells whether an earlier run never let go (its
        worker was lost), and reads the deferrals and the cancel flag in the same round."""
        rnd.pipe.get(self.deferrals_key(task_id))
        deferrals = rnd.last()
        rnd.pipe.set(self.run_key(task_id), token, ex=self._ttl, get=True)
        previous = rnd.last()
        rnd.pipe.exists(self.cancel_key(task_id))
        return RunClaim(deferrals, previous, rnd.last())

    def unclaim_run_into(self, rnd: Round, task_id: str, claim: RunClaim) -> None:
        """A start that did not run (deferred): the run mark back as the claim found it."""
        if claim.previous is None:
            rnd.pipe.delete(self.run_key(task_id))
        else:
            rnd.pipe.set(self.run_key(task_id), claim.previous, ex=self._ttl)

    def release_run_into(self, rnd: Round, task_id: str) -> None:
        rnd.pipe.delete(self.run_key(task_id))

    def add_deferral_into(self, rnd: Round, task_id: str) -> None:
        rnd.pipe.incr(self.deferrals_key(task_id))
        rnd.pipe.expire(self.deferrals_key(task_id), self._ttl)

    @redis_guard
    async def request_cancel(self, task_id: str) -> None:
        await self._redis.set(self.cancel_key(task_id), b"1", ex=self._ttl)

    async def add_deferral(self, task_id: str) -> None:
        rnd = Round(self._redis)
        self.add_deferral_into(rnd, task_id)
        await rnd.send()

    async def claim_run(self, task_id: str, token: str) -> bool:
        """Mark a run as in progress; True if an earlier run never let go (its worker was lost)."""
        rnd = Round(self._redis)
        claim = self.claim_run_into(rnd, task_id, token)
        await rnd.send()
        return claim.worker_lost

    @redis_guard
    async def release_run(self, task_id: str) -> None:
        await self._redis.delete(self.run_key(task_id))

    @redis_guard
    async def deferrals(self, task_id: str) -> int:
        """Starts that never ran the agent (job limits, store outages): not runs, not tries."""
        return int(await self._redis.get(self.deferrals_key(task_id)) or 0)

    @redis_guard
    async def reset(self, task_id: str) -> None:
        """Forget a finished run's live state (admin retry): its history must not be replayed as
        the new run's, and a stale cancel must not stop it."""
        await self._redis.delete(self.events_key(task_id), self.live_key(task_id), self.result_key(task_id),
                                 self.cancel_key(task_id), self.deferrals_key(task_id), self.run_key(task_id))

    # --- reads ----------------------------------------------------------------------------

    @redis_guard
    async def snapshot(self, task_id: str, *, with_result: bool, with_chunks: bool) -> Snapshot:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self.live_key(task_id), "progress")
        if with_result:
            pipe.get(self.result_key(task_id))
        if with_chunks:
            pipe.xrange(self.events_key(task_id))
        replies: list[Any] = await pipe.execute()
        progress = int(replies[0]) if replies[0] is not None else None
        result = _result.decode(replies[1]) if with_result and replies[1] is not None else None
        chunks = _latest_chunks(replies[-1]) if with_chunks else None
        return Snapshot(progress=progress, result=result, chunks=chunks)

    @redis_guard
    async def progress_many(self, task_ids: Sequence[str]) -> dict[str, int]:
        if not task_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(self.live_key(task_id), "progress")
        values = await pipe.execute()
        return {t: int(v) for t, v in zip(task_ids, values, strict=True) if v is not None}

    @redis_guard
    async def chunks(self, task_id: str) -> list[str]:
        return _latest_chunks(await self._redis.xrange(self.events_key(task_id)))

    @redis_guard
    async def read(self, task_id: str, *, after: str = "0", block_ms: int | None = None,
                   count: int = 500) -> list[tuple[str, TaskEvent]]:
        """(id, event) for events with ids greater than `after`; with `block_ms`, wait that long
        for the first one."""
        key = self.events_key(task_id)
        if block_ms is None:
            entries = await self._redis.xrange(key, min=f"({after}" if after != "0" else "-", count=count)
        else:
            res = await self._redis.xread({key: after}, count=count, block=block_ms)
            entries = res[0][1] if res else []
        return self.decode(entries)

    @staticmethod
    def decode(entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, TaskEvent]]:
        """(id, event) of raw entries of an events stream, in order (the follower hub reads many
        streams in one XREAD and decodes each entry once for all its followers)."""
        return [(eid.decode(), _event.decode(fields[b"e"])) for eid, fields in entries]

    @redis_guard
    async def cancel_requested(self, task_id: str) -> bool:
        return bool(await self._redis.exists(self.cancel_key(task_id)))



def _latest_chunks(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    """The chunks of the latest attempt, in order (earlier attempts' answers are superseded)."""
    chunks: list[ChunkEvent] = []
    for _, fields in entries:
        event = _event.decode(fields[b"e"])
        if isinstance(event, ChunkEvent):
            if chunks and event.attempt != chunks[-1].attempt:
                chunks = []
            chunks.append(event)
    return [c.content for c in chunks]
