"""Request bodies -> validated alerts, all or nothing.

A body is one JSON alert, a JSON array of alerts, or NDJSON. A batch with any bad item is refused
whole, with every reason and the index of the item it belongs to, so that nothing is half-applied
and the sender can fix and resend everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from responder.models.alerts import Alert, InvalidAlert, RawJson, parse_alert

#: Reasons stop being listed after this many; the count stays exact.
MAX_REPORTED_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class ItemProblem:
    index: int
    field: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BodyError(ValueError):
    """The body cannot be read as JSON or NDJSON at all (HTTP 400)."""


class BatchRejected(ValueError):
    """The body decoded, but some items are not valid alerts (HTTP 422)."""

    def __init__(self, problems: list[ItemProblem], total: int, received: int = 0) -> None:
        super().__init__(f"{total} problem(s) in the batch")
        self.problems = problems
        self.total = total
        self.received = received  # items in the body, valid or not


_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines")

#: An NDJSON line not decoded yet: lines are decoded one by one as they are validated, so that a
#: large batch never exists as bytes and as decoded dicts at once.
_PENDING = object()

# (decoded value or _PENDING, its JSON text when the body holds it as such, NDJSON line number)
_Item = tuple[Any, RawJson | None, int]


def decode_body(body: bytes | bytearray, content_type: str | None, *, max_items: int) -> list[Any]:
    """Bytes -> a list of decoded JSON values (not yet validated)."""
    return [_decoded(item) for item in _split(body, content_type, max_items=max_items)]


def validate_items(items: Sequence[Any]) -> list[Alert]:
    """Every item valid -> the alerts; otherwise :class:`BatchRejected` with every reason."""
    return _validate([(item, None, 0) for item in items])


def parse_body(body: bytes | bytearray, content_type: str | None, *, max_items: int) -> list[Alert]:
    """Bytes -> validated alerts, all or nothing (:class:`BodyError` or :class:`BatchRejected`).
    Alerts keep their JSON text as received; each decoded value lives only while it is
    validated, so a large batch is not held in memory twice."""
    return _validate(_split(body, content_type, max_items=max_items))


def _split(body: bytes | bytearray, content_type: str | None, *, max_items: int) -> list[_Item]:
    if not body or body.isspace():  # (strip() would copy a large body)
        raise BodyError("empty body: send one JSON alert, a JSON array, or NDJSON")
    kind = (content_type or "").split(";")[0].strip().lower()
    items: list[_Item]
    if kind in _NDJSON_TYPES:
        items = _ndjson_lines(body)
    else:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # Falco's http_output and hand-made files sometimes send NDJSON as application/json.
            if body.strip().count(b"\n") >= 1:
                items = _ndjson_lines(body)
                _decoded(items[0])  # the whole body was not JSON: is it NDJSON at all?
            else:
                raise BodyError(f"body is not valid JSON: {exc}") from None
        else:
            items = ([(v, None, 0) for v in value] if isinstance(value, list)
                     else [(value, body, 0)])
    if not items:
        raise BodyError("no alerts in the body")
    if len(items) > max_items:
        raise BodyError(f"{len(items)} alerts in one request; the limit is {max_items}")
    return items


def _ndjson_lines(body: bytes | bytearray) -> list[_Item]:
    """Views of the body's non-blank lines (a body of thousands of alerts is not copied)."""
    view = memoryview(body)
    items: list[_Item] = []
    start, size, number = 0, len(body), 0
    while start <= size:
        end = body.find(b"\n", start)
        if end < 0:
            end = size
        number += 1
        if end > start and (body[start] == 0x7B or bytes(view[start:end]).strip()):  # "{"
            items.append((_PENDING, view[start:end], number))
        start = end + 1
    return items


def _decoded(item: _Item) -> Any:
    value, raw, number = item
    if value is not _PENDING:
        return value
    assert raw is not None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"line {number} is not valid JSON: {exc}") from None


def _validate(items: list[_Item]) -> list[Alert]:
    alerts: list[Alert] = []
    problems: list[ItemProblem] = []
    total = 0
    for index in range(len(items)):
        item = items[index]
        items[index] = (None, None, 0)  # drop our reference: the alert keeps what it needs
        try:
            alerts.append(parse_alert(_decoded(item), item[1]))
        except InvalidAlert as exc:
            total += len(exc.problems)
            for problem in exc.problems:
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append(ItemProblem(index, problem.field, problem.message))
    if problems:
        raise BatchRejected(problems, total, received=len(items))
    return alerts
