"""The bounded sample each incident keeps (its first 20 alerts and a ring of its latest 20), and
its rule counts, on both stores.

While a write brings an incident no more alerts than its share of the sampling budget, the ring
holds exactly the last 20 alerts whatever the batch sizes; past it (a storm over many containers)
each write adds only its latest alerts. The PostgreSQL store computes sample slots inside one SQL
statement and the SQLite store in Python: both are checked against the same model (a plain list,
not slot arithmetic) after every batch.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, insert, make_url, select

from responder.intake.backends import Backends, open_backends
from responder.intake.parsing import validate_items
from responder.store import incidents, migrating
from responder.store.engine import make_engine
from responder.store.recording import AlertGroup, RecordingPolicy, record_groups
from responder.store.schema import incident_alerts
from responder.store.schema import incidents as incidents_table
from tests.conftest import POSTGRES_URL, make_settings
from tests.support.samples import drift_alert

FIRST, LAST = 20, 20
RULES = ("Drop and execute new binary in container", "Terminal shell in container")


def _expected_ordinals(total: int) -> list[int]:
    first = set(range(1, min(total, FIRST) + 1))
    last = set(range(max(FIRST + 1, total - LAST + 1), total + 1))
    return sorted(first | last)


@pytest.mark.parametrize("seed", [1, 2])
def test_samples_keep_the_first_and_latest_alerts_of_each_incident_for_any_batching(
        backends: Backends, seed: int) -> None:
    rng = random.Random(seed)
    containers = (1, 2, 3)
    stream = [drift_alert(rng.choice(containers), seq=seq, rule=rng.choice(RULES))
              for seq in range(260)]
    sent: dict[int, list[str]] = {c: [] for c in containers}  # alert ids in recorded order
    rules: dict[int, Counter[str]] = {c: Counter() for c in containers}
    incident_of: dict[int, str] = {}
    position = 0
    sizes = [1, 1, 3, 45, 2, 60, 1, 19, 7, 50, 4, 67]
    assert sum(sizes) == len(stream)
    for size in sizes:
        batch = stream[position:position + size]
        position += size
        recorded = backends.recorder.record(validate_items(batch))
        for raw, incident_id in zip(batch, recorded.incident_ids, strict=True):
            container = int(raw["output_fields"]["container.id"], 16)
            incident_of.setdefault(container, incident_id)
            assert incident_of[container] == incident_id
            sent[container].append(raw["uuid"])
            rules[container][raw["rule"]] += 1
        with backends.engine.connect() as conn:
            for container, incident_id in incident_of.items():
                detail = incidents.get_incident(conn, incident_id)
                assert detail is not None
                ids = sent[container]
                assert detail.incident.alert_count == len(ids)
                ordinals = _expected_ordinals(len(ids))
                assert [s.ordinal for s in detail.samples] == ordinals, (size, container)
                assert [s.alert_id for s in detail.samples] == [ids[o - 1] for o in ordinals]
                assert [s.payload["uuid"] for s in detail.samples] == \
                    [ids[o - 1] for o in ordinals]
                assert detail.rule_counts == dict(rules[container])


def _stored_ordinals(engine: Engine, incident_id: str) -> tuple[int, list[int], list[str]]:
    with engine.connect() as conn:
        detail = incidents.get_incident(conn, incident_id)
    assert detail is not None
    return (detail.incident.alert_count, [s.ordinal for s in detail.samples],
            [s.payload["uuid"] for s in detail.samples])


@pytest.mark.parametrize("seed", [3, 4])
def test_a_storm_write_samples_each_incidents_latest_alerts_within_the_budget(
        backend_kind: str, request: pytest.FixtureRequest, seed: int) -> None:
    budget = 6
    backends = open_backends(make_settings(backend_kind, request, sample_budget=budget))
    try:
        rng = random.Random(seed)
        containers = range(1, 9)
        sent: dict[int, list[str]] = {c: [] for c in containers}
        ring: dict[int, list[int]] = {c: [] for c in containers}  # ordinals, in sampling order
        incident_of: dict[int, str] = {}
        seq = 0
        passed_over = 0  # alerts past the first FIRST that no ring took
        for _ in range(80):
            size = rng.choice((1, 2, 5, 9, 24, 60, 120))
            batch = []
            for _ in range(size):
                batch.append(drift_alert(rng.choice(containers), seq=seq))
                seq += 1
            recorded = backends.recorder.record(validate_items(batch))
            per_container: dict[int, int] = Counter()
            for raw, incident_id in zip(batch, recorded.incident_ids, strict=True):
                container = int(raw["output_fields"]["container.id"], 16)
                incident_of.setdefault(container, incident_id)
                sent[container].append(raw["uuid"])
                per_container[container] += 1
            # The model: each incident of the write may add its latest `share` alerts (those past
            # its first FIRST) to the ring, whose last LAST entries are kept.
            share = min(LAST, max(1, budget // len(per_container)))
            for container, n in per_container.items():
                total = len(sent[container])
                fresh = [o for o in range(total - n + 1, total + 1) if o > FIRST][-share:]
                ring[container].extend(fresh)
                passed_over += len([o for o in range(total - n + 1, total + 1) if o > FIRST]) \
                    - len(fresh)
            for container, incident_id in incident_of.items():
                total, ordinals, uuids = _stored_ordinals(backends.engine, incident_id)
                assert total == len(sent[container])
                expected = list(range(1, min(total, FIRST) + 1)) + ring[container][-LAST:]
                assert ordinals == expected, (size, container)
                assert uuids == [sent[container][o - 1] for o in expected]
        assert min(len(r) for r in ring.values()) > LAST  # every ring wrapped
        assert passed_over > 1000  # and writes brought more than the budget
    finally:
        backends.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, not migrated."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/old.db"
        return
    name = f"drift_test_upgrade_{tmp_path.name[-12:].replace('-', '_')}"
    admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrading_a_store_continues_each_incidents_latest_ring_where_it_was(
        fresh_store_url: str) -> None:
    # A store written before the ring kept its position: incident with 57 alerts, whose ring
    # (slots 20..39) holds ordinals 38..57, ordinal o in slot 20 + (o - 21) % 20.
    engine = make_engine(fresh_store_url)
    migrating.upgrade(engine, "0006")
    payload = '{"uuid": "old-%d", "rule": "r", "priority": "Critical"}'
    with engine.begin() as conn:
        conn.execute(insert(incidents_table).values(
            id="01JOLDINCIDENT000000000000", key="k", status="open", alert_count=57,
            priority_rank=2, first_alert_id="old-1", first_seen_ns=1, last_seen_ns=2,
            opened_at_ns=1, last_received_ns=2, audited_count=57, audited_at_ns=2))
        conn.execute(insert(incident_alerts), [
            {"incident_id": "01JOLDINCIDENT000000000000",
             "slot": o - 1 if o <= FIRST else FIRST + (o - FIRST - 1) % LAST, "ordinal": o,
             "alert_id": f"old-{o}", "received_ns": 2, "payload": payload % o}
            for o in [*range(1, 21), *range(38, 58)]])
    migrating.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(select(incidents_table.c.latest_samples)).scalar_one() == 37
    try:
        # The next alert replaces the ring's oldest (ordinal 38), not another entry.
        with engine.begin() as conn:
            record_groups(conn, [AlertGroup("01JOLDINCIDENT000000000000", "k",
                                            validate_items([drift_alert(1, seq=99)]))],
                          received_ns=3, policy=RecordingPolicy())
        total, ordinals, _ = _stored_ordinals(engine, "01JOLDINCIDENT000000000000")
        assert total == 58
        assert ordinals == [*range(1, 21), *range(39, 59)]
    finally:
        engine.dispose()
