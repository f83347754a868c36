"""PostgreSQL's statements for the intake's hot path: one fixed statement per table.

Each statement takes one array per column and ``unnest``s it, so its text never depends on the
row count: the server prepares it once per connection and psycopg adapts the arrays in C. Rows
bound one by one (or as a multi-row ``VALUES`` built per batch) cost ~20 us of CPU per value in
SQLAlchemy and psycopg, which was most of the intake's CPU (bench/PROFILE.md).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.numeric import Int8Dumper
from sqlalchemy import Connection

# One statement writes a whole batch: the incidents (counts added, context kept), their rules,
# and the alerts that take a sample slot, which depends on each incident's count after this
# batch (joined from the incident upsert's RETURNING). Unnest keeps array order; ORDER BY makes it
# explicit, so rows are locked in the caller's order (a fixed order across concurrent batches
# never deadlocks). Sample candidates are each incident's first N alerts in the batch and its
# last `quota`; of those, the ones past the incident's first N take the ring's next slots
# (recording.latest_taken, recording._sample_rows), so the slots are distinct, which ON CONFLICT
# requires.
RECORD = """
WITH inc AS (
  INSERT INTO incidents AS t (id, key, status, alert_count, priority_rank, first_alert_id,
      first_seen_ns, last_seen_ns, opened_at_ns, last_received_ns, audited_count,
      audited_at_ns, latest_samples, namespace, pod, pod_uid, node, container_id,
      container_full_id, container_name, image)
  SELECT id, key, 'open', n, prio, first_id, first_ns, last_ns, %(received)b, %(received)b, n,
         %(received)b, greatest(0, least(%(quota)b, n - %(first)b)), namespace, pod, pod_uid,
         node, container_id, container_full_id, container_name, image
  FROM unnest(%(i_id)b::text[], %(i_key)b::text[], %(i_n)b::bigint[], %(i_prio)b::smallint[],
              %(i_first_id)b::text[], %(i_first_ns)b::bigint[], %(i_last_ns)b::bigint[],
              %(i_namespace)b::text[], %(i_pod)b::text[], %(i_pod_uid)b::text[],
              %(i_node)b::text[], %(i_container_id)b::text[], %(i_container_full_id)b::text[],
              %(i_container_name)b::text[], %(i_image)b::text[])
       WITH ORDINALITY AS u(id, key, n, prio, first_id, first_ns, last_ns, namespace, pod,
                            pod_uid, node, container_id, container_full_id, container_name,
                            image, ord)
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
  FROM unnest(%(r_incident_id)b::text[], %(r_rule)b::text[], %(r_n)b::bigint[],
              %(r_prio)b::smallint[], %(r_first_ns)b::bigint[])
       WITH ORDINALITY AS u(incident_id, rule, n, prio, first_ns, ord)
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
        FROM unnest(%(s_incident_id)b::text[], %(s_index)b::bigint[], %(s_n)b::bigint[],
                    %(s_alert_id)b::text[], %(s_payload)b::bytea[])
             WITH ORDINALITY AS u(incident_id, idx, n, alert_id, payload, ord)
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
