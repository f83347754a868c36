"""How decided work leaves the process: an interface, so that the intake and the CLI can start
runs without importing Celery (the workers provide the Celery implementation)."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def start(self, run_id: str) -> None:
        """Ask a worker to start a pending run."""

    def run_step(self, run_id: str, step_id: str, attempt: int, timeout_s: float,
                 queue: str | None = None) -> None:
        """Ask a worker to run one attempt of a step (on ``queue``: a node agent's)."""

    def notify(self, incident_id: str) -> None:
        """Ask a worker to bring the incident's message up to date."""
