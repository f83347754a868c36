"""Which variants of a test run in `make test`, and which only under `make soak`.

`make test` must stay within its budget, so a slow end-to-end scenario (a stack of real
processes) that runs on both backend sets keeps its embedded variant there and runs on
PostgreSQL + Redis under `make soak` (which sets DRIFT_TEST_SOAK=1), when what differs between
the backends is covered on both of them in `make test` anyway: the store, correlation, intake,
executor and Slack replay-guard contract tests, and the production stacks that stay in it
(tests/integration/test_kubernetes_response.py, test_faults_smoke.py, test_http_intake.py).

Such a variant is marked `soak`: per test with ``production_in_soak``, or for a whole module on
its fixture's param (``pytest.param("production", marks=pytest.mark.soak)``). tests/conftest.py
deselects what is marked `soak` unless DRIFT_TEST_SOAK is set. Property tests draw a third of
their examples in `make test` (``fuzz_examples``) and all of them under `make soak`.
"""

from __future__ import annotations

import os

import pytest

#: Set by `make soak`: the variants marked `soak` are collected too.
SOAK_ENV = "DRIFT_TEST_SOAK"


def soak_run() -> bool:
    return bool(os.environ.get(SOAK_ENV))


def production_in_soak(fixture: str) -> pytest.MarkDecorator:
    """Parametrise ``fixture`` (a fixture taking "embedded" or "production" as its param)
    with both, the "production" variant marked `soak`: the test keeps its ids
    (``test_x[embedded]``, ``test_x[production]``), and the second runs under `make soak`."""
    return pytest.mark.parametrize(
        fixture, ["embedded", pytest.param("production", marks=pytest.mark.soak)],
        indirect=True)


#: `make test` draws 1/N of a property test's examples; `make soak` draws them all.
FUZZ_SHARE_IN_MAKE_TEST = 3


def fuzz_examples(full: int) -> int:
    """A property test's max_examples: ``full`` under `make soak`, a third of it (at least 10)
    in `make test`. Every property still runs in `make test`, on fewer examples; the full
    count runs under `make soak`, which also selects the property tests (`-m hypothesis`)."""
    if soak_run():
        return full
    return max(10, full // FUZZ_SHARE_IN_MAKE_TEST)
