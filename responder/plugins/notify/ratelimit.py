"""Slack's rate limits, shared by every worker: a token bucket and a FIFO queue per channel for
new messages, a digest when too many wait, and a separate, coalescing limit for updates.

New messages (``chat.postMessage``) are limited by Slack to about one a second per channel,
with short bursts tolerated. Each channel has a token bucket (``rate_per_second``, capacity
``burst``) and a queue of the incidents waiting for their first message, in the order they first
asked. A token goes to the oldest waiting incident whose notification is due; a newer one is
served only while enough tokens remain for every older one still waiting (so nobody is overtaken
when tokens are scarce, and nobody waits behind a task that is late). A refusal says exactly how
long to wait: until the token the caller's place in the queue will get, so a re-queued task comes
back once, when its turn is due. When more than ``digest_after`` incidents wait in one channel,
the next token posts one digest message naming every waiting incident not named yet (then at
most one digest per ``digest_interval_s``); each incident still gets its own message, with its
buttons, in its turn. A waiting incident whose task is more than ``grace_s`` late keeps its
place but no longer holds back the others; after an hour it is forgotten.

Updates (``chat.update``, Slack's Tier 3, about 50 a minute) take from a separate bucket
(``update_per_minute``, ``update_burst``); evidence uploads share it. A message is updated at
most once per ``update_interval_s``: changes meanwhile are coalesced into one update showing the
latest state, and a render identical to what was last sent is not sent again.

The state lives in Redis when there is one (production: one JSON value per channel, changed
under WATCH/MULTI) and otherwise in a small SQLite file next to the embedded store
(``$DRIFT_DATA_DIR/slack-limits.db``), shared by the worker processes of that machine; without
either (a process that was never bound to settings) it is kept in memory. All of it can be lost
safely: the worst outcome is a burst, or one update sent again.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import orjson
import redis

T = TypeVar("T")
Json = dict[str, Any]
Values = dict[str, Any]
Changes = dict[str, Any]  # key -> new value, or None to delete it

ABANDONED_MS = 3_600_000
STATE_TTL_MS = 3_600_000
SENT_TTL_MS = 86_400_000
STATE_FILE = "slack-limits.db"
#: After a Slack 5xx or a network failure on a first post the channel takes no new prompt for
#: 1 s, then 2 s, 4 s... up to 60 s while posts keep failing (forgotten 2 minutes after the
#: last failure): during an outage the waiting prompts do not each hit Slack as their turns come.
FAILURE_PAUSE_S = 1.0
MAX_FAILURE_PAUSE_S = 60.0
FAILURE_MEMORY_MS = 120_000


class RateLimited(Exception):
    """Try again after ``retry_after`` seconds (a 429 from Slack, or our own limits)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.3f}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SlackLimits:
    """The knobs, with defaults. ``from_settings`` reads the ``slack_*`` settings of the same
    meaning where they exist."""

    rate_per_second: float = 1.0     # new messages per second per channel (refill)
    burst: float = 10.0              # bucket capacity: messages a quiet channel takes at once
    digest_after: int = 20           # more waiting than this in a channel: post a digest
    digest_interval_s: float = 5.0   # then at most one digest per this period
    update_per_minute: float = 50.0  # chat.update and evidence uploads, whole workspace
    update_burst: float = 10.0
    update_interval_s: float = 1.0   # one update per message at most this often (coalescing)
    grace_s: float = 30.0            # a waiting task this late no longer holds others back
    upload_evidence: bool = True
    upload_max_bytes: int = 8 << 20

    _SETTINGS: ClassVar[dict[str, str]] = {
        "rate_per_second": "slack_rate_per_second", "burst": "slack_burst",
        "digest_after": "slack_digest_after",
        "digest_interval_s": "slack_digest_interval_seconds",
        "update_per_minute": "slack_update_rate_per_minute",
        "update_burst": "slack_update_burst",
        "update_interval_s": "slack_update_interval_seconds",
        "upload_evidence": "slack_upload_evidence", "upload_max_bytes": "slack_upload_max_bytes"}

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SlackLimits:
        values: dict[str, Any] = {}
        for name, setting in cls._SETTINGS.items():
            value = getattr(settings, setting, None)
            if value is not None:
                values[name] = value
        values.update(overrides)
        return cls(**values)


# ------------------------------------------------------------------------------ the algorithm

@dataclass
class Turn:
    """What the bucket answers a notification that wants to post a new message."""

    kind: Literal["post", "wait", "digest"]
    channel: str
    wait_s: float = 0.0
    #: for "post": the caller's place in the queue (restored if Slack refuses the post)
    seq: int = 0
    enqueued_ms: int = 0
    #: for "digest": the incidents to name, oldest first
    incidents: list[str] = field(default_factory=list)


@dataclass
class UpdateSlot:
    kind: Literal["go", "same", "wait"]
    wait_s: float = 0.0


def _refill(bucket: Json, now_ms: int, rate: float, burst: float) -> None:
    tokens = float(bucket.get("t", burst))
    at = int(bucket.get("at", now_ms))
    if now_ms > at:
        tokens = min(burst, tokens + (now_ms - at) * rate / 1000.0)
        at = now_ms
    bucket["t"], bucket["at"] = tokens, at


def _until(bucket: Json, need: float, now_ms: int, rate: float) -> int:
    """Milliseconds until the bucket holds ``need`` tokens (it may be paused until ``at``)."""
    at, tokens = int(bucket["at"]), float(bucket["t"])
    ready = at + max(0.0, need - tokens) * 1000.0 / rate
    return max(1, math.ceil(ready - now_ms))


def _bump(state: Json, name: str) -> None:
    stats = state.setdefault("n", {})
    stats[name] = int(stats.get(name, 0)) + 1


def channel_turn(state: Json, incident: str, now_ms: int, limits: SlackLimits, *,
                 channel: str, join: bool = True) -> Turn | None:
    """Ask for a token for ``incident``'s first message (mutates ``state``). None when the
    incident does not wait here and ``join`` is false."""
    _refill(state, now_ms, limits.rate_per_second, limits.burst)
    waiting: dict[str, list[Any]] = state.setdefault("w", {})
    if incident not in waiting:
        if not join:
            return None
        state["seq"] = int(state.get("seq", 0)) + 1
        # [enqueued at, place, alive until, named in a digest]
        waiting[incident] = [now_ms, state["seq"], now_ms + int(limits.grace_s * 1000), 0]
        _bump(state, "joined")
    for other in [i for i, w in waiting.items() if i != incident and w[2] < now_ms - ABANDONED_MS]:
        del waiting[other]
    _bump(state, "asked")
    me = waiting[incident]
    me[2] = max(me[2], now_ms)
    queue = sorted((w[1], i) for i, w in waiting.items() if w[2] >= now_ms or i == incident)
    ahead = next(k for k, (_, i) in enumerate(queue) if i == incident)
    unnamed = sorted((w[1], i) for i, w in waiting.items() if not w[3])
    digest_due = (len(waiting) > limits.digest_after and bool(unnamed) and
                  now_ms >= int(state.get("dg", 0)) + limits.digest_interval_s * 1000)
    ready = int(state["at"]) <= now_ms
    if digest_due and ready and state["t"] >= 1:
        state["t"] -= 1
        state["dg"] = now_ms
        for _, i in unnamed:
            waiting[i][3] = 1
        _bump(state, "digests")
        return Turn("digest", channel, incidents=[i for _, i in unnamed])
    need = ahead + 1 + (1 if digest_due else 0)
    if ready and state["t"] >= need:
        state["t"] -= 1
        del waiting[incident]
        _bump(state, "posts")
        return Turn("post", channel, seq=me[1], enqueued_ms=me[0])
    # The head of the queue comes back for the digest's token, the others for their own.
    wait_ms = _until(state, 1 if digest_due and ahead == 0 else need, now_ms,
                     limits.rate_per_second)
    me[2] = now_ms + wait_ms + int(limits.grace_s * 1000)
    _bump(state, "waits")
    return Turn("wait", channel, wait_s=wait_ms / 1000.0)


def restore_turn(state: Json, incident: str, turn: Turn, now_ms: int, limits: SlackLimits,
                 pause_s: float | None) -> None:
    """A granted post did not happen: the incident gets its place back. After a 429 or a failure
    (``pause_s``) the channel takes nothing until that has passed; otherwise the token is
    given back."""
    waiting: dict[str, list[Any]] = state.setdefault("w", {})
    waiting[incident] = [turn.enqueued_ms, turn.seq,
                         now_ms + int((pause_s or 0) * 1000) + int(limits.grace_s * 1000), 1]
    if pause_s is None:
        refund(state, now_ms, limits.rate_per_second, limits.burst)
    else:
        _refill(state, now_ms, limits.rate_per_second, limits.burst)
        pause(state, now_ms, pause_s)


def failed_turn(state: Json, incident: str, turn: Turn, now_ms: int,
                limits: SlackLimits) -> float:
    """A granted post that Slack failed (5xx, network): the incident keeps its place and the
    channel pauses, longer each time in a row (see FAILURE_PAUSE_S). Posts granted before the
    pause that fail during it (a burst in flight when Slack went down) count as one failure.
    -> the pause from now."""
    paused_until = int(state.get("at", 0))
    if paused_until > now_ms and int(state.get("f", 0)) > 0:
        pause_s = (paused_until - now_ms) / 1000
    else:
        recent = now_ms - int(state.get("fat", 0)) <= FAILURE_MEMORY_MS
        failures = (int(state.get("f", 0)) if recent else 0) + 1
        state["f"], state["fat"] = failures, now_ms
        pause_s = min(MAX_FAILURE_PAUSE_S, FAILURE_PAUSE_S * 2.0 ** (failures - 1))
    restore_turn(state, incident, turn, now_ms, limits, pause_s)
    return pause_s


def posted_turn(state: Json) -> bool:
    """A first post went through: failures are no longer in a row. -> whether state changed."""
    if "f" not in state:
        return False
    state.pop("f", None)
    state.pop("fat", None)
    return True


def pause(bucket: Json, now_ms: int, pause_s: float) -> None:
    bucket["t"] = 0.0
    bucket["at"] = max(int(bucket.get("at", now_ms)), now_ms + int(pause_s * 1000))


def refund(bucket: Json, now_ms: int, rate: float, burst: float) -> None:
    _refill(bucket, now_ms, rate, burst)
    bucket["t"] = min(burst, float(bucket["t"]) + 1)


def update_slot(bucket: Json, message: Json, fingerprint: str, now_ms: int,
                limits: SlackLimits) -> UpdateSlot:
    """May this message be updated now? (mutates both on "go")."""
    if message.get("h") == fingerprint:
        return UpdateSlot("same")
    rate = limits.update_per_minute / 60.0
    _refill(bucket, now_ms, rate, limits.update_burst)
    coalesce_ms = int(message.get("at", -10**15)) + int(limits.update_interval_s * 1000) - now_ms
    if coalesce_ms > 0 or int(bucket["at"]) > now_ms or bucket["t"] < 1:
        wait_ms = max(coalesce_ms, _until(bucket, 1, now_ms, rate) if (
            int(bucket["at"]) > now_ms or bucket["t"] < 1) else 0)
        return UpdateSlot("wait", max(1, wait_ms) / 1000.0)
    bucket["t"] -= 1
    message["at"] = now_ms
    return UpdateSlot("go")


def take_token(bucket: Json, now_ms: int, rate: float, burst: float) -> float:
    """0 when a token was taken, else seconds to wait."""
    _refill(bucket, now_ms, rate, burst)
    if int(bucket["at"]) <= now_ms and bucket["t"] >= 1:
        bucket["t"] -= 1
        return 0.0
    return _until(bucket, 1, now_ms, rate) / 1000.0


# ------------------------------------------------------------------------------ where it lives

class StateStore(Protocol):
    def transact(self, keys: list[str], fn: Callable[[Values], tuple[Changes, T]],
                 ttl_ms: int) -> T: ...

    def get(self, key: str) -> Any: ...


class RedisState:
    """One JSON value per key, changed under WATCH/MULTI (retried when another worker wrote)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, key: str) -> Any:
        raw: bytes | None = self.client.get(key)  # type: ignore[assignment]
        return orjson.loads(raw) if raw else None

    def transact(self, keys: list[str], fn: Callable[[Values], tuple[Changes, T]],
                 ttl_ms: int) -> T:
        out: list[T] = []

        def body(pipe: Any) -> None:
            out.clear()
            raw = pipe.mget(keys)
            changes, result = fn({k: orjson.loads(v) if v else None for k, v in zip(keys, raw,
                                                                                   strict=True)})
            pipe.multi()
            for key, value in changes.items():
                if value is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, orjson.dumps(value), px=ttl_ms)
            out.append(result)

        self.client.transaction(body, *keys)
        return out[0]


class SqliteState:
    """The embedded fallback: a small SQLite file shared by the processes of one machine
    (``BEGIN IMMEDIATE`` serialises them). Not the store: nothing here needs a migration."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._writes = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v BLOB NOT NULL,"
                         " expires_ms INTEGER NOT NULL)")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: str) -> Any:
        with self._lock:
            row = self._connection().execute(
                "SELECT v FROM state WHERE k = ? AND expires_ms > ?",
                (key, int(time.time() * 1000))).fetchone()
        return orjson.loads(row[0]) if row else None

    def transact(self, keys: list[str], fn: Callable[[Values], tuple[Changes, T]],
                 ttl_ms: int) -> T:
        now_ms = int(time.time() * 1000)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(keys))
                rows = conn.execute(f"SELECT k, v FROM state WHERE k IN ({marks}) AND "  # noqa: S608
                                    "expires_ms > ?", (*keys, now_ms)).fetchall()
                found = {k: orjson.loads(v) for k, v in rows}
                changes, result = fn({k: found.get(k) for k in keys})
                for key, value in changes.items():
                    if value is None:
                        conn.execute("DELETE FROM state WHERE k = ?", (key,))
                    else:
                        conn.execute("INSERT INTO state (k, v, expires_ms) VALUES (?, ?, ?) "
                                     "ON CONFLICT (k) DO UPDATE SET v = excluded.v, "
                                     "expires_ms = excluded.expires_ms",
                                     (key, orjson.dumps(value), now_ms + ttl_ms))
                self._writes += 1
                if self._writes % 200 == 0:
                    conn.execute("DELETE FROM state WHERE expires_ms <= ?", (now_ms,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return result

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class MemoryState:
    """Only this process: for a notifier never bound to settings, and for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._values.get(key)
            return orjson.loads(value) if value is not None else None

    def transact(self, keys: list[str], fn: Callable[[Values], tuple[Changes, T]],
                 ttl_ms: int) -> T:
        with self._lock:
            changes, result = fn({k: orjson.loads(self._values[k]) if k in self._values
                                  else None for k in keys})
            for key, value in changes.items():
                if value is None:
                    self._values.pop(key, None)
                else:
                    self._values[key] = orjson.dumps(value)
            return result


# ------------------------------------------------------------------------------ the facade

class ChannelBucket:
    """The limits of one Slack workspace, over Redis (``client``), a SQLite file (``path``) or
    memory. ``rate`` is new messages per second per channel. ``clock`` (seconds) is injectable
    for tests. ``bind(settings)`` fills in what the constructor was not told: the other limits
    from the settings, and, without Redis, the SQLite file in the data directory."""

    def __init__(self, client: redis.Redis | None, rate: float | None = None,
                 prefix: str = "drift:", limits: SlackLimits | None = None, *,
                 path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.clock = clock
        self.limits = limits or SlackLimits()
        self._explicit_limits = limits is not None
        if rate is not None:
            self.limits = replace(self.limits, rate_per_second=rate)
        self._rate = rate
        self.state: StateStore
        if client is not None:
            self.state, self.backend = RedisState(client), "redis"
        elif path is not None:
            self.state, self.backend = SqliteState(path), "sqlite"
        else:
            self.state, self.backend = MemoryState(), "memory"
        self._bound = False

    def bind(self, settings: Any) -> None:
        if self._bound:
            return
        self._bound = True
        if not self._explicit_limits:
            self.limits = SlackLimits.from_settings(
                settings, **({"rate_per_second": self._rate} if self._rate else {}))
        if self.backend == "memory" and getattr(settings, "data_dir", None) is not None:
            self.state, self.backend = SqliteState(Path(settings.data_dir) / STATE_FILE), "sqlite"

    # -- keys ---------------------------------------------------------------------------------
    def channel_key(self, channel: str) -> str:
        return f"{self.prefix}slack:channel:{channel}"

    def _index_key(self, incident: str) -> str:
        return f"{self.prefix}slack:waits:{incident}"

    def _message_key(self, incident: str) -> str:
        return f"{self.prefix}slack:message:{incident}"

    def _updates_key(self) -> str:
        return f"{self.prefix}slack:updates"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- new messages -------------------------------------------------------------------------
    def turn(self, channel: str, incident: str) -> Turn:
        """A token for the incident's first message in ``channel``, or how long to wait."""
        now = self._now_ms()
        chan, index = self.channel_key(channel), self._index_key(incident)

        def fn(values: Values) -> tuple[Changes, Turn]:
            state = values[chan] or {}
            turn = channel_turn(state, incident, now, self.limits, channel=channel)
            assert turn is not None
            waits = incident in state.get("w", {})
            return {chan: state, index: channel if waits else None}, turn

        return self.state.transact([chan, index], fn, STATE_TTL_MS)

    def poll(self, incident: str) -> Turn | None:
        """The cheap check before any database work: None unless the incident already waits
        in a channel; then its turn, as ``turn`` would answer."""
        channel = self.state.get(self._index_key(incident))
        if not isinstance(channel, str):
            return None
        now = self._now_ms()
        chan, index = self.channel_key(channel), self._index_key(incident)

        def fn(values: Values) -> tuple[Changes, Turn | None]:
            state = values[chan] or {}
            turn = channel_turn(state, incident, now, self.limits, channel=channel, join=False)
            if turn is None:
                return {index: None}, None
            waits = incident in state.get("w", {})
            return {chan: state, index: channel if waits else None}, turn

        return self.state.transact([chan, index], fn, STATE_TTL_MS)

    def restore(self, turn: Turn, incident: str, retry_after: float | None) -> None:
        """A granted post that did not happen: back to its place. ``retry_after`` (a 429):
        the channel pauses that long; None: the token is given back."""
        now = self._now_ms()
        chan, index = self.channel_key(turn.channel), self._index_key(incident)

        def fn(values: Values) -> tuple[Changes, None]:
            state = values[chan] or {}
            restore_turn(state, incident, turn, now, self.limits, retry_after)
            return {chan: state, index: turn.channel}, None

        self.state.transact([chan, index], fn, STATE_TTL_MS)

    def failed(self, turn: Turn, incident: str) -> float:
        """A granted post that Slack failed (5xx, network): see :func:`failed_turn`."""
        now = self._now_ms()
        chan, index = self.channel_key(turn.channel), self._index_key(incident)

        def fn(values: Values) -> tuple[Changes, float]:
            state = values[chan] or {}
            paused = failed_turn(state, incident, turn, now, self.limits)
            return {chan: state, index: turn.channel}, paused

        return self.state.transact([chan, index], fn, STATE_TTL_MS)

    def posted(self, channel: str) -> None:
        """A first post went through (after a failure, the next one pauses 1 s again)."""
        chan = self.channel_key(channel)

        def fn(values: Values) -> tuple[Changes, None]:
            state = values[chan] or {}
            return ({chan: state} if posted_turn(state) else {}), None

        self.state.transact([chan], fn, STATE_TTL_MS)

    def refund(self, channel: str) -> None:
        """A granted token that was not used (someone else had posted already)."""
        now = self._now_ms()
        chan = self.channel_key(channel)

        def fn(values: Values) -> tuple[Changes, None]:
            state = values[chan] or {}
            refund(state, now, self.limits.rate_per_second, self.limits.burst)
            return {chan: state}, None

        self.state.transact([chan], fn, STATE_TTL_MS)

    def forget(self, channel: str, incident: str) -> None:
        """Stop waiting (the message exists, or the incident is gone)."""
        chan, index = self.channel_key(channel), self._index_key(incident)

        def fn(values: Values) -> tuple[Changes, None]:
            state = values[chan] or {}
            state.get("w", {}).pop(incident, None)
            return {chan: state, index: None}, None

        self.state.transact([chan, index], fn, STATE_TTL_MS)

    def digest_failed(self, turn: Turn, retry_after: float | None) -> None:
        """The digest was not posted: its incidents may be named by the next one."""
        now = self._now_ms()
        chan = self.channel_key(turn.channel)

        def fn(values: Values) -> tuple[Changes, None]:
            state = values[chan] or {}
            for incident in turn.incidents:
                if incident in state.get("w", {}):
                    state["w"][incident][3] = 0
            state["dg"] = 0
            if retry_after is not None:
                _refill(state, now, self.limits.rate_per_second, self.limits.burst)
                pause(state, now, retry_after)
            return {chan: state}, None

        self.state.transact([chan], fn, STATE_TTL_MS)

    def waiting(self, channel: str) -> list[str]:
        """The incidents waiting in ``channel`` for their first message, oldest first."""
        state = self.state.get(self.channel_key(channel)) or {}
        return [i for _, i in sorted((w[1], i) for i, w in state.get("w", {}).items())]

    def stats(self, channel: str) -> dict[str, int]:
        state = self.state.get(self.channel_key(channel)) or {}
        return {k: int(v) for k, v in state.get("n", {}).items()}

    # -- updates ------------------------------------------------------------------------------
    def update_slot(self, incident: str, fingerprint: str) -> UpdateSlot:
        now = self._now_ms()
        bucket_key, message_key = self._updates_key(), self._message_key(incident)

        def fn(values: Values) -> tuple[Changes, UpdateSlot]:
            bucket, message = values[bucket_key] or {}, values[message_key] or {}
            slot = update_slot(bucket, message, fingerprint, now, self.limits)
            if slot.kind != "go":
                return {}, slot
            return {bucket_key: bucket, message_key: message}, slot

        return self.state.transact([bucket_key, message_key], fn, SENT_TTL_MS)

    def sent(self, incident: str, fingerprint: str) -> None:
        """What the message shows now (after a post or an update)."""
        now = self._now_ms()
        key = self._message_key(incident)

        def fn(values: Values) -> tuple[Changes, None]:
            return {key: {"h": fingerprint, "at": now}}, None

        self.state.transact([key], fn, SENT_TTL_MS)

    def updates_refused(self, retry_after: float) -> None:
        """Slack answered an update or upload with 429: the whole workspace's budget pauses."""
        now = self._now_ms()
        key = self._updates_key()

        def fn(values: Values) -> tuple[Changes, None]:
            bucket = values[key] or {}
            _refill(bucket, now, self.limits.update_per_minute / 60.0, self.limits.update_burst)
            pause(bucket, now, retry_after)
            return {key: bucket}, None

        self.state.transact([key], fn, SENT_TTL_MS)

    def upload_token(self) -> float:
        """0 when an upload may go now, else seconds to wait (the update budget)."""
        now = self._now_ms()
        key = self._updates_key()

        def fn(values: Values) -> tuple[Changes, float]:
            bucket = values[key] or {}
            wait = take_token(bucket, now, self.limits.update_per_minute / 60.0,
                              self.limits.update_burst)
            return ({key: bucket} if wait == 0 else {}), wait

        return self.state.transact([key], fn, SENT_TTL_MS)

    # -- a short lock -------------------------------------------------------------------------
    def lock(self, name: str, ttl_s: float) -> str | None:
        """A lock that expires by itself; returns its token, or None when someone holds it."""
        key = f"{self.prefix}slack:lock:{name}"
        token = os.urandom(8).hex()
        now = self._now_ms()

        def fn(values: Values) -> tuple[Changes, str | None]:
            held = values[key]
            if isinstance(held, dict) and int(held.get("until", 0)) > now:
                return {}, None
            return {key: {"token": token, "until": now + int(ttl_s * 1000)}}, token

        return self.state.transact([key], fn, int(ttl_s * 1000))

    def unlock(self, name: str, token: str) -> None:
        key = f"{self.prefix}slack:lock:{name}"

        def fn(values: Values) -> tuple[Changes, None]:
            held = values[key]
            if isinstance(held, dict) and held.get("token") == token:
                return {key: None}, None
            return {}, None

        with contextlib.suppress(Exception):  # it expires anyway
            self.state.transact([key], fn, 1000)
