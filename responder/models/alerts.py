"""The Falco alert: the wire payload we accept, and the normalised alert everything else reads.

Accepted shapes (see shared/samples/falco): falcosidekick payloads (``uuid``), Falco's own
``http_output`` (no ``uuid``), and older Falco (no ``hostname``/``source``/``tags``, ``<NA>`` for
missing values). Every value in here is attacker-influenced data: it is never template source,
shell, or markup.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from responder.models.priorities import Priority
from responder.models.times import parse_rfc3339_ns

Scalar = str | int | float | bool | None
FieldValue = Scalar | list[Scalar]

#: What older Falco prints for a field with no value.
MISSING = "<NA>"
_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RUNTIME_PREFIX = re.compile(r"^[a-z0-9.-]+://")

MAX_OUTPUT_FIELDS = 1024
#: Falco payloads are a few levels deep; anything deeper is refused before it is hashed or stored.
MAX_DEPTH = 16


class FalcoPayload(BaseModel):
    """One alert as Falco or falcosidekick sends it. Unknown top-level keys are tolerated."""

    model_config = ConfigDict(extra="allow", frozen=True)

    uuid: str | None = Field(default=None, min_length=1, max_length=128)
    rule: str = Field(min_length=1, max_length=1024)
    priority: Priority
    time: int | None = Field(default=None, description="ns since the epoch (parsed from RFC 3339)")
    output: str = Field(default="", max_length=256 * 1024)
    source: str | None = Field(default=None, max_length=256)
    hostname: str | None = Field(default=None, max_length=256)
    tags: list[str] = Field(default_factory=list, max_length=256)
    output_fields: dict[str, FieldValue] = Field(default_factory=dict)
    message: str | None = Field(default=None, max_length=256 * 1024)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_by_name(cls, value: object) -> Priority:
        if isinstance(value, Priority):
            return value
        if not isinstance(value, str):
            raise ValueError("priority must be a string such as 'Critical'")
        return Priority.parse(value)

    @field_validator("time", mode="before")
    @classmethod
    def _time_from_rfc3339(cls, value: object) -> int | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("time must be an RFC 3339 string")
        return parse_rfc3339_ns(value)

    @field_validator("output_fields", mode="after")
    @classmethod
    def _bounded_fields(cls, value: dict[str, FieldValue]) -> dict[str, FieldValue]:
        if len(value) > MAX_OUTPUT_FIELDS:
            raise ValueError(f"more than {MAX_OUTPUT_FIELDS} output_fields")
        return value


#: Top-level fields whose shape the model fixes (output_fields values could still nest).
_KNOWN_ALL = frozenset(FalcoPayload.model_fields)


#: JSON text as received: a line of an NDJSON body is a view into the body, not a copy of it.
RawJson = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Alert:
    """A validated, normalised alert. ``raw`` is the payload's JSON text as received (for the
    record): bytes, not the decoded dict, which is four times larger and gone once parsed."""

    alert_id: str
    rule: str
    priority: Priority
    time_ns: int
    output: str
    source: str | None
    node: str | None
    tags: tuple[str, ...]
    fields: dict[str, FieldValue]
    container_id: str | None
    container_full_id: str | None
    container_name: str | None
    namespace: str | None
    pod: str | None
    pod_uid: str | None
    image: str | None
    raw: RawJson = field(repr=False, compare=False)

    def field(self, name: str) -> FieldValue:
        return self.fields.get(name)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an item was refused: where (``field``) and why (``message``)."""

    field: str
    message: str


class InvalidAlert(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def parse_alert(item: object, raw: RawJson | None = None) -> Alert:
    """Validate and normalise one decoded JSON value, or raise :class:`InvalidAlert`. ``raw`` is
    its JSON text as received, when the caller has it (else it is serialised again)."""
    if not isinstance(item, dict):
        kind = type(item).__name__ if item is not None else "null"
        raise InvalidAlert([Problem("(item)", f"an alert must be a JSON object, not {kind}")])
    # Known fields have fixed shapes the model checks; only unknown extras can nest freely.
    extras = [v for k, v in item.items() if k not in _KNOWN_ALL and isinstance(v, dict | list)]
    fields = item.get("output_fields")
    if isinstance(fields, dict):
        # Almost always all scalars: only nested values need the walk (in a list standing where
        # the dict stood, so that depths count as before).
        nested = [v for v in fields.values() if isinstance(v, dict | list)]
        if nested:
            extras.append(nested)
    elif isinstance(fields, list):
        extras.append(fields)
    if extras and _depth_exceeds(extras, MAX_DEPTH):
        raise InvalidAlert([Problem("(item)", f"nested deeper than {MAX_DEPTH} levels")])
    try:
        payload = FalcoPayload.model_validate(item)
    except ValidationError as exc:
        raise InvalidAlert(_problems(exc)) from None
    # orjson's output keeps a 16 KiB allocation whatever its length: copy what is kept.
    return normalise(payload, item,
                     memoryview(orjson.dumps(item)).tobytes() if raw is None else raw)


#: Field values seen recently, so that a storm's alerts share one copy of each repeated value (a
#: container's alerts differ in a few fields; the rest would be held once per alert until its
#: batch is committed). Cleared when full; lookups are atomic under the GIL.
_SHARED: dict[str, str] = {}
_SHARED_MAX = 8192
_SHARED_LEN = 512


def _shared(value: str) -> str:
    if len(value) > _SHARED_LEN:
        return value
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def normalise(payload: FalcoPayload, item: dict[str, Any], raw: RawJson) -> Alert:
    shared = _SHARED
    if len(shared) >= _SHARED_MAX:
        shared.clear()
    fields = {k: None if v == MISSING else
              shared.setdefault(v, v) if type(v) is str and len(v) <= _SHARED_LEN else v
              for k, v in payload.output_fields.items()}
    time_ns = payload.time if payload.time is not None else _evt_time(fields)
    if time_ns is None:
        raise InvalidAlert([Problem("time", "missing, and output_fields has no evt.time")])
    short_id, full_id = _container_ids(fields)
    problems: list[Problem] = []

    def bounded(where: str, value: str | None, limit: int) -> str | None:
        # These values become indexed columns: a clear refusal beats a database error.
        if value is None:
            return None
        if "\x00" in value:
            problems.append(Problem(where, "contains a NUL character"))
        elif len(value) > limit:
            problems.append(Problem(where, f"longer than {limit} characters"))
        return value

    alert = Alert(
        alert_id=bounded("uuid", payload.uuid, 128) or stable_alert_id(item),
        rule=_shared(bounded("rule", payload.rule, 1024) or payload.rule),
        priority=payload.priority,
        time_ns=time_ns,
        output=payload.output,
        source=_text(payload.source),
        node=bounded("hostname", _text(payload.hostname) or _text(fields.get("evt.hostname")),
                     253),
        tags=tuple(_shared(tag) for tag in payload.tags),
        fields=fields,
        container_id=bounded("output_fields['container.id']", short_id, 128),
        container_full_id=full_id,
        container_name=bounded("output_fields['container.name']",
                               _text(fields.get("container.name")), 256),
        namespace=bounded("output_fields['k8s.ns.name']", _text(fields.get("k8s.ns.name")), 253),
        pod=bounded("output_fields['k8s.pod.name']", _text(fields.get("k8s.pod.name")), 253),
        pod_uid=bounded("output_fields['k8s.pod.uid']", _text(fields.get("k8s.pod.uid")), 64),
        image=bounded("output_fields['container.image']", _image(fields), 1024),
        raw=raw,
    )
    if problems:
        raise InvalidAlert(problems)
    return alert


def stable_alert_id(raw: dict[str, Any]) -> str:
    """Same payload, same id: a hash of the canonical JSON (sorted keys, compact)."""
    canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _depth_exceeds(value: object, limit: int) -> bool:
    """Iterative, so that a hostile payload cannot exhaust the stack while being measured."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(current, dict):
            stack.extend((v, depth + 1) for v in current.values())
        elif isinstance(current, list):
            stack.extend((v, depth + 1) for v in current)
    return False


def _container_ids(fields: dict[str, FieldValue]) -> tuple[str | None, str | None]:
    full = _container_text(fields.get("container.full_id"))
    short = _container_text(fields.get("container.id"))
    if short is not None and _HEX64.match(short):
        full = full or short
    if full is not None and not _HEX64.match(full):
        full = None  # not a runtime id we can match against Kubernetes; fall back to the short id
    if full is not None and (short is None or not _HEX12.match(short)):
        short = full[:12]
    if short is not None and len(short) > 12 and _HEX64.match(short):
        short = short[:12]
    return short, full


def _container_text(value: FieldValue) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = _RUNTIME_PREFIX.sub("", text.strip().lower())
    # Falco reports events outside any container as container.id "host".
    return None if text in ("", "host") else text[:128]


def _image(fields: dict[str, FieldValue]) -> str | None:
    whole = _text(fields.get("container.image"))
    if whole:
        return whole
    repository = _text(fields.get("container.image.repository"))
    if not repository:
        return None
    tag = _text(fields.get("container.image.tag"))
    digest = _text(fields.get("container.image.digest"))
    image = f"{repository}:{tag}" if tag else repository
    return f"{image}@{digest}" if digest else image


def _evt_time(fields: dict[str, FieldValue]) -> int | None:
    for name in ("evt.time", "evt.rawtime"):
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
            return value
    return None


def _text(value: FieldValue) -> str | None:
    if value is None or isinstance(value, list):
        return None
    text = str(value)
    return None if text in ("", MISSING) else text


def _problems(exc: ValidationError) -> list[Problem]:
    """One problem per bad place: a bad output field value fails every member of the value
    union, and the sender needs to hear about it once."""
    problems: dict[str, Problem] = {}
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if len(loc) > 2 and loc[0] == "output_fields":
            where = _location(loc[:2])
            message = "must be a string, number, boolean, null, or a list of those"
        else:
            where, message = _location(loc), _message(err)
        problems.setdefault(where, Problem(where, message))
    return list(problems.values())


def _message(error: Any) -> str:
    """Pydantic's message, without its "Value error, " prefix on our own validators' reasons."""
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and ("." in part or " " in part)):
            out += f"[{part!r}]" if isinstance(part, str) else f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(item)"
