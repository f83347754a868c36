"""Redis (the correlator) restarted in the middle of storms: every alert that got a 202 is
counted in an incident, and each container has exactly one incident (issue 8, Faults). The
ingest is a real process on PostgreSQL and a private Redis, with AOF fsynced on every write; and
once more without persistence, where the store has to give the correlator its incidents back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.soak.scenarios import (
    Storm,
    check_redis_restarts,
    redis_restarts_in_storm,
    running_stack,
    stack_env,
    store_totals,
)
from tests.support.servers import PrivateRedis

STORM_S = float(os.environ.get("DRIFT_SOAK_STORM_SECONDS", "60"))
RESTARTS = max(1, int(STORM_S // 8))
CONTAINERS = 100


@pytest.fixture(params=["aof", "no-persistence"])
def restarted_redis(request: pytest.FixtureRequest) -> Iterator[PrivateRedis]:
    with PrivateRedis(appendonly=request.param == "aof") as server:
        yield server


@pytest.mark.timeout(1800)
def test_every_accepted_alert_is_counted_across_redis_restarts_in_a_storm(
    tmp_path: Path, postgres_url: str, restarted_redis: PrivateRedis,
    soak_report: dict[str, Any],
) -> None:
    env = stack_env(tmp_path, database_url=postgres_url, redis_url=restarted_redis.url)
    with running_stack(env, tmp_path) as stack:
        stack.ingest()
        storm = Storm(stack.url, containers=CONTAINERS, threads=4, max_batch=20, seed=1)
        storm.seed_every_container()
        counts, outages = redis_restarts_in_storm(storm, restarted_redis, seconds=STORM_S,
                                                  restarts=RESTARTS)
        time.sleep(0.5)
        totals = store_totals(postgres_url)
        soak_report.update(
            aof=restarted_redis.appendonly, storm_s=STORM_S, containers=CONTAINERS,
            restarts=len(outages), requests=dict(counts.requests), accepted=counts.accepted,
            refused=counts.refused, stored=totals.alerts, incidents=totals.incidents,
            transport_errors=dict(counts.errors), outages=outages)
    assert len(outages) == RESTARTS
    check_redis_restarts(counts, outages, totals, CONTAINERS)
