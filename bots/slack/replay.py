"""Replay protection in front of bolt: a signed Slack request is accepted once.

Bolt checks the signature and refuses requests more than five minutes old (either way: a
timestamp up to five minutes in the future passes too), but within that window a captured
request would be accepted again. This guard remembers every *valid* signature until its
timestamp leaves the window and refuses a second use with 401. Only valid signatures are
remembered, so forged requests cannot fill the memory (bolt refuses those anyway).

With Redis (``DRIFT_REDIS_URL``) the memory is shared by every bot process (``SET NX`` with a
TTL); without it, an in-process dict with expiry (one bot process).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis
from slack_sdk.signature import SignatureVerifier

#: Slack's (and bolt's) staleness limit, in seconds.
WINDOW_S = 5 * 60


class SeenStore(Protocol):
    def first_use(self, key: str, ttl_s: int) -> bool:
        """Remember ``key`` for ``ttl_s`` seconds; False when it was already remembered."""


class MemorySeen:
    """One process's memory of recent signatures, pruned as it goes."""

    def __init__(self) -> None:
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def first_use(self, key: str, ttl_s: int) -> bool:
        now = time.monotonic()
        with self._lock:
            if now >= self._next_prune:
                self._expires = {k: t for k, t in self._expires.items() if t > now}
                self._next_prune = now + 10
            expires = self._expires.get(key)
            if expires is not None and expires > now:
                return False
            self._expires[key] = now + ttl_s
            return True

    def __len__(self) -> int:
        return len(self._expires)


class RedisSeen:
    """Shared by every bot process: ``SET key 1 NX EX ttl``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def first_use(self, key: str, ttl_s: int) -> bool:
        return bool(self.client.set(f"{self.prefix}slack:seen:{key}", b"1", nx=True,
                                    ex=max(1, ttl_s)))


class ReplayGuard:
    def __init__(self, signing_secret: str, seen: SeenStore) -> None:
        self.verifier = SignatureVerifier(signing_secret)
        self.seen = seen

    def refusal(self, body: bytes, timestamp: str | None, signature: str | None) -> str | None:
        """Why to refuse this request before bolt sees it (401), or None to pass it on.

        Refused here: a missing or malformed timestamp or signature (bolt would answer 500 to
        a timestamp that is not a number), and a validly signed request seen before. Requests
        that are merely badly signed or stale are left to bolt, which refuses them (401)."""
        # isascii: str.isdigit() also accepts digits such as '\u00b2', which int() refuses.
        if not timestamp or not signature or not (timestamp.isascii() and timestamp.isdigit()) \
                or not signature.startswith("v0="):
            return "unsigned"
        try:
            body.decode("utf-8")  # Slack signs text; the verifier decodes it and would raise
        except UnicodeDecodeError:
            return "unsigned"
        if not self.verifier.is_valid(body, timestamp, signature):
            return None
        # Valid until its timestamp leaves the window; remember it that long (plus a second).
        ttl = int(int(timestamp) + WINDOW_S - time.time()) + 1
        return None if self.seen.first_use(signature, max(1, ttl)) else "replayed"
