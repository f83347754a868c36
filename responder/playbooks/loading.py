"""Loading playbooks from YAML, remembering where every value came from (file:line:column), so
that every problem is reported where the author can fix it. The loader never raises on bad input:
it returns problems."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from responder.playbooks.schema import Playbook

Path_ = tuple[str | int, ...]
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


@dataclass
class Source:
    """A parsed YAML document: its data and the position of every node in it."""

    file: str
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    built: int = 0

    def where(self, path: Path_) -> tuple[int, int]:
        """The position of the deepest known node on ``path`` (1-based line and column)."""
        for cut in range(len(path), -1, -1):
            found = self.marks.get(tuple(path[:cut]))
            if found is not None:
                return found
        return (1, 1)

    def problem(self, path: Path_, message: str) -> Problem:
        line, column = self.where(path)
        return Problem(self.file, line, column, message)


@dataclass
class Loaded:
    source: Source
    playbook: Playbook | None
    problems: list[Problem]


def parse_yaml(text: str, file: str) -> tuple[Source | None, list[Problem]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(file, line, column, f"YAML: {exc.problem or exc}")]
    except (yaml.YAMLError, RecursionError) as exc:
        return None, [Problem(file, 1, 1, f"YAML: {exc}")]
    source = Source(file, None)
    problems: list[Problem] = []
    if node is None:
        return source, [Problem(file, 1, 1, "empty document")]
    try:
        source.data = _construct(node, (), source, problems)
    except RecursionError:
        return None, [Problem(file, 1, 1, "YAML nested too deeply")]
    except _TooManyNodes:
        return None, [Problem(file, 1, 1, f"YAML expands to more than {MAX_NODES} nodes "
                                          "(aliases repeated?): refused")]
    except yaml.MarkedYAMLError as exc:  # merge keys, unknown tags, bad scalars
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(file, line, column, f"YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 1, 1, f"YAML: {exc}")]
    return source, problems


#: Nodes one document may build. Aliases make a small file expand into a huge one ("billion
#: laughs"): past this budget the file is refused instead of hanging lint and start-up.
MAX_NODES = 200_000


class _TooManyNodes(Exception):
    pass


def _construct(node: yaml.Node, path: Path_, source: Source, problems: list[Problem]) -> Any:
    source.built += 1
    if source.built > MAX_NODES:
        raise _TooManyNodes
    source.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(Problem(source.file, line, col,
                                        "YAML merge keys are not supported"))
                continue
            key = _construct(key_node, (*path, "<key>"), source, problems)
            if not isinstance(key, str | int | float | bool) or key is None:
                problems.append(source.problem((*path, "<key>"), "mapping keys must be text"))
                continue
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(Problem(source.file, line, col, f"duplicate key {key!r}"))
            out[key] = _construct(value_node, (*path, str(key)), source, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), source, problems)
                for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    try:
        return yaml.SafeLoader(  # resolve the scalar exactly as safe_load would
            "").construct_object(node, deep=True)
    except (ValueError, OverflowError, TypeError, KeyError, AttributeError) as exc:
        # 2026-13-45, !!int 0xZZ, !!bool maybe, integers of thousands of digits
        problems.append(Problem(source.file, node.start_mark.line + 1,
                                node.start_mark.column + 1,
                                f"YAML: {node.value[:60]!r} is not a valid "
                                f"{node.tag.rsplit(':', 1)[-1]} ({str(exc)[:120]})"))
        return None


def load_text(text: str, file: str) -> Loaded:
    source, problems = parse_yaml(text, file)
    if source is None or (problems and source.data is None):
        return Loaded(source or Source(file, None), None, problems)
    if not isinstance(source.data, dict):
        problems.append(source.problem((), "a playbook is a mapping with name, match, steps"))
        return Loaded(source, None, problems)
    try:
        playbook = Playbook.model_validate(source.data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(_alias(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            where = ".".join(str(p) for p in loc) or "(playbook)"
            problems.append(source.problem(loc, f"{where}: {message}"))
        return Loaded(source, None, problems)
    return Loaded(source, playbook, problems)


def _alias(part: str | int) -> str | int:
    return {"with_": "with", "if_": "if", "in_": "in"}.get(part, part) if isinstance(part, str) \
        else part


def load_file(path: Path) -> Loaded:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return Loaded(Source(file, None), None, [Problem(file, 1, 1, f"cannot read: {exc}")])
    if len(raw) > MAX_FILE_BYTES:
        return Loaded(Source(file, None), None,
                      [Problem(file, 1, 1, f"file larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Loaded(Source(file, None), None, [Problem(file, 1, 1, f"not UTF-8: {exc}")])
    return load_text(text, file)


def playbook_files(paths: Iterable[Path]) -> list[Path]:
    """YAML files among ``paths`` (directories are searched, not recursively into rehearsals)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.y*ml") if p.is_file()))
        else:
            found.append(path)
    return found
