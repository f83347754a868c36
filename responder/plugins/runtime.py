"""What plug-ins need from their process (settings, a Kubernetes connection), installed once by
the process that runs them (worker, CLI, tests) rather than read from globals everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from responder.kube.client import Cluster, ClusterSettings, KubeError
from responder.settings import Settings


@dataclass(frozen=True)
class NodeAgent:
    """Set in a node agent's process only: evidence steps read the host here."""

    node: str
    proc_root: Path = Path("/proc")
    host_root: Path = Path("/")


@dataclass
class Runtime:
    settings: Settings
    _cluster: Cluster | None = field(default=None, repr=False)
    agent: NodeAgent | None = None

    def cluster(self) -> Cluster:
        if self._cluster is None:
            s = self.settings
            try:
                self._cluster = Cluster.connect(ClusterSettings(
                    host=s.kube_host,
                    token=s.kube_token.get_secret_value() if s.kube_token else None,
                    kubeconfig=s.kubeconfig, context=s.kube_context,
                    timeout_s=s.kube_timeout_seconds, retries=s.kube_retries))
            except KubeError:
                raise
            except Exception as exc:  # the client's ConfigException and file errors
                raise KubeError("no Kubernetes cluster configured: set DRIFT_KUBE_HOST, run "
                                f"in a pod, or provide a kubeconfig ({exc})") from None
        return self._cluster


_current: dict[str, Runtime] = {}


def install(settings: Settings, agent: NodeAgent | None = None) -> Runtime:
    runtime = Runtime(settings, agent=agent)
    _current["runtime"] = runtime
    return runtime


def current() -> Runtime:
    runtime = _current.get("runtime")
    if runtime is None:  # a process that did not install one: settings from the environment
        runtime = install(Settings())
    return runtime
