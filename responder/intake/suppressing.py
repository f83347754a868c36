"""The intake's view of the active suppressions: in memory, refreshed every few seconds.

The hot path never queries the store for suppressions. :meth:`SuppressionCache.screen` looks an
alert up in a :class:`~responder.store.suppressions.Matcher` (one dict look-up keyed by rule and
namespace; nothing more unless a suppression names that pair) and returns ``None`` at once when
nothing is suppressed. Hits are counted in memory once the batch is committed and added to the
store by :meth:`SuppressionCache.refresh`, which also re-reads the active suppressions: every
``refresh_s`` seconds (the intake runs it in the background; the consumer and in-process replays
call it when it is due), and at once in the process that creates or lifts one (:meth:`add`,
:meth:`remove`). Another process's new suppression therefore applies within ``refresh_s``;
an expired one stops applying at its expiry, since the expiry is checked per match.

Counts are best effort: hits of a process killed between two flushes are lost (the alerts were
suppressed all the same; nothing else depends on the count).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from responder.models.alerts import Alert
from responder.models.times import now_ns
from responder.store import suppressions as store

log = structlog.get_logger("drift.intake")

DEFAULT_REFRESH_S = 5.0


class SuppressionCache:
    def __init__(self, engine: Engine, *, refresh_s: float = DEFAULT_REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        self.clock = clock
        self.matcher = store.Matcher()
        self._active: list[store.Suppression] = []
        self._loaded_at: float | None = None
        self._lock = threading.Lock()  # guards the counters
        self._refreshing = threading.Lock()
        self._pending: dict[str, tuple[int, int]] = {}
        self._totals: Counter[str] = Counter()

    # -- the hot path ---------------------------------------------------------------------
    def screen(self, alerts: Sequence[Alert], now: int) -> list[str | None] | None:
        """The suppression of each alert (None: record it), or None when none is suppressed."""
        matcher = self.matcher
        if not matcher:
            return None
        marks: list[str | None] | None = None
        match = matcher.match
        for index, alert in enumerate(alerts):
            found = match(alert, now)
            if found is not None:
                if marks is None:
                    marks = [None] * len(alerts)
                marks[index] = found
        return marks

    def count(self, hits: Counter[str], at_ns: int) -> None:
        """Hits of a committed batch: kept in memory until the next flush."""
        with self._lock:
            for sid, n in hits.items():
                before = self._pending.get(sid)
                self._pending[sid] = (n + before[0], max(at_ns, before[1])) if before \
                    else (n, at_ns)
                self._totals[sid] += n

    def due(self, factor: float = 1.0) -> bool:
        return self._loaded_at is None or self.clock() - self._loaded_at >= \
            self.refresh_s * factor

    # -- refreshing -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Flush counted hits and re-read the active suppressions. False when another thread
        was already at it or the store could not be reached (the old set stays in force).
        Before the first load, waits for a refresh under way rather than record without it."""
        first = self._loaded_at is None
        if not self._refreshing.acquire(blocking=first):
            return False
        if first and self._loaded_at is not None:
            self._refreshing.release()  # the thread we waited for loaded them
            return True
        try:
            pending = self._take_pending()
            try:
                with self.engine.begin() as conn:
                    store.add_hits(conn, pending)
                    found = store.list_suppressions(conn, now_ns=now_ns())
            except SQLAlchemyError as exc:
                self._restore_pending(pending)
                self._loaded_at = self.clock()  # do not retry on every batch while it is down
                log.warning("suppressions.refresh_failed", error=type(exc).__name__,
                            detail=str(exc)[:200])
                return False
            self._use(found)
            self._loaded_at = self.clock()
            return True
        finally:
            self._refreshing.release()

    def flush(self) -> None:
        """Write counted hits now (on shutdown)."""
        pending = self._take_pending()
        if not pending:
            return
        try:
            with self.engine.begin() as conn:
                store.add_hits(conn, pending)
        except SQLAlchemyError as exc:
            self._restore_pending(pending)
            log.warning("suppressions.flush_failed", error=type(exc).__name__)

    def add(self, suppression: store.Suppression) -> None:
        """A suppression this process just created applies at once."""
        with self._refreshing:  # not overwritten by a refresh that read the store before
            self._use([*(s for s in self._active if s.id != suppression.id), suppression])

    def remove(self, suppression_id: str) -> None:
        """A suppression this process just lifted stops applying at once."""
        with self._refreshing:
            self._use([s for s in self._active if s.id != suppression_id])

    def totals(self) -> dict[str, int]:
        """Alerts suppressed by this process since it started, by suppression (metrics)."""
        with self._lock:
            return dict(self._totals)

    # -- helpers --------------------------------------------------------------------------
    def _use(self, active: list[store.Suppression]) -> None:
        self._active = active
        self.matcher = store.Matcher.of(active)

    def _take_pending(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def _restore_pending(self, pending: dict[str, tuple[int, int]]) -> None:
        with self._lock:
            for sid, (n, at) in pending.items():
                before = self._pending.get(sid)
                self._pending[sid] = (n + (before[0] if before else 0),
                                      max(at, before[1]) if before else at)
