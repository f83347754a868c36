"""Finding a container id in /proc/<pid>/cgroup content, for every runtime and cgroup driver."""

from __future__ import annotations

import pytest

from responder.agent.cgroups import container_id_from_cgroup, container_ids_from_cgroup, id_matches
from tests.support import fake_proc

CID = "3f9a1c0e5b7d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a"
OTHER = "0123456789abcdef" * 4
POD = "8d3f6a2e-1b4c-4d5e-9f0a-1b2c3d4e5f60"


def test_containerd_on_cgroup_v2_with_the_systemd_driver() -> None:
    text = fake_proc.containerd_v2(CID, POD)
    assert "kubepods-besteffort-pod8d3f6a2e_1b4c" in text
    assert container_id_from_cgroup(text) == CID


def test_crio_scope_names_the_container() -> None:
    assert container_id_from_cgroup(fake_proc.crio_v2(CID, POD)) == CID


def test_a_crio_conmon_scope_is_not_the_container() -> None:
    assert container_id_from_cgroup(fake_proc.crio_v2(CID, POD, conmon=True)) is None


def test_docker_under_systemd_names_the_container() -> None:
    assert container_id_from_cgroup(fake_proc.docker_systemd(CID)) == CID


def test_docker_with_cgroupfs_on_v1_names_the_container() -> None:
    assert container_id_from_cgroup(fake_proc.docker_cgroupfs_v1(CID)) == CID


def test_kubepods_with_cgroupfs_on_v1_names_the_container_on_every_hierarchy() -> None:
    text = fake_proc.kubepods_cgroupfs_v1(CID, POD, qos="burstable")
    assert text.count(CID) == 5
    assert container_ids_from_cgroup(text) == [CID]


def test_a_v1_line_on_a_single_hierarchy_is_enough() -> None:
    text = f"12:pids:/\n7:memory:/kubepods/besteffort/pod{POD}/{CID}\n1:name=systemd:/\n0::/\n"
    assert container_id_from_cgroup(text) == CID


def test_systemd_driver_scopes_on_v1_hierarchies_name_the_container() -> None:
    path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice/"
            f"cri-containerd-{CID}.scope")
    assert container_id_from_cgroup(f"4:memory:{path}\n3:cpu,cpuacct:{path}\n") == CID


def test_a_cgroup_inside_the_container_scope_still_names_the_container() -> None:
    # A container that manages its own cgroups (systemd inside) puts processes below its scope.
    text = f"0::/kubepods.slice/cri-containerd-{CID}.scope/init.scope\n"
    assert container_id_from_cgroup(text) == CID


def test_a_removed_cgroup_marked_deleted_still_names_the_container() -> None:
    assert container_id_from_cgroup(f"0::/system.slice/docker-{CID}.scope (deleted)\n") == CID


def test_a_nested_container_reports_the_innermost_and_lists_both() -> None:
    text = f"0::/kubepods.slice/cri-containerd-{OTHER}.scope/docker/{CID}\n"
    assert container_id_from_cgroup(text) == CID
    assert container_ids_from_cgroup(text) == [OTHER, CID]


@pytest.mark.parametrize("text", [
    "0::/\n",
    "0::/system.slice/kubelet.service\n",
    "4:memory:/process_api/0ec13e70ebb7c36603ede471cbe0e778\n",  # 32 hex: not a container
    f"0::/kubepods.slice/cri-containerd-{CID[:63]}.scope\n",     # one character short
    f"0::/kubepods.slice/cri-containerd-{CID}x.scope\n",
    f"0::/kubepods.slice/cri-containerd-{CID.upper()}.scope\n",  # runtimes write lower case
    f"0::/kubepods.slice/something-{CID}.scope\n",                # not a runtime we know
    "",
    "not a cgroup file at all",
])
def test_paths_without_a_container_name_none(text: str) -> None:
    assert container_id_from_cgroup(text) is None


def test_the_full_id_matches() -> None:
    assert id_matches(CID, CID)


def test_the_twelve_character_short_id_matches() -> None:
    assert id_matches(CID, CID[:12])


@pytest.mark.parametrize("scheme", ["containerd://", "cri-o://", "docker://"])
def test_kubernetes_container_ids_with_a_runtime_scheme_match(scheme: str) -> None:
    assert id_matches(CID, scheme + CID)
    assert id_matches(CID, scheme + CID[:12])


def test_upper_case_and_surrounding_spaces_in_the_wanted_id_are_tolerated() -> None:
    assert id_matches(CID, f"  {CID[:12].upper()} ")


def test_a_different_container_does_not_match() -> None:
    assert not id_matches(CID, OTHER)
    assert not id_matches(CID, OTHER[:12])


@pytest.mark.parametrize("wanted", ["", "3f9a1c0e5b7", "3f9a", "containerd://", "zzzzzzzzzzzz",
                                    CID + "0"])
def test_ids_too_short_or_not_hex_match_nothing(wanted: str) -> None:
    assert not id_matches(CID, wanted)
