"""The falcosidekick Redis-list consumer (``storagetype: list`` RPUSHes each alert to a key).

Reliable-queue pattern, at least once with exactly-once recording:
1. a Lua script atomically moves up to N alerts from the list into this consumer's *processing*
   list and gives the batch an id (a crash now leaves them there, not lost);
2. the batch is recorded in one SQL transaction together with its id (``intake_batches``);
3. a second Lua script dead-letters the invalid items and drops the processing list.
After a crash between 2 and 3 the batch is claimed again, its id is found, and it is only acked.
Consumers that die for good are noticed by their expired heartbeat; a live one adopts their batch.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import redis
import structlog

from responder.intake.backends import UNAVAILABLE
from responder.intake.recording import Recorded, Recorder
from responder.models.alerts import Alert, InvalidAlert, parse_alert

log = structlog.get_logger("drift.consume")

# KEYS: source, processing, batch-id key. ARGV: max items, new batch id.
_CLAIM = """
local batch = redis.call('GET', KEYS[3])
local have = redis.call('LLEN', KEYS[2])
if have > 0 and batch then
  return {batch, redis.call('LRANGE', KEYS[2], 0, -1)}
end
local want = tonumber(ARGV[1]) - have
if want > 0 then
  local items = redis.call('LRANGE', KEYS[1], 0, want - 1)
  if #items > 0 then
    redis.call('LTRIM', KEYS[1], #items, -1)
    redis.call('RPUSH', KEYS[2], unpack(items))
  end
end
if redis.call('LLEN', KEYS[2]) == 0 then
  return false
end
redis.call('SET', KEYS[3], ARGV[2])
return {ARGV[2], redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: processing, batch-id key, dead-letter list. ARGV: dead-letter entries.
_ACK = """
if #ARGV > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV))
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# KEYS: orphan processing, orphan batch, own processing, own batch.
_ADOPT = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[4])
end
return 1
"""

HEARTBEAT_TTL_S = 30


@dataclass
class ConsumerStats:
    batches: int = 0
    recorded: int = 0
    dead_lettered: int = 0
    duplicate_batches: int = 0
    suppressed: int = 0
    incidents: set[str] = field(default_factory=set)


class ListConsumer:
    def __init__(self, client: redis.Redis, recorder: Recorder, *, key: str = "falco",
                 name: str | None = None, batch_size: int = 500, prefix: str = "drift:",
                 max_item_bytes: int = 1024 * 1024) -> None:
        self.client = client
        self.recorder = recorder
        self.key = key
        self.name = name or socket.gethostname()
        self.batch_size = batch_size
        self.max_item_bytes = max_item_bytes
        base = f"{prefix}consume:{key}"
        self._base = base
        self.processing = f"{base}:{self.name}:processing"
        self.batch_key = f"{base}:{self.name}:batch"
        self.alive_key = f"{base}:{self.name}:alive"
        self.dead_key = f"{base}:dead"
        self._claim = client.register_script(_CLAIM)
        self._ack = client.register_script(_ACK)
        self._adopt = client.register_script(_ADOPT)
        self.stats = ConsumerStats()

    def run(self, *, should_stop: Callable[[], bool] = lambda: False,
            idle_timeout_s: int = 1) -> ConsumerStats:
        """Consume until ``should_stop()``; backs off (never drops) while a backend is down."""
        backoff = 0.5
        last_orphan_scan = 0.0
        while not should_stop():
            try:
                self.client.set(self.alive_key, "1", ex=HEARTBEAT_TTL_S)
                if time.monotonic() - last_orphan_scan > HEARTBEAT_TTL_S / 2:
                    self.adopt_orphans()
                    last_orphan_scan = time.monotonic()
                if not self.step():
                    # Wait for the next alert without spinning; it lands in our processing list.
                    self.client.blmove(self.key, self.processing, idle_timeout_s, "LEFT", "RIGHT")
                backoff = 0.5
            except UNAVAILABLE as exc:
                log.warning("consume.backend_unavailable", error=type(exc).__name__,
                            retry_in_s=backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self.recorder.flush_suppressions()
        return self.stats

    def step(self) -> bool:
        """Claim, record and ack one batch. False when there was nothing to do."""
        claimed = self._claim(keys=[self.key, self.processing, self.batch_key],
                              args=[self.batch_size, uuid.uuid4().hex])
        if not claimed:
            return False
        batch_id = _text(claimed[0])
        items: list[bytes] = claimed[1]
        good, dead = self._sort(items)
        try:
            result = self.recorder.record(good, batch_id=f"redis:{self.key}:{batch_id}")
        except UNAVAILABLE:
            raise
        except Exception:
            # Not an outage: something in the batch cannot be recorded. Record the alerts one by
            # one and dead-letter those that fail, rather than re-claiming the batch for ever.
            result = self._one_by_one(good, batch_id, dead)
        self._ack(keys=[self.processing, self.batch_key, self.dead_key], args=dead)
        self.stats.batches += 1
        self.stats.dead_lettered += len(dead)
        if result.duplicate_batch:
            self.stats.duplicate_batches += 1
        else:
            self.stats.recorded += len(result.incident_ids) - result.suppressed
            self.stats.suppressed += result.suppressed
            self.stats.incidents.update(result.incidents)
        if dead:
            log.warning("consume.dead_lettered", count=len(dead), dead_letter_key=self.dead_key)
        return True

    def _one_by_one(self, good: list[Alert], batch_id: str, dead: list[bytes]) -> Recorded:
        incident_ids: list[str] = []
        suppressed = 0
        for index, alert in enumerate(good):
            try:
                done = self.recorder.record([alert],
                                            batch_id=f"redis:{self.key}:{batch_id}:{index}")
            except UNAVAILABLE:
                raise
            except Exception as exc:
                log.error("consume.unrecordable", alert=alert.alert_id, error=repr(exc))
                dead.append(orjson.dumps({"reason": f"cannot be recorded: {exc!r}"[:1000],
                                          "item": orjson.Fragment(alert.raw),
                                          "consumer": self.name,
                                          "time_ns": time.time_ns()}))
            else:
                incident_ids.extend(done.incident_ids)
                suppressed += done.suppressed
        return Recorded(incident_ids, suppressed=suppressed)

    def adopt_orphans(self) -> int:
        """Take over the in-flight batch of consumers whose heartbeat has expired."""
        adopted = 0
        for raw in self.client.scan_iter(match=f"{self._base}:*:processing", count=100):
            orphan = _text(raw)
            name = orphan[len(self._base) + 1:-len(":processing")]
            if name == self.name or self.client.exists(f"{self._base}:{name}:alive"):
                continue
            if self._adopt(keys=[orphan, f"{self._base}:{name}:batch", self.processing,
                                 self.batch_key]):
                log.info("consume.adopted_orphan", consumer=name)
                adopted += 1
                self.step()
        return adopted

    def _sort(self, items: list[bytes]) -> tuple[list[Alert], list[bytes]]:
        """Valid alerts to record; everything else to the dead-letter list, with its reason."""
        good: list[Alert] = []
        dead: list[bytes] = []
        for raw in items:
            reason = None
            if len(raw) > self.max_item_bytes:
                reason = f"item exceeds {self.max_item_bytes} bytes"
            else:
                try:
                    good.append(parse_alert(orjson.loads(raw), raw))
                    continue
                except orjson.JSONDecodeError as exc:
                    reason = f"not valid JSON: {exc}"
                except InvalidAlert as exc:
                    reason = "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
            dead.append(orjson.dumps({"reason": reason, "item": raw.decode("utf-8", "replace"),
                                      "consumer": self.name, "time_ns": time.time_ns()}))
        return good, dead


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
