"""FakeSlack, exercised only through the real slack_sdk WebClient (and a bolt App) over HTTP."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_api import (
    BOT_ID,
    BOT_USER_ID,
    RESPONSE_URL,
    TEAM_ID,
    UPLOAD,
    FakeSlack,
    block_actions_payload,
    signed_request_headers,
    slash_command_body,
    view_submission_payload,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ALICE = "U0ALICE001"
BOB = "U0BOB00001"
SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*Drift* on `web-1`"}}
BUTTONS = {"type": "actions", "block_id": "decide", "elements": [
    {"type": "button", "action_id": "approve", "value": "inc-42", "style": "primary",
     "text": {"type": "plain_text", "text": "Isolate"}},
    {"type": "button", "action_id": "dismiss", "value": "inc-42",
     "text": {"type": "plain_text", "text": "Dismiss"}}]}
MODAL = {"type": "modal", "callback_id": "decide", "private_metadata": "inc-42",
         "title": {"type": "plain_text", "text": "Isolate web-1?"},
         "submit": {"type": "plain_text", "text": "Isolate"},
         "blocks": [{"type": "input", "block_id": "reason",
                     "label": {"type": "plain_text", "text": "Reason"},
                     "element": {"type": "plain_text_input", "action_id": "input"}}]}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake
        assert fake.errors == []  # the fake itself never crashed


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    return WebClient(token=slack.token, base_url=slack.base_url)


def api_error(call: Any, *args: Any, **kwargs: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------- auth


def test_auth_test_names_the_bot_its_team_and_its_scopes(client: WebClient) -> None:
    answer = client.auth_test()
    assert answer["ok"] is True
    assert (answer["team_id"], answer["user_id"], answer["bot_id"]) == (TEAM_ID, BOT_USER_ID,
                                                                         BOT_ID)
    assert answer["url"].startswith("https://")
    assert "chat:write" in answer.headers["x-oauth-scopes"].split(",")


def test_another_token_is_refused_as_invalid_auth(slack: FakeSlack) -> None:
    error = api_error(WebClient(token="xoxb-other", base_url=slack.base_url).auth_test)
    assert error.response.status_code == 200
    assert error.response["error"] == "invalid_auth"


def test_no_token_is_refused_as_not_authed(slack: FakeSlack) -> None:
    error = api_error(WebClient(base_url=slack.base_url).chat_postMessage,
                      channel="#secops", text="hi")
    assert error.response["error"] == "not_authed"
    assert slack.messages("#secops") == []


def test_a_token_inside_a_json_body_does_not_authenticate(slack: FakeSlack) -> None:
    # (slack_sdk moves such a token into the Authorization header; other clients may not)
    body = json.dumps({"token": slack.token, "channel": "#secops", "text": "hi"}).encode()
    request = urllib.request.Request(slack.base_url + "chat.postMessage", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    assert answer["ok"] is False
    assert answer["error"] == "not_authed"
    assert answer["response_metadata"]["warnings"] == ["missing_charset"]


def test_a_token_in_a_form_body_authenticates(slack: FakeSlack) -> None:
    anonymous = WebClient(base_url=slack.base_url)
    answer = anonymous.api_call("chat.postMessage", params={
        "token": slack.token, "channel": "#secops", "text": "hi"})
    assert answer["ok"] is True


def test_a_missing_scope_is_refused_naming_the_scope_needed() -> None:
    with FakeSlack(scopes=["chat:write"]) as fake:
        client = WebClient(token=fake.token, base_url=fake.base_url)
        error = api_error(client.usergroups_users_list, usergroup="S0123")
    assert error.response["error"] == "missing_scope"
    assert error.response["needed"] == "usergroups:read"
    assert error.response["provided"] == "chat:write"


# ---------------------------------------------------------------- chat.postMessage


def test_a_posted_message_gets_a_channel_id_and_a_ts_and_is_stored(
        slack: FakeSlack, client: WebClient) -> None:
    answer = client.chat_postMessage(channel="#secops", text="drift", blocks=[SECTION, BUTTONS])
    assert re.fullmatch(r"C[A-Z0-9]{6,}", answer["channel"])
    assert re.fullmatch(r"\d{10}\.\d{6}", answer["ts"])
    assert answer["message"]["ts"] == answer["ts"]
    assert answer["message"]["blocks"] == [SECTION, BUTTONS]
    assert answer["message"]["bot_id"] == BOT_ID
    [stored] = slack.messages("#secops")
    assert stored == answer["message"]
    [call] = slack.calls("chat.postMessage")
    assert call.args["blocks"] == [SECTION, BUTTONS]
    assert call.headers["authorization"] == f"Bearer {slack.token}"
    assert call.content_type == "application/json;charset=utf-8"


@pytest.mark.parametrize("how", ["json string in a JSON body", "form-encoded"])
def test_blocks_sent_as_a_json_string_are_decoded(slack: FakeSlack, client: WebClient,
                                                  how: str) -> None:
    blocks = json.dumps([SECTION])
    if how == "form-encoded":
        client.api_call("chat.postMessage", params={"channel": "#secops", "text": "x",
                                                    "blocks": blocks})
    else:
        client.chat_postMessage(channel="#secops", text="x", blocks=blocks)
    assert slack.calls("chat.postMessage")[0].args["blocks"] == [SECTION]
    assert slack.messages("#secops")[0]["blocks"] == [SECTION]


def test_channel_names_map_to_one_stable_id(slack: FakeSlack, client: WebClient) -> None:
    first = client.chat_postMessage(channel="#secops", text="one")["channel"]
    second = client.chat_postMessage(channel="secops", text="two")["channel"]
    third = client.chat_postMessage(channel=first, text="three")["channel"]
    assert first == second == third == slack.channel_id("#secops")
    assert [m["text"] for m in slack.messages(first)] == ["one", "two", "three"]
    assert FakeSlack().channel_id("secops") == first  # stable across fakes


def test_posting_to_a_user_id_lands_in_the_dm_channel(slack: FakeSlack,
                                                      client: WebClient) -> None:
    answer = client.chat_postMessage(channel=ALICE, text="your approval is needed")
    assert answer["channel"].startswith("D")
    assert slack.messages(ALICE)[0]["text"] == "your approval is needed"


def test_timestamps_are_unique_and_increasing(client: WebClient) -> None:
    stamps = [client.chat_postMessage(channel="#secops", text=str(i))["ts"] for i in range(20)]
    assert len(set(stamps)) == 20
    assert stamps == sorted(stamps, key=lambda ts: tuple(map(int, ts.split("."))))


def test_strict_channels_refuse_unregistered_channels() -> None:
    with FakeSlack(strict_channels=True) as fake:
        channel = fake.add_channel("#secops")
        client = WebClient(token=fake.token, base_url=fake.base_url)
        assert client.chat_postMessage(channel="#secops", text="ok")["channel"] == channel
        assert client.chat_postMessage(channel=channel, text="ok")["channel"] == channel
        error = api_error(client.chat_postMessage, channel="#random", text="no")
        assert error.response["error"] == "channel_not_found"
        error = api_error(client.chat_postMessage, channel="C0NOSUCH01", text="no")
        assert error.response["error"] == "channel_not_found"


@pytest.mark.parametrize(("blocks", "pointer"), [
    ([{"type": "divider"}] * 51, "no more than 50 items allowed [json-pointer:/blocks]"),
    ([SECTION, {"text": "typeless"}], "missing required field: type [json-pointer:/blocks/1]"),
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
     "must be less than 3001 characters [json-pointer:/blocks/0/text/text]"),
    ({"type": "section"}, "must provide an array [json-pointer:/blocks]"),
    ([{"type": "secton", "text": {"type": "mrkdwn", "text": "typo"}}],
     "unsupported type: secton [json-pointer:/blocks/0/type]"),
    ([{"type": "divider", "block_id": "a"}, {"type": "divider", "block_id": "a"}],
     "duplicate block_id: a [json-pointer:/blocks/1/block_id]"),
])
def test_invalid_blocks_are_refused_with_json_pointers(slack: FakeSlack, client: WebClient,
                                                       blocks: Any, pointer: str) -> None:
    error = api_error(client.chat_postMessage, channel="#secops", text="x", blocks=blocks)
    assert error.response.status_code == 200
    assert error.response["error"] == "invalid_blocks"
    assert pointer in error.response["errors"]
    assert f"[ERROR] {pointer}" in error.response["response_metadata"]["messages"]
    assert slack.messages("#secops") == []


def test_a_section_of_exactly_3000_characters_is_accepted(client: WebClient) -> None:
    block = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3000}}
    assert client.chat_postMessage(channel="#secops", text="x", blocks=[block])["ok"]


def test_undecodable_blocks_are_refused_as_invalid_blocks_format(client: WebClient) -> None:
    error = api_error(client.chat_postMessage, channel="#secops", text="x", blocks="[{nope")
    assert error.response["error"] == "invalid_blocks_format"


def test_a_message_without_text_or_blocks_is_refused_as_no_text(client: WebClient) -> None:
    error = api_error(client.api_call, "chat.postMessage", json={"channel": "#secops"})
    assert error.response["error"] == "no_text"


# ---------------------------------------------------------------- chat.update / postEphemeral


def test_an_update_replaces_the_text_and_keeps_blocks_not_sent(slack: FakeSlack,
                                                               client: WebClient) -> None:
    posted = client.chat_postMessage(channel="#secops", text="pending", blocks=[SECTION])
    answer = client.chat_update(channel=posted["channel"], ts=posted["ts"], text="isolated")
    assert (answer["channel"], answer["ts"], answer["text"]) == (posted["channel"],
                                                                 posted["ts"], "isolated")
    [message] = slack.messages("#secops")
    assert message["text"] == "isolated"
    assert message["blocks"] == [SECTION]
    assert message["edited"]["user"] == BOT_USER_ID


def test_an_update_with_an_empty_block_list_removes_the_blocks(slack: FakeSlack,
                                                               client: WebClient) -> None:
    posted = client.chat_postMessage(channel="#secops", text="pending", blocks=[BUTTONS])
    client.chat_update(channel=posted["channel"], ts=posted["ts"], text="done", blocks=[])
    assert "blocks" not in slack.message("#secops", posted["ts"])


def test_updating_an_unknown_ts_answers_message_not_found(client: WebClient) -> None:
    channel = client.chat_postMessage(channel="#secops", text="x")["channel"]
    error = api_error(client.chat_update, channel=channel, ts="1700000000.000100", text="y")
    assert error.response["error"] == "message_not_found"


def test_updating_by_channel_name_answers_channel_not_found(client: WebClient) -> None:
    posted = client.chat_postMessage(channel="#secops", text="x")
    error = api_error(client.chat_update, channel="#secops", ts=posted["ts"], text="y")
    assert error.response["error"] == "channel_not_found"


def test_a_message_someone_else_posted_cannot_be_updated(slack: FakeSlack,
                                                         client: WebClient) -> None:
    seeded = slack.add_message("#secops", "falco says hi", user=ALICE)
    error = api_error(client.chat_update, channel=slack.channel_id("#secops"),
                      ts=seeded["ts"], text="mine now")
    assert error.response["error"] == "cant_update_message"


def test_thread_replies_carry_thread_ts_and_count_on_their_parent(slack: FakeSlack,
                                                                  client: WebClient) -> None:
    parent = client.chat_postMessage(channel="#secops", text="incident 42")
    reply = client.chat_postMessage(channel="#secops", text="evidence", thread_ts=parent["ts"])
    assert reply["message"]["thread_ts"] == parent["ts"]
    root = slack.message("#secops", parent["ts"])
    assert (root["reply_count"], root["latest_reply"]) == (1, reply["ts"])


def test_ephemeral_messages_answer_a_message_ts_and_stay_out_of_the_channel(
        slack: FakeSlack, client: WebClient) -> None:
    answer = client.chat_postEphemeral(channel="#secops", user=ALICE, text="only you",
                                       blocks=[SECTION])
    assert re.fullmatch(r"\d{10}\.\d{6}", answer["message_ts"])
    assert slack.ephemerals == [{"channel": slack.channel_id("#secops"), "user": ALICE,
                                 "text": "only you", "blocks": [SECTION],
                                 "message_ts": answer["message_ts"]}]
    assert slack.messages("#secops") == []


def test_ephemerals_to_non_members_answer_user_not_in_channel(slack: FakeSlack,
                                                              client: WebClient) -> None:
    slack.add_channel("#secops", members=[ALICE])
    assert client.chat_postEphemeral(channel="#secops", user=ALICE, text="hi")["ok"]
    error = api_error(client.chat_postEphemeral, channel="#secops", user=BOB, text="hi")
    assert error.response["error"] == "user_not_in_channel"


# ---------------------------------------------------------------- programmed faults


def test_a_rate_limit_raises_slack_api_error_with_429_and_retry_after(
        slack: FakeSlack, client: WebClient) -> None:
    slack.rate_limit("chat.postMessage", retry_after=7)
    error = api_error(client.chat_postMessage, channel="#secops", text="x")
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "7"
    assert error.response["error"] == "ratelimited"
    assert client.chat_postMessage(channel="#secops", text="x")["ok"]  # only once
    assert [c.status for c in slack.calls("chat.postMessage")] == [429, 200]


def test_the_sdk_rate_limit_handler_waits_and_retries(slack: FakeSlack) -> None:
    client = WebClient(token=slack.token, base_url=slack.base_url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])
    slack.rate_limit("chat.postMessage", times=2, retry_after=0)
    assert client.chat_postMessage(channel="#secops", text="x")["ok"]
    assert [c.status for c in slack.calls("chat.postMessage")] == [429, 429, 200]
    assert len(slack.messages("#secops")) == 1


def test_a_programmed_server_error_answers_5xx_then_recovers(slack: FakeSlack,
                                                             client: WebClient) -> None:
    slack.fail("chat.update", status=503)
    posted = client.chat_postMessage(channel="#secops", text="x")
    error = api_error(client.chat_update, channel=posted["channel"], ts=posted["ts"], text="y")
    assert error.response.status_code == 503
    assert error.response["error"] == "service_unavailable"
    assert client.chat_update(channel=posted["channel"], ts=posted["ts"], text="y")["ok"]


def test_a_programmed_api_error_answers_200_with_ok_false(slack: FakeSlack,
                                                          client: WebClient) -> None:
    slack.fail("chat.postMessage", status=200, error="not_in_channel")
    error = api_error(client.chat_postMessage, channel="#secops", text="x")
    assert (error.response.status_code, error.response["error"]) == (200, "not_in_channel")


def test_a_delay_holds_the_answer(slack: FakeSlack, client: WebClient) -> None:
    slack.delay("auth.test", 0.3)
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started >= 0.3
    [call] = slack.calls("auth.test")
    assert call.answered_at is not None
    assert call.answered_at - call.received_at >= 0.3


def test_unknown_methods_answer_unknown_method(slack: FakeSlack, client: WebClient) -> None:
    error = api_error(client.api_call, "conversations.history", params={"channel": "C0123456"})
    assert error.response["error"] == "unknown_method"
    assert error.response["req_method"] == "conversations.history"


# ---------------------------------------------------------------- files


def test_files_upload_v2_stores_the_bytes_and_shares_the_file(slack: FakeSlack,
                                                              client: WebClient) -> None:
    data = b"\x00\x01binary\r\n--not-a-boundary\r\n\xff" * 100
    thread = client.chat_postMessage(channel="#secops", text="incident 42")
    answer = client.files_upload_v2(
        content=data, filename="evidence.tar.gz", title="Evidence", channel=thread["channel"],
        thread_ts=thread["ts"], initial_comment="captured before isolation")
    file_id = answer["file"]["id"]
    assert answer["file"]["title"] == "Evidence"
    assert answer["file"]["size"] == len(data)
    upload = slack.uploads[file_id]
    assert upload.data == data
    assert (upload.title, upload.channel, upload.thread_ts) == ("Evidence", thread["channel"],
                                                                thread["ts"])
    assert upload.completed
    assert upload.length == len(data)
    reply = slack.messages("#secops")[-1]
    assert reply["thread_ts"] == thread["ts"]
    assert reply["text"] == "captured before isolation"
    assert reply["files"][0]["id"] == file_id
    methods = [r.method for r in slack.requests]
    assert methods == ["chat.postMessage", "files.getUploadURLExternal", UPLOAD,
                       "files.completeUploadExternal"]


def test_the_upload_url_points_back_at_the_fake(slack: FakeSlack, client: WebClient) -> None:
    answer = client.files_getUploadURLExternal(filename="a.txt", length=3)
    assert answer["upload_url"].startswith(slack.url + "/upload/")
    assert answer["file_id"].startswith("F")


def test_completing_an_upload_whose_bytes_never_arrived_answers_file_not_found(
        client: WebClient) -> None:
    announced = client.files_getUploadURLExternal(filename="a.txt", length=3)
    error = api_error(client.files_completeUploadExternal,
                      files=[{"id": announced["file_id"], "title": "a"}])
    assert error.response["error"] == "file_not_found"


def test_an_upload_url_also_takes_a_multipart_body(slack: FakeSlack, client: WebClient) -> None:
    announced = client.files_getUploadURLExternal(filename="a.txt", length=5)
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n")
    request = urllib.request.Request(announced["upload_url"], data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    assert slack.uploads[announced["file_id"]].data == b"hello"


# ---------------------------------------------------------------- usergroups, views


def test_usergroups_are_listed_and_their_members_returned(slack: FakeSlack,
                                                          client: WebClient) -> None:
    group = slack.add_usergroup("secops", users=[ALICE, BOB])
    listed = client.usergroups_list(include_users=True)["usergroups"]
    assert [(g["id"], g["handle"], g["users"]) for g in listed] == [
        (group, "secops", [ALICE, BOB])]
    assert client.usergroups_users_list(usergroup=group)["users"] == [ALICE, BOB]
    slack.set_usergroup_users("@secops", [BOB])
    assert client.usergroups_users_list(usergroup=group)["users"] == [BOB]


def test_an_unknown_usergroup_answers_no_such_subteam(client: WebClient) -> None:
    error = api_error(client.usergroups_users_list, usergroup="S0NOSUCH01")
    assert error.response["error"] == "no_such_subteam"


def test_views_open_records_the_modal_and_answers_a_view_id(slack: FakeSlack,
                                                            client: WebClient) -> None:
    answer = client.views_open(trigger_id="123.456.abc", view=MODAL)
    view = answer["view"]
    assert view["id"].startswith("V")
    assert (view["callback_id"], view["private_metadata"]) == ("decide", "inc-42")
    assert view["state"] == {"values": {}}
    [opened] = slack.views
    assert (opened.id, opened.trigger_id, opened.view) == (view["id"], "123.456.abc", view)


def test_a_trigger_id_opens_only_one_view(client: WebClient) -> None:
    client.views_open(trigger_id="123.456.abc", view=MODAL)
    error = api_error(client.views_open, trigger_id="123.456.abc", view=MODAL)
    assert error.response["error"] == "exchanged_trigger_id"


def test_an_expired_trigger_id_is_refused(slack: FakeSlack, client: WebClient) -> None:
    slack.expire_trigger("123.456.old")
    error = api_error(client.views_open, trigger_id="123.456.old", view=MODAL)
    assert error.response["error"] == "expired_trigger_id"


def test_an_invalid_modal_answers_invalid_arguments(client: WebClient) -> None:
    modal = {**MODAL, "title": {"type": "plain_text", "text": "x" * 25}}
    error = api_error(client.views_open, trigger_id="1.2.3", view=modal)
    assert error.response["error"] == "invalid_arguments"
    assert error.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 25 characters [json-pointer:/view/title/text]"]


# ---------------------------------------------------------------- the request log


def test_requests_record_method_args_headers_and_times(slack: FakeSlack,
                                                       client: WebClient) -> None:
    before_ns, before = time.time_ns(), time.monotonic()
    client.chat_postMessage(channel="#secops", text="hi", metadata={
        "event_type": "incident", "event_payload": {"id": 42}})
    [call] = slack.requests
    assert call.method == "chat.postMessage"
    assert call.args == {"channel": "#secops", "text": "hi", "metadata": {
        "event_type": "incident", "event_payload": {"id": 42}}}
    assert call.headers["user-agent"].startswith("Python/")
    assert call.token == slack.token
    assert before <= call.received_at <= time.monotonic()
    assert before_ns <= call.received_ns <= time.time_ns()
    assert call.ok
    assert call.error is None


def test_wait_for_blocks_until_the_calls_were_answered(slack: FakeSlack,
                                                       client: WebClient) -> None:
    def post_later() -> None:
        time.sleep(0.2)
        for text in ("one", "two"):
            client.chat_postMessage(channel="#secops", text=text)

    started = time.monotonic()
    threading.Thread(target=post_later, daemon=True).start()
    calls = slack.wait_for("chat.postMessage", count=2, timeout=5)
    assert [c.args["text"] for c in calls] == ["one", "two"]
    assert calls[0].received_at - started >= 0.2
    assert [m["text"] for m in slack.messages("#secops")] == ["one", "two"]


def test_wait_for_gives_up_with_a_timeout_error(slack: FakeSlack) -> None:
    with pytest.raises(TimeoutError, match=r"0 of 1 views\.open"):
        slack.wait_for("views.open", timeout=0.1)


# ---------------------------------------------------------------- requests Slack sends


def test_signed_request_headers_verify_with_the_sdk_verifier() -> None:
    body = slash_command_body(ALICE, "/drift", "status inc-42", "C0SECOPS01")
    headers = signed_request_headers(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b"&x=1", headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    stale = signed_request_headers(SECRET, body, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(body, stale)


def test_a_slash_command_body_is_form_encoded_like_slacks() -> None:
    body = slash_command_body(ALICE, "/drift", "approve inc-42", "C0SECOPS01",
                              response_url="https://hooks.slack.com/commands/T/1/x")
    assert body.startswith(b"token=")
    assert b"&command=%2Fdrift&text=approve+inc-42&" in body
    assert b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT%2F1%2Fx&" in body


@pytest.fixture
def bolt(slack: FakeSlack) -> App:
    return App(client=WebClient(token=slack.token, base_url=slack.base_url),
               signing_secret=SECRET, process_before_response=True)


def dispatch(app: App, body: bytes, secret: str = SECRET) -> Any:
    return app.dispatch(BoltRequest(body=body.decode(),
                                    headers=signed_request_headers(secret, body)))


def test_a_bolt_app_handles_a_signed_button_click_end_to_end(slack: FakeSlack, bolt: App,
                                                             client: WebClient) -> None:
    seen: dict[str, Any] = {}

    @bolt.action("approve")
    def approve(ack: Any, body: dict, action: dict, client: WebClient, respond: Any) -> None:
        ack()
        seen.update(value=action["value"], user=body["user"]["id"],
                    text=body["message"]["text"])
        client.chat_update(channel=body["container"]["channel_id"],
                           ts=body["container"]["message_ts"], text="isolated", blocks=[])
        respond(text="Isolation started")

    posted = client.chat_postMessage(channel="#secops", text="drift on web-1",
                                     blocks=[SECTION, BUTTONS])
    body = block_actions_payload(
        ALICE, "approve", "inc-42", posted["channel"], posted["ts"],
        message=slack.message("#secops", posted["ts"]),
        response_url=slack.response_url(posted["channel"], posted["ts"], ALICE))
    assert body.startswith(b"payload=%7B%22type%22%3A%22block_actions%22")

    response = dispatch(bolt, body)

    assert response.status == 200
    assert seen == {"value": "inc-42", "user": ALICE, "text": "drift on web-1"}
    assert slack.message("#secops", posted["ts"])["text"] == "isolated"
    [ephemeral] = slack.ephemerals
    assert (ephemeral["user"], ephemeral["text"]) == (ALICE, "Isolation started")
    [answered] = slack.responses
    assert answered.payload == {"text": "Isolation started"}
    assert len(slack.calls(RESPONSE_URL)) == 1
    assert len(slack.calls("auth.test")) == 1  # bolt checked the token on start


def test_a_bolt_app_refuses_a_body_signed_with_another_secret(bolt: App) -> None:
    body = block_actions_payload(ALICE, "approve", "inc-42", "C0SECOPS01", "1700000000.000100")
    assert dispatch(bolt, body, secret="not-the-secret").status == 401


def test_a_bolt_app_parses_a_slash_command(slack: FakeSlack, bolt: App) -> None:
    seen: dict[str, Any] = {}

    @bolt.command("/drift")
    def drift(ack: Any, command: dict, respond: Any) -> None:
        ack()
        seen.update(command)
        respond(text="working on it", response_type="in_channel")

    url = slack.response_url("#secops", kind="commands")
    response = dispatch(bolt, slash_command_body(ALICE, "/drift", "approve inc-42",
                                                 slack.channel_id("#secops"), url))
    assert response.status == 200
    assert (seen["command"], seen["text"], seen["user_id"]) == ("/drift", "approve inc-42",
                                                                ALICE)
    assert seen["channel_id"] == slack.channel_id("#secops")
    assert seen["team_id"] == TEAM_ID
    assert slack.messages("#secops")[0]["text"] == "working on it"


def test_a_bolt_app_parses_a_view_submission(slack: FakeSlack, bolt: App,
                                             client: WebClient) -> None:
    seen: dict[str, Any] = {}

    @bolt.view("decide")
    def decide(ack: Any, view: dict, body: dict) -> None:
        ack()
        seen.update(reason=view["state"]["values"]["reason"]["input"]["value"],
                    incident=view["private_metadata"], user=body["user"]["id"], id=view["id"])

    opened = client.views_open(trigger_id="123.456.abc", view=MODAL)["view"]
    body = view_submission_payload(ALICE, "decide", "inc-42",
                                   {"reason": {"input": "binary dropped in /tmp"}},
                                   view=slack.views[0].view)
    response = dispatch(bolt, body)
    assert response.status == 200
    assert seen == {"reason": "binary dropped in /tmp", "incident": "inc-42", "user": ALICE,
                    "id": opened["id"]}
