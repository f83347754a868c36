"""The README's configuration table names every setting (issue: "configuration table (every
DRIFT_*)"), so a new knob cannot ship undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from responder.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _env_name(name: str, field: object) -> str:
    alias = getattr(field, "alias", None)
    return str(alias) if alias else f"DRIFT_{name.upper()}"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration"):]
    table = table[:table.index("\n## ", 1)]
    documented = set(re.findall(r"`((?:DRIFT|SLACK)_[A-Z0-9_]+)`", table))
    missing = sorted(_env_name(name, field) for name, field in Settings.model_fields.items()
                     if _env_name(name, field) not in documented)
    assert missing == [], f"add to README's configuration table: {missing}"
