"""Image references and pod ``imageID``s, parsed into where to pull from.

Pods name their image in ``spec.containers[].image`` (``nginx:1.25``, often a tag that may have
moved since) and the runtime reports what it actually ran in
``status.containerStatuses[].imageID`` (``docker.io/library/nginx@sha256:…``, with Docker
``docker-pullable://…``). We pull by that digest, so that the file list is the one of the image
the container started from. The grammar follows the distribution reference rules: the first
component is a registry only when it contains ``.`` or ``:`` or is ``localhost``; otherwise the
image is on Docker Hub, whose single names live under ``library/``.

Image names are pod- (and so attacker-) controlled: everything is validated against the
grammar before it becomes part of a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io",
                                "registry.hub.docker.com"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                      r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_RUNTIME_PREFIXES = ("docker-pullable://", "docker://", "containerd://", "cri-o://")
MAX_REFERENCE_LENGTH = 1024


class ImageReferenceError(ValueError):
    """An image reference that does not follow the grammar, or cannot be pulled by digest."""


@dataclass(frozen=True)
class ImageReference:
    """Where an image is: ``registry`` is the API host (``registry-1.docker.io`` for Docker
    Hub), ``repository`` the path (``library/nginx``), and a tag and/or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when known, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or "latest"

    @property
    def is_docker_hub(self) -> bool:
        return self.registry in DOCKER_HUB_ALIASES

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def valid_registry_host(host: str) -> bool:
    """``host[:port]`` (or ``[ipv6]:port``) and nothing else: safe to put in a URL."""
    return isinstance(host, str) and bool(_HOST_RE.fullmatch(host))


def valid_repository(repository: str) -> bool:
    return isinstance(repository, str) and bool(_REPOSITORY_RE.fullmatch(repository))


def valid_digest(digest: str) -> bool:
    return isinstance(digest, str) and bool(_DIGEST_RE.fullmatch(digest))


def normalise_registry(host: str) -> str:
    """The API host for a registry name: Docker Hub's aliases become ``registry-1.docker.io``;
    other names are lower-cased (host names are case-insensitive)."""
    lowered = host.lower()
    if lowered in DOCKER_HUB_ALIASES:
        return DOCKER_HUB_API
    return lowered


def parse_reference(text: str) -> ImageReference:
    """Parse ``[registry/]repository[:tag][@digest]`` (also with a runtime prefix such as
    ``docker-pullable://``). Raises :class:`ImageReferenceError` when it does not follow the
    grammar."""
    if not isinstance(text, str) or not text or len(text) > MAX_REFERENCE_LENGTH:
        raise ImageReferenceError("an image reference must be a non-empty string of at most "
                             f"{MAX_REFERENCE_LENGTH} characters")
    rest = text.strip()
    for prefix in _RUNTIME_PREFIXES:
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
            break
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise ImageReferenceError(f"not a valid digest in image reference {text!r}")
    registry = DOCKER_HUB
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST_RE.fullmatch(first):
            raise ImageReferenceError(f"not a valid registry host in image reference {text!r}")
        registry = first
        rest = remainder
    tag: str | None = None
    # A ':' after the last '/' separates the tag (a registry port was taken above).
    name, colon, maybe_tag = rest.rpartition(":")
    if colon and "/" not in maybe_tag:
        if not _TAG_RE.fullmatch(maybe_tag):
            raise ImageReferenceError(f"not a valid tag in image reference {text!r}")
        rest, tag = name, maybe_tag
    if not _REPOSITORY_RE.fullmatch(rest):
        raise ImageReferenceError(f"not a valid repository name in image reference {text!r}")
    api_host = normalise_registry(registry)
    if api_host == DOCKER_HUB_API and "/" not in rest:
        rest = f"library/{rest}"
    return ImageReference(registry=api_host, repository=rest, tag=tag, digest=digest)


def parse_image_id(image_id: str) -> ImageReference:
    """Parse a pod's ``imageID`` into a reference that names a manifest digest.

    Raises :class:`ImageReferenceError` when it names no repository (a bare ``sha256:…`` is the
    local image *config* id, as with images loaded into the node without a registry) or no
    digest."""
    stripped = image_id.strip() if isinstance(image_id, str) else ""
    for prefix in _RUNTIME_PREFIXES:
        if stripped.startswith(prefix):
            stripped = stripped[len(prefix):]
            break
    if _DIGEST_RE.fullmatch(stripped):
        raise ImageReferenceError(f"imageID {image_id!r} is a local image id without a repository: "
                             "the image cannot be pulled from a registry by it")
    ref = parse_reference(stripped)
    if ref.digest is None:
        raise ImageReferenceError(f"imageID {image_id!r} has no digest")
    return ref


def pod_image_reference(image: str, image_id: str | None, *,
                        allow_tag: bool = False) -> ImageReference:
    """The reference to pull for a container: ``imageID``'s repository and digest when it has
    both; else the spec ``image`` with the digest ``imageID`` reports; else the spec image's
    own digest. With none of these, only ``allow_tag`` lets a tag through (the tag may point
    at another image than the one that ran: lower still than low assurance)."""
    if image_id:
        try:
            return parse_image_id(image_id)
        except ImageReferenceError:
            pass
    spec = parse_reference(image)
    if image_id:
        bare = image_id.strip()
        for prefix in _RUNTIME_PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        # "sha256:…" alone is the config id, not a manifest digest: it cannot be used.
        if "@" in bare:
            digest = bare.rsplit("@", 1)[1]
            if _DIGEST_RE.fullmatch(digest):
                return ImageReference(spec.registry, spec.repository, spec.tag, digest)
    if spec.digest or allow_tag:
        return spec
    raise ImageReferenceError(f"no digest for image {image!r} (imageID {image_id!r}): the image "
                         "the container runs cannot be identified in a registry")
