"""Keep an incident's message in step with the store: one message per incident, re-rendered from
the current state on every change (so repeated or reordered notifications converge).

Slack's limits (responder.plugins.notify.ratelimit) are applied here, where the store is at hand:

- a notification for an incident already waiting for its first message asks the channel's
  bucket first, before any database work, and a refusal re-queues the task for exactly the time
  until its turn (``RateLimited``);
- otherwise the incident is rendered, and its first message takes a turn in its channel's FIFO
  queue (or posts the channel's digest when too many wait, then asks again);
- a message already posted is updated under the separate, coalescing update limit, and not at
  all when the render is what was last sent;
- once the message exists, the incident's evidence artifacts (JSON and text; never quarantined
  executables) are uploaded into its thread, each once: an upload is recorded in the audit trail
  (``slack.evidence_shared``, with the sha256 and Slack's file id), which is what "once" checks,
  under a short lock so that two workers do not upload the same file together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, or_, select, update

from responder.agent.models import FilesystemDiffResult, ProcessInfo, ProcessTreeResult
from responder.models.priorities import Priority
from responder.models.times import format_ns, now_ns
from responder.plugins.notify import slack_blocks
from responder.plugins.notify.ratelimit import ChannelBucket, SlackLimits, Turn
from responder.plugins.notify.slack import Posted, RateLimited, Transient
from responder.plugins.notify.views import (
    ApprovalView,
    DiffEntryView,
    DigestEntry,
    FilesystemDiffView,
    ProcessTreeView,
    PromptView,
    StepView,
)
from responder.settings import Settings
from responder.store import artifacts as artifacts_store
from responder.store import audit, runs
from responder.store import incidents as incidents_store
from responder.store.schema import audit_log, incident_alerts, incident_rules
from responder.store.schema import incidents as incidents_table

log = structlog.get_logger("drift.notify")

POSTING = "posting"
POSTING_TIMEOUT_NS = 60 * 1_000_000_000
PROCESS_TREE = "evidence.process_tree"
FILESYSTEM_DIFF = "evidence.filesystem_diff"
EVIDENCE_SHARED = "slack.evidence_shared"
UPLOAD_LOCK_S = 120.0
#: A refusal re-queues the notification for the time until its turn, but never for longer than
#: this: a countdown past the broker's visibility timeout would be delivered twice.
MAX_WAIT_S = 300.0
_SHAREABLE = ("application/json", "text/")
_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


class Notifier(Protocol):
    bucket: ChannelBucket | None

    def sync(self, view: PromptView, existing: Posted | None, channel: str) -> Posted: ...


@runtime_checkable
class DigestPoster(Protocol):
    def post_digest(self, channel: str, text: str,
                    blocks: list[dict[str, Any]]) -> Posted: ...


@runtime_checkable
class Uploader(Protocol):
    def upload(self, posted: Posted, *, data: bytes, filename: str, title: str,
               comment: str) -> str: ...


# ------------------------------------------------------------------------------ the view

def build_view(conn: Connection, incident_id: str, *, now: int | None = None) -> PromptView | None:
    detail = incidents_store.get_incident(conn, incident_id)
    if detail is None:
        return None
    i = detail.incident
    first = conn.execute(select(incident_alerts.c.payload)
                         .where(incident_alerts.c.incident_id == incident_id)
                         .order_by(incident_alerts.c.ordinal).limit(1)).scalar()
    output = str(orjson.loads(first).get("output", "")) if first else ""
    view = PromptView(incident_id=i.id, priority=i.priority.label, rules=i.rules,
                      namespace=i.namespace, pod=i.pod, node=i.node,
                      container_id=i.container_id, image=i.image, alert_count=i.alert_count,
                      output=output)
    approvals = runs.approvals_for_incident(conn, incident_id)
    if approvals:
        a = approvals[-1]
        status = a.status
        if status == "pending" and a.expires_ns <= (now if now is not None else now_ns()):
            status = "expired"  # decisions are refused from now on; the beat's sweep follows
        view.approval = ApprovalView(
            id=a.id, status=status, options=list(a.params.get("options", [])),
            approvers=list(a.params.get("approvers", [])),
            two_person=list(a.params.get("two_person", [])),
            prompt=str(a.params.get("prompt", "")), expires=format_ns(a.expires_ns),
            decided_option=a.decided_option, decided_by=a.decided_by,
            decided_at=format_ns(a.decided_ns) if a.decided_ns else None, reason=a.reason,
            votes=a.votes, on_timeout=a.params.get("on_timeout"))
        view.channel = a.params.get("channel")
    found = runs.runs_for_incident(conn, incident_id)
    if found:
        run = found[-1]
        view.playbook, view.run_status = run.playbook, run.status
        states = run.state.get("steps", {})
        for spec in run.spec["steps"]:
            state = states.get(spec["id"], {})
            result = state.get("result") or {}
            outcome = result.get("status") if isinstance(result, dict) else None
            view.steps.append(StepView(spec["id"], spec["uses"], str(state.get("status")),
                                       str(outcome) if outcome else None))
            if isinstance(result, dict) and result:
                _add_evidence(view, spec["id"], spec["uses"], result)
    return view


def _add_evidence(view: PromptView, step_id: str, uses: str, result: dict[str, Any]) -> None:
    try:
        if uses == PROCESS_TREE:
            tree = ProcessTreeResult.model_validate(result)
            view.process_trees.append(ProcessTreeView(
                step_id=step_id, method=tree.method, assurance=tree.assurance, node=tree.node,
                container_id=tree.container_id, processes_total=tree.processes_total,
                excerpt=tree.excerpt, flagged=[_process_line(p) for p in tree.flagged],
                truncated=tree.truncated))
        elif uses == FILESYSTEM_DIFF:
            diff = FilesystemDiffResult.model_validate(result)
            s = diff.summary
            view.diffs.append(FilesystemDiffView(
                step_id=step_id, method=diff.method, assurance=diff.assurance, node=diff.node,
                added=s.added, changed=s.changed, deleted=s.deleted,
                executables_added=s.executables_added,
                notable=[DiffEntryView(kind=e.kind, path=e.path, type=e.type, sha256=e.sha256,
                                       executable=e.executable, elf=e.elf, script=e.script,
                                       flagged=e.flagged, quarantined=bool(e.quarantined))
                         for e in diff.notable],
                quarantined=len(diff.quarantined), truncated=diff.truncated))
    except ValidationError as exc:  # a result of another shape: the steps list still shows it
        log.warning("evidence.unreadable_result", incident=view.incident_id, step=step_id,
                    uses=uses, error=str(exc)[:500])


def _process_line(p: ProcessInfo) -> str:
    exe = p.exe or (f"[{p.comm}]" if p.comm else "?")
    marks = [m for m, on in (("deleted", p.exe_deleted), ("memfd", p.exe_memfd),
                             ("upper layer", bool(p.in_upper_layer))) if on]
    parts = [f"pid {p.pid}" + (f" (in container {p.ns_pid})" if p.ns_pid is not None else ""),
             exe]
    if marks:
        parts.append(f"[{', '.join(marks)}]")
    if p.user is not None or p.uid is not None:
        parts.append(f"user {p.user if p.user is not None else p.uid}")
    if p.sha256:
        parts.append(f"sha256 {p.sha256[:12]}")
    return " ".join(parts)


def fingerprint(view: PromptView) -> str:
    """What the message shows, as a hash: an identical render is not sent again."""
    return hashlib.sha256(orjson.dumps(dataclasses.asdict(view),
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


def channel_for(view: PromptView, settings: Settings) -> str:
    """The step's channel, else a per-namespace route, else the default channel."""
    if view.channel:
        return view.channel
    routes = dict(part.split("=", 1) for part in settings.slack_namespace_channels.split(",")
                  if "=" in part)
    return routes.get(view.namespace or "", settings.slack_channel)


def digest_entries(conn: Connection, incident_ids: list[str]) -> list[DigestEntry]:
    rows = {r.id: r for r in conn.execute(
        select(incidents_table.c.id, incidents_table.c.namespace, incidents_table.c.pod,
               incidents_table.c.priority_rank).where(incidents_table.c.id.in_(incident_ids)))}
    rules: dict[str, list[str]] = {}
    for r in conn.execute(select(incident_rules.c.incident_id, incident_rules.c.rule)
                          .where(incident_rules.c.incident_id.in_(incident_ids))
                          .order_by(incident_rules.c.first_seen_ns, incident_rules.c.rule)):
        rules.setdefault(r.incident_id, []).append(r.rule)
    return [DigestEntry(incident_id=i, priority=Priority(rows[i].priority_rank).label,
                        rules=rules.get(i, []), namespace=rows[i].namespace, pod=rows[i].pod)
            for i in incident_ids if i in rows]


# ------------------------------------------------------------------------------ syncing

def sync_incident(engine: Engine, notifier: Notifier, incident_id: str,
                  settings: Settings) -> Posted | None:
    gate = getattr(notifier, "bucket", None)
    if gate is not None:
        gate.bind(settings)
        # Already waiting for its first message? Then the bucket answers, not the database.
        granted = _turn(engine, notifier, gate, lambda: gate.poll(incident_id))
    else:
        granted = None
    try:
        with engine.connect() as conn:
            view = build_view(conn, incident_id)
            row = conn.execute(select(incidents_table.c.chat_channel, incidents_table.c.chat_ts)
                               .where(incidents_table.c.id == incident_id)).first()
    except BaseException:
        if gate is not None and granted is not None:
            gate.restore(granted, incident_id, None)
        raise
    if view is None or row is None:
        if gate is not None and granted is not None:
            gate.refund(granted.channel)
        return None
    channel = channel_for(view, settings)
    if row.chat_ts and row.chat_ts != POSTING:
        if gate is not None and granted is not None:
            gate.refund(granted.channel)  # someone else posted it meanwhile
        posted = Posted(row.chat_channel, row.chat_ts)
        _update(gate, notifier, view, posted, channel)
        _share_evidence(engine, notifier, gate, incident_id, posted, settings)
        return posted
    if row.chat_ts == POSTING:
        started = int(str(row.chat_channel).removeprefix("posting:") or 0)
        if now_ns() - started < POSTING_TIMEOUT_NS:
            if gate is not None and granted is not None:
                gate.restore(granted, incident_id, None)
            raise RateLimited(0.5)  # another worker is posting the first message right now
    turn = granted
    if gate is not None and turn is None:
        turn = _turn(engine, notifier, gate, lambda: gate.turn(channel, incident_id))
    # Claim the first post (compare-and-set), so that two workers never post two messages.
    with engine.begin() as conn:
        claimed = conn.execute(
            update(incidents_table)
            .where(incidents_table.c.id == incident_id,
                   or_(incidents_table.c.chat_ts.is_(None),
                       incidents_table.c.chat_channel == row.chat_channel))
            .values(chat_channel=f"posting:{now_ns()}", chat_ts=POSTING)).rowcount
    if claimed != 1:
        if gate is not None and turn is not None:
            gate.restore(turn, incident_id, None)
        raise RateLimited(0.5)
    try:
        posted = notifier.sync(view, None, channel)
    except BaseException as exc:
        with engine.begin() as conn:  # let the next attempt post
            conn.execute(update(incidents_table).where(incidents_table.c.id == incident_id)
                         .values(chat_channel=None, chat_ts=None))
        if gate is not None and turn is not None:
            if isinstance(exc, RateLimited):
                gate.restore(turn, incident_id, exc.retry_after)
            elif isinstance(exc, Transient):
                gate.failed(turn, incident_id)
        raise
    with engine.begin() as conn:
        conn.execute(update(incidents_table).where(incidents_table.c.id == incident_id)
                     .values(chat_channel=posted.channel, chat_ts=posted.ts))
    if gate is not None:
        gate.sent(incident_id, fingerprint(view))
        gate.posted(channel)  # failures on this channel are no longer in a row
    _share_evidence(engine, notifier, gate, incident_id, posted, settings)
    return posted


def _turn(engine: Engine, notifier: Notifier, gate: ChannelBucket,
          ask: Callable[[], Turn | None]) -> Turn | None:
    """A token for a first message (the digest goes first when one is due), or RateLimited
    with the time until this incident's turn."""
    for _ in range(4):
        turn = ask()
        if turn is None or turn.kind == "post":
            return turn
        if turn.kind == "wait":
            raise RateLimited(min(turn.wait_s, MAX_WAIT_S))
        _post_digest(engine, notifier, gate, turn)
    raise RateLimited(0.1)


def _post_digest(engine: Engine, notifier: Notifier, gate: ChannelBucket, turn: Turn) -> None:
    """Best effort: a digest that cannot be posted must never hold back the prompts."""
    if not isinstance(notifier, DigestPoster):
        return
    try:
        with engine.connect() as conn:
            entries = digest_entries(conn, turn.incidents)
        text, blocks = slack_blocks.render_digest(turn.channel, entries,
                                                  gate.limits.rate_per_second)
        notifier.post_digest(turn.channel, text, blocks)
        log.info("slack.digest", channel=turn.channel, incidents=len(entries))
    except RateLimited as exc:
        gate.digest_failed(turn, exc.retry_after)
        raise
    except Exception as exc:
        gate.digest_failed(turn, None)
        log.warning("slack.digest_failed", channel=turn.channel, error=repr(exc)[:500])


def _update(gate: ChannelBucket | None, notifier: Notifier, view: PromptView, posted: Posted,
            channel: str) -> None:
    if gate is None:
        notifier.sync(view, posted, channel)
        return
    shown = fingerprint(view)
    slot = gate.update_slot(view.incident_id, shown)
    if slot.kind == "same":
        return
    if slot.kind == "wait":  # coalesced: the retry renders whatever is latest by then
        raise RateLimited(slot.wait_s)
    try:
        notifier.sync(view, posted, channel)
    except RateLimited as exc:
        gate.updates_refused(exc.retry_after)
        raise
    gate.sent(view.incident_id, shown)


# ------------------------------------------------------------------------------ evidence files

def shared_evidence(conn: Connection, incident_id: str) -> set[str]:
    """sha256 of the artifacts already uploaded into the incident's thread (the audit trail)."""
    rows = conn.execute(select(audit_log.c.data).where(audit_log.c.incident_id == incident_id,
                                                       audit_log.c.kind == EVIDENCE_SHARED))
    return {str(orjson.loads(r.data).get("sha256")) for r in rows}


def _shareable(row: artifacts_store.ArtifactRow, limits: SlackLimits) -> bool:
    return row.media_type.startswith(_SHAREABLE) and row.size <= limits.upload_max_bytes


def _share_evidence(engine: Engine, notifier: Notifier, gate: ChannelBucket | None,
                    incident_id: str, posted: Posted, settings: Settings) -> None:
    if gate is None or not gate.limits.upload_evidence or not isinstance(notifier, Uploader):
        return
    with engine.connect() as conn:
        rows = [r for r in artifacts_store.for_incident(conn, incident_id)
                if _shareable(r, gate.limits)]
        if not rows:
            return
        done = shared_evidence(conn, incident_id)
    if all(r.sha256 in done for r in rows):
        return
    name = f"upload:{incident_id}"
    token = gate.lock(name, UPLOAD_LOCK_S)
    if token is None:
        raise RateLimited(2.0)  # another worker uploads now; then look again
    try:
        with engine.connect() as conn:
            done = shared_evidence(conn, incident_id)  # again, under the lock
        store = artifacts_store.ArtifactStore(settings.effective_artifacts_dir)
        for row in rows:
            if row.sha256 in done:
                continue
            try:
                data = store.read_bytes(row.sha256)
            except OSError as exc:
                log.warning("evidence.unreadable", incident=incident_id, sha256=row.sha256,
                            error=repr(exc))
                continue
            if hashlib.sha256(data).hexdigest() != row.sha256:
                log.error("evidence.tampered", incident=incident_id, sha256=row.sha256)
                continue
            wait = gate.upload_token()
            if wait > 0:
                raise RateLimited(wait)
            try:
                file_id = notifier.upload(posted, data=data, filename=_filename(row),
                                          title=f"{row.name} (sha256 {row.sha256[:12]})",
                                          comment=_comment(row))
            except RateLimited as exc:
                gate.updates_refused(exc.retry_after)
                raise
            with engine.begin() as conn:
                audit.append(conn, [audit.AuditEntry(
                    kind=EVIDENCE_SHARED, actor="system:notify", incident_id=incident_id,
                    data={"sha256": row.sha256, "name": row.name, "size": row.size,
                          "media_type": row.media_type, "channel": posted.channel,
                          "thread_ts": posted.ts, "file_id": file_id})])
            log.info("evidence.shared", incident=incident_id, sha256=row.sha256, file=file_id)
    finally:
        gate.unlock(name, token)


def _filename(row: artifacts_store.ArtifactRow) -> str:
    base = _FILENAME.sub("_", row.name.rsplit("/", 1)[-1]).strip("._") or "evidence"
    return base[:120]


def _comment(row: artifacts_store.ArtifactRow) -> str:
    escape = slack_blocks.escape
    where = f" on {escape(row.node)}" if row.node else ""
    return (f"Evidence {escape(row.name)} from {escape(row.collector)} "
            f"({escape(row.method)}{where}), {row.size} bytes, sha256 `{escape(row.sha256)}`")
