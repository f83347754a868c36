"""``make demo``: Detect -> Isolate on the embedded default (SQLite store and broker, no server).

Starts a real intake on a free local port and a real Celery worker process, posts the Falco
samples over HTTP the way Falco and falcosidekick would, shows the incidents they became and the
approval a drift playbook asks for, approves isolation as a demo analyst, follows the run to its
end, and verifies the audit trail.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from responder.intake.app import create_app
from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.playbooks.inspecting import lint_paths
from responder.plugins.registry import load_all
from responder.settings import Settings
from responder.store import audit, incidents, runs
from responder.workers.app import CeleryDispatcher, ensure_queue, make_celery
from responder.workers.executing import Executor

console = Console(soft_wrap=True)
_BUNDLED = Path(__file__).resolve().parent / "demo_alerts"
ANALYST = "demo-analyst"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(text: str) -> None:
    console.print(f"\n[bold cyan]>> {text}[/bold cyan]")


def _wait(what: str, check: Any, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="drift-demo-"))
    playbooks_dir = Path(os.environ.get("DRIFT_PLAYBOOKS_DIR", "playbooks")).resolve()
    token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env.update({"DRIFT_DATA_DIR": str(data_dir), "DRIFT_PLAYBOOKS_DIR": str(playbooks_dir),
                "DRIFT_AUDIT_EVERY_ALERTS": "25", "DRIFT_DRY_RUN": "true"})
    settings = Settings(data_dir=data_dir, playbooks_dir=playbooks_dir, ingest_token=token,
                        audit_every_alerts=25, dry_run=True)
    report = lint_paths([playbooks_dir], {p.name: p for p in load_all()})
    if report.problems or not report.playbooks:
        console.print(f"playbooks at {playbooks_dir}: {len(report.problems)} problem(s), "
                      f"{len(report.playbooks)} playbook(s); run from the repository root",
                      markup=False)
        return 1
    celery_app = make_celery(settings)
    ensure_queue(celery_app)
    dispatcher = CeleryDispatcher(celery_app)
    backends = open_backends(settings, planner=RunPlanner(report.playbooks),
                             dispatcher=dispatcher)
    console.print(f"[bold]drift-responder demo[/bold] - {backends.describe()}, broker=embedded "
                  f"SQLite, {len(report.playbooks)} playbooks", highlight=False)

    _step("Starting a Celery worker and the beat (deadlines, retries)")
    # A fixed argv of our own command; no shell, nothing from alerts.
    processes = [subprocess.Popen([sys.executable, "-m", "responder", *args], env=env,  # noqa: S603
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for args in (["worker", "--pool", "solo"], ["beat", "--interval", "0.2"])]
    if not os.environ.get("KUBECONFIG") and not Path("~/.kube/config").expanduser().exists():
        console.print("  no Kubernetes cluster configured: the playbook's cluster steps will "
                      "fail cleanly and the decision is recorded for a person to act on "
                      "(with a kubeconfig they run, in dry-run here)", highlight=False)
    try:
        return _run(backends, settings, dispatcher, token, started)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        backends.close()


def _run(backends: Backends, settings: Settings, dispatcher: CeleryDispatcher, token: str,
         started: float) -> int:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backends), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait("the intake", lambda: server.started)
    base = f"http://127.0.0.1:{port}"
    _step(f"Falco alerts -> intake at {base}/v1/falco/<token>")
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
                      f"{i.namespace or '-'}/{i.pod or '-'}", i.node or "-", "\n".join(i.rules))
    console.print(table)

    target = next(i for i in found if i.namespace == "shop")
    _step(f"The drop-and-execute playbook runs for {target.id} and asks for a decision")

    def pending() -> Any:
        with backends.engine.connect() as conn:
            return next(iter(runs.approvals_for_incident(conn, target.id, "pending")), None)

    approval = _wait("the approval request", pending)
    params = approval.params
    prompt = Text()
    prompt.append(f"{target.priority.label}: {', '.join(target.rules)}\n", style="bold red")
    prompt.append(f"{target.namespace}/{target.pod} on {target.node}\nimage {target.image}\n"
                  f"{target.alert_count} alerts\n\n")
    prompt.append(str(params.get("prompt", "")) + "\n\n")
    prompt.append("  ".join(f"[ {o} ]" for o in params.get("options", [])), style="bold")
    prompt.append(f"\napprovers: {', '.join(params.get('approvers', []))}; two people for: "
                  f"{', '.join(params.get('two_person', [])) or '-'}")
    # Its own console: a panel's text must wrap, not run off its edge.
    Console().print(Panel(prompt, title="approval (what Slack will show)", width=90))

    _step(f"Analyst cli:{ANALYST} approves isolation")
    executor = Executor(backends.engine, load_all(), dispatcher,
                        grace_s=settings.lease_grace_seconds)
    outcome = executor.decide(incident_id=target.id, option="isolate", actor=f"cli:{ANALYST}")
    console.print(f"  {outcome.message}", highlight=False, markup=False)

    def finished() -> Any:
        with backends.engine.connect() as conn:
            done = [r for r in runs.runs_for_incident(conn, target.id)
                    if r.status in ("succeeded", "failed")]
        return done[0] if done else None

    run = _wait("the run to finish", finished)
    steps = Table("step", "uses", "status", title=f"Run {run.playbook}: {run.status}")
    for spec in run.spec["steps"]:
        steps.add_row(spec["id"], spec["uses"], run.state["steps"][spec["id"]]["status"])
    console.print(steps)

    with backends.engine.connect() as conn:
        records = list(audit.iter_records(conn, target.id))
        verdict = audit.verify(conn)
    _step(f"Audit trail of {target.id} ({len(records)} records, hash-chained)")
    for record in records:
        detail = record.data.get("step") or record.data.get("message") or \
            record.data.get("option") or ""
        console.print(f"  #{record.seq:<4} {record.actor:<22} {record.kind:<18} "
                      f"{str(detail)[:70]}", highlight=False, markup=False)
    server.should_exit = True
    if not verdict.ok:
        console.print(f"[red]audit verify FAILED at seq {verdict.first_bad_seq}[/red]")
        return 1
    console.print(f"\naudit verify: OK ({verdict.records} records, chain intact) - "
                  f"demo took {time.monotonic() - started:.1f}s")
    console.print(f"state kept in {settings.data_dir} (DRIFT_DATA_DIR={settings.data_dir} "
                  "drift-responder incidents list)", highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
