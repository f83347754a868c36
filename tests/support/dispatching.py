"""A Dispatcher that records what it would send, for tests that drive the executor or the
planner in-process (the Celery dispatcher sends the same calls to real workers)."""

from __future__ import annotations

from typing import Any


class RecordingDispatcher:
    """``sent`` holds ("start", run), ("run_step", run, step, attempt) and ("notify", incident)
    in order; ``queues`` the queue each step attempt was sent to (None: the run queue). With
    ``starts_only`` anything but a start is a test failure."""

    def __init__(self, *, starts_only: bool = False) -> None:
        self.starts_only = starts_only
        self.sent: list[tuple[Any, ...]] = []
        self.queues: dict[tuple[str, str, int], str | None] = {}

    def start(self, run_id: str) -> None:
        self.sent.append(("start", run_id))

    def run_step(self, run_id: str, step_id: str, attempt: int, timeout_s: float,
                 queue: str | None = None) -> None:
        if self.starts_only:
            raise AssertionError(f"run_step {step_id} not expected")
        self.sent.append(("run_step", run_id, step_id, attempt))
        self.queues[(run_id, step_id, attempt)] = queue

    def notify(self, incident_id: str) -> None:
        if self.starts_only:
            raise AssertionError(f"notify {incident_id} not expected")
        self.sent.append(("notify", incident_id))

    @property
    def started(self) -> list[str]:
        return [s[1] for s in self.sent if s[0] == "start"]

    def routed(self) -> list[tuple[str, str | None]]:
        """(step, queue) of every step attempt sent, in order."""
        return [(s[2], self.queues[(s[1], s[2], s[3])]) for s in self.sent if s[0] == "run_step"]

    def notified(self) -> list[str]:
        """The notifications dispatched since the last call."""
        out = [s[1] for s in self.sent if s[0] == "notify"]
        self.sent = [s for s in self.sent if s[0] != "notify"]
        return out
