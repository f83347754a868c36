"""A real OCI registry for tests, and a pusher that builds images from tar members in the test.

The image client must be tested against a registry that behaves like the ones in the field,
not a double shaped after our own reading of the spec: Debian's ``docker-registry``
(distribution 2.8) runs on 127.0.0.1 with its storage in a temp dir, anonymous, with htpasswd
Basic auth, or with Bearer token auth served by :class:`TokenServer` (tokens signed with the
``openssl`` CLI). The pusher speaks the registry API itself (blob upload POST/PUT with digest,
manifest PUT, index PUT), independently of ``responder.images.registry``.

Needs: ``apt-get install -y docker-registry apache2-utils openssl`` (``htpasswd -B`` writes the
bcrypt hashes the registry insists on).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

import httpx

REGISTRY_BINARY = "/usr/bin/docker-registry"
INSTALL_HINT = "apt-get install -y docker-registry apache2-utils openssl"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MTIME = 1_700_000_000


def registry_available() -> str | None:
    """None when the registry can run here, else why not."""
    if not os.access(REGISTRY_BINARY, os.X_OK):
        return f"{REGISTRY_BINARY} is missing ({INSTALL_HINT})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- image contents ------------------------------------------------------------------------

MemberType = Literal["file", "dir", "symlink", "hardlink", "fifo", "char"]


@dataclass(frozen=True)
class Member:
    """One tar member of a layer as the test writes it."""

    name: str
    type: MemberType = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    linkname: str = ""


def file(name: str, data: bytes = b"", mode: int = 0o644, *, uid: int = 0, gid: int = 0,
         mtime: int = MTIME) -> Member:
    return Member(name, "file", data, mode, uid, gid, mtime)


def directory(name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0,
              mtime: int = MTIME) -> Member:
    return Member(name, "dir", b"", mode, uid, gid, mtime)


def symlink(name: str, target: str) -> Member:
    return Member(name, "symlink", mode=0o777, linkname=target)


def hardlink(name: str, target: str, mode: int = 0o644) -> Member:
    return Member(name, "hardlink", mode=mode, linkname=target)


def whiteout(path: str) -> Member:
    """Deletes ``path`` of the lower layers: an empty ``<dir>/.wh.<name>``."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return Member(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(directory_path: str) -> Member:
    """Makes ``directory_path`` opaque: ``<dir>/.wh..wh..opq``."""
    return Member(f"{directory_path.rstrip('/')}/.wh..wh..opq")


_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE}


def layer_tar(members: Sequence[Member]) -> bytes:
    """An uncompressed tar of the members, in order (PAX, deterministic)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = _TAR_TYPES[member.type]
            info.mode, info.uid, info.gid, info.mtime = (member.mode, member.uid, member.gid,
                                                         member.mtime)
            info.linkname = member.linkname
            if member.type == "file":
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class PushedImage:
    repository: str
    digest: str
    manifest: bytes
    media_type: str
    config_digest: str
    layer_digests: list[str] = field(default_factory=list)
    platform: tuple[str, str, str | None] = ("linux", "amd64", None)


# --- auth for the pusher -------------------------------------------------------------------

class ChallengeAuth(httpx.Auth):
    """Basic, or the Bearer challenge with Basic credentials at the realm: written here again
    (not imported from the code under test) so that the pusher checks it independently."""

    def __init__(self, username: str, password: str) -> None:
        self.basic = httpx.BasicAuth(username, password)
        self.token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                             None]:
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("www-authenticate", "")
        if challenge.lower().startswith("basic"):
            yield next(self.basic.auth_flow(request))
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        token_response = httpx.get(params["realm"], params={
            "service": params.get("service", ""), "scope": params.get("scope", "")},
            auth=self.basic)
        token_response.raise_for_status()
        self.token = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


# --- the registry --------------------------------------------------------------------------

class Registry:
    """A running ``docker-registry`` on 127.0.0.1."""

    def __init__(self, root: Path, *, basic: tuple[str, str] | None = None,
                 token: TokenServer | None = None) -> None:
        reason = registry_available()
        if reason:
            raise RuntimeError(reason)
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.basic = basic
        self.token = token
        config = root / "config.yml"
        config.write_text(self._config(), encoding="utf-8")
        self.log_path = root / "registry.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        credentials = basic or (token.credentials if token else None)
        self.client = httpx.Client(base_url=self.url, timeout=10,
                                   auth=ChallengeAuth(*credentials) if credentials else None)

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {uuid.uuid4().hex}",
        ]
        if self.basic:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(_bcrypt_line(*self.basic), encoding="utf-8")
            lines += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {htpasswd}"]
        elif self.token:
            lines += ["auth:", "  token:", f"    realm: {self.token.url}/token",
                      f"    service: {self.token.service}", f"    issuer: {self.token.issuer}",
                      f"    rootcertbundle: {self.token.cert_path}"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    # -- pushing ----------------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        started = self.client.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(self.url).join(started.headers["location"])
        done = self.client.put(location.copy_merge_params({"digest": digest}), content=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes,
                      media_type: str) -> str:
        response = self.client.put(f"/v2/{repository}/manifests/{reference}", content=body,
                                   headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        return digest_of(body)

    def push_image(self, repository: str, layers: Sequence[Sequence[Member]], *,
                   tag: str | None = None, docker: bool = False, compress: bool = True,
                   platform: tuple[str, str, str | None] = ("linux", "amd64", None),
                   ) -> PushedImage:
        """Build an image from layers of tar members (lowest first) and push it."""
        descriptors: list[dict[str, object]] = []
        diff_ids: list[str] = []
        layer_type = DOCKER_LAYER if docker else (OCI_LAYER_GZIP if compress else OCI_LAYER)
        for members in layers:
            tar = layer_tar(members)
            blob = gzip_bytes(tar) if compress or docker else tar
            diff_ids.append(digest_of(tar))
            descriptors.append({"mediaType": layer_type, "digest": self.push_blob(repository,
                                                                                 blob),
                                "size": len(blob)})
        os_name, arch, variant = platform
        config: dict[str, object] = {
            "architecture": arch, "os": os_name, "rootfs": {"type": "layers",
                                                            "diff_ids": diff_ids},
            "config": {}}
        if variant:
            config["variant"] = variant
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = self.push_blob(repository, config_bytes)
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                       "digest": config_digest, "size": len(config_bytes)},
            "layers": descriptors}, indent=2).encode()
        digest = self.push_manifest(repository, tag or digest_of(manifest), manifest,
                                    media_type)
        return PushedImage(repository, digest, manifest, media_type, config_digest,
                           [str(d["digest"]) for d in descriptors], platform)

    def push_index(self, repository: str, images: Sequence[PushedImage], *,
                   tag: str | None = None) -> str:
        entries = []
        for image in images:
            os_name, arch, variant = image.platform
            platform = {"os": os_name, "architecture": arch}
            if variant:
                platform["variant"] = variant
            entries.append({"mediaType": image.media_type, "digest": image.digest,
                            "size": len(image.manifest), "platform": platform})
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": entries}).encode()
        return self.push_manifest(repository, tag or digest_of(body), body, OCI_INDEX)

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (to tamper with it in a test)."""
        hex_digest = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
                / "data")


def _bcrypt_line(user: str, password: str) -> str:
    """An htpasswd line with a bcrypt hash (the only kind the registry reads)."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RuntimeError(f"htpasswd is missing ({INSTALL_HINT})")
    result = subprocess.run([htpasswd, "-Bbn", user, password], capture_output=True,
                            check=True, text=True)
    return result.stdout.strip() + "\n"


# --- Bearer tokens -------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token service for the registry's ``auth: token``: checks Basic credentials and
    issues RS256 JWTs (signed by the ``openssl`` CLI with a self-signed certificate, sent in
    ``x5c``) granting the scope asked for. ``field`` is the JSON key the token comes in."""

    def __init__(self, root: Path, credentials: tuple[str, str] = ("robot", "t0ken-pass"),
                 *, field: str = "token") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.credentials = credentials
        self.field = field
        self.service = "drift-test-registry"
        self.issuer = "drift-test-issuer"
        self.key_path = root / "token.key"
        self.cert_path = root / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(self.key_path), "-out", str(self.cert_path), "-days", "1", "-subj",
                        "/CN=drift-test-token"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert_path), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self._x5c = base64.b64encode(der).decode()
        self.requests: list[tuple[bool, str]] = []  # (authorised, scope)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                scope = (query.get("scope") or [""])[0]
                expected = "Basic " + base64.b64encode(
                    ":".join(server.credentials).encode()).decode()
                authorised = self.headers.get("Authorization") == expected
                server.requests.append((authorised, scope))
                if not authorised:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({server.field: server.issue(scope)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def issue(self, scope: str) -> str:
        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": self.credentials[0], "aud": self.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key_path)],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_registry(root: Path, *, basic: tuple[str, str] | None = None,
                     token: TokenServer | None = None) -> Iterator[Registry]:
    registry = Registry(root, basic=basic, token=token)
    try:
        yield registry
    finally:
        registry.stop()
