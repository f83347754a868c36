"""Posting and updating the incident's Slack message, digests, and evidence files in its thread
(slack_sdk Web API client). Rate limits are the caller's (responder.workers.notifying, over
``ChannelBucket``); here a 429 becomes ``RateLimited`` (its Retry-After) and a failure worth
trying again (5xx, network) becomes ``Transient``."""

from __future__ import annotations

import http.client
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError

from responder.plugins.notify import slack_blocks
from responder.plugins.notify.ratelimit import ChannelBucket, RateLimited, SlackLimits
from responder.plugins.notify.views import PromptView

__all__ = ["ChannelBucket", "Posted", "RateLimited", "SlackLimits", "SlackNotifier", "Transient"]


class Transient(Exception):
    """Slack or the network failed in a way worth trying again later (5xx, timeouts)."""


@dataclass
class Posted:
    channel: str
    ts: str


@contextmanager
def slack_errors() -> Iterator[None]:
    try:
        yield
    except SlackApiError as exc:
        status = exc.response.status_code
        if status == 429:
            raise RateLimited(float(exc.response.headers.get("Retry-After", "1"))) from None
        if status >= 500:
            raise Transient(f"Slack answered {status}: {exc.response.get('error')}") from None
        raise
    except (SlackRequestError, urllib.error.URLError, http.client.HTTPException,
            OSError) as exc:
        raise Transient(f"{type(exc).__name__}: {exc}") from None


class SlackNotifier:
    def __init__(self, client: WebClient, bucket: ChannelBucket) -> None:
        self.client = client
        self.bucket: ChannelBucket | None = bucket

    def sync(self, view: PromptView, existing: Posted | None, channel: str) -> Posted:
        """Post the incident's message, or update it in place (the caller holds the token)."""
        text, blocks = slack_blocks.render(view)
        with slack_errors():
            if existing is None:
                response = self.client.chat_postMessage(channel=channel, text=text,
                                                        blocks=blocks, unfurl_links=False,
                                                        unfurl_media=False)
                return Posted(str(response["channel"]), str(response["ts"]))
            self.client.chat_update(channel=existing.channel, ts=existing.ts, text=text,
                                    blocks=blocks)
            return existing

    def post_digest(self, channel: str, text: str, blocks: list[dict[str, Any]]) -> Posted:
        with slack_errors():
            response = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks,
                                                    unfurl_links=False, unfurl_media=False)
        return Posted(str(response["channel"]), str(response["ts"]))

    def upload(self, posted: Posted, *, data: bytes, filename: str, title: str,
               comment: str) -> str:
        """A file into the message's thread (files_upload_v2); returns Slack's file id."""
        with slack_errors():
            response = self.client.files_upload_v2(
                channel=posted.channel, thread_ts=posted.ts, file=data, filename=filename,
                title=title, initial_comment=comment)
        file = response.get("file") or {}
        return str(file.get("id", "")) if isinstance(file, dict) else ""

    def ephemeral(self, channel: str, user: str, text: str) -> None:
        self.client.chat_postEphemeral(channel=channel, user=user,
                                       text=slack_blocks.escape(text))

