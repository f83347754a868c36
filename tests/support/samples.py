"""The Falco sample payloads from shared/samples/falco, and builders for synthetic alerts.

A checkout without the shared folder beside it uses the package's own copy of the same files
(responder/demo_alerts, which `make demo` posts); a test checks the two are identical."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any


def samples_dir() -> Path:
    env = os.environ.get("DRIFT_SAMPLES_DIR")
    if env:
        return Path(env)
    return shared_dir() or PACKAGED


#: The samples as the package ships them (identical to shared/samples/falco).
PACKAGED = Path(__file__).resolve().parents[2] / "responder" / "demo_alerts"


def shared_dir() -> Path | None:
    """shared/samples/falco when this checkout sits beside it."""
    for parent in Path(__file__).resolve().parents:
        for candidate in (parent / "shared" / "samples" / "falco",
                          parent.parent / "shared" / "samples" / "falco"):
            if candidate.is_dir():
                return candidate
    return None


def load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((samples_dir() / name).read_text())
    return value


def json_samples() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(samples_dir().glob("*.json"))}


def drift_alert(container: int, *, node: str = "node-1", rule: str | None = None,
                priority: str = "Critical", seq: int = 0) -> dict[str, Any]:
    """A falcosidekick-shaped drift alert for synthetic container number ``container``."""
    alert = copy.deepcopy(load("sidekick-drop-and-execute.json"))
    full = f"{container:012x}" + "ab" * 26
    alert["uuid"] = f"00000000-0000-4000-8000-{container:06x}{seq:06x}"[:36]
    alert["hostname"] = node
    alert["priority"] = priority
    if rule is not None:
        alert["rule"] = rule
    alert["output_fields"]["container.id"] = full[:12]
    alert["output_fields"]["container.full_id"] = full
    alert["output_fields"]["k8s.pod.name"] = f"web-{container}"
    return alert
