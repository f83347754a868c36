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

# ARGV holds (candidate, ttl ms) per key: windows may differ per playbook.
_ASSIGN = """
local out = {}
for i, key in ipairs(KEYS) do
  local candidate, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  local current = redis.call('GET', key)
  if current then
    redis.call('PEXPIRE', key, ttl)
    out[i] = {current, 0}
  else
    redis.call('SET', key, candidate, 'PX', ttl)
    out[i] = {candidate, 1}
  end
end
return out
"""

# Replace a just-set candidate by the live incident the store knows, unless someone beat us to it.
# ARGV holds (candidate, live id, ttl ms) per key.
_ADOPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local candidate, live, ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local current = redis.call('GET', key)
  if current and current ~= candidate then
    out[i] = current
  else
    redis.call('SET', key, live, 'PX', ttl)
    out[i] = live
  end
end
return out
"""


class Correlator(Protocol):
    name: str

    def assign(self, conn: Connection, candidates: Mapping[str, str], *, now_ns: int,
               windows: Mapping[str, int] | None = None) -> dict[str, str]:
        """Map every key to the incident its alerts belong to (a candidate id if none is live).
        ``windows`` overrides the default window (ns) for some keys."""
        ...

    def ping(self) -> None:
        """Raise when the backend cannot be reached."""
        ...


class SqlCorrelator:
    name = "sql"

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns

    def assign(self, conn: Connection, candidates: Mapping[str, str], *, now_ns: int,
               windows: Mapping[str, int] | None = None) -> dict[str, str]:
        return slots.assign(conn, candidates, now_ns=now_ns, window_ns=self.window_ns,
                            windows=windows)

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

    def assign(self, conn: Connection, candidates: Mapping[str, str], *, now_ns: int,
               windows: Mapping[str, int] | None = None) -> dict[str, str]:
        keys = list(candidates)
        windows = windows or {}
        ttl_ms = {k: max(1, windows.get(k, self.window_ns) // 1_000_000) for k in keys}
        redis_keys = [self.prefix + k for k in keys]
        args: list[str | int] = []
        for key in keys:
            args += [candidates[key], ttl_ms[key]]
        raw = self._assign(keys=redis_keys, args=args)
        out: dict[str, str] = {}
        created: list[str] = []
        for key, (incident_id, was_set) in zip(keys, raw, strict=True):
            out[key] = _text(incident_id)
            if int(was_set):
                created.append(key)
        if created:
            live = slots.live_incidents(conn, created, since_ns=now_ns, windows={
                k: windows.get(k, self.window_ns) for k in created})
            if live:
                adopt_keys = list(live)
                adopt_args: list[str | int] = []
                for key in adopt_keys:
                    adopt_args += [out[key], live[key], ttl_ms[key]]
                adopted = self._adopt(keys=[self.prefix + k for k in adopt_keys],
                                      args=adopt_args)
                for key, incident_id in zip(adopt_keys, adopted, strict=True):
                    out[key] = _text(incident_id)
        return out

    def ping(self) -> None:
        self.client.ping()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
