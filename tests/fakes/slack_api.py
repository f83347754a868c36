"""A Slack Web API double that speaks the real wire protocol, plus builders for Slack's requests.

`FakeSlack` runs a threaded HTTP server on 127.0.0.1. Code under test reaches it through the real
`slack_sdk.WebClient` (or a bolt `App` built on one) given nothing more than `base_url`; nothing
in the code under test is patched::

    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.base_url)
        posted = client.chat_postMessage(channel="#secops", text="drift on web-1", blocks=[...])
        client.chat_update(channel=posted["channel"], ts=posted["ts"], text="isolated")
        assert slack.messages("#secops")[0]["text"] == "isolated"

Served (POST or GET to `<base_url><method>`; form, JSON or multipart bodies, query strings)
    auth.test; chat.postMessage, chat.update, chat.postEphemeral, chat.delete,
    chat.getPermalink; files.getUploadURLExternal, the upload URL it hands out,
    files.completeUploadExternal; usergroups.list, usergroups.users.list; views.open;
    response URLs issued by `response_url()` (what bolt's `respond()` posts to); methods
    added with `serve()` (tests/fakes/slack_socket.py adds apps.connections.open).
    files.upload answers `method_deprecated`; every other method answers `unknown_method`.

Kept faithful, because code under test depends on it
    HTTP 200 with `{"ok": false, "error": ...}` for API errors; `not_authed` without a token,
    `invalid_auth` for another token (the token comes from `Authorization: Bearer` or a form
    `token` field, never from a JSON body or the query string); `missing_scope` with
    `needed`/`provided` when `scopes=` leaves one out, and the `x-oauth-scopes` header that
    bolt reads; HTTP 429 + `Retry-After` (integer seconds) + `ratelimited`; the response
    shapes (`channel` is always an id, `ts` unique and increasing, `message` objects with
    `bot_id`/`app_id`/`team`); `invalid_blocks` with Slack-style `[json-pointer:...]` errors,
    `invalid_blocks_format` for undecodable blocks, `no_text`, `msg_too_long`;
    `channel_not_found` (chat.update/chat.delete want a channel id, as Slack does);
    `message_not_found`, `cant_update_message` for messages the bot did not post;
    `user_not_in_channel` when a channel has registered members; chat.update keeps the
    previous blocks/attachments when they are not sent; a thread reply counts on its parent;
    files.completeUploadExternal fails with `file_not_found` unless the bytes were posted to
    the upload URL, and shares the file into the channel as a message; usergroups by id;
    views.open validates the modal (`invalid_arguments`) and a trigger id works once
    (`exchanged_trigger_id`); the JSON `missing_charset` warning.

Deliberate simplifications
    No real rate limits (only the programmed ones); no conversations.*, users.*, views.update/
    push/publish, reactions or pins; the bot is a member of every channel; blocks are stored as
    sent (Slack would add block_ids) and validated only for the common block types; message
    text is not escaped or unfurled; response URLs never expire and answer `{"ok": true}`.

Also here: `signed_request_headers` and builders of the bodies Slack sends to the app
(`block_actions_payload`, `view_submission_payload`, `slash_command_body`), byte-compatible
with what slack_bolt parses and verifies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import mimetypes
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

JsonObject = dict[str, Any]

DEFAULT_TOKEN = "xoxb-test"
TEAM_ID = "T0DRIFT001"
TEAM_DOMAIN = "drift-test"
TEAM_NAME = "Drift Test"
BOT_USER_ID = "U0DRIFTBOT"
BOT_USER_NAME = "drift-responder"
BOT_ID = "B0DRIFTBOT"
APP_ID = "A0DRIFTAPP"
DEFAULT_SCOPES = ("chat:write", "chat:write.public", "commands", "files:write",
                  "usergroups:read", "users:read")

UPLOAD = "upload"  # pseudo method name of requests to upload URLs (in `requests`, faults, delays)
RESPONSE_URL = "response_url"  # pseudo method name of posts to response URLs

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_SECTION_TEXT = 3000
MAX_MESSAGE_TEXT = 40000

_SCOPE_NEEDED = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.delete": "chat:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "usergroups.list": "usergroups:read",
    "usergroups.users.list": "usergroups:read",
}
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_BLOCK_TYPES = frozenset({
    "actions", "call", "context", "context_actions", "divider", "file", "header", "image",
    "input", "markdown", "rich_text", "section", "table", "video"})
_JSON_ARGS = ("blocks", "attachments", "view", "metadata")


# ---------------------------------------------------------------- recorded things

@dataclass
class SlackRequest:
    """One request the fake received (in arrival order) and what it answered."""

    method: str  # API method ("chat.postMessage"), or UPLOAD / RESPONSE_URL
    args: JsonObject  # query + body; blocks/attachments/view/metadata decoded from JSON strings
    headers: dict[str, str]  # names in lower case
    http_method: str
    path: str
    content_type: str | None
    body: bytes
    token: str | None
    received_at: float  # time.monotonic() on arrival
    received_ns: int  # time.time_ns() on arrival
    status: int | None = None  # HTTP status, once answered
    response: Any = None  # the JSON answered (None for non-JSON answers)
    answered_at: float | None = None  # time.monotonic() when the answer was ready

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.response, dict) and bool(
            self.response.get("ok"))

    @property
    def error(self) -> str | None:
        return self.response.get("error") if isinstance(self.response, dict) else None


@dataclass
class Upload:
    """A file announced by files.getUploadURLExternal, its bytes, and where it was shared."""

    file_id: str
    filename: str
    length: int  # as announced
    upload_url: str
    data: bytes | None = None  # what was posted to the upload URL
    title: str | None = None
    channel: str | None = None  # channel id given to files.completeUploadExternal
    thread_ts: str | None = None
    initial_comment: str | None = None
    alt_txt: str | None = None
    snippet_type: str | None = None
    completed: bool = False

    @property
    def uploaded(self) -> bool:
        return self.data is not None


@dataclass
class OpenedView:
    id: str
    trigger_id: str
    view: JsonObject  # the view object as views.open answered it


@dataclass
class ResponseUrlPost:
    """One post to a URL from `FakeSlack.response_url`."""

    url: str
    payload: JsonObject
    channel: str | None
    message_ts: str | None
    user: str | None
    received_at: float
    received_ns: int


@dataclass
class _Fault:
    status: int
    remaining: int
    error: str
    body: bytes | str | None
    retry_after: int | None


@dataclass
class _Channel:
    id: str
    name: str | None
    members: set[str] | None  # None: anyone is a member


@dataclass
class _ResponseTarget:
    url: str
    channel: str | None
    message_ts: str | None
    user: str | None


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None

    @classmethod
    def of_json(cls, obj: Any, status: int = 200,
                headers: Mapping[str, str] | None = None) -> _Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, body, headers=dict(headers or {}), json=obj)

    @classmethod
    def of_text(cls, status: int, text: str) -> _Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


class _SlackError(Exception):
    """An API error answered as HTTP 200 `{"ok": false, "error": ..., **extra}`."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


def _invalid_arguments(*messages: str) -> _SlackError:
    return _SlackError("invalid_arguments",
                       response_metadata={"messages": [f"[ERROR] {m}" for m in messages]})


# ---------------------------------------------------------------- the fake Web API

class FakeSlack:
    """A Slack Web API double on 127.0.0.1 (see the module docstring for its scope).

    Use it as a context manager (or `start()`/`stop()`); point `WebClient(base_url=...)` at
    `base_url`; seed with `add_channel`, `add_message`, `add_usergroup`; program failures with
    `rate_limit`, `fail`, `delay`; read back `requests`, `calls`, `messages`, `ephemerals`,
    `uploads`, `views`, `responses`, and block on `wait_for`.
    """

    def __init__(self, *, token: str | None = DEFAULT_TOKEN, strict_channels: bool = False,
                 scopes: Iterable[str] | None = None, team_id: str = TEAM_ID,
                 team_domain: str = TEAM_DOMAIN) -> None:
        """`token=None` accepts any token; `scopes` (default: all needed) are the bot's."""
        self.token = token
        self.strict_channels = strict_channels
        self.scopes: tuple[str, ...] = tuple(DEFAULT_SCOPES if scopes is None else scopes)
        self.team_id = team_id
        self.team_domain = team_domain
        self.errors: list[BaseException] = []  # unexpected failures inside the fake itself
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[SlackRequest] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._delays: dict[str, float] = {}
        self._channels: dict[str, _Channel] = {}
        self._channel_names: dict[str, str] = {}
        self._messages: dict[str, list[JsonObject]] = {}
        self._ephemerals: list[JsonObject] = []
        self._uploads: dict[str, Upload] = {}
        self._upload_keys: dict[str, str] = {}
        self._usergroups: dict[str, JsonObject] = {}
        self._views: dict[str, OpenedView] = {}
        self._exchanged_triggers: set[str] = set()
        self._expired_triggers: set[str] = set()
        self._response_targets: dict[str, _ResponseTarget] = {}
        self._responses: list[ResponseUrlPost] = []
        self._last_ts_us = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._served: dict[str, Callable[[SlackRequest], JsonObject]] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeSlack:
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name="fake-slack", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:  # idle keep-alive connections of pooling clients
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What `WebClient(base_url=...)` wants: `http://127.0.0.1:<port>/api/`."""
        return f"{self.url}/api/"

    # ------------------------------------------------------------ programmable behaviour

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` ("*" for any) with HTTP 429,
        `Retry-After: <retry_after>` and `{"ok": false, "error": "ratelimited"}`."""
        self._add_fault(method, _Fault(429, times, "ratelimited", None, int(retry_after)))

    def fail(self, method: str, status: int = 500, times: int = 1, *, error: str | None = None,
             body: bytes | str | None = None) -> None:
        """Answer the next `times` calls of `method` ("*" for any) with HTTP `status` and
        `{"ok": false, "error": error}` (default internal_error, or service_unavailable for
        503), or with `body` as text/html when given (a gateway page). `status=200` programs an
        ordinary API error such as `fail("chat.postMessage", 200, error="not_in_channel")`."""
        default = "service_unavailable" if status == 503 else "internal_error"
        self._add_fault(method, _Fault(status, times, error or default, body, None))

    def delay(self, method: str, seconds: float) -> None:
        """Hold every call of `method` ("*" for any) `seconds` before answering (0 to stop)."""
        with self._lock:
            if seconds > 0:
                self._delays[method] = seconds
            else:
                self._delays.pop(method, None)

    def reset_faults(self) -> None:
        """Forget programmed rate limits, failures and delays."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def expire_trigger(self, trigger_id: str) -> None:
        """views.open with this trigger id answers `expired_trigger_id` (Slack: after 3 s)."""
        with self._lock:
            self._expired_triggers.add(trigger_id)

    def serve(self, method: str, answer: Callable[[SlackRequest], JsonObject]) -> None:
        """Answer `method` with `answer(request)`, the whole JSON object (`ok` included), HTTP
        200. `answer` authenticates the request itself and runs outside the fake's lock;
        programmed faults and delays apply as to any method."""
        with self._lock:
            self._served[method] = answer

    def _add_fault(self, method: str, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.setdefault(method, []).append(fault)

    # ------------------------------------------------------------ seeding

    def add_channel(self, name: str, *, id: str | None = None,
                    members: Iterable[str] | None = None) -> str:
        """Register a channel ("#name" or "name") and return its id. With `members`,
        chat.postEphemeral to anyone else answers `user_not_in_channel`."""
        name = name.removeprefix("#")
        channel_id = id or _stable_id("C", name)
        with self._lock:
            self._channels[channel_id] = _Channel(
                channel_id, name, None if members is None else set(members))
            self._channel_names[name] = channel_id
            self._messages.setdefault(channel_id, [])
        return channel_id

    def channel_id(self, channel: str) -> str:
        """The id a channel name, "#name", user id (DM) or channel id resolves to
        (KeyError for an unregistered one with `strict_channels`)."""
        with self._lock:
            try:
                return self._lookup_channel(channel, register=False)
            except _SlackError:
                raise KeyError(channel) from None

    def add_message(self, channel: str, text: str, *, user: str = "U0HUMAN001",
                    blocks: Sequence[JsonObject] | None = None, thread_ts: str | None = None,
                    ts: str | None = None) -> JsonObject:
        """Seed a message someone else posted (the bot cannot update it); returns it."""
        with self._lock:
            channel_id = self._lookup_channel(channel, register=True)
            message: JsonObject = {"type": "message", "text": text, "user": user,
                                   "ts": ts or self._next_ts(), "team": self.team_id}
            if blocks is not None:
                message["blocks"] = copy.deepcopy(list(blocks))
            self._store_message(channel_id, message, thread_ts)
            return copy.deepcopy(message)

    def add_usergroup(self, handle: str, id: str | None = None, users: Iterable[str] = (),
                      *, name: str | None = None) -> str:
        """Register a user group (`handle` without "@") and return its id (S...)."""
        handle = handle.removeprefix("@")
        group_id = id or _stable_id("S", handle)
        now = int(time.time())
        with self._lock:
            self._usergroups[group_id] = {
                "id": group_id, "team_id": self.team_id, "is_usergroup": True,
                "is_subteam": True, "name": name or handle, "description": "",
                "handle": handle, "is_external": False, "date_create": now,
                "date_update": now, "date_delete": 0, "auto_type": None,
                "created_by": "U0HUMAN001", "updated_by": "U0HUMAN001", "deleted_by": None,
                "prefs": {"channels": [], "groups": []}, "users": list(users)}
        return group_id

    def set_usergroup_users(self, id_or_handle: str, users: Iterable[str]) -> None:
        with self._lock:
            self._usergroup(id_or_handle)["users"] = list(users)

    def response_url(self, channel: str | None = None, message_ts: str | None = None,
                     user: str | None = None, *, kind: str = "actions") -> str:
        """A response URL served here, as Slack puts in interactivity (`kind="actions"`) and
        slash command (`kind="commands"`) payloads. Posts to it are kept in `responses`;
        `replace_original`/`delete_original` act on the message `channel`/`message_ts`,
        `response_type: in_channel` posts a message, anything else is an ephemeral to `user`."""
        key = f"{secrets.randbelow(10**12):012d}/{secrets.token_urlsafe(18)}"
        channel_id = None if channel is None else self.channel_id(channel)
        with self._lock:
            url = f"{self.url}/{kind}/{self.team_id}/{key}"
            self._response_targets[key] = _ResponseTarget(url, channel_id, message_ts, user)
        return url

    # ------------------------------------------------------------ reading back

    @property
    def requests(self) -> list[SlackRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str) -> list[SlackRequest]:
        """Requests of one API method (or UPLOAD / RESPONSE_URL), in arrival order."""
        return [r for r in self.requests if r.method == method]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[SlackRequest]:
        """Block until `count` calls of `method` ("*" for any) have been answered (their state
        changes are visible by then); return the first `count` of them. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                done = [r for r in self._requests
                        if method in ("*", r.method) and r.status is not None]
                if len(done) >= count:
                    return done[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{r.method}:{r.status}" for r in self._requests]
                    raise TimeoutError(f"{len(done)} of {count} {method} calls answered within "
                                       f"{timeout}s; received {seen}")
                self._cond.wait(remaining)

    def messages(self, channel: str) -> list[JsonObject]:
        """The channel's messages as they are now (after updates and deletes), oldest first,
        thread replies included (they carry `thread_ts`)."""
        try:
            channel_id = self.channel_id(channel)
        except KeyError:
            return []
        with self._lock:
            return copy.deepcopy(self._messages.get(channel_id, []))

    def message(self, channel: str, ts: str) -> JsonObject:
        """One message by channel and ts (KeyError when there is none)."""
        for message in self.messages(channel):
            if message["ts"] == ts:
                return message
        raise KeyError(f"no message {ts} in {channel}")

    @property
    def ephemerals(self) -> list[JsonObject]:
        """Ephemeral messages: {channel, user, text, blocks?, attachments?, thread_ts?,
        message_ts}, in the order they were posted."""
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    @property
    def uploads(self) -> dict[str, Upload]:
        """file id -> Upload (announced, uploaded or completed)."""
        with self._lock:
            return copy.deepcopy(self._uploads)

    @property
    def views(self) -> list[OpenedView]:
        with self._lock:
            return copy.deepcopy(list(self._views.values()))

    @property
    def responses(self) -> list[ResponseUrlPost]:
        with self._lock:
            return copy.deepcopy(self._responses)

    # ------------------------------------------------------------ state helpers (locked)

    def _next_ts(self) -> str:
        now_us = time.time_ns() // 1000
        self._last_ts_us = max(now_us, self._last_ts_us + 1)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def _lookup_channel(self, value: Any, register: bool, names: bool = True) -> str:
        text = str(value or "").strip()
        if not text:
            raise _SlackError("channel_not_found")
        if _USER_ID.match(text) and names:  # a DM with that user (the App Home's Messages tab)
            channel_id = _stable_id("D", text)
            if register and channel_id not in self._channels:
                self._channels[channel_id] = _Channel(channel_id, None, {text, BOT_USER_ID})
            return channel_id
        if _CHANNEL_ID.match(text):
            if text not in self._channels:
                if self.strict_channels:
                    raise _SlackError("channel_not_found")
                if register:
                    self._channels[text] = _Channel(text, None, None)
            return text
        if not names:
            raise _SlackError("channel_not_found")
        name = text.removeprefix("#")
        channel_id = self._channel_names.get(name)
        if channel_id is None:
            if self.strict_channels:
                raise _SlackError("channel_not_found")
            channel_id = _stable_id("C", name)
            if register:
                self._channels[channel_id] = _Channel(channel_id, name, None)
                self._channel_names[name] = channel_id
        return channel_id

    def _store_message(self, channel_id: str, message: JsonObject, thread_ts: str | None) -> None:
        history = self._messages.setdefault(channel_id, [])
        if thread_ts:
            message["thread_ts"] = thread_ts
            parent = _find(history, thread_ts)
            if parent is not None and parent is not message:
                message["parent_user_id"] = parent.get("user")
                parent["thread_ts"] = parent["ts"]
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                users = parent.setdefault("reply_users", [])
                if message.get("user") not in users:
                    users.append(message.get("user"))
                parent["reply_users_count"] = len(users)
                parent["latest_reply"] = message["ts"]
        history.append(message)
        history.sort(key=lambda m: _ts_key(m["ts"]))

    def _usergroup(self, id_or_handle: str) -> JsonObject:
        group = self._usergroups.get(id_or_handle)
        if group is None:
            handle = id_or_handle.removeprefix("@")
            group = next((g for g in self._usergroups.values() if g["handle"] == handle), None)
        if group is None:
            raise KeyError(id_or_handle)
        return group

    def _bot_message(self, text: str, ts: str) -> JsonObject:
        return {"type": "message", "text": text, "user": BOT_USER_ID,
                "bot_id": BOT_ID, "app_id": APP_ID, "team": self.team_id, "ts": ts,
                "bot_profile": {"id": BOT_ID, "app_id": APP_ID, "name": BOT_USER_NAME,
                                "deleted": False, "team_id": self.team_id}}

    # ------------------------------------------------------------ serving

    def _serve(self, handler: _Handler) -> None:
        received_at, received_ns = time.monotonic(), time.time_ns()
        record: SlackRequest | None = None
        try:
            url = urlsplit(handler.path)
            headers = {k.lower(): v for k, v in handler.headers.items()}
            body = _read_body(handler)
            route, key = _route(url.path)
            args, parse_error = _parse_args(url.query, body, headers.get("content-type"),
                                            raw=route != "api")
            record = SlackRequest(
                method=key if route == "api" else route or url.path, args=args,
                headers=headers, http_method=handler.command, path=url.path,
                content_type=headers.get("content-type"), body=body,
                token=_token_of(headers, body), received_at=received_at,
                received_ns=received_ns)
            with self._lock:
                self._requests.append(record)
            response = self._answer(route, key, record, parse_error)
        except Exception as unexpected:  # a bug in the fake: answer 500, keep it for the test
            self.errors.append(unexpected)
            response = _Response.of_json({"ok": False, "error": f"fake_error: {unexpected!r}"},
                                         500)
        with self._cond:
            if record is not None:
                record.status = response.status
                record.response = response.json
                record.answered_at = time.monotonic()
            self._cond.notify_all()
        _write(handler, response)

    def _answer(self, route: str | None, key: str, req: SlackRequest,
                parse_error: _SlackError | None) -> _Response:
        if route is None:
            return _Response.of_text(404, "Not Found")
        self._apply_delay(req.method)
        fault = self._take_fault(req.method)
        if fault is not None:
            return _fault_response(fault)
        if route == UPLOAD:
            return self._receive_upload(key, req)
        if route == RESPONSE_URL:
            return self._receive_response(key, req)
        try:
            if parse_error is not None:
                raise parse_error
            with self._lock:
                served = self._served.get(req.method)
            if served is not None:
                return _Response.of_json(served(req),
                                         headers={"x-slack-req-id": secrets.token_hex(16)})
            handler = _METHODS.get(req.method)
            if handler is None:
                raise _SlackError("unknown_method", req_method=req.method)
            self._authenticate(req)
            needed = _SCOPE_NEEDED.get(req.method)
            if needed is not None and needed not in self.scopes:
                raise _SlackError("missing_scope", needed=needed, provided=",".join(self.scopes))
            with self._lock:
                result = handler(self, req)
            payload: JsonObject = {"ok": True, **result}
        except _SlackError as err:
            payload = {"ok": False, "error": err.error, **err.extra}
        content_type = (req.content_type or "").lower()
        if content_type.startswith("application/json") and "charset" not in content_type:
            payload["warning"] = "missing_charset"
            payload.setdefault("response_metadata", {}).setdefault("warnings", []).append(
                "missing_charset")
        headers = {"x-slack-req-id": secrets.token_hex(16)}
        if req.token is not None and payload.get("error") not in ("not_authed", "invalid_auth"):
            headers["x-oauth-scopes"] = ",".join(self.scopes)
            headers["x-accepted-oauth-scopes"] = _SCOPE_NEEDED.get(req.method, "")
        return _Response.of_json(payload, headers=headers)

    def _apply_delay(self, method: str) -> None:
        with self._lock:
            seconds = self._delays.get(method, 0.0) + self._delays.get("*", 0.0)
        if seconds:
            time.sleep(seconds)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for key in (method, "*"):
                queue = self._faults.get(key)
                if queue:
                    fault = queue[0]
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        queue.pop(0)
                    return fault
        return None

    def _authenticate(self, req: SlackRequest) -> None:
        if not req.token:
            raise _SlackError("not_authed")
        if self.token is not None and req.token != self.token:
            raise _SlackError("invalid_auth")

    # ------------------------------------------------------------ API methods (run locked)

    def _auth_test(self, req: SlackRequest) -> JsonObject:
        result: JsonObject = {
            "url": f"https://{self.team_domain}.slack.com/", "team": TEAM_NAME,
            "user": BOT_USER_NAME, "team_id": self.team_id, "user_id": BOT_USER_ID,
            "is_enterprise_install": False}
        if not (req.token or "").startswith("xoxp-"):  # a bot token
            result["bot_id"] = BOT_ID
        return result

    def _chat_post_message(self, req: SlackRequest) -> JsonObject:
        args = req.args
        channel_id = self._lookup_channel(args.get("channel"), register=True)
        content = _message_content(args)
        ts = self._next_ts()
        message = self._bot_message(content.pop("text", ""), ts)
        message.update(content)
        if args.get("username"):
            message["username"] = str(args["username"])
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = copy.deepcopy(args["metadata"])
        thread_ts = _str_or_none(args.get("thread_ts"))
        self._store_message(channel_id, message, thread_ts)
        return {"channel": channel_id, "ts": ts, "message": copy.deepcopy(message)}

    def _chat_update(self, req: SlackRequest) -> JsonObject:
        args = req.args
        channel_id = self._lookup_channel(args.get("channel"), register=False, names=False)
        ts = _str_or_none(args.get("ts"))
        message = _find(self._messages.get(channel_id, []), ts)
        if message is None:
            raise _SlackError("message_not_found")
        if message.get("user") != BOT_USER_ID:
            raise _SlackError("cant_update_message")
        content = _message_content(args, previous=message)
        for name in ("blocks", "attachments"):  # an empty list removes them
            if name in content and not content[name]:
                content.pop(name)
                message.pop(name, None)
        message.update(content)
        message.setdefault("text", "")
        message["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        return {"channel": channel_id, "ts": ts, "text": message.get("text", ""),
                "message": copy.deepcopy(message)}

    def _chat_post_ephemeral(self, req: SlackRequest) -> JsonObject:
        args = req.args
        channel_id = self._lookup_channel(args.get("channel"), register=True)
        user = _str_or_none(args.get("user"))
        if not user or not _USER_ID.match(user):
            raise _SlackError("user_not_found")
        members = self._channels[channel_id].members if channel_id in self._channels else None
        if members is not None and user not in members:
            raise _SlackError("user_not_in_channel")
        content = _message_content(args)
        ts = self._next_ts()
        ephemeral: JsonObject = {"channel": channel_id, "user": user,
                                 "text": content.pop("text", ""), **content, "message_ts": ts}
        if args.get("thread_ts"):
            ephemeral["thread_ts"] = str(args["thread_ts"])
        self._ephemerals.append(ephemeral)
        return {"message_ts": ts}

    def _chat_delete(self, req: SlackRequest) -> JsonObject:
        args = req.args
        channel_id = self._lookup_channel(args.get("channel"), register=False, names=False)
        ts = _str_or_none(args.get("ts"))
        history = self._messages.get(channel_id, [])
        message = _find(history, ts)
        if message is None:
            raise _SlackError("message_not_found")
        if message.get("user") != BOT_USER_ID:
            raise _SlackError("cant_delete_message")
        history.remove(message)
        return {"channel": channel_id, "ts": ts}

    def _chat_get_permalink(self, req: SlackRequest) -> JsonObject:
        args = req.args
        channel_id = self._lookup_channel(args.get("channel"), register=False, names=False)
        ts = _str_or_none(args.get("message_ts"))
        if _find(self._messages.get(channel_id, []), ts) is None:
            raise _SlackError("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{channel_id}/p{ts.replace('.', '')}"
        return {"channel": channel_id, "permalink": link}

    def _files_get_upload_url_external(self, req: SlackRequest) -> JsonObject:
        args = req.args
        filename = _str_or_none(args.get("filename"))
        length = args.get("length")
        missing = [n for n, v in (("filename", filename), ("length", length)) if not v]
        if missing:
            raise _invalid_arguments(*(f"missing required field: {n}" for n in missing))
        try:
            size = int(length)
        except (TypeError, ValueError):
            raise _invalid_arguments("length must be an integer") from None
        file_id = "F" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
        key = secrets.token_urlsafe(24)
        url = f"{self.url}/upload/v1/{key}"
        self._upload_keys[key] = file_id
        self._uploads[file_id] = Upload(
            file_id, str(filename), size, url, alt_txt=_str_or_none(args.get("alt_txt")),
            snippet_type=_str_or_none(args.get("snippet_type")))
        return {"upload_url": url, "file_id": file_id}

    def _receive_upload(self, key: str, req: SlackRequest) -> _Response:
        with self._lock:
            file_id = self._upload_keys.get(key)
            upload = self._uploads.get(file_id or "")
            if upload is None or req.http_method != "POST":
                return _Response.of_text(404, "Not Found")
            upload.data = _upload_bytes(req.body, req.content_type)
            req.args = {"file_id": file_id, "length": len(upload.data)}
            return _Response.of_text(200, f"OK - {len(upload.data)}")

    def _files_complete_upload_external(self, req: SlackRequest) -> JsonObject:
        args = req.args
        files = args.get("files")
        if not isinstance(files, list) or not files or not all(
                isinstance(f, dict) and f.get("id") for f in files):
            raise _invalid_arguments("files must be a JSON array of objects with an id")
        uploads = []
        for item in files:
            upload = self._uploads.get(str(item["id"]))
            if upload is None or not upload.uploaded:
                raise _SlackError("file_not_found")
            uploads.append((upload, item))
        channel_id = None
        if args.get("channel_id"):
            channel_id = self._lookup_channel(args["channel_id"], register=True, names=False)
        elif args.get("channels"):
            first = str(args["channels"]).split(",")[0]
            channel_id = self._lookup_channel(first, register=True)
        thread_ts = _str_or_none(args.get("thread_ts"))
        comment = _str_or_none(args.get("initial_comment"))
        now = int(time.time())
        infos = []
        for upload, item in uploads:
            upload.title = _str_or_none(item.get("title")) or upload.filename
            upload.channel, upload.thread_ts = channel_id, thread_ts
            upload.initial_comment, upload.completed = comment, True
            infos.append(self._file_info(upload, now))
        if channel_id is not None:
            message = self._bot_message(comment or "", self._next_ts())
            message.update({"files": copy.deepcopy(infos), "upload": True,
                            "display_as_bot": False})
            self._store_message(channel_id, message, thread_ts)
        return {"files": infos}

    def _file_info(self, upload: Upload, now: int) -> JsonObject:
        mimetype = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
        files_url = f"https://files.slack.com/files-pri/{self.team_id}-{upload.file_id}"
        return {
            "id": upload.file_id, "created": now, "timestamp": now, "name": upload.filename,
            "title": upload.title, "mimetype": mimetype, "filetype": ext or "binary",
            "pretty_type": (ext or "binary").upper(), "user": BOT_USER_ID,
            "user_team": self.team_id, "editable": False, "size": len(upload.data or b""),
            "mode": "hosted", "is_external": False, "external_type": "", "is_public": False,
            "public_url_shared": False, "display_as_bot": False, "username": "",
            "url_private": f"{files_url}/{upload.filename}",
            "url_private_download": f"{files_url}/download/{upload.filename}",
            "permalink": f"https://{self.team_domain}.slack.com/files/{BOT_USER_ID}/"
                         f"{upload.file_id}/{upload.filename}",
            "comments_count": 0, "is_starred": False, "shares": {}, "channels": [],
            "groups": [], "ims": [], "has_more_shares": False, "has_rich_preview": False,
            "file_access": "visible", "alt_txt": upload.alt_txt}

    def _files_upload(self, req: SlackRequest) -> JsonObject:
        raise _SlackError("method_deprecated")

    def _usergroups_list(self, req: SlackRequest) -> JsonObject:
        args = req.args
        groups = []
        for group in self._usergroups.values():
            item = copy.deepcopy(group)
            users = item.pop("users")
            if _truthy(args.get("include_users")):
                item["users"] = users
            if _truthy(args.get("include_count")):
                item["user_count"] = len(users)
            groups.append(item)
        return {"usergroups": groups}

    def _usergroups_users_list(self, req: SlackRequest) -> JsonObject:
        args = req.args
        group_id = _str_or_none(args.get("usergroup"))
        if not group_id:
            raise _invalid_arguments("missing required field: usergroup")
        group = self._usergroups.get(group_id)
        if group is None:
            raise _SlackError("no_such_subteam")
        return {"users": list(group["users"])}

    def _views_open(self, req: SlackRequest) -> JsonObject:
        args = req.args
        trigger_id = _str_or_none(args.get("trigger_id") or args.get("interactivity_pointer"))
        if not trigger_id:
            raise _invalid_arguments("missing required field: trigger_id")
        view = args.get("view")
        if view is None:
            raise _invalid_arguments("missing required field: view")
        problems = _validate_view(view)
        if problems:
            raise _invalid_arguments(*problems)
        if trigger_id in self._expired_triggers:
            raise _SlackError("expired_trigger_id")
        if trigger_id in self._exchanged_triggers:
            raise _SlackError("exchanged_trigger_id")
        self._exchanged_triggers.add(trigger_id)
        view_id = "V" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
        opened: JsonObject = {
            "id": view_id, "team_id": self.team_id, "type": view["type"],
            "title": view.get("title"), "close": view.get("close"), "submit": view.get("submit"),
            "blocks": copy.deepcopy(view.get("blocks", [])),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""), "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "root_view_id": view_id, "previous_view_id": None, "app_id": APP_ID,
            "external_id": view.get("external_id", ""), "app_installed_team_id": self.team_id,
            "bot_id": BOT_ID}
        self._views[view_id] = OpenedView(view_id, trigger_id, opened)
        return {"view": copy.deepcopy(opened)}

    # ------------------------------------------------------------ response URLs

    def _receive_response(self, key: str, req: SlackRequest) -> _Response:
        with self._lock:
            target = self._response_targets.get(key)
            if target is None or req.http_method != "POST":
                return _Response.of_json({"ok": False, "error": "expired_url"}, 404)
            payload = req.args
            if not isinstance(payload, dict) or not payload:
                return _Response.of_json({"ok": False, "error": "invalid_payload"}, 400)
            self._responses.append(ResponseUrlPost(
                target.url, copy.deepcopy(payload), target.channel, target.message_ts,
                target.user, req.received_at, req.received_ns))
            original = None
            if target.channel is not None and target.message_ts is not None:
                original = _find(self._messages.get(target.channel, []), target.message_ts)
            if _truthy(payload.get("delete_original")):
                if original is not None:
                    self._messages[target.channel or ""].remove(original)
            elif _truthy(payload.get("replace_original")) and original is not None:
                for name in ("text", "blocks", "attachments"):
                    original.pop(name, None)
                    if name in payload:
                        original[name] = copy.deepcopy(payload[name])
                original.setdefault("text", "")
            elif payload.get("response_type") == "in_channel" and target.channel is not None:
                message = self._bot_message(str(payload.get("text", "")), self._next_ts())
                for name in ("blocks", "attachments"):
                    if name in payload:
                        message[name] = copy.deepcopy(payload[name])
                self._store_message(target.channel, message,
                                    _str_or_none(payload.get("thread_ts")))
            else:
                ephemeral = {"channel": target.channel, "user": target.user,
                             "text": str(payload.get("text", "")),
                             "message_ts": self._next_ts()}
                for name in ("blocks", "attachments"):
                    if name in payload:
                        ephemeral[name] = copy.deepcopy(payload[name])
                self._ephemerals.append(ephemeral)
            return _Response.of_json({"ok": True})


_METHODS = {
    "auth.test": FakeSlack._auth_test,
    "chat.postMessage": FakeSlack._chat_post_message,
    "chat.update": FakeSlack._chat_update,
    "chat.postEphemeral": FakeSlack._chat_post_ephemeral,
    "chat.delete": FakeSlack._chat_delete,
    "chat.getPermalink": FakeSlack._chat_get_permalink,
    "files.getUploadURLExternal": FakeSlack._files_get_upload_url_external,
    "files.completeUploadExternal": FakeSlack._files_complete_upload_external,
    "files.upload": FakeSlack._files_upload,
    "usergroups.list": FakeSlack._usergroups_list,
    "usergroups.users.list": FakeSlack._usergroups_users_list,
    "views.open": FakeSlack._views_open,
}


# ---------------------------------------------------------------- message content and blocks

def _message_content(args: JsonObject, previous: JsonObject | None = None) -> JsonObject:
    """text/blocks/attachments of chat.* arguments, validated as Slack does. For chat.update
    (`previous` given), what is not sent is kept, and an empty list removes blocks/attachments."""
    if isinstance(args.get("blocks"), _Undecodable):
        raise _SlackError("invalid_blocks_format")
    if isinstance(args.get("attachments"), _Undecodable):
        raise _SlackError("invalid_attachments")
    content: JsonObject = {}
    if "blocks" in args:
        problems = _validate_blocks(args["blocks"], "/blocks", MAX_MESSAGE_BLOCKS)
        if problems:
            raise _SlackError("invalid_blocks", errors=problems, response_metadata={
                "messages": [f"[ERROR] {p}" for p in problems]})
        content["blocks"] = copy.deepcopy(args["blocks"])
    if "attachments" in args:
        attachments = args["attachments"]
        if not isinstance(attachments, list) or not all(isinstance(a, dict)
                                                        for a in attachments):
            raise _SlackError("invalid_attachments")
        if len(attachments) > 100:
            raise _SlackError("too_many_attachments")
        content["attachments"] = copy.deepcopy(attachments)
    text = args.get("text", args.get("markdown_text"))
    if text is not None:
        content["text"] = str(text)
        if len(content["text"]) > MAX_MESSAGE_TEXT:
            raise _SlackError("msg_too_long")
    if not content:
        raise _SlackError("no_text")
    result = {**(previous or {}), **content}
    if not (result.get("text") or result.get("blocks") or result.get("attachments")):
        raise _SlackError("no_text")
    return content


def _validate_blocks(blocks: Any, pointer: str, limit: int) -> list[str]:
    if not isinstance(blocks, list):
        return [f"must provide an array [json-pointer:{pointer}]"]
    problems: list[str] = []
    if len(blocks) > limit:
        problems.append(f"no more than {limit} items allowed [json-pointer:{pointer}]")
    block_ids: set[str] = set()
    for index, block in enumerate(blocks):
        here = f"{pointer}/{index}"
        if not isinstance(block, dict):
            problems.append(f"must provide an object [json-pointer:{here}]")
            continue
        kind = block.get("type")
        if not isinstance(kind, str) or not kind:
            problems.append(f"missing required field: type [json-pointer:{here}]")
            continue
        if kind not in _BLOCK_TYPES:
            problems.append(f"unsupported type: {kind} [json-pointer:{here}/type]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not 0 < len(block_id) <= 255:
                problems.append(f"must be a string of 1 to 255 characters "
                                f"[json-pointer:{here}/block_id]")
            elif block_id in block_ids:
                problems.append(f"duplicate block_id: {block_id} [json-pointer:{here}/block_id]")
            else:
                block_ids.add(block_id)
        problems += _BLOCK_CHECKS.get(kind, _no_check)(block, here)
    return problems


def _no_check(block: JsonObject, here: str) -> list[str]:
    return []


def _text_object(obj: Any, here: str, limit: int, *, plain_only: bool = False) -> list[str]:
    if obj is None:
        parent, _, name = here.rpartition("/")
        return [f"missing required field: {name} [json-pointer:{parent}]"]
    if not isinstance(obj, dict):
        return [f"must provide an object [json-pointer:{here}]"]
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in kinds:
        return [f"must be one of: {', '.join(kinds)} [json-pointer:{here}/type]"]
    text = obj.get("text")
    if not isinstance(text, str):
        return [f"missing required field: text [json-pointer:{here}]"]
    if not text:
        return [f"must be more than 0 characters [json-pointer:{here}/text]"]
    if len(text) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{here}/text]"]
    return []


def _elements(block: JsonObject, here: str, limit: int) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [f"must provide a non-empty array [json-pointer:{here}/elements]"]
    problems = []
    if len(elements) > limit:
        problems.append(f"no more than {limit} items allowed [json-pointer:{here}/elements]")
    for i, element in enumerate(elements):
        where = f"{here}/elements/{i}"
        if not isinstance(element, dict) or not element.get("type"):
            problems.append(f"missing required field: type [json-pointer:{where}]")
        elif element["type"] == "button":
            problems += _button(element, where)
    return problems


def _button(element: JsonObject, here: str) -> list[str]:
    problems = _text_object(element.get("text"), f"{here}/text", 75, plain_only=True)
    value = element.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > 2000):
        problems.append(f"must be less than 2001 characters [json-pointer:{here}/value]")
    action_id = element.get("action_id")
    if action_id is not None and (not isinstance(action_id, str) or len(action_id) > 255):
        problems.append(f"must be less than 256 characters [json-pointer:{here}/action_id]")
    style = element.get("style")
    if style is not None and style not in ("primary", "danger"):
        problems.append(f"must be one of: primary, danger [json-pointer:{here}/style]")
    return problems


def _section(block: JsonObject, here: str) -> list[str]:
    if "text" not in block and "fields" not in block:
        return [f"must provide either text or fields [json-pointer:{here}]"]
    problems = []
    if "text" in block:
        problems += _text_object(block["text"], f"{here}/text", MAX_SECTION_TEXT)
    if "fields" in block:
        fields = block["fields"]
        if not isinstance(fields, list) or len(fields) > 10:
            problems.append(f"no more than 10 items allowed [json-pointer:{here}/fields]")
        else:
            for i, item in enumerate(fields):
                problems += _text_object(item, f"{here}/fields/{i}", 2000)
    accessory = block.get("accessory")
    if accessory is not None:
        if not isinstance(accessory, dict) or not accessory.get("type"):
            problems.append(f"missing required field: type [json-pointer:{here}/accessory]")
        elif accessory["type"] == "button":
            problems += _button(accessory, f"{here}/accessory")
    return problems


def _header(block: JsonObject, here: str) -> list[str]:
    return _text_object(block.get("text"), f"{here}/text", 150, plain_only=True)


def _context(block: JsonObject, here: str) -> list[str]:
    return _elements(block, here, 10)


def _actions(block: JsonObject, here: str) -> list[str]:
    return _elements(block, here, 25)


def _input(block: JsonObject, here: str) -> list[str]:
    problems = _text_object(block.get("label"), f"{here}/label", 2000, plain_only=True)
    element = block.get("element")
    if not isinstance(element, dict) or not element.get("type"):
        problems.append(f"missing required field: element [json-pointer:{here}]")
    return problems


def _image(block: JsonObject, here: str) -> list[str]:
    problems = []
    if not block.get("image_url") and not block.get("slack_file"):
        problems.append(f"must provide either image_url or slack_file [json-pointer:{here}]")
    alt = block.get("alt_text")
    if not isinstance(alt, str) or not alt:
        problems.append(f"missing required field: alt_text [json-pointer:{here}]")
    return problems


_BLOCK_CHECKS = {"section": _section, "header": _header, "context": _context,
                 "actions": _actions, "input": _input, "image": _image}


def _validate_view(view: Any) -> list[str]:
    if not isinstance(view, dict):
        return ["must provide an object [json-pointer:/view]"]
    if view.get("type") != "modal":
        return ["must be one of: modal [json-pointer:/view/type]"]
    problems = _text_object(view.get("title"), "/view/title", 24, plain_only=True)
    for name in ("submit", "close"):
        if view.get(name) is not None:
            problems += _text_object(view[name], f"/view/{name}", 24, plain_only=True)
    blocks = view.get("blocks")
    if blocks is None:
        problems.append("missing required field: blocks [json-pointer:/view]")
    else:
        problems += _validate_blocks(blocks, "/view/blocks", MAX_VIEW_BLOCKS)
        has_input = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks)
        if has_input and view.get("submit") is None:
            problems.append("must provide submit when the view has input blocks "
                            "[json-pointer:/view/submit]")
    for name, limit in (("callback_id", 255), ("external_id", 255), ("private_metadata", 3000)):
        value = view.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"must be less than {limit + 1} characters "
                            f"[json-pointer:/view/{name}]")
    return problems


# ---------------------------------------------------------------- HTTP plumbing

class _Undecodable(str):
    """A JSON-string argument (blocks, attachments, ...) that did not decode."""


def _route(path: str) -> tuple[str | None, str]:
    if path.startswith("/api/") and len(path) > len("/api/"):
        return "api", path[len("/api/"):]
    if path.startswith("/upload/v1/"):
        return UPLOAD, path[len("/upload/v1/"):]
    for prefix in ("/actions/", "/commands/"):
        if path.startswith(prefix):
            parts = path[len(prefix):].split("/", 1)
            if len(parts) == 2:
                return RESPONSE_URL, parts[1]
    return None, ""


def _content_type(header: str | None) -> tuple[str, dict[str, str]]:
    if not header:
        return "", {}
    message = Message()
    message["content-type"] = header
    params = message.get_params() or []
    return message.get_content_type(), {k.lower(): v for k, v in params[1:]}


def _parse_args(query: str, body: bytes, content_type: str | None,
                raw: bool) -> tuple[JsonObject, _SlackError | None]:
    """Arguments as Slack reads them: query string, then a form, multipart or JSON body."""
    args: JsonObject = dict(parse_qsl(query, keep_blank_values=True))
    kind, params = _content_type(content_type)
    error: _SlackError | None = None
    if raw and kind != "application/json":
        return args, None
    if body:
        if kind == "application/json":
            try:
                decoded = json.loads(body)
            except ValueError:
                return args, _SlackError("invalid_json")
            if not isinstance(decoded, dict):
                return args, _SlackError("json_not_object")
            args.update(decoded)
        elif kind == "multipart/form-data":
            for headers, data in _multipart_parts(body, params.get("boundary", "")):
                name = headers.get("name")
                if name:
                    args[name] = data if "filename" in headers else data.decode(
                        "utf-8", "replace")
        else:
            try:
                args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                      strict_parsing=False))
            except UnicodeDecodeError:
                error = _SlackError("invalid_form_data")
    for name in _JSON_ARGS:
        value = args.get(name)
        if isinstance(value, str):
            try:
                args[name] = json.loads(value) if value.strip() else []
            except ValueError:
                args[name] = _Undecodable(value)
    if isinstance(args.get("files"), str):  # files.completeUploadExternal
        with contextlib.suppress(ValueError):
            args["files"] = json.loads(args["files"])
    return args, error


def _multipart_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """(content-disposition params + content-type, data) of each part, byte-exact."""
    if not boundary:
        return []
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        info: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                for match in re.finditer(r';\s*([\w*]+)="?([^";]*)"?', value):
                    info[match.group(1).lower()] = match.group(2)
            elif name.strip().lower() == "content-type":
                info["content-type"] = value.strip()
        parts.append((info, data.removesuffix(b"\r\n")))
    return parts


def _upload_bytes(body: bytes, content_type: str | None) -> bytes:
    """The file in a post to an upload URL: raw bytes (what slack_sdk sends) or multipart."""
    kind, params = _content_type(content_type)
    if kind != "multipart/form-data":
        return body
    parts = _multipart_parts(body, params.get("boundary", ""))
    for info, data in parts:
        if "filename" in info or info.get("name") == "file":
            return data
    return parts[0][1] if parts else b""


def _token_of(headers: Mapping[str, str], body: bytes) -> str | None:
    """The token as Slack reads it: `Authorization: Bearer`, else a `token` form field (never
    from a JSON body, nor from the query string, which apps created since 2021 may not use)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    kind, params = _content_type(headers.get("content-type"))
    token: str | None = None
    if kind == "application/x-www-form-urlencoded" or (not kind and body):
        with contextlib.suppress(UnicodeDecodeError):
            token = dict(parse_qsl(body.decode("utf-8"))).get("token")
    elif kind == "multipart/form-data":
        fields = _multipart_parts(body, params.get("boundary", ""))
        token = next((d.decode("utf-8", "replace") for info, d in fields
                      if info.get("name") == "token"), None)
    return token or None


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _fault_response(fault: _Fault) -> _Response:
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if fault.body is not None:
        raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
        return _Response(fault.status, raw, "text/html; charset=utf-8", headers)
    return _Response.of_json({"ok": False, "error": fault.error}, fault.status, headers)


def _write(handler: BaseHTTPRequestHandler, response: _Response) -> None:
    try:
        handler.send_response(response.status)
        handler.send_header("Content-Type", response.content_type)
        handler.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(response.body)
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
        handler.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for pooling clients; urllib closes anyway
    server_version = "FakeSlack/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's request log is `FakeSlack.requests`."""


# ---------------------------------------------------------------- small helpers

def _stable_id(prefix: str, name: str) -> str:
    return prefix + hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:10].upper()


def _find(messages: list[JsonObject], ts: str | None) -> JsonObject | None:
    return next((m for m in messages if m["ts"] == ts), None) if ts else None


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _truthy(value: Any) -> bool:
    return value is True or value == 1 or (isinstance(value, str)
                                           and value.lower() in ("1", "true"))


# ---------------------------------------------------------------- requests Slack sends to the app

def signed_request_headers(signing_secret: str, body: bytes,
                           timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with a request to the app: `X-Slack-Request-Timestamp`,
    `X-Slack-Signature` (v0=hex HMAC-SHA256 of b"v0:<ts>:<body>" keyed by the signing secret)
    and the Content-Type of the body (JSON for Events API bodies, else form-encoded)."""
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    base = b"v0:" + ts.encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    content_type = ("application/json" if body.lstrip().startswith(b"{")
                    else "application/x-www-form-urlencoded")
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={digest}"}


def new_trigger_id() -> str:
    """A trigger id shaped like Slack's ("<digits>.<digits>.<32 hex>")."""
    return f"{secrets.randbelow(10**13):013d}.{secrets.randbelow(10**12):012d}." \
           f"{secrets.token_hex(16)}"


def _user(user_id: str, team_id: str, user_name: str | None) -> JsonObject:
    name = user_name or user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def _form_payload(payload: JsonObject) -> bytes:
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()


def block_actions_payload(user_id: str, action_id: str, value: str, channel_id: str,
                          message_ts: str, trigger_id: str | None = None,
                          team_id: str = TEAM_ID, *, block_id: str | None = None,
                          user_name: str | None = None, message: JsonObject | None = None,
                          response_url: str | None = None, action_type: str = "button",
                          button_text: str | None = None, channel_name: str = "secops",
                          api_app_id: str = APP_ID,
                          verification_token: str = "fakeVerificationToken") -> bytes:
    """The form-encoded `payload=<json>` Slack posts when someone clicks a button on a message.
    Pass `message=fake.message(channel, ts)` to carry the message as it is in FakeSlack, and
    `response_url=fake.response_url(channel, ts, user)` for bolt's `respond()` to reach it."""
    block_id = block_id or secrets.token_urlsafe(4)
    action: JsonObject = {"action_id": action_id, "block_id": block_id, "value": value,
                          "type": action_type, "action_ts": f"{time.time():.6f}"}
    if action_type == "button":
        action["text"] = {"type": "plain_text", "text": button_text or action_id,
                          "emoji": True}
    payload: JsonObject = {
        "type": "block_actions",
        "user": _user(user_id, team_id, user_name),
        "api_app_id": api_app_id,
        "token": verification_token,
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                      "is_ephemeral": False},
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": message if message is not None else {
            "type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "app_id": APP_ID,
            "team": team_id, "ts": message_ts, "text": "", "blocks": []},
        "state": {"values": {}},
        "response_url": response_url or
        f"https://hooks.slack.com/actions/{team_id}/{secrets.randbelow(10**12)}/"
        f"{secrets.token_urlsafe(18)}",
        "actions": [action],
    }
    return _form_payload(payload)


def view_submission_payload(user_id: str, callback_id: str, private_metadata: str,
                            values: Mapping[str, Mapping[str, Any]], *,
                            team_id: str = TEAM_ID, view_id: str | None = None,
                            view: JsonObject | None = None, user_name: str | None = None,
                            trigger_id: str | None = None, api_app_id: str = APP_ID,
                            verification_token: str = "fakeVerificationToken") -> bytes:
    """The form-encoded `payload=<json>` Slack posts when a modal is submitted. `values` is
    `view.state.values` (block_id -> action_id -> state); a plain string state is taken as a
    plain_text_input value. `view` (e.g. `fake.views[-1].view`) supplies title/blocks/id."""
    state: JsonObject = {}
    for block_id, actions in values.items():
        state[block_id] = {}
        for action_id, item in actions.items():
            state[block_id][action_id] = ({"type": "plain_text_input", "value": item}
                                          if isinstance(item, str) or item is None
                                          else dict(item))
    base = copy.deepcopy(view) if view is not None else {}
    the_view_id = view_id or base.get("id") or "V" + "".join(
        secrets.choice(_ID_ALPHABET) for _ in range(10))
    full_view: JsonObject = {
        "id": the_view_id, "team_id": team_id, "type": "modal",
        "blocks": base.get("blocks", []),
        "title": base.get("title", {"type": "plain_text", "text": "Decision", "emoji": True}),
        "close": base.get("close"), "submit": base.get("submit"),
        "hash": base.get("hash", f"{int(time.time())}.{secrets.token_hex(4)}"),
        "clear_on_close": base.get("clear_on_close", False),
        "notify_on_close": base.get("notify_on_close", False),
        "root_view_id": base.get("root_view_id", the_view_id),
        "previous_view_id": base.get("previous_view_id"), "app_id": APP_ID,
        "external_id": base.get("external_id", ""), "app_installed_team_id": team_id,
        "bot_id": BOT_ID,
        "private_metadata": private_metadata, "callback_id": callback_id,
        "state": {"values": state},
    }
    payload: JsonObject = {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": _user(user_id, team_id, user_name),
        "api_app_id": api_app_id,
        "token": verification_token,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": full_view,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return _form_payload(payload)


def slash_command_body(user_id: str, command: str, text: str, channel_id: str,
                       response_url: str | None = None, *, team_id: str = TEAM_ID,
                       user_name: str | None = None, channel_name: str = "secops",
                       trigger_id: str | None = None, api_app_id: str = APP_ID,
                       verification_token: str = "fakeVerificationToken") -> bytes:
    """The form-encoded body Slack posts for a slash command (fields in Slack's order).
    Note: slack_bolt reads any form body containing the word "payload" as an interactivity
    payload, so a command text with that word reaches bolt empty, as with real Slack."""
    fields = {
        "token": verification_token,
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url or
        f"https://hooks.slack.com/commands/{team_id}/{secrets.randbelow(10**12)}/"
        f"{secrets.token_urlsafe(18)}",
        "trigger_id": trigger_id or new_trigger_id(),
    }
    return urlencode(fields).encode()
