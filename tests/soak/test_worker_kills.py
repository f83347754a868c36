"""Workers killed with SIGKILL at random points of playbook runs that isolate a pod: every run
finishes, and every cluster action is applied exactly once, as counted by the fake Kubernetes
API (issue 8, Faults). 100 trials on the production backends (PostgreSQL store, Redis broker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from responder.kube.pods import QUARANTINE_LABEL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.soak.scenarios import (
    AFTER_PATCH,
    KillTrials,
    running_stack,
    stack_env,
    summarise_trials,
)
from tests.support.servers import PrivateRedis

TRIALS = int(os.environ.get("DRIFT_SOAK_KILL_TRIALS", "100"))
SEED = int(os.environ.get("DRIFT_SOAK_SEED", "8"))


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    # The broker of runs whose workers die leaves unacknowledged messages behind: on a private
    # server, not on the machine's shared one.
    with PrivateRedis(appendonly=False) as server:
        yield server


@pytest.mark.timeout(3600)
def test_every_run_finishes_and_every_cluster_action_lands_once_across_100_worker_kills(
    tmp_path: Path, postgres_url: str, broker: PrivateRedis, soak_report: dict[str, Any],
) -> None:
    env = stack_env(tmp_path, database_url=postgres_url, redis_url=broker.url)
    with FakeKubernetes(namespaces=["kube-system"]) as fake, running_stack(env, tmp_path) as stack:
        env["DRIFT_KUBE_HOST"] = fake.host
        trials = KillTrials(stack, fake, seed=SEED)
        try:
            trials.start()
            trials.run(TRIALS)
        finally:
            trials.close()
            soak_report.update(summarise_trials(trials.trials), seed=SEED)
        failed = [t for t in trials.trials if t.problems]
        assert not failed, "\n".join(f"trial {t.index} ({t.mode}, killed in "
                                     f"{t.killed_step}): {t.problems}" for t in failed)
        assert len(trials.trials) == TRIALS
        assert fake.errors == []


@pytest.mark.timeout(600)
def test_a_worker_killed_right_after_the_pod_patch_still_leaves_the_change_in_the_audit_trail(
    tmp_path: Path, postgres_url: str, broker: PrivateRedis,
) -> None:
    env = stack_env(tmp_path, database_url=postgres_url, redis_url=broker.url)
    with FakeKubernetes(namespaces=["kube-system"]) as fake, running_stack(env, tmp_path) as stack:
        env["DRIFT_KUBE_HOST"] = fake.host
        trials = KillTrials(stack, fake, seed=SEED)
        try:
            trials.start()
            trial = trials.trial(0, AFTER_PATCH)
        finally:
            trials.close()
        records = stack.records(trial.incident)
    # The action itself is still applied once, and the run finishes.
    assert (trial.killed_step, trial.status, trial.applied_patches) == (
        "isolate", "succeeded", 1)
    assert trial.problems == []
    # The killed delivery wrote the PATCH ahead, committed, before sending it...
    patches = [r for r in records if r.kind == "kubernetes.intent"
               and r.data["request"]["method"] == "PATCH"]
    [intent] = [r for r in patches if r.data["request"]["body"]["metadata"]["labels"].get(
        QUARANTINE_LABEL) == trial.incident]
    assert intent.data["step"] == "isolate"
    assert intent.data["target"]["uid"] == intent.data["before"]["uid"]
    assert QUARANTINE_LABEL not in intent.data["before"]["labels"]
    # ... and the delivery that finished found the pod isolated, found that intent unanswered,
    # and recorded the change it made: before as that request was decided on, after as found.
    assert trial.after_records == 1, "no kubernetes.after record of the pod's isolation"
    [before] = [r for r in records if r.kind == "kubernetes.before"]
    [after] = [r for r in records if r.kind == "kubernetes.after"]
    for record in (before, after):
        assert (record.data["recovered"], record.data["intent"]) == (True, intent.seq)
        assert record.seq > intent.seq
    assert before.data["state"] == intent.data["before"]
    assert after.data["state"]["labels"] == {QUARANTINE_LABEL: trial.incident}
    assert after.data["state"]["uid"] == intent.data["target"]["uid"]
    run = stack.run_of(trial.incident)
    assert run is not None
    assert run["state"]["steps"]["isolate"]["result"]["detail"]["recovered"]["intent"] == \
        intent.seq

