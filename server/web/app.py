"""The server's HTTP application (FastAPI): the ops endpoints and the officers' console.

    app = create_app(WebContext(cfg, metrics=..., health=..., console=ConsoleData(cfg), alerts=engine))

Ops endpoints (every process with `http_port`, and the console's port):

    GET  /metrics                 Prometheus text; open unless [web] metrics_public = false
    GET  /health                  JSON; 200 healthy, 503 not
    GET  /alerts                  open alerts as JSON (?all=1 adds resolved ones); a browser gets the page
    POST /alerts/<id>/ack         acknowledge: an API token (Authorization: Bearer ...) or a console session
                                  with its CSRF token; audited with the user and the comment
    GET  /api/alerts, POST /api/alerts/<id>/ack, GET /api/sites, GET /api/sites/<site>/kpis

Console pages (the web role): / (overview), /sites/<site>, /sites/<site>/devices/<device>,
/alerts, /alerts/<id>, /maintenance (`maintenance`), /system (health), /export, /login; the supervision pages
/supervision... (`server.web.supervision`). Server-rendered; the
charts are SVG drawn here (`charts`), so no page needs JavaScript.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.model import info
from greenmine.server.web import charts
from greenmine.server.web.auth import CSRF_COOKIE, SESSION_COOKIE, LoginLimiter, Sessions, same
from greenmine.server.web.config import WebConfig
from greenmine.server.web.i18n import translator
from greenmine.server.web.users import User, UserDb

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
SEVERITIES = ("critical", "warning", "info")


@dataclass
class WebContext:
    cfg: Any
    web: WebConfig = field(default_factory=WebConfig)
    metrics: Any = None  # server.metrics.Metrics
    health: Callable[[], dict] | None = None
    console: Any = None  # server.web.data.ConsoleData: the pages are served only with one
    alerts: Any = None  # AlertEngine for the JSON alerts API; None: no /alerts
    users: UserDb | None = None
    clock: Callable[[], float] = time.time
    _own_users: bool = False

    def user_db(self) -> UserDb:
        if self.users is None:
            self.users = UserDb(self.cfg.resolve(self.web.users_db))
            self._own_users = True
        return self.users

    def close(self) -> None:
        if self._own_users and self.users is not None:
            self.users.close()
            self.users = None


class _Denied(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="greenmine", docs_url=None, redoc_url=None, openapi_url=None)
    web = ctx.web
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    state: dict = {}

    def sessions() -> Sessions:
        if "sessions" not in state:
            state["sessions"] = Sessions(ctx.user_db().secret(), web.session_hours * 3600, web.secure_cookies)
        return state["sessions"]

    limiter = LoginLimiter(web.login_max_failures, web.login_window_s)
    console = ctx.console

    @app.middleware("http")
    async def headers(request: Request, call_next):
        try:
            response = await call_next(request)
        except _Denied as exc:  # pragma: no cover - handled by the exception handler
            response = JSONResponse({"error": exc.message}, exc.code)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                    "form-action 'self'; frame-ancestors 'none'")
        return response

    @app.exception_handler(_Denied)
    async def denied(request: Request, exc: _Denied):
        if _wants_html(request) and console is not None:
            return _page(request, "error.html", {"message": exc.message, "code": exc.code}, status=exc.code)
        return JSONResponse({"error": exc.message}, exc.code)

    # --- who is asking ------------------------------------------------------

    def bearer(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None

    def current(request: Request) -> User | None:
        if "user" in request.scope.get("state", {}):
            return request.state.user
        user = None
        tok = bearer(request)
        request.state.via = None
        request.state.csrf = None
        if tok:
            user = ctx.user_db().check_token(tok)
            request.state.via = "token" if user else None
        else:
            doc = sessions().read(request.cookies.get(SESSION_COOKIE)) if SESSION_COOKIE in request.cookies else None
            if doc is not None:
                u = ctx.user_db().by_id(doc["u"])
                if u is not None and not u.disabled and u.session_version == doc["v"]:
                    user = u
                    request.state.via = "session"
                    request.state.csrf = doc["c"]
        request.state.user = user
        return user

    def need_user(request: Request) -> User:
        user = current(request)
        if user is None:
            raise _Denied(401, "authentication required: log in, or send an API token (Authorization: Bearer ...)")
        return user

    async def need_csrf(request: Request, form=None) -> None:
        """A cookie-authenticated POST must carry its session's CSRF token (form field or X-CSRF-Token)."""
        if request.state.via == "token":
            return
        token = request.headers.get("x-csrf-token")
        if token is None and form is not None:
            token = form.get("csrf")
        if not same(request.state.csrf, token):
            raise _Denied(403, "CSRF token missing or wrong: reload the page and try again")

    def see(user: User, site: str) -> None:
        if console is not None and site not in console.sites or (ctx.cfg.site(site) is None):
            raise _Denied(404, f"no site {site!r}")
        if not user.may_see(site):
            raise _Denied(403, f"site {site!r} is not assigned to {user.name}")

    def visible(user: User) -> list:
        return [s for s in ctx.cfg.sites if user.may_see(s.id)]

    # --- rendering ----------------------------------------------------------

    def lang_of(request: Request) -> str:
        q = request.query_params.get("lang")
        if q in ("zh", "en"):
            return q
        c = request.cookies.get("gm_lang")
        return c if c in ("zh", "en") else web.default_lang

    def _page(request: Request, name: str, doc: dict, status: int = 200) -> HTMLResponse:
        lang = lang_of(request)
        t = translator(lang)
        user = request.state.user if "user" in request.scope.get("state", {}) else None
        base = {"t": t, "lang": lang, "user": user, "csrf": getattr(request.state, "csrf", None) or "",
                "path": request.url.path, "qs": lambda **kw: _qs(request, **kw), "nav": name.split(".")[0],
                "ktitle": lambda k: info(k).title_en if lang == "en" else info(k).title_zh}
        body = env.get_template(name).render(**base, **doc)
        resp = HTMLResponse(body, status)
        if request.query_params.get("lang") in ("zh", "en"):
            resp.set_cookie("gm_lang", lang, max_age=365 * 86400, samesite="lax", httponly=True, secure=web.secure_cookies)
        return resp

    def login_redirect(request: Request) -> RedirectResponse:
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(nxt)}", 303)

    def page_user(request: Request) -> User | None:
        user = current(request)
        if user is None:
            return None
        return user

    # --- ops endpoints ------------------------------------------------------

    @app.get("/health")
    @app.get("/healthz")
    async def health():
        doc = ctx.health() if ctx.health is not None else {"status": "ok", "roles": ["web"]}
        return JSONResponse(doc, 200 if doc.get("status") == "ok" else 503)

    @app.get("/metrics")
    async def metrics(request: Request):
        if not web.metrics_public:
            need_user(request)
        if ctx.metrics is None:
            return PlainTextResponse("", 200)
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return Response(ctx.metrics.exposition(), 200, media_type=CONTENT_TYPE_LATEST)

    def alert_doc(a) -> dict:
        return asdict(a)

    def api_alerts(request: Request):
        engine = ctx.alerts
        if engine is None:
            raise _Denied(404, "no alerts here: this process runs neither the monitor nor the console")
        user = current(request)
        if user is None and not web.metrics_public:
            need_user(request)
        states = ("pending", "firing", "resolved") if request.query_params.get("all") == "1" else ("pending", "firing")
        rows = engine.alerts(states)
        if user is not None:
            rows = [a for a in rows if user.may_see(a.site)]
        return JSONResponse([alert_doc(a) for a in rows])

    @app.get("/api/alerts")
    async def api_alerts_route(request: Request):
        return api_alerts(request)

    @app.get("/alerts")
    async def alerts_route(request: Request):
        if console is not None and _wants_html(request):
            return alerts_page(request)
        return api_alerts(request)

    async def do_ack(request: Request, alert_id: int):
        engine = ctx.alerts
        if engine is None:
            raise _Denied(404, "no alerts here: this process runs neither the monitor nor the console")
        user = need_user(request)
        form = None
        comment = ""
        if request.state.via == "session" and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            comment = str(form.get("comment") or "")
        else:
            raw = await request.body()
            if raw:
                try:
                    doc = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise _Denied(400, 'body must be JSON, e.g. {"comment": "dust suppression running"}') from None
                if not isinstance(doc, dict):
                    raise _Denied(400, 'body must be a JSON object, e.g. {"comment": "..."}')
                comment = str(doc.get("comment") or "")
        await need_csrf(request, form)
        if not user.may_ack:
            raise _Denied(403, f"{user.name} ({user.role}) may not acknowledge alerts")
        comment = comment.strip()[:1000]
        a = (console.alert(alert_id) if console is not None else None) or next(
            (x for x in engine.alerts(("pending", "firing", "resolved")) if x.id == alert_id), None)
        if a is None:
            raise _Denied(404, f"alert {alert_id}: no such alert")
        if not user.may_see(a.site):
            raise _Denied(403, f"site {a.site!r} is not assigned to {user.name}")
        ok = engine.ack(alert_id, by=user.name, now=ctx.clock())
        if ok:
            ctx.user_db().audit(user.name, "alert.ack", f"alert:{alert_id}",
                                {"comment": comment, "site": a.site, "rule": a.rule, "via": request.state.via},
                                ts=ctx.clock())
        if form is not None:
            return RedirectResponse(f"/alerts/{alert_id}?{'acked=1' if ok else 'notackable=1'}", 303)
        if ok:
            return JSONResponse({"id": alert_id, "acknowledged": True, "by": user.name, "comment": comment})
        return JSONResponse({"error": f"alert {alert_id}: no such open, unacknowledged alert"}, 404)

    @app.post("/alerts/{alert_id}/ack")
    async def ack_route(request: Request, alert_id: int):
        return await do_ack(request, alert_id)

    @app.post("/api/alerts/{alert_id}/ack")
    async def api_ack_route(request: Request, alert_id: int):
        return await do_ack(request, alert_id)

    @app.get("/alerts/{alert_id}/ack")
    async def ack_get(alert_id: int):
        return JSONResponse({"error": "use POST"}, 405)

    if console is None:
        return app

    # --- login --------------------------------------------------------------

    @app.get("/login")
    async def login_form(request: Request, next: str = "/", failed: str = ""):
        current(request)
        cookie, tok = sessions().pre_csrf()
        resp = _page(request, "login.html", {"next": _safe_next(next), "login_csrf": tok, "error": failed})
        sessions().set_cookie(resp, CSRF_COOKIE, cookie, 3600)
        return resp

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        current(request)
        name = str(form.get("username") or "").strip()[:64]
        password = str(form.get("password") or "")
        nxt = _safe_next(str(form.get("next") or "/"))
        if not sessions().check_pre_csrf(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            raise _Denied(403, "CSRF token missing or wrong: reload the login page and try again")
        client = request.client.host if request.client else "?"
        keys = (f"user:{name.lower()}", f"ip:{client}")
        t = translator(lang_of(request))
        if limiter.blocked(*keys):
            log.warning("console: login for %r from %s refused: rate limit", name, client)
            ctx.user_db().audit(name or "?", "login.limited", f"user:{name}", {"client": client}, ts=ctx.clock())
            return _login_again(request, nxt, t("login_limited"), 429)
        user = ctx.user_db().check_password(name, password)
        if user is None:
            limiter.failed(*keys)
            log.info("console: failed login for %r from %s", name, client)
            return _login_again(request, nxt, t("login_failed"), 401)
        limiter.succeeded(keys[0])
        cookie, _csrf = sessions().issue(user)
        resp = RedirectResponse(nxt, 303)
        sessions().set_cookie(resp, SESSION_COOKIE, cookie)
        resp.delete_cookie(CSRF_COOKIE, path="/")
        ctx.user_db().audit(user.name, "login", f"user:{user.name}", {"client": client}, ts=ctx.clock())
        return resp

    def _login_again(request: Request, nxt: str, error: str, status: int):
        cookie, tok = sessions().pre_csrf()
        resp = _page(request, "login.html", {"next": nxt, "login_csrf": tok, "error": error}, status=status)
        sessions().set_cookie(resp, CSRF_COOKIE, cookie, 3600)
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        form = await request.form()
        need_user(request)
        await need_csrf(request, form)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # --- overview -----------------------------------------------------------

    @app.get("/")
    async def overview(request: Request):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        t = translator(lang_of(request))
        sites = visible(user)
        groups: dict[str, list] = {}
        for s in sites:
            groups.setdefault(s.prefecture or t("no_prefecture"), []).append(
                {"site": s, "row": console.overview_row(s.id, t), "zone": console.zone_label(s.id)})
        ids = {s.id for s in sites}
        open_alerts = console.alert_list(state="open", sites=ids) + console.alert_list(state="acked", sites=ids)
        by_sev = {sev: sum(1 for a in open_alerts if a.severity == sev) for sev in SEVERITIES}
        offline = console.agents_offline(ids)
        return _page(request, "overview.html", {"groups": sorted(groups.items()), "by_sev": by_sev, "offline": offline,
                                                "fmt_ms": lambda ms, site: console.fmt(ms / 1000, site)})

    # --- site ------------------------------------------------------------------

    def range_args(request: Request, site: str) -> tuple[str, date]:
        rng = request.query_params.get("range", "week")
        if rng not in ("day", "week", "month"):
            raise _Denied(400, "range must be day, week or month")
        d = request.query_params.get("date")
        try:
            end_day = date.fromisoformat(d) if d else console.today(site)
        except ValueError:
            raise _Denied(400, f"date {d!r}: write YYYY-MM-DD") from None
        return rng, end_day

    @app.get("/sites/{site}")
    async def site_page(request: Request, site: str):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        see(user, site)
        t = translator(lang_of(request))
        s = ctx.cfg.site(site)
        rng, end_day = range_args(request, site)
        compare = request.query_params.get("compare") == "1"
        span = {"day": 1, "week": 7, "month": 30}[rng]
        days = console.window(site, rng, end_day, "day")
        hours = console.window(site, rng, end_day, "hour")
        prev_days = console.window(site, rng, end_day - timedelta(days=span), "day") if compare else None
        empty, inc = t("no_data"), t("incomplete")

        def mk(title, w, unit, ident):
            return charts.Chart(title, w.labels, unit=unit, ident=ident, empty_text=empty, incomplete_text=inc)

        reuse_vals = console.values(site, "water_reuse_daily", days.start, days.end)
        rv, ri, rc = console.per_slot(days, [v for v in reuse_vals if v.subject == "site"], pick=min)
        c_reuse = mk(t("c_reuse"), days, "%", "chart-reuse").bars(t("reuse"), rv, incomplete=ri)
        if prev_days is not None:
            pv, _pi, _ = console.per_slot(prev_days, [v for v in console.values(site, "water_reuse_daily", prev_days.start, prev_days.end)
                                                      if v.subject == "site"], pick=min)
            c_reuse.line(t("previous"), pv)
        c_reuse.limit(f"{t('limit')} {s.limits.water_reuse_min_pct:g} %", s.limits.water_reuse_min_pct)
        fresh = [c.extra.get("fresh_m3") if c else None for c in rc]
        reused = [c.extra.get("reused_m3") if c else None for c in rc]
        c_vol = mk(t("c_volumes"), days, "m³", "chart-volumes").bars(t("fresh"), fresh, incomplete=ri).bars(t("reused"), reused, incomplete=ri)
        kwh, kwh_i, _ = console.per_slot(days, console.values(site, "energy_kwh_daily", days.start, days.end))
        kgce, kgce_i, _ = console.per_slot(days, console.values(site, "energy_kgce_daily", days.start, days.end))
        c_energy = mk(t("c_energy"), days, "kWh / kgce", "chart-energy").bars("kWh", kwh, incomplete=kwh_i).bars("kgce", kgce, incomplete=kgce_i)
        inten, inten_i, _ = console.per_slot(days, console.values(site, "energy_intensity_daily", days.start, days.end))
        c_int = mk(t("c_intensity"), days, "kgce/t", "chart-intensity").line(t("c_intensity"), inten, incomplete=inten_i)
        if s.limits.energy_intensity_max_kgce_t is not None:
            c_int.limit(f"{t('limit')} {s.limits.energy_intensity_max_kgce_t:g}", s.limits.energy_intensity_max_kgce_t)
        tsp, tsp_i, _ = console.per_slot(hours, console.values(site, "dust_tsp_hourly", hours.start, hours.end))
        pm10, pm10_i, _ = console.per_slot(hours, console.values(site, "dust_pm10_hourly", hours.start, hours.end))
        c_dust = mk(t("c_dust"), hours, "mg/m³", "chart-dust").line("TSP", tsp, incomplete=tsp_i).line("PM10", pm10, incomplete=pm10_i)
        c_dust.limit(f"TSP {t('limit')} {s.limits.dust_tsp_limit_mgm3:g}", s.limits.dust_tsp_limit_mgm3)
        if ctx.cfg.kpi.dust_pm10_limit_mgm3 is not None:
            c_dust.limit(f"PM10 {t('limit')} {ctx.cfg.kpi.dust_pm10_limit_mgm3:g}", ctx.cfg.kpi.dust_pm10_limit_mgm3, "#dd6b20")
        leq, leq_i, _ = console.per_slot(hours, console.values(site, "noise_leq_hourly", hours.start, hours.end))
        from greenmine.server.web.data import noise_limits

        lims = noise_limits(s, hours, ctx.cfg.kpi)
        c_noise = mk(t("c_noise"), hours, "dB(A)", "chart-noise").line("Leq", leq, incomplete=leq_i)
        c_noise.limit(f"GB 12348 {s.limits.noise_class}类 {t('day_limit')}/{t('night_limit')}", lims)
        # each night starts on its date's evening: one slot per date
        lmax_vals = console.values(site, "noise_lmax_night", days.start - 86400, days.end)
        night_w = console.window(site, rng, end_day, "day")
        by_day = {}
        for v in lmax_vals:
            d = periods.local_date(v.period_start, s.timezone)
            if v.value is not None and (d not in by_day or v.value > by_day[d].value):
                by_day[d] = v
        first = end_day - timedelta(days=span - 1)
        lm = [by_day.get(first + timedelta(days=i)) for i in range(span)]
        c_lmax = mk(t("c_lmax"), night_w, "dB(A)", "chart-lmax").bars("Lmax", [v.value if v else None for v in lm],
                                                                        incomplete=[bool(v and not v.complete) for v in lm])
        c_lmax.limit(t("limit"), [v.limit if v else None for v in lm])
        devices = console.devices(site)
        return _page(request, "site.html", {
            "site": s, "rng": rng, "date": end_day.isoformat(), "compare": compare, "zone": console.zone_label(site),
            "charts": [c.render() for c in (c_reuse, c_vol, c_energy, c_int, c_dust, c_noise, c_lmax)],
            "devices": sorted(devices), "alerts": console.alert_list(state="open", site=site)[:20],
        })

    # --- device ------------------------------------------------------------------

    @app.get("/sites/{site}/devices/{device}")
    async def device_page(request: Request, site: str, device: str):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        see(user, site)
        t = translator(lang_of(request))
        s = ctx.cfg.site(site)
        metrics_of = console.devices(site)
        if device not in metrics_of:
            raise _Denied(404, f"no device {device!r} at {site}")
        rng, end_day = range_args(request, site)
        metric = request.query_params.get("metric") or metrics_of[device][0]
        if metric not in metrics_of[device]:
            raise _Denied(404, f"no metric {metric!r} on {device}")
        now = ctx.clock()
        latest = [{"metric": m, "value": p.value, "unit": p.unit, "quality": p.quality,
                   "time": console.fmt(p.ts_ms / 1000, site, seconds=True), "age": _age(now - p.ts_ms / 1000)}
                  for m, p in console.latest(site, device)]
        step = "day" if rng == "month" and console.has_rollups else "hour"
        w = console.window(site, rng, end_day, step)
        vals, bad = console.metric_series(site, device, metric, w)
        unit = next((x["unit"] for x in latest if x["metric"] == metric), "")
        chart = charts.Chart(f"{device} {metric}", w.labels, unit=unit, ident="chart-metric", empty_text=t("no_data"),
                             incomplete_text=t("incomplete")).line(metric, vals, incomplete=bad)
        events = console.counter_events(site, device, w.start, w.end)
        import bisect

        for dev, m, ts, kind, prev, new, detail in events:
            if m == metric:
                chart.marker(bisect.bisect_right(w.starts, ts) - 1, f"{kind}: {prev:g} → {new:g} ({detail})")
        return _page(request, "device.html", {
            "site": s, "device": device, "metric": metric, "metrics": metrics_of[device], "latest": latest,
            "chart": chart.render(), "rng": rng, "date": end_day.isoformat(), "zone": console.zone_label(site),
            "events": [{"time": console.fmt(e[2], site, seconds=True), "metric": e[1], "kind": e[3], "prev": e[4],
                        "new": e[5], "detail": e[6]} for e in events],
        })

    # --- alerts ---------------------------------------------------------------

    def alerts_page(request: Request):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        q = request.query_params
        state_ = q.get("state", "open")
        if state_ not in ("open", "acked", "history", "all"):
            raise _Denied(400, "state must be open, acked, history or all")
        site = q.get("site") or None
        if site:
            see(user, site)
        ids = {s.id for s in visible(user)}
        rows = console.alert_list(state=state_, sites=ids, site=site, rule=q.get("rule") or None,
                                  severity=q.get("severity") or None)
        return _page(request, "alerts.html", {
            "rows": [_alert_row(a) for a in rows], "state": state_, "site": site or "", "rule": q.get("rule", ""),
            "severity": q.get("severity", ""), "sites": visible(user), "severities": SEVERITIES,
            "rules": sorted({r.name for r in ctx.cfg.alerts.effective_rules()}),
        })

    def _alert_row(a) -> dict:
        tz = a.facts.get("timezone") or console.tz(a.site)
        v = a.facts.get("value")
        return {"a": a, "since": console.fmt(a.facts.get("since_ts") or a.opened_ts, tz=tz), "tz": tz,
                "value": f"{v:.4g} {a.facts.get('unit', '')}" if isinstance(v, (int, float)) else "—",
                "acked": console.fmt(a.acked_ts, tz=tz) if a.acked_ts else ""}

    @app.get("/alerts/{alert_id}")
    async def alert_page(request: Request, alert_id: int):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        a = console.alert(alert_id)
        if a is None:
            raise _Denied(404, f"alert {alert_id}: no such alert")
        see(user, a.site)
        audit = ctx.user_db().audit_log(f"alert:{alert_id}")
        tz = a.facts.get("timezone") or console.tz(a.site)
        facts = [(k, v) for k, v in a.facts.items() if k not in ("extra",) and v not in (None, "", [])]
        return _page(request, "alert.html", {
            "row": _alert_row(a), "facts": facts, "tz": tz,
            "audit": [{"time": console.fmt(e.ts, tz=tz, seconds=True), "user": e.user, "action": e.action,
                       "comment": e.detail.get("comment", "")} for e in audit],
            "may_ack": user.may_ack and a.state != "resolved" and a.acked_ts is None,
            "acked_msg": request.query_params.get("acked") == "1",
            "not_ackable": request.query_params.get("notackable") == "1",
        })

    # --- system health ---------------------------------------------------------

    @app.get("/system")
    async def system_page(request: Request):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        doc = console.health()
        ids = {s.id for s in visible(user)}
        now_ms = ctx.clock() * 1000
        agents = [{"a": a, "seen": console.fmt(a.seen_ms / 1000, a.site), "age": _age((now_ms - a.seen_ms) / 1000)}
                  for a in doc["agents"] if a.site in ids]
        dead = [{"id": r[0], "time": console.fmt(r[1] / 1000, tz="UTC", seconds=True), "topic": r[2], "reason": r[3],
                 "detail": r[4], "payload": r[5].decode("utf-8", "backslashreplace")[:300], "size": r[6]}
                for r in doc["dead"]] if user.all_sites else []
        hj = [dict(h, oldest=console.fmt(h["oldest"], h["site"]) if h["oldest"] else "—") for h in doc["hj212"] if h["site"] in ids]
        return _page(request, "system.html", {"agents": agents, "spool": doc["spool"], "dead_counts": doc["dead_counts"],
                                               "dead": dead, "hj212": hj, "process": ctx.health() if ctx.health else None,
                                               "energy": doc.get("energy") if user.all_sites else None})

    # --- export -----------------------------------------------------------------

    @app.get("/export")
    async def export_page(request: Request):
        user = page_user(request)
        if user is None:
            return login_redirect(request)
        sites = visible(user)
        today = console.today(sites[0].id) if sites else date.today()
        return _page(request, "export.html", {"sites": sites, "from": (today - timedelta(days=6)).isoformat(),
                                               "to": today.isoformat()})

    @app.get("/export.csv")
    @app.get("/api/export.csv")
    async def export_csv(request: Request):
        user = need_user(request) if bearer(request) else page_user(request)
        if user is None:
            raise _Denied(401, "authentication required")
        q = request.query_params
        site = q.get("site", "")
        see(user, site)
        kind = q.get("kind", "readings")
        if kind not in ("readings", "kpis"):
            raise _Denied(400, "kind must be readings or kpis")
        tz = console.tz(site)
        try:
            d0 = date.fromisoformat(q.get("from", ""))
            d1 = date.fromisoformat(q.get("to", ""))
        except ValueError:
            raise _Denied(400, "from and to: write YYYY-MM-DD") from None
        if d1 < d0 or (d1 - d0).days + 1 > web.export_max_days:
            raise _Denied(400, f"the range must be 1 to {web.export_max_days} days, from <= to")
        start, end = periods.day(d0, tz).start, periods.day(d1, tz).end
        z = ZoneInfo(tz)

        def local(ts: float) -> str:
            return datetime.fromtimestamp(ts, z).isoformat(timespec="seconds")

        async def rows():  # async: starlette would iterate a plain generator on a worker thread
            buf = io.StringIO()
            w = csv.writer(buf)
            if kind == "readings":
                w.writerow(["time_local", "site", "device", "metric", "value", "unit", "quality"])
                n = 0
                for ts_ms, dev, metric, value, unit, quality in console.export_readings(site, start, end):
                    w.writerow([local(ts_ms / 1000), site, dev, metric, repr(value), unit, quality])
                    n += 1
                    if n % 500 == 0:
                        yield buf.getvalue()
                        buf.seek(0)
                        buf.truncate()
            else:
                w.writerow(["period_start_local", "period_end_local", "site", "kpi", "subject", "period", "value", "unit",
                            "completeness_pct", "complete", "limit", "breached"])
                for v in console.export_kpis(site, start, end):
                    w.writerow([local(v.period_start), local(v.period_end), site, v.kpi, v.subject, v.period_label,
                                "" if v.value is None else repr(v.value), v.unit, round(v.completeness * 100, 2),
                                int(v.complete), "" if v.limit is None else v.limit,
                                "" if v.breached is None else int(v.breached)])
            yield buf.getvalue()

        name = f"{site}-{kind}-{d0.isoformat()}-{d1.isoformat()}.csv"
        return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # --- JSON API ---------------------------------------------------------------

    @app.get("/api/sites")
    async def api_sites(request: Request):
        user = need_user(request)
        return JSONResponse([{"id": s.id, "name": s.name, "prefecture": s.prefecture, "timezone": s.timezone}
                             for s in visible(user)])

    @app.get("/api/sites/{site}/kpis")
    async def api_kpis(request: Request, site: str, kpi: str = "water_reuse_daily", days: int = 30):
        user = need_user(request)
        see(user, site)
        now = ctx.clock()
        days = max(1, min(days, 400))
        return JSONResponse([v.to_dict() for v in console.values(site, kpi, now - days * 86400, now)])

    from greenmine.server.web import maintenance as maintenance_pages

    maintenance_pages.register(app, maintenance_pages.Pages(
        ctx=ctx, console=console, page=_page, page_user=page_user, login_redirect=login_redirect, need_user=need_user,
        need_csrf=need_csrf, see=see, visible=visible, denied=_Denied))

    from greenmine.server.web import supervision

    supervision.register(app, ctx, supervision.Hooks(page=_page, page_user=page_user, need_user=need_user, bearer=bearer,
                                                     login_redirect=login_redirect, denied=_Denied))
    return app


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _qs(request: Request, **kw) -> str:
    q = dict(request.query_params)
    q.pop("lang", None)
    q.update({k: v for k, v in kw.items() if v is not None})
    return "?" + urlencode(q)


def _safe_next(nxt: str) -> str:
    """Only a path on this site (no //host, no scheme): an open redirect would help phishing."""
    return nxt if nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt else "/"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"
