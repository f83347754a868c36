"""The Celery app: two thin tasks over the executor, and the dispatcher that sends them.

``acks_late`` + prefetch 1: a message is acknowledged only after its task ran, and a worker holds
one message at a time. Redelivery is harmless because every task is idempotent (stale events
change nothing; leases keep one owner per attempt). Run deadlines live in the store and the beat
sweeps them; the only countdowns are short notify retries (Slack's Retry-After or the time until
the channel's next token, capped well below the broker's visibility timeout).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu.transport import sqlalchemy as kombu_sql

from responder.plugins.notify.slack import RateLimited, Transient
from responder.settings import Settings
from responder.store.engine import make_sqlite_directory
from responder.workers.executing import Executor

_state: dict[str, Any] = {}
#: drift.notify tries again after a Slack 5xx or a network failure this many times (1, 2, 4...
#: 60 s apart), so that a short outage does not lose a prompt.
NOTIFY_TRANSIENT_RETRIES = 10
#: How long an evidence step may wait in a node agent's queue.
NODE_QUEUE_EXPIRES_S = 60.0
#: How long a worker on a SQL broker sleeps when its queues are empty (kombu's default: 1 s,
#: which a run pays at every step). The embedded broker is a local file: polling is cheap.
SQL_BROKER_POLLING_INTERVAL_S = 0.05
#: The URL prefixes that select kombu's SQLAlchemy transport.
_SQL_BROKER_SCHEMES = ("sqla+", "sqlalchemy+")


class _SqlBrokerChannel(kombu_sql.Channel):
    def _engine_from_config(self) -> Any:
        # Else a first command on a fresh data directory fails to declare its queue (and
        # retries for seconds).
        make_sqlite_directory(self.connection.client.hostname)
        return super()._engine_from_config()  # type: ignore[no-untyped-call]  # kombu untyped


class SqlBrokerTransport(kombu_sql.Transport):
    """kombu's SQLAlchemy transport, polling often and making a SQLite file's directory.
    Neither of the obvious knobs sets the interval: the ``polling_interval`` transport option
    also reaches ``create_engine`` in this transport (a TypeError), and setting the attribute
    on kombu's class would change it for every user of kombu in the process."""

    Channel = _SqlBrokerChannel
    polling_interval = SQL_BROKER_POLLING_INTERVAL_S


def make_celery(settings: Settings) -> Celery:
    broker = settings.effective_broker_url
    sql_broker = broker.startswith(_SQL_BROKER_SCHEMES)
    if sql_broker:
        # kombu lets a URL's "sqla+" prefix win over a transport class given alongside it: the
        # class comes with the bare SQLAlchemy URL, which the transport reads as before.
        broker = broker.split("+", 1)[1]
    app = Celery("drift-responder", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    if sql_broker:
        app.conf.broker_transport = SqlBrokerTransport
    else:
        app.conf.broker_transport_options = {"visibility_timeout": 3600}

    @app.task(name="drift.start", bind=True)
    def start(self: Any, run_id: str) -> None:
        _executor().start(run_id)

    @app.task(name="drift.run_step", bind=True)
    def run_step(self: Any, run_id: str, step_id: str, attempt: int) -> None:
        _executor().run_step(run_id, step_id, attempt)

    @app.task(name="drift.notify", bind=True, max_retries=None)
    def notify(self: Any, incident_id: str, failures: int = 0) -> None:
        try:
            _state["notify"](incident_id)
        except RateLimited as exc:
            # Re-queued, never slept on: the countdown is the time until this incident's turn
            # (or Slack's Retry-After), and the worker stays free meanwhile.
            raise self.retry(countdown=max(exc.retry_after, 0.001),
                             kwargs={"failures": failures}) from None
        except Transient as exc:
            # Slack 5xx or the network: again later, a bounded number of times.
            if failures >= NOTIFY_TRANSIENT_RETRIES:
                raise
            raise self.retry(countdown=min(60.0, 2.0 ** failures),
                             kwargs={"failures": failures + 1}, exc=exc) from None

    return app


def ensure_queue(app: Celery, attempts: int = 5, name: str | None = None) -> None:
    """Declare the run queue (or ``name``) up front. kombu's SQL transport creates a queue's row
    on first use, and two processes doing that at the same moment collide on its unique name."""
    name = name or str(app.conf.task_default_queue)
    for attempt in range(1, attempts + 1):
        try:
            with app.connection_for_write() as connection:
                app.amqp.queues[name].bind(connection.default_channel).declare()
            return
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def install_executor(executor: Executor, notify: Callable[[str], Any] | None = None) -> None:
    """The executor (and notification function) the tasks of this process use."""
    _state["executor"] = executor
    _state["notify"] = notify or (lambda _incident: None)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool child must not reuse the parent's database connections.
    executor = _state.get("executor")
    if executor is not None:
        executor.engine.dispose(close=False)


def _executor() -> Executor:
    return _state["executor"]  # type: ignore[no-any-return]


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.queue = str(app.conf.task_default_queue)

    def start(self, run_id: str) -> None:
        self.app.send_task("drift.start", args=[run_id], queue=self.queue)

    def run_step(self, run_id: str, step_id: str, attempt: int, timeout_s: float,
                 queue: str | None = None) -> None:
        # A hard limit past the step timeout: a hung plug-in cannot hold a worker for ever.
        # A node agent's queue expires its messages: an agent that died leaves nothing that
        # runs late; the beat's lease sweep routes the attempt again (maybe to the fallback).
        self.app.send_task("drift.run_step", args=[run_id, step_id, attempt],
                           queue=queue or self.queue, soft_time_limit=timeout_s,
                           time_limit=timeout_s + 30,
                           expires=NODE_QUEUE_EXPIRES_S if queue else None)

    def notify(self, incident_id: str) -> None:
        self.app.send_task("drift.notify", args=[incident_id], queue=self.queue)
