"""The ``drift-responder`` command."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from responder import cli_suppressions, logs
from responder.intake import backends as backends_mod
from responder.intake.parsing import BatchRejected, BodyError, parse_body
from responder.models.times import format_ns
from responder.settings import Settings
from responder.stopping import StopSignals
from responder.store import audit, incidents, migrating
from responder.store import runs as runs_store

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: The ingest's GIL switch interval (Python's default is 5 ms; see `ingest`).
INGEST_SWITCH_INTERVAL_S = 0.0005


def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


@click.group()
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """drift-responder: Falco drift alerts in; incidents, evidence, decisions and actions out."""
    logs.configure(log_level)
    try:
        ctx.ensure_object(dict)["settings"] = Settings()
    except ValidationError as exc:
        raise click.UsageError(f"bad DRIFT_* setting:\n{exc}") from None


def _open(ctx: click.Context, *, migrate: bool | None = None,
          with_runs: bool = False) -> backends_mod.Backends:
    """Backends; ``with_runs`` also loads the playbooks so that new incidents start runs."""
    settings = _settings(ctx)
    planner = dispatcher = None
    if with_runs:
        from responder.intake.planning import RunPlanner
        from responder.workers.app import CeleryDispatcher, ensure_queue, make_celery

        planner = RunPlanner(_load_playbooks(settings))
        celery_app = make_celery(settings)
        try:
            ensure_queue(celery_app)
        except Exception as exc:  # the beat re-sends starts once the broker is back
            err.print(f"broker not reachable yet ({type(exc).__name__}); runs will start once "
                      "it is", markup=False)
        dispatcher = CeleryDispatcher(celery_app)
    try:
        return backends_mod.open_backends(settings, migrate=migrate, planner=planner,
                                          dispatcher=dispatcher)
    except backends_mod.UNAVAILABLE as exc:
        raise click.ClickException(f"cannot reach the store: {exc}") from None


def _load_playbooks(settings: Settings) -> list[Any]:
    """The playbooks, or a refusal listing every lint problem: a broken playbook never runs."""
    from responder.playbooks.inspecting import lint_paths
    from responder.plugins.registry import load_all

    if not settings.playbooks_dir.is_dir():
        err.print(f"no playbooks directory at {settings.playbooks_dir}: incidents will open "
                  "without runs", markup=False)
        return []
    report = lint_paths([settings.playbooks_dir],
                        _catalog(load_all(settings.plugin_module_list)))
    if report.problems:
        raise click.ClickException("playbooks have problems:\n" + "\n".join(
            str(p) for p in report.problems))
    return report.playbooks


def _freeze_startup_objects() -> None:
    """Leave what start-up made (modules, SQLAlchemy metadata, settings: ~140,000 objects) out
    of the collector's full passes. Under load, alerts waiting for their commit survive into the
    oldest generation and bring on a full pass every few seconds, which walked all of start-up
    too and stopped the intake for 50-65 ms each time: the p99.9 of one alert per request was
    ~75-85 ms, now ~20 ms (bench/PROFILE.md)."""
    gc.freeze()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--insecure-no-auth", is_flag=True, help="Accept alerts without a token.")
@click.pass_context
def ingest(ctx: click.Context, host: str, port: int, insecure_no_auth: bool) -> None:
    """Run the HTTP intake for Falco http_output and falcosidekick webhooks."""
    import uvicorn

    from responder.intake.app import create_app

    settings = _settings(ctx)
    if settings.ingest_token is None and not insecure_no_auth:
        raise click.UsageError("DRIFT_INGEST_TOKEN is not set: refusing to start without "
                               "authentication (use --insecure-no-auth for local experiments)")
    backends = _open(ctx, with_runs=True)
    err.print(backends.describe())
    app = create_app(backends, insecure_no_auth=insecure_no_auth)
    # The group-commit thread wakes from each Redis/PostgreSQL reply needing the GIL, which the
    # busy event loop otherwise keeps for up to 5 ms: a shorter interval cut the p99 of one
    # alert per request from ~50-80 to ~40 ms here (bench/PROFILE.md).
    sys.setswitchinterval(INGEST_SWITCH_INTERVAL_S)
    _freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                server_header=False)


@main.command()
@click.option("--key", default="falco", show_default=True, help="falcosidekick's list key.")
@click.option("--name", default=None, help="Consumer name (default: hostname).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 5000))
@click.pass_context
def consume(ctx: click.Context, key: str, name: str | None, batch_size: int) -> None:
    """Consume falcosidekick's Redis list output (at least once, recorded exactly once)."""
    import redis

    from responder.intake.consuming import ListConsumer

    settings = _settings(ctx)
    if not settings.redis_url:
        raise click.UsageError("DRIFT_REDIS_URL is not set: the consumer reads falcosidekick's "
                               "Redis list")
    backends = _open(ctx, with_runs=True)
    err.print(backends.describe())
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    consumer = ListConsumer(client, backends.recorder, key=key, name=name,
                            batch_size=batch_size, prefix=settings.redis_prefix,
                            max_item_bytes=settings.max_body_bytes)
    stop = StopSignals()
    err.print(f"consuming list {key!r} as {consumer.name!r}")
    _freeze_startup_objects()
    stats = consumer.run(should_stop=lambda: stop.requested)
    err.print(f"stopped: {stats.recorded} alerts recorded in {stats.batches} batches, "
              f"{stats.dead_lettered} dead-lettered to {consumer.dead_key!r}")


@main.group()
def db() -> None:
    """The SQL store."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations."""
    backends = _open(ctx, migrate=False)
    migrating.upgrade(backends.engine, revision)
    console.print(f"schema at {migrating.current_revision(backends.engine)}")


@main.group("incidents")
def incidents_group() -> None:
    """Incidents."""


@incidents_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--status", default=None)
@click.option("--limit", default=None, type=int)
@click.pass_context
def incidents_list(ctx: click.Context, as_json: bool, status: str | None,
                   limit: int | None) -> None:
    """List incidents, newest first."""
    backends = _open(ctx)
    with backends.engine.connect() as conn:
        found = incidents.list_incidents(conn, status=status, limit=limit)
    if as_json:
        sys.stdout.write(orjson.dumps([i.to_json() for i in found]).decode() + "\n")
        return
    table = Table("id", "priority", "status", "alerts", "namespace/pod", "node", "rules",
                  "last seen")
    for i in found:
        where = f"{i.namespace or '-'}/{i.pod or '-'}"
        table.add_row(i.id, i.priority.label, i.status, str(i.alert_count), where,
                      i.node or "-", ", ".join(i.rules), format_ns(i.last_seen_ns))
    console.print(table)


@incidents_group.command("show")
@click.argument("incident_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def incidents_show(ctx: click.Context, incident_id: str, as_json: bool) -> None:
    """One incident: context, rules with counts, and its alert sample."""
    backends = _open(ctx)
    with backends.engine.connect() as conn:
        detail = incidents.get_incident(conn, incident_id)
        found_runs = runs_store.runs_for_incident(conn, incident_id)
    if detail is None:
        raise click.ClickException(f"no incident {incident_id!r}")
    data = detail.incident.to_json() | {
        "rule_counts": detail.rule_counts,
        "samples": [{"ordinal": s.ordinal, "alert_id": s.alert_id, "alert": s.payload}
                    for s in detail.samples],
        "runs": [_run_json(r) for r in found_runs],
    }
    if as_json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
        return
    i = detail.incident
    console.print(f"[bold]{i.id}[/bold]  {i.priority.label}  {i.status}", highlight=False)
    for label in ("key", "namespace", "pod", "node", "container_id", "image", "first_seen",
                  "last_seen", "alert_count"):
        console.print(f"  {label:<13} {data[label]}", markup=False, highlight=False)
    for rule, count in detail.rule_counts.items():
        console.print(f"  rule          {count} x {rule}", markup=False, highlight=False)
    console.print(f"  sample        {len(detail.samples)} alerts kept", highlight=False)
    for run in data["runs"]:
        console.print(f"  run           {run['playbook']}: {run['status']}", markup=False,
                      highlight=False)
        for step in run["steps"]:
            console.print(f"    {step['id']:<16} {step['uses']:<22} {step['status']}",
                          markup=False, highlight=False)


def _run_json(record: Any) -> dict[str, Any]:
    states = record.state.get("steps", {})
    return {"id": record.id, "playbook": record.playbook, "status": record.status,
            "steps": [{"id": s["id"], "uses": s["uses"],
                       "status": states.get(s["id"], {}).get("status"),
                       "attempt": states.get(s["id"], {}).get("attempt"),
                       "result": states.get(s["id"], {}).get("result"),
                       "error": states.get(s["id"], {}).get("error")}
                      for s in record.spec["steps"]]}


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


@audit_group.command("export")
@click.option("--incident", "incident_id", default=None)
@click.option("--format", "fmt", default="jsonl", type=click.Choice(["jsonl"]))
@click.pass_context
def audit_export(ctx: click.Context, incident_id: str | None, fmt: str) -> None:
    """Print audit records as JSON lines, oldest first."""
    backends = _open(ctx)
    with backends.engine.connect() as conn:
        for record in audit.iter_records(conn, incident_id):
            sys.stdout.write(orjson.dumps(record.to_json()).decode() + "\n")


@audit_group.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Exit 0 when the chain is intact, 1 naming the first bad seq otherwise."""
    backends = _open(ctx)
    with backends.engine.connect() as conn:
        verdict = audit.verify(conn)
    if verdict.ok:
        console.print(f"audit OK: {verdict.records} records, chain intact")
        return
    err.print(f"audit BROKEN at seq {verdict.first_bad_seq}: {verdict.reason} "
              f"({verdict.records} records verified before it)", markup=False)
    sys.exit(1)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False,
                                                                   path_type=Path))
@click.option("--url", default=None, help="Post to this ingest (e.g. http://127.0.0.1:8080).")
@click.option("--token", default=None, envvar="DRIFT_INGEST_TOKEN")
@click.pass_context
def replay(ctx: click.Context, files: tuple[Path, ...], url: str | None,
           token: str | None) -> None:
    """Replay alert files (JSON, JSON array or NDJSON) into an ingest, or in-process."""
    settings = _settings(ctx)
    backends = None if url else _open(ctx, with_runs=True)
    failed = False
    for path in files:
        body = path.read_bytes()
        ctype = "application/x-ndjson" if path.suffix in (".ndjson", ".jsonl") \
            else "application/json"
        if url:
            headers = {"Content-Type": ctype}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = httpx.post(url.rstrip("/") + "/v1/falco", content=body, headers=headers,
                                  timeout=30)
            ok = response.status_code == 202
            failed |= not ok
            console.print(f"{path}: {response.status_code} {response.text}", markup=False,
                          highlight=False)
            continue
        assert backends is not None
        try:
            alerts = parse_body(body, ctype, max_items=settings.max_batch_alerts)
        except BodyError as exc:
            failed = True
            err.print(f"{path}: unreadable: {exc}", markup=False)
            continue
        except BatchRejected as exc:
            failed = True
            for p in exc.problems:
                err.print(f"{path}: item {p.index}: {p.field}: {p.message}", markup=False)
            continue
        result = backends.recorder.record(alerts)
        console.print(f"{path}: {len(alerts)} alerts -> incidents {', '.join(result.incidents)}",
                      markup=False, highlight=False)
    if failed:
        sys.exit(1)


@main.group()
def playbooks() -> None:
    """Playbooks: schema, lint, rehearsals."""


@playbooks.command("schema")
def playbooks_schema() -> None:
    """Print the playbook JSON Schema (for editors)."""
    from responder.playbooks.schema import json_schema

    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")


@playbooks.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def playbooks_lint(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Report every problem as file:line:column; exit 1 when there is any."""
    from responder.playbooks.inspecting import lint_paths
    from responder.plugins.registry import load_all

    targets = list(paths) or [_settings(ctx).playbooks_dir]
    missing = [p for p in targets if not p.exists()]
    if missing:
        raise click.UsageError(f"no such file or directory: {', '.join(map(str, missing))}")
    report = lint_paths(targets, _catalog(load_all(_settings(ctx).plugin_module_list)))
    for problem in report.problems:
        sys.stdout.write(f"{problem}\n")
    count = len(report.loaded)
    if report.problems:
        err.print(f"{len(report.problems)} problem(s) in {count} playbook file(s)")
        sys.exit(1)
    err.print(f"{count} playbook file(s) OK")


@playbooks.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def playbooks_test(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Run rehearsals (default: <playbooks dir>/rehearsals) with no broker and no cluster."""
    from responder.conducting.rehearsing import fixture_files, load_fixture, rehearse
    from responder.playbooks.inspecting import lint_paths
    from responder.plugins.registry import load_all

    settings = _settings(ctx)
    plugins = load_all(settings.plugin_module_list)
    report = lint_paths([settings.playbooks_dir], _catalog(plugins))
    if report.problems:
        for problem in report.problems:
            sys.stdout.write(f"{problem}\n")
        err.print("fix the lint problems first")
        sys.exit(1)
    by_name = {p.name: p for p in report.playbooks}
    files = fixture_files(list(paths) or [settings.playbooks_dir / "rehearsals"])
    if not files:
        raise click.ClickException("no rehearsal fixtures found")
    failed = 0
    for file in files:
        fixture, fixture_problems = load_fixture(file)
        if fixture is None:
            failed += 1
            for text in fixture_problems:
                sys.stdout.write(f"FAIL {text}\n")
            continue
        result = rehearse(fixture, file, by_name, {p.name: p for p in plugins})
        mark = "ok  " if result.ok else "FAIL"
        sys.stdout.write(f"{mark} {file}: {result.name}\n")
        for text in result.problems:
            sys.stdout.write(f"     {text}\n")
        failed += not result.ok
    err.print(f"{len(files) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@main.group()
def actions() -> None:
    """Plug-ins that playbook steps can use."""


@actions.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--markdown", is_flag=True, help="The plug-in reference (docs/PLUGINS.md).")
@click.pass_context
def actions_list(ctx: click.Context, as_json: bool, markdown: bool) -> None:
    """Every plug-in with what it does, whether it changes the cluster, RBAC and an example."""
    from responder.plugins.registry import load_all

    plugins = list(load_all(_settings(ctx).plugin_module_list))
    if markdown:
        from responder.plugins import reference

        sys.stdout.write(reference.markdown(plugins))
        return
    if as_json:
        sys.stdout.write(orjson.dumps([{
            "name": p.name, "description": p.description, "changes_cluster": p.changes_cluster,
            "approval": p.is_approval, "rbac": [vars_(r) for r in p.rbac],
            "params": p.params.model_json_schema(), "example": dict(p.example),
        } for p in plugins]).decode() + "\n")
        return
    table = Table("name", "changes cluster", "description", "example `with`")
    for p in plugins:
        table.add_row(p.name, "yes" if p.changes_cluster else "no", p.description,
                      orjson.dumps(dict(p.example)).decode())
    console.print(table)


def vars_(rule: Any) -> dict[str, Any]:
    return {"apiGroups": list(rule.api_groups), "resources": list(rule.resources),
            "verbs": list(rule.verbs)}


def _catalog(plugins: Any) -> dict[str, Any]:
    return {p.name: p for p in plugins}


def _executor(ctx: click.Context) -> Any:
    from responder.plugins import runtime
    from responder.plugins.registry import load_all
    from responder.workers.app import CeleryDispatcher, make_celery
    from responder.workers.executing import Executor

    settings = _settings(ctx)
    runtime.install(settings)
    backends = _open(ctx)
    app = make_celery(settings)
    executor = Executor(backends.engine, load_all(settings.plugin_module_list),
                        CeleryDispatcher(app), grace_s=settings.lease_grace_seconds,
                        agent_stale_s=settings.agent_stale_seconds,
                        identities=settings.identity_map)
    return app, executor, backends


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "solo", "threads"]))
@click.pass_context
def worker(ctx: click.Context, concurrency: int, pool: str) -> None:
    """Run a Celery worker for playbook runs."""
    from responder.workers.app import ensure_queue, install_executor

    app, executor, backends = _executor(ctx)
    ensure_queue(app)
    install_executor(executor, _notify_function(_settings(ctx), backends))
    err.print(f"{backends.describe()} broker={_redact(_settings(ctx).effective_broker_url)}",
              markup=False)
    app.worker_main(["worker", f"--concurrency={concurrency}", "-P", pool, "-Q",
                     _settings(ctx).queue,
                     "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                     "--without-heartbeat"])


@main.command()
def demo() -> None:
    """Detect -> evidence -> decision -> Isolate on the embedded default, in under a minute
    (as root with a real throwaway container); leaves its state in a temporary directory."""
    from responder import demo as demo_mod

    sys.exit(demo_mod.main([]))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="Intake port.")
@click.option("--bot-port", default=3000, show_default=True, type=int)
@click.option("--node", default=None, help="The node agent's node name (default: hostname).")
@click.option("--agent/--no-agent", "with_agent", default=None,
              help="Run the node agent (default: when root).")
@click.pass_context
def up(ctx: click.Context, host: str, port: int, bot_port: int, node: str | None,
       with_agent: bool | None) -> None:
    """Run ingest, worker, beat, the bot (when Slack is configured) and the node agent (when
    root) together; the embedded default needs no Redis and no PostgreSQL."""
    from responder import launching

    settings = _settings(ctx)
    backends = _open(ctx, migrate=True)  # once, before the children start
    backends.close()
    the_plan = launching.plan(settings, host=host, port=port, node=node,
                              with_agent=with_agent, bot_port=bot_port)
    console.print(launching.describe_backends(settings), markup=False, highlight=False)
    for note in the_plan.notes:
        console.print(f"  {note}", markup=False, highlight=False)
    console.print(f"  Falco http_output url: {the_plan.ingest_url}/v1/falco/{the_plan.token}",
                  markup=False, highlight=False)
    console.print(f"  started: {', '.join(c.name for c in the_plan.children)}"
                  + (f" (agent for node {the_plan.agent_node})" if the_plan.agent_node else ""),
                  markup=False, highlight=False)
    launcher = launching.Launcher(the_plan)
    launcher.start()
    sys.exit(launcher.supervise())


@main.group(invoke_without_command=True)
@click.option("--node", default=None, help="This node's name (as Falco's hostname and the "
              "pod's spec.nodeName give it): the agent consumes evidence.<node>.")
@click.option("--proc-root", default="/proc", show_default=True, type=click.Path(),
              help="The host's /proc (in the DaemonSet: the host's, mounted read-only).")
@click.option("--host-root", default="/", show_default=True, type=click.Path(),
              help="Where the host's filesystem is mounted (overlay paths are mapped under it).")
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.pass_context
def agent(ctx: click.Context, node: str | None, proc_root: str, host_root: str,
          concurrency: int) -> None:
    """Run the node agent (evidence from the host), or one of its subcommands."""
    if ctx.invoked_subcommand is not None:
        return
    if not node:
        err.print("agent: --node is required (e.g. --node \"$NODE_NAME\")", markup=False)
        sys.exit(2)
    from responder.plugins import runtime
    from responder.workers.agent import Heartbeat
    from responder.workers.app import ensure_queue, install_executor
    from responder.workers.executing import agent_queue

    settings = _settings(ctx)
    if not Path(proc_root, "self").exists() and not Path(proc_root, "1").exists():
        err.print(f"agent: {proc_root} does not look like a proc filesystem", markup=False)
        sys.exit(2)
    app, executor, backends = _executor(ctx)
    runtime.install(settings, runtime.NodeAgent(node=node, proc_root=Path(proc_root),
                                                host_root=Path(host_root)))
    queue = agent_queue(node)
    ensure_queue(app, name=queue)
    install_executor(executor, _notify_function(settings, backends))
    heartbeat = Heartbeat(backends.engine, node, settings.agent_heartbeat_seconds)
    heartbeat.start()
    err.print(f"agent for node {node}: queue {queue}, proc {proc_root}, host {host_root}; "
              f"{backends.describe()}", markup=False)
    try:
        app.worker_main(["worker", f"--concurrency={concurrency}", "-P", "threads", "-Q",
                         queue, "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                         "--without-heartbeat", "-n", f"agent-{node}@%h"])
    finally:
        heartbeat.stop()


@agent.command("collect")
@click.option("--container-id", required=True, help="12-char or full container id.")
@click.option("--proc-root", default="/proc", show_default=True, type=click.Path())
@click.option("--host-root", default="/", show_default=True, type=click.Path())
@click.option("--flag-pid", type=int, default=None, help="Mark this host pid (proc.pid).")
@click.option("--flag-path", "flag_paths", multiple=True, help="Mark this path (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agent_collect(ctx: click.Context, container_id: str, proc_root: str, host_root: str,
                  flag_pid: int | None, flag_paths: tuple[str, ...], as_json: bool) -> None:
    """Collect the process tree and filesystem diff of a container on this host and print
    them (nothing is stored)."""
    from responder.agent import collecting, overlay, processes

    settings = _settings(ctx)
    container_id = container_id.split("://", 1)[-1]
    try:
        located = collecting.locate(container_id, proc_root=Path(proc_root),
                                    host_root=Path(host_root))
        tree = collecting.process_tree(
            located, proc_root=Path(proc_root), flag_pid=flag_pid,
            flag_exe=flag_paths[0] if flag_paths else None,
            limits=processes.ProcessLimits(max_processes=settings.evidence_max_processes))
        diff = collecting.filesystem_diff(located, flag_paths=flag_paths, limits=overlay.DiffLimits(
            max_entries=settings.evidence_max_entries,
            hash_file_max_bytes=settings.evidence_hash_file_max_bytes,
            hash_total_max_bytes=settings.evidence_hash_total_max_bytes))
    except collecting.ContainerNotFound as exc:
        err.print(f"agent collect: {exc}", markup=False)
        sys.exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps({"process_tree": tree.model_dump(mode="json"),
                                       "filesystem_diff": diff.model_dump(mode="json")},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    console.print(f"[bold]Process tree[/] of {container_id[:12]} ({len(tree.processes)} "
                  "processes)")
    sys.stdout.write(tree.rendered + "\n")
    s = diff.summary
    console.print(f"[bold]Filesystem diff[/] (upper layer {diff.upperdir}): {s.added} added, "
                  f"{s.changed} changed, {s.deleted} deleted, {s.executables_added} "
                  "executables added", highlight=False)
    for change in diff.changes:
        mark = " <- flagged" if change.flagged else ""
        extra = f" sha256:{change.sha256[:16]}" if change.sha256 else ""
        sys.stdout.write(f"{change.kind} {change.path!r}{extra}{mark}\n")


@agent.command("list")
@click.pass_context
def agent_list(ctx: click.Context) -> None:
    """Node agents and when each was last heard from."""
    from responder.models.times import now_ns
    from responder.store import agents as agents_store

    settings = _settings(ctx)
    backends = _open(ctx)
    with backends.engine.connect() as conn:
        rows = agents_store.all_agents(conn)
    now = now_ns()
    table = Table("node", "host", "pid", "version", "last seen", "state")
    for row in rows:
        alive = row.last_seen_ns >= now - int(settings.agent_stale_seconds * 1e9)
        table.add_row(row.node, row.hostname, str(row.pid), row.version,
                      format_ns(row.last_seen_ns) if row.last_seen_ns > 1 else "-",
                      "alive" if alive else "gone")
    console.print(table)


@main.command()
@click.option("--interval", default=0.5, show_default=True, type=float,
              help="Seconds between sweeps.")
@click.option("--once", is_flag=True, help="Sweep once and exit.")
@click.pass_context
def beat(ctx: click.Context, interval: float, once: bool) -> None:
    """Sweep deadlines kept in the store: lost starts, expired leases, retries, expiries."""
    _, executor, backends = _executor(ctx)
    stop = StopSignals()
    err.print(f"beat: {backends.describe()}", markup=False)
    while not stop.requested:
        try:
            counts = executor.sweep()
            backends.recorder.flush_audit()
            if any(counts.values()):
                err.print(f"sweep: {counts}", markup=False)
        except backends_mod.UNAVAILABLE as exc:
            err.print(f"sweep skipped, backend unavailable: {type(exc).__name__}", markup=False)
        except Exception as exc:  # the only beat must outlive any one failure
            err.print(f"sweep failed: {exc!r}", markup=False)
        if once:
            return
        stop.wait(interval)


@main.command()
@click.argument("incident_id")
@click.option("--option", "option", required=True, help="isolate, evict, dismiss...")
@click.option("--as", "name", required=True, help="Your name: you decide as cli:<name>.")
@click.option("--reason", default=None)
@click.pass_context
def approve(ctx: click.Context, incident_id: str, option: str, name: str,
            reason: str | None) -> None:
    """Decide the incident's pending approval (checked against the step's approvers)."""
    _, executor, _ = _executor(ctx)
    import getpass

    # --as names the decision; the OS user is who made it (two votes need two people).
    outcome = executor.decide(incident_id=incident_id, option=option, actor=f"cli:{name}",
                              reason=reason, principal=f"os:{getpass.getuser()}")
    (console if outcome.ok else err).print(outcome.message, markup=False, highlight=False)
    if not outcome.ok:
        sys.exit(1)


def _notify_function(settings: Settings, backends: backends_mod.Backends) -> Any:
    """Slack when a bot token is configured, else the console notifier."""
    from responder.plugins.notify.console import ConsoleNotifier
    from responder.plugins.notify.slack import ChannelBucket, SlackNotifier
    from responder.workers.notifying import sync_incident

    notifier: Any
    if settings.slack_bot_token is not None:
        from slack_sdk import WebClient

        client = WebClient(token=settings.slack_bot_token.get_secret_value(),
                           base_url=settings.slack_api_url, timeout=10)
        notifier = SlackNotifier(client, ChannelBucket(backends.redis,
                                                       settings.slack_rate_per_second,
                                                       settings.redis_prefix))
    else:
        notifier = ConsoleNotifier()

    def notify(incident_id: str) -> None:
        sync_incident(backends.engine, notifier, incident_id, settings)

    return notify


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url.removeprefix("sqla+")).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", maxsplit=1)[-1]


@main.group("pods")
def pods_group() -> None:
    """Manual cluster actions, audited as cli:<user>."""


def _pod_action(ctx: click.Context, action: str, target: str, params: dict[str, Any],
                incident_id: str | None) -> None:
    import getpass

    from responder.workers.manual import BadTarget, run_pod_action

    settings = _settings(ctx)
    backends = _open(ctx)
    try:
        done = run_pod_action(settings, backends.engine, action, target, params,
                              actor=f"cli:{getpass.getuser()}", incident_id=incident_id)
    except BadTarget as exc:
        raise click.UsageError(str(exc)) from None
    payload = done.payload
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    if done.failed:
        err.print(f"{action} {target}: {payload.get('error') or payload['status']}",
                  markup=False)
        sys.exit(1)


def _pod_options(command: Any) -> Any:
    """The options every manual pod action takes."""
    for option in (
        click.option("--allow-protected", is_flag=True),
        click.option("--dry-run", is_flag=True, default=None),
        click.option("--uid", default=None, help="Act only if the pod still has this UID."),
        click.option("--incident", "incident_id", default=None),
    ):
        command = option(command)
    return command


@pods_group.command("isolate")
@click.argument("target")
@_pod_options
@click.pass_context
def pods_isolate(ctx: click.Context, target: str, incident_id: str | None, uid: str | None,
                 dry_run: bool | None, allow_protected: bool) -> None:
    """Quarantine NAMESPACE/POD (reversible with `pods release`)."""
    _pod_action(ctx, "isolate", target, {"dry_run": dry_run or None, "uid": uid,
                                         "allow_protected": allow_protected}, incident_id)


@pods_group.command("release")
@click.argument("target")
@_pod_options
@click.pass_context
def pods_release(ctx: click.Context, target: str, incident_id: str | None, uid: str | None,
                 dry_run: bool | None, allow_protected: bool) -> None:
    """Undo isolate for NAMESPACE/POD."""
    _pod_action(ctx, "release", target, {"dry_run": dry_run or None, "uid": uid,
                                         "allow_protected": allow_protected}, incident_id)


@pods_group.command("evict")
@click.argument("target")
@click.option("--grace-period", type=int, default=None)
@_pod_options
@click.pass_context
def pods_evict(ctx: click.Context, target: str, grace_period: int | None,
               incident_id: str | None, uid: str | None, dry_run: bool | None,
               allow_protected: bool) -> None:
    """Evict NAMESPACE/POD through the Eviction API (exits 1 when a budget blocks it)."""
    _pod_action(ctx, "evict", target, {"dry_run": dry_run or None, "uid": uid,
                                       "allow_protected": allow_protected,
                                       "grace_period_seconds": grace_period}, incident_id)


@main.command()
@click.option("--playbooks", "playbooks_dir", type=click.Path(path_type=Path), default=None,
              help="Only the plug-ins these playbooks use (default: DRIFT_PLAYBOOKS_DIR).")
@click.option("--all", "everything", is_flag=True, help="Every registered plug-in.")
@click.option("--name", default="drift-responder", show_default=True)
@click.option("--namespace", default=None, help="Print a namespaced Role instead.")
@click.pass_context
def rbac(ctx: click.Context, playbooks_dir: Path | None, everything: bool, name: str,
         namespace: str | None) -> None:
    """Print the least-privilege ClusterRole (or Role) the playbooks' plug-ins need."""
    import yaml

    from responder.playbooks.inspecting import lint_paths
    from responder.plugins.registry import load_all

    settings = _settings(ctx)
    plugins = {p.name: p for p in load_all(settings.plugin_module_list)}
    if everything:
        used = set(plugins)
    else:
        report = lint_paths([playbooks_dir or settings.playbooks_dir], plugins)
        used = {s.uses for p in report.playbooks for s in p.steps}
    merged: dict[tuple[str, str], set[str]] = {}
    for plugin_name in sorted(used):
        plugin = plugins.get(plugin_name)
        for rule in plugin.rbac if plugin else ():
            for group in rule.api_groups:
                for resource in rule.resources:
                    merged.setdefault((group, resource), set()).update(rule.verbs)
    rules: list[dict[str, Any]] = []
    for (group, resource), verbs in sorted(merged.items()):
        rules.append({"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs)})
    role: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role" if namespace else "ClusterRole",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {}),
                     "labels": {"app.kubernetes.io/name": "drift-responder"}},
        "rules": rules,
    }
    sys.stdout.write(f"# plug-ins: {', '.join(sorted(used)) or '(none)'}\n")
    sys.stdout.write(yaml.safe_dump(role, sort_keys=False))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.pass_context
def bot(ctx: click.Context, host: str, port: int) -> None:
    """Run the Slack bot: approval buttons, the dismiss modal and /drift, over HTTP
    (POST /slack/events) or Socket Mode when SLACK_APP_TOKEN is set."""
    settings = _settings(ctx)
    socket_mode = settings.slack_app_token is not None
    if settings.slack_bot_token is None:
        raise click.UsageError("SLACK_BOT_TOKEN is not set: the bot cannot talk to Slack")
    if settings.slack_signing_secret is None and not socket_mode:
        raise click.UsageError("SLACK_SIGNING_SECRET is not set: refusing to accept "
                               "unverifiable requests (or set SLACK_APP_TOKEN for Socket Mode)")
    from bots.slack.app import run

    _, executor, backends = _executor(ctx)
    mode = "socket mode" if socket_mode else f"http://{host}:{port}/slack/events"
    err.print(f"bot: {backends.describe()} slack={settings.slack_api_url} {mode}", markup=False)
    run(settings, executor, executor.dispatcher, backends.redis, host=host, port=port)


main.add_command(cli_suppressions.suppressions)
