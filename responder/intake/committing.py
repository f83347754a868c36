"""Group commit for the HTTP intake.

Each request waits for its alerts to be durably recorded before it gets its 202, but requests that
arrive while a transaction is running share the next one. Throughput then scales with the batch,
not with the number of transactions, and no request is answered before its data is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from responder.intake.backends import UNAVAILABLE
from responder.intake.recording import SUPPRESSED, Recorded, Recorder
from responder.models.alerts import Alert


@dataclass(slots=True)
class _Pending:
    alerts: Sequence[Alert]
    future: asyncio.Future[Recorded]


class GroupCommitter:
    def __init__(self, recorder: Recorder, *, max_alerts: int = 5000) -> None:
        self.recorder = recorder
        self.max_alerts = max_alerts
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():  # nobody will commit these: let their requests fail
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("intake is shutting down"))

    async def submit(self, alerts: Sequence[Alert]) -> Recorded:
        """Record alerts; returns, once committed, the incident of each alert and the incidents
        this request opened (an incident opened by a shared transaction counts for the first
        request that named it)."""
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(alerts, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].alerts)
            while size < self.max_alerts and not self._queue.empty():
                pending = self._queue.get_nowait()
                batch.append(pending)
                size += len(pending.alerts)
            alerts = [a for p in batch for a in p.alerts]
            try:
                result: Recorded = await asyncio.to_thread(self.recorder.record, alerts)
            except UNAVAILABLE as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            except Exception:
                if len(batch) == 1:
                    raise_into(batch[0], sys.exc_info()[1])
                    continue
                # Something in one request broke the shared transaction: commit each request
                # on its own, so that only the culprit fails.
                for p in batch:
                    try:
                        alone = await asyncio.to_thread(self.recorder.record, p.alerts)
                    except Exception as exc:
                        raise_into(p, exc)
                    else:
                        if not p.future.done():
                            p.future.set_result(alone)
                continue
            unclaimed = set(result.opened)
            offset = 0
            for p in batch:
                ids = result.incident_ids[offset:offset + len(p.alerts)]
                offset += len(p.alerts)
                mine = [i for i in dict.fromkeys(ids) if i in unclaimed]
                unclaimed.difference_update(mine)
                suppressed = ids.count(SUPPRESSED) if result.suppressed else 0
                if not p.future.done():
                    p.future.set_result(Recorded(ids, opened=mine, suppressed=suppressed))


def raise_into(pending: _Pending, exc: BaseException | None) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc or RuntimeError("recording failed"))
