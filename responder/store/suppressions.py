"""Suppressions: an analyst's time-boxed "this drift is known and benign, stop opening incidents".

A suppression names one rule in one namespace, always: a suppression that would silence a rule
(or a priority level) cluster-wide, or everything, cannot be made. It may narrow further to a
pod (exact, or a name prefix such as a workload's ``web-``), an image (a repository, which
matches every tag, or an exact reference), an image digest and a node; every field given must
match. It also records a *maximum priority*: an alert more severe than that (for instance an
``Emergency`` or ``Alert`` from a rule dismissed at ``Critical``) always gets through, so a
suppression made for routine noise never hides an escalation. From a Slack dismissal the maximum
is the dismissed incident's priority; from the CLI it is ``Critical`` unless told otherwise.

Every suppression expires (24 hours by default, at most 30 days) and may be lifted earlier. Both
creating and lifting append an audit record (``suppression.created``, ``suppression.lifted``)
with who and why, in the same transaction. Alerts a suppression swallows are not recorded one by
one: the intake adds them to ``hits`` / ``last_hit_ns`` periodically (see
responder/intake/suppressing.py), so the counts may trail by a few seconds.

Matching is here too (:class:`Matcher`), as a pure function of the active suppressions: a dict
keyed by (rule, namespace), so that an alert no suppression names costs one look-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Connection, Row, String, bindparam, case, select, update

from responder.models.alerts import Alert
from responder.models.incidents import new_incident_id
from responder.models.priorities import Priority
from responder.models.times import format_ns
from responder.store import audit
from responder.store.schema import suppressions

NS = 1_000_000_000
MIN_DURATION_NS = 60 * NS
DEFAULT_DURATION_NS = 24 * 3600 * NS
MAX_DURATION_NS = 30 * 24 * 3600 * NS
DEFAULT_MAX_PRIORITY = Priority.CRITICAL
MAX_REASON = 2000
#: Who may be recorded as having made or lifted a suppression.
ACTOR_PREFIXES = ("slack:", "cli:")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(?:[0-9]{1,6}[smhdw])+$")
_DURATION_PART = re.compile(r"([0-9]{1,6})([smhdw])")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_POD_PREFIX = re.compile(r"^[a-z0-9][-a-z0-9.]{0,251}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_IMAGE = re.compile(r"^[^\s\x00@]+(@sha256:[0-9a-f]{64})?$")
_NODE = re.compile(r"^[^\s\x00/]{1,253}$")

# Kubernetes generates pod names from this alphabet (no vowels, no 0/1/3).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_DEPLOYMENT_POD = re.compile(rf"^(?P<base>.+-)[{_SAFE}]{{4,10}}-[{_SAFE}]{{5}}$")
_CRONJOB_POD = re.compile(rf"^(?P<base>.+-)[0-9]{{8,}}-[{_SAFE}]{{5}}$")
_GENERATED_POD = re.compile(rf"^(?P<base>.+-)[{_SAFE}]{{5}}$")
_ORDINAL_POD = re.compile(r"^(?P<base>.+-)[0-9]+$")


class InvalidSuppression(ValueError):
    """A suppression that may not be made (or lifted), with the reason a person can act on."""


class NotFound(LookupError):
    pass


class NotActive(ValueError):
    """Lifting a suppression that was already lifted or has expired."""


# ---------------------------------------------------------------- what a suppression matches

@dataclass(frozen=True, slots=True)
class Match:
    """Every field given must match; ``rule`` and ``namespace`` are required."""

    rule: str
    namespace: str
    pod: str | None = None
    pod_prefix: str | None = None
    image: str | None = None
    image_digest: str | None = None
    node: str | None = None

    def checked(self) -> Match:
        """The match, normalised, or :class:`InvalidSuppression` naming what is wrong."""
        rule = (self.rule or "").strip()
        namespace = (self.namespace or "").strip()
        if not rule:
            raise InvalidSuppression("a rule is required: a suppression silences one Falco "
                                     "rule, never all of them")
        if rule in ("*", "any", "all") or len(rule) > 1024 or "\x00" in rule:
            raise InvalidSuppression(f"not a rule name: {rule[:80]!r} (rules match exactly; "
                                     "wildcards are not supported)")
        if not namespace:
            raise InvalidSuppression("a namespace is required: a suppression never covers a "
                                     "rule or a priority level across the whole cluster")
        if not _DNS_LABEL.match(namespace):
            raise InvalidSuppression(f"not a namespace name: {namespace[:80]!r} (one "
                                     "namespace, matched exactly; wildcards are not supported)")
        pod = _blank(self.pod)
        prefix = _blank(self.pod_prefix)
        if pod is not None and prefix is not None:
            raise InvalidSuppression("give an exact pod or a pod name prefix, not both")
        if pod is not None and not _POD_NAME.match(pod):
            raise InvalidSuppression(f"not a pod name: {pod[:80]!r}")
        if prefix is not None and (len(prefix) < 2 or not _POD_PREFIX.match(prefix)):
            raise InvalidSuppression(f"not a pod name prefix: {prefix[:80]!r} (at least two "
                                     "characters of a pod name, such as 'web-')")
        image = _blank(self.image)
        if image is not None and (len(image) > 1024 or not _IMAGE.match(image)):
            raise InvalidSuppression(f"not an image: {image[:80]!r} (a repository such as "
                                     "'registry.example.com/shop/web', or an exact reference)")
        digest = _blank(self.image_digest)
        if digest is not None:
            digest = digest.lower()
            if not _DIGEST.match(digest):
                raise InvalidSuppression(f"not an image digest: {digest[:80]!r} (expected "
                                         "sha256:<64 hex>)")
        node = _blank(self.node)
        if node is not None and not _NODE.match(node):
            raise InvalidSuppression(f"not a node name: {node[:80]!r}")
        return Match(rule, namespace, pod, prefix, image, digest, node)

    def to_json(self) -> dict[str, str]:
        out = {"rule": self.rule, "namespace": self.namespace}
        for name in ("pod", "pod_prefix", "image", "image_digest", "node"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def describe(self) -> str:
        """One line for people: ``rule in ns, pod web-*, image repo``."""
        parts = [f"{self.rule!r} in {self.namespace}"]
        if self.pod is not None:
            parts.append(f"pod {self.pod}")
        if self.pod_prefix is not None:
            parts.append(f"pod {self.pod_prefix}*")
        if self.image is not None:
            parts.append(f"image {self.image}")
        if self.image_digest is not None:
            parts.append(f"digest {self.image_digest}")
        if self.node is not None:
            parts.append(f"node {self.node}")
        return ", ".join(parts)


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True, slots=True)
class Suppression:
    id: str
    match: Match
    max_priority: Priority
    created_by: str
    reason: str
    created_ns: int
    expires_ns: int
    incident_id: str | None = None
    lifted_by: str | None = None
    lifted_ns: int | None = None
    lift_reason: str | None = None
    hits: int = 0
    last_hit_ns: int | None = None

    def status(self, now_ns: int) -> str:
        if self.lifted_ns is not None:
            return "lifted"
        return "active" if self.expires_ns > now_ns else "expired"

    def to_json(self, now_ns: int) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status(now_ns), "match": self.match.to_json(),
            "max_priority": self.max_priority.label, "created_by": self.created_by,
            "reason": self.reason, "created": format_ns(self.created_ns),
            "expires": format_ns(self.expires_ns), "incident_id": self.incident_id,
            "lifted_by": self.lifted_by,
            "lifted_at": format_ns(self.lifted_ns) if self.lifted_ns is not None else None,
            "lift_reason": self.lift_reason, "hits": self.hits,
            "last_hit": format_ns(self.last_hit_ns) if self.last_hit_ns is not None else None,
        }


# ---------------------------------------------------------------- parsing what people type

def parse_duration(text: str) -> int:
    """``90m``, ``24h``, ``7d``, ``1h30m`` -> nanoseconds, within 1 minute .. 30 days."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.match(compact):
        raise InvalidSuppression(f"not a duration: {text[:40]!r} (use e.g. 30m, 24h, 7d)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(compact))
    return check_duration(seconds * NS)


def check_duration(duration_ns: int) -> int:
    if duration_ns < MIN_DURATION_NS:
        raise InvalidSuppression("a suppression lasts at least 1 minute")
    if duration_ns > MAX_DURATION_NS:
        raise InvalidSuppression("a suppression lasts at most 30 days; make a new one when it "
                                 "expires if the drift is still expected")
    return duration_ns


def parse_pod(text: str) -> tuple[str | None, str | None]:
    """``web-7d9f-x2x4q`` -> (exact, None); ``web-*`` -> (None, prefix ``web-``)."""
    text = text.strip()
    if text.endswith("*"):
        if "*" in text[:-1]:
            raise InvalidSuppression(f"only a trailing * is supported in a pod: {text[:80]!r}")
        return None, text[:-1]
    if "*" in text:
        raise InvalidSuppression(f"only a trailing * is supported in a pod: {text[:80]!r}")
    return text, None


def workload_pod(pod: str) -> tuple[str | None, str | None]:
    """(exact pod, pod prefix) covering the pod's workload: the name without what Kubernetes
    generated (a ReplicaSet's template hash and random suffix, a Job's suffix, a StatefulSet's
    ordinal), so that a replacement pod or a new rollout still matches. A name with nothing
    generated in it stays exact."""
    for pattern in (_DEPLOYMENT_POD, _CRONJOB_POD, _GENERATED_POD, _ORDINAL_POD):
        found = pattern.match(pod)
        if found is not None and len(found.group("base")) >= 2:
            return None, found.group("base")
    return pod, None


def image_repository(ref: str) -> str:
    """``registry:5000/shop/web:1.8@sha256:..`` -> ``registry:5000/shop/web``."""
    name = ref.split("@", 1)[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if len(text) < 3:
        raise InvalidSuppression("a reason is required: say why this drift is expected")
    return text[:MAX_REASON]


def check_actor(actor: str) -> str:
    if not actor.startswith(ACTOR_PREFIXES) or len(actor) > 256 or \
            len(actor.split(":", 1)[1]) == 0:
        raise InvalidSuppression(f"not an actor: {actor[:80]!r} (slack:<user id> or "
                                 "cli:<user>)")
    return actor


# ---------------------------------------------------------------- matching alerts

def _alert_repository(alert: Alert) -> str | None:
    repository = alert.fields.get("container.image.repository")
    if isinstance(repository, str) and repository:
        return repository
    return image_repository(alert.image) if alert.image else None


def _alert_digest(alert: Alert) -> str | None:
    digest = alert.fields.get("container.image.digest")
    if isinstance(digest, str) and digest:
        return digest.lower()
    if alert.image and "@" in alert.image:
        return alert.image.split("@", 1)[1].lower()
    return None


@dataclass(frozen=True, slots=True)
class _Compiled:
    id: str
    max_rank: int
    expires_ns: int
    pod: str | None
    pod_prefix: str | None
    image: str | None
    image_is_ref: bool
    digest: str | None
    node: str | None

    def applies(self, alert: Alert, now_ns: int) -> bool:
        if alert.priority < self.max_rank or self.expires_ns <= now_ns:
            return False
        if self.pod is not None and alert.pod != self.pod:
            return False
        if self.pod_prefix is not None and not (alert.pod or "").startswith(self.pod_prefix):
            return False
        if self.node is not None and alert.node != self.node:
            return False
        if self.image is not None:
            if self.image_is_ref:
                ref = alert.image or ""
                if ref != self.image and not ref.startswith(self.image + "@"):
                    return False
            elif _alert_repository(alert) != self.image:
                return False
        return self.digest is None or _alert_digest(alert) == self.digest


@dataclass(frozen=True, slots=True)
class Matcher:
    """Active suppressions indexed by (rule, namespace): most alerts cost one dict look-up."""

    index: dict[tuple[str, str], tuple[_Compiled, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, found: Iterable[Suppression]) -> Matcher:
        index: dict[tuple[str, str], list[_Compiled]] = {}
        for s in sorted(found, key=lambda s: (s.created_ns, s.id)):
            if s.lifted_ns is not None:
                continue
            m = s.match
            image_is_ref = m.image is not None and (
                "@" in m.image or image_repository(m.image) != m.image)
            index.setdefault((m.rule, m.namespace), []).append(_Compiled(
                s.id, int(s.max_priority), s.expires_ns, m.pod, m.pod_prefix, m.image,
                image_is_ref, m.image_digest, m.node))
        return cls({k: tuple(v) for k, v in index.items()})

    def __bool__(self) -> bool:
        return bool(self.index)

    def __len__(self) -> int:
        return sum(len(v) for v in self.index.values())

    def match(self, alert: Alert, now_ns: int) -> str | None:
        """The id of the first active suppression that covers this alert, if any."""
        if alert.namespace is None:
            return None
        candidates = self.index.get((alert.rule, alert.namespace))
        if candidates is None:
            return None
        for candidate in candidates:
            if candidate.applies(alert, now_ns):
                return candidate.id
        return None


# ---------------------------------------------------------------- the store

def create(conn: Connection, match: Match, *, created_by: str, reason: str, duration_ns: int,
           now_ns: int, max_priority: Priority = DEFAULT_MAX_PRIORITY,
           incident_id: str | None = None, source: str | None = None) -> Suppression:
    """Validate, store and audit a new suppression inside the caller's transaction."""
    checked = match.checked()
    made = Suppression(
        id=new_incident_id(), match=checked, max_priority=Priority(max_priority),
        created_by=check_actor(created_by), reason=check_reason(reason), created_ns=now_ns,
        expires_ns=now_ns + check_duration(duration_ns), incident_id=incident_id)
    conn.execute(suppressions.insert().values(
        id=made.id, **checked.to_json(), max_priority_rank=int(made.max_priority),
        incident_id=incident_id, created_by=made.created_by, reason=made.reason,
        created_ns=made.created_ns, expires_ns=made.expires_ns, hits=0))
    data: dict[str, Any] = {
        "suppression": made.id, "match": checked.to_json(),
        "max_priority": made.max_priority.label, "expires": format_ns(made.expires_ns),
        "duration_seconds": duration_ns // NS, "reason": made.reason}
    if source is not None:
        data["source"] = source
    audit.append(conn, [audit.AuditEntry(kind="suppression.created", actor=made.created_by,
                                         incident_id=incident_id, data=data)])
    return made


def lift(conn: Connection, suppression_id: str, *, by: str, reason: str,
         now_ns: int) -> Suppression:
    """Lift an active suppression (compare-and-set) and audit it; NotFound / NotActive else."""
    by = check_actor(by)
    why = check_reason(reason)
    done = conn.execute(
        update(suppressions)
        .where(suppressions.c.id == suppression_id, suppressions.c.lifted_ns.is_(None),
               suppressions.c.expires_ns > now_ns)
        .values(lifted_by=by, lifted_ns=now_ns, lift_reason=why)
        .returning(suppressions.c.id)).first()
    found = get(conn, suppression_id)
    if found is None:
        raise NotFound(f"no suppression {suppression_id[:40]!r}")
    if done is None:
        if found.lifted_ns is not None:
            raise NotActive(f"suppression {found.id} was already lifted by {found.lifted_by} "
                            f"at {format_ns(found.lifted_ns)}")
        raise NotActive(f"suppression {found.id} already expired at "
                        f"{format_ns(found.expires_ns)}")
    audit.append(conn, [audit.AuditEntry(
        kind="suppression.lifted", actor=by, incident_id=found.incident_id,
        data={"suppression": found.id, "match": found.match.to_json(), "reason": why,
              "hits": found.hits})])
    return found


def get(conn: Connection, suppression_id: str) -> Suppression | None:
    row = conn.execute(select(suppressions)
                       .where(suppressions.c.id == suppression_id[:64])).first()
    return None if row is None else _suppression(row)


def list_suppressions(conn: Connection, *, now_ns: int, include_inactive: bool = False,
                      limit: int | None = None) -> list[Suppression]:
    """Newest first; only the active ones unless ``include_inactive``."""
    query = select(suppressions).order_by(suppressions.c.created_ns.desc(),
                                          suppressions.c.id.desc())
    if not include_inactive:
        query = query.where(suppressions.c.lifted_ns.is_(None),
                            suppressions.c.expires_ns > now_ns)
    if limit is not None:
        query = query.limit(limit)
    return [_suppression(row) for row in conn.execute(query)]


def add_hits(conn: Connection, hits: Mapping[str, tuple[int, int]]) -> None:
    """Add counted hits: suppression id -> (alerts, last hit ns). One statement, many rows."""
    if not hits:
        return
    t = suppressions.c
    stmt = update(suppressions).where(t.id == _bind("sid")).values(
        hits=t.hits + _bind("n"),
        last_hit_ns=case((t.last_hit_ns.is_(None), _bind("at")),
                         (t.last_hit_ns < _bind("at"), _bind("at")), else_=t.last_hit_ns))
    # Same order in every process: concurrent flushes never deadlock on PostgreSQL.
    conn.execute(stmt, [{"sid": k, "n": n, "at": at} for k, (n, at) in sorted(hits.items())])


def _bind(name: str) -> Any:
    return bindparam(name, type_=String() if name == "sid" else BigInteger())


def _suppression(row: Row[Any]) -> Suppression:
    return Suppression(
        id=row.id,
        match=Match(row.rule, row.namespace, row.pod, row.pod_prefix, row.image,
                    row.image_digest, row.node),
        max_priority=Priority(row.max_priority_rank), created_by=row.created_by,
        reason=row.reason, created_ns=int(row.created_ns), expires_ns=int(row.expires_ns),
        incident_id=row.incident_id, lifted_by=row.lifted_by,
        lifted_ns=int(row.lifted_ns) if row.lifted_ns is not None else None,
        lift_reason=row.lift_reason, hits=int(row.hits),
        last_hit_ns=int(row.last_hit_ns) if row.last_hit_ns is not None else None)
