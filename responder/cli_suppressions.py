"""``drift-responder suppressions``: list, add and lift suppressions of known-benign drift.

Registered in :mod:`responder.cli` as a sub-group; it reads the settings ``main`` built (or its
own when run alone, ``python -m responder.cli_suppressions``). Changes are made as
``cli:<OS user>`` and audited (``suppression.created`` / ``suppression.lifted``). Bad input
exits 2 with the reason; lifting what is not active any more exits 1.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import orjson
import sqlalchemy.exc
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import Engine

from responder.models.priorities import Priority
from responder.models.times import format_ns, now_ns
from responder.settings import Settings
from responder.store import migrating
from responder.store import suppressions as store
from responder.store.engine import make_engine

#: The store is unreachable (what the intake answers 503 to), without importing the intake.
UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
               sqlalchemy.exc.TimeoutError, sqlalchemy.exc.DisconnectionError)

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings(ctx: click.Context) -> Settings:
    root = ctx.find_root().obj
    found = root.get("settings") if isinstance(root, dict) else None
    if isinstance(found, Settings):
        return found
    try:
        return Settings()
    except ValidationError as exc:
        raise click.UsageError(f"bad DRIFT_* setting:\n{exc}") from None


@contextmanager
def _engine(ctx: click.Context) -> Iterator[Engine]:
    settings = _settings(ctx)
    engine = make_engine(settings.effective_database_url)
    try:
        if settings.auto_migrate:
            migrating.upgrade(engine)
        yield engine
    except UNAVAILABLE as exc:
        raise click.ClickException(f"cannot reach the store: {exc}") from None
    finally:
        engine.dispose()


def _principal() -> str:
    return f"cli:{getpass.getuser()}"


@click.group("suppressions")
def suppressions() -> None:
    """Suppressions: alerts they cover are accepted and counted but open no incident."""


@suppressions.command("list")
@click.option("--all", "everything", is_flag=True, help="Also lifted and expired ones.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_list(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Active suppressions, newest first (hit counts trail by a few seconds)."""
    now = now_ns()
    with _engine(ctx) as engine, engine.connect() as conn:
        found = store.list_suppressions(conn, now_ns=now, include_inactive=everything)
    if as_json:
        sys.stdout.write(orjson.dumps([s.to_json(now) for s in found]).decode() + "\n")
        return
    if not found:
        console.print("no active suppressions" if not everything else "no suppressions")
        return
    for s in found:  # not a table: the id must survive any terminal width (lift needs it)
        last = f", last {format_ns(s.last_hit_ns)}" if s.last_hit_ns is not None else ""
        console.print(f"{s.id}  {s.status(now)} until {format_ns(s.expires_ns)}  "
                      f"{s.hits} hits{last}", markup=False, highlight=False)
        console.print(f"  matches  {s.match.describe()}, up to {s.max_priority.label}",
                      markup=False, highlight=False)
        console.print(f"  by       {s.created_by}: {s.reason}", markup=False, highlight=False)
        if s.lifted_by is not None and s.lifted_ns is not None:
            console.print(f"  lifted   by {s.lifted_by} at {format_ns(s.lifted_ns)}: "
                          f"{s.lift_reason}", markup=False, highlight=False)


def _priority(_: click.Context, __: click.Parameter, value: str) -> Priority:
    try:
        return Priority.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(_: click.Context, __: click.Parameter, value: str) -> int:
    try:
        return store.parse_duration(value)
    except store.InvalidSuppression as exc:
        raise click.BadParameter(str(exc)) from None


@suppressions.command("add")
@click.option("--rule", required=True, help="The Falco rule, exactly as it is named.")
@click.option("--namespace", required=True, help="The namespace (one, exactly).")
@click.option("--pod", default=None, help="An exact pod name, or a prefix ending in * (web-*).")
@click.option("--image", default=None,
              help="An image repository (every tag) or an exact reference (repo:tag).")
@click.option("--digest", default=None, help="An image digest, sha256:<64 hex>.")
@click.option("--node", default=None, help="A node name.")
@click.option("--max-priority", default=store.DEFAULT_MAX_PRIORITY.label,
              show_default=True, callback=_priority,
              help="More severe alerts are never suppressed.")
@click.option("--for", "duration_ns", default="24h", show_default=True, callback=_duration,
              help="How long, e.g. 30m, 24h, 7d (at most 30d).")
@click.option("--reason", required=True, help="Why this drift is expected (audited).")
@click.option("--incident", "incident_id", default=None,
              help="The incident that prompted it (recorded with it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_add(ctx: click.Context, rule: str, namespace: str, pod: str | None,
                     image: str | None, digest: str | None, node: str | None,
                     max_priority: Priority, duration_ns: int, reason: str,
                     incident_id: str | None, as_json: bool) -> None:
    """Suppress RULE in NAMESPACE (optionally narrower) for a while, as cli:<you>."""
    try:
        exact, prefix = store.parse_pod(pod) if pod is not None else (None, None)
        match = store.Match(rule, namespace, exact, prefix, image, digest, node).checked()
        store.check_reason(reason)
    except store.InvalidSuppression as exc:
        raise click.UsageError(str(exc)) from None
    now = now_ns()
    with _engine(ctx) as engine, engine.begin() as conn:
        made = store.create(conn, match, created_by=_principal(), reason=reason,
                            duration_ns=duration_ns, max_priority=max_priority,
                            incident_id=incident_id, now_ns=now, source="cli")
    if as_json:
        sys.stdout.write(orjson.dumps(made.to_json(now)).decode() + "\n")
        return
    console.print(f"suppression {made.id} active until {format_ns(made.expires_ns)}: "
                  f"{made.match.describe()}, up to {made.max_priority.label} "
                  "(intakes pick it up within seconds)", markup=False, highlight=False)


@suppressions.command("lift")
@click.argument("suppression_id")
@click.option("--reason", required=True, help="Why it should stop (audited).")
@click.pass_context
def suppressions_lift(ctx: click.Context, suppression_id: str, reason: str) -> None:
    """Lift an active suppression now, as cli:<you>."""
    try:
        store.check_reason(reason)
    except store.InvalidSuppression as exc:
        raise click.UsageError(str(exc)) from None
    with _engine(ctx) as engine:
        try:
            with engine.begin() as conn:
                lifted = store.lift(conn, suppression_id, by=_principal(), reason=reason,
                                    now_ns=now_ns())
        except store.NotFound as exc:
            raise click.BadParameter(str(exc), param_hint="SUPPRESSION_ID") from None
        except store.NotActive as exc:
            raise click.ClickException(str(exc)) from None
    console.print(f"suppression {lifted.id} lifted: {lifted.match.describe()} "
                  f"({lifted.hits} alerts suppressed)", markup=False, highlight=False)


if __name__ == "__main__":
    suppressions(prog_name="drift-responder suppressions")
