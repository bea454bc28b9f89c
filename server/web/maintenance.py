"""The console's maintenance windows: /maintenance lists them; an operator adds and removes them.

    GET  /maintenance                 current and coming windows of the sites the user sees (?all=1: past too)
    POST /maintenance                 add: site, device (optional), from, to (the site's local time unless an
                                      offset is written), reason; operator only, CSRF-protected, audited
    POST /maintenance/<id>/remove     remove a window added here or with the CLI (a [[alerts.maintenance]]
                                      window stays: it is removed in the config file); operator only, audited

The windows are the alert engine's (`alerts.sqlite`, table `maintenance`), the same that
`greenmine alerts maintenance add|list|remove` writes: the monitor notices a change without a restart.
Audit entries: action `maintenance.add` / `maintenance.remove`, target `maintenance:<id>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from greenmine.server.monitor.alerts.maintenance import IDENT, check_reason, local
from greenmine.server.web import i18n

WORDS: dict[str, tuple[str, str]] = {
    "maintenance": ("维护时段", "Maintenance windows"),
    "m_device": ("设备(可选)", "Device (optional)"),
    "m_whole_site": ("全矿", "whole site"),
    "m_reason": ("原因", "Reason"),
    "m_add": ("添加维护时段", "Add a window"),
    "m_remove": ("删除", "Remove"),
    "m_source": ("来源", "Source"),
    "m_status": ("状态", "Status"),
    "m_active": ("进行中", "active"),
    "m_coming": ("未开始", "coming"),
    "m_past": ("已结束", "past"),
    "m_added": ("已添加维护时段", "Window added"),
    "m_removed": ("已删除维护时段", "Window removed"),
    "m_by": ("设置人", "Set by"),
    "m_show_past": ("显示已结束的", "show past windows"),
    "m_operator_only": ("只有运维人员(operator)可以设置维护时段。", "Only an operator may set maintenance windows."),
    "m_hint": ("维护时段内开始的告警只记录、不发邮件;超出时段仍未恢复的告警照常发出。",
               "Alerts that begin inside a window are recorded, not emailed; a breach that outlasts the window is sent as usual."),
    "m_config": ("配置文件", "config file"),
    # the health page's energy-platform uplink (server.web.app system_page)
    "energy_uplink": ("能耗在线监测平台上传", "Energy-platform uplink"),
    "centre": ("数据中心", "Data centre"),
    "acked_n": ("已确认", "Acked"),
    "rejected_n": ("被拒", "Rejected"),
    "last_ack": ("最近确认", "Last ack"),
    "last_error": ("最近错误", "Last error"),
    "never": ("从未", "never"),
}
i18n.T.update({k: v for k, v in WORDS.items() if k not in i18n.T})

_IDENT = re.compile(IDENT)


@dataclass
class Pages:
    """What the routes need of the app (create_app's helpers)."""

    ctx: Any
    console: Any
    page: Any  # (request, template, doc, status=200) -> HTMLResponse
    page_user: Any
    login_redirect: Any
    need_user: Any
    need_csrf: Any
    see: Any
    visible: Any
    denied: type  # the app's _Denied(code, message)


def register(app: FastAPI, p: Pages) -> None:
    ctx, console, Denied = p.ctx, p.console, p.denied

    def engine():
        if ctx.alerts is None:
            raise Denied(404, "no alerts here: this process runs neither the monitor nor the console")
        return ctx.alerts

    def need_operator(request: Request, user) -> None:
        if not user.may_configure:
            raise Denied(403, f"{user.name} ({user.role}) may not set maintenance windows: operators only")

    async def form_of(request: Request):
        user = p.need_user(request)
        form = await request.form()
        await p.need_csrf(request, form)
        need_operator(request, user)
        return user, form

    @app.get("/maintenance")
    async def maintenance_page(request: Request):
        user = p.page_user(request)
        if user is None:
            return p.login_redirect(request)
        now = ctx.clock()
        show_all = request.query_params.get("all") == "1"
        sites = p.visible(user)
        ids = {s.id for s in sites}
        rows = []
        for w in engine().maintenance_windows(include_past=show_all, now=now):
            if w.site not in ids:
                continue
            tz = console.tz(w.site)
            added = next((e for e in ctx.user_db().audit_log(f"maintenance:{w.id}") if e.action == "maintenance.add"), None)
            rows.append({"w": w, "from": local(w.from_ts, tz), "to": local(w.to_ts, tz), "tz": tz,
                         "status": "m_past" if w.to_ts <= now else "m_active" if w.from_ts <= now else "m_coming",
                         "by": added.user if added else ""})
        q = request.query_params
        return p.page(request, "maintenance.html", {
            "rows": rows, "sites": sites, "show_all": show_all, "may_set": user.may_configure,
            "added": q.get("added", ""), "removed": q.get("removed", ""),
        })

    @app.post("/maintenance")
    async def maintenance_add(request: Request):
        user, form = await form_of(request)
        site_id = str(form.get("site") or "").strip()
        s = ctx.cfg.site(site_id) if site_id else None
        if s is None:
            raise Denied(400, f"site {site_id!r}: no such site")
        p.see(user, site_id)
        device = str(form.get("device") or "").strip() or None
        if device is not None and not _IDENT.match(device):
            raise Denied(400, f"device {device!r}: letters, digits, '-' and '_' only (1 to 64)")
        start = _when(Denied, str(form.get("from") or ""), s.timezone, "from")
        end = _when(Denied, str(form.get("to") or ""), s.timezone, "to")
        reason = str(form.get("reason") or "").strip()
        if len(reason) > 200:
            raise Denied(400, "reason: at most 200 characters")
        try:
            check_reason(reason)
            wid = engine().add_maintenance(s.id, device, start, end, reason, now=ctx.clock())
        except ValueError as exc:
            raise Denied(400, f"not added: {exc}") from None
        ctx.user_db().audit(user.name, "maintenance.add", f"maintenance:{wid}",
                            {"site": s.id, "device": device or "", "from": local(start, s.timezone),
                             "to": local(end, s.timezone), "timezone": s.timezone, "reason": reason,
                             "via": request.state.via}, ts=ctx.clock())
        return RedirectResponse(f"/maintenance?added={wid}", 303)

    @app.post("/maintenance/{window_id}/remove")
    async def maintenance_remove(request: Request, window_id: int):
        user, _form = await form_of(request)
        w = next((x for x in engine().maintenance_windows(include_past=True) if x.id == window_id), None)
        if w is None:
            raise Denied(404, f"maintenance window {window_id}: no such window")
        p.see(user, w.site)
        out = engine().remove_maintenance(window_id)
        if out == "config":
            raise Denied(409, f"maintenance window {window_id} is set in [[alerts.maintenance]] of the config file: "
                              "remove it there")
        if out == "missing":
            raise Denied(404, f"maintenance window {window_id}: no such window")
        tz = console.tz(w.site)
        ctx.user_db().audit(user.name, "maintenance.remove", f"maintenance:{window_id}",
                            {"site": w.site, "device": w.device, "from": local(w.from_ts, tz), "to": local(w.to_ts, tz),
                             "timezone": tz, "reason": w.reason, "via": request.state.via}, ts=ctx.clock())
        return RedirectResponse(f"/maintenance?removed={window_id}", 303)


def _when(Denied, text: str, tz: str, what: str) -> float:
    """A form's time: ISO 8601; the site's zone unless it carries an offset (a datetime-local field does not)."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Denied(400, f"{what} {text!r}: write a time as 2026-12-01T08:00 (the site's zone) "
                          "or 2026-12-01T08:00+08:00") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=ZoneInfo(tz))).timestamp()
