"""Who is who across transports, for the two-person rule.

An approver acts as a principal of one transport: ``slack:U01ABC`` (a Slack user id) or
``os:alice`` (the OS user behind the CLI). One person holding both could otherwise cast both
votes of a two-person decision. ``DRIFT_IDENTITIES`` names people and their principals::

    alice=slack:U01ABC,os:alice; bob=slack:U02DEF,os:bob

Principals not listed count as people of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PRINCIPAL = re.compile(r"^[a-z][a-z0-9-]*:[^\s,;=]+$")
_PERSON = re.compile(r"^[A-Za-z0-9._@-]+$")


class Identities:
    """principal -> person (``person:<name>``); anything unlisted is its own person."""

    def __init__(self, people: Mapping[str, str] | None = None) -> None:
        self._person_of = dict(people or {})

    @classmethod
    def parse(cls, text: str) -> Identities:
        """``name=principal,principal; name=...`` -> Identities, or ValueError naming the
        entry at fault (a principal under two people would let one vote count as another's)."""
        people: dict[str, str] = {}
        names: set[str] = set()
        for entry in (part.strip() for part in text.split(";")):
            if not entry:
                continue
            name, sep, listed = entry.partition("=")
            name = name.strip()
            if not sep or not _PERSON.match(name):
                raise ValueError(f"identities: {entry!r} is not 'name=kind:id,kind:id'")
            if name in names:
                raise ValueError(f"identities: {name!r} is listed twice")
            names.add(name)
            principals = [p.strip() for p in listed.split(",") if p.strip()]
            if not principals:
                raise ValueError(f"identities: {name!r} has no principals")
            for principal in principals:
                if not _PRINCIPAL.match(principal):
                    raise ValueError(f"identities: {principal!r} (of {name!r}) is not "
                                     "'kind:id' such as slack:U01ABC or os:alice")
                if principal in people:
                    raise ValueError(f"identities: {principal!r} belongs to both "
                                     f"{people[principal].removeprefix('person:')!r} and "
                                     f"{name!r}")
                people[principal] = f"person:{name}"
        return cls(people)

    def person(self, principal: str) -> str:
        return self._person_of.get(principal, principal)

    def __len__(self) -> int:
        return len(self._person_of)
