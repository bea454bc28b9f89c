"""Rendering alert notices into bilingual text (Chinese first, English second).

Templates are `string.Template` files (``${name}`` placeholders) in
`server/notify/templates/`; a file of the same name in the configured
`templates_dir` overrides the shipped one. The first line of a template is
``Subject: ...``, then a blank line, then the body. `context()` lists every
placeholder a template may use.
"""

from __future__ import annotations

import string
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from greenmine.server.notify.errors import TemplateError

SHIPPED = Path(__file__).parent / "templates"
NAMES = ("firing", "resolved", "reminder", "digest", "digest_item")

SEVERITY_ZH = {"critical": "严重", "warning": "警告", "info": "提示"}
NOTICE_ZH = {"firing": "超限", "resolved": "已解除", "reminder": "提醒"}
_OK_OP = {"<": "≥", "<=": ">", ">": "≤", ">=": "<"}


def _num(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        text = f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(v)


def _with_unit(v, unit: str) -> str:
    if v is None:
        return "—"
    return f"{_num(v)} {unit}".strip()


def _local(ts, tz: str) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M") + f" ({tz})"


def context(facts: dict, kind: str = "firing") -> dict[str, str]:
    """Flatten an alert event's facts into the strings the templates use."""
    tz = facts.get("timezone") or "Asia/Shanghai"
    unit = facts.get("unit") or ""
    cmp = facts.get("comparison")
    limit = facts.get("limit")
    ok_op = _OK_OP.get(cmp or "", "")
    if facts.get("kind") == "deadman":
        limit_text = f"{_num(limit)} s 内须有数据 / data within {_num(limit)} s"
        value_text = f"{_num(facts.get('value'))} s 无数据 / no data for {_num(facts.get('value'))} s"
        detail_zh = f"最后一次数据:{facts.get('last_seen_local', '—')}" + ("(终端报告离线)" if facts.get("reported_offline") else "")
        detail_en = f"Last data:          {facts.get('last_seen_local', '—')}" + (" (agent reported offline)" if facts.get("reported_offline") else "")
    else:
        limit_text = f"{ok_op} {_with_unit(limit, unit)}".strip()
        value_text = _with_unit(facts.get("value"), unit)
        detail_zh = detail_en = ""
        extra = facts.get("extra") or {}
        if "reused_m3" in extra:
            detail_zh = f"回用水量 {_num(extra['reused_m3'])} m³,新水量 {_num(extra['fresh_m3'])} m³"
            detail_en = f"Water:              reused {_num(extra['reused_m3'])} m³, fresh {_num(extra['fresh_m3'])} m³"
        elif "arithmetic_mean_db" in extra:
            detail_zh = f"能量平均 Leq;样本数 {extra.get('samples')}"
            detail_en = f"Leq is the energy average of {extra.get('samples')} samples"
    if facts.get("period_start_local"):
        period = f"{facts.get('period_label', '')}  {facts['period_start_local']} – {facts.get('period_end_local', '')} ({tz})"
    else:
        period = facts.get("period_label") or "—"
    comp = facts.get("completeness_pct")
    sev = facts.get("severity", "warning")
    # How the breach reads: a floor (reuse rate) is fallen below, a ceiling exceeded,
    # and a device that went silent is simply "no data".
    if facts.get("kind") == "deadman":
        breach_zh, breach_en = "", ""
    elif cmp in ("<", "<="):
        breach_zh, breach_en = "低于限值", "below its limit"
    else:
        breach_zh, breach_en = "超限", "over its limit"
    return {
        "alert_id": str(facts.get("alert_id", "")),
        "rule": str(facts.get("rule", "")),
        "severity_en": sev,
        "severity_zh": SEVERITY_ZH.get(sev, sev),
        "notice_en": kind,
        "notice_zh": NOTICE_ZH.get(kind, kind),
        "site_id": str(facts.get("site_id", "")),
        "site_name": str(facts.get("site_name") or facts.get("site_id", "")),
        "subject": str(facts.get("subject", "")),
        "title_zh": str(facts.get("title_zh", "")),
        "title_en": str(facts.get("title_en", "")),
        "breach_zh": breach_zh,
        "breach_en": breach_en,
        "value_text": value_text,
        "limit_text": limit_text,
        "worst_text": _with_unit(facts.get("worst", facts.get("value")), unit) if facts.get("kind") != "deadman" else "—",
        "standard": facts.get("standard") or "—",
        "period_text": period,
        "since_text": _local(facts.get("since_ts", facts.get("fired_ts")), tz),
        "resolved_text": _local(facts.get("resolved_ts"), tz),
        "devices_text": ", ".join(facts.get("devices") or []) or "—",
        "completeness_text": "—" if comp is None else f"{_num(float(comp))} %",
        "detail_zh": detail_zh,
        "detail_en": detail_en,
        "resolves_zh": str(facts.get("resolves_zh", "")),
        "resolves_en": str(facts.get("resolves_en", "")),
    }


class Templates:
    def __init__(self, override_dir: str | Path | None = None) -> None:
        self._t: dict[str, tuple[str, string.Template]] = {}
        for name in NAMES:
            path = SHIPPED / f"{name}.txt"
            if override_dir is not None and (Path(override_dir) / f"{name}.txt").is_file():
                path = Path(override_dir) / f"{name}.txt"
            try:
                self._t[name] = (str(path), string.Template(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise TemplateError(f"cannot read template {path}: {exc}") from exc
        # fail at load, not at the first alert, if an override uses an unknown placeholder
        sample = context({"alert_id": 1, "value": 1.0, "limit": 2.0, "comparison": "<"})
        for name in NAMES:
            self._render(name, {**sample, "count": "2", "sites_text": "x", "items": ""})

    def _render(self, name: str, ctx: dict[str, str]) -> str:
        path, tpl = self._t[name]
        try:
            return tpl.substitute(ctx)
        except KeyError as exc:
            raise TemplateError(f"template {path}: unknown placeholder ${{{exc.args[0]}}}") from None
        except ValueError as exc:
            raise TemplateError(f"template {path}: {exc}") from None

    def render(self, name: str, ctx: dict[str, str]) -> tuple[str, str]:
        """(subject, body) of a subject-bearing template."""
        text = self._render(name, ctx)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise TemplateError(f"template {self._t[name][0]}: the first line must be 'Subject: ...'")
        return first[len("Subject:"):].strip(), body.lstrip("\n")

    def notice(self, kind: str, facts: dict) -> tuple[str, str]:
        return self.render(kind, context(facts, kind))

    def digest(self, notices: list[tuple[str, dict]]) -> tuple[str, str]:
        items = "\n".join(self._render("digest_item", context(f, k)) for k, f in notices)
        sites = sorted({str(f.get("site_name") or f.get("site_id")) for _, f in notices})
        return self.render("digest", {"count": str(len(notices)), "sites_text": ", ".join(sites), "items": items})
