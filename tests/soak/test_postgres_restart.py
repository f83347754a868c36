"""PostgreSQL (the store) stopped and started again under a storm of alerts: while it is down
the ingest answers 503 with a reason and a Retry-After (never 500) and /readyz fails; once it is
back the same ingest process accepts again by itself, and nothing it accepted is lost (issue 8,
Faults). Crashes (``pg_ctl stop -m immediate``) and clean stops (``-m fast``) alternate; the
correlator is Redis or the store itself."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.soak.scenarios import (
    Storm,
    check_postgres_outages,
    postgres_outages_in_storm,
    running_stack,
    stack_env,
    store_totals,
)
from tests.support.servers import PrivatePostgres, PrivateRedis

STORM_S = float(os.environ.get("DRIFT_SOAK_STORM_SECONDS", "60"))
OUTAGES = max(1, int(STORM_S // 10))
CONTAINERS = 50


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("correlation", ["redis", "sql"])
def test_the_ingest_answers_503_while_postgres_is_down_and_recovers_by_itself_losing_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres, correlation: str,
    soak_report: dict[str, Any],
) -> None:
    with contextlib.ExitStack() as cleanup:
        redis_url = None
        if correlation == "redis":
            redis_url = cleanup.enter_context(PrivateRedis(appendonly=False)).url
        env = stack_env(tmp_path, database_url=private_postgres.url, redis_url=redis_url)
        stack = cleanup.enter_context(running_stack(env, tmp_path))
        stack.ingest()
        ingest = stack.services[0]
        storm = Storm(stack.url, containers=CONTAINERS, threads=3, max_batch=20, seed=2)
        storm.seed_every_container()
        counts, outages = postgres_outages_in_storm(storm, private_postgres, seconds=STORM_S,
                                                    outages=OUTAGES)
        totals = store_totals(private_postgres.url)
        soak_report.update(
            correlation=correlation, storm_s=STORM_S, containers=CONTAINERS,
            requests=dict(counts.requests), accepted=counts.accepted, refused=counts.refused,
            stored=totals.alerts, ambiguous=totals.alerts - counts.accepted,
            incidents=totals.incidents, transport_errors=dict(counts.errors), outages=outages)
        assert ingest.alive(), "the ingest exited: it should ride the outages out"
    assert len(outages) == OUTAGES
    check_postgres_outages(counts, outages, totals, CONTAINERS)
