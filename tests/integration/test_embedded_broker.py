"""The embedded broker (kombu's SQLAlchemy transport on SQLite) hands a task to an idle worker
within a poll of a few tens of milliseconds, not kombu's default second: a playbook run pays that
wait at every step. It makes its file's directory, as the embedded store does. The Redis broker
is left as kombu makes it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sql

from responder.settings import Settings
from responder.workers.app import ensure_queue, make_celery
from tests.conftest import REDIS_URL
from tests.support.processes import wait_for
from tests.support.stack import Stack

#: The embedded default whatever DRIFT_* says in the environment of the tests.
EMBEDDED = {"redis_url": None, "broker_url": None}
TASKS = 9
#: Between two tasks the worker goes idle: with kombu's 1 s poll, a task sent this long after
#: the worker took the previous one waits about 0.7 s.
IDLE_S = 0.3


def test_the_embedded_broker_polls_often_without_changing_kombus_own_transport(
    tmp_path: Path,
) -> None:
    app = make_celery(Settings(data_dir=tmp_path, **EMBEDDED))
    with app.connection_for_write() as connection:
        transport = connection.transport
        assert isinstance(transport, kombu_sql.Transport)
        assert transport.polling_interval <= 0.1
        assert connection.hostname == f"sqlite:///{tmp_path.resolve() / 'broker.db'}"
        connection.default_channel.queue_declare(queue="declared", passive=False)
    assert (tmp_path / "broker.db").is_file()
    assert "polling_interval" not in vars(kombu_sql.Transport)  # other users of kombu keep theirs


def test_the_redis_broker_is_kombus_redis_transport_with_its_visibility_timeout(
    tmp_path: Path,
) -> None:
    app = make_celery(Settings(data_dir=tmp_path, redis_url=REDIS_URL))
    with app.connection_for_write() as connection:
        assert type(connection.transport) is kombu_redis.Transport
    assert app.conf.broker_transport is None
    assert app.conf.broker_transport_options == {"visibility_timeout": 3600}


def test_a_first_command_declares_its_queue_before_the_data_directory_exists(
    tmp_path: Path,
) -> None:
    data = tmp_path / "fresh" / "data"
    app = make_celery(Settings(data_dir=data, **EMBEDDED))
    ensure_queue(app, attempts=1)  # the first attempt works: nothing to wait and retry for
    assert (data / "broker.db").is_file()


@pytest.mark.parametrize("stack_env", ["embedded"], indirect=True)
def test_an_idle_embedded_worker_takes_a_task_well_within_a_second(stack: Stack) -> None:
    queue = stack.env["DRIFT_QUEUE"]
    worker = stack.start("worker", "--pool", "solo", name="worker")
    app = make_celery(Settings(data_dir=Path(stack.env["DRIFT_DATA_DIR"]), queue=queue,
                               **EMBEDDED))

    def send_and_time_the_take(timeout: float) -> float:
        # A step of no run: the worker takes it, finds nothing to do, and is idle again.
        sent = time.monotonic()
        app.send_task("drift.run_step", args=["no-such-run", "step", 1], queue=queue)

        def taken() -> bool:
            assert worker.alive(), worker.output()
            return channel.queue_declare(queue=queue, passive=True).message_count == 0

        wait_for(taken, timeout, 0.005, what="the worker to take the task")
        return time.monotonic() - sent

    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            send_and_time_the_take(60)  # once the worker has started
            latencies = []
            for _ in range(TASKS):
                time.sleep(IDLE_S)
                latencies.append(send_and_time_the_take(10))
    finally:
        app.close()
    assert statistics.median(latencies) < 0.3, [round(s, 3) for s in latencies]
