"""``make demo``: the spine end to end on the embedded default (SQLite, no Redis, no server).

Starts a real intake on a free local port, posts the Falco samples to it over HTTP the way Falco
and falcosidekick would, then shows the incidents they became and verifies the audit trail.
"""

from __future__ import annotations

import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from responder.intake.app import create_app
from responder.intake.backends import open_backends
from responder.models.times import format_ns
from responder.settings import Settings
from responder.store import audit, incidents

console = Console(soft_wrap=True)

_BUNDLED = Path(__file__).resolve().parent / "demo_alerts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="drift-demo-"))
    token = secrets.token_urlsafe(24)
    # Small aggregation period so the demo's little storm shows up as alerts.received records.
    settings = Settings(data_dir=data_dir, database_url=None, redis_url=None,
                        ingest_token=token, audit_every_alerts=25)
    backends = open_backends(settings)
    console.print(f"[bold]drift-responder demo[/bold] - {backends.describe()}", highlight=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backends), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    console.print(f"intake listening on {base} (token in the URL path, as Falco http_output "
                  "sends it)", highlight=False)

    files = sorted(_BUNDLED.glob("*.json")) + sorted(_BUNDLED.glob("*.ndjson"))
    for path in files:
        ctype = "application/x-ndjson" if path.suffix == ".ndjson" else "application/json"
        response = httpx.post(f"{base}/v1/falco/{token}", content=path.read_bytes(),
                              headers={"Content-Type": ctype}, timeout=10)
        console.print(f"  POST {path.name:<44} -> {response.status_code} "
                      f"{response.json().get('accepted', response.json())} alert(s)",
                      highlight=False)
    storm = [httpx.post(f"{base}/v1/falco/{token}", content=(_BUNDLED / "batch.ndjson")
                        .read_bytes(), headers={"Content-Type": "application/x-ndjson"})
             for _ in range(50)]
    console.print(f"  storm: {sum(r.json()['accepted'] for r in storm)} more alerts from the "
                  "same containers", highlight=False)

    with backends.engine.connect() as conn:
        found = incidents.list_incidents(conn)
        table = Table("incident", "priority", "alerts", "namespace/pod", "node", "rules",
                      title="Incidents (one per container, however many alerts)")
        for i in found:
            table.add_row(i.id, i.priority.label, str(i.alert_count),
                          f"{i.namespace or '-'}/{i.pod or '-'}", i.node or "-",
                          "\n".join(i.rules))
        console.print(table)
        top = found[0] if found else None
        records = list(audit.iter_records(conn))
        verdict = audit.verify(conn)
    if top is not None:
        console.print(f"newest incident {top.id}: first seen {format_ns(top.first_seen_ns)}, "
                      f"image {top.image}", highlight=False, markup=False)
    console.print(f"\n[bold]Audit trail[/bold] ({len(records)} records, hash-chained):")
    for record in records[-8:]:
        console.print(f"  #{record.seq} {record.kind:<16} {record.incident_id} "
                      f"{record.hash[:16]}...", highlight=False, markup=False)
    server.should_exit = True
    thread.join(10)
    backends.close()
    if not verdict.ok:
        console.print(f"[red]audit verify FAILED at seq {verdict.first_bad_seq}[/red]")
        return 1
    console.print(f"audit verify: OK ({verdict.records} records, chain intact)")
    console.print(f"state kept in {data_dir} (DRIFT_DATA_DIR={data_dir} drift-responder "
                  "incidents list)", highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
