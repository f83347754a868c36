"""The falcosidekick Redis-list consumer against real Redis: batches, dead letters, crashes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from responder.intake.backends import Backends, open_backends
from responder.intake.consuming import ListConsumer
from responder.intake.recording import Recorder
from responder.store import incidents
from tests.conftest import REDIS_URL, make_settings
from tests.support.samples import drift_alert, json_samples


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Iterator[Backends]:
    opened = open_backends(make_settings("production", request))
    yield opened
    opened.close()


@pytest.fixture
def source_key(redis_prefix: str) -> str:
    return f"{redis_prefix}falco"


def _consumer(backends: Backends, key: str, name: str = "c1", **kw: Any) -> ListConsumer:
    return ListConsumer(redis.Redis.from_url(REDIS_URL), backends.recorder, key=key, name=name,
                        prefix=backends.settings.redis_prefix, **kw)


def _counts(backends: Backends) -> list[int]:
    with backends.engine.connect() as conn:
        return sorted(i.alert_count for i in incidents.list_incidents(conn))


class _CrashAfterRecording(Recorder):
    """A real recorder whose process 'dies' right after the commit, before the ack."""

    def record(self, *args: Any, **kwargs: Any) -> Any:
        super().record(*args, **kwargs)
        raise SystemExit("killed")


def test_pushed_alerts_are_recorded_in_batches(production: Backends, source_key: str,
                                               redis_client: redis.Redis) -> None:
    for sample in json_samples().values():
        redis_client.rpush(source_key, json.dumps(sample))
    for i in range(20):
        redis_client.rpush(source_key, json.dumps(drift_alert(1, seq=i)))
    consumer = _consumer(production, source_key, batch_size=10)
    while consumer.step():
        pass
    assert consumer.stats.recorded == 25
    assert consumer.stats.batches == 3
    assert redis_client.llen(source_key) == 0
    assert redis_client.llen(consumer.processing) == 0
    assert _counts(production) == [1, 1, 1, 1, 1, 20]


def test_bad_items_go_to_the_dead_letter_list_with_their_reason(
    production: Backends, source_key: str, redis_client: redis.Redis,
) -> None:
    redis_client.rpush(source_key, json.dumps(drift_alert(1)), b"{broken", json.dumps({"rule": 1}),
                       json.dumps(drift_alert(2)))
    consumer = _consumer(production, source_key)
    assert consumer.step()
    assert consumer.stats.recorded == 2
    dead = [json.loads(x) for x in redis_client.lrange(consumer.dead_key, 0, -1)]
    assert [d["item"] for d in dead] == ["{broken", '{"rule": 1}']
    assert "not valid JSON" in dead[0]["reason"]
    assert "rule" in dead[1]["reason"]
    assert _counts(production) == [1, 1]


def test_a_consumer_killed_before_recording_loses_nothing(
    production: Backends, source_key: str, redis_client: redis.Redis,
) -> None:
    for i in range(7):
        redis_client.rpush(source_key, json.dumps(drift_alert(1, seq=i)))
    doomed = ListConsumer(redis.Redis.from_url(REDIS_URL), production.recorder, key=source_key,
                          name="c1", prefix=production.settings.redis_prefix)
    claimed = doomed._claim(keys=[doomed.key, doomed.processing, doomed.batch_key],
                            args=[5, "batch-1"])  # claimed, then the process died
    assert len(claimed[1]) == 5
    assert redis_client.llen(source_key) == 2
    restarted = _consumer(production, source_key, name="c1", batch_size=5)
    while restarted.step():
        pass
    assert restarted.stats.recorded == 7
    assert _counts(production) == [7]


def test_a_consumer_killed_after_recording_does_not_count_twice(
    production: Backends, source_key: str, redis_client: redis.Redis,
) -> None:
    for i in range(4):
        redis_client.rpush(source_key, json.dumps(drift_alert(1, seq=i)))
    crashing = _CrashAfterRecording(production.engine, production.correlator,
                                    production.recorder.key_spec, production.recorder.policy)
    doomed = ListConsumer(redis.Redis.from_url(REDIS_URL), crashing, key=source_key, name="c1",
                          prefix=production.settings.redis_prefix)
    with pytest.raises(SystemExit):
        doomed.step()
    assert redis_client.llen(doomed.processing) == 4  # recorded but never acked
    restarted = _consumer(production, source_key, name="c1")
    assert restarted.step()
    assert restarted.stats.duplicate_batches == 1
    assert redis_client.llen(restarted.processing) == 0
    assert _counts(production) == [4]


def test_a_live_consumer_adopts_the_batch_of_a_dead_one(
    production: Backends, source_key: str, redis_client: redis.Redis,
) -> None:
    for i in range(3):
        redis_client.rpush(source_key, json.dumps(drift_alert(1, seq=i)))
    dead = _consumer(production, source_key, name="gone")
    dead._claim(keys=[dead.key, dead.processing, dead.batch_key], args=[10, "b-gone"])
    survivor = _consumer(production, source_key, name="alive")
    redis_client.set(dead.alive_key, "1", ex=30)
    assert survivor.adopt_orphans() == 0  # its heartbeat is still fresh
    redis_client.delete(dead.alive_key)
    assert survivor.adopt_orphans() == 1
    assert redis_client.exists(dead.processing) == 0
    assert _counts(production) == [3]


def test_the_run_loop_waits_for_alerts_and_stops_when_asked(
    production: Backends, source_key: str, redis_client: redis.Redis,
) -> None:
    consumer = _consumer(production, source_key)
    calls = {"n": 0}

    def stop_after_a_few() -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            redis_client.rpush(source_key, json.dumps(drift_alert(5)))
        return calls["n"] > 5

    stats = consumer.run(should_stop=stop_after_a_few, idle_timeout_s=1)
    assert stats.recorded == 1
    assert _counts(production) == [1]
