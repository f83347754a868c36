"""The fault suites of issue 8 in small: three workers killed with SIGKILL at different points of
runs that isolate a pod, one PostgreSQL outage and one Redis restart under small storms. The
same scenarios run long under `make soak` (tests/soak/, results in bench/SOAK.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.kubernetes_api import FakeKubernetes
from tests.soak.scenarios import (
    KILL_MODES,
    KillTrials,
    Storm,
    check_postgres_outages,
    check_redis_restarts,
    postgres_outages_in_storm,
    redis_restarts_in_storm,
    running_stack,
    stack_env,
    store_totals,
)
from tests.support.servers import (
    PrivatePostgres,
    PrivateRedis,
    postgres_bin_dir,
    redis_server_binary,
)

needs_redis_server = pytest.mark.skipif(redis_server_binary() is None,
                                        reason="needs redis-server for a private Redis")
needs_postgres_server = pytest.mark.skipif(postgres_bin_dir() is None,
                                           reason="needs PostgreSQL's initdb and pg_ctl")


@pytest.fixture
def aof_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis(appendonly=True) as server:
        yield server


@needs_redis_server
def test_workers_killed_at_three_points_of_a_run_leave_every_run_finished_and_isolated_once(
    tmp_path: Path, postgres_url: str, aof_redis: PrivateRedis,
) -> None:
    env = stack_env(tmp_path, database_url=postgres_url, redis_url=aof_redis.url)
    with FakeKubernetes(namespaces=["kube-system"]) as fake, running_stack(env, tmp_path) as stack:
        env["DRIFT_KUBE_HOST"] = fake.host
        trials = KillTrials(stack, fake, seed=3)
        try:
            trials.start()
            done = trials.run(len(KILL_MODES))
        finally:
            trials.close()
        assert [t.mode for t in done] == list(KILL_MODES)
        assert [t.problems for t in done] == [[], [], []]
        assert [(t.status, t.applied_patches, t.policy_creates, t.effects) for t in done] == [
            ("succeeded", 1, 1, 2)] * 3
        assert fake.errors == []


@needs_postgres_server
def test_a_postgres_outage_is_answered_503_and_the_ingest_recovers_without_losing_alerts(
    tmp_path: Path,
) -> None:
    with PrivatePostgres() as postgres:
        env = stack_env(tmp_path, database_url=postgres.url, redis_url=None)
        with running_stack(env, tmp_path) as stack:
            stack.ingest()
            storm = Storm(stack.url, containers=10, threads=2, max_batch=10, seed=4)
            storm.seed_every_container()
            counts, outages = postgres_outages_in_storm(storm, postgres, seconds=4, outages=1)
            assert stack.services[0].alive()
        totals = store_totals(postgres.url)
    assert [o["mode"] for o in outages] == ["immediate"]
    assert counts.requests[503] > 0
    check_postgres_outages(counts, outages, totals, 10)


@needs_redis_server
def test_a_redis_restart_in_a_storm_loses_no_accepted_alert(
    tmp_path: Path, postgres_url: str, aof_redis: PrivateRedis,
) -> None:
    env = stack_env(tmp_path, database_url=postgres_url, redis_url=aof_redis.url)
    with running_stack(env, tmp_path) as stack:
        stack.ingest()
        storm = Storm(stack.url, containers=20, threads=2, max_batch=10, seed=5)
        storm.seed_every_container()
        counts, outages = redis_restarts_in_storm(storm, aof_redis, seconds=3, restarts=1)
        time.sleep(0.2)
        totals = store_totals(postgres_url)
    assert [o["hard"] for o in outages] == [True]
    check_redis_restarts(counts, outages, totals, 20)
