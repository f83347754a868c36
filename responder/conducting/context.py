"""What expressions see of an alert and an incident: plain JSON data, never template source."""

from __future__ import annotations

from typing import Any

from responder.models.alerts import Alert
from responder.models.times import format_ns


def alert_context(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.alert_id, "rule": alert.rule, "priority": alert.priority.label,
        "time": format_ns(alert.time_ns), "output": alert.output, "source": alert.source,
        "node": alert.node, "hostname": alert.node, "tags": list(alert.tags),
        "fields": dict(alert.fields), "output_fields": dict(alert.fields),
        "container_id": alert.container_id, "container_full_id": alert.container_full_id,
        "container_name": alert.container_name, "namespace": alert.namespace, "pod": alert.pod,
        "pod_uid": alert.pod_uid, "image": alert.image,
    }
