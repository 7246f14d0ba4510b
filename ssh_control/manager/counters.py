"""Connection-attempt counters shared by every SSH worker: the rate limit and the block.

With Redis (`REDIS_URL`) the counters live there and each check-and-record is one Lua
script, so two workers can never both take the last attempt of a window; Redis' own
clock times the window. The embedded default runs one worker and keeps them in memory.
"""

import logging
import threading
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "claworc:ssh"

# Returns {verdict, count, seconds}: "blocked" with the failure count and the seconds
# left, "limited" with the attempts in the window and the seconds until the oldest
# leaves it, or "ok" with the attempts including this one.
_ATTEMPT_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {'blocked', redis.call('GET', KEYS[2]), tostring(left / 1000)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tostring(now - window))
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'limited', tostring(count), tostring(tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', KEYS[1], tostring(now), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return {'ok', tostring(count + 1), '0'}
"""

_FAILURE_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 86400)
if count >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], count, 'PX', math.ceil(tonumber(ARGV[2]) * 1000))
end
return count
"""


@dataclass(frozen=True)
class AttemptVerdict:
    """`ok`, `limited` (rate limit) or `blocked` (consecutive failures)."""

    verdict: str
    count: int
    retry_after: float


class RedisCounters:
    # Every process sees the same counters.
    shared = True

    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url)
        self._attempt = self._redis.register_script(_ATTEMPT_SCRIPT)
        self._failure = self._redis.register_script(_FAILURE_SCRIPT)

    def attempt(self, instance_id: int) -> AttemptVerdict:
        keys = [_key("attempts", instance_id), _key("blocked", instance_id)]
        args = [
            settings.CLAWORC_SSH_RATE_LIMIT_WINDOW_SECONDS,
            settings.CLAWORC_SSH_RATE_LIMIT_ATTEMPTS,
            uuid.uuid4().hex,
        ]
        verdict, count, seconds = self._attempt(keys=keys, args=args)
        return AttemptVerdict(verdict.decode(), int(count), float(seconds))

    def failure(self, instance_id: int) -> int:
        keys = [_key("failures", instance_id), _key("blocked", instance_id)]
        args = [settings.CLAWORC_SSH_FAILURE_THRESHOLD, settings.CLAWORC_SSH_BLOCK_SECONDS]
        return int(self._failure(keys=keys, args=args))

    def success(self, instance_id: int) -> None:
        self._redis.delete(_key("failures", instance_id))

    def unblock(self, instance_id: int) -> None:
        """Forget the consecutive failures and any block; the rate-limit window stays."""
        self._redis.delete(_key("failures", instance_id), _key("blocked", instance_id))

    def clear(self, instance_id: int) -> None:
        self._redis.delete(
            *(_key(kind, instance_id) for kind in ("attempts", "failures", "blocked"))
        )


class LocalCounters:
    """The same rules in process memory, for the embedded single-worker default."""

    # Each process has its own: the web process's are not the worker's.
    shared = False

    def __init__(self):
        self._lock = threading.Lock()
        self._attempts: dict[int, list[float]] = {}
        self._failures: dict[int, int] = {}
        self._blocked: dict[int, tuple[int, float]] = {}

    def attempt(self, instance_id: int) -> AttemptVerdict:
        now = time.monotonic()
        window = settings.CLAWORC_SSH_RATE_LIMIT_WINDOW_SECONDS
        with self._lock:
            count, until = self._blocked.get(instance_id, (0, 0.0))
            if until > now:
                return AttemptVerdict("blocked", count, until - now)
            recent = [at for at in self._attempts.get(instance_id, []) if at > now - window]
            if len(recent) >= settings.CLAWORC_SSH_RATE_LIMIT_ATTEMPTS:
                self._attempts[instance_id] = recent
                return AttemptVerdict("limited", len(recent), recent[0] + window - now)
            recent.append(now)
            self._attempts[instance_id] = recent
            return AttemptVerdict("ok", len(recent), 0.0)

    def failure(self, instance_id: int) -> int:
        with self._lock:
            count = self._failures.get(instance_id, 0) + 1
            self._failures[instance_id] = count
            if count >= settings.CLAWORC_SSH_FAILURE_THRESHOLD:
                until = time.monotonic() + settings.CLAWORC_SSH_BLOCK_SECONDS
                self._blocked[instance_id] = (count, until)
            return count

    def success(self, instance_id: int) -> None:
        with self._lock:
            self._failures.pop(instance_id, None)

    def unblock(self, instance_id: int) -> None:
        with self._lock:
            self._failures.pop(instance_id, None)
            self._blocked.pop(instance_id, None)

    def clear(self, instance_id: int) -> None:
        with self._lock:
            for store in (self._attempts, self._failures, self._blocked):
                store.pop(instance_id, None)


def _key(kind: str, instance_id: int) -> str:
    return f"{KEY_PREFIX}:{kind}:{instance_id}"


_counters = None
_counters_lock = threading.Lock()


def attempt_counters():
    """The process-wide counters for the configured backend."""
    global _counters
    with _counters_lock:
        if _counters is None:
            url = getattr(settings, "REDIS_URL", None)
            _counters = RedisCounters(url) if url else LocalCounters()
        return _counters
