"""The Slack bot (slack-bolt). Listeners arrive with the Slack chat-ops issue."""
