"""The Slack bot: a slack-bolt ``App`` with the approval and ``/drift`` listeners, served over
HTTP (Starlette + uvicorn, ``POST /slack/events``) or Socket Mode.

HTTP mode: bolt verifies each request's signature and refuses requests more than five minutes
old (401); in front of it, :mod:`bots.slack.replay` refuses a validly signed request seen before
(401). ``GET /healthz`` answers 200 for probes. Socket Mode (``SLACK_APP_TOKEN`` set) needs no
public URL and no signing secret: the WebSocket is authenticated instead.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import redis
import structlog
from slack_bolt import App
from slack_bolt.adapter.starlette.handler import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin.client import SocketModeClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bots.slack.authorising import CommandUsers, GroupResolver
from bots.slack.listeners import Approvals
from bots.slack.replay import MemorySeen, RedisSeen, ReplayGuard, SeenStore
from bots.slack.slash import SlashCommands
from responder.conducting.dispatching import Dispatcher
from responder.settings import Settings
from responder.stopping import StopSignals
from responder.workers.executing import Executor

log = structlog.get_logger("drift.slack")

#: How long a stopping Socket Mode bot waits for the envelopes and listeners in progress.
STOP_TIMEOUT_S = 25.0


def web_client(settings: Settings) -> WebClient:
    if settings.slack_bot_token is None:
        raise ValueError("SLACK_BOT_TOKEN is not set")
    return WebClient(token=settings.slack_bot_token.get_secret_value(),
                     base_url=settings.slack_api_url, timeout=10)


def create_app(settings: Settings, executor: Executor, dispatcher: Dispatcher,
               client: WebClient, listener_executor: ThreadPoolExecutor | None = None) -> App:
    """The bolt app. ``client`` is the bot's Web API client (``base_url`` from
    ``DRIFT_SLACK_API_URL``); listeners use it rather than bolt's per-request copy.
    ``listener_executor``: where listeners run after their ack (bolt makes its own if None)."""
    secret = settings.slack_signing_secret.get_secret_value() \
        if settings.slack_signing_secret else ""
    app = App(client=client, signing_secret=secret, logger=logging.getLogger("drift.slack.bolt"),
              listener_executor=listener_executor)
    groups = GroupResolver(client)
    Approvals(executor, dispatcher, client, groups).register(app)
    SlashCommands(settings, executor.engine,
                  CommandUsers(settings.slack_command_users, groups)).register(app)
    return app


def stop_socket_mode(client: SocketModeClient, listeners: ThreadPoolExecutor,
                     timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop taking envelopes, let those taken finish, then exit. -> whether everything finished.

    An envelope acked and then cut short by the process exiting would be lost (its decision
    never recorded, the analyst told nothing). So: no new envelopes are taken; the ones being
    handled finish and send their acks while the socket is still open; then the socket is
    closed (Slack stops sending here) and the listeners' work after their ack finishes (it
    talks to the Web API, not the socket). Bounded by ``timeout_s`` (Kubernetes kills a pod 30
    s after SIGTERM by default); the caller exits at once when it runs out."""
    log.info("slack.stopping")
    finished = threading.Event()

    def drain() -> None:
        # The queue reader loops until `closed`, then its runner can be joined.
        client.closed = True
        client.message_processor.shutdown()  # type: ignore[no-untyped-call]
        client.message_workers.shutdown(wait=True)  # those taken: handled and acked
        client.auto_reconnect_enabled = False
        client.disconnect()
        listeners.shutdown(wait=True)  # listeners' work after their ack
        finished.set()

    threading.Thread(target=drain, name="slack-drain", daemon=True).start()
    if not finished.wait(timeout_s):
        log.warning("slack.stop_timed_out", seconds=timeout_s)
        return False
    client.close()
    log.info("slack.stopped")
    return True


def seen_store(settings: Settings, redis_client: redis.Redis | None) -> SeenStore:
    if settings.redis_url and redis_client is not None:
        return RedisSeen(redis_client, settings.redis_prefix)
    return MemorySeen()


def create_http_app(app: App, guard: ReplayGuard) -> Starlette:
    handler = SlackRequestHandler(app)

    async def events(request: Request) -> Response:
        body = await request.body()  # cached by Starlette: bolt's handler reads it again
        try:
            refusal = guard.refusal(body, request.headers.get("x-slack-request-timestamp"),
                                    request.headers.get("x-slack-signature"))
        except redis.RedisError as exc:  # cannot tell: refuse rather than risk a replay
            log.warning("slack.replay_store_unavailable", error=repr(exc))
            return PlainTextResponse("try again", status_code=503,
                                     headers={"Retry-After": "1"})
        if refusal is not None:
            log.warning("slack.request_refused", reason=refusal)
            return PlainTextResponse(f"{refusal} request", status_code=401)
        # Note: bolt's handler dispatches synchronously; listeners ack at once and do their
        # work on bolt's thread pool, so the event loop is held only until the ack.
        return await handler.handle(request)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])])


def run(settings: Settings, executor: Executor, dispatcher: Dispatcher,
        redis_client: redis.Redis | None, *, host: str, port: int) -> None:
    """Serve until stopped: Socket Mode when SLACK_APP_TOKEN is set, else HTTP."""
    client = web_client(settings)
    listeners = ThreadPoolExecutor(max_workers=10, thread_name_prefix="slack-listener")
    app = create_app(settings, executor, dispatcher, client, listeners)
    if settings.slack_app_token is not None:
        # slack_sdk's built-in client: apps.connections.open with the app token (on
        # DRIFT_SLACK_API_URL), then the WebSocket; it acks each envelope once bolt's listener
        # has acked, and reconnects on `disconnect` or a closed socket. Signatures are not used
        # here; the app token authenticates. Tested against tests/fakes/slack_socket.py.
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, settings.slack_app_token.get_secret_value(),
                                    web_client=WebClient(base_url=settings.slack_api_url,
                                                         timeout=10))
        signals = StopSignals(second_exits=True)
        handler.connect()  # type: ignore[no-untyped-call]
        log.info("slack.socket_mode_connected")
        signals.wait()
        if not stop_socket_mode(handler.client, listeners):
            os._exit(1)  # a listener is stuck: its threads would keep the process alive
        return
    if settings.slack_signing_secret is None:
        raise ValueError("SLACK_SIGNING_SECRET is not set: HTTP mode cannot verify requests")
    import uvicorn

    guard = ReplayGuard(settings.slack_signing_secret.get_secret_value(),
                        seen_store(settings, redis_client))
    uvicorn.run(create_http_app(app, guard), host=host, port=port, access_log=False,
                log_level="warning", server_header=False)
    listeners.shutdown(wait=True)  # uvicorn has answered every request: finish their work
