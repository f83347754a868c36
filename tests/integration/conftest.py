"""Fixtures for tests that run whole stacks of drift-responder processes, and for tests that run
cluster plug-ins in-process against the fake Kubernetes API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.plugins import runtime
from responder.settings import Settings
from tests.conftest import REDIS_URL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.support.processes import base_env
from tests.support.stack import Stack


@pytest.fixture(params=["embedded", "production"])
def stack_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {
        "DRIFT_DATA_DIR": str(tmp_path / "data"), "DRIFT_PLAYBOOKS_DIR": str(tmp_path / "pb"),
        "DRIFT_INGEST_TOKEN": "stack-token", "DRIFT_PLUGIN_MODULES": "tests.support.plugins",
        "DRIFT_QUEUE": f"test-{uuid.uuid4().hex[:8]}", "DRIFT_LEASE_GRACE_SECONDS": "1",
    }
    if request.param == "production":
        values["DRIFT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        values["DRIFT_REDIS_URL"] = REDIS_URL
        values["DRIFT_REDIS_PREFIX"] = request.getfixturevalue("redis_prefix")
    (tmp_path / "pb").mkdir()
    return base_env(values)


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    built = Stack(stack_env, tmp_path)
    yield built
    # Even on the shared servers: the next test that uses them waits for these processes to
    # exit first (tests/conftest.py, settle_shared_servers).
    built.stop(background=True)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    """The fake Kubernetes API: the tests' pods go in ``shop``; ``kube-system`` is there to be
    protected."""
    with FakeKubernetes(namespaces=["shop", "kube-system"]) as server:
        yield server


@pytest.fixture
def settings(fake: FakeKubernetes, tmp_path: Path) -> Settings:
    """Settings pointing the plug-ins at ``fake``, installed as the plug-ins' runtime."""
    built = Settings(kube_host=fake.host, kube_retries=3, data_dir=tmp_path)
    runtime.install(built)
    return built
