"""Posting and updating the incident's Slack message (slack_sdk Web API client)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from responder.plugins.notify import slack_blocks
from responder.plugins.notify.views import PromptView

# A token bucket per channel; returns 0 when a token was taken, else ms to wait.
_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return wait
"""


class RateLimited(Exception):
    """Try again after ``retry_after`` seconds (a 429 from Slack, or our own bucket)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.2f}s")
        self.retry_after = retry_after


class ChannelBucket:
    """About one message a second per channel, shared by every worker through Redis."""

    def __init__(self, client: redis.Redis | None, rate: float, prefix: str) -> None:
        self.client = client
        self.rate = rate
        self.prefix = prefix
        self._script = client.register_script(_BUCKET) if client is not None else None

    def take(self, channel: str) -> None:
        if self._script is None:
            return
        wait_ms = int(self._script(keys=[f"{self.prefix}slack:bucket:{channel}"],
                                   args=[self.rate, max(1.0, self.rate), int(time.time() * 1000)]))
        if wait_ms > 0:
            raise RateLimited(wait_ms / 1000)


@dataclass
class Posted:
    channel: str
    ts: str


class SlackNotifier:
    def __init__(self, client: WebClient, bucket: ChannelBucket) -> None:
        self.client = client
        self.bucket = bucket

    def sync(self, view: PromptView, existing: Posted | None, channel: str) -> Posted:
        """Post the incident's message, or update it in place."""
        text, blocks = slack_blocks.render(view)
        target = existing.channel if existing else channel
        self.bucket.take(target)
        try:
            if existing is None:
                response = self.client.chat_postMessage(channel=channel, text=text,
                                                        blocks=blocks, unfurl_links=False,
                                                        unfurl_media=False)
                return Posted(str(response["channel"]), str(response["ts"]))
            self.client.chat_update(channel=existing.channel, ts=existing.ts, text=text,
                                    blocks=blocks)
            return existing
        except SlackApiError as exc:
            if exc.response.status_code == 429:
                raise RateLimited(float(exc.response.headers.get("Retry-After", "1"))) from None
            raise

    def ephemeral(self, channel: str, user: str, text: str) -> None:
        self.client.chat_postEphemeral(channel=channel, user=user,
                                       text=slack_blocks.escape(text))
