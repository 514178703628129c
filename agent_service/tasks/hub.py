"""One Redis reader per web process for every live follower of task events.

A follower registers its task's events key and the last id it has. One background task, on ONE
dedicated Redis connection, runs `XREAD BLOCK … STREAMS k1..kn id1..idn` over every registered key
and hands each key's new entries (decoded once, shared) to that key's followers. An open stream
costs memory, not a Redis connection: a thousand followers are one blocked client.

No gaps, no duplicates: a key is read after its cursor, the lowest position any of its followers
needs. A follower takes from a read only if the read started at or before its own position, and
only the entries after that position. One that joins behind the cursor (it caught up from the
history while the reader ran ahead) waits for the re-read from its position.

Waking the blocked reader: a follower that joins a key the blocked read does not cover (a new key,
or behind the cursor) must not wait the block out. The read also covers a wake stream of this
hub's own, and joining adds an entry to it (at most one per blocked read). Unlike CLIENT UNBLOCK it
has no race (an entry added before the XREAD reaches the server makes that XREAD return at once),
needs no client id tracked across reconnections, and no CLIENT command, which some managed Redis
services refuse.

Outages: the reader retries with jittered backoff; followers keep their registration and position
and the reads resume from there. A follower that cannot keep up (MAX_INBOX entries waiting) or that
a closing process lets go is *dropped*: it sends what it has and ends cleanly.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn
from agent_service.logging import get_logger
from agent_service.tasks.follower import Entry, Follower, parse_id
from agent_service.tasks.live import TaskLive

log = get_logger("agent_service.tasks")

BLOCK_MS = 5_000
COUNT = 500  # entries per key per read
MAX_INBOX = 1_000  # entries waiting for one follower; beyond, it is dropped (it resumes by reconnecting)
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
WAKE_TTL_MS = 3_600_000  # a dead process's wake stream goes away by itself
WAKE_SLICE = 32  # followers woken per turn of the loop

Decode = Callable[[Sequence[Any]], list[Entry]]


class _Key:
    __slots__ = ("cursor", "followers", "position")

    def __init__(self, cursor: str, position: tuple[int, int]) -> None:
        self.cursor, self.position = cursor, position
        self.followers: set[Follower] = set()


class FollowerHub:
    def __init__(self, connect: Callable[[], Redis], pool: RedisConn, *, wake_key: str, decode: Decode,
                 block_ms: int = BLOCK_MS, max_inbox: int = MAX_INBOX) -> None:
        self._connect = connect
        self._pool = pool
        self._wake_key = wake_key
        self._wake_seen = "0-0"
        self._decode = decode
        self._block_ms = block_ms
        self._max_inbox = max_inbox
        self._keys: dict[str, _Key] = {}
        self._conn: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._has_keys = asyncio.Event()
        self._wake_wanted = asyncio.Event()
        self._reads = 0  # reads issued so far
        self._reading = 0  # the read in flight (0: none)
        self._stale = False  # a registration the in-flight read does not cover
        self._woken = 0  # the last read a wake was sent for
        self._closed = False
        self.followers = 0

    @classmethod
    def of(cls, deps: Deps) -> FollowerHub:
        """The web process's hub (a Deps part, built on the first follower; closed with the process)."""
        settings = deps.settings
        url = settings.redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set")
        block_ms = BLOCK_MS
        # a name CLIENT LIST shows, so an operator (or a test) can tell the reader from the pool
        name = re.sub(r"[^\x21-\x7e]", "_", f"{deps.prefix}followers:{os.getpid()}")

        def connect() -> Redis:
            client: Redis = Redis.from_url(url, single_connection_client=True, client_name=name,
                                           socket_connect_timeout=settings.redis_timeout,
                                           socket_timeout=block_ms / 1000 + settings.redis_timeout)
            return client

        hub = cls(connect, deps.redis, wake_key=f"{deps.prefix}followers:wake:{uuid.uuid4().hex}",
                  decode=TaskLive.decode, block_ms=block_ms)
        deps.on_close(hub.aclose)
        return hub

    # --- followers ------------------------------------------------------------------------

    def subscribe(self, key: str, after: str) -> Follower:
        """Follow `key` from after `after`. Synchronous: nothing can be appended unseen between a
        caller's last history read and its registration."""
        follower = Follower(key, after)
        if self._closed:
            follower._drop()
            return follower
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(after, follower.position)
            self._stale = True
        elif follower.position < entry.position:
            entry.cursor, entry.position = after, follower.position
            self._stale = True
        entry.followers.add(follower)
        self.followers += 1
        self._start()
        self._has_keys.set()
        if self._stale:
            self._wake_wanted.set()
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        entry = self._keys.get(follower.key)
        if entry is None or follower not in entry.followers:
            return  # dropped already
        entry.followers.discard(follower)
        self.followers -= 1
        if not entry.followers:
            del self._keys[follower.key]

    def _drop(self, follower: Follower) -> None:
        self.unsubscribe(follower)
        follower._drop()

    # --- the reader ---------------------------------------------------------------------------

    def _start(self) -> None:
        # both loops only end when cancelled (the reader retries whatever fails): started once
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._read_loop(), name="followers-reader"),
                           loop.create_task(self._wake_loop(), name="followers-waker")]

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay, down_since = BACKOFF_MIN, None
        while not self._closed:
            if not self._keys:
                self._has_keys.clear()
                await self._has_keys.wait()
                continue
            streams = {self._wake_key: self._wake_seen, **{k: e.cursor for k, e in self._keys.items()}}
            self._reads += 1
            self._reading, self._stale = self._reads, False
            try:
                if self._conn is None:
                    self._conn = self._connect()
                reply = await self._conn.xread(streams, count=COUNT, block=self._block_ms)  # type: ignore[arg-type]
            except Exception as exc:  # broad: this one task serves every follower; whatever fails, it retries
                self._reading = 0
                await self._disconnect()
                if not isinstance(exc, RedisError | OSError):
                    log.exception("followers.read_failed")
                elif down_since is None:
                    down_since = loop.time()
                    log.warning("followers.redis_unavailable", error=type(exc).__name__, followers=self.followers)
                await asyncio.sleep(delay * (0.5 + random.random()))  # jittered: web processes do not stampede
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            self._reading = 0
            if down_since is not None:
                log.info("followers.redis_back", down_s=round(loop.time() - down_since, 1), followers=self.followers)
                down_since = None
            delay = BACKOFF_MIN
            woken: list[Follower] = []
            try:
                for raw_key, raw in reply or ():
                    key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                    woken += self._dispatch(key, raw, streams[key])
            except Exception:  # broad: this one task serves every follower of the process; a bug here must not stop it
                log.exception("followers.dispatch_failed")
                await asyncio.sleep(BACKOFF_MAX)
            await self._wake_in_slices(woken)

    async def _wake_in_slices(self, woken: list[Follower]) -> None:
        """Followers woken WAKE_SLICE at a time, the loop turning in between: a thousand
        deliveries at once would otherwise hold every other request (a new follower's first
        event) for the whole burst. Their inboxes are filled already: the next read can go out."""
        for start in range(0, len(woken), WAKE_SLICE):
            if start:
                await asyncio.sleep(0)
            for follower in woken[start:start + WAKE_SLICE]:
                follower._wake()

    def _dispatch(self, key: str, raw: Sequence[Any], sent: str) -> list[Follower]:
        """The entries of `key` into its followers' inboxes; the followers to wake."""
        if key == self._wake_key:
            self._wake_seen = raw[-1][0].decode()
            return []
        entry = self._keys.get(key)
        if entry is None or not raw:
            return []  # every follower of it left meanwhile
        start = parse_id(sent)
        try:
            entries = self._decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
            # not an entry tasks/live.py wrote: its followers end (they would only read it again)
            log.error("followers.bad_entry", key=key)
            for follower in list(entry.followers):
                self._drop(follower)
            return []
        ids = [parse_id(eid) for eid, _ in entries]
        last = ids[-1]
        if entry.position == start:  # nobody joined behind this read since it was sent
            entry.cursor, entry.position = entries[-1][0], last
        woken = []
        for follower in list(entry.followers):
            if follower.position < start or follower.position >= last:
                continue  # behind this read (its own re-read comes next), or it has all of it already
            fresh = entries[bisect.bisect_right(ids, follower.position):]
            if len(follower.inbox) + len(fresh) > self._max_inbox:
                log.info("followers.dropped_slow", key=key, waiting=len(follower.inbox))
                self._drop(follower)
                continue
            follower._take(fresh, last)
            woken.append(follower)
        return woken

    async def _wake_loop(self) -> None:
        while not self._closed:
            await self._wake_wanted.wait()
            self._wake_wanted.clear()
            read = self._reading
            if not read or not self._stale or self._woken == read:
                continue  # not blocked (the next read covers it), or already woken
            self._woken = read
            try:
                pipe = self._pool.pipeline(transaction=False)
                pipe.xadd(self._wake_key, {"w": b"1"}, maxlen=1, approximate=False)
                pipe.pexpire(self._wake_key, WAKE_TTL_MS)
                await pipe.execute()
            except Exception:  # noqa: S110  (broad: a wake is an optimisation; the read ends within BLOCK_MS anyway)
                pass

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.aclose()

    async def aclose(self) -> None:
        """Stop reading and let every follower go (each ends cleanly, resumable)."""
        self._closed = True
        # repeated: a cancel that lands just as a Redis command's send completes is swallowed by
        # the driver (3.11's wait_for), and the reader would then block a whole read more
        while pending := [t for t in self._tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.05)
        self._tasks = []
        for entry in list(self._keys.values()):
            for follower in list(entry.followers):
                self._drop(follower)
        await self._disconnect()
