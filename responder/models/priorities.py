"""Falco priorities, ordered from Emergency (most severe) to Debug."""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """The integer is the rank: lower is more severe, so ``min`` gives the highest priority."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @property
    def label(self) -> str:
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Priority:
        """Case-insensitive, with the aliases Falco itself accepts in its configuration."""
        key = text.strip().lower()
        try:
            return _BY_NAME[key]
        except KeyError:
            names = ", ".join(p.label for p in cls)
            raise ValueError(f"unknown priority {text!r}; expected one of {names}") from None


_BY_NAME: dict[str, Priority] = {p.name.lower(): p for p in Priority}
_BY_NAME.update({"info": Priority.INFORMATIONAL, "warn": Priority.WARNING, "err": Priority.ERROR,
                 "crit": Priority.CRITICAL, "emerg": Priority.EMERGENCY})
