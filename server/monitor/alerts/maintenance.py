"""Maintenance windows: per-site or per-device time ranges during which alerts are held, not emailed.

Windows come from two places and live in one table of the alert state file
(`alerts.sqlite`, table `maintenance`):

- `[[alerts.maintenance]]` in the server config (`source = "config"`): synced at
  start, so a window removed from the file is gone after a restart;
- `greenmine alerts maintenance add|list|remove` (`source = "cli"`), which
  writes to the same file while the server runs; the engine notices through
  SQLite's `data_version`, without polling the table.

A window is [from, to): a site's (every device and the site's own KPIs) or one
device's (the alerts whose subject or devices name it). What "held" means for
an alert is the engine's (`engine.py`, docs/kpi-alerts.md "Maintenance windows").
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

IDENT = r"^[A-Za-z0-9_-]{1,64}$"

SCHEMA = """
CREATE TABLE IF NOT EXISTS maintenance (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, device TEXT NOT NULL DEFAULT '',
    from_ts REAL NOT NULL, to_ts REAL NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, created_ts REAL NOT NULL,
    UNIQUE (source, site, device, from_ts, to_ts));
"""


class MaintenanceWindow(BaseModel):
    """One `[[alerts.maintenance]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(pattern=IDENT, description="site id")
    device: str | None = Field(default=None, pattern=IDENT, description="only this device (or agent); absent: the whole site")
    start: AwareDatetime = Field(description="start, with its UTC offset, e.g. 2026-12-01T08:00:00+08:00")
    end: AwareDatetime = Field(description="end (exclusive), with its UTC offset")
    reason: str = Field(min_length=1, max_length=200, description="why, e.g. 'calibrating dust monitor'; shown with held alerts")

    @model_validator(mode="after")
    def _check(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError(f"maintenance window of site {self.site}: end {self.end.isoformat()} is not after "
                             f"start {self.start.isoformat()}")
        check_reason(self.reason)
        return self


def check_reason(reason: str) -> str:
    if not reason.strip() or not reason.isprintable():
        raise ValueError(f"maintenance reason {reason!r}: write a line of text without control characters")
    return reason


@dataclass(frozen=True)
class Window:
    id: int
    site: str
    device: str  # "" = the whole site
    from_ts: float
    to_ts: float
    reason: str
    source: str  # config | cli

    def covers(self, site: str, subjects: tuple[str, ...], start: float, end: float) -> bool:
        """Whether the window holds an observation of `subjects` at `site` over [start, end] (a point if equal)."""
        if site != self.site or (self.device and self.device not in subjects):
            return False
        if start >= end:
            return self.from_ts <= start < self.to_ts
        return self.from_ts < end and self.to_ts > start

    def facts(self, tz: str) -> dict:
        """What a held alert records about the window."""
        d = asdict(self)
        d["from_local"] = local(self.from_ts, tz)
        d["to_local"] = local(self.to_ts, tz)
        return d


def local(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def _row(r) -> Window:
    return Window(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def load(db: sqlite3.Connection) -> list[Window]:
    return [_row(r) for r in db.execute(
        "SELECT id, site, device, from_ts, to_ts, reason, source FROM maintenance ORDER BY from_ts, id")]


def sync_config(db: sqlite3.Connection, windows: list[MaintenanceWindow], now: float) -> None:
    """Make the table's config windows exactly the configured ones (ids of unchanged ones stay)."""
    want = {(w.site, w.device or "", w.start.timestamp(), w.end.timestamp()): w.reason for w in windows}
    for wid, site, device, f, t in db.execute(
            "SELECT id, site, device, from_ts, to_ts FROM maintenance WHERE source='config'").fetchall():
        if (site, device, f, t) not in want:
            db.execute("DELETE FROM maintenance WHERE id=?", (wid,))
    for (site, device, f, t), reason in want.items():
        db.execute("INSERT INTO maintenance (site, device, from_ts, to_ts, reason, source, created_ts) "
                   "VALUES (?,?,?,?,?,'config',?) ON CONFLICT DO UPDATE SET reason=excluded.reason",
                   (site, device, f, t, reason, now))


def add(db: sqlite3.Connection, site: str, device: str | None, from_ts: float, to_ts: float, reason: str,
        now: float) -> int:
    if to_ts <= from_ts:
        raise ValueError("the window's end is not after its start")
    check_reason(reason)
    cur = db.execute("INSERT INTO maintenance (site, device, from_ts, to_ts, reason, source, created_ts) "
                     "VALUES (?,?,?,?,?,'cli',?) ON CONFLICT DO UPDATE SET reason=excluded.reason RETURNING id",
                     (site, device or "", from_ts, to_ts, reason, now))
    return cur.fetchone()[0]


def remove(db: sqlite3.Connection, window_id: int) -> str:
    """"removed", "config" (defined in the config file: not removed) or "missing"."""
    row = db.execute("SELECT source FROM maintenance WHERE id=?", (window_id,)).fetchone()
    if row is None:
        return "missing"
    if row[0] == "config":
        return "config"
    db.execute("DELETE FROM maintenance WHERE id=?", (window_id,))
    return "removed"
