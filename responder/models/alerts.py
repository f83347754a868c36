"""The Falco alert: the wire payload we accept, and the normalised alert everything else reads.

Accepted shapes (see shared/samples/falco): falcosidekick payloads (``uuid``), Falco's own
``http_output`` (no ``uuid``), and older Falco (no ``hostname``/``source``/``tags``, ``<NA>`` for
missing values). Every value in here is attacker-influenced data: it is never template source,
shell, or markup.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

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
# Lengths the model and the hand-written check (_parse_plain) both enforce.
MAX_UUID = 128
MAX_CONTAINER_ID = 128  # as sent, when it is not a runtime id (cut to this, then checked)
MAX_RULE = 1024
MAX_TEXT = 256 * 1024  # output, message
MAX_LABEL = 256  # source, hostname
MAX_TAGS = 256
#: Falco payloads are a few levels deep; anything deeper is refused before it is hashed or stored.
MAX_DEPTH = 16


class FalcoPayload(BaseModel):
    """One alert as Falco or falcosidekick sends it. Unknown top-level keys are tolerated."""

    model_config = ConfigDict(extra="allow", frozen=True)

    uuid: str | None = Field(default=None, min_length=1, max_length=MAX_UUID)
    rule: str = Field(min_length=1, max_length=MAX_RULE)
    priority: Priority
    time: int | None = Field(default=None, description="ns since the epoch (parsed from RFC 3339)")
    output: str = Field(default="", max_length=MAX_TEXT)
    source: str | None = Field(default=None, max_length=MAX_LABEL)
    hostname: str | None = Field(default=None, max_length=MAX_LABEL)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    output_fields: dict[str, FieldValue] = Field(default_factory=dict)
    message: str | None = Field(default=None, max_length=MAX_TEXT)

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


class OutputFields(Mapping[str, FieldValue]):
    """An alert's ``output_fields`` (``<NA>`` read as missing: None), decoded from its JSON text
    when first read. The intake reads only a few of them, which it takes out while validating;
    holding a dict per alert until its batch is committed cost ~3 us of copying per alert and
    ~1.3 KB per alert of a storm's memory (bench/PROFILE.md)."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: RawJson) -> None:
        self._raw = raw
        self._decoded: dict[str, FieldValue] | None = None

    def _data(self) -> dict[str, FieldValue]:
        decoded = self._decoded
        if decoded is None:
            # The text was validated when the alert was made: it decodes to the same fields.
            sent = orjson.loads(self._raw).get("output_fields") or {}
            decoded = self._decoded = _without_missing(sent)
        return decoded

    def __getitem__(self, name: str) -> FieldValue:
        return self._data()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._data().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __contains__(self, name: object) -> bool:
        return name in self._data()

    def __repr__(self) -> str:
        return repr(self._data())

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as the plain dict it stands for
        return (dict, (self._data(),))


def _without_missing(sent: dict[str, FieldValue]) -> dict[str, FieldValue]:
    if MISSING not in sent.values():
        return sent
    return {k: None if v == MISSING else v for k, v in sent.items()}


class Alert(NamedTuple):
    """A validated, normalised alert. ``raw`` is the payload's JSON text as received (for the
    record): bytes, not the decoded dict, which is four times larger and gone once parsed.

    Immutable like a frozen dataclass, but a tuple: one is built per alert of a storm, and a
    frozen dataclass of these 17 fields costs 3.3 us to build, a tuple 0.4 us."""

    alert_id: str
    rule: str
    priority: Priority
    time_ns: int
    output: str
    source: str | None
    node: str | None
    tags: tuple[str, ...]
    fields: Mapping[str, FieldValue]
    container_id: str | None
    container_full_id: str | None
    container_name: str | None
    namespace: str | None
    pod: str | None
    pod_uid: str | None
    image: str | None
    raw: RawJson

    def field(self, name: str) -> FieldValue:
        return self.fields.get(name)

    def __repr__(self) -> str:  # without the JSON text, which can be large
        shown = ", ".join(f"{name}={value!r}" for name, value in
                          zip(self._fields[:-1], self[:-1], strict=True))
        return f"Alert({shown})"

    def __eq__(self, other: object) -> bool:
        # The same alert, whichever body it came in (raw is a view of that body).
        if not isinstance(other, Alert):
            return NotImplemented
        return self[:-1] == other[:-1]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:  # as __eq__ (raises TypeError: fields is a dict)
        return hash(self[:-1])


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
    if type(item) is dict:
        alert = _parse_plain(item, raw)
        if alert is not None:
            return alert
    return _parse_by_model(item, raw)


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
_NO_FIELDS: dict[str, Any] = {}
_NO_TAGS: list[str] = []
_K = TypeVar("_K")
_V = TypeVar("_V")

# Values a storm repeats, kept once: priority spellings (exact text -> level), container ids as
# sent -> normalised, tag lists, rule names, and contexts (node, container name, namespace,
# pod, pod uid, image) already checked against their column limits.
_PRIORITY_TEXT: dict[str, Priority] = {}
_CONTAINER_IDS: dict[tuple[FieldValue, FieldValue], tuple[str | None, str | None]] = {}
_TAGS: dict[tuple[str, ...], tuple[str, ...]] = {}
_RULES: dict[str, str] = {}
_CONTEXTS: dict[tuple[str | None, ...], tuple[str | None, ...]] = {}
#: Bound on each of those caches (emptied when full: hostile variety costs misses, not memory).
_CACHE_MAX = 8192


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Keep ``value`` under ``key`` in one of the caches above."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def _one_copy(cache: dict[_K, _K], value: _K) -> _K:
    """The copy of ``value`` that ``cache`` keeps (``value`` itself the first time)."""
    kept = cache.get(value)
    return _remember(cache, value, value) if kept is None else kept


def _parse_plain(item: dict[str, Any], raw: RawJson | None) -> Alert | None:
    """The shapes Falco and falcosidekick send, checked by hand: the model's own checks at a
    fifth of the cost (this runs for every alert of a storm). Anything else -> None, and the
    model decides, and explains what is wrong; tests hold both paths to the same results."""
    get = item.get
    uuid = get("uuid")
    if uuid is not None and (type(uuid) is not str or not 0 < len(uuid) <= MAX_UUID):
        return None
    rule = get("rule")
    if type(rule) is not str or not 0 < len(rule) <= MAX_RULE:
        return None
    text = get("priority")
    if type(text) is not str:
        return None
    priority = _PRIORITY_TEXT.get(text)
    if priority is None:
        try:
            priority = _remember(_PRIORITY_TEXT, text, Priority.parse(text))
        except ValueError:
            return None
    stamp = get("time")
    time_ns: int | None = None
    if stamp is not None:
        if type(stamp) is not str:
            return None
        try:
            time_ns = parse_rfc3339_ns(stamp)
        except ValueError:
            return None
    output = get("output", "")
    if type(output) is not str or len(output) > MAX_TEXT:
        return None
    source, hostname, message = get("source"), get("hostname"), get("message")
    if ((source is not None and (type(source) is not str or len(source) > MAX_LABEL))
            or (hostname is not None and (type(hostname) is not str
                                          or len(hostname) > MAX_LABEL))
            or (message is not None and (type(message) is not str or len(message) > MAX_TEXT))):
        return None
    tags = get("tags", _NO_TAGS)
    if type(tags) is not list or len(tags) > MAX_TAGS or any(type(t) is not str for t in tags):
        return None
    fields = get("output_fields", _NO_FIELDS)
    if type(fields) is not dict or len(fields) > MAX_OUTPUT_FIELDS:
        return None
    scalar = _SCALAR_TYPES
    for value in fields.values():
        if type(value) not in scalar and (
                type(value) is not list or any(type(v) not in scalar for v in value)):
            return None
    for key, value in item.items():
        if key not in _KNOWN_ALL and type(value) in (dict, list):
            return None  # extras are allowed, but nested ones need the depth check
    if raw is None:
        raw = _json_text(item)
    return _normalised(item, raw, uuid, rule, priority, time_ns, output, source, hostname,
                       tags, fields, OutputFields(raw))


def _parse_by_model(item: object, raw: RawJson | None) -> Alert:
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
    return normalise(payload, item, raw)


def normalise(payload: FalcoPayload, item: dict[str, Any], raw: RawJson | None) -> Alert:
    fields = payload.output_fields
    return _normalised(item, _json_text(item) if raw is None else raw, payload.uuid,
                       payload.rule, payload.priority, payload.time, payload.output,
                       payload.source, payload.hostname, payload.tags, fields,
                       _without_missing(fields))


def _json_text(item: dict[str, Any]) -> bytes:
    # orjson's output keeps a 16 KiB allocation whatever its length: copy what is kept.
    return memoryview(orjson.dumps(item)).tobytes()


def _normalised(item: dict[str, Any], raw: RawJson, uuid: str | None, rule: str,
                priority: Priority, time_ns: int | None, output: str, source: str | None,
                hostname: str | None, tags: list[str], sent: dict[str, FieldValue],
                fields: Mapping[str, FieldValue]) -> Alert:
    """``sent``: output_fields as decoded (``<NA>`` included, which _text reads as missing);
    ``fields``: what the alert keeps."""
    get = sent.get
    if time_ns is None:
        time_ns = _evt_time(sent)
    if time_ns is None:
        raise InvalidAlert([Problem("time", "missing, and output_fields has no evt.time")])
    short_id, full_id = _container_ids(get("container.id"), get("container.full_id"))
    node = _text(hostname) or _text(get("evt.hostname"))
    context = (node, _text(get("container.name")), _text(get("k8s.ns.name")),
               _text(get("k8s.pod.name")), _text(get("k8s.pod.uid")), _image(sent))
    # A storm repeats a few contexts: checked once each, and one copy of each kept.
    known = _CONTEXTS.get(context)
    if known is None or not _bounded(uuid, rule, short_id):
        problems = _bound_problems(uuid, rule, short_id, context)
        if problems:
            raise InvalidAlert(problems)
        known = _remember(_CONTEXTS, context, context)
    node, name, namespace, pod, pod_uid, image = known
    return Alert(
        uuid or stable_alert_id(item), _one_copy(_RULES, rule), priority, time_ns, output,
        _text(source), node, _one_copy(_TAGS, tuple(tags)), fields, short_id, full_id, name,
        namespace, pod, pod_uid, image, raw,
    )


def _bounded(uuid: str | None, rule: str, short_id: str | None) -> bool:
    """The per-alert values within their column limits (the context is checked apart)."""
    return ((uuid is None or (len(uuid) <= MAX_UUID and "\x00" not in uuid))
            and len(rule) <= MAX_RULE and "\x00" not in rule
            and (short_id is None or (len(short_id) <= MAX_CONTAINER_ID
                                      and "\x00" not in short_id)))


def _bound_problems(uuid: str | None, rule: str, short_id: str | None,
                   context: tuple[str | None, ...]) -> list[Problem]:
    """What is wrong with the values that become indexed columns (a clear refusal beats a
    database error); nothing -> []."""
    node, name, namespace, pod, pod_uid, image = context
    bounded = (("uuid", uuid, MAX_UUID), ("rule", rule, MAX_RULE), ("hostname", node, 253),
               ("output_fields['container.id']", short_id, MAX_CONTAINER_ID),
               ("output_fields['container.name']", name, 256),
               ("output_fields['k8s.ns.name']", namespace, 253),
               ("output_fields['k8s.pod.name']", pod, 253),
               ("output_fields['k8s.pod.uid']", pod_uid, 64),
               ("output_fields['container.image']", image, 1024))
    problems: list[Problem] = []
    for where, value, limit in bounded:
        if value is None:
            continue
        if "\x00" in value:
            problems.append(Problem(where, "contains a NUL character"))
        elif len(value) > limit:
            problems.append(Problem(where, f"longer than {limit} characters"))
    return problems


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


def _container_ids(short_sent: FieldValue,
                   full_sent: FieldValue) -> tuple[str | None, str | None]:
    if type(short_sent) is list or type(full_sent) is list:  # not hashable, and never an id
        return _normalised_container_ids(short_sent, full_sent)
    key = (short_sent, full_sent)
    found = _CONTAINER_IDS.get(key)
    if found is None:
        found = _remember(_CONTAINER_IDS, key, _normalised_container_ids(short_sent, full_sent))
    return found


def _normalised_container_ids(short_sent: FieldValue,
                              full_sent: FieldValue) -> tuple[str | None, str | None]:
    full = _container_text(full_sent)
    short = _container_text(short_sent)
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
    return None if text in ("", "host") else text[:MAX_CONTAINER_ID]


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
    if type(value) is str:
        return value if value and value != MISSING else None
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
