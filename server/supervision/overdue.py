"""Overdue rectifications: each one open past its deadline raises one notice to the responsible officer.

The notice goes through the server's durable email outbox (the alert state file, `server.notify.outbox`),
keyed on the rectification, so it is queued at most once per officer however often the check runs, even
after a crash between queueing and marking; the registry then records when it was raised.

Who runs it: a running monitor (`OverdueWatch` on its tick thread), every `supervision.overdue_check_s` of
its clock (default hourly), when a registry exists or mines are configured; it delivers the notice with its
other mail. `greenmine supervision check-overdue` runs the same check at once and delivers at once.

Recipients: the rectification's officer, else the mine's, else `supervision.officers`, else the site's
recipients, else `default_recipients`.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from greenmine.latch import Latch

log = logging.getLogger(__name__)


def recipients(cfg, reg, rect) -> list[str]:
    mine = reg.mine(rect.mine_id)
    for cand in ([rect.officer] if rect.officer else [], [mine.officer] if mine and mine.officer else [],
                 list(cfg.supervision.officers)):
        if cand:
            return cand
    site = cfg.site(rect.mine_id)
    return list(site.recipients) if site and site.recipients else list(cfg.default_recipients)


def notice(reg, rect, day: date) -> tuple[str, str]:
    mine = reg.mine(rect.mine_id)
    name = mine.name if mine else rect.mine_id
    late = (day - date.fromisoformat(rect.deadline)).days
    subject = f"[整改逾期] {name}: 整改 {rect.id} 已逾期 {late} 天 | [overdue] {name}: rectification {rect.id} {late} day(s) past its deadline"
    body = (f"【整改逾期】{name}({rect.mine_id})\n\n"
            f"  整改编号:    {rect.id}(检查 {rect.check_id or '—'})\n"
            f"  开始日期:    {rect.opened}\n"
            f"  整改期限:    {rect.deadline}\n"
            f"  逾期天数:    {late}\n"
            f"  处理:        greenmine supervision rectification close {rect.id} --result passed|failed|lapsed\n"
            f"               未按期整改的矿山可移出名录:greenmine supervision remove {rect.mine_id} --reason ...\n\n"
            "--------------------------------------------------------------------------\n"
            f"[overdue] {name} ({rect.mine_id}): rectification {rect.id} was due {rect.deadline}, {late} day(s) ago.\n"
            f"  Opened {rect.opened} after check {rect.check_id or '—'}.\n"
            f"  Close it: greenmine supervision rectification close {rect.id} --result passed|failed|lapsed\n"
            f"  A mine whose rectification fails or lapses can be removed: greenmine supervision remove {rect.mine_id}\n\n"
            "-- greenmine\n")
    return subject, body


def check(cfg, reg, notifier, day: date, now: float) -> list[int]:
    """Raise the notice of every open rectification past its deadline on `day` that has none yet.
    Returns the ids of the rectifications raised now."""
    raised = []
    for r in reg.overdue_unalerted(day):
        rcpts = recipients(cfg, reg, r)
        if not rcpts:
            log.warning("rectification %d is overdue but has no officer: set supervision.officers", r.id)
        subject, body = notice(reg, r, day)
        for rc in rcpts:
            notifier.enqueue(rc, subject, body, now=now, key=f"rectification-overdue-{reg.path.name}-{r.id}")
        reg.mark_overdue_alerted(r.id, now)
        log.info("rectification %d of %s overdue since %s: notice queued for %d officer(s)", r.id, r.mine_id, r.deadline, len(rcpts))
        raised.append(r.id)
    return raised


#: the day a rectification's deadline is judged on: local dates of the registry, China Standard Time
TZ = "Asia/Shanghai"


class OverdueWatch:
    """The monitor's overdue check: `tick(now)` on each monitor tick runs `check` once per interval.

    It never raises: a failure (the registry locked by a long import, a damaged file) is logged once and
    retried at the next interval; the monitor's other work goes on."""

    def __init__(self, cfg, notifier) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.interval = cfg.supervision.overdue_check_s
        self.path = Path(cfg.resolve(cfg.supervision.db_path))
        self._next = 0.0
        self._latch = Latch(log)
        self.raised: list[int] = []  # every rectification this watch raised, for status and tests
        self.runs = 0  # checks done

    def configured(self) -> bool:
        return bool(self.cfg.supervision.mines) or self.path.exists()

    def tick(self, now: float) -> list[int]:
        if self.interval <= 0 or now < self._next:
            return []
        self._next = now + self.interval
        if not self.configured():
            return []
        from greenmine.server.supervision.registry import open_registry

        day = datetime.fromtimestamp(now, ZoneInfo(TZ)).date()
        try:
            reg = open_registry(self.cfg, day)
            try:
                raised = check(self.cfg, reg, self.notifier, day, now)
            finally:
                reg.close()
        except Exception as exc:  # noqa: BLE001 - the monitor keeps running; retried next interval
            self._latch.fail("supervision: overdue check failed (retried in %.0f s): %s", self.interval, exc)
            return []
        self._latch.ok("supervision: overdue check works again")
        self.runs += 1
        self.raised += raised
        return raised
