"""The bounded sample each incident keeps (its first 20 alerts and a ring of its latest 20), and
its rule counts, are the same whatever the batch sizes, on both stores.

The PostgreSQL store computes sample slots inside one SQL statement and the SQLite store in
Python: both are checked against the same model after every batch.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from responder.intake.backends import Backends
from responder.intake.parsing import validate_items
from responder.store import incidents
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
