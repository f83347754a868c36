"""The image client against a real registry (Debian's docker-registry) on 127.0.0.1.

Images are built in the test from tar members (whiteouts and an opaque directory included),
pushed through the registry's own API, and pulled back by digest: anonymously, with Basic
auth, and through a Bearer token service; from an index by platform; and from a registry
whose stored bytes were tampered with.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.images import listing
from responder.images.references import ImageReference, parse_image_id
from responder.images.registry import (
    Platform,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    credentials_from_dockerconfigjson,
    pull_image_files,
)
from tests.support.registry import (
    MTIME,
    OCI_MANIFEST,
    Member,
    PushedImage,
    Registry,
    TokenServer,
    directory,
    file,
    hardlink,
    layer_tar,
    opaque,
    registry_available,
    running_registry,
    symlink,
    whiteout,
)

pytestmark = pytest.mark.skipif(registry_available() is not None,
                                reason=f"no registry: {registry_available()}")

REPOSITORY = "team/app"
BASIC = ("alice", "correct horse")

LAYERS: list[list[Member]] = [
    [directory("etc"), file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
     file("etc/shadow", b"root:*:0::::::\n", 0o640, gid=42), directory("usr/bin"),
     file("usr/bin/busybox", b"\x7fELF" + b"\0" * 1000, 0o755),
     hardlink("usr/bin/sh", "usr/bin/busybox", 0o755), symlink("bin", "usr/bin"),
     directory("var/lib/app"), file("var/lib/app/old.db", b"old"),
     file("var/lib/app/keep/x", b"x"), directory("opt/plugins"),
     file("opt/plugins/p1.so", b"p1")],
    [whiteout("etc/shadow"), opaque("var/lib/app"), file("var/lib/app/new.db", b"new!"),
     file("opt/plugins/p2.so", b"p2")],
    [whiteout("opt/plugins"), file("etc/passwd", b"root:x:0:0::/root:/bin/ash\n"),
     directory("srv", 0o750, uid=1000, gid=1000)],
]
EXPECTED = {
    "/": "dir", "/etc": "dir", "/etc/passwd": "file", "/usr": "dir", "/usr/bin": "dir",
    "/usr/bin/busybox": "file", "/usr/bin/sh": "file", "/bin": "symlink", "/var": "dir",
    "/var/lib": "dir", "/var/lib/app": "dir", "/var/lib/app/new.db": "file", "/opt": "dir",
    "/srv": "dir",
}


def options(registry: Registry, **extra: object) -> RegistryOptions:
    return RegistryOptions(insecure_registries=frozenset({registry.host}), **extra)  # type: ignore[arg-type]


def ref(registry: Registry, digest: str, repository: str = REPOSITORY) -> ImageReference:
    return ImageReference(registry.host, repository, None, digest)


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("anonymous")) as registry:
        yield registry


@pytest.fixture(scope="module")
def image(anonymous: Registry) -> PushedImage:
    return anonymous.push_image(REPOSITORY, LAYERS, tag="v1")


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("basic"), basic=BASIC) as registry:
        yield registry


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token-service"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bearer(tmp_path_factory: pytest.TempPathFactory,
           token_service: TokenServer) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("bearer"), token=token_service) as registry:
        yield registry


def test_an_image_pulled_by_digest_flattens_its_whiteouts_and_opaque_directory(
        anonymous: Registry, image: PushedImage) -> None:
    pulled = pull_image_files(ref(anonymous, image.digest), options=options(anonymous))
    assert {path: f.type for path, f in pulled.files.items()} == EXPECTED
    passwd = pulled.files["/etc/passwd"]
    assert (passwd.size, passwd.mode, passwd.mtime) == (27, 0o644, float(MTIME))
    assert pulled.files["/usr/bin/sh"].size == 1004
    assert pulled.files["/bin"].link_target == "usr/bin"
    assert (pulled.files["/srv"].mode, pulled.files["/srv"].uid) == (0o750, 1000)
    assert pulled.manifest.digest == image.digest
    assert [layer.digest for layer in pulled.manifest.layers] == image.layer_digests
    assert pulled.bytes_downloaded == sum(layer.size for layer in pulled.manifest.layers)
    assert pulled.bytes_unpacked >= sum(len(layer_tar(m)) for m in LAYERS) - 3 * 10240


def test_a_pod_image_id_is_enough_to_pull(anonymous: Registry, image: PushedImage) -> None:
    reference = parse_image_id(f"docker-pullable://{anonymous.host}/{REPOSITORY}@"
                               f"{image.digest}")
    pulled = pull_image_files(reference, options=options(anonymous))
    assert "/var/lib/app/new.db" in pulled.files


def test_a_tag_is_pulled_and_checked_against_the_registrys_digest(
        anonymous: Registry, image: PushedImage) -> None:
    with RegistryClient(anonymous.host, options=options(anonymous)) as client:
        media_type, body, digest = client.fetch_manifest(REPOSITORY, "v1")
    assert (media_type, digest, body) == (OCI_MANIFEST, image.digest, image.manifest)


def test_plain_http_is_used_only_for_registries_listed_as_insecure(
        anonymous: Registry, image: PushedImage) -> None:
    with pytest.raises(RegistryError) as caught:
        pull_image_files(ref(anonymous, image.digest), options=RegistryOptions(retries=0))
    assert caught.value.kind == "transport"
    assert f"https://{anonymous.host}" in str(caught.value)
    pulled = pull_image_files(ref(anonymous, image.digest), plain_http=True)
    assert "/etc/passwd" in pulled.files


def test_an_unknown_manifest_and_a_registry_outside_the_allowed_list_are_errors(
        anonymous: Registry) -> None:
    with pytest.raises(RegistryError, match="manifest unknown") as caught:
        pull_image_files(ref(anonymous, "sha256:" + "0" * 64), options=options(anonymous))
    assert (caught.value.kind, caught.value.status) == ("not-found", 404)
    with pytest.raises(RegistryError, match="not in the allowed registries"):
        pull_image_files(ref(anonymous, "sha256:" + "0" * 64), options=options(
            anonymous, allowed_registries=frozenset({"registry.example.com"})))


def test_basic_auth_pulls_with_credentials_and_names_the_repository_without(
        basic: Registry) -> None:
    pushed = basic.push_image(REPOSITORY, LAYERS[:1])
    pulled = pull_image_files(ref(basic, pushed.digest), credentials=BASIC,
                              options=options(basic))
    assert "/etc/shadow" in pulled.files
    with pytest.raises(RegistryError, match=f"needs credentials to pull {REPOSITORY}") as no:
        pull_image_files(ref(basic, pushed.digest), options=options(basic))
    assert (no.value.kind, no.value.status) == ("auth", 401)
    with pytest.raises(RegistryError, match=f"refused the credentials for {REPOSITORY}") as bad:
        pull_image_files(ref(basic, pushed.digest), credentials=("alice", "wrong"),
                         options=options(basic))
    assert (bad.value.kind, bad.value.status) == ("auth", 401)


def test_pull_secret_credentials_open_the_registry(basic: Registry) -> None:
    pushed = basic.push_image("team/secret", LAYERS[:1])
    secret = json.dumps({"auths": {f"http://{basic.host}": {
        "username": BASIC[0], "password": BASIC[1]}}})
    credentials = credentials_from_dockerconfigjson(secret, basic.host)
    pulled = pull_image_files(ref(basic, pushed.digest, "team/secret"),
                              credentials=credentials, options=options(basic))
    assert "/usr/bin/busybox" in pulled.files


@pytest.mark.parametrize("field", ["token", "access_token"])
def test_the_bearer_challenge_gets_a_token_with_basic_credentials(
        bearer: Registry, token_service: TokenServer, field: str) -> None:
    pushed = bearer.push_image(REPOSITORY, LAYERS)
    token_service.field = field
    try:
        token_service.requests.clear()
        pulled = pull_image_files(ref(bearer, pushed.digest),
                                  credentials=token_service.credentials,
                                  options=options(bearer))
    finally:
        token_service.field = "token"
    assert {path: f.type for path, f in pulled.files.items()} == EXPECTED
    # One token for the repository, reused for the manifest and every layer.
    assert token_service.requests == [(True, f"repository:{REPOSITORY}:pull")]


def test_the_token_service_refusing_anonymous_access_is_an_auth_error(
        bearer: Registry) -> None:
    pushed = bearer.push_image("team/other", LAYERS[:1])
    with pytest.raises(RegistryError, match="refused anonymous access for team/other") as c:
        pull_image_files(ref(bearer, pushed.digest, "team/other"), options=options(bearer))
    assert c.value.kind == "auth"


def test_an_index_is_resolved_to_the_platform_asked_for(anonymous: Registry) -> None:
    amd64 = anonymous.push_image("team/multi", [[file("arch", b"amd64")]])
    arm64 = anonymous.push_image("team/multi", [[file("arch", b"arm64!!")]],
                                 platform=("linux", "arm64", "v8"))
    index = anonymous.push_index("team/multi", [arm64, amd64], tag="latest")
    default = pull_image_files(ref(anonymous, index, "team/multi"), options=options(anonymous))
    assert default.files["/arch"].size == 5
    assert (default.manifest.digest, default.manifest.index_digest) == (amd64.digest, index)
    assert default.reference.digest == index
    arm = pull_image_files(ref(anonymous, index, "team/multi"), options=options(
        anonymous, platform=Platform.parse("linux/arm64/v8")))
    assert arm.files["/arch"].size == 7
    assert arm.manifest.platform == Platform("linux", "arm64", "v8")
    with pytest.raises(RegistryError, match="linux/arm64/v8, linux/amd64") as caught:
        pull_image_files(ref(anonymous, index, "team/multi"), options=options(
            anonymous, platform=Platform("linux", "s390x")))
    assert caught.value.kind == "platform"


def test_docker_v2_manifests_and_uncompressed_layers_are_read(anonymous: Registry) -> None:
    docker = anonymous.push_image("team/docker", LAYERS, docker=True)
    assert pull_image_files(ref(anonymous, docker.digest, "team/docker"),
                            options=options(anonymous)).files.keys() == EXPECTED.keys()
    plain = anonymous.push_image("team/plain", LAYERS, compress=False)
    assert pull_image_files(ref(anonymous, plain.digest, "team/plain"),
                            options=options(anonymous)).files.keys() == EXPECTED.keys()


def test_a_layer_whose_stored_bytes_were_altered_fails_its_digest(
        tmp_path: Path) -> None:
    with running_registry(tmp_path / "tampered") as registry:
        pushed = registry.push_image(REPOSITORY, LAYERS)
        blob = registry.blob_path(pushed.layer_digests[1])
        data = bytearray(blob.read_bytes())
        data[-12] ^= 0xFF  # same size, other bytes
        blob.write_bytes(bytes(data))
        with pytest.raises(RegistryError, match="do not match the digest") as caught:
            pull_image_files(ref(registry, pushed.digest), options=options(registry))
        assert caught.value.kind == "digest-mismatch"
        assert pushed.layer_digests[1] in str(caught.value)

        # A manifest altered in storage: fetched by digest, it is refused too.
        manifest = registry.blob_path(pushed.digest)
        manifest.write_bytes(manifest.read_bytes().replace(b'"schemaVersion": 2',
                                                           b'"schemaVersion":  2'))
        with pytest.raises(RegistryError, match="do not match the digest") as caught:
            pull_image_files(ref(registry, pushed.digest), options=options(registry))
        assert caught.value.kind == "digest-mismatch"


def test_a_garbage_layer_is_reported_as_a_digest_mismatch_not_a_broken_tar(
        tmp_path: Path) -> None:
    with running_registry(tmp_path / "garbage") as registry:
        pushed = registry.push_image(REPOSITORY, LAYERS[:1])
        blob = registry.blob_path(pushed.layer_digests[0])
        blob.write_bytes(os.urandom(len(blob.read_bytes())))
        with pytest.raises(RegistryError) as caught:
            pull_image_files(ref(registry, pushed.digest), options=options(registry))
        assert caught.value.kind == "digest-mismatch"


def test_sizes_and_entry_counts_are_capped(anonymous: Registry, image: PushedImage) -> None:
    reference = ref(anonymous, image.digest)
    for extra, message in (({"max_download_bytes": 100}, "above the limit"),
                           ({"max_unpacked_bytes": 4096}, "unpack to more than"),
                           ({"max_entries": 5}, "more than 5 entries"),
                           ({"max_manifest_bytes": 50}, "above the limit of 50")):
        with pytest.raises(RegistryError, match=message) as caught:
            pull_image_files(reference, options=options(anonymous, **extra))
        assert caught.value.kind == "too-large"


def test_a_zstd_layer_without_zstandard_names_its_media_type(anonymous: Registry) -> None:
    if importlib.util.find_spec("zstandard") is not None:
        pytest.skip("zstandard is installed: this test is about its absence")
    zstd_type = "application/vnd.oci.image.layer.v1.tar+zstd"
    blob = b"\x28\xb5\x2f\xfd" + b"\0" * 64  # a zstd frame header: enough to be recognised
    layer_digest = anonymous.push_blob("team/zstd", blob)
    config = b"{}"
    config_digest = anonymous.push_blob("team/zstd", config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
        "size": len(config)}, "layers": [{"mediaType": zstd_type, "digest": layer_digest,
                                          "size": len(blob)}]}).encode()
    digest = anonymous.push_manifest("team/zstd", "v1", manifest, OCI_MANIFEST)
    with pytest.raises(RegistryError, match=re.escape(zstd_type) + ".*'zstandard'") as caught:
        pull_image_files(ref(anonymous, digest, "team/zstd"), options=options(anonymous))
    assert caught.value.kind == "unsupported"


def test_a_listing_of_the_running_container_diffs_against_the_pulled_image(
        anonymous: Registry, image: PushedImage) -> None:
    pulled = pull_image_files(ref(anonymous, image.digest), options=options(anonymous))
    # What an exec listing of a container started from this image shows after drift
    # (built from the image's own entries, as GNU find would print them).
    listed = {
        path: listing.ListedFile(path, f.type, f.size if f.type != "dir" else 4096, f.mode,
                                 f.uid, f.gid, f.mtime or MTIME, f.link_target, dev=64)
        for path, f in pulled.files.items()}
    listed["/tmp"] = listing.ListedFile("/tmp", "dir", 4096, 0o1777, 0, 0, MTIME + 99, dev=64)
    listed["/tmp/.x/miner"] = listing.ListedFile("/tmp/.x/miner", "file", 9000, 0o755, 0, 0,
                                                 MTIME + 99, dev=64)
    listed["/usr/bin/busybox"] = dataclasses.replace(listed["/usr/bin/busybox"],
                                                     mtime=MTIME + 5)
    del listed["/var/lib/app/new.db"]
    listed["/proc"] = listing.ListedFile("/proc", "dir", 0, 0o555, 0, 0, 0, dev=3)
    diff = listing.diff_against_image(listed, pulled.files, container_id="abc",
                                      flag_paths=["/tmp/.x/miner"])
    assert {e.path: e.kind for e in diff.changes} == {
        "/tmp/.x/miner": "A", "/tmp": "A", "/usr/bin/busybox": "C", "/usr/bin": "C",
        "/usr": "C", "/var/lib/app/new.db": "D", "/var/lib/app": "C", "/var/lib": "C",
        "/var": "C"}
    assert diff.changes[0].flagged
    assert (diff.method, diff.assurance) == ("exec", "low")
    assert diff.summary.model_dump() == {"added": 2, "changed": 6, "deleted": 1,
                                         "executables_added": 1, "bytes_hashed": 0}
