"""The supervision database (绿色矿山监管信息数据库): mines, their list history, spot-check draws, checks and
rectifications, in one SQLite file beside the KPI and alert state.

    reg = Registry(path)
    reg.sync(cfg.supervision.mines, today)       # configured mines: facts upserted, history on first entry
    reg.import_rows(rows, source, today)         # CSV/XLSX rows, validated all or nothing
    reg.status_on(mine_id, day)                  # (status, level) as of a date, from the history
    reg.draw(...), reg.record_check(...), reg.close_rectification(...), reg.remove(...)

Every change of list status or level is a row of `list_history` (date, from, to, why, by): the list is
dynamic (能进能出) and the history says when and why a mine entered or left it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from greenmine.server.supervision.config import ON_LIST, ListStatus, MineConfig
from greenmine.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mines (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, credit_code TEXT NOT NULL, licence_no TEXT NOT NULL UNIQUE,
    prefecture TEXT NOT NULL, county TEXT NOT NULL, mineral TEXT NOT NULL, scale TEXT NOT NULL, level TEXT NOT NULL,
    listed_since TEXT, status TEXT NOT NULL, assessment_date TEXT, assessor TEXT NOT NULL, officer TEXT NOT NULL,
    source TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS list_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, mine_id TEXT NOT NULL, day TEXT NOT NULL, status TEXT NOT NULL,
    level TEXT NOT NULL, prev_status TEXT, prev_level TEXT, reason TEXT NOT NULL, by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS list_history_mine ON list_history (mine_id, day, id);
CREATE TABLE IF NOT EXISTS draws (
    id INTEGER PRIMARY KEY AUTOINCREMENT, day TEXT NOT NULL, prefecture TEXT NOT NULL, seed TEXT NOT NULL,
    n_mines INTEGER NOT NULL, n_inspectors INTEGER NOT NULL, mine_pool TEXT NOT NULL, inspector_pool TEXT NOT NULL,
    mines TEXT NOT NULL, inspectors TEXT NOT NULL, method TEXT NOT NULL, by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, draw_id INTEGER, mine_id TEXT NOT NULL, planned_day TEXT NOT NULL,
    day TEXT, inspectors TEXT NOT NULL, findings TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT 'planned');
CREATE TABLE IF NOT EXISTS rectifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, mine_id TEXT NOT NULL, check_id INTEGER, opened TEXT NOT NULL,
    deadline TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open', closed TEXT, note TEXT NOT NULL DEFAULT '',
    officer TEXT NOT NULL DEFAULT '', overdue_alert_ts REAL);
"""

MINE_FIELDS = ("id", "name", "credit_code", "licence_no", "prefecture", "county", "mineral", "scale", "level",
               "listed_since", "status", "assessment_date", "assessor", "officer")


class RegistryError(Exception):
    """A registry operation that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Mine:
    id: str
    name: str
    credit_code: str
    licence_no: str
    prefecture: str
    county: str
    mineral: str
    scale: str
    level: str
    listed_since: str | None
    status: str
    assessment_date: str | None
    assessor: str
    officer: str
    source: str
    updated: str

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class History:
    mine_id: str
    day: str
    status: str
    level: str
    prev_status: str | None
    prev_level: str | None
    reason: str
    by: str


@dataclass(frozen=True)
class Check:
    id: int
    draw_id: int | None
    mine_id: str
    planned_day: str
    day: str | None
    inspectors: list[str]
    findings: str
    result: str  # planned | pass | fail


@dataclass(frozen=True)
class Rectification:
    id: int
    mine_id: str
    check_id: int | None
    opened: str
    deadline: str
    status: str  # open | passed | failed | lapsed
    closed: str | None
    note: str
    officer: str
    overdue_alert_ts: float | None

    def overdue_on(self, day: date) -> bool:
        """Open past its deadline on `day` (a lapsed one was overdue when it was closed)."""
        return self.status == "lapsed" or (self.status == "open" and day > date.fromisoformat(self.deadline))


def _row(m: MineConfig) -> tuple:
    return (m.id, m.name, m.credit_code, m.licence_no, m.prefecture, m.county, m.mineral, m.scale.value, m.level.value,
            m.listed_since.isoformat() if m.listed_since else None, m.status.value,
            m.assessment_date.isoformat() if m.assessment_date else None, m.assessor, m.officer)


class Registry:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.db = connect(path, synchronous="full")
        self._lock = threading.RLock()
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self, what: str):
        return transaction(self.db, f"supervision registry: {what}", lock=self._lock)

    # --- mines --------------------------------------------------------------

    def _upsert(self, m: MineConfig, source: str, today: date, *, status_from_source: bool) -> None:
        db = self.db
        old = db.execute("SELECT status, level FROM mines WHERE id=?", (m.id,)).fetchone()
        row = _row(m)
        if old is None:
            db.execute(f"INSERT INTO mines ({','.join(MINE_FIELDS)}, source, updated) VALUES ({','.join('?' * 16)})",
                       (*row, source, today.isoformat()))
            entered = m.listed_since.isoformat() if m.listed_since else today.isoformat()
            self._history(m.id, entered, m.status.value, m.level.value, None, None, f"entered from {source}", source)
            return
        # a field the source does not give (a column the file lacks, an option the config leaves out) keeps its value
        was = dict(zip(MINE_FIELDS, db.execute(f"SELECT {','.join(MINE_FIELDS)} FROM mines WHERE id=?", (m.id,)).fetchone()))
        given = dict(zip(MINE_FIELDS, row))
        facts = {k: given[k] if k in m.model_fields_set else was[k] for k in MINE_FIELDS}
        status = facts["status"] if status_from_source else old[0]
        facts["status"] = status
        db.execute(f"UPDATE mines SET {', '.join(f'{k}=?' for k in MINE_FIELDS[1:])}, source=?, updated=? WHERE id=?",
                   (*[facts[k] for k in MINE_FIELDS[1:]], source, today.isoformat(), m.id))
        if (status, facts["level"]) != tuple(old):
            self._history(m.id, today.isoformat(), status, facts["level"], old[0], old[1], f"changed by {source}", source)

    def _history(self, mine_id, day, status, level, prev_status, prev_level, reason, by) -> None:
        self.db.execute("INSERT INTO list_history (mine_id, day, status, level, prev_status, prev_level, reason, by) "
                        "VALUES (?,?,?,?,?,?,?,?)", (mine_id, day, status, level, prev_status, prev_level, reason, by))

    def sync(self, mines: list[MineConfig], today: date, source: str = "config") -> None:
        """Configured mines: their facts are upserted; their status applies only on entry (later changes come
        from checks and rectifications)."""
        with self._tx("sync configured mines"):
            for m in mines:
                self._upsert(m, source, today, status_from_source=False)

    def import_rows(self, mines: list[MineConfig], source: str, today: date) -> int:
        """Rows already validated (`imports.read_mines`): all of them in one transaction. An import is a source
        of status changes: a row whose status or level differs from the mine's is recorded in the history."""
        with self._tx(f"import {source}"):
            taken = {r[0]: r[1] for r in self.db.execute("SELECT licence_no, id FROM mines")}
            for m in mines:
                if taken.get(m.licence_no, m.id) != m.id:
                    raise RegistryError(f'mine "{m.id}": licence_no {m.licence_no} is already mine "{taken[m.licence_no]}"\'s')
            for m in mines:
                self._upsert(m, source, today, status_from_source=True)
        return len(mines)

    def mines(self, prefecture: str | None = None) -> list[Mine]:
        sql = "SELECT * FROM mines" + (" WHERE prefecture=?" if prefecture else "") + " ORDER BY prefecture, county, id"
        with self._lock:
            return [Mine(*r) for r in self.db.execute(sql, (prefecture,) if prefecture else ())]

    def mine(self, mine_id: str) -> Mine | None:
        with self._lock:
            r = self.db.execute("SELECT * FROM mines WHERE id=?", (mine_id,)).fetchone()
        return Mine(*r) if r else None

    def history(self, mine_id: str | None = None) -> list[History]:
        sql = "SELECT mine_id, day, status, level, prev_status, prev_level, reason, by FROM list_history"
        with self._lock:
            rows = self.db.execute(sql + (" WHERE mine_id=?" if mine_id else "") + " ORDER BY day, id",
                                   (mine_id,) if mine_id else ()).fetchall()
        return [History(*r) for r in rows]

    def status_on(self, mine_id: str, day: date) -> tuple[str, str] | None:
        """(status, level) at the end of `day`, from the history; None before the mine entered the registry."""
        with self._lock:
            r = self.db.execute("SELECT status, level FROM list_history WHERE mine_id=? AND day<=? ORDER BY day DESC, id DESC "
                                "LIMIT 1", (mine_id, day.isoformat())).fetchone()
        return (r[0], r[1]) if r else None

    def listed_on(self, mine_id: str, day: date) -> bool:
        s = self.status_on(mine_id, day)
        return s is not None and s[0] in ON_LIST and s[1] != "none"

    def set_status(self, mine_id: str, status: str, day: date, reason: str, by: str) -> None:
        with self._tx(f"mine {mine_id} -> {status}"):
            self._set_status(mine_id, status, day, reason, by)

    def _set_status(self, mine_id: str, status: str, day: date, reason: str, by: str) -> None:
        old = self.db.execute("SELECT status, level FROM mines WHERE id=?", (mine_id,)).fetchone()
        if old is None:
            raise RegistryError(f'no mine "{mine_id}" in the registry')
        if old[0] == status:
            return
        self.db.execute("UPDATE mines SET status=?, updated=? WHERE id=?", (status, day.isoformat(), mine_id))
        self._history(mine_id, day.isoformat(), status, old[1], old[0], old[1], reason, by)

    # --- draws and checks ---------------------------------------------------

    def pool(self, prefecture: str, day: date) -> list[str]:
        """Mine ids on the list of `prefecture` on `day` (never a removed one), sorted."""
        return sorted(m.id for m in self.mines(prefecture) if self.listed_on(m.id, day) and m.status != ListStatus.REMOVED.value)

    def save_draw(self, *, day: date, prefecture: str, seed: str, mine_pool: list[str], inspector_pool: list[str],
                  mines: list[str], inspectors: list[str], method: str, by: str) -> int:
        with self._tx("record a draw"):
            cur = self.db.execute(
                "INSERT INTO draws (day, prefecture, seed, n_mines, n_inspectors, mine_pool, inspector_pool, mines, "
                "inspectors, method, by) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (day.isoformat(), prefecture, seed, len(mines), len(inspectors), json.dumps(mine_pool, ensure_ascii=False),
                 json.dumps(inspector_pool, ensure_ascii=False), json.dumps(mines, ensure_ascii=False),
                 json.dumps(inspectors, ensure_ascii=False), method, by))
            draw_id = cur.lastrowid
            for m in mines:
                self.db.execute("INSERT INTO checks (draw_id, mine_id, planned_day, inspectors) VALUES (?,?,?,?)",
                                (draw_id, m, day.isoformat(), json.dumps(inspectors, ensure_ascii=False)))
        return draw_id

    def draws(self, prefecture: str | None = None) -> list[dict]:
        sql = "SELECT * FROM draws" + (" WHERE prefecture=?" if prefecture else "") + " ORDER BY id"
        with self._lock:
            cur = self.db.execute(sql, (prefecture,) if prefecture else ())
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for r in rows:
            d = dict(zip(names, r))
            for k in ("mine_pool", "inspector_pool", "mines", "inspectors"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def draw(self, draw_id: int) -> dict | None:
        return next((d for d in self.draws() if d["id"] == draw_id), None)

    def checks(self, mine_id: str | None = None) -> list[Check]:
        sql = "SELECT id, draw_id, mine_id, planned_day, day, inspectors, findings, result FROM checks"
        with self._lock:
            rows = self.db.execute(sql + (" WHERE mine_id=?" if mine_id else "") + " ORDER BY id",
                                   (mine_id,) if mine_id else ()).fetchall()
        return [Check(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def add_check(self, mine_id: str, day: date, inspectors: list[str]) -> int:
        """A check outside a draw (e.g. on a complaint)."""
        if self.mine(mine_id) is None:
            raise RegistryError(f'no mine "{mine_id}" in the registry')
        with self._tx("add a check"):
            return self.db.execute("INSERT INTO checks (mine_id, planned_day, inspectors) VALUES (?,?,?)",
                                   (mine_id, day.isoformat(), json.dumps(inspectors, ensure_ascii=False))).lastrowid

    def record_check(self, check_id: int, *, day: date, result: str, findings: str, deadline: date, officer: str,
                     by: str, inspectors: list[str] | None = None) -> int | None:
        """Record a check's outcome. A failed one opens a rectification with `deadline` and puts the mine under
        rectification; returns the rectification id (None for a pass)."""
        if result not in ("pass", "fail"):
            raise RegistryError(f"result must be pass or fail, not {result!r}")
        with self._tx(f"record check {check_id}"):
            r = self.db.execute("SELECT mine_id, result FROM checks WHERE id=?", (check_id,)).fetchone()
            if r is None:
                raise RegistryError(f"no check {check_id}")
            if r[1] != "planned":
                raise RegistryError(f"check {check_id} is recorded already ({r[1]})")
            if result == "fail" and deadline <= day:
                raise RegistryError(f"the deadline {deadline} must be after the check's date {day}")
            mine_id = r[0]
            sets = "day=?, findings=?, result=?" + (", inspectors=?" if inspectors else "")
            args = [day.isoformat(), findings, result] + ([json.dumps(inspectors, ensure_ascii=False)] if inspectors else [])
            self.db.execute(f"UPDATE checks SET {sets} WHERE id=?", (*args, check_id))
            if result == "pass":
                return None
            rid = self.db.execute("INSERT INTO rectifications (mine_id, check_id, opened, deadline, officer) VALUES (?,?,?,?,?)",
                                  (mine_id, check_id, day.isoformat(), deadline.isoformat(), officer)).lastrowid
            self._set_status(mine_id, ListStatus.RECTIFYING.value, day, f"check {check_id} failed: rectification {rid} "
                             f"due {deadline}", by)
            return rid

    # --- rectifications -----------------------------------------------------

    def rectifications(self, mine_id: str | None = None) -> list[Rectification]:
        sql = ("SELECT id, mine_id, check_id, opened, deadline, status, closed, note, officer, overdue_alert_ts "
               "FROM rectifications")
        with self._lock:
            rows = self.db.execute(sql + (" WHERE mine_id=?" if mine_id else "") + " ORDER BY id",
                                   (mine_id,) if mine_id else ()).fetchall()
        return [Rectification(*r) for r in rows]

    def rectification(self, rid: int) -> Rectification | None:
        return next((r for r in self.rectifications() if r.id == rid), None)

    def close_rectification(self, rid: int, *, result: str, day: date, note: str, by: str) -> None:
        """passed: the mine is back on the list as listed; failed or lapsed: it stays under rectification and may be
        removed (`remove`)."""
        if result not in ("passed", "failed", "lapsed"):
            raise RegistryError(f"result must be passed, failed or lapsed, not {result!r}")
        with self._tx(f"close rectification {rid}"):
            r = self.db.execute("SELECT mine_id, status, deadline FROM rectifications WHERE id=?", (rid,)).fetchone()
            if r is None:
                raise RegistryError(f"no rectification {rid}")
            if r[1] != "open":
                raise RegistryError(f"rectification {rid} is closed already ({r[1]})")
            if result == "lapsed" and day <= date.fromisoformat(r[2]):
                raise RegistryError(f"rectification {rid} is due {r[2]}: it cannot lapse on {day}")
            self.db.execute("UPDATE rectifications SET status=?, closed=?, note=? WHERE id=?", (result, day.isoformat(), note, rid))
            if result == "passed" and not self.db.execute(
                    "SELECT 1 FROM rectifications WHERE mine_id=? AND status='open'", (r[0],)).fetchone():
                self._set_status(r[0], ListStatus.LISTED.value, day, f"rectification {rid} passed", by)

    def remove(self, mine_id: str, *, day: date, reason: str, by: str) -> None:
        """Take a mine off the list. Only a mine whose rectification failed or lapsed, or is open past its
        deadline, can be removed this way; the history keeps why and when."""
        rects = self.rectifications(mine_id)
        grounds = [r for r in rects if r.status in ("failed", "lapsed") or r.overdue_on(day)]
        if not grounds:
            raise RegistryError(f'mine "{mine_id}" has no failed, lapsed or overdue rectification: it cannot be removed')
        with self._tx(f"remove {mine_id}"):
            for r in grounds:
                if r.status == "open":
                    self.db.execute("UPDATE rectifications SET status='lapsed', closed=? WHERE id=?", (day.isoformat(), r.id))
            ids = ", ".join(str(r.id) for r in grounds)
            self._set_status(mine_id, ListStatus.REMOVED.value, day, f"{reason} (rectification {ids})", by)

    def overdue_unalerted(self, day: date) -> list[Rectification]:
        return [r for r in self.rectifications() if r.status == "open" and r.overdue_on(day) and r.overdue_alert_ts is None]

    def mark_overdue_alerted(self, rid: int, ts: float) -> None:
        with self._tx(f"rectification {rid} overdue alerted"):
            self.db.execute("UPDATE rectifications SET overdue_alert_ts=? WHERE id=? AND overdue_alert_ts IS NULL", (ts, rid))


def open_registry(cfg, today: date | None = None) -> Registry:
    """The registry named by a server config, with its configured mines synced."""
    reg = Registry(cfg.resolve(cfg.supervision.db_path))
    try:
        reg.sync(cfg.supervision.mines, today or date.today())
    except sqlite3.Error:
        reg.close()
        raise
    return reg
