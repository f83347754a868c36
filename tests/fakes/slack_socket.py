"""A Slack Socket Mode double: `apps.connections.open` on a `FakeSlack`, and the WebSocket server
the URLs it hands out point at. Code under test connects with the real `slack_sdk` Socket Mode
client (bolt's `SocketModeHandler`) given nothing more than the Web API `base_url`::

    with FakeSlack() as slack, FakeSocketMode(slack) as socket_mode:
        # start the app with SLACK_APP_TOKEN=socket_mode.app_token, DRIFT_SLACK_API_URL=...
        socket_mode.wait_connected()
        envelope = socket_mode.interactive(interactive_payload(block_actions_payload(...)))
        assert socket_mode.wait_ack(envelope).seconds < 3

The protocol, as Slack speaks it (https://docs.slack.dev/apis/events-api/using-socket-mode/)
    `apps.connections.open` takes the app-level token (`xapp-...`, as `Authorization: Bearer`)
    and answers `{"ok": true, "url": ...}`: `not_authed` without a token, `invalid_auth` for
    another token, `not_allowed_token_type` for a bot or user token. Each URL carries a
    single-use ticket; a handshake with an unknown or used ticket is refused (HTTP 401). On
    connecting, the server sends `{"type": "hello", "num_connections", "debug_info",
    "connection_info"}`. Envelopes are text frames
    `{"envelope_id", "type": "interactive"|"slash_commands"|"events_api", "payload",
    "accepts_response_payload"}` (events also `retry_attempt`, `retry_reason`); the app acks
    each by sending `{"envelope_id": ...}` back, with a `payload` only where the envelope
    accepts one (slash commands, view submissions). `{"type": "disconnect", "reason":
    "refresh_requested"}` asks the app to open a new connection (a new
    `apps.connections.open`); Slack closes the old one later, here when the app does or the
    test calls `close()`. Extra query parameters (`debug_reconnects=true`) are accepted.

Deliberate simplifications
    URLs are `ws://127.0.0.1:<port>/link/?ticket=...&app_id=...` (Slack's are `wss://`;
    slack_sdk's built-in client connects without TLS to any port but 443, whatever the
    scheme); envelopes go to the newest open connection (Slack spreads them over up to ten);
    an unacknowledged envelope is not retried; no rotation every few hours.

Also here: `interactive_payload` and `slash_command_payload`, which turn the form bodies that
tests/fakes/slack_api.py builds for HTTP mode into the JSON payloads Socket Mode carries.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from tests.fakes.slack_api import APP_ID, FakeSlack, SlackRequest

JsonObject = dict[str, Any]

DEFAULT_APP_TOKEN = "xapp-1-A0DRIFTAPP-1-fakeappleveltoken"
METHOD = "apps.connections.open"
PATH = "/link/"


@dataclass
class Ack:
    """An acknowledgement the app sent: `{"envelope_id", "payload"?}`."""

    envelope_id: str
    payload: JsonObject | None
    connection: int  # index in `FakeSocketMode.connections` it arrived on
    received_at: float  # time.monotonic()
    raw: str


@dataclass
class Envelope:
    """One envelope sent to the app, and its ack once received."""

    envelope_id: str
    type: str
    payload: JsonObject
    accepts_response_payload: bool
    connection: int
    sent_at: float  # time.monotonic()
    ack: Ack | None = None

    @property
    def seconds(self) -> float | None:
        """How long the app took to ack (None: not yet)."""
        return None if self.ack is None else self.ack.received_at - self.sent_at


@dataclass
class SocketConnection:
    """One WebSocket connection the app opened."""

    index: int
    ticket: str
    path: str  # the request target, query included
    query: dict[str, str]
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None  # from the close frame; None when the TCP just went away
    received: list[str] = field(default_factory=list)  # text frames, in order
    _ws: ServerConnection | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


class FakeSocketMode:
    """Socket Mode for a `FakeSlack` (see the module docstring). Read back `opens` (the
    `apps.connections.open` requests), `connections`, `envelopes`, `acks`, `refused`
    (handshakes turned away) and `errors` (frames that are not valid acks, acks of unknown or
    already acked envelopes: the test should assert it is empty)."""

    def __init__(self, slack: FakeSlack, *, app_token: str = DEFAULT_APP_TOKEN,
                 app_id: str = APP_ID, open_timeout: float = 10) -> None:
        self.slack = slack
        self.app_token = app_token
        self.app_id = app_id
        self.open_timeout = open_timeout
        self.errors: list[str] = []
        self.refused: list[tuple[str, int]] = []  # (path, HTTP status)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._tickets: dict[str, bool] = {}  # ticket -> used
        self._connections: list[SocketConnection] = []
        self._envelopes: dict[str, Envelope] = {}
        self._acks: list[Ack] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeSocketMode:
        if self._server is None:
            self._server = serve(self._handle, "127.0.0.1", 0,
                                 process_request=self._check_ticket, compression=None,
                                 open_timeout=self.open_timeout, close_timeout=2)
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            name="fake-slack-socket", daemon=True)
            self._thread.start()
            self.slack.serve(METHOD, self._connections_open)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`ws://127.0.0.1:<port>` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("FakeSocketMode is not started")
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"

    # ------------------------------------------------------------ reading back

    @property
    def opens(self) -> list[SlackRequest]:
        return self.slack.calls(METHOD)

    @property
    def connections(self) -> list[SocketConnection]:
        with self._lock:
            return list(self._connections)

    @property
    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes.values())

    @property
    def acks(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    def open_connections(self) -> list[SocketConnection]:
        return [c for c in self.connections if c.open]

    def wait_connected(self, count: int = 1, timeout: float = 30) -> SocketConnection:
        """Block until `count` connections have been opened in all (counting closed ones);
        return the `count`-th. Raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._connections) >= count, timeout):
                raise TimeoutError(f"{len(self._connections)} of {count} Socket Mode "
                                   f"connections within {timeout}s; refused: {self.refused}")
            return self._connections[count - 1]

    def wait_closed(self, connection: SocketConnection, timeout: float = 10) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: not connection.open, timeout):
                raise TimeoutError(f"connection {connection.index} still open after {timeout}s")

    def wait_ack(self, envelope: Envelope, timeout: float = 10) -> Ack:
        with self._cond:
            if not self._cond.wait_for(lambda: envelope.ack is not None, timeout):
                raise TimeoutError(f"no ack of {envelope.type} envelope {envelope.envelope_id} "
                                   f"within {timeout}s")
            assert envelope.ack is not None
            return envelope.ack

    # ------------------------------------------------------------ what Slack sends

    def push(self, type: str, payload: JsonObject, *, accepts_response_payload: bool,
             **extra: Any) -> Envelope:
        """Send an envelope on the newest open connection."""
        with self._lock:
            connection = self._current()
            envelope = Envelope(envelope_id=_envelope_id(), type=type, payload=payload,
                                accepts_response_payload=accepts_response_payload,
                                connection=connection.index, sent_at=time.monotonic())
            self._envelopes[envelope.envelope_id] = envelope
        frame = {"envelope_id": envelope.envelope_id, "payload": payload, "type": type,
                 "accepts_response_payload": accepts_response_payload, **extra}
        envelope.sent_at = time.monotonic()
        self._send(connection, frame)
        return envelope

    def interactive(self, payload: JsonObject) -> Envelope:
        """A block_actions, view_submission, ... payload (a view submission may be answered
        with a payload in its ack, such as `response_action: errors`)."""
        return self.push("interactive", payload,
                         accepts_response_payload=payload.get("type") == "view_submission")

    def slash_command(self, payload: JsonObject) -> Envelope:
        return self.push("slash_commands", payload, accepts_response_payload=True)

    def event(self, event: JsonObject, *, team_id: str = "T0DRIFT001",
              retry_attempt: int = 0) -> Envelope:
        """An Events API `event_callback` carrying `event`."""
        payload = {"token": "fakeVerificationToken", "team_id": team_id,
                   "api_app_id": self.app_id, "event": event, "type": "event_callback",
                   "event_id": "Ev" + secrets.token_hex(5).upper(),
                   "event_time": int(time.time()), "authorizations": [],
                   "is_ext_shared_channel": False}
        return self.push("events_api", payload, accepts_response_payload=False,
                         retry_attempt=retry_attempt, retry_reason="")

    def disconnect(self, reason: str = "refresh_requested") -> SocketConnection:
        """Ask the app, on the newest open connection, to reconnect; return that connection."""
        with self._lock:
            connection = self._current()
        self._send(connection, {"type": "disconnect", "reason": reason,
                                "debug_info": {"host": "applink-fake"}})
        return connection

    def close(self, connection: SocketConnection, code: int = 1001) -> None:
        """Close a connection from the server side (Slack's "going away")."""
        if connection._ws is not None:
            connection._ws.close(code)

    # ------------------------------------------------------------ serving

    def _current(self) -> SocketConnection:
        opened = [c for c in self._connections if c.open and c._ws is not None]
        if not opened:
            raise RuntimeError("the app has no open Socket Mode connection")
        return opened[-1]

    def _send(self, connection: SocketConnection, frame: JsonObject) -> None:
        assert connection._ws is not None
        connection._ws.send(json.dumps(frame, separators=(",", ":")))

    def _connections_open(self, req: SlackRequest) -> JsonObject:
        token = req.token
        if not token:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        ticket = secrets.token_hex(16)
        with self._lock:
            self._tickets[ticket] = False
        return {"ok": True, "url": f"{self.url}{PATH}?ticket={ticket}&app_id={self.app_id}"}

    def _check_ticket(self, ws: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        ticket = (parse_qs(target.query).get("ticket") or [""])[0]
        with self._lock:
            used = self._tickets.get(ticket)
            if target.path == PATH and used is False:
                self._tickets[ticket] = True
                return None
        status = 404 if target.path != PATH else 401
        with self._cond:
            self.refused.append((request.path, status))
            self._cond.notify_all()
        return ws.respond(status, "invalid ticket" if status == 401 else "not found")

    def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        target = urlsplit(request.path)
        query = dict(parse_qsl(target.query))
        with self._cond:
            connection = SocketConnection(index=len(self._connections),
                                          ticket=query.get("ticket", ""), path=request.path,
                                          query=query, opened_at=time.monotonic(), _ws=ws)
            self._connections.append(connection)
            live = sum(1 for c in self._connections if c.open)
            self._cond.notify_all()
        try:
            ws.send(json.dumps({
                "type": "hello", "num_connections": live,
                "debug_info": {"host": "applink-fake", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id}}))
            for frame in ws:
                self._receive(connection, frame)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                connection.closed_at = time.monotonic()
                with contextlib.suppress(Exception):
                    connection.close_code = ws.close_code
                self._cond.notify_all()

    def _receive(self, connection: SocketConnection, frame: str | bytes) -> None:
        at = time.monotonic()
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        with self._cond:
            connection.received.append(text)
            try:
                message = json.loads(text)
            except ValueError:
                self.errors.append(f"not JSON on connection {connection.index}: {text[:200]}")
                return
            envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
            envelope = self._envelopes.get(str(envelope_id)) if envelope_id else None
            if envelope is None:
                self.errors.append(f"not an ack of an envelope sent: {text[:200]}")
                return
            if envelope.ack is not None:
                self.errors.append(f"envelope {envelope_id} acked twice: {text[:200]}")
                return
            payload = message.get("payload")
            if payload is not None and not envelope.accepts_response_payload:
                self.errors.append(f"payload in the ack of a {envelope.type} envelope that "
                                   f"accepts none: {text[:200]}")
            envelope.ack = Ack(envelope_id=str(envelope_id), payload=payload,
                               connection=connection.index, received_at=at, raw=text)
            self._acks.append(envelope.ack)
            self._cond.notify_all()


def _envelope_id() -> str:
    """Shaped like Slack's (a UUID)."""
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


# ---------------------------------------------------------------- payloads Slack sends

def interactive_payload(form_body: bytes) -> JsonObject:
    """The JSON payload of an interactive request (`block_actions_payload`,
    `view_submission_payload`): in Socket Mode it travels as an object, not form-encoded."""
    decoded: JsonObject = json.loads(parse_qs(form_body.decode())["payload"][0])
    return decoded


def slash_command_payload(form_body: bytes) -> JsonObject:
    """The payload of a slash command (`slash_command_body`): the same fields, all strings."""
    return dict(parse_qsl(form_body.decode(), keep_blank_values=True))

