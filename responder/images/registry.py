"""A small OCI Distribution (registry API v2) client: pull an image's file list by digest.

The exec fallback needs the file list of the image a container started from, and nothing
more: manifests and layer headers, never file contents on disk. This client fetches the
manifest by the pod's digest (choosing a platform from an index), streams each layer through
decompression into :mod:`responder.images.layers`, and verifies every manifest and blob
against its digest: bytes that do not match are an error, never evidence.

Registries are reached the way container runtimes reach them: anonymously, with HTTP Basic,
or through the Bearer token challenge (``WWW-Authenticate: Bearer realm=…``). Credentials come
from the pod's ``imagePullSecrets`` (:func:`credentials_from_dockerconfigjson`) or settings.
TLS is verified (optionally against a CA bundle); plain HTTP only for registries the caller
lists as insecure. Every size is bounded: manifests, compressed and uncompressed layer bytes,
file entries.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import gzip
import hashlib
import io
import json
import re
import ssl
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Literal, Protocol

import httpx

from responder.images import layers, references

ErrorKind = Literal["auth", "not-found", "digest-mismatch", "too-large", "unsupported",
                    "platform", "protocol", "transport", "refused", "layer"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

# Layer media types we can read; the compression is taken from the bytes themselves (as
# containerd does), since some registries serve uncompressed layers under gzip types.
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_ERROR_CODE_RE = re.compile(r"[A-Z_]{1,40}")
_CHALLENGE_PARAM_RE = re.compile(
    r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_MAX_ERROR_BODY = 16 << 10
_MAX_TOKEN_BODY = 1 << 20


class RegistryError(Exception):
    """A pull that failed; ``kind`` says how (``auth``, ``not-found``, ``digest-mismatch``,
    ``too-large``, ``unsupported``, ``platform``, ``protocol``, ``transport``, ``refused``,
    ``layer``) and ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, *, kind: ErrorKind, status: int | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8`` → Platform('linux', 'arm64', 'v8')."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"a platform is os/architecture[/variant], not {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class RegistryOptions:
    """How to pull; the settings layer builds one.

    ``insecure_registries`` are hosts (``127.0.0.1:5000``) reached over plain HTTP; all
    others need TLS, verified against the system roots or ``ca_bundle``.
    ``allowed_registries``, when set, refuses every other registry (image names are
    pod-controlled and the responder may sit where pods cannot reach)."""

    platform: Platform = field(default_factory=Platform)
    max_manifest_bytes: int = 4 << 20
    max_download_bytes: int = 2 << 30
    max_unpacked_bytes: int = 8 << 30
    max_entries: int = layers.DEFAULT_MAX_ENTRIES
    insecure_registries: frozenset[str] = frozenset()
    allowed_registries: frozenset[str] | None = None
    ca_bundle: str | None = None
    timeout_s: float = 30.0
    retries: int = 2
    user_agent: str = "drift-responder"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest resolved to one platform. ``digest`` is the manifest's own;
    ``index_digest`` the index it was chosen from (the digest a pod usually reports)."""

    digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    index_digest: str | None = None
    platform: Platform | None = None


@dataclass(frozen=True)
class PulledImage:
    reference: references.ImageReference
    manifest: ImageManifest
    files: dict[str, layers.ImageFile]
    bytes_downloaded: int
    bytes_unpacked: int


# --- credentials ---------------------------------------------------------------------------

def credentials_from_dockerconfigjson(data: bytes | str, registry: str, *,
                                      repository: str | None = None) -> tuple[str, str] | None:
    """Username and password for ``registry`` from a ``kubernetes.io/dockerconfigjson``
    secret's ``.dockerconfigjson`` (``{"auths": {...}}``; the legacy ``.dockercfg`` map works
    too), or ``None``.

    Keys may carry a scheme and a path (``https://index.docker.io/v1/``) or a ``*.`` wildcard
    host, as the kubelet accepts; Docker Hub's aliases match each other. A key with a
    repository path (``host/team``) matches only that repository and below when
    ``repository`` is given, and the most specific key wins. Entries give ``username`` and
    ``password`` or ``auth`` (base64 of ``user:password``). A malformed document gives
    ``None``: the pull then goes on anonymously and fails with an error naming the
    repository."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    auths = document.get("auths", document)
    if not isinstance(auths, dict):
        return None
    want = references.normalise_registry(registry)
    best: tuple[str, str] | None = None
    best_specificity = -1
    for key, entry in auths.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            continue
        host, path = _split_auth_key(key)
        if not _host_matches(host, want):
            continue
        if path and (repository is None
                     or not (repository == path or repository.startswith(path + "/"))):
            continue
        found = _entry_credentials(entry)
        if found is not None and len(path) > best_specificity:
            best, best_specificity = found, len(path)
    return best


def _split_auth_key(key: str) -> tuple[str, str]:
    rest = key.strip()
    for scheme in ("https://", "http://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme):]
            break
    host, _, path = rest.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):  # API version paths, as in https://index.docker.io/v1/
        path = ""
    return host.lower(), path


def _host_matches(pattern: str, want: str) -> bool:
    if references.normalise_registry(pattern) == want:
        return True
    if "*" not in pattern:
        return False
    # kubelet semantics: same number of labels, each matched as a glob; ports equal.
    p_host, _, p_port = pattern.partition(":")
    w_host, _, w_port = want.partition(":")
    p_labels, w_labels = p_host.split("."), w_host.split(".")
    return p_port == w_port and len(p_labels) == len(w_labels) and all(
        fnmatch.fnmatchcase(w, p) for p, w in zip(p_labels, w_labels, strict=True))


def _entry_credentials(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return username, password
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth + "=" * (-len(auth) % 4), validate=True)
            user, sep, secret = decoded.decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if sep and user:
            return user, secret
    return None


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {"realm": …, …})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[match.group(1).lower()] = value
    return scheme.lower(), params


# --- streams -------------------------------------------------------------------------------

class _Budget:
    """Byte budgets shared by every layer of one pull."""

    def __init__(self, max_download: int, max_unpacked: int) -> None:
        self.max_download = max_download
        self.max_unpacked = max_unpacked
        self.downloaded = 0
        self.unpacked = 0

    def download(self, count: int, what: str) -> None:
        self.downloaded += count
        if self.downloaded > self.max_download:
            raise RegistryError(f"{what}: the image's layers exceed the download limit of "
                                f"{self.max_download} bytes", kind="too-large")

    def unpack(self, count: int, what: str) -> None:
        self.unpacked += count
        if self.unpacked > self.max_unpacked:
            raise RegistryError(f"{what}: the image's layers unpack to more than the limit "
                                f"of {self.max_unpacked} bytes", kind="too-large")


class _VerifiedBlob(io.RawIOBase):
    """The bytes of a blob as they arrive, hashed and counted; :meth:`finish` reads the rest
    and fails unless the size and digest are the descriptor's."""

    def __init__(self, chunks: Iterator[bytes], descriptor: Descriptor, budget: _Budget,
                 what: str) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = b""
        self._descriptor = descriptor
        algorithm = descriptor.digest.split(":", 1)[0]
        self._hash = hashlib.new(algorithm)
        self._budget = budget
        self._what = what
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._pending:
            self._pending = self._next_chunk()
            if not self._pending:
                return 0
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _next_chunk(self) -> bytes:
        for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self._descriptor.size:
                raise RegistryError(f"{self._what}: the registry sent more than the "
                                    f"{self._descriptor.size} bytes the manifest declares",
                                    kind="digest-mismatch")
            self._budget.download(len(chunk), self._what)
            self._hash.update(chunk)
            return chunk
        return b""

    def finish(self) -> None:
        self._pending = b""
        while self._next_chunk():
            pass
        digest = f"{self._hash.name}:{self._hash.hexdigest()}"
        if self.size != self._descriptor.size or digest != self._descriptor.digest:
            raise RegistryError(f"{self._what}: the registry's bytes do not match the digest "
                                f"{self._descriptor.digest} (got {digest}, {self.size} bytes)",
                                kind="digest-mismatch")


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _CountedStream(io.RawIOBase):
    """A decompressed stream whose bytes count against the unpacked budget."""

    def __init__(self, inner: _Readable, budget: _Budget, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._budget = budget
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        view[:len(data)] = data
        self._budget.unpack(len(data), self._what)
        return len(data)


def _decompressed(raw: io.BufferedReader[Any], media_type: str) -> _Readable:
    magic = raw.peek(4)[:4]
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(_ZSTD_MAGIC):
        try:
            import zstandard  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise RegistryError(f"layer of media type {media_type} is zstd-compressed and the "
                                "Python package 'zstandard' is not installed",
                                kind="unsupported") from None
        stream: _Readable = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True)
        return stream
    return raw


# --- client --------------------------------------------------------------------------------

class RegistryClient:
    """One registry host; reuse it for several pulls to keep connections and tokens."""

    def __init__(self, registry: str, *, credentials: tuple[str, str] | None = None,
                 options: RegistryOptions | None = None, plain_http: bool = False,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options or RegistryOptions()
        host = references.normalise_registry(registry)
        if not references.valid_registry_host(host):
            raise RegistryError(f"not a registry host: {registry!r}", kind="refused")
        allowed = self.options.allowed_registries
        if allowed is not None and host not in {references.normalise_registry(a)
                                                for a in allowed}:
            raise RegistryError(f"registry {host} is not in the allowed registries",
                                kind="refused")
        self.registry = host
        self.plain_http = plain_http or host in {references.normalise_registry(h)
                                                 for h in self.options.insecure_registries}
        self.base_url = f"{'http' if self.plain_http else 'https'}://{host}"
        self._credentials = credentials
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._sleep = sleep
        verify: ssl.SSLContext | bool = True
        if self.options.ca_bundle:
            verify = ssl.create_default_context(cafile=self.options.ca_bundle)
        self._http = httpx.Client(
            timeout=self.options.timeout_s, follow_redirects=True, max_redirects=5,
            verify=verify, transport=transport,
            headers={"User-Agent": self.options.user_agent})

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- public -----------------------------------------------------------------------------

    def fetch_manifest(self, repository: str, reference: str) -> tuple[str, bytes, str]:
        """The raw manifest (media type, bytes, digest) for a tag or digest, verified against
        the digest when one was asked for (or the registry's Docker-Content-Digest)."""
        self._check_repository(repository)
        by_digest = references.valid_digest(reference)
        if not by_digest and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", reference):
            raise RegistryError(f"not a tag or digest: {reference!r}", kind="refused")
        what = f"manifest {reference} of {self.registry}/{repository}"
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        with self._request(url, repository, what, accept=MANIFEST_ACCEPT) as response:
            body = self._read_bounded(response, self.options.max_manifest_bytes, what)
            header_type = response.headers.get("content-type", "").split(";")[0].strip()
            header_digest = response.headers.get("docker-content-digest", "")
        algorithm = reference.split(":", 1)[0] if by_digest else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        expected = reference if by_digest else header_digest
        if expected and expected.startswith(f"{algorithm}:") and digest != expected:
            raise RegistryError(f"{what}: the registry's bytes do not match the digest "
                                f"{expected} (got {digest})", kind="digest-mismatch")
        try:
            document = json.loads(body)
        except ValueError:
            raise RegistryError(f"{what}: not JSON", kind="protocol") from None
        media_type = document.get("mediaType") if isinstance(document, dict) else None
        if not isinstance(media_type, str) or not media_type:
            media_type = header_type
            if isinstance(document, dict) and media_type not in INDEX_TYPES | MANIFEST_TYPES:
                media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
        return media_type, body, digest

    def manifest(self, repository: str, reference: str) -> ImageManifest:
        """The image manifest for a tag or digest; an index is resolved to the options'
        platform (one level of nested index is followed)."""
        index_digest: str | None = None
        chosen: Platform | None = None
        for _depth in range(3):
            media_type, body, digest = self.fetch_manifest(repository, reference)
            document = json.loads(body)
            what = f"manifest {digest} of {self.registry}/{repository}"
            if media_type in INDEX_TYPES:
                index_digest = index_digest or digest
                descriptor = self._pick_platform(document, what)
                reference, chosen = descriptor.digest, descriptor.platform
                continue
            if media_type in MANIFEST_TYPES:
                return self._image_manifest(document, media_type, digest, index_digest,
                                            chosen, what)
            raise RegistryError(f"{what}: unsupported manifest media type "
                                f"{_printable(media_type)} (schema 1 and artifacts are not "
                                "images we can read)", kind="unsupported")
        raise RegistryError(f"manifest {reference} of {self.registry}/{repository}: indexes "
                            "nested too deep", kind="unsupported")

    @contextlib.contextmanager
    def open_layer(self, repository: str, descriptor: Descriptor,
                   budget: _Budget | None = None) -> Iterator[IO[bytes]]:
        """The layer's uncompressed tar as a stream. On leaving the block the rest of the
        blob is read and its size and digest checked: a mismatch raises even when the
        stream was read to the end (and wins over any error from reading it)."""
        self._check_repository(repository)
        if not references.valid_digest(descriptor.digest):
            raise RegistryError(f"not a digest: {descriptor.digest!r}", kind="protocol")
        if descriptor.media_type not in LAYER_TYPES:
            raise RegistryError(f"layer {descriptor.digest} has unsupported media type "
                                f"{_printable(descriptor.media_type)}", kind="unsupported")
        budget = budget or _Budget(self.options.max_download_bytes,
                                   self.options.max_unpacked_bytes)
        what = f"layer {descriptor.digest} of {self.registry}/{repository}"
        url = f"{self.base_url}/v2/{repository}/blobs/{descriptor.digest}"
        with self._request(url, repository, what) as response:
            blob = _VerifiedBlob(response.iter_bytes(_CHUNK), descriptor, budget, what)
            try:
                raw = io.BufferedReader(blob, _CHUNK)
                stream = _decompressed(raw, descriptor.media_type)
                yield io.BufferedReader(_CountedStream(stream, budget, what), _CHUNK)
            except (layers.LayerError, OSError, EOFError, zlib.error, RegistryError,
                    ValueError) as exc:
                # Garbage from the registry reads as a broken layer; say what it really is.
                if not (isinstance(exc, RegistryError) and exc.kind == "too-large"):
                    blob.finish()
                raise
            blob.finish()

    def image_files(self, repository: str, reference: str) -> PulledImage:
        """Manifest, then every layer streamed and flattened in order."""
        manifest = self.manifest(repository, reference)
        total = sum(layer.size for layer in manifest.layers)
        if total > self.options.max_download_bytes:
            raise RegistryError(f"image {self.registry}/{repository}@{manifest.digest}: its "
                                f"layers are {total} bytes, above the limit of "
                                f"{self.options.max_download_bytes}", kind="too-large")
        budget = _Budget(self.options.max_download_bytes, self.options.max_unpacked_bytes)
        image = layers.FlattenedImage(max_entries=self.options.max_entries)
        for descriptor in manifest.layers:
            with self.open_layer(repository, descriptor, budget) as stream:
                try:
                    image.add_layer(layers.tar_members(stream))
                except layers.LayerError as exc:
                    kind: ErrorKind = "too-large" if isinstance(exc, layers.TooManyEntries) \
                        else "layer"
                    raise RegistryError(f"layer {descriptor.digest} of {self.registry}/"
                                        f"{repository}: {exc}", kind=kind) from None
        ref = references.ImageReference(self.registry, repository,
                                        None if references.valid_digest(reference)
                                        else reference,
                                        manifest.index_digest or manifest.digest)
        return PulledImage(ref, manifest, image.files, budget.downloaded, budget.unpacked)

    # -- internals --------------------------------------------------------------------------

    def _check_repository(self, repository: str) -> None:
        if not references.valid_repository(repository):
            raise RegistryError(f"not a repository name: {repository!r}", kind="refused")

    def _pick_platform(self, document: Any, what: str) -> Descriptor:
        entries = document.get("manifests") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise RegistryError(f"{what}: an index without manifests", kind="protocol")
        want = self.options.platform
        candidates: list[Descriptor] = []
        seen: list[str] = []
        for entry in entries:
            descriptor = _descriptor(entry, what)
            platform = descriptor.platform
            if platform is None:
                continue
            seen.append(_printable(str(platform)))
            if platform.os != want.os or platform.architecture != want.architecture:
                continue
            if want.variant and platform.variant != want.variant and not (
                    platform.variant is None and (want.architecture, want.variant)
                    == ("arm64", "v8")):
                continue
            candidates.append(descriptor)
        if not candidates:
            raise RegistryError(f"{what}: no manifest for platform {want} (the index has: "
                                f"{', '.join(seen[:20]) or 'none'})", kind="platform")
        # Without a wanted variant, the entry without one (or the first) is the default.
        candidates.sort(key=lambda d: d.platform is not None and d.platform.variant is not None)
        return candidates[0]

    def _image_manifest(self, document: Any, media_type: str, digest: str,
                        index_digest: str | None, platform: Platform | None,
                        what: str) -> ImageManifest:
        if not isinstance(document, dict) or document.get("schemaVersion") != 2:
            raise RegistryError(f"{what}: not a schema 2 image manifest", kind="unsupported")
        config = _descriptor(document.get("config"), what)
        raw_layers = document.get("layers")
        if not isinstance(raw_layers, list):
            raise RegistryError(f"{what}: a manifest without layers", kind="protocol")
        found = tuple(_descriptor(entry, what) for entry in raw_layers)
        for layer in found:
            if layer.media_type not in LAYER_TYPES:
                raise RegistryError(f"{what}: layer {layer.digest} has unsupported media type "
                                    f"{_printable(layer.media_type)}", kind="unsupported")
        return ImageManifest(digest, media_type, config, found, index_digest, platform)

    @contextlib.contextmanager
    def _request(self, url: str, repository: str, what: str,
                 accept: str | None = None) -> Iterator[httpx.Response]:
        """GET with authentication (Basic or the Bearer challenge) and a few retries of
        429/5xx; yields a streaming 200 response, or raises a RegistryError."""
        scope = f"repository:{repository}:pull"
        attempts = 0
        authenticated = False
        while True:
            attempts += 1
            headers = {"Accept": accept} if accept else {}
            authorization = self._authorization(scope)
            if authorization:
                headers["Authorization"] = authorization
            try:
                request = self._http.build_request("GET", url, headers=headers)
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise RegistryError(f"{what}: cannot reach {self.base_url}: {exc}",
                                    kind="transport") from None
            try:
                status = response.status_code
                if status == 200:
                    yield response
                    return
                if status == 401 and not authenticated:
                    challenge = response.headers.get("www-authenticate", "")
                    self._read_bounded(response, _MAX_ERROR_BODY, what, quiet=True)
                    authenticated = self._answer_challenge(challenge, scope, repository, what)
                    if authenticated:
                        continue
                if status in _RETRY_STATUSES and attempts <= self.options.retries:
                    self._sleep(min(0.5 * 2 ** (attempts - 1), 2.0))
                    continue
                raise self._status_error(response, repository, what)
            finally:
                response.close()

    def _authorization(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._basic and self._credentials:
            user, password = self._credentials
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return None

    def _answer_challenge(self, challenge: str, scope: str, repository: str,
                          what: str) -> bool:
        scheme, params = parse_www_authenticate(challenge)
        if scheme == "basic" or (not scheme and self._credentials is not None):
            if self._credentials is None:
                raise RegistryError(f"{what}: registry {self.registry} needs credentials to "
                                    f"pull {repository} (HTTP Basic) and none were given",
                                    kind="auth", status=401)
            self._basic = True
            return True
        if scheme == "bearer":
            self._tokens[scope] = self._fetch_token(params, scope, repository, what)
            return True
        raise RegistryError(f"{what}: registry {self.registry} answered 401 with an "
                            f"unsupported challenge {_printable(scheme)!r}", kind="auth",
                            status=401)

    def _fetch_token(self, params: Mapping[str, str], scope: str, repository: str,
                     what: str) -> str:
        realm = params.get("realm", "")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = httpx.URL("")
        allowed = ("https", "http") if self.plain_http else ("https",)
        if url.scheme not in allowed or not url.host:
            raise RegistryError(f"{what}: the token realm {_printable(realm)!r} is not an "
                                f"{' or '.join(allowed)} URL", kind="auth", status=401)
        query: dict[str, str] = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth = httpx.BasicAuth(*self._credentials) if self._credentials else None
        try:
            with self._http.stream("GET", url, params=query, auth=auth) as response:
                body = self._read_bounded(response, _MAX_TOKEN_BODY, what)
                status = response.status_code
        except httpx.HTTPError as exc:
            raise RegistryError(f"{what}: cannot reach the token service {url.host}: {exc}",
                                kind="transport") from None
        if status in (401, 403):
            raise RegistryError(f"{what}: the token service refused "
                                f"{'the credentials' if self._credentials else 'anonymous access'}"
                                f" for {repository} ({status})", kind="auth", status=status)
        if status != 200:
            raise RegistryError(f"{what}: the token service answered {status}",
                                kind="auth", status=status)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = (document.get("token") or document.get("access_token")
                 if isinstance(document, dict) else None)
        if not isinstance(token, str) or not token or not token.isascii() \
                or any(c in token for c in "\r\n"):
            raise RegistryError(f"{what}: the token service sent no token", kind="auth",
                                status=status)
        return token

    def _status_error(self, response: httpx.Response, repository: str,
                      what: str) -> RegistryError:
        status = response.status_code
        code = ""
        body = self._read_bounded(response, _MAX_ERROR_BODY, what, quiet=True)
        try:
            errors = json.loads(body).get("errors")
            first = errors[0].get("code") if isinstance(errors, list) and errors else None
            if isinstance(first, str) and _ERROR_CODE_RE.fullmatch(first):
                code = f" ({first})"
        except (ValueError, AttributeError):
            pass
        if status == 401:
            return RegistryError(f"{what}: registry {self.registry} refused the credentials "
                                 f"for {repository} (401){code}", kind="auth", status=401)
        if status == 403:
            return RegistryError(f"{what}: registry {self.registry} denies pulling "
                                 f"{repository} (403){code}", kind="auth", status=403)
        if status == 404:
            unknown = "manifest unknown" if "/manifests/" in str(response.url) \
                else "blob unknown"
            return RegistryError(f"{what}: {unknown} (404){code}", kind="not-found",
                                 status=404)
        return RegistryError(f"{what}: registry {self.registry} answered {status}{code}",
                             kind="protocol", status=status)

    @staticmethod
    def _read_bounded(response: httpx.Response, limit: int, what: str, *,
                      quiet: bool = False) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit and not quiet:
            raise RegistryError(f"{what}: {declared} bytes, above the limit of {limit}",
                                kind="too-large")
        body = bytearray()
        try:
            for chunk in response.iter_bytes(_CHUNK):
                body += chunk
                if len(body) > limit:
                    if quiet:
                        return bytes(body[:limit])
                    raise RegistryError(f"{what}: more than the limit of {limit} bytes",
                                        kind="too-large")
        except httpx.HTTPError as exc:
            if quiet:
                return bytes(body)
            raise RegistryError(f"{what}: the transfer broke off: {exc}",
                                kind="transport") from None
        return bytes(body)


def _descriptor(entry: Any, what: str) -> Descriptor:
    if not isinstance(entry, dict):
        raise RegistryError(f"{what}: a descriptor that is not an object", kind="protocol")
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) \
            or not references.valid_digest(digest) or not isinstance(size, int) \
            or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: a descriptor without a valid mediaType, digest and size",
                            kind="protocol")
    platform: Platform | None = None
    raw = entry.get("platform")
    if isinstance(raw, dict) and isinstance(raw.get("os"), str) \
            and isinstance(raw.get("architecture"), str):
        variant = raw.get("variant")
        platform = Platform(raw["os"], raw["architecture"],
                            variant if isinstance(variant, str) and variant else None)
    return Descriptor(media_type, digest, size, platform)


def _printable(text: str, limit: int = 120) -> str:
    """Registry-sent text in our messages: printable ASCII only, bounded."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("…" if len(text) > limit else "")


def pull_image_files(reference: references.ImageReference, *,
                     credentials: tuple[str, str] | None = None,
                     options: RegistryOptions | None = None, plain_http: bool = False,
                     transport: httpx.BaseTransport | None = None) -> PulledImage:
    """The flattened file list of the image ``reference`` names (by digest when it has one),
    for the options' platform."""
    with RegistryClient(reference.registry, credentials=credentials, options=options,
                        plain_http=plain_http, transport=transport) as client:
        return client.image_files(reference.repository, reference.reference)
