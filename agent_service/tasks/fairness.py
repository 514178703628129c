"""Per-user fairness state in Redis, shared by every worker and web process.

Sorted sets per job owner, under REDIS_KEY_PREFIX (`jobs:user:<owner>:…`):

- `running`: the owner's running jobs (task ids) scored by when their claim expires (Redis time +
  JOB_LEASE_SECONDS). A job takes a slot atomically (trim the expired, then add if under the cap),
  renews it with its lease (tasks/queue.py `hold_lease`) and gives it back however its run ends; a
  dead worker gives nothing back, and its slots expire by themselves within a lease.
- `waiting:<priority>`: the owner's jobs queued and not yet picked up by a worker, scored by when
  they stop counting; the enqueue script counts them to place a new job (see tasks/queue.py), and
  a job leaves them when a worker picks it up, whether it then runs or is parked (one cancelled
  before that counts until its entry expires, W after it was queued).
- `parked`: jobs turned away because the owner was at the cap, scored by their place in the
  queue. A parked job's queue entry is moved about a lease ahead (so it does not poll), and a slot
  given back wakes the first of them: its entry is made due again, at the place described in
  tasks/queue.py. The lease-long wait is only the fallback for a slot that expired (a dead worker).

Times in the running set are Redis server time (one clock for every machine); queue scores are
the caller's clock, as arq's are.
"""

from __future__ import annotations

from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn, redis_guard
from agent_service.kit.rounds import Reply, Round
from agent_service.kit.wakeup import wake_key, wake_lua

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS running, parked, queue, then the owner's waiting sets; ARGV task id, cap, lease ms,
# parked-until score, own queue score, parked set ttl ms. 1: the slot is taken; 0: parked (its
# queue entry moved ahead).
_ACQUIRE = _NOW + """
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- the same task holding a slot already is a re-run of a job whose worker died: it keeps it
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[5], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[1])
return 0
"""

# KEYS running; ARGV task id, lease ms. Only a slot still held is renewed (XX).
_RENEW = _NOW + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# KEYS running, parked, queue, the queue's wake key; ARGV task id, wake (0/1), caller's now ms,
# lowest wake score. Returns the task id woken, if any (made due: an idle worker is woken too).
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '1' then return false end
for _ = 1, 100 do
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first == 0 then return false end
  local queued = redis.call('ZSCORE', KEYS[3], first[1])
  if queued and tonumber(queued) <= tonumber(ARGV[3]) then
""" + wake_lua("KEYS[4]") + """    return first[1]  -- due already (its fallback wait ended): it takes the slot itself
  end
  redis.call('ZREM', KEYS[2], first[1])
  if queued then
    redis.call('ZADD', KEYS[3], 'XX', math.max(tonumber(first[2]), tonumber(ARGV[4])), first[1])
""" + wake_lua("KEYS[4]") + """    return first[1]
  end
  -- gone from the queue (cancelled): look at the next one
end
return false
"""

PARKED_TTL_MS = 2 * 24 * 3600 * 1000  # longer than arq keeps a job (a day past its time)


def user_key(prefix: str, owner: str, what: str) -> str:
    """The owner's `running` or `parked` set (or `waiting:<priority>`, named by tasks/queue.py)."""
    return f"{prefix}jobs:user:{owner}:{what}"


class UserSlots:
    def __init__(self, redis: RedisConn, *, prefix: str, queue_name: str, lease_seconds: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._queue = queue_name
        self._lease_ms = int(lease_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @classmethod
    def of(cls, deps: Deps) -> UserSlots:
        return cls(deps.redis, prefix=deps.prefix, queue_name=deps.settings.queue_name,
                   lease_seconds=deps.settings.job_lease_seconds)

    def running_key(self, owner: str) -> str:
        return user_key(self._prefix, owner, "running")

    def parked_key(self, owner: str) -> str:
        return user_key(self._prefix, owner, "parked")

    def _acquire_call(self, owner: str, task_id: str, cap: int, score: int, parked_until_ms: int,
                      waiting: list[str]) -> tuple[list[str], list[str | int]]:
        keys = [self.running_key(owner), self.parked_key(owner), self._queue, *waiting]
        return keys, [task_id, cap, self._lease_ms, parked_until_ms, score, PARKED_TTL_MS]

    @redis_guard
    async def acquire(self, owner: str, task_id: str, *, cap: int, score: int, parked_until_ms: int,
                      waiting: list[str]) -> bool:
        """Take one of the owner's `cap` slots; False if they are all taken: the job is then parked
        (its queue entry moved to `parked_until_ms`; `score` is its place in the queue now). Either
        way it stops counting as waiting (`waiting`: the owner's waiting sets, tasks/queue.py)."""
        keys, args = self._acquire_call(owner, task_id, cap, score, parked_until_ms, waiting)
        return bool(await self._acquire(keys=keys, args=args))

    def acquire_into(self, rnd: Round, owner: str, task_id: str, *, cap: int, score: int, parked_until_ms: int,
                     waiting: list[str]) -> Reply:
        """`acquire` as one of a round's writes: the reply is true if the slot was taken."""
        keys, args = self._acquire_call(owner, task_id, cap, score, parked_until_ms, waiting)
        return rnd.script(_ACQUIRE, keys, args)

    async def renew(self, owner: str, task_id: str) -> None:
        """Push the slot's expiry a lease ahead (a no-op once it is given back). Raises RedisError:
        the lease loop that calls it shrugs a blip off and renews again a third of a lease later."""
        await self._renew(keys=[self.running_key(owner)], args=[task_id, self._lease_ms])

    @redis_guard
    async def release(self, owner: str, task_id: str, *, now_ms: int, floor_ms: int, wake: bool = True) -> str | None:
        """Give the slot back and, with `wake`, make the owner's first parked job due again (at its
        own score, but not before `floor_ms`). Returns the task id woken."""
        keys = [self.running_key(owner), self.parked_key(owner), self._queue, wake_key(self._queue)]
        woken = await self._release(keys=keys, args=[task_id, int(wake), now_ms, floor_ms])
        return woken.decode() if isinstance(woken, bytes) else None

    def release_into(self, rnd: Round, owner: str, task_id: str, *, now_ms: int, floor_ms: int,
                     wake: bool = True) -> None:
        """`release` as one of a round's writes."""
        keys = [self.running_key(owner), self.parked_key(owner), self._queue, wake_key(self._queue)]
        rnd.script(_RELEASE, keys, [task_id, int(wake), now_ms, floor_ms])

    @redis_guard
    async def running(self, owner: str) -> list[str]:
        """The task ids holding the owner's slots now (expired claims left out)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.running_key(owner), 0, -1, withscores=True)
        (sec, usec), entries = await pipe.execute()
        now = sec * 1000 + usec // 1000
        return [m.decode() for m, expiry in entries if expiry > now]

