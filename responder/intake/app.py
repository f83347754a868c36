"""The HTTP intake: ``POST /v1/falco`` (a bare ASGI handler: it is the hot path) plus health,
readiness and metrics (Starlette).

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
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from responder.intake.backends import UNAVAILABLE, Backends
from responder.intake.committing import GroupCommitter
from responder.intake.memory import keep_large_buffers_mapped, release_free_memory
from responder.intake.metrics import IntakeMetrics
from responder.intake.parsing import BatchRejected, BodyError, parse_body
from responder.intake.suppressing import SuppressionCache

log = structlog.get_logger("drift.intake")


#: Bodies above this size (or of unknown size) are read, parsed and recorded one at a time.
HEAVY_BODY_BYTES = 1024 * 1024


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The sender disconnected before its body arrived: record nothing, answer nobody."""


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


_Answer = tuple[int, dict[str, Any], dict[str, str]]


def _reject(status: int, reason: str, detail: str, **extra: Any) -> _Answer:
    return status, {"error": reason, "detail": detail, **extra}, {}


def create_app(backends: Backends, *, insecure_no_auth: bool = False,
               metrics: IntakeMetrics | None = None) -> ASGIApp:
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

    accepted_latency = metrics.latency.labels("accepted")
    heavy_bodies = asyncio.Semaphore(1)
    keep_large_buffers_mapped()
    falco_prefix = "/v1/falco/"

    def authorised(path_token: str | None, authorization: str) -> bool:
        if token is None:
            return True
        presented = path_token
        if presented is None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return False
            presented = value.strip()
        return hmac.compare_digest(presented.encode(), token)

    async def read_body(declared: str | None, receive: Receive) -> bytes | bytearray:
        limit = settings.max_body_bytes
        expected = int(declared) if declared is not None and declared.isdigit() else None
        if expected is not None and expected > limit:
            raise _TooLarge
        # With a Content-Length the body is filled in place: joining chunks would hold a large
        # batch twice.
        buffer = bytearray(expected) if expected else None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone  # a truncated batch must not be half recorded
            chunk = message.get("body", b"")
            if chunk:
                if size + len(chunk) > limit:
                    raise _TooLarge
                if buffer is not None and size + len(chunk) <= len(buffer):
                    buffer[size:size + len(chunk)] = chunk
                else:  # no (or a wrong) Content-Length: collect and join
                    if buffer is not None:
                        chunks.append(bytes(buffer[:size]))
                        buffer = None
                    chunks.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                break
        if buffer is not None:
            return buffer if size == len(buffer) else buffer[:size]
        return b"".join(chunks)

    async def falco(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/falco[/<token>]`` as a bare ASGI app: the intake's hot path skips
        Starlette's routing, middleware and request objects (about half of its CPU per alert)."""
        started = time.perf_counter()
        path: str = scope["path"]
        path_token = path[len(falco_prefix):] if path.startswith(falco_prefix) else None
        authorization = ""
        content_type: str | None = None
        declared: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        try:
            status, answer, extra = await _falco(path_token, authorization, content_type,
                                                 declared, receive)
        except _ClientGone:
            metrics.rejected.labels("disconnected").inc()
            return
        body = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        if status == 202:
            accepted_latency.observe(elapsed)
        else:
            metrics.latency.labels(str(status)).observe(elapsed)

    async def _falco(path_token: str | None, authorization: str, content_type: str | None,
                     declared: str | None, receive: Receive) -> _Answer:
        if not authorised(path_token, authorization):
            metrics.rejected.labels("unauthorised").inc()
            return _reject(401, "unauthorised", "missing or invalid ingest token",
                           headers_hint="Authorization: Bearer <token> or POST /v1/falco/<token>")
        heavy = declared is None or not declared.isdigit() or int(declared) > HEAVY_BODY_BYTES
        if not heavy:
            return await _falco_body(declared, content_type, receive)
        # One large body at a time: a storm's batches then never hold several times their size
        # in memory. The others wait unread (TCP pushes back on their senders).
        async with heavy_bodies:
            try:
                return await _falco_body(declared, content_type, receive)
            finally:
                await asyncio.to_thread(release_free_memory)

    async def _falco_body(declared: str | None, content_type: str | None,
                          receive: Receive) -> _Answer:
        try:
            body = await read_body(declared, receive)
        except _TooLarge:
            metrics.rejected.labels("too_large").inc()
            return _reject(413, "too_large", f"body exceeds {settings.max_body_bytes} bytes")
        try:
            alerts = parse_body(body, content_type, max_items=settings.max_batch_alerts)
        except BodyError as exc:
            metrics.rejected.labels("unreadable").inc()
            return _reject(400, "unreadable", str(exc))
        except BatchRejected as exc:
            metrics.received.inc(exc.received)
            metrics.rejected.labels("invalid").inc()
            return _reject(422, "invalid", f"{exc.total} problem(s); nothing was recorded",
                           problems=[p.to_json() for p in exc.problems])
        del body  # the alerts keep their own lines: do not hold the whole body while committing
        metrics.received.inc(len(alerts))
        try:
            recorded = await committer.submit(alerts)
        except UNAVAILABLE as exc:
            metrics.rejected.labels("unavailable").inc()
            log.warning("intake.unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            status, refusal, _ = _reject(503, "unavailable",
                                         "the store or Redis is unreachable; retry")
            return status, refusal, {"Retry-After": "5"}
        metrics.accepted.inc(len(alerts))
        metrics.opened.inc(len(recorded.opened))
        metrics.dedup_hits.inc(len(alerts) - recorded.suppressed - len(recorded.opened))
        answer: dict[str, Any] = {"accepted": len(alerts), "incidents": recorded.incidents}
        if recorded.suppressed:
            answer["suppressed"] = recorded.suppressed
        return 202, answer, {}

    async def method_not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("Method Not Allowed", status_code=405,
                                headers={"Allow": "POST"})(scope, receive, send)

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
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.backends = backends

    async def intake(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/v1/falco" or (path.startswith(falco_prefix)
                                       and "/" not in path[len(falco_prefix):]
                                       and len(path) > len(falco_prefix)):
                handler = falco if scope["method"] == "POST" else method_not_allowed
                return await handler(scope, receive, send)
        await app(scope, receive, send)

    return intake
