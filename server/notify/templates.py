"""Rendering alert notices into bilingual text (Chinese first, English second).

Templates are Jinja2 files in `server/notify/templates/` (`firing.txt.j2`,
`resolved.txt.j2`, `reminder.txt.j2`, `digest.txt.j2`, `digest_item.txt.j2`,
and `_notice.j2`, the macros that say what each rule kind means). A file of the
same name in the configured `templates_dir` overrides the shipped one; files
named `_*.j2` there are partials an override may import. The first line of a
subject-bearing template is ``Subject: ...``, then a blank line, then the body.

Rendering is strict (`StrictUndefined`): a template that uses a name
`context()` does not provide fails when the templates are loaded, and a render
that fails raises `TemplateError` naming the template, never a half-filled
email. Every string that comes from outside (a unit off the wire, a site name
from config) has its control, format and line/paragraph-separator characters
escaped before a template sees it, so no value can add a line to the body or
a header to the message.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta

from greenmine.server.notify.errors import TemplateError

SHIPPED = Path(__file__).parent / "templates"
NAMES = ("firing", "resolved", "reminder", "digest", "digest_item")
SUFFIX = ".txt.j2"
#: The names a notice template (and `_notice.j2`) may use; the digest has its own.
NOTICE_VARS = frozenset({
    "notice", "rule_kind", "alert_id", "rule", "severity", "site_id", "site_name", "subject", "title_zh", "title_en",
    "value", "worst", "limit", "unit", "comparison", "standard", "period_label", "period_start", "period_end",
    "timezone", "since_ts", "resolved_ts", "devices", "completeness_pct", "extra", "last_seen", "reported_offline",
    "resolves_zh", "resolves_en", "decimals", "alert_url",
})
DIGEST_VARS = frozenset({"count", "sites", "items"})
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _unsafe(text: str) -> bool:
    # isprintable() is False for every unsafe category, so the common case costs one C call
    return not text.isprintable() and any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in text)


def escape(text: str) -> str:
    r"""`text` with every control, format and line/paragraph-separator character written as \uXXXX."""
    if not _unsafe(text):
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def _safe(v):
    if isinstance(v, str):
        return escape(v)
    if isinstance(v, dict):
        return {escape(str(k)): _safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_safe(x) for x in v]
    return v


def _num(v, decimals: int | None = None) -> str:
    """A number for an email; with `decimals`, exactly that many places (a judged value: 1.00, 55.0)."""
    if v is None:
        return "—"
    if decimals is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{int(decimals)}f}"
    if isinstance(v, float):
        text = f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(v)


def _with_unit(v, unit: str, decimals: int | None = None) -> str:
    if v is None:
        return "—"
    return f"{_num(v, decimals)} {unit}".strip()


def _local(ts, tz: str) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M") + f" ({tz})"


def context(facts: dict, notice: str = "firing") -> dict:
    """An alert event's facts as the variables of a notice template (every name in NOTICE_VARS, always)."""
    f = _safe(facts)
    return {
        "notice": notice,
        "rule_kind": f.get("kind") or "threshold",
        "alert_id": f.get("alert_id", ""),
        "rule": f.get("rule", ""),
        "severity": f.get("severity", "warning"),
        "site_id": f.get("site_id", ""),
        "site_name": f.get("site_name") or f.get("site_id", ""),
        "subject": f.get("subject", ""),
        "title_zh": f.get("title_zh", ""),
        "title_en": f.get("title_en", ""),
        "value": f.get("value"),
        "worst": f.get("worst", f.get("value")),
        "limit": f.get("limit"),
        "unit": f.get("unit") or "",
        "comparison": f.get("comparison") or "",
        "standard": f.get("standard") or "",
        "period_label": f.get("period_label") or "",
        "period_start": f.get("period_start_local"),
        "period_end": f.get("period_end_local") or "",
        "timezone": f.get("timezone") or "Asia/Shanghai",
        "since_ts": f.get("since_ts", f.get("fired_ts")),
        "resolved_ts": f.get("resolved_ts"),
        "devices": f.get("devices") or [],
        "completeness_pct": None if f.get("completeness_pct") is None else float(f["completeness_pct"]),
        "extra": f.get("extra") or {},
        "last_seen": f.get("last_seen_local"),
        "reported_offline": bool(f.get("reported_offline")),
        "resolves_zh": f.get("resolves_zh", ""),
        "resolves_en": f.get("resolves_en", ""),
        # the decimals the value was judged at (threshold rules); None: shown as before
        "decimals": f.get("decimals") if isinstance(f.get("decimals"), int) else None,
    }


# One sample per rule kind, so that loading renders every branch of _notice.j2 once.
_SAMPLES = (
    {"kind": "threshold", "alert_id": 1, "value": 76.0, "limit": 85.0, "comparison": "<", "unit": "%",
     "period_start_local": "2026-01-01 00:00", "since_ts": 0.0, "resolved_ts": 3600.0, "devices": ["d"],
     "completeness_pct": 100.0, "extra": {"reused_m3": 1.0, "fresh_m3": 1.0}},
    {"kind": "threshold", "alert_id": 2, "value": 51.0, "limit": 50, "comparison": ">", "unit": "dB(A)", "decimals": 1,
     "extra": {"arithmetic_mean_db": 44.0, "samples": 1}},
    {"kind": "deadman", "alert_id": 3, "value": 300, "limit": 300.0, "comparison": ">=", "unit": "s",
     "last_seen_local": "2026-01-01 00:00", "reported_offline": True},
    {"kind": "energy_consistency", "alert_id": 4, "value": 6.0, "limit": 5.0, "comparison": ">", "unit": "%", "decimals": 2,
     "extra": {"month_value": 100.0, "day_sum": 94.0, "days": 30, "day_kpi": "energy_kwh_daily", "kpi_unit": "kWh"}},
)


class Templates:
    def __init__(self, override_dir: str | Path | None = None, *, console_url: str | None = None) -> None:
        #: the console's address ([web] public_url): notices link their alert id to <console_url>/alerts/<id>
        self.console_url = console_url.rstrip("/") if console_url else None
        loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(SHIPPED, encoding="utf-8")]
        if override_dir is not None:
            _check_override_dir(Path(override_dir))
            loaders.insert(0, jinja2.FileSystemLoader(override_dir, encoding="utf-8"))
        self._loader = jinja2.ChoiceLoader(loaders)
        self._env = jinja2.Environment(
            loader=self._loader, undefined=jinja2.StrictUndefined, autoescape=False,
            keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        )
        self._env.filters.update(num=_num, with_unit=_with_unit, local=_local)
        self._t: dict[str, jinja2.Template] = {}
        for file in sorted(set(self._loader.list_templates())):
            if not file.endswith(".j2"):
                continue
            allowed = DIGEST_VARS if file == "digest" + SUFFIX else NOTICE_VARS
            try:
                source, path, _ = self._loader.get_source(self._env, file)
                unknown = jinja2.meta.find_undeclared_variables(self._env.parse(source)) - allowed
                template = self._env.get_template(file)
            except jinja2.TemplateError as exc:
                raise TemplateError(f"template {_where(file, exc)}: {exc.message or exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise TemplateError(f"cannot read template {file}: {exc}") from exc
            if unknown:
                raise TemplateError(f"template {path}: unknown variable(s) {', '.join(sorted(unknown))}; "
                                    f"a template may use {', '.join(sorted(allowed))}")
            self._t[file] = template
        # fail at load, not at the first alert, if an override breaks on a real notice
        for sample in _SAMPLES:
            for name in ("firing", "resolved", "reminder"):
                self.notice(name, sample)
        self.digest([("firing", s) for s in _SAMPLES])

    def path(self, name: str) -> str:
        return self._t[name + SUFFIX].filename or name + SUFFIX

    def _render(self, name: str, ctx: dict) -> str:
        try:
            return self._t[name + SUFFIX].render(ctx)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.path(name)}: {exc.message or exc}") from None
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:  # a filter given a value it cannot format
            raise TemplateError(f"template {self.path(name)}: {type(exc).__name__}: {exc}") from None

    def render(self, name: str, ctx: dict) -> tuple[str, str]:
        """(subject, body) of a subject-bearing template. Raises TemplateError."""
        text = self._render(name, ctx)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise TemplateError(f"template {self.path(name)}: the first line must be 'Subject: ...'")
        subject = first[len("Subject:"):].strip()
        if _unsafe(subject):  # the template's own text: values are escaped already
            raise TemplateError(f"template {self.path(name)}: the subject has a control character: {escape(subject)}")
        return subject, body.lstrip("\n")

    def _context(self, facts: dict, kind: str) -> dict:
        ctx = context(facts, kind)
        ctx["alert_url"] = f"{self.console_url}/alerts/{ctx['alert_id']}" if self.console_url and ctx["alert_id"] != "" else ""
        return ctx

    def notice(self, kind: str, facts: dict) -> tuple[str, str]:
        return self.render(kind, self._context(facts, kind))

    def digest(self, notices: list[tuple[str, dict]]) -> tuple[str, str]:
        items = [self._render("digest_item", self._context(f, k)) for k, f in notices]
        sites = sorted({escape(str(f.get("site_name") or f.get("site_id"))) for _, f in notices})
        return self.render("digest", {"count": len(notices), "sites": sites, "items": items})


def _check_override_dir(folder: Path) -> None:
    """An override folder holds only templates we know, so a typo or an old-style file fails at load."""
    if not folder.is_dir():
        raise TemplateError(f"templates_dir {folder} is not a folder")
    for p in sorted(folder.iterdir()):
        if p.name.endswith(".txt") and p.name[:-4] in NAMES:
            raise TemplateError(f"template {p}: string.Template files are no longer read; rename it "
                                f"{p.name}.j2 and write {{{{ name }}}} for ${{name}} (docs/kpi-alerts.md)")
        if p.name.endswith(".j2") and not p.name.startswith("_") and p.name[:-len(SUFFIX)] not in NAMES:
            raise TemplateError(f"template {p}: unknown template name; overridable: "
                                f"{', '.join(n + SUFFIX for n in NAMES)} (partials are named _*.j2)")


def _where(file: str, exc: jinja2.TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"{getattr(exc, 'filename', None) or file}" + (f", line {line}" if line else "")
