"""Image references, pod imageIDs, pull-secret credentials and auth challenges, read as data;
and the registry client's HTTP rules (redirects, retries, realms) against an in-process
transport (the real registry is in tests/integration/test_image_registry.py)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from responder.images.references import (
    ImageReference,
    ImageReferenceError,
    parse_image_id,
    parse_reference,
    pod_image_reference,
)
from responder.images.registry import (
    Platform,
    RegistryClient,
    RegistryError,
    credentials_from_dockerconfigjson,
    parse_www_authenticate,
    pull_image_files,
)
from tests.support.registry import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    digest_of,
    file,
    gzip_bytes,
    layer_tar,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("nginx", "registry-1.docker.io", "library/nginx", None, None),
    ("nginx:1.25", "registry-1.docker.io", "library/nginx", "1.25", None),
    (f"docker.io/library/nginx@{DIGEST}", "registry-1.docker.io", "library/nginx", None,
     DIGEST),
    ("docker.io/nginx", "registry-1.docker.io", "library/nginx", None, None),
    ("index.docker.io/bitnami/redis:7", "registry-1.docker.io", "bitnami/redis", "7", None),
    ("bitnami/redis", "registry-1.docker.io", "bitnami/redis", None, None),
    (f"registry:5000/ns/app@{DIGEST}", "registry:5000", "ns/app", None, DIGEST),
    (f"quay.io/team/sub/app:v1.2@{DIGEST}", "quay.io", "team/sub/app", "v1.2", DIGEST),
    ("localhost/app:dev", "localhost", "app", "dev", None),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None),
    ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None),
    ("Registry.Example.COM/app", "registry.example.com", "app", None, None),
    (f"docker-pullable://nginx@{DIGEST}", "registry-1.docker.io", "library/nginx", None,
     DIGEST),
])
def test_references_split_into_registry_repository_tag_and_digest(
        text: str, registry: str, repository: str, tag: str | None,
        digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag,
                                                                  digest)


def test_the_digest_is_what_is_pulled_when_there_is_one() -> None:
    assert parse_reference(f"app:v1@{DIGEST}").reference == DIGEST
    assert parse_reference("app:v1").reference == "v1"
    assert parse_reference("app").reference == "latest"
    assert str(parse_reference(f"app:v1@{DIGEST}")) == \
        f"registry-1.docker.io/library/app:v1@{DIGEST}"


@pytest.mark.parametrize("text", [
    "", "UPPER/case", "app@sha256:short", "app@md5:" + "a" * 32, "evil.com/../etc",
    "evil.com/app/", "app:bad tag", "host name.com/app", "app:" + "t" * 200,
    "ex$ample.com/app", "app?x=1", "a" * 2000, "evil.com/app#frag", "/app",
])
def test_references_outside_the_grammar_are_refused(text: str) -> None:
    with pytest.raises(ImageReferenceError):
        parse_reference(text)


def test_an_image_id_names_the_repository_and_digest_that_ran() -> None:
    ref = parse_image_id(f"docker.io/library/nginx@{DIGEST}")
    assert ref == ImageReference("registry-1.docker.io", "library/nginx", None, DIGEST)
    assert parse_image_id(f"docker-pullable://registry:5000/ns/app@{DIGEST}").registry == \
        "registry:5000"


def test_a_bare_image_id_is_a_local_config_id_and_cannot_be_pulled() -> None:
    with pytest.raises(ImageReferenceError, match="local image id"):
        parse_image_id(DIGEST)
    with pytest.raises(ImageReferenceError, match="no digest"):
        parse_image_id("docker.io/library/nginx:1.25")


def test_the_pod_reference_prefers_the_image_id_then_borrows_its_digest() -> None:
    assert pod_image_reference("nginx:1.25", f"docker.io/library/nginx@{DIGEST}").digest == \
        DIGEST
    # containerd's imageID without a repository part: the spec image's repository with the
    # digest the runtime reports.
    borrowed = pod_image_reference("registry:5000/ns/app:v1", f"docker-pullable://@{OTHER}")
    assert (borrowed.registry, borrowed.repository, borrowed.digest) == (
        "registry:5000", "ns/app", OTHER)
    assert pod_image_reference(f"app@{DIGEST}", DIGEST).digest == DIGEST


def test_a_pod_with_no_digest_anywhere_is_refused_unless_tags_are_allowed() -> None:
    with pytest.raises(ImageReferenceError, match="no digest"):
        pod_image_reference("nginx:1.25", DIGEST)
    assert pod_image_reference("nginx:1.25", None, allow_tag=True).tag == "1.25"


def _config(auths: dict[str, dict[str, str]]) -> str:
    return json.dumps({"auths": auths})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_pull_secret_credentials_come_from_auth_or_username_and_password() -> None:
    data = _config({"registry.example.com": {"auth": _b64("bob:pa:ss")},
                    "https://quay.io": {"username": "q", "password": "p"}})
    assert credentials_from_dockerconfigjson(data, "registry.example.com") == ("bob", "pa:ss")
    assert credentials_from_dockerconfigjson(data.encode(), "quay.io") == ("q", "p")
    assert credentials_from_dockerconfigjson(data, "other.io") is None


def test_docker_hub_credentials_match_under_any_of_its_names() -> None:
    data = _config({"https://index.docker.io/v1/": {"auth": _b64("hub:secret")}})
    for name in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert credentials_from_dockerconfigjson(data, name) == ("hub", "secret")


def test_pull_secret_keys_match_ports_wildcards_and_repository_paths() -> None:
    data = _config({
        "http://127.0.0.1:5000": {"auth": _b64("local:1")},
        "*.example.com": {"auth": _b64("wild:2")},
        "registry.example.com/team": {"auth": _b64("team:3")},
    })
    assert credentials_from_dockerconfigjson(data, "127.0.0.1:5000") == ("local", "1")
    assert credentials_from_dockerconfigjson(data, "127.0.0.1:5001") is None
    assert credentials_from_dockerconfigjson(data, "registry.example.com") == ("wild", "2")
    assert credentials_from_dockerconfigjson(data, "a.b.example.com") is None
    assert credentials_from_dockerconfigjson(
        data, "registry.example.com", repository="team/app") == ("team", "3")
    assert credentials_from_dockerconfigjson(
        data, "registry.example.com", repository="teamx/app") == ("wild", "2")


@pytest.mark.parametrize("data", [
    b"\xff\xfe", "not json", "[]", json.dumps({"auths": []}),
    _config({"r.io": {"auth": "!!!not base64"}}), _config({"r.io": {"auth": _b64("nocolon")}}),
    _config({"r.io": {"identitytoken": "tok"}}),
])
def test_malformed_pull_secrets_give_no_credentials(data: bytes | str) -> None:
    assert credentials_from_dockerconfigjson(data, "r.io") is None


def test_legacy_dockercfg_maps_work_too() -> None:
    data = json.dumps({"r.io": {"auth": _b64("old:style")}})
    assert credentials_from_dockerconfigjson(data, "r.io") == ("old", "style")


def test_a_bearer_challenge_is_read_with_quoted_commas() -> None:
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push",error="invalid_token"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example.com/token",
                      "service": "registry.example.com",
                      "scope": "repository:team/app:pull,push", "error": "invalid_token"}
    assert parse_www_authenticate('Basic realm="Registry Realm"') == (
        "basic", {"realm": "Registry Realm"})


def test_platforms_parse_from_their_usual_notation() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"
    with pytest.raises(ValueError, match="os/architecture"):
        Platform.parse("amd64")


# --- the client's HTTP rules, against an in-process transport ------------------------------

def _image() -> tuple[bytes, bytes, str, str]:
    layer = gzip_bytes(layer_tar([file("etc/os-release", b"ID=test\n")]))
    layer_digest = digest_of(layer)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(b"{}"),
        "size": 2}, "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest,
                                "size": len(layer)}]}).encode()
    return manifest, layer, digest_of(manifest), layer_digest


def test_blob_redirects_to_storage_do_not_carry_the_registry_credentials() -> None:
    manifest, layer, digest, layer_digest = _image()
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("authorization")))
        if request.url.host == "storage.example.net":
            return httpx.Response(200, content=layer)
        if request.headers.get("authorization") is None:
            return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=manifest,
                                  headers={"content-type": OCI_MANIFEST})
        return httpx.Response(307, headers={
            "location": f"https://storage.example.net/blob/{layer_digest}?sig=1"})

    pulled = pull_image_files(ImageReference("registry.example.com", "app", None, digest),
                              credentials=("u", "p"), transport=httpx.MockTransport(handler))
    assert "/etc/os-release" in pulled.files
    assert ("storage.example.net", None) in seen
    assert all(auth is None for host, auth in seen if host == "storage.example.net")


def test_busy_registries_are_retried_a_few_times() -> None:
    manifest, layer, digest, _ = _image()
    answers = [503, 429]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            return httpx.Response(answers.pop(0))
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=manifest, headers={"content-type": OCI_MANIFEST})
        return httpx.Response(200, content=layer)

    sleeps: list[float] = []
    with RegistryClient("registry.example.com", transport=httpx.MockTransport(handler),
                        sleep=sleeps.append) as client:
        assert "/etc/os-release" in client.image_files("app", digest).files
    assert sleeps == [0.5, 1.0]


def test_a_token_realm_must_be_https_for_a_tls_registry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={
            "www-authenticate": 'Bearer realm="http://evil.example.net/token",service="s"'})

    with pytest.raises(RegistryError, match="not an https URL") as caught:
        pull_image_files(ImageReference("registry.example.com", "app", None, DIGEST),
                         credentials=("u", "p"), transport=httpx.MockTransport(handler))
    assert caught.value.kind == "auth"


def test_a_manifest_with_a_layer_type_we_cannot_read_is_unsupported() -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "digest": OTHER, "size": 10}]}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=manifest, headers={"content-type": OCI_MANIFEST})

    with pytest.raises(RegistryError, match=r"helm\.chart") as caught:
        pull_image_files(ImageReference("registry.example.com", "app", "v1"),
                         transport=httpx.MockTransport(handler))
    assert caught.value.kind == "unsupported"
