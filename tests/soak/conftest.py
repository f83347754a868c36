"""Fixtures of the soak suites (`make soak`; not collected by `make test`): private Redis and
PostgreSQL servers to restart at will, and a report of each suite's figures, printed at the end
of the session (bench/SOAK.md records a full run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.servers import PrivatePostgres, PrivateRedis


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """redis-server with AOF (fsync always) on a free port; restart keeps the data."""
    with PrivateRedis(appendonly=True) as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of our own (initdb in a temp dir), trust auth on 127.0.0.1."""
    with PrivatePostgres() as server:
        yield server


_REPORT: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def soak_report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict a test fills with its figures; printed in the terminal summary, pass or fail."""
    figures: dict[str, Any] = {}
    yield figures
    if figures:
        _REPORT.append((request.node.nodeid, figures))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT:
        return
    terminalreporter.section("soak figures")
    for nodeid, figures in _REPORT:
        terminalreporter.write_line(nodeid)
        terminalreporter.write_line("    " + json.dumps(figures, sort_keys=True, default=str))
