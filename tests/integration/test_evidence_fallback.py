"""The evidence fallback end to end: no node agent serves the node, so a worker execs into the
container (through the Kubernetes API) with the fixed listing commands, pulls the image the pod
runs from a real OCI registry by digest, and reports what changed — as low-assurance evidence.

The container is a real one on this machine with a busybox in its image (as in an Alpine image);
the fake Kubernetes API answers exec by running the command inside it. On the embedded backends
in `make test`, on PostgreSQL + Redis under `make soak`."""

from __future__ import annotations

import os
import shutil
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from responder.agent import throwaway
from tests.fakes.kubernetes_api import ExecCall, ExecResult, FakeKubernetes
from tests.support import registry as oci
from tests.support.samples import drift_alert
from tests.support.stack import Stack
from tests.support.variants import production_in_soak

BUSYBOX = shutil.which("busybox")
pytestmark = [
    pytest.mark.skipif(throwaway.unavailable_reason() is not None,
                       reason=f"needs a real container: {throwaway.unavailable_reason()}"),
    pytest.mark.skipif(oci.registry_available() is not None,
                       reason=f"needs docker-registry: {oci.registry_available()}"),
    pytest.mark.skipif(BUSYBOX is None, reason="needs a static busybox (busybox-static)"),
]

NODE = "node-without-agent"
NAMESPACE, POD = "shop", "web-0"
PLAYBOOK = """
name: evidence
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: tree
    uses: evidence.process_tree
    with:
      container_id: "{{ alert.container_full_id }}"
      node: "{{ incident.node }}"
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      flag_vpid: "{{ alert.fields['proc.vpid'] | default(none) }}"
  - id: diff
    uses: evidence.filesystem_diff
    with:
      container_id: "{{ alert.container_full_id }}"
      node: "{{ incident.node }}"
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      flag_paths: ["{{ alert.fields['proc.exepath'] | default(none) }}"]
"""


def _members(layer: Path) -> list[oci.Member]:
    """A layer tar's members from a directory, as an image build would write them."""
    members: list[oci.Member] = []
    for root, dirs, files in os.walk(layer):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = Path(root, name)
            info = path.lstat()
            relative = str(path.relative_to(layer))
            common = {"mode": stat.S_IMODE(info.st_mode), "uid": info.st_uid,
                      "gid": info.st_gid, "mtime": int(info.st_mtime)}
            if stat.S_ISLNK(info.st_mode):
                members.append(oci.Member(relative, "symlink", mode=0o777,
                                          linkname=os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                members.append(oci.Member(relative, "dir", **common))
            else:
                members.append(oci.Member(relative, "file", path.read_bytes(), **common))
    return members


@pytest.fixture(scope="module")
def container() -> Iterator[throwaway.ThrowawayContainer]:
    assert BUSYBOX is not None
    with throwaway.ThrowawayContainer(busybox=Path(BUSYBOX)) as built:
        yield built


@pytest.fixture(scope="module")
def pushed(container: throwaway.ThrowawayContainer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[oci.Registry, str]]:
    with oci.running_registry(tmp_path_factory.mktemp("registry")) as registry:
        layers = [_members(d) for d in reversed(container.lowerdirs)]  # lowest first
        image = registry.push_image("shop/web", layers, tag="1.0")
        yield registry, f"{registry.host}/shop/web@{image.digest}"


@pytest.fixture
def kube(container: throwaway.ThrowawayContainer,
         pushed: tuple[oci.Registry, str]) -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes(token="evidence-token").start()
    fake.add_namespace(NAMESPACE)
    pod = fake.add_pod(NAMESPACE, POD, node=NODE, container_ids=[container.id],
                       image=f"{pushed[0].host}/shop/web:1.0")
    # The kubelet reports the digest it pulled; the fallback must compare with exactly that.
    statuses = pod["status"]["containerStatuses"]
    statuses[0]["imageID"] = pushed[1]
    kubernetes.client.CoreV1Api(fake.api_client()).patch_namespaced_pod_status(
        POD, NAMESPACE, {"status": {"containerStatuses": statuses}})

    def run_inside(call: ExecCall) -> ExecResult | None:
        if call.pod != POD:
            return None
        done = container.exec(list(call.command), check=False, timeout=60)
        return ExecResult(done.stdout, done.stderr, done.returncode)

    fake.exec_handler(run_inside)
    yield fake
    fake.stop()


def _result(run: dict[str, Any], step: str) -> dict[str, Any]:
    state = run["state"]["steps"][step]
    assert state["status"] == "succeeded", state
    return dict(state["result"])


@production_in_soak("stack_env")
def test_without_an_agent_the_fallback_execs_in_and_compares_with_the_image_by_digest(
        stack: Stack, container: throwaway.ThrowawayContainer, kube: FakeKubernetes,
        pushed: tuple[oci.Registry, str]) -> None:
    dropped = f"/tmp/fallback-{os.getpid()}-{stack.env['DRIFT_QUEUE'][-4:]}"
    pid = container.drop_and_execute(dropped)
    vpid = int(next(line.split()[-1] for line in Path(f"/proc/{pid}/status").read_text()
                    .splitlines() if line.startswith("NSpid:")))
    stack.env.update({"DRIFT_KUBE_HOST": kube.host, "DRIFT_KUBE_TOKEN": "evidence-token",
                      "DRIFT_REGISTRY_INSECURE": pushed[0].host})
    Path(stack.env["DRIFT_PLAYBOOKS_DIR"], "evidence.yaml").write_text(
        textwrap.dedent(PLAYBOOK))
    stack.start("worker", "--pool", "solo", name="worker")
    stack.ingest()
    alert = drift_alert(7, node=NODE)
    fields = alert["output_fields"]
    fields.update({"container.id": container.id[:12], "container.full_id": container.id,
                   "k8s.ns.name": NAMESPACE, "k8s.pod.name": POD, "proc.pid": pid,
                   "proc.vpid": vpid, "proc.exepath": dropped})
    incident = stack.post(alert)
    run = stack.wait_run(incident, "succeeded", timeout=90)

    tree = _result(run, "tree")
    assert (tree["method"], tree["assurance"]) == ("exec", "low")
    assert [(p["ns_pid"], p["exe"]) for p in tree["flagged"]] == [(vpid, dropped)]
    assert tree["processes_total"] == len(container.pids())

    diff = _result(run, "diff")
    assert (diff["method"], diff["assurance"]) == ("exec", "low")
    flagged = [e for e in diff["notable"] if e["flagged"]]
    assert [(e["kind"], e["path"]) for e in flagged] == [("A", dropped)]
    assert flagged[0]["sha256"] is None  # an exec listing carries no content hashes
    assert diff["summary"]["added"] >= 1
    # Exactly the fixed argv ran: busybox has no `find -printf`, so its variants followed.
    commands = {c.command[0] for c in kube.exec_calls}
    assert commands <= {"find", "sh"}
    kinds = stack.audit_kinds(incident)
    assert kinds.count("evidence.collected") == 2
