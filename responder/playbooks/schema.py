"""What a playbook is. ``drift-responder playbooks schema`` prints this as JSON Schema."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from responder.models.priorities import Priority

STEP_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PRIORITY_THRESHOLD = re.compile(r"^\s*(>=|<=|==|>|<)?\s*([A-Za-z]+)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TagMatch(_Strict):
    any: list[str] = Field(default_factory=list, description="At least one of these tags.")
    all: list[str] = Field(default_factory=list, description="Every one of these tags.")


class FieldCondition(_Strict):
    """A condition on one output field; exactly one operator."""

    field: str = Field(min_length=1, description="An output field, e.g. proc.exepath.")
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    regex: str | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> FieldCondition:
        given = [name for name in ("equals", "not_equals", "in_", "not_in", "regex", "exists")
                 if name in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, not_equals, in, not_in, regex, exists")
        if self.regex is not None:
            _compiles(self.regex)
        return self


class NamespaceMatch(_Strict):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class Match(_Strict):
    rules: list[str] = Field(default_factory=list, description="Exact rule names.")
    rules_regex: list[str] = Field(default_factory=list, description="Rule name regexes.")
    priority: str | None = Field(default=None, description='A threshold such as ">=Error".')
    tags: TagMatch = Field(default_factory=TagMatch)
    output_fields: list[FieldCondition] = Field(default_factory=list)
    namespaces: NamespaceMatch = Field(default_factory=NamespaceMatch)

    @field_validator("rules_regex")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compiles(pattern)
        return value

    @field_validator("priority")
    @classmethod
    def _threshold(cls, value: str | None) -> str | None:
        if value is not None:
            parse_threshold(value)
        return value


def _compiles(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:  # pydantic reports ValueError, not re.error
        raise ValueError(f"bad regex {pattern!r}: {exc}") from None


def parse_threshold(text: str) -> tuple[str, Priority]:
    match = _PRIORITY_THRESHOLD.match(text)
    if match is None:
        raise ValueError(f"priority threshold {text!r} is not like '>=Error'")
    return match.group(1) or "==", Priority.parse(match.group(2))


class Correlation(_Strict):
    key: str | None = Field(default=None, description="container, pod, or output fields a,b")
    window_seconds: float | None = Field(default=None, gt=0)


class Retries(_Strict):
    count: int = Field(default=0, ge=0, le=20)
    backoff_seconds: float = Field(default=1.0, ge=0)
    factor: float = Field(default=2.0, ge=1)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1)."""
        return self.backoff_seconds * self.factor ** (attempt - 1)


class Step(_Strict):
    id: str
    uses: str = Field(min_length=1, description="A plug-in name, e.g. core.note.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    if_: str | None = Field(default=None, alias="if", description="A sandboxed expression.")
    timeout: float | None = Field(default=None, gt=0, le=86400, description="Seconds.")
    retries: Retries = Field(default_factory=Retries)
    on_failure: str = Field(default="fail", description="fail, continue, or a later step id.")
    auto: bool = Field(default=False,
                       description="Allow a cluster-changing step without an approval before it.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError("step ids are lowercase letters, digits and _ (start with a letter)")
        return value


class Playbook(_Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    enabled: bool = True
    precedence: int = Field(default=100, description="Higher wins when playbooks overlap.")
    match: Match
    correlation: Correlation | None = None
    steps: list[Step] = Field(min_length=1)

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.id == step_id)


def json_schema() -> dict[str, Any]:
    schema = Playbook.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "drift-responder playbook"
    return schema
