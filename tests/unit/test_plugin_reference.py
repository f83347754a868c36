"""docs/PLUGINS.md is generated from the plug-ins' metadata and stays in step with it."""

from __future__ import annotations

from pathlib import Path

from responder.plugins import reference
from responder.plugins.registry import Plugin, load_all

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PLUGINS.md"


def _builtins() -> list[Plugin]:
    # Other tests register plug-ins of their own into the same process-wide registry.
    return [p for p in load_all() if p.run.__module__.startswith("responder.")]


def test_the_committed_plugin_reference_is_what_the_plugins_generate() -> None:
    generated = reference.markdown(_builtins())
    assert DOCS.read_text() == generated, (
        "docs/PLUGINS.md is stale: run `drift-responder actions list --markdown > "
        "docs/PLUGINS.md`")


def test_every_plugin_has_a_section_with_its_parameters_and_rbac() -> None:
    text = reference.markdown(_builtins())
    for plugin in _builtins():
        assert f"## `{plugin.name}`" in text
        for rule in plugin.rbac:
            assert f"`{', '.join(rule.resources)}`" in text
