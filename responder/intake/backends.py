"""Which backends a process runs on, built once from the settings.

Embedded default: SQLite store + SQL correlator, no server. Production: PostgreSQL store + Redis
correlator (``DRIFT_DATABASE_URL`` / ``DRIFT_REDIS_URL``). Any mix works; the contract tests run
the same assertions against each.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import sqlalchemy.exc
from sqlalchemy import Engine, text

from responder.conducting.dispatching import Dispatcher
from responder.intake.correlating import Correlator, RedisCorrelator, SqlCorrelator
from responder.intake.planning import RunPlanner
from responder.intake.recording import Recorder
from responder.intake.suppressing import DEFAULT_REFRESH_S, SuppressionCache
from responder.models.incidents import KeySpec
from responder.settings import Settings
from responder.store import migrating, recording
from responder.store.engine import make_engine

#: Errors that mean "a backend is unavailable", answered with 503 and a retry, never 500.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)


@dataclass
class Backends:
    settings: Settings
    engine: Engine
    redis: redis.Redis | None
    correlator: Correlator
    recorder: Recorder
    suppressions: SuppressionCache | None = None

    def describe(self) -> str:
        store = self.engine.url.render_as_string(hide_password=True)
        mode = "embedded" if self.redis is None and self.engine.dialect.name == "sqlite" \
            else "production" if self.redis is not None and self.engine.dialect.name != "sqlite" \
            else "mixed"
        correlation = "redis" if self.redis is not None else "sql (in the store)"
        return f"backends ({mode}): store={store} correlation={correlation}"

    def check_ready(self) -> dict[str, str]:
        """Each backend -> "ok" or the reason it is not reachable."""
        status: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            status["database"] = "ok"
        except UNAVAILABLE as exc:
            status["database"] = f"unavailable: {type(exc).__name__}"
        if self.redis is not None:
            try:
                self.redis.ping()
                status["redis"] = "ok"
            except UNAVAILABLE as exc:
                status["redis"] = f"unavailable: {type(exc).__name__}"
        return status

    def close(self) -> None:
        self.engine.dispose()
        if self.redis is not None:
            self.redis.close()


def policy_from(settings: Settings) -> recording.RecordingPolicy:
    return recording.RecordingPolicy(
        sample_first=settings.sample_first, sample_last=settings.sample_last,
        sample_budget=settings.sample_budget,
        audit_every_alerts=settings.audit_every_alerts,
        audit_every_ns=int(settings.audit_every_seconds * 1e9),
    )


def open_backends(settings: Settings, *, migrate: bool | None = None,
                  planner: RunPlanner | None = None,
                  dispatcher: Dispatcher | None = None) -> Backends:
    engine = make_engine(settings.effective_database_url)
    if settings.auto_migrate if migrate is None else migrate:
        migrating.upgrade(engine)
    window_ns = int(settings.correlation_window_seconds * 1e9)
    client: redis.Redis | None = None
    correlator: Correlator
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                      socket_connect_timeout=5, health_check_interval=30)
        correlator = RedisCorrelator(client, window_ns, settings.redis_prefix)
    else:
        correlator = SqlCorrelator(window_ns)
    cache = SuppressionCache(engine, refresh_s=float(getattr(
        settings, "suppression_refresh_seconds", DEFAULT_REFRESH_S)))
    recorder = Recorder(engine, correlator, KeySpec.parse(settings.correlation_key),
                        policy_from(settings), planner=planner, dispatcher=dispatcher,
                        suppressions=cache)
    return Backends(settings, engine, client, correlator, recorder, cache)
