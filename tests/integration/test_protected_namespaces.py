"""Protected namespaces are untouched by every cluster-changing plug-in, in every mode.

tests/integration/test_kubernetes_actions.py checks isolate in kube-system (and that
allow_protected lets it through) and evict in the responder's own namespace;
tests/integration/test_kubernetes_response.py checks the CLI refuses kube-system; the Slack bot
test checks `/drift release kube-system/...`. Here EVERY cluster-changing plug-in that takes a
namespace (found from the registry, so a new one is covered the day it is added) is run against
EVERY protected namespace (the defaults and DRIFT_NAMESPACE), with dry-run on, off and unset:
it is refused before any request that writes, and the pod is left exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from responder.plugins import runtime
from responder.plugins.kubernetes import ProtectedNamespace
from responder.plugins.registry import Plugin, RecordingContext, load_all
from responder.settings import Settings
from tests.fakes.kubernetes_api import FakeKubernetes

PROTECTED = ["kube-system", "kube-public", "kube-node-lease", "drift"]
OWN = "drift"  # DRIFT_NAMESPACE below


def _namespaced_cluster_changers() -> list[Plugin]:
    return sorted((p for p in load_all() if p.changes_cluster
                   and "namespace" in p.params.model_fields), key=lambda p: p.name)


CHANGERS = _namespaced_cluster_changers()


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespaces=PROTECTED) as server:
        yield server


@pytest.fixture
def pods(fake: FakeKubernetes, tmp_path: Path) -> dict[str, dict[str, Any]]:
    runtime.install(Settings(kube_host=fake.host, kube_retries=1, namespace=OWN,
                             data_dir=tmp_path))  # type: ignore[call-arg]
    return {ns: fake.add_pod(ns, "victim-0", labels={"app": "victim"},
                             annotations={"keep": "me"}) for ns in PROTECTED}


def _params(plugin: Plugin, namespace: str, uid: str, dry_run: bool | None) -> dict[str, Any]:
    params: dict[str, Any] = {"namespace": namespace, "pod": "victim-0", "uid": uid}
    if dry_run is not None:
        params["dry_run"] = dry_run
    if "values" in plugin.params.model_fields:
        params["values"] = {"app": None, "drift-responder.io/touched": "yes"}
    return params


def test_the_registry_has_the_pod_actions_this_file_is_about() -> None:
    names = {p.name for p in CHANGERS}
    assert {"kubernetes.isolate", "kubernetes.release", "kubernetes.evict",
            "kubernetes.delete", "kubernetes.label", "kubernetes.annotate"} <= names


@pytest.mark.parametrize("dry_run", [None, True, False], ids=["default", "dry-run", "for-real"])
@pytest.mark.parametrize("namespace", PROTECTED)
@pytest.mark.parametrize("plugin", CHANGERS, ids=lambda p: p.name)
def test_a_cluster_changing_plugin_leaves_a_protected_namespace_untouched(
    fake: FakeKubernetes, pods: dict[str, dict[str, Any]], plugin: Plugin, namespace: str,
    dry_run: bool | None,
) -> None:
    before = copy.deepcopy(fake.pod(namespace, "victim-0"))
    assert before is not None
    uid = pods[namespace]["metadata"]["uid"]
    ctx = RecordingContext("run", "step", 1, {"id": "INC1"}, {})
    with pytest.raises(ProtectedNamespace, match=namespace):
        plugin.run(ctx, plugin.params.model_validate(_params(plugin, namespace, uid, dry_run)))
    assert fake.writes() == []
    assert fake.pod(namespace, "victim-0") == before
    assert fake.objects("NetworkPolicy", namespace) == []
    assert ctx.records == []  # nothing claims to have been done


@pytest.mark.parametrize("plugin", CHANGERS, ids=lambda p: p.name)
def test_the_same_plugin_does_act_outside_the_protected_namespaces(
    fake: FakeKubernetes, pods: dict[str, dict[str, Any]], plugin: Plugin,
) -> None:
    # Without this, the refusals above could come from a plug-in that never writes at all.
    fake.add_namespace("shop")
    pod = fake.add_pod("shop", "victim-0", labels={"app": "victim"},
                       annotations={"keep": "me"})
    if plugin.name == "kubernetes.release":
        isolate = next(p for p in CHANGERS if p.name == "kubernetes.isolate")
        isolate.run(RecordingContext("run", "step", 1, {"id": "INC1"}, {}),
                    isolate.params.model_validate(
                        _params(isolate, "shop", pod["metadata"]["uid"], False)))
        assert fake.writes()
    before = len(fake.writes())
    plugin.run(RecordingContext("run", "step", 1, {"id": "INC1"}, {}),
               plugin.params.model_validate(_params(plugin, "shop", pod["metadata"]["uid"],
                                                    False)))
    assert len(fake.writes()) > before
