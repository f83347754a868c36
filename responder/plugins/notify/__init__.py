"""Notifiers: how an incident's approval prompt and its progress reach people (Slack, console).

A notifier renders the incident's *current* state and posts or updates one message per incident;
every notification is a re-render, so a repeated or reordered delivery converges on the truth.
Slack's rate limits (per-channel bucket with a burst, FIFO queue of waiting prompts, digests,
coalesced updates) are in ``ratelimit``; the prompt's evidence sections in ``slack_blocks``.
"""
