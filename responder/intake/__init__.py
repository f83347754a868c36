"""Getting alerts in: HTTP intake, the falcosidekick Redis-list consumer, and correlation."""
