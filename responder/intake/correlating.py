"""Correlators map incident keys to incident ids, atomically across processes.

Two backends honour one contract (tests/integration/test_correlation_contract.py):
- ``SqlCorrelator``: embedded default, a slot table in the SQL store (no server needed);
- ``RedisCorrelator``: production, one Lua call per batch. Redis holds only what can be rebuilt:
  when a key is missing there (expired, or Redis restarted without its data) the store is asked
  for a live incident before a new one is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import redis
from sqlalchemy import Connection

from responder.store import slots

_ASSIGN = """
local out = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = {current, 0}
  else
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    out[i] = {ARGV[i + 1], 1}
  end
end
return out
"""

# Replace a just-set candidate by the live incident the store knows, unless someone beat us to it.
_ADOPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current == ARGV[2 * i] then
    redis.call('SET', key, ARGV[2 * i + 1], 'PX', ARGV[1])
    out[i] = ARGV[2 * i + 1]
  elseif current then
    out[i] = current
  else
    redis.call('SET', key, ARGV[2 * i + 1], 'PX', ARGV[1])
    out[i] = ARGV[2 * i + 1]
  end
end
return out
"""


class Correlator(Protocol):
    name: str

    def assign(self, conn: Connection, candidates: Mapping[str, str], *,
               now_ns: int) -> dict[str, str]:
        """Map every key to the incident its alerts belong to (a candidate id if none is live)."""
        ...

    def ping(self) -> None:
        """Raise when the backend cannot be reached."""
        ...


class SqlCorrelator:
    name = "sql"

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns

    def assign(self, conn: Connection, candidates: Mapping[str, str], *,
               now_ns: int) -> dict[str, str]:
        return slots.assign(conn, candidates, now_ns=now_ns, window_ns=self.window_ns)

    def ping(self) -> None:
        return None  # the store's own readiness check covers it


class RedisCorrelator:
    name = "redis"

    def __init__(self, client: redis.Redis, window_ns: int, prefix: str = "drift:") -> None:
        self.client = client
        self.window_ns = window_ns
        self.prefix = f"{prefix}corr:"
        self._assign = client.register_script(_ASSIGN)
        self._adopt = client.register_script(_ADOPT)

    def assign(self, conn: Connection, candidates: Mapping[str, str], *,
               now_ns: int) -> dict[str, str]:
        keys = list(candidates)
        ttl_ms = max(1, self.window_ns // 1_000_000)
        redis_keys = [self.prefix + k for k in keys]
        raw = self._assign(keys=redis_keys, args=[ttl_ms, *(candidates[k] for k in keys)])
        out: dict[str, str] = {}
        created: list[str] = []
        for key, (incident_id, was_set) in zip(keys, raw, strict=True):
            out[key] = _text(incident_id)
            if int(was_set):
                created.append(key)
        if created:
            live = slots.live_incidents(conn, created, since_ns=now_ns - self.window_ns)
            if live:
                adopt_keys = list(live)
                args: list[str | int] = [ttl_ms]
                for key in adopt_keys:
                    args += [out[key], live[key]]
                adopted = self._adopt(keys=[self.prefix + k for k in adopt_keys], args=args)
                for key, incident_id in zip(adopt_keys, adopted, strict=True):
                    out[key] = _text(incident_id)
        return out

    def ping(self) -> None:
        self.client.ping()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
