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

from responder.models.alerts import Alert, InvalidAlert, parse_alert

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

    def __init__(self, problems: list[ItemProblem], total: int) -> None:
        super().__init__(f"{total} problem(s) in the batch")
        self.problems = problems
        self.total = total


def decode_body(body: bytes, content_type: str | None, *, max_items: int) -> list[Any]:
    """Bytes -> a list of decoded JSON values (not yet validated)."""
    if not body.strip():
        raise BodyError("empty body: send one JSON alert, a JSON array, or NDJSON")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines"):
        items = _decode_ndjson(body)
    else:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # Falco's http_output and hand-made files sometimes send NDJSON as application/json.
            if body.strip().count(b"\n") >= 1:
                items = _decode_ndjson(body)
            else:
                raise BodyError(f"body is not valid JSON: {exc}") from None
        else:
            items = value if isinstance(value, list) else [value]
    if not items:
        raise BodyError("no alerts in the body")
    if len(items) > max_items:
        raise BodyError(f"{len(items)} alerts in one request; the limit is {max_items}")
    return items


def _decode_ndjson(body: bytes) -> list[Any]:
    items: list[Any] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"line {number} is not valid JSON: {exc}") from None
    return items


def validate_items(items: Sequence[Any]) -> list[Alert]:
    """Every item valid -> the alerts; otherwise :class:`BatchRejected` with every reason."""
    alerts: list[Alert] = []
    problems: list[ItemProblem] = []
    total = 0
    for index, item in enumerate(items):
        try:
            alerts.append(parse_alert(item))
        except InvalidAlert as exc:
            total += len(exc.problems)
            for problem in exc.problems:
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append(ItemProblem(index, problem.field, problem.message))
    if problems:
        raise BatchRejected(problems, total)
    return alerts


def parse_body(body: bytes, content_type: str | None, *, max_items: int) -> list[Alert]:
    return validate_items(decode_body(body, content_type, max_items=max_items))
