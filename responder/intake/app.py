"""The HTTP intake (Starlette): ``POST /v1/falco`` plus health, readiness and metrics.

Falco's ``http_output`` cannot set headers, so the token may also be the last path segment.
Answers: 202 recorded; 400 unreadable body; 401 bad auth; 413 too large; 422 invalid alerts
(all reasons, with item indexes; nothing recorded); 503 when the store or Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from responder.intake.backends import UNAVAILABLE, Backends
from responder.intake.committing import GroupCommitter
from responder.intake.metrics import IntakeMetrics
from responder.intake.parsing import BatchRejected, BodyError, decode_body, validate_items
from responder.intake.suppressing import SuppressionCache

log = structlog.get_logger("drift.intake")


class _TooLarge(Exception):
    pass


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _reject(status: int, reason: str, detail: str, **extra: Any) -> Response:
    return OrjsonResponse({"error": reason, "detail": detail, **extra}, status_code=status)


def create_app(backends: Backends, *, insecure_no_auth: bool = False,
               metrics: IntakeMetrics | None = None) -> Starlette:
    settings = backends.settings
    token = settings.ingest_token.get_secret_value().encode() if settings.ingest_token else None
    if token is None and not insecure_no_auth:
        raise ValueError("no DRIFT_INGEST_TOKEN is set: refusing to accept unauthenticated "
                         "alerts (pass --insecure-no-auth to run without one)")
    metrics = metrics or IntakeMetrics()
    committer = GroupCommitter(backends.recorder)
    suppressions = backends.suppressions
    if suppressions is not None:
        metrics.watch_suppressions(suppressions.totals)

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        presented = request.path_params.get("token")
        if presented is None:
            header = request.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                return False
            presented = value.strip()
        return hmac.compare_digest(presented.encode(), token)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def falco(request: Request) -> Response:
        started = time.perf_counter()
        response = await _falco(request)
        outcome = "accepted" if response.status_code == 202 else str(response.status_code)
        metrics.latency.labels(outcome).observe(time.perf_counter() - started)
        return response

    async def _falco(request: Request) -> Response:
        if not authorised(request):
            metrics.rejected.labels("unauthorised").inc()
            return _reject(401, "unauthorised", "missing or invalid ingest token",
                           headers_hint="Authorization: Bearer <token> or POST /v1/falco/<token>")
        try:
            body = await read_body(request)
        except _TooLarge:
            metrics.rejected.labels("too_large").inc()
            return _reject(413, "too_large", f"body exceeds {settings.max_body_bytes} bytes")
        try:
            items = decode_body(body, request.headers.get("content-type"),
                                max_items=settings.max_batch_alerts)
        except BodyError as exc:
            metrics.rejected.labels("unreadable").inc()
            return _reject(400, "unreadable", str(exc))
        metrics.received.inc(len(items))
        try:
            alerts = validate_items(items)
        except BatchRejected as exc:
            metrics.rejected.labels("invalid").inc()
            return _reject(422, "invalid", f"{exc.total} problem(s); nothing was recorded",
                           problems=[p.to_json() for p in exc.problems])
        try:
            recorded = await committer.submit(alerts)
        except UNAVAILABLE as exc:
            metrics.rejected.labels("unavailable").inc()
            log.warning("intake.unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            response = _reject(503, "unavailable", "the store or Redis is unreachable; retry")
            response.headers["Retry-After"] = "5"
            return response
        metrics.accepted.inc(len(alerts))
        metrics.opened.inc(len(recorded.opened))
        metrics.dedup_hits.inc(len(alerts) - recorded.suppressed - len(recorded.opened))
        answer: dict[str, Any] = {"accepted": len(alerts), "incidents": recorded.incidents}
        if recorded.suppressed:
            answer["suppressed"] = recorded.suppressed
        return OrjsonResponse(answer, status_code=202)

    async def healthz(_: Request) -> Response:
        return OrjsonResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        status = await asyncio.to_thread(backends.check_ready)
        ready = all(v == "ok" for v in status.values())
        return OrjsonResponse({"ready": ready, **status}, status_code=200 if ready else 503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def flush_audit_forever() -> None:
        period = max(1.0, settings.audit_every_seconds / 2)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(backends.recorder.flush_audit)
            except UNAVAILABLE as exc:
                log.warning("intake.audit_flush_failed", error=type(exc).__name__)

    async def refresh_suppressions_forever(cache: SuppressionCache) -> None:
        # Off the request path: the recorder only refreshes itself when this falls behind.
        while True:
            try:
                await asyncio.to_thread(cache.refresh)
            except Exception:  # store errors are handled inside; anything else must not stop it
                log.exception("intake.suppressions_refresh_failed")
            await asyncio.sleep(cache.refresh_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        committer.start()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(flush_audit_forever())]
        if suppressions is not None:
            tasks.append(loop.create_task(refresh_suppressions_forever(suppressions)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await committer.stop()
            if suppressions is not None:
                await asyncio.to_thread(suppressions.flush)

    routes = [
        Route("/v1/falco", falco, methods=["POST"]),
        Route("/v1/falco/{token}", falco, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.backends = backends
    return app
