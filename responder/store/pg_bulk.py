"""PostgreSQL's statement for the intake's hot path: one fixed statement per batch.

The rows arrive as one JSON document per table (arrays of values, in column order, written by
orjson) and are taken apart by the server, so the statement's text never depends on the row count:
it is prepared once per connection. Rows bound one by one (or as a multi-row ``VALUES`` built per
batch) cost ~20 us of CPU per value in SQLAlchemy and psycopg; one array per column still cost
~0.7 us per value, dumped element by element in Python (bench/PROFILE.md). The samples' JSON text
travels as ``bytea``, as received.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.numeric import Int8Dumper
from sqlalchemy import Connection

# One statement writes a whole batch: the incidents (counts added, context kept), their rules,
# and the alerts that take a sample slot, which depends on each incident's count after this
# batch (joined from the incident upsert's RETURNING). ORDER BY ord keeps the caller's order, so
# rows are locked in it (a fixed order across concurrent batches never deadlocks). Sample
# candidates are each incident's first N alerts in the batch and its last `quota`; of those, the
# ones past the incident's first N take the ring's next slots (recording.latest_taken,
# recording._sample_rows), so the slots are distinct, which ON CONFLICT requires.
RECORD = """
WITH inc AS (
  INSERT INTO incidents AS t (id, key, status, alert_count, priority_rank, first_alert_id,
      first_seen_ns, last_seen_ns, opened_at_ns, last_received_ns, audited_count,
      audited_at_ns, latest_samples, namespace, pod, pod_uid, node, container_id,
      container_full_id, container_name, image)
  SELECT id, key, 'open', n, prio, first_id, first_ns, last_ns, %(received)b, %(received)b, n,
         %(received)b, greatest(0, least(%(quota)b, n - %(first)b)), namespace, pod, pod_uid,
         node, container_id, container_full_id, container_name, image
  FROM (SELECT r->>0 AS id, r->>1 AS key, (r->>2)::bigint AS n, (r->>3)::smallint AS prio,
               r->>4 AS first_id, (r->>5)::bigint AS first_ns, (r->>6)::bigint AS last_ns,
               r->>7 AS namespace, r->>8 AS pod, r->>9 AS pod_uid, r->>10 AS node,
               r->>11 AS container_id, r->>12 AS container_full_id,
               r->>13 AS container_name, r->>14 AS image, ord
        FROM jsonb_array_elements(%(incidents)s::jsonb) WITH ORDINALITY AS e(r, ord)) AS u
  ORDER BY ord
  ON CONFLICT (id) DO UPDATE SET
      alert_count = t.alert_count + excluded.alert_count,
      priority_rank = least(t.priority_rank, excluded.priority_rank),
      first_seen_ns = least(t.first_seen_ns, excluded.first_seen_ns),
      last_seen_ns = greatest(t.last_seen_ns, excluded.last_seen_ns),
      last_received_ns = greatest(t.last_received_ns, excluded.last_received_ns),
      latest_samples = t.latest_samples + greatest(0, least(%(quota)b, excluded.alert_count,
          t.alert_count + excluded.alert_count - %(first)b)),
      namespace = coalesce(t.namespace, excluded.namespace),
      pod = coalesce(t.pod, excluded.pod),
      pod_uid = coalesce(t.pod_uid, excluded.pod_uid),
      node = coalesce(t.node, excluded.node),
      container_id = coalesce(t.container_id, excluded.container_id),
      container_full_id = coalesce(t.container_full_id, excluded.container_full_id),
      container_name = coalesce(t.container_name, excluded.container_name),
      image = coalesce(t.image, excluded.image)
  RETURNING t.id, t.alert_count, t.audited_count, t.audited_at_ns, t.latest_samples
), rul AS (
  INSERT INTO incident_rules AS r (incident_id, rule, count, priority_rank, first_seen_ns)
  SELECT incident_id, rule, n, prio, first_ns
  FROM (SELECT r->>0 AS incident_id, r->>1 AS rule, (r->>2)::bigint AS n,
               (r->>3)::smallint AS prio, (r->>4)::bigint AS first_ns, ord
        FROM jsonb_array_elements(%(rules)s::jsonb) WITH ORDINALITY AS e(r, ord)) AS u
  ORDER BY ord
  ON CONFLICT (incident_id, rule) DO UPDATE SET
      count = r.count + excluded.count,
      priority_rank = least(r.priority_rank, excluded.priority_rank),
      first_seen_ns = least(r.first_seen_ns, excluded.first_seen_ns)
  RETURNING r.incident_id, r.rule, r.count
), smp AS (
  INSERT INTO incident_alerts AS s (incident_id, slot, ordinal, alert_id, received_ns, payload)
  SELECT incident_id,
         CASE WHEN ordinal <= %(first)b THEN ordinal - 1
              ELSE %(first)b + mod(ring_end - (n - idx), greatest(%(last)b, 1)) END,
         ordinal, alert_id, %(received)b, convert_from(payload, 'UTF8')
  FROM (SELECT u.incident_id, inc.alert_count - u.n + u.idx + 1 AS ordinal, u.idx, u.n,
               greatest(0, least(%(quota)b, u.n, inc.alert_count - %(first)b)) AS taken,
               inc.latest_samples AS ring_end, u.alert_id, u.payload, u.ord
        FROM (SELECT r->>0 AS incident_id, (r->>1)::bigint AS idx, (r->>2)::bigint AS n,
                     r->>3 AS alert_id, payload, ord
              FROM ROWS FROM (jsonb_array_elements(%(samples)s::jsonb),
                              unnest(%(s_payload)b::bytea[]))
                   WITH ORDINALITY AS e(r, payload, ord)) AS u
        JOIN inc ON inc.id = u.incident_id) AS c
  WHERE ordinal <= %(first)b OR idx >= n - taken
  ORDER BY ord
  ON CONFLICT (incident_id, slot) DO UPDATE SET
      ordinal = excluded.ordinal, alert_id = excluded.alert_id,
      received_ns = excluded.received_ns, payload = excluded.payload
  WHERE excluded.ordinal > s.ordinal
)
SELECT 'i', id, NULL, alert_count, audited_count, audited_at_ns FROM inc
UNION ALL
SELECT 'r', incident_id, rule, count, NULL, NULL FROM rul
"""
# On one line: psycopg caches the conversion of queries up to 4,096 characters (this one is
# ~3,800 without its indentation) and would otherwise parse it again for every batch.
RECORD = " ".join(RECORD.split())


def cursor(conn: Connection) -> psycopg.Cursor[Any]:
    """A cursor on the SQLAlchemy connection's own psycopg connection (same transaction)."""
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"expected a psycopg connection, got {type(raw).__name__}")
    cur = raw.cursor()
    # Always bigint: psycopg would otherwise pick int2/int4/int8 from the values, and a change of
    # parameter types makes the server prepare the statement again.
    cur.adapters.register_dumper(int, Int8Dumper)
    return cur
