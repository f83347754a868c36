"""The prompt's state without Slack: the console notifier's evidence lines, and the fingerprint
that keeps an identical render from being sent twice."""

from __future__ import annotations

from structlog.testing import capture_logs

from responder.plugins.notify.console import ConsoleNotifier
from responder.plugins.notify.views import (
    DiffEntryView,
    FilesystemDiffView,
    ProcessTreeView,
    PromptView,
)
from responder.workers.notifying import fingerprint


def _view() -> PromptView:
    return PromptView(incident_id="01INC", priority="Critical", rules=["Drift"], namespace="shop",
                      pod="web-1", node="node-1", container_id="4b1c9e7f2a3d", image="img",
                      alert_count=1, output="drift")


def test_the_console_notifier_logs_the_process_tree_excerpt_and_the_diff_summary() -> None:
    view = _view()
    view.process_trees.append(ProcessTreeView(
        step_id="tree", method="exec", assurance="low", node=None, container_id="4b1c9e7f2a3d",
        processes_total=2, excerpt="1/1 root /pause\n>> 42/2 root /tmp/x",
        flagged=["pid 42 /tmp/x"]))
    view.diffs.append(FilesystemDiffView(
        step_id="diff", method="node-agent", assurance="high", node="node-1", added=1,
        changed=0, deleted=0, executables_added=1,
        notable=[DiffEntryView(kind="A", path="/tmp/x", type="file", sha256="ab" * 32,
                               elf=True, flagged=True)]))
    with capture_logs() as logs:
        ConsoleNotifier().sync(view, None, "#secops")
    [tree] = [e for e in logs if e["event"] == "incident.evidence.process_tree"]
    assert (tree["method"], tree["assurance"]) == ("exec", "low")
    assert tree["excerpt"].endswith(">> 42/2 root /tmp/x")
    [diff] = [e for e in logs if e["event"] == "incident.evidence.filesystem_diff"]
    assert (diff["added"], diff["executables_added"]) == (1, 1)
    assert diff["notable"] == [{"kind": "A", "path": "/tmp/x", "flagged": True,
                                "sha256": "abababababab", "what": "ELF"}]


def test_the_fingerprint_changes_with_what_the_message_shows_and_only_then() -> None:
    assert fingerprint(_view()) == fingerprint(_view())
    changed = _view()
    changed.alert_count = 2
    assert fingerprint(changed) != fingerprint(_view())
