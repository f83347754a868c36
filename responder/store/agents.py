"""Node agents' heartbeats: which nodes can collect evidence from the host right now.

An agent upserts its row every few seconds. The dispatcher reads it before sending an evidence
step to ``evidence.<node>``: a queue with no consumer would hold the step until its lease
expired, so a node whose agent is silent gets the fallback (or a clear failure) at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from responder.store.schema import agents


@dataclass(frozen=True, slots=True)
class AgentRow:
    node: str
    hostname: str
    pid: int
    version: str
    started_ns: int
    last_seen_ns: int


def heartbeat(conn: Connection, *, node: str, hostname: str, pid: int, version: str,
              started_ns: int, now_ns: int) -> None:
    values = {"hostname": hostname, "pid": pid, "version": version, "started_ns": started_ns,
              "last_seen_ns": now_ns}
    changed = conn.execute(update(agents).where(agents.c.node == node).values(**values))
    if changed.rowcount == 0:
        conn.execute(insert(agents).values(node=node, **values))


def get(conn: Connection, node: str) -> AgentRow | None:
    row = conn.execute(select(agents).where(agents.c.node == node)).first()
    return AgentRow(**row._mapping) if row is not None else None


def live(conn: Connection, node: str, *, now_ns: int, stale_ns: int) -> bool:
    row = get(conn, node)
    return row is not None and row.last_seen_ns >= now_ns - stale_ns


def all_agents(conn: Connection) -> list[AgentRow]:
    return [AgentRow(**r._mapping) for r in conn.execute(select(agents).order_by(agents.c.node))]
