"""Nanosecond timestamps. Falco times carry nanoseconds; ``datetime`` stops at microseconds, so we
keep integers of nanoseconds since the epoch and format them ourselves."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))$"
)
_NS = 1_000_000_000
#: Nanoseconds since the epoch are stored as 64-bit integers: that reaches 2262-04-11.
MAX_NS = 2**63 - 1


#: Seconds already parsed in Falco's own format (``2026-11-20T14:02:11.418220977Z``): a storm's
#: alerts share a few, and the full parse is most of an alert's validation time otherwise.
_SECONDS: dict[str, int] = {}
_SECONDS_MAX = 4096


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 text (fraction up to 9 digits, ``Z`` or an offset) -> ns since the epoch, UTC."""
    fraction = text[20:29]
    if not (len(text) == 30 and text[19] == "." and text[29] == "Z" and fraction.isdigit()
            and fraction.isascii()):
        return _parse_rfc3339_ns(text)
    second = _SECONDS.get(text[:19])
    if second is None:
        value = _parse_rfc3339_ns(text)
        second = value - int(fraction)
        if second < -MAX_NS or second + _NS - 1 > MAX_NS:  # some fraction would be out of range
            return value
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        _SECONDS[text[:19]] = second
    return second + int(fraction)


def _parse_rfc3339_ns(text: str) -> int:
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    if zulu:
        tz = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"not a valid UTC offset: {text[:64]!r}")
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    try:
        base = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                        tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {text[:64]!r} ({exc})") from None
    fraction_ns = int((frac or "0").ljust(9, "0"))
    value = int(base.timestamp()) * _NS + fraction_ns
    if not -MAX_NS <= value <= MAX_NS:
        raise ValueError(f"time out of range (1677 to 2262): {text[:64]!r}")
    return value


def format_ns(ns: int) -> str:
    """ns since the epoch -> ``2026-11-20T14:02:11.418220977Z``."""
    seconds, fraction = divmod(ns, _NS)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def now_ns() -> int:
    return time.time_ns()
