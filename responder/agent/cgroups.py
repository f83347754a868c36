"""Which container a host process belongs to, read from its ``/proc/<pid>/cgroup``.

The node agent sees every process on the host; the only trustworthy link from a process to a
container is the cgroup the runtime put it in, whose path carries the 64-hex container id. The
naming differs by runtime and cgroup driver, so this module knows them all in one place:

- systemd driver (cgroup v2, or v1 on any hierarchy): ``.../cri-containerd-<id>.scope``,
  ``.../crio-<id>.scope``, ``.../docker-<id>.scope`` (and podman's ``libpod-<id>.scope``);
  ``crio-conmon-<id>.scope`` holds CRI-O's monitor process, not the container, so it never matches;
- cgroupfs driver: ``/kubepods/<qos>/pod<uid>/<id>``, ``/docker/<id>``, ``.../crio-<id>``.

Runtimes, Falco and Kubernetes spell the id differently (12 or 64 hex characters, with or without
``containerd://``); ``id_matches`` accepts them all.
"""

from __future__ import annotations

import re

# One path component naming a container: an optional runtime prefix, exactly 64 hex characters,
# an optional ``.scope``. ``crio-conmon-`` cannot match: after ``crio-`` must come the hex id.
_COMPONENT = re.compile(
    r"^(?:cri-containerd-|crio-|docker-|libpod-)?([0-9a-f]{64})(?:\.scope)?$"
)
# A removed cgroup (the process is exiting) reads ``<path> (deleted)``.
_DELETED = " (deleted)"
_SCHEMES = ("containerd://", "cri-o://", "crio://", "docker://", "podman://")
_HEX = frozenset("0123456789abcdef")
SHORT_ID = 12
FULL_ID = 64


def container_ids_from_cgroup(text: str) -> list[str]:
    """Every container id named in a cgroup file's content, outermost first, without repeats.

    Usually one; more for nested containers (docker-in-docker inside a pod), where a process
    belongs to the inner container and, through it, to the outer one.
    """
    found: list[str] = []
    for line in text.splitlines():
        # ``hierarchy-id:controllers:path``; the path may itself contain ':' (hence maxsplit).
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].removesuffix(_DELETED)
        for component in path.split("/"):
            match = _COMPONENT.match(component)
            if match is not None and match.group(1) not in found:
                found.append(match.group(1))
    return found


def container_id_from_cgroup(text: str) -> str | None:
    """The (innermost) 64-hex container id in a ``/proc/<pid>/cgroup`` file's content, or None.

    Innermost, as Falco reports it: for a process of a nested container, its own container.
    """
    found = container_ids_from_cgroup(text)
    return found[-1] if found else None


def normalise_id(wanted: str) -> str:
    """``containerd://ABC…`` -> ``abc…``: drop a runtime scheme, lower-case, trim spaces."""
    value = wanted.strip()
    lowered = value.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            value = value[len(scheme):]
            break
    return value.strip().lower()


def is_valid_id(wanted: str) -> bool:
    """A normalised id we can search for: 12 to 64 hex characters (a short or full id)."""
    return SHORT_ID <= len(wanted) <= FULL_ID and set(wanted) <= _HEX


def id_matches(found: str, wanted: str) -> bool:
    """Whether ``found`` (a full id from a cgroup path) is the container ``wanted`` names.

    ``wanted`` may be the 12-character short id (Falco's ``container.id``), the full 64 (Falco's
    ``container.full_id``), or Kubernetes' ``containerd://<64>`` / ``cri-o://`` / ``docker://``
    form. Anything shorter than 12 hex characters matches nothing: too ambiguous to act on.
    """
    want = normalise_id(wanted)
    if not is_valid_id(want):
        return False
    return found.strip().lower().startswith(want)
