"""Who a Slack user is, for authorisation: their user groups (by handle), and whether they may
use the cluster-changing ``/drift`` commands.

User groups are read with ``usergroups.list`` (handle -> id) and ``usergroups.users.list``
(members), each cached for about a minute: a click must be answered quickly, and group
membership changes rarely. A failed look-up grants nothing (and is not cached).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = structlog.get_logger("drift.slack")

GROUP_PREFIX = "slack-group:"
USER_PREFIX = "slack:"
CACHE_TTL_S = 60.0


def group_handles(entries: Iterable[str]) -> list[str]:
    """The handles named by ``slack-group:<handle>`` entries (approvers, command users)."""
    return sorted({e[len(GROUP_PREFIX):].removeprefix("@") for e in entries
                   if e.startswith(GROUP_PREFIX) and len(e) > len(GROUP_PREFIX)})


class GroupResolver:
    def __init__(self, client: WebClient, ttl_s: float = CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}

    def groups_of(self, user: str, handles: Iterable[str]) -> list[str]:
        """Those of ``handles`` whose user group has ``user`` as a member."""
        wanted = sorted(set(handles))
        if not wanted:
            return []
        ids = self._cached("handles", self._load_handles)
        if ids is None:
            return []
        found = []
        for handle in wanted:
            group_id = ids.get(handle)
            if group_id is None:
                continue
            members = self._cached(f"members:{group_id}", partial(self._load_members, group_id))
            if members is not None and user in members:
                found.append(handle)
        return found

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            value = load()
        except (SlackApiError, SlackClientError) as exc:
            log.warning("slack.usergroups_failed", key=key, error=str(exc)[:300])
            return None
        with self._lock:
            self._cache[key] = (now + self.ttl_s, value)
        return value

    def _load_handles(self) -> dict[str, str]:
        response = self.client.usergroups_list()
        return {str(g["handle"]): str(g["id"]) for g in response.get("usergroups") or []
                if g.get("handle") and g.get("id")}

    def _load_members(self, group_id: str) -> frozenset[str]:
        response = self.client.usergroups_users_list(usergroup=group_id)
        return frozenset(str(u) for u in response.get("users") or [])


class CommandUsers:
    """``DRIFT_SLACK_COMMAND_USERS``: user ids (``U123`` or ``slack:U123``) and
    ``slack-group:<handle>`` entries. Empty: nobody may use the cluster-changing commands."""

    def __init__(self, setting: str, groups: GroupResolver) -> None:
        entries = [e.strip() for e in setting.split(",") if e.strip()]
        self.users = frozenset(e.removeprefix(USER_PREFIX) for e in entries
                               if not e.startswith(GROUP_PREFIX))
        self.handles = group_handles(entries)
        self.groups = groups

    def allowed(self, user: str) -> bool:
        if user in self.users:
            return True
        return bool(self.handles) and bool(self.groups.groups_of(user, self.handles))
