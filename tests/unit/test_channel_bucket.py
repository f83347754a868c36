"""Slack's limits as the workers share them: the per-channel bucket with its burst, the FIFO queue
of prompts waiting for their first message, the digest, the separate coalescing update limit.

The algorithm runs on an injected clock; the same answers are checked on each place the state can
live (memory, the embedded SQLite file, Redis), and concurrent workers are checked on the two
shared ones."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from responder.plugins.notify import ratelimit
from responder.plugins.notify.ratelimit import ChannelBucket, SlackLimits, Turn
from responder.settings import Settings
from tests.conftest import REDIS_URL

CHANNEL = "#secops"


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


LIMITS = SlackLimits(rate_per_second=1.0, burst=3, digest_after=4, digest_interval_s=5.0,
                     update_per_minute=60.0, update_burst=2, update_interval_s=1.0,
                     grace_s=10.0)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, object]]:
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        yield "redis", client
        client.close()
    elif request.param == "sqlite":
        yield "sqlite", tmp_path / "limits.db"
    else:
        yield "memory", None


def bucket_at(where: tuple[str, object], prefix: str, clock: Clock,
              limits: SlackLimits = LIMITS) -> ChannelBucket:
    kind, target = where
    if kind == "redis":
        assert isinstance(target, redis.Redis)
        return ChannelBucket(target, None, prefix, limits, clock=clock)
    if kind == "sqlite":
        assert isinstance(target, Path)
        return ChannelBucket(None, None, prefix, limits, path=target, clock=clock)
    return ChannelBucket(None, None, prefix, limits, clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bucket(where: tuple[str, object], redis_prefix: str, clock: Clock) -> ChannelBucket:
    return bucket_at(where, redis_prefix, clock)


def kinds(turns: list[Turn]) -> list[str]:
    return [t.kind for t in turns]


def test_a_quiet_channel_takes_a_burst_then_one_message_a_second(bucket: ChannelBucket,
                                                                  clock: Clock) -> None:
    assert kinds([bucket.turn(CHANNEL, f"i{n}") for n in range(3)]) == ["post"] * 3
    refused = bucket.turn(CHANNEL, "i3")
    assert refused.kind == "wait"
    assert refused.wait_s == pytest.approx(1.0, abs=0.002)
    clock.advance(1.0)
    assert bucket.poll("i3") is not None
    assert bucket.waiting(CHANNEL) == []
    assert bucket.turn("#other", "j0").kind == "post"  # every channel has its own bucket


def test_a_refusal_says_exactly_how_long_until_the_callers_turn(bucket: ChannelBucket,
                                                                 clock: Clock) -> None:
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")
    waits = [bucket.turn(CHANNEL, f"w{n}").wait_s for n in range(3)]
    assert waits == pytest.approx([1.0, 2.0, 3.0], abs=0.002)
    clock.advance(0.4)  # asking again early: the wait has shrunk by as much
    assert bucket.turn(CHANNEL, "w1").wait_s == pytest.approx(1.6, abs=0.002)


def test_waiting_prompts_are_served_oldest_first_and_newer_ones_wait(bucket: ChannelBucket,
                                                                      clock: Clock) -> None:
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")
    for name in ("a", "b", "c"):
        assert bucket.turn(CHANNEL, name).kind == "wait"
    clock.advance(1.0)
    # A token is back: the newest asks first, and is told to wait for the oldest's turn.
    assert bucket.turn(CHANNEL, "c").kind == "wait"
    assert bucket.turn(CHANNEL, "b").kind == "wait"
    assert bucket.poll("a") == Turn("post", CHANNEL, seq=4, enqueued_ms=1_000_000_000)
    assert bucket.waiting(CHANNEL) == ["b", "c"]
    clock.advance(2.0)  # two tokens: enough for b and for c behind it, in either order
    assert bucket.poll("c") is not None
    assert bucket.poll("b") is not None
    assert bucket.waiting(CHANNEL) == []


def test_a_prompt_whose_task_is_late_keeps_its_place_but_holds_nobody_back(
        bucket: ChannelBucket, clock: Clock) -> None:
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")
    assert bucket.turn(CHANNEL, "late").wait_s == pytest.approx(1.0, abs=0.002)
    assert bucket.turn(CHANNEL, "next").wait_s == pytest.approx(2.0, abs=0.002)
    clock.advance(1.0 + 10.0 + 1.0)  # "late" did not come back within its wait + grace
    assert bucket.poll("next") is not None
    assert bucket.poll("next") is None
    assert bucket.waiting(CHANNEL) == ["late"]
    assert bucket.turn(CHANNEL, "newest").kind == "post"  # tokens left: nobody waits ahead
    assert bucket.poll("late") is not None  # back at last, still first in line
    assert bucket.waiting(CHANNEL) == []


def test_more_than_digest_after_waiting_prompts_are_named_in_one_digest_then_one_per_interval(
        bucket: ChannelBucket, clock: Clock) -> None:
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")
    for n in range(5):
        assert bucket.turn(CHANNEL, f"w{n}").kind == "wait"
    clock.advance(1.0)
    digest = bucket.poll("w0")
    assert digest is not None
    assert digest.kind == "digest"
    assert digest.incidents == [f"w{n}" for n in range(5)]  # oldest first
    # Everyone still waits for their own message; the digest took that second's token.
    assert bucket.waiting(CHANNEL) == [f"w{n}" for n in range(5)]
    clock.advance(1.0)
    assert kinds([bucket.turn(CHANNEL, "w5"), bucket.turn(CHANNEL, "w6")]) == ["wait", "wait"]
    assert kinds([t for t in [bucket.poll("w0")] if t]) == ["post"]
    clock.advance(1.0)  # six waiting, two not named yet, but the interval has not passed
    assert kinds([t for t in [bucket.poll("w1")] if t]) == ["post"]
    clock.advance(3.0)
    later = bucket.poll("w2")
    assert later is not None
    assert later.kind == "digest"
    assert later.incidents == ["w5", "w6"]
    assert bucket.stats(CHANNEL)["digests"] == 2


def test_a_429_gives_the_prompt_its_place_back_and_pauses_the_channel(
        bucket: ChannelBucket, clock: Clock) -> None:
    first = bucket.turn(CHANNEL, "a")
    assert first.kind == "post"
    assert bucket.turn(CHANNEL, "b").kind == "post"
    bucket.restore(first, "a", retry_after=5.0)  # Slack refused a's message
    assert bucket.waiting(CHANNEL) == ["a"]
    assert bucket.turn(CHANNEL, "c").wait_s == pytest.approx(7.0, abs=0.002)  # a first
    clock.advance(5.0)  # Retry-After has passed; the bucket starts again from empty
    assert bucket.poll("a") is not None
    assert bucket.waiting(CHANNEL) == ["a", "c"]
    clock.advance(1.0)
    assert bucket.turn(CHANNEL, "c").kind == "wait"
    turn = bucket.poll("a")
    assert turn is not None
    assert turn.kind == "post"
    assert turn.seq == first.seq


def test_failed_posts_keep_their_place_and_pause_the_channel_longer_in_a_row_then_forget(
        bucket: ChannelBucket, clock: Clock) -> None:
    pauses = []
    for _ in range(8):
        granted = bucket.poll("a") or bucket.turn(CHANNEL, "a")
        assert granted.kind == "post"
        pauses.append(bucket.failed(granted, "a"))  # Slack answered 5xx
        assert bucket.waiting(CHANNEL)[0] == "a"  # its place kept
        behind = bucket.poll("b") or bucket.turn(CHANNEL, "b")
        assert behind.kind == "wait"  # nobody else gets past the pause
        clock.advance(pauses[-1] + 1.0)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    clock.advance(ratelimit.FAILURE_MEMORY_MS / 1000 + 1)  # a while without failures
    granted = bucket.poll("a")
    assert granted is not None
    assert bucket.failed(granted, "a") == ratelimit.FAILURE_PAUSE_S


def test_a_burst_failing_together_counts_once_and_a_post_that_goes_through_ends_the_row(
        bucket: ChannelBucket, clock: Clock) -> None:
    burst = [bucket.turn(CHANNEL, name) for name in "abc"]
    assert kinds(burst) == ["post"] * 3
    # All three were in flight when Slack went down: one failure, one pause.
    assert [bucket.failed(turn, name) for turn, name in zip(burst, "abc", strict=True)] == [
        1.0, 1.0, 1.0]
    assert bucket.waiting(CHANNEL) == ["a", "b", "c"]
    clock.advance(2.0)  # the pause, then a token
    again = bucket.poll("a")
    assert again is not None
    assert again.kind == "post"
    assert bucket.failed(again, "a") == 2.0  # the second in a row
    clock.advance(3.0)
    again = bucket.poll("a")
    assert again is not None
    assert again.kind == "post"
    bucket.posted(CHANNEL)  # it went through
    clock.advance(1.0)
    turn = bucket.poll("b")
    assert turn is not None
    assert turn.kind == "post"
    assert bucket.failed(turn, "b") == ratelimit.FAILURE_PAUSE_S  # a new row


def test_a_token_not_used_goes_back_and_the_place_too(bucket: ChannelBucket) -> None:
    for n in range(2):
        bucket.turn(CHANNEL, f"i{n}")
    granted = bucket.turn(CHANNEL, "a")
    assert granted.kind == "post"
    assert bucket.turn(CHANNEL, "b").kind == "wait"
    bucket.restore(granted, "a", None)  # another worker was posting a's message
    assert bucket.waiting(CHANNEL) == ["a", "b"]
    assert bucket.poll("a") is not None
    assert bucket.poll("a") is None
    bucket.refund(CHANNEL)
    assert bucket.poll("b") is not None
    assert bucket.waiting(CHANNEL) == []


def test_the_cheap_poll_answers_only_for_incidents_already_waiting(
        bucket: ChannelBucket) -> None:
    assert bucket.poll("unknown") is None
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")
    bucket.turn(CHANNEL, "w")
    answer = bucket.poll("w")
    assert answer is not None
    assert answer.kind == "wait"
    assert answer.channel == CHANNEL
    bucket.forget(CHANNEL, "w")
    assert bucket.poll("w") is None
    assert bucket.waiting(CHANNEL) == []


def test_updates_are_coalesced_per_message_and_limited_apart_from_new_posts(
        bucket: ChannelBucket, clock: Clock) -> None:
    for n in range(3):
        bucket.turn(CHANNEL, f"i{n}")  # the channel's bucket is empty...
    assert bucket.update_slot("i0", "v1").kind == "go"  # ...updates have their own
    bucket.sent("i0", "v1")
    clock.advance(0.3)
    slot = bucket.update_slot("i0", "v2")  # a second change within the second: later
    assert slot.kind == "wait"
    assert slot.wait_s == pytest.approx(0.7, abs=0.002)
    assert bucket.update_slot("i0", "v1").kind == "same"  # what the message shows already
    assert bucket.update_slot("i1", "v1").kind == "go"  # another message is not held back
    clock.advance(0.7)
    assert bucket.update_slot("i0", "v3").kind == "go"
    slot = bucket.update_slot("i2", "v1")  # the workspace's update budget (burst 2) is spent
    assert slot.kind == "wait"
    assert slot.wait_s == pytest.approx(1.0, abs=0.002)


def test_a_429_on_updates_pauses_the_update_budget_only(bucket: ChannelBucket,
                                                         clock: Clock) -> None:
    bucket.updates_refused(4.0)
    slot = bucket.update_slot("i0", "v1")
    assert slot.kind == "wait"
    assert slot.wait_s == pytest.approx(5.0, abs=0.002)
    assert bucket.upload_token() == pytest.approx(5.0, abs=0.002)
    assert bucket.turn(CHANNEL, "a").kind == "post"
    clock.advance(5.0)
    assert bucket.upload_token() == 0


def test_a_lock_has_one_holder_until_released_or_expired(bucket: ChannelBucket,
                                                         clock: Clock) -> None:
    token = bucket.lock("upload:i0", 30)
    assert token is not None
    assert bucket.lock("upload:i0", 30) is None
    bucket.unlock("upload:i0", "not-the-token")
    assert bucket.lock("upload:i0", 30) is None
    bucket.unlock("upload:i0", token)
    again = bucket.lock("upload:i0", 30)
    assert again is not None
    clock.advance(31)
    assert bucket.lock("upload:i0", 30) is not None


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_workers_never_take_more_tokens_than_the_bucket_holds(
        kind: str, tmp_path: Path, redis_prefix: str) -> None:
    clock = Clock()  # frozen: no refill during the race
    limits = SlackLimits(rate_per_second=1.0, burst=5, digest_after=1000)
    client = redis.Redis.from_url(REDIS_URL) if kind == "redis" else None
    where: tuple[str, object] = (kind, client if client is not None else tmp_path / "l.db")
    turns: list[Turn] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        mine = bucket_at(where, redis_prefix, clock, limits)  # a bucket per worker process
        barrier.wait()
        for k in range(5):
            turn = mine.turn(CHANNEL, f"w{n}-{k}")
            with lock:
                turns.append(turn)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if client is not None:
        client.close()
    assert len(turns) == 40
    assert kinds(turns).count("post") == 5
    waits = sorted(t.wait_s for t in turns if t.kind == "wait")
    assert waits == pytest.approx([float(n) for n in range(1, 36)], abs=0.002)


def test_bind_reads_the_limits_from_settings_and_embedded_mode_shares_a_file(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, slack_rate_per_second=2.0)
    first = ChannelBucket(None, settings.slack_rate_per_second, "drift:")
    first.bind(settings)
    assert first.backend == "sqlite"
    assert first.limits.rate_per_second == 2.0
    assert first.limits.burst == SlackLimits().burst
    second = ChannelBucket(None, 2.0, "drift:")
    second.bind(settings)
    for n in range(10):
        assert first.turn(CHANNEL, f"i{n}").kind == "post"
    assert second.turn(CHANNEL, "other-process").kind == "wait"
    assert (tmp_path / "slack-limits.db").exists()
