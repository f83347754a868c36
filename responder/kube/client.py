"""A configured client with bounded retries and errors people can act on.

Responses are read as plain JSON (``_preload_content=False``): the responder works with the
objects as the API server sent them, and records them in the audit trail as such.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream as k8s_stream

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_FORBIDDEN = re.compile(r'cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
                        r'(?: in API group "(?P<group>[^"]*)")?')


class KubeError(Exception):
    """An API call failed for good; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(self, message: str, status: int = 0, reason: str = "",
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.body = body or {}


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Blocked(KubeError):
    """429 that is an answer, not a rate limit (an eviction refused by a disruption budget)."""


@dataclass(frozen=True)
class ClusterSettings:
    host: str | None = None
    token: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    timeout_s: float = 10.0
    retries: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 2.0
    verify_ssl: bool = True


@dataclass(frozen=True)
class ExecOutput:
    stdout: bytes
    stderr: bytes
    returncode: int


class Cluster:
    """The API groups we use, and ``call`` to use them with retries."""

    def __init__(self, api_client: k8s.ApiClient, settings: ClusterSettings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_client = api_client
        self.settings = settings
        self.core = k8s.CoreV1Api(api_client)
        self.networking = k8s.NetworkingV1Api(api_client)
        self.policy = k8s.PolicyV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.batch = k8s.BatchV1Api(api_client)
        self._sleep = sleep

    @classmethod
    def connect(cls, settings: ClusterSettings) -> Cluster:
        configuration = k8s.Configuration()
        if settings.host:
            configuration.host = settings.host
            if settings.token:
                configuration.api_key = {"authorization": f"Bearer {settings.token}"}
            configuration.verify_ssl = settings.verify_ssl
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and not settings.kubeconfig:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=settings.kubeconfig,
                                        context=settings.context,
                                        client_configuration=configuration)
        configuration.retries = False  # ours below, with Retry-After and a bound
        return cls(k8s.ApiClient(configuration), settings)

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call an API method and return the decoded JSON body (None for an empty body).

        Retries 429, 5xx and connection errors with exponential backoff (honouring a short
        Retry-After); turns 401/403/404/409 into errors that say what is missing.
        """
        kwargs.setdefault("_request_timeout", self.settings.timeout_s)
        kwargs["_preload_content"] = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response = method(*args, **kwargs)
                data = response.data
                return json.loads(data) if data else None
            except ApiException as exc:
                body = _body(exc)
                if exc.status in RETRY_STATUSES and attempt <= self.settings.retries and \
                        not _is_eviction_block(exc.status, body):
                    self._sleep(self._delay(attempt, exc.headers))
                    continue
                raise _translate(what, exc, body) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt <= self.settings.retries:
                    self._sleep(self._delay(attempt, None))
                    continue
                raise KubeError(f"{what}: cannot reach the Kubernetes API: {exc}") from None

    def exec(self, namespace: str, pod: str, container: str | None, argv: list[str], *,
             timeout_s: float = 60.0, max_bytes: int = 64 << 20) -> ExecOutput:
        """Run a fixed argv in a container (``pods/exec`` over the WebSocket) and collect its
        output as bytes. Never a shell string: callers pass argv lists only. Not retried: a
        command may have run even when the connection failed."""
        what = f"exec in pod {namespace}/{pod}"
        try:
            session = k8s_stream(
                self.core.connect_get_namespaced_pod_exec, pod, namespace, command=argv,
                container=container or None, stderr=True, stdin=False, stdout=True, tty=False,
                _preload_content=False, binary=True, _request_timeout=self.settings.timeout_s)
        except ApiException as exc:
            raise _translate(what, exc, _body(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"{what}: cannot reach the Kubernetes API: {exc}") from None
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s
        try:
            while session.is_open():
                if time.monotonic() > deadline:
                    raise KubeError(f"{what}: no end after {timeout_s:.0f} s")
                session.update(timeout=1)
                if session.peek_stdout():
                    stdout += session.read_stdout()
                if session.peek_stderr():
                    stderr += session.read_stderr()
                if len(stdout) + len(stderr) > max_bytes:
                    raise KubeError(f"{what}: output larger than {max_bytes} bytes")
            # Whatever arrived with the closing frames.
            stdout += session.read_stdout() or b""
            stderr += session.read_stderr() or b""
            code = session.returncode
        finally:
            session.close()
        return ExecOutput(bytes(stdout), bytes(stderr), int(code if code is not None else -1))

    def _delay(self, attempt: int, headers: Any) -> float:
        delay = min(self.settings.backoff_s * 2 ** (attempt - 1), self.settings.max_backoff_s)
        retry_after = (headers or {}).get("Retry-After") if headers else None
        if retry_after and str(retry_after).isdigit():
            delay = min(float(retry_after), self.settings.max_backoff_s)
        return float(delay)


def _body(exc: ApiException) -> dict[str, Any]:
    try:
        parsed = json.loads(exc.body) if exc.body else {}
    except (ValueError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _is_eviction_block(status: int | None, body: dict[str, Any]) -> bool:
    return status == 429 and "disruption budget" in str(body.get("message", "")).lower()


def _translate(what: str, exc: ApiException, body: dict[str, Any]) -> KubeError:
    status = int(exc.status or 0)
    message = str(body.get("message") or exc.reason or "")
    reason = str(body.get("reason") or "")
    if status == 401:
        return KubeError(f"{what}: unauthenticated (401): check the service account token or "
                         "kubeconfig credentials", status, reason, body)
    if status == 403:
        found = _FORBIDDEN.search(message)
        if found:
            group = found.group("group") or "core"
            need = (f"RBAC verb {found.group('verb')!r} on resource "
                    f"{found.group('resource')!r} (API group {group!r})")
        else:
            need = "a permission the responder's role does not grant"
        return KubeError(f"{what}: forbidden (403): missing {need}. `drift-responder rbac` "
                         f"prints the role it needs. API said: {message}", status, reason, body)
    if status == 404:
        return NotFound(f"{what}: not found (404): {message}", status, reason, body)
    if status == 409:
        return Conflict(f"{what}: conflict (409): {message}", status, reason, body)
    if _is_eviction_block(status, body):
        return Blocked(f"{what}: {message}", status, reason, body)
    return KubeError(f"{what}: HTTP {status}: {message}", status, reason, body)
