"""Per-agent status from the retained birth messages and the MQTT wills, and the table that keeps it.

Every server process subscribes to `greenmine/v1/+/+/status` without a shared
group (retained messages are not delivered to shared subscriptions, and every
process should know every agent), so each holds the full table, persisted in
the `agents` table of its spool file (`AgentTable`, written in the same
transaction as the group of messages it came with) and reloaded on start.

Statuses are applied in arrival order, not by their `ts`: the will is composed
when the agent connects, so its `ts` is older than the birth it follows.

An agent going offline is a signal for alerting: `add_listener(fn)` calls
`fn(info, previous)` (on the ingest thread, after the state is durable) for
every status applied; `previous` is None for an agent seen for the first time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import NamedTuple, Protocol

from greenmine.schemas import AgentStatus

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class AgentInfo(NamedTuple):
    """The last known status of one agent; also the row of the spool's `agents` table."""

    site: str
    agent: str
    state: str  # "online" | "offline"
    since_ms: int  # server time when the state last changed
    seen_ms: int  # server time of the last status message
    status_ts_ms: int  # the `ts` in that message
    version: str | None
    config_hash: str | None
    outbox_depth: int | None
    dropped_batches: int | None
    dropped_readings: int | None

    @property
    def online(self) -> bool:
        return self.state == "online"

    @property
    def since(self) -> datetime:
        return datetime.fromtimestamp(self.since_ms / 1000, timezone.utc)


Listener = Callable[[AgentInfo, "AgentInfo | None"], None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    site             TEXT    NOT NULL,
    agent            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    since_ms         INTEGER NOT NULL,
    seen_ms          INTEGER NOT NULL,
    status_ts_ms     INTEGER NOT NULL,
    version          TEXT,
    config_hash      TEXT,
    outbox_depth     INTEGER,
    dropped_batches  INTEGER,
    dropped_readings INTEGER,
    PRIMARY KEY (site, agent)
);
"""


class AgentStates(Protocol):
    """The durable agent states. `save` runs inside a spool file transaction."""

    def save(self, con: sqlite3.Connection, infos: Sequence[AgentInfo]) -> None: ...
    def load(self) -> list[AgentInfo]: ...


class AgentTable:
    """The `agents` table of the spool file: one row per agent, its last known status."""

    def __init__(self, reader: sqlite3.Connection) -> None:
        self._reader = reader

    def save(self, con: sqlite3.Connection, infos: Sequence[AgentInfo]) -> None:
        if infos:
            con.executemany("INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", infos)

    def load(self) -> list[AgentInfo]:
        return [AgentInfo(*row) for row in self._reader.execute("SELECT * FROM agents ORDER BY site, agent")]


class AgentRegistry:
    """Thread-safe table of agent states. `prepare` and `applied` are the ingest thread's; reads are anyone's."""

    def __init__(self, rows: Sequence[tuple] = (), on_change: Callable[[AgentInfo], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._agents: dict[tuple[str, str], AgentInfo] = {}
        self._listeners: list[Listener] = []
        # Device states from the latest status that listed devices (the will lists none).
        # In memory only: every birth message (retained, so redelivered on restart) and
        # every device state change carries the full list again.
        self._devices: dict[tuple[str, str], dict[str, str]] = {}
        self._on_change = on_change
        for row in rows:
            info = AgentInfo(*row)
            self._agents[(info.site, info.agent)] = info
            if on_change:
                on_change(info)

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def get(self, site: str, agent: str) -> AgentInfo | None:
        with self._lock:
            return self._agents.get((site, agent))

    def all(self) -> list[AgentInfo]:
        with self._lock:
            return sorted(self._agents.values())

    def device_state(self, site: str, agent: str, device: str) -> str | None:
        """"online", "offline" or "unknown" as the agent last reported the device; None if never reported."""
        with self._lock:
            return self._devices.get((site, agent), {}).get(device)

    def offline(self) -> list[AgentInfo]:
        return [a for a in self.all() if not a.online]

    def prepare(self, status: AgentStatus, received_ms: int, pending: dict | None = None) -> AgentInfo:
        """The new state for this status (not yet applied). `pending` holds states prepared earlier in the same commit."""
        key = (status.site, status.agent)
        if status.devices:
            # Taken before the status is durable: a status that fails to commit is
            # redelivered, so this view is at most one message early.
            with self._lock:
                self._devices[key] = {d.device: d.state.value for d in status.devices}
        prev = (pending or {}).get(key) or self.get(*key)
        state = status.state.value
        since = prev.since_ms if prev is not None and prev.state == state else received_ms
        return AgentInfo(
            status.site,
            status.agent,
            state,
            since,
            received_ms,
            (status.ts - _EPOCH) // timedelta(milliseconds=1),
            status.version,
            status.config_hash,
            status.outbox_depth,
            status.dropped_batches,
            status.dropped_readings,
        )

    def applied(self, infos: list[AgentInfo]) -> None:
        """Record states that are now durable, log changes and notify listeners."""
        for info in infos:
            # the gauge moves before the state is visible, so whoever sees
            # the new state through get() also sees it on /metrics
            if self._on_change:
                self._on_change(info)
            with self._lock:
                prev = self._agents.get((info.site, info.agent))
                self._agents[(info.site, info.agent)] = info
            if prev is None or prev.state != info.state:
                log.info("agent %s/%s is %s", info.site, info.agent, info.state)
            for fn in self._listeners:
                try:
                    fn(info, prev)
                except Exception:
                    log.exception("agent status listener %r failed", fn)
