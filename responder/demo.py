"""``make demo``: Detect -> evidence -> decision -> Isolate, on the embedded default.

Starts the responder the way ``drift-responder up`` does (intake, worker, beat, and the node agent
when root) on SQLite with no server, posts the Falco samples over HTTP as Falco and falcosidekick
would, shows the incident with its evidence and the prompt Slack would show, approves isolation
as a demo analyst, shows the exact pod patch and NetworkPolicy the dry run would send, prints the
audit trail and verifies it.

As root it first builds a real throwaway container on this machine (a cgroup, namespaces, an
overlay root) and makes it drift, so that the process tree and filesystem diff are real. Without
a kubeconfig, and when run from the source tree, the cluster is a local stand-in for the
Kubernetes API (tests/fakes/kubernetes_api.py) seeded with the sample's pod.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from responder import launching
from responder.agent import throwaway
from responder.intake.backends import Backends, open_backends
from responder.playbooks.inspecting import lint_paths
from responder.plugins.notify import slack_blocks
from responder.plugins.registry import load_all
from responder.settings import Settings
from responder.store import agents, audit, incidents, runs
from responder.workers.app import CeleryDispatcher, ensure_queue, make_celery
from responder.workers.executing import Executor
from responder.workers.notifying import build_view

console = Console(soft_wrap=True)
_BUNDLED = Path(__file__).resolve().parent / "demo_alerts"
_TARGET = "sidekick-drop-and-execute.json"
ANALYST = "demo-analyst"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(text: str) -> None:
    console.print(f"\n[bold cyan]>> {text}[/bold cyan]")


def _say(text: str) -> None:
    console.print(f"  {text}", markup=False, highlight=False)


def _wait(what: str, check: Any, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


@contextlib.contextmanager
def _container() -> Iterator[tuple[throwaway.ThrowawayContainer, throwaway.SampleDrift] | None]:
    reason = throwaway.unavailable_reason()
    if reason is not None:
        _say(f"no real container ({reason}): evidence steps will say why they could not "
             "collect; run as root for a real process tree and filesystem diff")
        yield None
        return
    with throwaway.ThrowawayContainer() as built:
        drift = built.apply_sample_drift()
        _say(f"container {built.short_id}: cgroup {built.cgroup_path.name}, overlay upper "
             f"layer {built.upperdir}")
        _say(f"drift: {drift.dropped_path} dropped and executed (host pid {drift.dropped_pid}),"
             f" a fileless memfd process (pid {drift.memfd_pid}), files changed and deleted")
        yield built, drift


@contextlib.contextmanager
def _cluster(node: str, container_id: str, alert: dict[str, Any]) -> Iterator[dict[str, str]]:
    """DRIFT_KUBE_* for the children: a kubeconfig when given, else the local stand-in."""
    if os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists():
        _say("using your kubeconfig (actions in dry run: nothing is changed)")
        yield {}
        return
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        # Imported by name: test infrastructure, present only in a source checkout.
        fakes: Any = importlib.import_module("tests.fakes.kubernetes_api")
    except ImportError:
        _say("no kubeconfig and no local stand-in (not a source checkout): cluster steps "
             "will fail cleanly and the decision is recorded for a person to act on")
        yield {}
        return
    fields = alert["output_fields"]
    namespace, pod = fields["k8s.ns.name"], fields["k8s.pod.name"]
    kube = fakes.FakeKubernetes(token=secrets.token_urlsafe(16)).start()
    try:
        kube.add_namespace(namespace)
        labels = {"app": "web"}
        template = pod.rsplit("-", 2)[1] if pod.count("-") >= 2 else "demo"
        deployment = kube.add_deployment(namespace, "web", match_labels=labels, replicas=2)
        replicaset = kube.add_replicaset(namespace, f"web-{template}",
                                         match_labels={**labels, "pod-template-hash": template},
                                         replicas=2, owner=deployment)
        kube.add_pod(namespace, pod, labels={**labels, "pod-template-hash": template},
                     owner=replicaset, node=node, container_ids=[container_id])
        kube.add_service(namespace, "web", selector=labels)
        _say(f"no kubeconfig: a local stand-in for the Kubernetes API at {kube.host} holds "
             f"Deployment {namespace}/web and pod {pod} (actions in dry run)")
        yield {"DRIFT_KUBE_HOST": kube.host, "DRIFT_KUBE_TOKEN": kube.token or ""}
    finally:
        kube.stop()


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="drift-demo-"))
    playbooks_dir = Path(os.environ.get("DRIFT_PLAYBOOKS_DIR", "playbooks")).resolve()
    token = secrets.token_urlsafe(24)
    settings = Settings(data_dir=data_dir, playbooks_dir=playbooks_dir, ingest_token=token,
                        audit_every_alerts=25, dry_run=True, agent_stale_seconds=10)
    report = lint_paths([playbooks_dir], {p.name: p for p in load_all()})
    if report.problems or not report.playbooks:
        _say(f"playbooks at {playbooks_dir}: {len(report.problems)} problem(s), "
             f"{len(report.playbooks)} playbook(s); run from the repository root")
        return 1
    console.print(f"[bold]drift-responder demo[/bold] - {launching.describe_backends(settings)}"
                  f", {len(report.playbooks)} playbooks", highlight=False)
    alert = orjson.loads((_BUNDLED / _TARGET).read_bytes())
    node = str(alert["hostname"])

    _step("A container drifts")
    with _container() as built:
        container_id = built[0].id if built else \
            alert["output_fields"]["container.id"] + secrets.token_hex(26)
        if built is not None:
            fields = alert["output_fields"]
            fields.update({"container.id": built[0].short_id, "container.full_id": built[0].id,
                           "proc.pid": built[1].dropped_pid,
                           "proc.exepath": built[1].dropped_path})
        with _cluster(node, container_id, alert) as kube_env:
            return _with_services(settings, data_dir, playbooks_dir, token, node, alert,
                                  kube_env, agent=built is not None, started=started,
                                  playbooks=report.playbooks)


def _with_services(settings: Settings, data_dir: Path, playbooks_dir: Path, token: str,
                   node: str, alert: dict[str, Any], kube_env: dict[str, str], *, agent: bool,
                   started: float, playbooks: list[Any]) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env.update({"DRIFT_DATA_DIR": str(data_dir), "DRIFT_PLAYBOOKS_DIR": str(playbooks_dir),
                "DRIFT_INGEST_TOKEN": token, "DRIFT_AUDIT_EVERY_ALERTS": "25",
                "DRIFT_DRY_RUN": "true", "DRIFT_AGENT_STALE_SECONDS": "10", **kube_env})
    port = _free_port()
    plan = launching.plan(settings, host="127.0.0.1", port=port, node=node, with_agent=agent,
                          bot_port=_free_port(), environ=env)
    _step(f"Starting the responder as `drift-responder up` does: "
          f"{', '.join(c.name for c in plan.children)}")
    for note in plan.notes:
        if "DRIFT_INGEST_TOKEN" not in note:
            _say(note)
    tail: list[str] = []

    def keep(name: str, line: str) -> bool:
        tail.append(f"{name}: {line}")
        del tail[:-40]
        return False

    # Migrate once before the children start, and open the store for reading.
    celery_app = make_celery(settings)
    ensure_queue(celery_app)
    backends = open_backends(settings)
    launcher = launching.Launcher(plan, echo=keep)
    launcher.start()
    try:
        return _run(backends, settings, CeleryDispatcher(celery_app), plan, token, node, alert,
                    agent=agent, started=started)
    except SystemExit:
        console.print("[red]demo failed; the services said:[/red]")
        for line in tail:
            _say(line)
        raise
    finally:
        launcher.stop()
        backends.close()


def _run(backends: Backends, settings: Settings, dispatcher: CeleryDispatcher,
         plan: launching.Plan, token: str, node: str, alert: dict[str, Any], *, agent: bool,
         started: float) -> int:
    base = plan.ingest_url

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    _wait("the intake", healthy)
    if agent:
        def beating() -> bool:
            with backends.engine.connect() as conn:
                return agents.live(conn, node, now_ns=time.time_ns(), stale_ns=10 * 10**9)

        _wait("the node agent's heartbeat", beating)
        _say(f"node agent for {node} is up (queue evidence.{node})")

    _step(f"Falco alerts -> intake at {base}/v1/falco/<token>")
    for path in sorted(_BUNDLED.glob("*.json")) + sorted(_BUNDLED.glob("*.ndjson")):
        ctype = "application/x-ndjson" if path.suffix == ".ndjson" else "application/json"
        body = orjson.dumps(alert) if path.name == _TARGET else path.read_bytes()
        response = httpx.post(f"{base}/v1/falco/{token}", content=body,
                              headers={"Content-Type": ctype}, timeout=10)
        _say(f"POST {path.name:<44} -> {response.status_code} "
             f"{response.json().get('accepted', response.json())} alert(s)")
    storm = [httpx.post(f"{base}/v1/falco/{token}", content=(_BUNDLED / "batch.ndjson")
                        .read_bytes(), headers={"Content-Type": "application/x-ndjson"})
             for _ in range(50)]
    _say(f"storm: {sum(r.json()['accepted'] for r in storm)} more alerts from the same "
         "containers")

    with backends.engine.connect() as conn:
        found = incidents.list_incidents(conn)
    table = Table("incident", "priority", "alerts", "namespace/pod", "node", "rules",
                  title="Incidents (one per container, however many alerts)")
    for i in found:
        table.add_row(i.id, i.priority.label, str(i.alert_count),
                      f"{i.namespace or '-'}/{i.pod or '-'}", i.node or "-", "\n".join(i.rules))
    console.print(table)

    fields = alert["output_fields"]
    target = next(i for i in found if i.container_id == fields["container.id"] and
                  "Drop and execute new binary in container" in i.rules)
    _step(f"The drop-and-execute playbook collects evidence for {target.id}, then asks")

    def pending() -> Any:
        with backends.engine.connect() as conn:
            return next(iter(runs.approvals_for_incident(conn, target.id, "pending")), None)

    _wait("the approval request", pending, timeout=60)
    with backends.engine.connect() as conn:
        view = build_view(conn, target.id)
        [run] = runs.runs_for_incident(conn, target.id)
    assert view is not None
    for step_id in ("process_tree", "filesystem_diff"):
        state = run.state["steps"].get(step_id, {})
        if state.get("status") == "failed":
            _say(f"{step_id}: not collected: {str(state.get('error'))[:300]}")
    _text, blocks = slack_blocks.render(view)
    Console().print(Panel(render_blocks(blocks), title="the prompt (what Slack shows)",
                          width=100))

    _step(f"Analyst cli:{ANALYST} approves isolation")
    executor = Executor(backends.engine, load_all(), dispatcher,
                        grace_s=settings.lease_grace_seconds)
    outcome = executor.decide(incident_id=target.id, option="isolate", actor=f"cli:{ANALYST}")
    _say(outcome.message)

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
    isolate = run.state["steps"].get("isolate", {})
    detail = (isolate.get("result") or {}).get("detail") or {}
    if detail.get("pod_patch"):
        _step("Isolation, dry run: exactly what would be sent")
        _say("PATCH pod (application/merge-patch+json):")
        sys.stdout.write(_indent(yaml.safe_dump(detail["pod_patch"], sort_keys=False)))
        _say("ensure NetworkPolicy (deny all ingress and egress for the quarantine label):")
        sys.stdout.write(_indent(yaml.safe_dump(detail["network_policy"], sort_keys=False)))

    with backends.engine.connect() as conn:
        records = list(audit.iter_records(conn, target.id))
        verdict = audit.verify(conn)
    _step(f"Audit trail of {target.id} ({len(records)} records, hash-chained)")
    for record in records:
        data = record.data
        what = data.get("step") or data.get("message") or data.get("option") or ""
        if record.kind == "evidence.collected":
            what = f"{data.get('name')} sha256:{str(data.get('sha256'))[:16]}"
        console.print(f"  #{record.seq:<4} {record.actor:<22} {record.kind:<20} "
                      f"{str(what)[:70]}", highlight=False, markup=False)
    if not verdict.ok:
        console.print(f"[red]audit verify FAILED at seq {verdict.first_bad_seq}[/red]")
        return 1
    console.print(f"\naudit verify: OK ({verdict.records} records, chain intact) - "
                  f"demo took {time.monotonic() - started:.1f}s")
    _say(f"state kept in {settings.data_dir} (DRIFT_DATA_DIR={settings.data_dir} "
         "drift-responder incidents list)")
    return 0


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def render_blocks(blocks: list[dict[str, Any]]) -> Text:
    """Block Kit as a terminal shows it: the same blocks the Slack notifier posts."""
    out = Text()
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            out.append(_unescape(block["text"]["text"]) + "\n", style="bold red")
        elif kind == "section":
            for item in block.get("fields") or []:
                out.append(_unescape(item["text"]).replace("*", "").replace("\n", ": ") + "\n")
            if "text" in block:
                out.append(_unescape(block["text"]["text"]).replace("```", "") + "\n")
        elif kind == "context":
            out.append(" ".join(_unescape(e.get("text", "")) for e in block["elements"]) + "\n",
                       style="dim")
        elif kind == "actions":
            out.append("  ".join(f"[ {e['text']['text']} ]" for e in block["elements"]
                                 if e.get("type") == "button") + "\n", style="bold")
        elif kind == "divider":
            out.append("-" * 60 + "\n", style="dim")
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
