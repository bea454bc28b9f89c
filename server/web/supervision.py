"""The console's supervision pages: the green-mine registry and the report downloads (docs/supervision.md).

    GET /supervision                          the mines (prefecture, county, scale, level, list status, monitored)
                                              and the report forms
    GET /supervision/mines/<id>               one mine: its facts, list history, spot checks, rectifications
    GET /supervision/reports/monthly?site=S&month=YYYY-MM&format=xlsx|pdf|json
    GET /supervision/reports/annual?prefecture=P&year=YYYY[&until=YYYY-MM-DD]&format=xlsx|pdf|json
    GET /supervision/list?format=csv|json     the public list (名录), published fields only

Reports are built by the same code as `greenmine report monthly|annual` (`supervision.reports` and
`supervision.render`) and sent as file downloads; the downloads also take an API token.

Who sees what:

- operators (and viewers without assigned sites) see every mine, monitored or not, and every report;
- an officer (or a viewer with assigned sites) sees the mines whose id is one of their sites, and their
  monthly reports; a mine without monitoring is no one's site, so only operators see it;
- the annual prefecture report covers every mine of the prefecture, so an officer downloads it only when
  every mine of that prefecture in the registry is assigned to them (else 403, saying which are not).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import Response

from greenmine.server.web.i18n import T

log = logging.getLogger(__name__)

#: the dates of the supervision records (as `greenmine supervision`): China Standard Time
TZ = "Asia/Shanghai"
FORMATS = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "pdf": "application/pdf",
           "json": "application/json"}

T.update({
    "supervision": ("绿色矿山名录", "Green-mine list"),
    "sv_mines": ("名录库矿山", "Mines in the registry"),
    "sv_county": ("县区", "County"),
    "sv_mineral": ("矿种", "Mineral"),
    "sv_scale": ("规模", "Scale"),
    "sv_level": ("级别", "Level"),
    "sv_status": ("名录状态", "List status"),
    "sv_listed_since": ("入库日期", "Listed since"),
    "sv_monitored": ("在线监测", "Monitoring"),
    "sv_yes": ("有", "yes"),
    "sv_no": ("无监测", "not monitored"),
    "sv_facts": ("基本信息", "Facts"),
    "sv_history": ("名录变更记录", "List history"),
    "sv_checks": ("抽查记录", "Spot checks"),
    "sv_rects": ("整改记录", "Rectifications"),
    "sv_reports": ("报告下载", "Reports"),
    "sv_monthly": ("矿山月报", "Monthly site report"),
    "sv_annual": ("市州年度报告", "Annual prefecture report"),
    "sv_month": ("月份", "Month"),
    "sv_year": ("年度", "Year"),
    "sv_until": ("截至日期(可选)", "Up to (optional)"),
    "sv_format": ("格式", "Format"),
    "sv_download": ("下载", "Download"),
    "sv_public": ("公开名录", "Public list"),
    "sv_no_registry": ("尚无名录库:在配置中添加 [[supervision.mines]] 或运行 greenmine supervision import",
                       "No registry yet: configure [[supervision.mines]] or run greenmine supervision import"),
    "sv_overdue": ("已逾期", "overdue"),
    "sv_told": ("已通知", "officer told"),
    "sv_annual_officer": ("年度报告包含本市州全部矿山:仅当本市州所有矿山均分配给您时可下载",
                          "The annual report covers every mine of the prefecture: you can download it when all of them are assigned to you"),
})


@dataclass
class Hooks:
    """What the route module takes from `app.create_app`: rendering, who is asking, the denial."""

    page: Callable[..., Any]
    page_user: Callable[[Request], Any]
    need_user: Callable[[Request], Any]
    bearer: Callable[[Request], str | None]
    login_redirect: Callable[[Request], Any]
    denied: type


def register(app: FastAPI, ctx, h: Hooks) -> None:
    cfg = ctx.cfg
    Denied = h.denied
    synced: dict = {}

    def today() -> date:
        return datetime.fromtimestamp(ctx.clock(), ZoneInfo(TZ)).date()

    def registry():
        """The registry, or None when there is none yet. The configured mines are synced on first use (as the
        CLI does); after that each request opens the file anew (WAL: the CLI and the monitor write it too)."""
        from greenmine.server.supervision.registry import Registry, open_registry

        path = cfg.resolve(cfg.supervision.db_path)
        if not synced and cfg.supervision.mines:
            try:
                open_registry(cfg, today()).close()
                synced["done"] = True
            except sqlite3.Error as exc:  # e.g. locked by a long import: read what is there, sync next time
                log.warning("console: configured mines not synced into the registry yet: %s", exc)
        if not Path(path).exists():
            return None
        return Registry(path)

    def who(request: Request, api: bool = False):
        if api and h.bearer(request):
            return h.need_user(request)
        return h.page_user(request)

    def may_see_mine(user, mine_id: str) -> bool:
        return user.all_sites or mine_id in user.sites

    def annual_allowed(user, mines) -> list[str]:
        """The mines of the prefecture the user may not see (empty: the report is theirs)."""
        return [] if user.all_sites else sorted(m.id for m in mines if m.id not in user.sites)

    # --- pages -------------------------------------------------------------

    @app.get("/supervision")
    async def mines_page(request: Request):
        user = who(request)
        if user is None:
            return h.login_redirect(request)
        reg = registry()
        mines = []
        if reg is not None:
            try:
                mines = [m for m in reg.mines() if may_see_mine(user, m.id)]
            finally:
                reg.close()
        pref = request.query_params.get("prefecture") or ""
        prefectures = sorted({m.prefecture for m in mines})
        shown = [m for m in mines if not pref or m.prefecture == pref]
        monitored = {s.id for s in cfg.sites}
        d = today()
        return h.page(request, "supervision.html", {
            "mines": shown, "monitored": monitored, "prefectures": prefectures, "prefecture": pref,
            "no_registry": reg is None,
            "month": f"{d.year:04d}-{d.month:02d}", "year": d.year,
            "report_sites": mines,
            "annual_prefectures": prefectures if user.all_sites else [p for p in prefectures if not _others(registry, p, user)],
        })

    @app.get("/supervision/mines/{mine_id}")
    async def mine_page(request: Request, mine_id: str):
        user = who(request)
        if user is None:
            return h.login_redirect(request)
        reg = registry()
        if reg is None:
            raise Denied(404, f"no mine {mine_id!r}: there is no supervision registry yet")
        try:
            m = reg.mine(mine_id)
            if m is None:
                raise Denied(404, f"no mine {mine_id!r} in the registry")
            if not may_see_mine(user, mine_id):
                raise Denied(403, f"mine {mine_id!r} is not assigned to {user.name}")
            history, checks, rects = reg.history(mine_id), reg.checks(mine_id), reg.rectifications(mine_id)
        finally:
            reg.close()
        d = today()
        return h.page(request, "supervision_mine.html", {
            "m": m, "monitored": cfg.site(mine_id) is not None, "history": history, "checks": checks,
            "rects": [{"r": r, "overdue": r.status == "open" and r.overdue_on(d),
                       "told": datetime.fromtimestamp(r.overdue_alert_ts, ZoneInfo(TZ)).strftime("%Y-%m-%d %H:%M")
                       if r.overdue_alert_ts else ""} for r in rects],
            "month": f"{d.year:04d}-{d.month:02d}",
        })

    # --- downloads -----------------------------------------------------------

    def fmt_of(request: Request) -> str:
        f = request.query_params.get("format", "xlsx")
        if f not in FORMATS:
            raise Denied(400, "format must be xlsx, pdf or json")
        return f

    def send(report: dict, stem: str, fmt: str) -> Response:
        """Render with the CLI's writer into a scratch folder, send the file as an attachment, drop the folder."""
        from greenmine.server.supervision.render import FORMATS as WRITERS, RenderError

        tmp = Path(tempfile.mkdtemp(prefix="greenmine-report-"))
        try:
            body = WRITERS[fmt](report, tmp / f"{stem}.{fmt}").read_bytes()
        except RenderError as exc:
            raise Denied(500, f"report not rendered: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Response(body, media_type=FORMATS[fmt], headers={"Content-Disposition": attachment(f"{stem}.{fmt}")})

    @app.get("/supervision/reports/monthly")
    async def monthly_download(request: Request):
        user = who(request, api=True)
        if user is None:
            raise Denied(401, "authentication required: log in, or send an API token (Authorization: Bearer ...)")
        q = request.query_params
        site = q.get("site", "")
        fmt = fmt_of(request)
        try:
            year, month = (int(x) for x in q.get("month", "").split("-"))
            if not 1 <= month <= 12 or not 2000 <= year <= 2100:
                raise ValueError
        except ValueError:
            raise Denied(400, f"month {q.get('month', '')!r}: write YYYY-MM, e.g. 2026-11") from None
        if not may_see_mine(user, site):
            raise Denied(403, f"site {site!r} is not assigned to {user.name}")

        def build() -> Response:
            from greenmine.server.supervision.evidence import Sources
            from greenmine.server.supervision.reports import monthly

            reg = registry()
            if cfg.site(site) is None and (reg is None or reg.mine(site) is None):
                if reg is not None:
                    reg.close()
                raise Denied(404, f"{site!r} is neither a configured site nor a mine in the registry")
            src = Sources.open(cfg)
            try:
                report = monthly(cfg, src, reg, site, year, month) if reg is not None else None
            finally:
                src.close()
                if reg is not None:
                    reg.close()
            if report is None:
                raise Denied(404, "there is no supervision registry yet: the report needs one")
            return send(report, f"monthly-{site}-{year:04d}-{month:02d}", fmt)

        resp = await off_loop(build)
        log.info("console: %s downloaded the monthly report of %s %04d-%02d (%s)", user.name, site, year, month, fmt)
        return resp

    @app.get("/supervision/reports/annual")
    async def annual_download(request: Request):
        user = who(request, api=True)
        if user is None:
            raise Denied(401, "authentication required: log in, or send an API token (Authorization: Bearer ...)")
        q = request.query_params
        prefecture = q.get("prefecture", "")
        fmt = fmt_of(request)
        try:
            year = int(q.get("year", ""))
            until = date.fromisoformat(q["until"]) if q.get("until") else None
            if not 2000 <= year <= 2100:
                raise ValueError
        except ValueError:
            raise Denied(400, "year: 2000 to 2100, e.g. 2026; until: YYYY-MM-DD") from None
        if until is None and year == today().year:
            until = today()

        def build() -> Response:
            from greenmine.server.supervision.evidence import Sources
            from greenmine.server.supervision.reports import annual

            reg = registry()
            if reg is None:
                raise Denied(404, "there is no supervision registry yet: the report needs one")
            try:
                mines = reg.mines(prefecture)
                if not mines:
                    raise Denied(404, f"no mines of prefecture {prefecture!r} in the registry")
                hidden = annual_allowed(user, mines)
                if hidden:
                    raise Denied(403, f"the annual report of {prefecture} covers mines not assigned to {user.name}: "
                                      f"{', '.join(hidden)}")
                src = Sources.open(cfg)
                try:
                    report = annual(cfg, src, reg, prefecture, year, until)
                except ValueError as exc:
                    raise Denied(400, str(exc)) from None
                finally:
                    src.close()
            finally:
                reg.close()
            return send(report, f"annual-{prefecture}-{year}", fmt)

        resp = await off_loop(build)
        log.info("console: %s downloaded the annual report of %s %d (%s)", user.name, prefecture, year, fmt)
        return resp

    @app.get("/supervision/list")
    async def public_list_download(request: Request):
        from greenmine.server.supervision.reports import PUBLIC_FIELDS, public_list

        user = who(request, api=True)
        if user is None:
            raise Denied(401, "authentication required: log in, or send an API token (Authorization: Bearer ...)")
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "json"):
            raise Denied(400, "format must be csv or json")
        reg = registry()
        rows = []
        if reg is not None:
            try:
                rows = public_list(reg, request.query_params.get("prefecture") or None, today())
            finally:
                reg.close()
        if fmt == "json":
            return Response(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", media_type="application/json",
                            headers={"Content-Disposition": 'attachment; filename="green-mine-list.json"'})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(PUBLIC_FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return Response("\ufeff" + buf.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="green-mine-list.csv"'})


def attachment(name: str) -> str:
    """Content-Disposition of a download whose name may be Chinese (RFC 6266 filename*, with an ASCII fallback)."""
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


async def off_loop(fn: Callable[[], Response]) -> Response:
    """A report (PDF above all) takes a while: built on the event loop's executor so other pages keep answering."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _others(registry, prefecture: str, user) -> bool:
    """Whether the prefecture has mines the user may not see (the annual form offers only the others)."""
    reg = registry()
    if reg is None:
        return True
    try:
        return any(m.id not in user.sites for m in reg.mines(prefecture))
    finally:
        reg.close()
