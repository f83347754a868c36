"""Stopping a long-running command on SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
import time


class StopSignals:
    """SIGTERM and SIGINT, from when this is made: :attr:`requested` turns true at the first;
    with ``second_exits``, a second one exits the process at once (for a drain that could take
    long). A flag polled with short sleeps, not a threading.Event: a handler calling Event.set()
    while the main thread is inside Event.wait() deadlocks on the Event's lock."""

    def __init__(self, *, second_exits: bool = False) -> None:
        self._received: list[int] = []
        self._second_exits = second_exits
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self._received and self._second_exits:
            os._exit(128 + signum)  # asked twice: do not wait any longer
        self._received.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self._received)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is requested (-> True) or ``timeout`` seconds pass (-> False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._received:
            left = 0.2 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.2, left))
        return True
