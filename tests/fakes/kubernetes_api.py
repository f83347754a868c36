"""An in-memory Kubernetes API server that speaks the real REST wire protocol, for tests.

`FakeKubernetes` runs a threaded HTTP server on 127.0.0.1 and answers the paths, verbs, patch
content types and `Status` error bodies of the real API server for the resources drift-responder
touches. Code under test reaches it through the official `kubernetes` client configured with
nothing more than `Configuration.host` (plus a bearer token when the fake asks for one); nothing
in the code under test is patched::

    with FakeKubernetes() as kube:
        kube.add_pod("shop", "web-1", labels={"app": "web"})
        core = kubernetes.client.CoreV1Api(kube.api_client())
        core.patch_namespaced_pod("web-1", "shop", {"metadata": {"labels": {"app": None}}})
        assert "app" not in kube.pod("shop", "web-1")["metadata"].get("labels", {})

Served
    core/v1: pods (+ eviction, exec over WebSocket, log, status), services, nodes, namespaces;
    networking.k8s.io/v1 networkpolicies; policy/v1 poddisruptionbudgets; apps/v1 deployments,
    replicasets, statefulsets, daemonsets; batch/v1 jobs. Every resource supports get, list
    (labelSelector, fieldSelector, limit/continue), create, update (PUT), patch (JSON patch,
    merge patch, strategic merge patch), delete, and `dryRun=All`; plus GET /version.

Kept faithful, because code under test depends on it
    Status bodies (reason, message wording, details, code); resourceVersion preconditions on
    PUT/PATCH and uid/resourceVersion preconditions on DELETE (409); status written through the
    main resource is ignored; no-op writes keep the resourceVersion; empty metadata maps and
    lists are omitted; pod spec immutability and name/label validation (422); creates need an
    existing namespace (404); list items carry no kind/apiVersion; PodDisruptionBudget status
    and the eviction arithmetic of the disruption controller (expected pods from the
    controllers' replicas for maxUnavailable and percentages; 429 naming the budget);
    RBAC-shaped 403 messages; 401 without the bearer token.

Worth knowing about the client (v37) when writing tests
    urllib3's default Retry re-sends GET/PUT/DELETE answered 429/503 with Retry-After (sleeping
    it), so such a fault only surfaces on POST/PATCH or with `Configuration.retries` set;
    a `dict` patch body goes out as strategic merge, a `list` as JSON patch, and
    `_content_type=` forces merge patch; DELETE of most non-pod resources returns a plain dict.

Deliberate simplifications
    No watch (400) and no server-side apply (415); no deletecollection; no garbage collection;
    a deleted or evicted pod disappears at once (the DELETE response still carries
    deletionTimestamp, as the real one does); controllers only run when a test calls
    `run_controllers()` (ReplicaSets); strategic merge knows the merge keys of the fields listed
    in `_MERGE_KEYS`; exec ignores stdin and answers as soon as the WebSocket opens.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import math
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

JsonObject = dict[str, Any]

DEFAULT_USER = "system:serviceaccount:drift:responder"
DEFAULT_IMAGE = "registry.example.com/shop/app:1.0"
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the API server uses for generateName


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suffix(length: int) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


# ---------------------------------------------------------------- resource catalogue

_META_FIELDS = ("metadata.name", "metadata.namespace")
_FIELD_DEFAULTS = {"spec.unschedulable": "false", "spec.hostNetwork": "false",
                   "status.replicas": "0", "status.successful": "0"}


@dataclass(frozen=True)
class Resource:
    """One served resource: where it lives in the URL space and how it is named."""

    plural: str
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    field_labels: tuple[str, ...] = _META_FIELDS
    name_rule: str = "subdomain"  # "subdomain" (RFC 1123), "label" (RFC 1123), "dns1035"
    subresources: frozenset[str] = frozenset({"status"})
    return_deleted: bool = False  # DELETE answers with the object (pods), not a Status

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`pods`, `networkpolicies.networking.k8s.io`: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def field_value(self, obj: JsonObject, name: str) -> str:
        value: Any = obj
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return _FIELD_DEFAULTS.get(name, "")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


PODS = Resource(
    "pods", "Pod",
    field_labels=(*_META_FIELDS, "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                  "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
                  "status.nominatedNodeName"),
    subresources=frozenset({"status", "eviction", "exec", "log"}),
    return_deleted=True,
)
SERVICES = Resource("services", "Service", name_rule="dns1035")
NODES = Resource("nodes", "Node", namespaced=False,
                 field_labels=("metadata.name", "spec.unschedulable"))
NAMESPACES = Resource("namespaces", "Namespace", namespaced=False, name_rule="label",
                      field_labels=("metadata.name", "status.phase"))
NETWORK_POLICIES = Resource("networkpolicies", "NetworkPolicy", group="networking.k8s.io")
PDBS = Resource("poddisruptionbudgets", "PodDisruptionBudget", group="policy")
DEPLOYMENTS = Resource("deployments", "Deployment", group="apps")
REPLICA_SETS = Resource("replicasets", "ReplicaSet", group="apps",
                        field_labels=(*_META_FIELDS, "status.replicas"))
STATEFUL_SETS = Resource("statefulsets", "StatefulSet", group="apps")
DAEMON_SETS = Resource("daemonsets", "DaemonSet", group="apps")
JOBS = Resource("jobs", "Job", group="batch", field_labels=(*_META_FIELDS, "status.successful"))

RESOURCES: tuple[Resource, ...] = (PODS, SERVICES, NODES, NAMESPACES, NETWORK_POLICIES, PDBS,
                                   DEPLOYMENTS, REPLICA_SETS, STATEFUL_SETS, DAEMON_SETS, JOBS)
_BY_URL = {(r.group, r.version, r.plural): r for r in RESOURCES}
_WORKLOADS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"})


def resource_for(kind: str) -> Resource:
    """The resource for a kind or plural, case-insensitive: "Pod", "pods", "networkpolicy"..."""
    wanted = kind.lower()
    for res in RESOURCES:
        if wanted in (res.kind.lower(), res.plural):
            return res
    known = ", ".join(r.kind for r in RESOURCES)
    raise KeyError(f"FakeKubernetes does not serve {kind!r} (it serves {known})")


# ---------------------------------------------------------------- API errors (Status bodies)

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_FAULT_MESSAGES = {429: "Too many requests, please try again later.",
                   500: "Internal error occurred: injected by FakeKubernetes",
                   503: "the server is currently unable to handle the request",
                   504: "Timeout: request did not complete within the allotted timeout"}


class ApiError(Exception):
    """A failed request, answered as the API server's `Status` object (or a raw `body`)."""

    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: JsonObject | None = None, headers: Mapping[str, str] | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details
        self.headers = dict(headers or {})
        self.body = body

    def status(self) -> JsonObject:
        status: JsonObject = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": self.message, "reason": self.reason}
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


@dataclass(frozen=True)
class FieldError:
    """One validation failure, as listed in a 422 Invalid Status."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueForbidden...
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    @classmethod
    def invalid(cls, path: str, value: Any, detail: str) -> FieldError:
        return cls(path, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {detail}")

    @classmethod
    def required(cls, path: str, detail: str = "") -> FieldError:
        return cls(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))

    @classmethod
    def forbidden(cls, path: str, detail: str) -> FieldError:
        return cls(path, "FieldValueForbidden", f"Forbidden: {detail}")


def _details(res: Resource, name: str | None, **extra: Any) -> JsonObject:
    details: JsonObject = {"name": name} if name else {}
    if res.group:
        details["group"] = res.group
    details["kind"] = res.plural
    details.update(extra)
    return details


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, f'{res.qualified} "{name}" not found', "NotFound", _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, f'{res.qualified} "{name}" already exists', "AlreadyExists",
                    _details(res, name))


def conflict(res: Resource, name: str, why: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                    "Conflict", _details(res, name))


def stale(res: Resource, name: str) -> ApiError:
    return conflict(res, name, "the object has been modified; please apply your changes to the "
                               "latest version and try again")


def invalid(res: Resource, name: str, errors: Sequence[FieldError]) -> ApiError:
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details: JsonObject = {"name": name} if name else {}
    if res.group:
        details["group"] = res.group
    details["kind"] = res.kind
    details["causes"] = [{"reason": e.reason, "message": e.message, "field": e.field}
                         for e in errors]
    return ApiError(422, f'{res.qualified_kind} "{name}" is invalid: {listed}', "Invalid", details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


def unknown_path() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", "NotFound")


def method_not_allowed() -> ApiError:
    return ApiError(405, "the server does not allow this method on the requested resource",
                    "MethodNotAllowed")


def unprocessable(why: str) -> ApiError:
    """What the API server answers when a JSON patch cannot be applied (a failed `test`...)."""
    return ApiError(422, "the server rejected our request due to an error in our request",
                    "Invalid", {"causes": [{"reason": "UnexpectedServerResponse", "message": why}]})


# ---------------------------------------------------------------- label and field selectors

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_TERM = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)")
_CMP_TERM = re.compile(rf"({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})")
_EXISTS_TERM = re.compile(rf"(!?)\s*({_KEY})")
_EXPRESSION_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


@dataclass(frozen=True)
class Requirement:
    """`key <operator> values`; operators: = != in notin exists ! > <."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if not present or value is None or not re.fullmatch(r"-?\d+", value):
            return False
        bound = int(next(iter(self.values)))
        return int(value) > bound if self.operator == ">" else int(value) < bound


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """The `labelSelector` query syntax; raises ValueError like the server's 400."""
        return cls(tuple(_parse_term(term) for term in _split_terms(text)))

    @classmethod
    def from_api(cls, selector: JsonObject | None) -> LabelSelector | None:
        """A metav1.LabelSelector (matchLabels, matchExpressions); None selects nothing."""
        if selector is None:
            return None
        reqs = [Requirement(k, "=", frozenset({v}))
                for k, v in (selector.get("matchLabels") or {}).items()]
        for expr in selector.get("matchExpressions") or []:
            operator = _EXPRESSION_OPERATORS.get(expr.get("operator", ""))
            if operator is None:
                raise ValueError(f"{expr.get('operator')!r} is not a valid selector operator")
            reqs.append(Requirement(expr["key"], operator, frozenset(expr.get("values") or ())))
        return cls(tuple(reqs))


def _split_terms(text: str) -> list[str]:
    terms, current, depth = [], [], 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def _parse_term(term: str) -> Requirement:
    if m := _SET_TERM.fullmatch(term):
        values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
        if not values or any(not re.fullmatch(_VALUE, v) for v in values):
            raise ValueError(f"for 'in', 'notin' operators, values set can't be empty: {term}")
        return Requirement(m.group(1), m.group(2), values)
    if m := _CMP_TERM.fullmatch(term):
        operator = "=" if m.group(2) == "==" else m.group(2)
        if operator in (">", "<") and not re.fullmatch(r"-?\d+", m.group(3)):
            raise ValueError(f"for 'Gt', 'Lt' operators, the value must be an integer: {term}")
        return Requirement(m.group(1), operator, frozenset({m.group(3)}))
    if m := _EXISTS_TERM.fullmatch(term):
        return Requirement(m.group(2), "!" if m.group(1) else "exists")
    raise ValueError(f"unable to parse requirement: {term!r}")


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negated: bool = False

    def matches(self, res: Resource, obj: JsonObject) -> bool:
        return (res.field_value(obj, self.field) == self.value) != self.negated


def parse_field_selector(text: str) -> list[FieldRequirement]:
    reqs = []
    for term in _split_terms(text):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", term)
        if m is None:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{term}'")
        reqs.append(FieldRequirement(m.group(1), m.group(3).strip(), m.group(2) == "!="))
    return reqs


# ---------------------------------------------------------------- patches

class PatchError(ValueError):
    """A patch that decodes but cannot be applied (answered 422)."""


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# Lists merged by key under strategic merge patch (patchStrategy "merge" in the API types);
# every other list is replaced. Alternative keys cover `ports` (containerPort vs Service port).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "volumes": ("name",), "env": ("name",), "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",), "ports": ("containerPort", "port"),
    "ownerReferences": ("uid",), "conditions": ("type",), "taints": ("key",),
    "imagePullSecrets": ("name",), "hostAliases": ("ip",), "resourceClaims": ("name",),
    "topologySpreadConstraints": ("topologyKey",),
}
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge: a JSON merge patch plus keyed list merging and `$patch` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            listed = key.split("/", 1)[1]
            if isinstance(result.get(listed), list):
                result[listed] = [x for x in result[listed] if x not in (value or [])]
        elif key.startswith("$"):
            continue  # $patch handled above; $setElementOrder/$retainKeys only order or prune
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS:
            result[key] = _merge_keyed_list(result.get(key), value, _MERGE_KEYS[key])
        elif isinstance(value, list) and key in _MERGED_PRIMITIVE_LISTS:
            merged = list(result.get(key) or [])
            result[key] = merged + [x for x in value if x not in merged]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_keyed_list(target: Any, patch: list[Any], keys: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch
                if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    items = copy.deepcopy(target) if isinstance(target, list) else []
    for item in patch:
        key = next((k for k in keys if isinstance(item, dict) and k in item), None)
        if key is None:
            return copy.deepcopy(patch)  # not a keyed list after all: replace it
        index = next((i for i, e in enumerate(items)
                      if isinstance(e, dict) and e.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del items[index]
        elif index is None:
            items.append(strategic_merge_patch({}, item))
        else:
            items[index] = strategic_merge_patch(items[index], item)
    return items


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) on a copy of `document`.

    A malformed patch raises ApiError 400; one that does not apply raises PatchError.
    """
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise bad_request(f"invalid JSON patch operation: {json.dumps(operation)}")
        op, path = operation.get("op"), operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"{op} operation has no value: {path}")
        if op == "add":
            doc = _pointer_add(doc, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            doc, _ = _pointer_remove(doc, path, "remove")
        elif op == "replace":
            doc, _ = _pointer_remove(doc, path, "replace")
            doc = _pointer_add(doc, path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation.get("from")
            if not isinstance(source, str):
                raise PatchError(f"{op} operation has no from: {path}")
            if op == "move":
                doc, value = _pointer_remove(doc, source, op)
            else:
                value = copy.deepcopy(_pointer_get(doc, source, op))
            doc = _pointer_add(doc, path, value)
        elif op == "test":
            try:
                actual = _pointer_get(doc, path, "test")
            except PatchError as missing:
                raise PatchError(f"testing value {path} failed: {missing}") from None
            if not _json_equal(actual, operation["value"]):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {op}")
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'JSON pointer must be empty or start with a "/": {path}')
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _missing(op: str, path: str) -> PatchError:
    return PatchError(f'{op} operation does not apply: doc is missing path: "{path}": '
                      "missing value")


def _walk(doc: Any, tokens: list[str], op: str, path: str) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise _missing(op, path)
    return node


def _pointer_get(doc: Any, path: str, op: str) -> Any:
    return _walk(doc, _pointer(path), op, path)


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _walk(doc, tokens[:-1], "add", path), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and last == "-":
        parent.append(value)
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise _missing("add", path)
    return doc


def _pointer_remove(doc: Any, path: str, op: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        return None, doc
    parent, last = _walk(doc, tokens[:-1], op, path), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return doc, parent.pop(int(last))
    raise _missing(op, path)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (unlike Python's, true is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- validation

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_NAME_RULES = {
    "subdomain": (_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower case "
                  "alphanumeric characters, '-' or '.', and must start and end with an "
                  "alphanumeric character (e.g. 'example.com', regex used for validation is "
                  f"'{_SUBDOMAIN}')"),
    "label": (_DNS1123_LABEL, 63, "a lowercase RFC 1123 label must consist of lower case "
              "alphanumeric characters or '-', and must start and end with an alphanumeric "
              f"character (e.g. 'my-name',  or '123-abc', regex used for validation is "
              f"'{_DNS1123_LABEL}')"),
    "dns1035": (_DNS1035_LABEL, 63, "a DNS-1035 label must consist of lower case alphanumeric "
                "characters or '-', start with an alphabetic character, and end with an "
                "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
                f"validation is '{_DNS1035_LABEL}')"),
}
_QUALIFIED_NAME_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    f"for validation is '{_QUALIFIED_NAME}')")
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE}')")
_POD_MUTABLE_SPEC = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
    "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
    "set to 1 if it was previously negative)")


def _validate_key(path: str, key: Any) -> list[FieldError]:
    if not isinstance(key, str):
        return [FieldError.invalid(path, key, "must be a string")]
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not re.fullmatch(_SUBDOMAIN, prefix)):
        errors.append(FieldError.invalid(path, key, "prefix part " + _NAME_RULES["subdomain"][2]))
    if not name or len(name) > 63 or not re.fullmatch(_QUALIFIED_NAME, name):
        detail = "name part must be no more than 63 characters" if len(name) > 63 \
            else _QUALIFIED_NAME_MESSAGE
        errors.append(FieldError.invalid(path, key, detail))
    return errors


def _validate_metadata(res: Resource, meta: JsonObject) -> list[FieldError]:
    errors: list[FieldError] = []
    name = meta.get("name", "")
    pattern, limit, message = _NAME_RULES[res.name_rule]
    if len(name) > limit:
        errors.append(FieldError.invalid("metadata.name", name,
                                         f"must be no more than {limit} characters"))
    elif not re.fullmatch(pattern, name):
        errors.append(FieldError.invalid("metadata.name", name, message))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [*errors, FieldError.invalid("metadata.labels", labels, "must be a map")]
    for key, value in labels.items():
        errors += _validate_key("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(_LABEL_VALUE, value):
            detail = "must be no more than 63 characters" \
                if isinstance(value, str) and len(value) > 63 else _LABEL_VALUE_MESSAGE
            errors.append(FieldError.invalid("metadata.labels", value, detail))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        return [*errors, FieldError.invalid("metadata.annotations", annotations, "must be a map")]
    for key, value in annotations.items():
        errors += _validate_key("metadata.annotations", key)
        if not isinstance(value, str):
            errors.append(FieldError.invalid("metadata.annotations", value, "must be a string"))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 262144:
        errors.append(FieldError("metadata.annotations", "FieldValueTooLong",
                                 "Too long: must have at most 262144 bytes"))
    return errors


def _validate_containers(path: str, containers: Any) -> list[FieldError]:
    if not isinstance(containers, list) or not containers:
        return [FieldError.required(path)]
    errors = []
    for i, container in enumerate(containers):
        for required in ("name", "image"):
            if not isinstance(container, dict) or not container.get(required):
                errors.append(FieldError.required(f"{path}[{i}].{required}"))
    return errors


def validate_object(res: Resource, obj: JsonObject) -> list[FieldError]:
    """What the API server's validation would reject on create and update (a useful subset)."""
    errors = _validate_metadata(res, obj.get("metadata") or {})
    spec = obj.get("spec") or {}
    if res is PODS:
        errors += _validate_containers("spec.containers", spec.get("containers"))
    elif res is PDBS and spec.get("minAvailable") is not None \
            and spec.get("maxUnavailable") is not None:
        errors.append(FieldError.invalid("spec", spec,
                                         "minAvailable and maxUnavailable cannot be both set"))
    elif res is NETWORK_POLICIES:
        for i, kind in enumerate(spec.get("policyTypes") or []):
            if kind not in ("Ingress", "Egress"):
                errors.append(FieldError(f"spec.policyTypes[{i}]", "FieldValueNotSupported",
                                         f'Unsupported value: "{kind}": supported values: '
                                         '"Ingress", "Egress"'))
    elif res.kind in _WORKLOADS or res is JOBS:
        template = spec.get("template") or {}
        errors += _validate_containers("spec.template.spec.containers",
                                       (template.get("spec") or {}).get("containers"))
        selector = spec.get("selector")
        if res.kind in _WORKLOADS and not selector:
            errors.append(FieldError.required("spec.selector"))
        elif selector:
            try:
                parsed = LabelSelector.from_api(selector)
            except ValueError as bad:
                errors.append(FieldError.invalid("spec.selector", selector, str(bad)))
            else:
                labels = (template.get("metadata") or {}).get("labels") or {}
                if parsed is not None and not parsed.matches(labels):
                    errors.append(FieldError.invalid("spec.template.metadata.labels", labels,
                                                     "`selector` does not match template `labels`"))
    return errors


def validate_update(res: Resource, old: JsonObject, new: JsonObject) -> list[FieldError]:
    """Immutability rules checked on PUT and PATCH."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if res is PODS:
        old_tolerations = old_spec.get("tolerations") or []
        new_tolerations = new_spec.get("tolerations") or []
        if _pod_spec_frozen_part(old_spec) != _pod_spec_frozen_part(new_spec) \
                or any(t not in new_tolerations for t in old_tolerations):
            return [FieldError.forbidden("spec", _POD_MUTABLE_SPEC)]
    selector_changed = _pruned(old_spec.get("selector")) != _pruned(new_spec.get("selector"))
    if res.kind in _WORKLOADS and selector_changed:
        return [FieldError.invalid("spec.selector", new_spec.get("selector"), "field is immutable")]
    return []


def _pod_spec_frozen_part(spec: JsonObject) -> Any:
    frozen = copy.deepcopy(spec)
    for key in ("containers", "initContainers"):
        for container in frozen.get(key) or []:
            if isinstance(container, dict):
                container.pop("image", None)
    for key in ("activeDeadlineSeconds", "terminationGracePeriodSeconds", "tolerations",
                "schedulingGates"):
        frozen.pop(key, None)
    return _pruned(frozen)


def _pruned(value: Any) -> Any:
    """Drop nulls and empty maps/lists: the client omits them, the server defaults them."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


# ---------------------------------------------------------------- records for tests

@dataclass
class RecordedRequest:
    """One request the fake received (in arrival order), and the status it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any  # parsed JSON when it is JSON, text otherwise, None when empty
    headers: dict[str, str]  # names in lower case
    status: int | None = None

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class ExecCall:
    """One exec request: what ran where."""

    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


@dataclass(frozen=True)
class ExecResult:
    stdout: str | bytes = b""
    stderr: str | bytes = b""
    exit_code: int = 0


@dataclass(frozen=True)
class Workload:
    """What `add_workload` seeds: Deployment -> ReplicaSet -> pods, linked by ownerReferences."""

    deployment: JsonObject
    replicaset: JsonObject
    pods: list[JsonObject]


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    body: Any
    retry_after: float | None

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass(frozen=True)
class _Delay:
    method: str
    pattern: re.Pattern[str]
    seconds: float


@dataclass(frozen=True)
class _Route:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def authz_resource(self) -> str:
        sub = self.subresource
        return f"{self.resource.plural}/{sub}" if sub else self.resource.plural


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> _Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, body, headers=dict(headers or {}))

    @classmethod
    def text(cls, status: int, text: str) -> _Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")

    @classmethod
    def error(cls, err: ApiError) -> _Response:
        if err.body is None:
            return cls.json(err.code, err.status(), err.headers)
        if isinstance(err.body, str | bytes):
            raw = err.body.encode() if isinstance(err.body, str) else err.body
            return cls(err.code, raw, "text/plain; charset=utf-8", err.headers)
        return cls.json(err.code, err.body, err.headers)


@dataclass(frozen=True)
class _ExecSession:
    call: ExecCall


# ---------------------------------------------------------------- the fake API server

class FakeKubernetes:
    """A Kubernetes API server double on 127.0.0.1 (see the module docstring for its scope).

    Use it as a context manager (or `start()`/`stop()`), seed objects with the `add_*` helpers,
    point the official client at `host` (or take `api_client()`), program failures with
    `fail_next`, `delay`, `forbid`, and read back `requests` and the stored objects.
    """

    def __init__(self, *, token: str | None = None, user: str = DEFAULT_USER,
                 namespaces: Iterable[str] = ("default", "kube-system")) -> None:
        self.token = token
        self.user = user
        self.errors: list[BaseException] = []  # unexpected failures inside the fake itself
        self._lock = threading.RLock()
        # plural -> (namespace or "", name) -> the object as stored
        self._store: dict[str, dict[tuple[str, str], JsonObject]] = {
            r.plural: {} for r in RESOURCES}
        self._resource_version = 1000
        self._ip_counter = 0
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._forbidden: set[tuple[str, str, str | None]] = set()
        self._exec_results: dict[tuple[str | None, str | None, tuple[str, ...]], ExecResult] = {}
        self._exec_handlers: list[Callable[[ExecCall], ExecResult | None]] = []
        self._exec_calls: list[ExecCall] = []
        self._logs: dict[tuple[str, str, str | None], str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        for namespace in namespaces:
            self.add_namespace(namespace)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeKubernetes:
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name="fake-kubernetes", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:  # idle keep-alive connections of client pools
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeKubernetes is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configuration(self) -> Configuration:
        """A client Configuration for this server (with the bearer token when one is set)."""
        from kubernetes.client import Configuration

        config = Configuration(host=self.host)
        if self.token is not None:
            config.api_key = {"authorization": self.token}
            config.api_key_prefix = {"authorization": "Bearer"}
        return config

    def api_client(self) -> ApiClient:
        from kubernetes.client import ApiClient

        return ApiClient(self.configuration())

    # ------------------------------------------------------------ programmable behaviour

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1,
                  body: Any = None, retry_after: float | None = None) -> None:
        """Answer the next `times` requests matching `method` ("*" for any) and `path_regex`
        (searched in the path, without query) with `status`: a Status body unless `body` is
        given (dict -> JSON, str/bytes -> text). 429 carries Retry-After (default 1 second)."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, times,
                                       body, retry_after))

    def delay(self, path_regex: str, seconds: float, method: str = "*") -> None:
        """Sleep `seconds` before answering requests whose path matches (until `reset`)."""
        with self._lock:
            self._delays.append(_Delay(method.upper(), re.compile(path_regex), seconds))

    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Answer 403 like RBAC for `verb` (get, list, create, update, patch, delete, or "*")
        on `resource` ("pods", "pods/eviction", "pods/exec", "networkpolicies", or "*"),
        in `namespace` or everywhere."""
        with self._lock:
            self._forbidden.add((verb, resource, namespace))

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        with self._lock:
            self._forbidden.discard((verb, resource, namespace))

    def reset(self) -> None:
        """Forget injected failures, delays and forbidden verbs (objects stay)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._forbidden.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def writes(self, path_regex: str = "") -> list[RecordedRequest]:
        """POST/PUT/PATCH/DELETE requests, optionally only those whose path matches."""
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.is_write and pattern.search(r.path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def set_exec(self, command: Sequence[str], *, stdout: str | bytes = b"",
                 stderr: str | bytes = b"", exit_code: int = 0, namespace: str | None = None,
                 pod: str | None = None) -> None:
        """What exec of exactly `command` answers (in one pod, one namespace, or anywhere)."""
        with self._lock:
            self._exec_results[(namespace, pod, tuple(command))] = \
                ExecResult(stdout, stderr, exit_code)

    def exec_handler(self, handler: Callable[[ExecCall], ExecResult | None]) -> None:
        """A fallback for commands `set_exec` does not know; return None to pass."""
        with self._lock:
            self._exec_handlers.append(handler)

    @property
    def exec_calls(self) -> list[ExecCall]:
        with self._lock:
            return list(self._exec_calls)

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None) -> None:
        with self._lock:
            self._logs[(namespace, pod, container)] = text

    # ------------------------------------------------------------ seeding

    def add_namespace(self, name: str, *, labels: Mapping[str, str] | None = None) -> JsonObject:
        obj = {"metadata": {"name": name,
                            "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        return self._seed(NAMESPACES, None, obj)

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 unschedulable: bool = False, taints: Sequence[JsonObject] | None = None,
                 ready: bool = True) -> JsonObject:
        spec: JsonObject = {"podCIDR": f"10.244.{self._next_ip() % 250}.0/24"}
        if unschedulable:
            spec["unschedulable"] = True
        if taints:
            spec["taints"] = [dict(t) for t in taints]
        obj = {
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", **(labels or {})}},
            "spec": spec,
            "status": {
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{self._next_ip() % 250}"},
                              {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                "reason": "KubeletReady" if ready else "KubeletNotReady",
                                "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
                "nodeInfo": {"architecture": "amd64", "bootID": str(uuid.uuid4()),
                             "containerRuntimeVersion": "containerd://1.7.13",
                             "kernelVersion": "6.1.0-18-amd64", "kubeProxyVersion": "v1.30.0",
                             "kubeletVersion": "v1.30.0", "machineID": uuid.uuid4().hex,
                             "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12",
                             "systemUUID": str(uuid.uuid4())},
            },
        }
        return self._seed(NODES, None, obj)

    def add_pod(self, namespace: str, name: str, *, labels: Mapping[str, str] | None = None,
                annotations: Mapping[str, str] | None = None, node: str | None = "node-1",
                owner: JsonObject | None = None, container_ids: Sequence[str] | None = None,
                containers: Sequence[str] | None = None, image: str = DEFAULT_IMAGE,
                phase: str = "Running", ready: bool = True,
                service_account: str = "default") -> JsonObject:
        """A pod as a kubelet reports it: containerStatuses with `containerd://<64 hex>` ids
        and imageIDs with sha256 digests. `owner` is an object returned by another `add_*`
        (it becomes the controller ownerReference); `node` is created when missing."""
        count = len(container_ids) if container_ids else len(containers) if containers else 1
        names = list(containers) if containers else \
            ["app" if i == 0 else f"app-{i}" for i in range(count)]
        ids = list(container_ids) if container_ids else [secrets.token_hex(32) for _ in names]
        if len(ids) != len(names):
            raise ValueError("containers and container_ids must have the same length")
        spec = _pod_spec([{"name": n, "image": image} for n in names], service_account)
        meta: JsonObject = {"name": name, "labels": dict(labels or {})}
        if annotations:
            meta["annotations"] = dict(annotations)
        if owner is not None:
            meta["ownerReferences"] = [_owner_reference(owner)]
        pod = self._scheduled_pod(meta, spec, node, ids, phase, ready)
        return self._seed(PODS, namespace, pod)

    def add_replicaset(self, namespace: str, name: str, *, match_labels: Mapping[str, str],
                       replicas: int = 1, owner: JsonObject | None = None,
                       image: str = DEFAULT_IMAGE) -> JsonObject:
        meta: JsonObject = {"name": name, "labels": dict(match_labels)}
        if owner is not None:
            meta["ownerReferences"] = [_owner_reference(owner)]
        obj = {"metadata": meta, "spec": _workload_spec(match_labels, image, replicas),
               "status": {"replicas": replicas, "fullyLabeledReplicas": replicas,
                          "readyReplicas": replicas, "availableReplicas": replicas,
                          "observedGeneration": 1}}
        return self._seed(REPLICA_SETS, namespace, obj)

    def add_deployment(self, namespace: str, name: str, *, match_labels: Mapping[str, str],
                       replicas: int = 1, image: str = DEFAULT_IMAGE) -> JsonObject:
        spec = _workload_spec(match_labels, image, replicas)
        spec["strategy"] = {"type": "RollingUpdate",
                            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
        spec["revisionHistoryLimit"] = 10
        obj = {"metadata": {"name": name, "labels": dict(match_labels),
                            "annotations": {"deployment.kubernetes.io/revision": "1"}},
               "spec": spec,
               "status": {"replicas": replicas, "updatedReplicas": replicas,
                          "readyReplicas": replicas, "availableReplicas": replicas,
                          "observedGeneration": 1,
                          "conditions": [{"type": "Available", "status": "True",
                                          "reason": "MinimumReplicasAvailable",
                                          "lastTransitionTime": _now(), "lastUpdateTime": _now()}]}}
        return self._seed(DEPLOYMENTS, namespace, obj)

    def add_workload(self, namespace: str, name: str, *, labels: Mapping[str, str],
                     replicas: int = 2, node: str | None = "node-1",
                     image: str = DEFAULT_IMAGE) -> Workload:
        """A Deployment, its ReplicaSet (`<name>-<hash>`) and `replicas` Running pods."""
        template_hash = _suffix(10)
        deployment = self.add_deployment(namespace, name, match_labels=labels,
                                         replicas=replicas, image=image)
        pod_labels = {**labels, "pod-template-hash": template_hash}
        replicaset = self.add_replicaset(namespace, f"{name}-{template_hash}",
                                         match_labels=pod_labels, replicas=replicas,
                                         owner=deployment, image=image)
        pods = [self.add_pod(namespace, f"{name}-{template_hash}-{_suffix(5)}", labels=pod_labels,
                             owner=replicaset, node=node, image=image)
                for _ in range(replicas)]
        return Workload(deployment, replicaset, pods)

    def add_statefulset(self, namespace: str, name: str, *, match_labels: Mapping[str, str],
                        replicas: int = 1, image: str = DEFAULT_IMAGE) -> JsonObject:
        spec = _workload_spec(match_labels, image, replicas)
        spec["serviceName"] = name
        obj = {"metadata": {"name": name, "labels": dict(match_labels)}, "spec": spec,
               "status": {"replicas": replicas, "readyReplicas": replicas,
                          "currentReplicas": replicas, "updatedReplicas": replicas,
                          "availableReplicas": replicas, "observedGeneration": 1}}
        return self._seed(STATEFUL_SETS, namespace, obj)

    def add_daemonset(self, namespace: str, name: str, *, match_labels: Mapping[str, str],
                      image: str = DEFAULT_IMAGE) -> JsonObject:
        spec = _workload_spec(match_labels, image, None)
        nodes = max(1, len(self._store["nodes"]))
        obj = {"metadata": {"name": name, "labels": dict(match_labels)}, "spec": spec,
               "status": {"currentNumberScheduled": nodes, "desiredNumberScheduled": nodes,
                          "numberMisscheduled": 0, "numberReady": nodes,
                          "numberAvailable": nodes, "updatedNumberScheduled": nodes,
                          "observedGeneration": 1}}
        return self._seed(DAEMON_SETS, namespace, obj)

    def add_job(self, namespace: str, name: str, *, labels: Mapping[str, str] | None = None,
                owner: JsonObject | None = None, image: str = DEFAULT_IMAGE) -> JsonObject:
        template_labels = {"job-name": name, "batch.kubernetes.io/job-name": name,
                           **(labels or {})}
        spec = _workload_spec(template_labels, image, None)
        del spec["selector"]  # the Job controller generates it from the uid
        spec["template"]["spec"]["restartPolicy"] = "Never"
        spec.update({"backoffLimit": 6, "completions": 1, "parallelism": 1})
        meta: JsonObject = {"name": name, "labels": dict(labels or {})}
        if owner is not None:
            meta["ownerReferences"] = [_owner_reference(owner)]
        obj = {"metadata": meta, "spec": spec, "status": {"active": 1, "startTime": _now()}}
        return self._seed(JOBS, namespace, obj)

    def add_service(self, namespace: str, name: str, selector: Mapping[str, str] | None, *,
                    ports: Sequence[int] = (80,)) -> JsonObject:
        cluster_ip = f"10.96.{self._next_ip() // 250}.{self._next_ip() % 250 + 1}"
        spec: JsonObject = {"ports": [{"name": f"port-{p}", "port": p, "targetPort": p,
                                       "protocol": "TCP"} for p in ports],
                            "type": "ClusterIP", "clusterIP": cluster_ip,
                            "clusterIPs": [cluster_ip], "sessionAffinity": "None"}
        if selector is not None:
            spec["selector"] = dict(selector)
        obj = {"metadata": {"name": name}, "spec": spec, "status": {"loadBalancer": {}}}
        return self._seed(SERVICES, namespace, obj)

    def add_networkpolicy(self, namespace: str, name: str, *,
                          pod_selector: Mapping[str, str] | None = None,
                          policy_types: Sequence[str] = ("Ingress", "Egress"),
                          ingress: Sequence[JsonObject] | None = None,
                          egress: Sequence[JsonObject] | None = None,
                          labels: Mapping[str, str] | None = None) -> JsonObject:
        """A NetworkPolicy; with the defaults, a deny-all (no rules) for the selected pods."""
        selector = {"matchLabels": dict(pod_selector)} if pod_selector else {}
        spec: JsonObject = {"podSelector": selector, "policyTypes": list(policy_types)}
        if ingress is not None:
            spec["ingress"] = [dict(r) for r in ingress]
        if egress is not None:
            spec["egress"] = [dict(r) for r in egress]
        obj = {"metadata": {"name": name, "labels": dict(labels or {})}, "spec": spec}
        return self._seed(NETWORK_POLICIES, namespace, obj)

    def add_pdb(self, namespace: str, name: str, match_labels: Mapping[str, str] | None = None,
                min_available: int | str | None = None, max_unavailable: int | str | None = None,
                *, match_expressions: Sequence[JsonObject] | None = None,
                unhealthy_pod_eviction_policy: str | None = None) -> JsonObject:
        """A policy/v1 PodDisruptionBudget; its status is computed from the pods on each read."""
        selector: JsonObject = {}
        if match_labels:
            selector["matchLabels"] = dict(match_labels)
        if match_expressions:
            selector["matchExpressions"] = [dict(e) for e in match_expressions]
        spec: JsonObject = {"selector": selector}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        if unhealthy_pod_eviction_policy is not None:
            spec["unhealthyPodEvictionPolicy"] = unhealthy_pod_eviction_policy
        return self._seed(PDBS, namespace, {"metadata": {"name": name}, "spec": spec})

    def add_object(self, obj: JsonObject) -> JsonObject:
        """Seed any served object from its manifest (kind, metadata.name, metadata.namespace)."""
        res = resource_for(obj["kind"])
        namespace = (obj.get("metadata") or {}).get("namespace", "default") \
            if res.namespaced else None
        return self._seed(res, namespace, obj)

    def set_pod_phase(self, namespace: str, name: str, phase: str, *,
                      ready: bool | None = None) -> JsonObject:
        """What the kubelet would report: phase, Ready conditions and container states."""
        with self._lock:
            pod = self._lookup(PODS, namespace, name)
            if pod is None:
                raise KeyError(f"no pod {namespace}/{name}")
            ready = phase == "Running" if ready is None else ready
            status = pod.setdefault("status", {})
            status["phase"] = phase
            status["conditions"] = _pod_conditions(phase, ready)
            for container_status in status.get("containerStatuses") or []:
                container_status.update(_container_state(phase, ready))
            pod["metadata"]["resourceVersion"] = self._next_resource_version()
            return self._presented(PODS, pod)

    # ------------------------------------------------------------ reading the store

    def get(self, kind: str, namespace: str | None, name: str) -> JsonObject | None:
        """A stored object (a copy, as the API would present it), or None."""
        res = resource_for(kind)
        with self._lock:
            obj = self._lookup(res, namespace, name)
            return None if obj is None else self._presented(res, obj)

    def pod(self, namespace: str, name: str) -> JsonObject | None:
        return self.get("Pod", namespace, name)

    def node(self, name: str) -> JsonObject | None:
        return self.get("Node", None, name)

    def objects(self, kind: str, namespace: str | None = None) -> list[JsonObject]:
        """Stored objects of a kind, in one namespace or all, sorted by namespace and name."""
        res = resource_for(kind)
        with self._lock:
            return [self._presented(res, obj)
                    for (ns, _), obj in sorted(self._store[res.plural].items())
                    if namespace is None or ns == namespace]

    # ------------------------------------------------------------ controllers, on demand

    def run_controllers(self) -> None:
        """One pass of the ReplicaSet controller: release owned pods whose labels no longer
        match the selector (as quarantine relies on), adopt matching orphans, and create or
        delete pods until each ReplicaSet has `spec.replicas` active pods."""
        with self._lock:
            for replicaset in list(self._store["replicasets"].values()):
                self._reconcile_replicaset(replicaset)

    def _reconcile_replicaset(self, replicaset: JsonObject) -> None:
        meta, spec = replicaset["metadata"], replicaset.get("spec") or {}
        namespace, uid = meta["namespace"], meta["uid"]
        selector = LabelSelector.from_api(spec.get("selector"))
        if selector is None:
            return
        owned: list[JsonObject] = []
        for (ns, _), pod in sorted(self._store["pods"].items()):
            if ns != namespace or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            pod_meta = pod["metadata"]
            refs = pod_meta.get("ownerReferences") or []
            controller = _controller_ref(pod)
            matches = selector.matches(pod_meta.get("labels"))
            if controller is not None and controller.get("uid") == uid:
                if matches:
                    owned.append(pod)
                else:
                    rest = [r for r in refs if r is not controller]
                    if rest:
                        pod_meta["ownerReferences"] = rest
                    else:
                        pod_meta.pop("ownerReferences")
                    pod_meta["resourceVersion"] = self._next_resource_version()
            elif controller is None and matches and not pod_meta.get("deletionTimestamp"):
                pod_meta["ownerReferences"] = [*refs, _owner_reference(replicaset)]
                pod_meta["resourceVersion"] = self._next_resource_version()
                owned.append(pod)
        desired = spec.get("replicas", 1)
        if len(owned) < desired:
            template = spec.get("template") or {}
            nodes = [p["spec"].get("nodeName") for p in owned if p["spec"].get("nodeName")]
            for _ in range(desired - len(owned)):
                pod_meta = {"generateName": f"{meta['name']}-",
                            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                            "ownerReferences": [_owner_reference(replicaset)]}
                pod_spec = copy.deepcopy(template.get("spec") or {})
                ids = [secrets.token_hex(32) for _ in pod_spec.get("containers") or []]
                node = nodes[0] if nodes else "node-1"
                self._ensure_node(node)
                pod = self._scheduled_pod(pod_meta, pod_spec, node, ids, "Running", True)
                owned.append(self._create_object(PODS, namespace, pod, from_api=False))
        for extra in sorted(owned, key=lambda p: (_pod_is_healthy(p),
                                                  p["metadata"]["creationTimestamp"]))[
                : max(0, len(owned) - desired)]:
            del self._store["pods"][(namespace, extra["metadata"]["name"])]
        status = replicaset.setdefault("status", {})
        count = min(len(owned), desired)
        ready = sum(_pod_is_healthy(p) for p in owned[:desired])
        wanted = {"replicas": count, "fullyLabeledReplicas": count, "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": meta.get("generation", 1)}
        if any(status.get(k) != v for k, v in wanted.items()):
            status.update(wanted)
            meta["resourceVersion"] = self._next_resource_version()

    # ------------------------------------------------------------ store internals

    def _next_resource_version(self) -> str:
        with self._lock:
            self._resource_version += 1
            return str(self._resource_version)

    def _next_ip(self) -> int:
        with self._lock:
            self._ip_counter += 1
            return self._ip_counter

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "") if res.namespaced else "", name

    def _lookup(self, res: Resource, namespace: str | None, name: str) -> JsonObject | None:
        return self._store[res.plural].get(self._key(res, namespace, name))

    def _ensure_namespace(self, namespace: str) -> None:
        if self._lookup(NAMESPACES, None, namespace) is None:
            self.add_namespace(namespace)

    def _ensure_node(self, name: str) -> None:
        if self._lookup(NODES, None, name) is None:
            self.add_node(name)

    def _seed(self, res: Resource, namespace: str | None, obj: JsonObject) -> JsonObject:
        with self._lock:
            if res.namespaced:
                self._ensure_namespace(namespace or "default")
            stored = self._create_object(res, namespace, obj, from_api=False)
            return self._presented(res, stored)

    def _create_object(self, res: Resource, namespace: str | None, obj: JsonObject, *,
                       dry_run: bool = False, from_api: bool = True) -> JsonObject:
        """Name, validate, stamp server metadata and store (unless dry-run). Caller holds lock."""
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(res, "", [FieldError.required(
                    "metadata.name", "name or generateName is required")])
            meta["name"] = self._generate_name(res, namespace, prefix)
        name = meta["name"]
        if res is PDBS:
            spec = obj.setdefault("spec", {})
            if spec.get("minAvailable") is None and spec.get("maxUnavailable") is None:
                spec["minAvailable"] = 1  # the policy/v1 default
        errors = validate_object(res, obj)
        if errors:
            raise invalid(res, name, errors)
        if self._lookup(res, namespace, name) is not None:
            raise already_exists(res, name)
        for server_owned in ("resourceVersion", "uid", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "selfLink", "creationTimestamp"):
            meta.pop(server_owned, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if from_api:  # status is the controllers' and kubelet's to write, not the creator's
            obj.pop("status", None)
            if res is PODS:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if res is PDBS:
            obj.pop("status", None)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_resource_version()
        self._store[res.plural][self._key(res, namespace, name)] = obj
        return obj

    def _generate_name(self, res: Resource, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + _suffix(5)
            if self._lookup(res, namespace, name) is None:
                return name

    def _presented(self, res: Resource, obj: JsonObject, *, in_list: bool = False) -> JsonObject:
        """A copy as the API shows it: computed PDB status; list items lose kind/apiVersion."""
        shown = copy.deepcopy(obj)
        if res is PDBS:
            shown["status"] = self._pdb_status(obj)
        if in_list:
            shown.pop("kind", None)
            shown.pop("apiVersion", None)
        return shown

    def _scheduled_pod(self, meta: JsonObject, spec: JsonObject, node: str | None,
                       container_ids: Sequence[str], phase: str, ready: bool) -> JsonObject:
        if node:
            self._ensure_node(node)
            spec["nodeName"] = node
        node_obj = self._lookup(NODES, None, node) if node else None
        host_ip = next((a["address"] for a in ((node_obj or {}).get("status") or {})
                        .get("addresses", []) if a.get("type") == "InternalIP"), None)
        status: JsonObject = {"phase": phase, "conditions": _pod_conditions(phase, ready),
                              "qosClass": "BestEffort"}
        if node and phase != "Pending":
            pod_ip = f"10.244.{self._next_ip() // 250}.{self._next_ip() % 250 + 1}"
            status.update({"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": pod_ip,
                           "podIPs": [{"ip": pod_ip}], "startTime": _now()})
        status["containerStatuses"] = [
            _container_status(c, cid, phase, ready)
            for c, cid in zip(spec.get("containers") or [], container_ids, strict=False)]
        return {"metadata": meta, "spec": spec, "status": status}

    def _pdb_status(self, pdb: JsonObject) -> JsonObject:
        """The disruption controller's arithmetic. Expected pods come from the pods themselves
        for an integer minAvailable, otherwise from the scale (spec.replicas) of their
        controllers; a pod without a scalable controller fails the sync (no disruptions)."""
        spec, meta = pdb.get("spec") or {}, pdb["metadata"]
        namespace, generation = meta["namespace"], meta.get("generation", 1)
        try:
            selector = LabelSelector.from_api(spec.get("selector"))
        except ValueError:
            selector = None
        pods = [] if selector is None else [
            p for (ns, _), p in sorted(self._store["pods"].items())
            if ns == namespace and selector.matches(p["metadata"].get("labels"))]
        healthy = sum(_pod_is_healthy(p) for p in pods)
        min_available, max_unavailable = spec.get("minAvailable", 1), spec.get("maxUnavailable")
        failure = None
        if max_unavailable is None and isinstance(min_available, int):
            expected, desired = len(pods), min_available
        else:
            expected, failure = self._expected_scale(namespace, pods)
            if max_unavailable is not None:
                desired = max(0, expected - _scaled(max_unavailable, expected))
            else:
                desired = _scaled(min_available, expected)
        if failure is not None:  # what failSafe leaves behind on a new budget
            expected, desired, allowed = 0, 0, 0
        else:
            allowed = max(0, healthy - desired)
        reason = "SyncFailed" if failure else "SufficientPods" if allowed else "InsufficientPods"
        return {"observedGeneration": generation, "disruptionsAllowed": allowed,
                "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
                "conditions": [{"type": "DisruptionAllowed",
                                "status": "True" if allowed > 0 else "False", "reason": reason,
                                "message": failure or "", "observedGeneration": generation,
                                "lastTransitionTime": meta["creationTimestamp"]}]}

    def _expected_scale(self, namespace: str, pods: list[JsonObject]) -> tuple[int, str | None]:
        """Sum of the replicas of the pods' controllers (Deployment over its ReplicaSet,
        ReplicaSet, StatefulSet), each counted once; or an error naming the first pod whose
        controller has no scale."""
        scales: dict[str, int] = {}
        for pod in pods:
            found = self._controller_scale(namespace, _controller_ref(pod))
            if found is None:
                return 0, f'found no controllers for pod "{pod["metadata"]["name"]}"'
            scales[found[0]] = found[1]
        return sum(scales.values()), None

    def _controller_scale(self, namespace: str, ref: JsonObject | None) -> tuple[str, int] | None:
        scalable = {"ReplicaSet": REPLICA_SETS, "StatefulSet": STATEFUL_SETS,
                    "Deployment": DEPLOYMENTS}
        res = scalable.get((ref or {}).get("kind", ""))
        if ref is None or res is None:
            return None
        owner = self._lookup(res, namespace, ref.get("name", ""))
        if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
            return None
        parent = _controller_ref(owner)
        if res is REPLICA_SETS and parent is not None and parent.get("kind") == "Deployment":
            return self._controller_scale(namespace, parent)
        return owner["metadata"]["uid"], (owner.get("spec") or {}).get("replicas", 1)

    # ------------------------------------------------------------ request pipeline

    def _serve(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        url = urlsplit(handler.path)
        path, query = unquote(url.path), parse_qs(url.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RecordedRequest(handler.command, path, query, headers.get("content-type"),
                                 _decode_for_log(raw), headers)
        with self._lock:
            self._requests.append(record)
        outcome = self._handle(handler.command, path, query, headers, raw)
        if isinstance(outcome, _ExecSession):
            if headers.get("upgrade", "").lower() == "websocket":
                self._serve_exec(handler, headers, outcome.call, record)
                return
            outcome = _Response.error(bad_request("Upgrade request required"))
        record.status = outcome.status
        _write(handler, outcome)

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                headers: dict[str, str], raw: bytes) -> _Response | _ExecSession:
        try:
            self._apply_delays(method, path)
            self._authenticate(headers)
            self._inject_fault(method, path)
            if method == "GET" and path == "/version":
                return _Response.json(200, _VERSION)
            if method == "GET" and path in ("/healthz", "/readyz", "/livez"):
                return _Response.text(200, "ok")
            route = _parse_route(path)
            if _flag(query, "watch"):
                raise bad_request("FakeKubernetes does not implement watch")
            self._authorize(_verb(method, route), route)
            return self._dispatch(method, route, query, headers, raw)
        except ApiError as err:
            return _Response.error(err)
        except Exception as unexpected:  # a bug in the fake: answer 500, keep it for the test
            self.errors.append(unexpected)
            return _Response.error(ApiError(500, f"Internal error occurred: {unexpected!r}"))

    def _apply_delays(self, method: str, path: str) -> None:
        with self._lock:
            seconds = sum(d.seconds for d in self._delays
                          if d.method in ("*", method) and d.pattern.search(path))
        if seconds:
            time.sleep(seconds)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _inject_fault(self, method: str, path: str) -> None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is None:
                return
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
        retry_after = fault.retry_after
        if retry_after is None and fault.status == 429:
            retry_after = 1
        headers, details = {}, None
        if retry_after is not None:
            seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
            headers["Retry-After"] = str(seconds)
            details = {"retryAfterSeconds": math.ceil(retry_after)}
        message = _FAULT_MESSAGES.get(fault.status, f"injected by FakeKubernetes ({fault.status})")
        raise ApiError(fault.status, message, details=details, headers=headers, body=fault.body)

    def _authorize(self, verb: str, route: _Route) -> None:
        with self._lock:
            denied = any(v in ("*", verb) and r in ("*", route.authz_resource)
                         and ns in (None, route.namespace)
                         for v, r, ns in self._forbidden)
        if not denied:
            return
        res = route.resource
        where = f' in the namespace "{route.namespace}"' if route.namespace else \
            " at the cluster scope"
        why = (f'User "{self.user}" cannot {verb} resource "{route.authz_resource}" '
               f'in API group "{res.group}"{where}')
        subject = f'{res.qualified} "{route.name}"' if route.name else res.qualified
        raise ApiError(403, f"{subject} is forbidden: {why}", "Forbidden",
                       _details(res, route.name))

    def _dispatch(self, method: str, route: _Route, query: dict[str, list[str]],
                  headers: Mapping[str, str], raw: bytes) -> _Response | _ExecSession:
        sub = route.subresource
        if route.name is None:
            if method == "GET":
                return self._list(route, query)
            if method == "POST" and (route.namespace is not None or not route.resource.namespaced):
                return self._create(route, query, raw)
        elif sub == "eviction":
            if method == "POST":
                return self._evict(route, query, raw)
        elif sub == "exec":
            if method in ("GET", "POST"):
                return self._exec(route, query)
        elif sub == "log":
            if method == "GET":
                return self._log(route, query)
        elif method == "GET":
            return self._get(route)
        elif method == "PUT":
            return self._update(route, query, raw)
        elif method == "PATCH":
            return self._patch(route, query, headers, raw)
        elif method == "DELETE" and sub is None:
            return self._delete(route, query, raw)
        raise method_not_allowed()

    # ------------------------------------------------------------ verbs

    def _get(self, route: _Route) -> _Response:
        res = route.resource
        with self._lock:
            obj = self._existing(route)
            return _Response.json(200, self._presented(res, obj))

    def _existing(self, route: _Route) -> JsonObject:
        assert route.name is not None
        obj = self._lookup(route.resource, route.namespace, route.name)
        if obj is None:
            raise not_found(route.resource, route.name)
        return obj

    def _list(self, route: _Route, query: dict[str, list[str]]) -> _Response:
        res = route.resource
        try:
            labels = LabelSelector.parse(_param(query, "labelSelector") or "")
            fields = parse_field_selector(_param(query, "fieldSelector") or "")
        except ValueError as bad:
            raise bad_request(str(bad)) from None
        for requirement in fields:
            if requirement.field not in res.field_labels:
                raise bad_request(f"field label not supported: {requirement.field}")
        start = _decode_continue(_param(query, "continue"))
        limit = _int_param(query, "limit") or 0
        with self._lock:
            matched = [(key, obj) for key, obj in sorted(self._store[res.plural].items())
                       if (route.namespace is None or key[0] == route.namespace)
                       and (start is None or key > start)
                       and labels.matches(obj["metadata"].get("labels"))
                       and all(f.matches(res, obj) for f in fields)]
            list_meta: JsonObject = {"resourceVersion": str(self._resource_version)}
            if limit and len(matched) > limit:
                list_meta["continue"] = _encode_continue(matched[limit - 1][0])
                list_meta["remainingItemCount"] = len(matched) - limit
                matched = matched[:limit]
            items = [self._presented(res, obj, in_list=True) for _, obj in matched]
        return _Response.json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                    "metadata": list_meta, "items": items})

    def _create(self, route: _Route, query: dict[str, list[str]], raw: bytes) -> _Response:
        res = route.resource
        body = _object_body(res, raw)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced and meta.get("namespace") not in (None, "", route.namespace):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        dry_run = _dry_run(query)
        with self._lock:
            if res.namespaced and self._lookup(NAMESPACES, None, route.namespace or "") is None:
                raise not_found(NAMESPACES, route.namespace or "")
            created = self._create_object(res, route.namespace, body, dry_run=dry_run)
            return _Response.json(201, self._presented(res, created))

    def _update(self, route: _Route, query: dict[str, list[str]], raw: bytes) -> _Response:
        body = _object_body(route.resource, raw)
        dry_run = _dry_run(query)
        with self._lock:
            current = self._existing(route)
            return self._commit(route, current, body, dry_run)

    def _patch(self, route: _Route, query: dict[str, list[str]], headers: Mapping[str, str],
               raw: bytes) -> _Response:
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        patch = _json_body(raw)
        dry_run = _dry_run(query)
        with self._lock:
            current = self._existing(route)
            document = copy.deepcopy(current)
            try:
                if content_type == "application/json-patch+json":
                    patched = json_patch(document, patch)
                elif content_type == "application/merge-patch+json":
                    patched = json_merge_patch(document, _require_object_patch(patch))
                elif content_type == "application/strategic-merge-patch+json":
                    patched = strategic_merge_patch(document, _require_object_patch(patch))
                elif content_type == "application/apply-patch+yaml":
                    raise ApiError(415, "FakeKubernetes does not implement server-side apply "
                                        "(application/apply-patch+yaml)")
                else:
                    raise ApiError(415, "the body of the request was in an unknown format - "
                                        "accepted media types include: "
                                        "application/json-patch+json, "
                                        "application/merge-patch+json, "
                                        "application/apply-patch+yaml, "
                                        "application/strategic-merge-patch+json")
            except PatchError as failed:
                raise unprocessable(str(failed)) from None
            if not isinstance(patched, dict):
                raise unprocessable("the patched document is not an object")
            return self._commit(route, current, patched, dry_run)

    def _commit(self, route: _Route, current: JsonObject, candidate: JsonObject,
                dry_run: bool) -> _Response:
        """The shared end of PUT and PATCH: preconditions, server-owned fields, validation,
        generation, and a new resourceVersion only when something changed. Caller holds lock."""
        res, name = route.resource, route.name or ""
        meta = candidate.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name', '')}) does not match "
                              f"the name on the URL ({name})")
        if res.namespaced and meta.get("namespace") not in (None, "", route.namespace):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        current_meta = current["metadata"]
        version = meta.get("resourceVersion")
        if version and version != current_meta["resourceVersion"]:
            raise stale(res, name)
        if meta.get("uid") and meta["uid"] != current_meta["uid"]:
            raise conflict(res, name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                                      f"UID in object meta: {current_meta['uid']}")
        if route.subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(candidate.get("status"))
        else:
            new = copy.deepcopy(candidate)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        new_meta = new["metadata"]
        for server_owned in ("uid", "name", "namespace", "creationTimestamp", "generation",
                             "deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            if server_owned in current_meta:
                new_meta[server_owned] = current_meta[server_owned]
            else:
                new_meta.pop(server_owned, None)
        for key in [k for k, v in new_meta.items() if v in ({}, [])]:
            del new_meta[key]  # empty labels, ownerReferences... are omitted, as in Go
        errors = validate_object(res, new) + validate_update(res, current, new)
        if errors:
            raise invalid(res, name, errors)
        if _pruned(new.get("spec")) != _pruned(current.get("spec")):
            new_meta["generation"] = current_meta.get("generation", 1) + 1
        if new == current:
            return _Response.json(200, self._presented(res, current))
        if not dry_run:
            new_meta["resourceVersion"] = self._next_resource_version()
            self._store[res.plural][self._key(res, route.namespace, name)] = new
        return _Response.json(200, self._presented(res, new))

    def _delete(self, route: _Route, query: dict[str, list[str]], raw: bytes) -> _Response:
        res = route.resource
        options = _json_body(raw) or {}
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be an object")
        dry_run = _dry_run(query, options)
        grace_seconds = _int_param(query, "gracePeriodSeconds")
        if grace_seconds is None:
            grace_seconds = options.get("gracePeriodSeconds")
        with self._lock:
            current = self._existing(route)
            _check_preconditions(res, current, options.get("preconditions"))
            shown = self._presented(res, current)
            if not dry_run:
                del self._store[res.plural][self._key(res, route.namespace, route.name or "")]
        if not res.return_deleted:
            return _Response.json(200, {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _details(res, route.name, uid=current["metadata"]["uid"])})
        if grace_seconds is None:
            grace_seconds = (current.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        if grace_seconds:
            shown["metadata"]["deletionTimestamp"] = _now()
            shown["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
            if not dry_run:
                shown["metadata"]["resourceVersion"] = self._next_resource_version()
        return _Response.json(200, shown)

    def _evict(self, route: _Route, query: dict[str, list[str]], raw: bytes) -> _Response:
        """policy/v1 Eviction: the API server's checks, then delete (201 Success)."""
        eviction = _json_body(raw)
        if not isinstance(eviction, dict) or eviction.get("kind") not in (None, "Eviction"):
            raise bad_request("the body of an eviction must be a policy/v1 Eviction")
        eviction_name = (eviction.get("metadata") or {}).get("name")
        if eviction_name and eviction_name != route.name:
            raise bad_request("name in URL does not match name in Eviction object")
        options = eviction.get("deleteOptions") or {}
        dry_run = _dry_run(query, options)
        with self._lock:
            pod = self._existing(route)
            _check_preconditions(PODS, pod, options.get("preconditions"))
            if not _can_ignore_pdb(pod):
                self._check_disruption_budgets(pod)
            if not dry_run:
                del self._store["pods"][self._key(PODS, route.namespace, route.name or "")]
        return _Response.json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success", "code": 201})

    def _check_disruption_budgets(self, pod: JsonObject) -> None:
        namespace, labels = pod["metadata"]["namespace"], pod["metadata"].get("labels")
        budgets = []
        for (ns, _), pdb in sorted(self._store["poddisruptionbudgets"].items()):
            try:
                selector = LabelSelector.from_api((pdb.get("spec") or {}).get("selector"))
            except ValueError:
                continue
            if ns == namespace and selector is not None and selector.matches(labels):
                budgets.append(pdb)
        if len(budgets) > 1:
            raise ApiError(500, "This pod has more than one PodDisruptionBudget, which the "
                                "eviction subresource does not support.", "InternalError")
        if not budgets:
            return
        pdb = budgets[0]
        status = self._pdb_status(pdb)
        if not _pod_is_healthy(pod):
            policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy")
            if policy == "AlwaysAllow" or status["currentHealthy"] >= status["desiredHealthy"]:
                return
        if status["disruptionsAllowed"] > 0:
            return
        name = pdb["metadata"]["name"]
        raise ApiError(429, "Cannot evict pod as it would violate the pod's disruption budget.",
                       "TooManyRequests", {"causes": [{
                           "reason": "DisruptionBudget",
                           "message": f"The disruption budget {name} needs "
                                      f"{status['desiredHealthy']} healthy pods and has "
                                      f"{status['currentHealthy']} currently"}]})

    def _log(self, route: _Route, query: dict[str, list[str]]) -> _Response:
        with self._lock:
            pod = self._existing(route)
            container = _pick_container(pod, _param(query, "container"))
            namespace, name = route.namespace or "", route.name or ""
            text = self._logs.get((namespace, name, container),
                                  self._logs.get((namespace, name, None), ""))
        tail = _int_param(query, "tailLines")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        return _Response.text(200, text)

    def _exec(self, route: _Route, query: dict[str, list[str]]) -> _ExecSession:
        with self._lock:
            pod = self._existing(route)
            container = _pick_container(pod, _param(query, "container"))
        command = tuple(query.get("command") or ())
        if not command:
            raise bad_request("you must specify at least 1 command")
        call = ExecCall(route.namespace or "", route.name or "", container, command,
                        stdin=_flag(query, "stdin"), stdout=_flag(query, "stdout"),
                        stderr=_flag(query, "stderr"), tty=_flag(query, "tty"))
        if not (call.stdin or call.stdout or call.stderr):
            raise bad_request("you must specify at least one of stdin, stdout, stderr")
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise bad_request("cannot exec into a container in a completed pod; current phase "
                              f"is {phase}")
        return _ExecSession(call)

    def _exec_result(self, call: ExecCall) -> ExecResult:
        with self._lock:
            self._exec_calls.append(call)
            for key in ((call.namespace, call.pod, call.command),
                        (call.namespace, None, call.command), (None, None, call.command)):
                if key in self._exec_results:
                    return self._exec_results[key]
            handlers = list(self._exec_handlers)
        for handler in handlers:
            result = handler(call)
            if result is not None:
                return result
        return ExecResult(stderr=f"FakeKubernetes: no exec result programmed for "
                                 f"{list(call.command)}\n", exit_code=127)

    def _serve_exec(self, handler: _Handler, headers: Mapping[str, str], call: ExecCall,
                    record: RecordedRequest) -> None:
        """The WebSocket side of exec: v4/v5 channel protocol, output, status, close."""
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        protocol = next((p for p in ("v4.channel.k8s.io", "v5.channel.k8s.io") if p in offered),
                        None)
        key = headers.get("sec-websocket-key")
        if protocol is None or key is None:
            response = _Response.error(bad_request(
                "unable to upgrade connection: no supported channel protocol "
                "(v4.channel.k8s.io or v5.channel.k8s.io) was requested"))
            record.status = response.status
            _write(handler, response)
            return
        record.status = 101
        handshake = (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()  # RFC 6455
        accept = base64.b64encode(hashlib.sha1(handshake).digest()).decode()
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.send_header("Sec-WebSocket-Protocol", protocol)
        handler.end_headers()
        handler.close_connection = True
        result = self._exec_result(call)
        frames = []
        streams = ((1, call.stdout, result.stdout), (2, call.stderr, result.stderr))
        for channel, wanted, data in streams:
            payload = data.encode() if isinstance(data, str) else data
            if wanted and payload:
                frames.append(_ws_frame(0x2, bytes([channel]) + payload))
        frames.append(_ws_frame(0x2, bytes([3]) + json.dumps(_exec_status(call, result)).encode()))
        frames.append(_ws_frame(0x8, (1000).to_bytes(2, "big")))
        try:
            handler.wfile.write(b"".join(frames))
            handler.wfile.flush()
            handler.connection.settimeout(2)
            while True:  # until the client answers the close (opcode 8) or hangs up
                chunk = handler.connection.recv(65536)
                if not chunk or chunk[0] & 0x0F == 0x8:
                    break
        except OSError:
            pass


# ---------------------------------------------------------------- request helpers

_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2024-04-17T17:27:03Z", "goVersion": "go1.22.2",
            "compiler": "gc", "platform": "linux/amd64"}


def _parse_route(path: str) -> _Route:
    if m := re.fullmatch(r"/api/v1(/.*)?", path):
        group, version, rest = "", "v1", m.group(1)
    elif m := re.fullmatch(r"/apis/([^/]+)/([^/]+)(/.*)?", path):
        group, version, rest = m.group(1), m.group(2), m.group(3)
    else:
        raise unknown_path()
    parts = [p for p in (rest or "").split("/") if p]
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces" and (group, version, parts[2]) in _BY_URL:
        namespace, parts = parts[1], parts[2:]
    if not parts or len(parts) > 3:
        raise unknown_path()
    res = _BY_URL.get((group, version, parts[0]))
    name = parts[1] if len(parts) > 1 else None
    sub = parts[2] if len(parts) > 2 else None
    if res is None or (sub is not None and sub not in res.subresources):
        raise unknown_path()
    if (res.namespaced and namespace is None and name is not None) or \
            (not res.namespaced and namespace is not None):
        raise unknown_path()
    return _Route(res, namespace, name, sub)


def _verb(method: str, route: _Route) -> str:
    if route.subresource == "exec":
        return "create"
    if method == "GET":
        return "get" if route.name else "list"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = [v for v in query.get(name, []) if v != ""]
    return values[0] if values else None


def _int_param(query: Mapping[str, list[str]], name: str) -> int | None:
    value = _param(query, name)
    if value is None:
        return None
    if not re.fullmatch(r"-?\d+", value):
        raise bad_request(f'{name}: Invalid value: "{value}": must be an integer')
    return int(value)


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return (_param(query, name) or "").lower() in ("true", "1")


def _dry_run(query: Mapping[str, list[str]], options: JsonObject | None = None) -> bool:
    values = [v for v in query.get("dryRun", []) if v]
    values += list((options or {}).get("dryRun") or [])
    for value in values:
        if value != "All":
            raise bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return bool(values)


def _json_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as bad:
        raise bad_request(f"couldn't get version/kind; json parse error: {bad}") from None


def _object_body(res: Resource, raw: bytes) -> JsonObject:
    body = _json_body(raw)
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be a JSON object")
    if body.get("apiVersion") not in (None, res.api_version):
        raise bad_request(f"the API version in the data ({body['apiVersion']}) does not match "
                          f"the expected API version ({res.api_version})")
    if body.get("kind") not in (None, res.kind):
        raise bad_request(f"the kind in the data ({body['kind']}) does not match the expected "
                          f"kind ({res.kind})")
    return body


def _require_object_patch(patch: Any) -> JsonObject:
    if not isinstance(patch, dict):
        raise bad_request("error decoding patch: the patch must be a JSON object")
    return patch


def _check_preconditions(res: Resource, current: JsonObject, preconditions: Any) -> None:
    meta = current["metadata"]
    preconditions = preconditions or {}
    uid, version = preconditions.get("uid"), preconditions.get("resourceVersion")
    if uid and uid != meta["uid"]:
        raise conflict(res, meta["name"], f"Precondition failed: UID in precondition: {uid}, "
                                          f"UID in object meta: {meta['uid']}")
    if version and version != meta["resourceVersion"]:
        raise conflict(res, meta["name"], "Precondition failed: ResourceVersion in precondition: "
                                          f"{version}, ResourceVersion in object meta: "
                                          f"{meta['resourceVersion']}")


def _pick_container(pod: JsonObject, wanted: str | None) -> str:
    names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    pod_name = pod["metadata"]["name"]
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise bad_request(f"a container name must be specified for pod {pod_name}, choose one "
                          f"of: [{' '.join(names)}]")
    if wanted not in names:
        raise bad_request(f"container {wanted} is not valid for pod {pod_name}")
    return wanted


def _encode_continue(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_continue(token: str | None) -> tuple[str, str] | None:
    if token is None:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                          "(version meta.k8s.io/v1)") from None
    return str(namespace), str(name)


def _decode_for_log(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _exec_status(call: ExecCall, result: ExecResult) -> JsonObject:
    if result.exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command "
                       f"[{' '.join(call.command)}], exit code {result.exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(result.exit_code)}]}}


# ---------------------------------------------------------------- object builders

def _owner_reference(owner: JsonObject) -> JsonObject:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _pod_spec(containers: Sequence[Mapping[str, str]],
              service_account: str = "default") -> JsonObject:
    return {
        "containers": [{"name": c["name"], "image": c["image"], "imagePullPolicy": "IfNotPresent",
                        "resources": {}, "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"} for c in containers],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst", "serviceAccountName": service_account,
        "schedulerName": "default-scheduler", "enableServiceLinks": True,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300}],
    }


def _workload_spec(match_labels: Mapping[str, str], image: str, replicas: int | None) -> JsonObject:
    template_spec = _pod_spec([{"name": "app", "image": image}])
    del template_spec["tolerations"]  # the admission defaults land on pods, not templates
    spec: JsonObject = {"selector": {"matchLabels": dict(match_labels)},
                        "template": {"metadata": {"labels": dict(match_labels)},
                                     "spec": template_spec}}
    if replicas is not None:
        spec["replicas"] = replicas
    return spec


def _pod_conditions(phase: str, ready: bool) -> list[JsonObject]:
    now = _now()
    running = phase == "Running"
    states = {"PodReadyToStartContainers": phase != "Pending", "Initialized": phase != "Pending",
              "Ready": running and ready, "ContainersReady": running and ready,
              "PodScheduled": True}
    return [{"type": t, "status": "True" if ok else "False", "lastTransitionTime": now}
            for t, ok in states.items()]


def _container_state(phase: str, ready: bool) -> JsonObject:
    now = _now()
    if phase == "Running":
        state: JsonObject = {"running": {"startedAt": now}}
    elif phase == "Pending":
        state = {"waiting": {"reason": "ContainerCreating"}}
    else:
        code = 0 if phase == "Succeeded" else 1
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "startedAt": now, "finishedAt": now}}
    return {"state": state, "ready": phase == "Running" and ready, "started": phase == "Running"}


def _container_status(container: JsonObject, container_id: str, phase: str,
                      ready: bool) -> JsonObject:
    image = container["image"]
    reference, repository = _normalise_image(image)
    digest = hashlib.sha256(image.encode()).hexdigest()
    status: JsonObject = {"name": container["name"], "image": reference,
                          "imageID": f"{repository}@sha256:{digest}",
                          "restartCount": 0, "lastState": {}, **_container_state(phase, ready)}
    if phase != "Pending":
        status["containerID"] = container_id if "://" in container_id \
            else f"containerd://{container_id}"
    return status


def _normalise_image(image: str) -> tuple[str, str]:
    """("nginx:1.25") -> ("docker.io/library/nginx:1.25", "docker.io/library/nginx")."""
    name = image.split("@", 1)[0]
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    head, _, last = name.rpartition("/")
    repository = f"{head}/{last.split(':', 1)[0]}"
    if "@" in image:
        return f"{repository}@{image.split('@', 1)[1]}", repository
    return (name if ":" in last else f"{name}:latest"), repository


def _controller_ref(obj: JsonObject) -> JsonObject | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def _pod_is_healthy(pod: JsonObject) -> bool:
    """What the disruption controller counts: Running, Ready, not being deleted."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return ready is None or ready.get("status") == "True"


def _can_ignore_pdb(pod: JsonObject) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    deleting = bool(pod["metadata"].get("deletionTimestamp"))
    return deleting or phase in ("Succeeded", "Failed", "Pending")


def _scaled(value: int | str, total: int) -> int:
    """An int-or-percent against `total`, rounding up like the disruption controller."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%") and text[:-1].isdigit():
        return math.ceil(total * int(text[:-1]) / 100)
    return int(text) if text.isdigit() else 0


# ---------------------------------------------------------------- HTTP and WebSocket plumbing

def _write(handler: BaseHTTPRequestHandler, response: _Response) -> None:
    handler.send_response(response.status)
    handler.send_header("Content-Type", response.content_type)
    handler.send_header("Content-Length", str(len(response.body)))
    handler.send_header("Cache-Control", "no-cache, private")
    for name, value in response.headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(response.body)


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked WebSocket frame (servers never mask)."""
    header = bytearray([0x80 | opcode])
    size = len(payload)
    if size < 126:
        header.append(size)
    elif size < 1 << 16:
        header.append(126)
        header += size.to_bytes(2, "big")
    else:
        header.append(127)
        header += size.to_bytes(8, "big")
    return bytes(header) + payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKubernetes) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 pools expect
    server_version = "FakeKubernetes/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's request log is `FakeKubernetes.requests`."""
