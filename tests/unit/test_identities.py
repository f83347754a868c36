"""DRIFT_IDENTITIES: who is who across transports, for the two-person rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from responder.models.identities import Identities
from responder.settings import Settings


def test_listed_principals_are_their_person_and_others_are_their_own() -> None:
    people = Identities.parse(" alice = slack:U01ABC, os:alice ; bob=slack:U02DEF,os:bob;")
    assert people.person("slack:U01ABC") == people.person("os:alice") == "person:alice"
    assert people.person("os:bob") == "person:bob"
    assert people.person("os:alice") != people.person("os:bob")
    assert people.person("slack:U09XYZ") == "slack:U09XYZ"
    assert len(people) == 4
    assert len(Identities.parse("")) == 0


@pytest.mark.parametrize(("text", "says"), [
    ("alice", "is not 'name=kind:id,kind:id'"),
    ("=slack:U1", "is not 'name=kind:id,kind:id'"),
    ("alice=", "has no principals"),
    ("alice=U01ABC", "is not 'kind:id'"),
    ("alice=slack:U1; bob=slack:U1", "belongs to both 'alice' and 'bob'"),
    ("alice=slack:U1; alice=os:alice", "listed twice"),
    ("al ice=slack:U1", "is not 'name=kind:id,kind:id'"),
])
def test_a_mapping_that_could_merge_or_confuse_people_is_refused_with_the_entry(
        text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"^identities: ") as refused:
        Identities.parse(text)
    assert says in str(refused.value)


def test_a_bad_mapping_stops_the_settings_from_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFT_IDENTITIES", "alice=slack:U1; bob=slack:U1")
    with pytest.raises(ValidationError, match="belongs to both"):
        Settings()
    monkeypatch.setenv("DRIFT_IDENTITIES", "alice=slack:U1,os:alice")
    assert Settings().identity_map.person("os:alice") == "person:alice"
