"""The deployment files, checked without a Docker engine or a cluster.

The compose file is validated against the compose specification's schema and by Docker Compose
itself (``docker-compose config``, which resolves every reference the way ``up`` does); the Helm
chart is rendered by Helm and every manifest validated against the Kubernetes schemas; then the
properties we promise are checked on what was rendered: least-privilege RBAC equal to
``drift-responder rbac``, a read-only node agent, non-root pods, the NetworkPolicy, secrets only
referenced, and commands the real CLI accepts. Tests that need ``helm`` or ``docker-compose`` skip
when the tool is missing (``python -m tests.support.manifests install-tools`` installs both).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from tests.support import manifests
from tests.support.manifests import REPO, by_kind, named, pod_spec, workloads

RELEASE = "drift-responder"
NAMESPACE = "drift-responder"
FULLNAME = "drift-responder"
AGENT = f"{FULLNAME}-agent"

#: Values that switch every optional part on (for schema validation and lint).
EVERYTHING: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry"}],
    "artifacts": {"existingClaim": "drift-artifacts"},
    "consume": {"enabled": True},
    "secrets": {"keys": {"registryCredentials": "DRIFT_REGISTRY_CREDENTIALS"}},
    "config": {"DRIFT_CORRELATION_KEY": "pod", "DRIFT_DRY_RUN": True},
    "agent": {"priorityClassName": "system-node-critical", "nodeSelector": {"os": "linux"}},
    "worker": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security",
                                "effect": "NoSchedule"}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {
        "metrics": {"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]},
        "bot": {"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}]},
        "extraEgress": [{"ports": [{"protocol": "TCP", "port": 5000}],
                         "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}],
    },
}
VALUE_SETS = {"defaults": None, "everything": EVERYTHING}
#: Custom resources the chart may render; kubernetes-validate has only the built-in schemas.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


# -- tools and renders ---------------------------------------------------------------------------

def _need(name: str) -> Path:
    path = manifests.tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (python -m tests.support.manifests install-tools)")
    return path


@cache
def _render(key: str, kube_version: str | None = None) -> tuple[dict[str, Any], ...]:
    values = VALUE_SETS.get(key)
    return tuple(manifests.helm_template(values, release=RELEASE, namespace=NAMESPACE,
                                         kube_version=kube_version))


def render(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    _need("helm")
    if values is None:
        return list(_render("defaults"))
    return manifests.helm_template(values, release=RELEASE, namespace=NAMESPACE)


@pytest.fixture
def chart() -> list[dict[str, Any]]:
    return render()


def containers(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def drift_services() -> dict[str, Mapping[str, Any]]:
    """The compose services that run the drift-responder image."""
    return {name: svc for name, svc in compose()["services"].items()
            if "build" in svc or str(svc.get("image", "")).startswith("${RESPONDER_IMAGE")}


@cache
def setting_names() -> frozenset[str]:
    from responder.settings import Settings

    names = set()
    for name, field in Settings.model_fields.items():
        names.add(field.alias if field.alias else f"DRIFT_{name.upper()}")
    return frozenset(names)


@cache
def rbac_rules(*args: str) -> dict[str, Any]:
    from responder.cli import main

    result = CliRunner().invoke(main, ["rbac", "--playbooks", str(REPO / "playbooks"), *args])
    assert result.exit_code == 0, result.output
    role: dict[str, Any] = yaml.safe_load(result.stdout)
    return role


# -- compose -------------------------------------------------------------------------------------

def test_the_vendored_compose_schema_is_the_one_docker_compose_embeds() -> None:
    digest = hashlib.sha256(manifests.COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest == manifests.COMPOSE_SCHEMA_SHA256
    assert manifests.compose_schema()["$id"] == "compose_spec.json"


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(manifests.compose_schema())
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(compose())]
    assert problems == []


def test_docker_compose_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    _need("docker-compose")
    done = manifests.compose_config(tmp_path, "--profile", "falcosidekick", "config", "--quiet")
    assert done.returncode == 0, done.stderr
    services = manifests.compose_config(tmp_path, "--profile", "falcosidekick", "config",
                                        "--services")
    assert set(services.stdout.split()) == {"redis", "postgres", "migrate", "ingest", "worker",
                                            "beat", "bot", "agent", "falcosidekick"}


def test_docker_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    _need("docker-compose")
    env = "\n".join(line for line in manifests.ENV_EXAMPLE.read_text().splitlines()
                    if not line.startswith("POSTGRES_PASSWORD="))
    done = manifests.compose_config(tmp_path, "config", "--quiet", env_text=env)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def test_every_compose_reference_names_something_defined() -> None:
    spec = compose()
    services = spec["services"]
    volumes = set(spec.get("volumes") or {})
    secrets = set(spec.get("secrets") or {})
    networks = set(spec.get("networks") or {}) | {"default"}
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith(("/", ".")):
                assert source in volumes, f"{name} mounts unknown volume {source}"
            elif source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
        for secret in svc.get("secrets") or []:
            ref = secret if isinstance(secret, str) else secret["source"]
            assert ref in secrets, f"{name} uses unknown secret {ref}"
        for net in svc.get("networks") or []:
            assert net in networks, f"{name} joins unknown network {net}"
        for env_file in svc.get("env_file") or []:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            # .env is the user's copy of .env.example, which must ship.
            assert path == ".env" or (REPO / path).is_file(), f"{name}: env_file {path}"
            assert manifests.ENV_EXAMPLE.is_file()


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    for name, svc in compose()["services"].items():
        if svc.get("restart") == "no":  # the one-shot migration
            assert name == "migrate"
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), name
        assert not check.get("disable"), name


def test_the_services_wait_for_the_migration_and_their_backends() -> None:
    for name, svc in drift_services().items():
        if name == "migrate":
            assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert svc["command"] == ["db", "upgrade"]
            continue
        deps = svc["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert svc["environment"]["DRIFT_AUTO_MIGRATE"] == "false", name


def test_every_compose_service_but_the_agent_runs_as_a_non_root_user() -> None:
    for name, svc in compose()["services"].items():
        user = str(svc.get("user", ""))
        if name == "agent":
            assert user == "0:10001"  # root for the host's files, the artifacts' group
            continue
        assert user, f"{name} sets no user"
        assert user.split(":", maxsplit=1)[0] not in {"0", "root"}, name
        assert not svc.get("privileged"), name


def test_the_compose_agent_reads_the_host_read_only() -> None:
    agent = compose()["services"]["agent"]
    assert agent["pid"] == "host"
    assert not agent.get("privileged")
    assert agent["read_only"] is True
    assert agent["cap_drop"] == ["ALL"]
    assert set(agent["cap_add"]) == {"SYS_PTRACE", "DAC_READ_SEARCH"}
    binds = [m for m in agent["volumes"] if m.startswith("/")]
    assert {m.split(":")[0] for m in binds} >= {"/proc", "/var/lib/containerd",
                                               "/var/lib/containers"}
    for mount in binds:
        source, target, mode = mount.split(":")
        assert mode == "ro", mount
        assert target == f"/host{source}", mount
        assert "sock" not in source, mount
    command = agent["command"]
    assert command[0] == "agent"
    assert command[command.index("--proc-root") + 1] == "/host/proc"
    assert command[command.index("--host-root") + 1] == "/host"


def test_compose_redis_keeps_an_append_only_file() -> None:
    redis = compose()["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(m.endswith(":/data") for m in redis["volumes"])


def test_every_variable_the_compose_file_interpolates_is_in_the_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used - set(manifests.env_example()) == set()


def test_the_falcosidekick_service_posts_to_the_ingest_with_a_bearer_token() -> None:
    sidekick = compose()["services"]["falcosidekick"]
    assert sidekick["profiles"] == ["falcosidekick"]
    assert sidekick["environment"]["WEBHOOK_CUSTOMHEADERS"].startswith(
        "Authorization:Bearer ${DRIFT_INGEST_TOKEN")
    config = yaml.safe_load((REPO / "deploy/falcosidekick/config.yaml").read_text())
    url = urlsplit(config["webhook"]["address"])
    ingest = compose()["services"]["ingest"]["command"]
    assert url.hostname == "ingest"
    assert str(url.port) == ingest[ingest.index("--port") + 1]
    assert url.path == "/v1/falco"


@pytest.mark.parametrize("service", sorted(drift_services()))
def test_the_compose_commands_parse_with_the_real_cli(service: str) -> None:
    command = drift_services()[service]["command"]
    if command[0] == "agent" and not manifests.cli_has("agent"):
        pytest.skip("drift-responder agent is not in this tree yet")
    assert manifests.cli_rejects(command) is None


# -- the image -----------------------------------------------------------------------------------

def test_the_image_is_built_in_stages_and_runs_unprivileged() -> None:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(stages) >= 2
    final = lines[lines.index(stages[-1]):]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert 'ENTRYPOINT ["drift-responder"]' in final
    assert any(ln.startswith("COPY --from=") for ln in final)
    copied = [ln.split()[-1] for ln in final if ln.startswith("COPY playbooks ")]
    assert copied
    assert f"DRIFT_PLAYBOOKS_DIR={copied[0]}" in " ".join(final)


def test_the_docker_context_leaves_secrets_and_local_state_out() -> None:
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", ".drift"} <= ignored


def test_the_env_example_leaves_no_optional_setting_set_to_empty() -> None:
    from responder.settings import Settings

    fields = {(f.alias or f"DRIFT_{n.upper()}"): f for n, f in Settings.model_fields.items()}
    for key, value in manifests.env_example().items():
        if key in fields and value == "":
            # An empty value is a value: SLACK_APP_TOKEN="" would mean Socket Mode.
            assert fields[key].default is not None, key


def test_every_drift_setting_named_in_the_deployment_files_exists() -> None:
    names = {k for k in manifests.env_example() if k.startswith(("DRIFT_", "SLACK_"))}
    for svc in compose()["services"].values():
        names |= {k for k in (svc.get("environment") or {}) if k.startswith("DRIFT_")}
    values = yaml.safe_load((manifests.CHART / "values.yaml").read_text())
    names |= set(values["config"])
    names |= set(EVERYTHING["config"])
    assert names - setting_names() == set()


# -- the Helm chart ------------------------------------------------------------------------------

@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_chart_lints_cleanly(values: str) -> None:
    _need("helm")
    done = manifests.helm_lint(VALUE_SETS[values])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout, done.stdout
    assert "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("kube_version", manifests.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_manifest_validates_against_the_kubernetes_schema(values: str,
                                                                kube_version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _need("helm")
    docs = _render(values, kube_version)
    assert docs
    seen = set()
    for doc in docs:
        seen.add(doc["kind"])
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, where
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} against {kube_version}: {path}: {exc.message}")
    assert {"Deployment", "DaemonSet", "Job", "Service", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "NetworkPolicy", "ConfigMap"} <= seen


def test_the_chart_rbac_is_exactly_what_drift_responder_rbac_prints(
        chart: list[dict[str, Any]]) -> None:
    role = named(chart, "ClusterRole", FULLNAME)
    expected = rbac_rules()
    assert expected["kind"] == "ClusterRole"
    assert role["rules"] == expected["rules"], (
        "deploy/helm/drift-responder/values.yaml rbac.rules must equal the rules of "
        "`drift-responder rbac`; paste them from its output")
    binding = named(chart, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME,
                                    "namespace": NAMESPACE}]


def test_a_namespaced_install_grants_the_same_rules_as_a_role_per_namespace() -> None:
    docs = render({"rbac": {"namespaces": ["shop", "payments"]}})
    assert by_kind(docs, "ClusterRole") == []
    assert by_kind(docs, "ClusterRoleBinding") == []
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["payments", "shop"]
    expected = rbac_rules("--namespace", "shop")
    assert expected["kind"] == "Role"
    for role in roles:
        assert role["rules"] == expected["rules"]
    assert len(by_kind(docs, "RoleBinding")) == 2


def test_only_the_worker_and_the_bot_get_a_kubernetes_token(chart: list[dict[str, Any]]) -> None:
    tokens = {}
    for doc in workloads(chart):
        spec = pod_spec(doc)
        tokens[doc["metadata"]["name"]] = (spec.get("automountServiceAccountToken"),
                                           spec.get("serviceAccountName"))
    for name, (automount, account) in tokens.items():
        if name in {f"{FULLNAME}-worker", f"{FULLNAME}-bot"}:
            assert automount is True, name
            assert account == FULLNAME, name
        else:
            assert automount is False, name
    for binding in [*by_kind(chart, "ClusterRoleBinding"), *by_kind(chart, "RoleBinding")]:
        assert {s["name"] for s in binding["subjects"]} == {FULLNAME}


def test_the_agent_daemonset_reads_the_host_read_only_on_every_node(
        chart: list[dict[str, Any]]) -> None:
    agent = named(chart, "DaemonSet", AGENT)
    spec = pod_spec(agent)
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork")
    assert not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["fsGroup"] == 10001  # writes evidence the others read
    assert {"operator": "Exists"} in spec["tolerations"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"],
                                        "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    targets = {}
    for name, path in host_paths.items():
        assert mounts[name]["readOnly"] is True, name
        assert "sock" not in path, path
        assert not path.startswith("/run"), path
        targets[path] = mounts[name]["mountPath"]
    assert targets == {"/proc": "/host/proc",
                       "/var/lib/containerd": "/host/var/lib/containerd",
                       "/var/lib/containers": "/host/var/lib/containers"}
    node = env_of(container)["NODE_NAME"]
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    args = container["args"]
    assert args[:3] == ["agent", "--node", "$(NODE_NAME)"]
    assert args[args.index("--proc-root") + 1] == "/host/proc"
    assert args[args.index("--host-root") + 1] == "/host"
    assert "SLACK_BOT_TOKEN" not in env_of(container)


def test_every_pod_but_the_agent_runs_as_non_root_with_a_read_only_root() -> None:
    _need("helm")
    for doc in workloads(_render("everything")):
        if doc["metadata"]["name"] == AGENT:
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert not spec.get("hostPID")
        assert not spec.get("hostNetwork")
        assert not any("hostPath" in v for v in spec.get("volumes", []))
        for container in containers(doc):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}


def test_the_beat_runs_exactly_once() -> None:
    docs = render({"beat": {"replicas": 3}})
    beat = named(docs, "Deployment", f"{FULLNAME}-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_the_network_policy_admits_alerts_only_from_falcos_namespace(
        chart: list[dict[str, Any]]) -> None:
    base = named(chart, "NetworkPolicy", FULLNAME)
    assert base["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert base["spec"]["ingress"] == []
    assert "app.kubernetes.io/component" not in base["spec"]["podSelector"]["matchLabels"]
    ingest = named(chart, "NetworkPolicy", f"{FULLNAME}-ingest")
    assert ingest["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ingest"
    (rule,) = ingest["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "falco"}}}]
    bot = named(chart, "NetworkPolicy", f"{FULLNAME}-bot")
    (rule,) = bot["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 3000}]
    other = render({"networkPolicy": {"ingest": {"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "security"}}}]}}})
    (rule,) = named(other, "NetworkPolicy", f"{FULLNAME}-ingest")["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "security"}


def test_the_network_policy_lets_the_responder_reach_dns_redis_postgres_the_api_and_slack(
        chart: list[dict[str, Any]]) -> None:
    egress = named(chart, "NetworkPolicy", FULLNAME)["spec"]["egress"]
    ports = {(p["protocol"], p["port"]) for rule in egress for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 5432), ("TCP", 443),
                     ("TCP", 6443)}
    dns = next(rule for rule in egress if {"protocol": "UDP", "port": 53} in rule["ports"])
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    https = [rule for rule in egress if rule["ports"] == [{"protocol": "TCP", "port": 443}]]
    assert https
    assert https[0]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


def test_secrets_are_referenced_never_rendered(chart: list[dict[str, Any]]) -> None:
    assert by_kind(chart, "Secret") == []
    config = named(chart, "ConfigMap", FULLNAME)["data"]
    assert not any(k in config for k in ("DRIFT_INGEST_TOKEN", "DRIFT_DATABASE_URL",
                                         "DRIFT_REDIS_URL", "SLACK_BOT_TOKEN"))
    needs = {
        "ingest": {"DRIFT_INGEST_TOKEN", "DRIFT_DATABASE_URL", "DRIFT_REDIS_URL"},
        "worker": {"DRIFT_DATABASE_URL", "DRIFT_REDIS_URL", "SLACK_BOT_TOKEN"},
        "beat": {"DRIFT_DATABASE_URL", "DRIFT_REDIS_URL"},
        "bot": {"DRIFT_DATABASE_URL", "DRIFT_REDIS_URL", "SLACK_BOT_TOKEN",
                "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"},
        "agent": {"DRIFT_DATABASE_URL", "DRIFT_REDIS_URL"},
        "migrate": {"DRIFT_DATABASE_URL"},
    }
    for doc in workloads(chart):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = pod_spec(doc)["containers"]
        refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env_of(container).items()
                if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(refs) == needs[component], component
        for name, ref in refs.items():
            assert ref["name"] == "drift-responder"
            assert ref["key"] == name
            assert ref.get("optional", False) is name.startswith("SLACK_")
        assert not any("value" in e and "TOKEN" in n for n, e in env_of(container).items())
    assert config["DRIFT_NAMESPACE"] == NAMESPACE


@pytest.mark.parametrize("component", ["migrate", "ingest", "worker", "beat", "bot", "agent",
                                       "consume"])
def test_every_container_command_parses_with_the_real_cli(component: str) -> None:
    _need("helm")
    docs = [d for d in workloads(_render("everything"))
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(docs) == 1
    (container,) = pod_spec(docs[0])["containers"]
    if component == "agent" and not manifests.cli_has("agent"):
        pytest.skip("drift-responder agent is not in this tree yet")
    assert manifests.cli_rejects(container["args"]) is None


def test_the_ingest_and_the_bot_are_probed_on_their_health_endpoints(
        chart: list[dict[str, Any]]) -> None:
    ingest = named(chart, "Deployment", f"{FULLNAME}-ingest")
    (container,) = pod_spec(ingest)["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    bot = named(chart, "Deployment", f"{FULLNAME}-bot")
    (container,) = pod_spec(bot)["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = named(chart, "Service", f"{FULLNAME}-bot")
    assert service["spec"]["ports"][0]["port"] == 3000


def test_the_ingest_is_scraped_for_metrics() -> None:
    _need("helm")
    chart = _render("defaults")
    ingest = named(chart, "Deployment", f"{FULLNAME}-ingest")
    annotations = ingest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert by_kind(chart, "ServiceMonitor") == []
    everything = _render("everything")
    (monitor,) = by_kind(everything, "ServiceMonitor")
    service = named(everything, "Service", f"{FULLNAME}-ingest")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in
                                                       service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_the_migration_runs_as_a_hook_before_install_and_upgrade(
        chart: list[dict[str, Any]]) -> None:
    (job,) = by_kind(chart, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert "envFrom" not in container  # the ConfigMap does not exist before install
    assert named(chart, "ConfigMap", FULLNAME)["data"]["DRIFT_AUTO_MIGRATE"] == "false"


# -- Falco, falcosidekick, Slack -----------------------------------------------------------------

def _ingest_url(chart: list[dict[str, Any]]) -> tuple[str, int]:
    service = named(chart, "Service", f"{FULLNAME}-ingest")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    return host, service["spec"]["ports"][0]["port"]


def test_falco_posts_json_alerts_to_the_ingest_with_the_token_in_the_path(
        chart: list[dict[str, Any]]) -> None:
    values = yaml.safe_load((REPO / "deploy/falco/values.yaml").read_text())
    falco = values["falco"]
    assert falco["json_output"] is True
    assert falco["json_include_output_fields_property"] is True
    assert falco["http_output"]["enabled"] is True
    url = urlsplit(falco["http_output"]["url"])
    assert (url.hostname, url.port) == _ingest_url(chart)
    assert url.path == "/v1/falco/${DRIFT_INGEST_TOKEN}"
    (token,) = [e for e in values["extra"]["env"] if e["name"] == "DRIFT_INGEST_TOKEN"]
    assert "secretKeyRef" in token["valueFrom"]


def test_falcosidekick_posts_to_the_ingest_or_fills_the_list_the_consumer_reads(
        chart: list[dict[str, Any]]) -> None:
    from responder.cli import consume

    default_key = next(p.default for p in consume.params if p.name == "key")
    values = yaml.safe_load((REPO / "deploy/falcosidekick/values.yaml").read_text())["config"]
    url = urlsplit(values["webhook"]["address"])
    assert (url.hostname, url.port) == _ingest_url(chart)
    assert url.path == "/v1/falco"
    (header,) = [e for e in values["extraEnv"] if e["name"] == "WEBHOOK_CUSTOMHEADERS"]
    assert "secretKeyRef" in header["valueFrom"]
    chart_values = yaml.safe_load((manifests.CHART / "values.yaml").read_text())
    native = yaml.safe_load((REPO / "deploy/falcosidekick/config.yaml").read_text())
    for redis in (values["redis"], native["redis"]):
        assert redis["storagetype"] == "list"
        assert redis["key"] == default_key == chart_values["consume"]["key"]
        assert redis["address"] == ""  # one path at a time: the webhook is the default


def test_the_slack_app_manifest_points_at_the_bots_events_path() -> None:
    manifest = yaml.safe_load((REPO / "deploy/slack-app-manifest.yaml").read_text())
    urls = [manifest["settings"]["interactivity"]["request_url"],
            *(c["url"] for c in manifest["features"]["slash_commands"])]
    assert all(urlsplit(u).path == "/slack/events" for u in urls)


def _mentioned_paths(text: str) -> Iterator[str]:
    for match in re.finditer(r"(?<![\w/.-])((?:deploy|tests|playbooks)/[\w./-]*\w|"
                             r"docker-compose\.yml|\.env\.example|Dockerfile)", text):
        yield match.group(1)


@pytest.mark.parametrize("readme", ["deploy/README.md", "deploy/helm/drift-responder/README.md"])
def test_the_deployment_guides_name_only_files_that_exist(readme: str) -> None:
    paths = set(_mentioned_paths((REPO / readme).read_text()))
    assert paths
    assert sorted(p for p in paths if not (REPO / p).exists()) == []
