"""Charts as SVG, drawn on the server: no JavaScript, no CDN, nothing fetched by the browser.

    svg = Chart(title, labels, unit=...).bars("reuse %", values, incomplete=flags).limit("85 %", 85).render()

x is categorical (one slot per day or hour); a value of None leaves its slot
empty; an incomplete period is drawn hatched and titled as incomplete, never
as zero. Limits are dashed horizontal lines (one value, or one per slot, e.g.
noise's day and night limits). Markers are vertical lines at a slot, titled
(counter events on a device chart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from markupsafe import Markup, escape

PALETTE = ("#2b6cb0", "#2f855a", "#b7791f", "#6b46c1", "#c05621", "#2c7a7b")
W, H = 760, 260
L, R, T, B = 56, 16, 28, 46


@dataclass
class _Series:
    name: str
    values: list[float | None]
    kind: str  # bar | line
    color: str
    incomplete: list[bool] = field(default_factory=list)


@dataclass
class _Limit:
    name: str
    values: list[float | None]
    color: str


def _nice(lo: float, hi: float) -> tuple[float, float, float]:
    if hi <= lo:
        hi = lo + 1.0
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 5))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class Chart:
    def __init__(self, title: str, labels: list[str], *, unit: str = "", ident: str = "", empty_text: str = "no data",
                 incomplete_text: str = "incomplete") -> None:
        self.title = title
        self.labels = labels
        self.unit = unit
        self.ident = ident
        self.empty_text = empty_text
        self.incomplete_text = incomplete_text
        self.series: list[_Series] = []
        self.limits: list[_Limit] = []
        self.markers: list[tuple[int, str]] = []

    def bars(self, name: str, values: list[float | None], *, incomplete: list[bool] | None = None) -> Chart:
        self.series.append(_Series(name, values, "bar", PALETTE[len(self.series) % len(PALETTE)], incomplete or []))
        return self

    def line(self, name: str, values: list[float | None], *, incomplete: list[bool] | None = None) -> Chart:
        self.series.append(_Series(name, values, "line", PALETTE[len(self.series) % len(PALETTE)], incomplete or []))
        return self

    def limit(self, name: str, value: float | list[float | None] | None, color: str = "#c53030") -> Chart:
        if value is None:
            return self
        vals = value if isinstance(value, list) else [value] * len(self.labels)
        if any(v is not None for v in vals):
            self.limits.append(_Limit(name, vals, color))
        return self

    def marker(self, index: int, title: str) -> Chart:
        self.markers.append((index, title))
        return self

    @property
    def has_data(self) -> bool:
        return any(v is not None for s in self.series for v in s.values)

    def render(self) -> Markup:
        n = max(len(self.labels), 1)
        pw, ph = W - L - R, H - T - B
        vals = [v for s in self.series for v in s.values if v is not None]
        vals += [v for lim in self.limits for v in lim.values if v is not None]
        lo = min([0.0, *vals]) if vals else 0.0
        hi = max(vals) * 1.08 if vals else 1.0
        lo, hi, step = _nice(lo, hi)
        y = lambda v: T + ph - (v - lo) / (hi - lo) * ph  # noqa: E731
        slot = pw / n
        x = lambda i: L + slot * (i + 0.5)  # noqa: E731
        out = [f'<svg class="chart" id="{escape(self.ident)}" role="img" viewBox="0 0 {W} {H}" width="100%" '
               f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(self.title)}">',
               f'<title>{escape(self.title)}</title>',
               '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
               '<rect width="6" height="6" fill="#edf2f7"/><line x1="0" y1="0" x2="0" y2="6" stroke="#a0aec0" stroke-width="3"/>'
               '</pattern></defs>',
               f'<text x="{L}" y="16" class="chart-title" font-size="13" font-weight="bold">{escape(self.title)}'
               f'{(" (" + escape(self.unit) + ")") if self.unit else ""}</text>']
        v = lo
        while v <= hi + step / 2:
            yy = y(v)
            out.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{W - R}" y2="{yy:.1f}" stroke="#e2e8f0"/>'
                       f'<text x="{L - 6}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{_fmt(v)}</text>')
            v += step
        every = max(1, math.ceil(n / 12))
        for i, lab in enumerate(self.labels):
            if i % every == 0:
                out.append(f'<text x="{x(i):.1f}" y="{H - B + 14}" font-size="10" text-anchor="middle">{escape(lab)}</text>')
        bars = [s for s in self.series if s.kind == "bar"]
        bw = slot * 0.8 / max(len(bars), 1)
        for k, s in enumerate(bars):
            for i, val in enumerate(s.values):
                inc = i < len(s.incomplete) and s.incomplete[i]
                if val is None:
                    continue
                x0 = x(i) - slot * 0.4 + k * bw
                top, base = y(max(val, lo)), y(max(lo, 0.0) if lo < 0 <= hi else lo)
                yy, hh = min(top, base), abs(base - top)
                fill = "url(#hatch)" if inc else s.color
                cls = "bar incomplete" if inc else "bar"
                tip = f"{s.name} {self.labels[i]}: {_fmt(val)} {self.unit}" + (f" ({self.incomplete_text})" if inc else "")
                out.append(f'<rect class="{cls}" x="{x0:.1f}" y="{yy:.1f}" width="{max(bw - 1, 1):.1f}" height="{max(hh, 1):.1f}" '
                           f'fill="{fill}" stroke="{s.color}"><title>{escape(tip)}</title></rect>')
        for s in self.series:
            if s.kind != "line":
                continue
            pts = [(x(i), y(val), i) for i, val in enumerate(s.values) if val is not None]
            if len(pts) > 1:
                path = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f},{py:.1f}" for j, (px, py, _) in enumerate(pts))
                out.append(f'<path class="line" d="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>')
            for px, py, i in pts:
                inc = i < len(s.incomplete) and s.incomplete[i]
                tip = f"{s.name} {self.labels[i]}: {_fmt(s.values[i])} {self.unit}" + (f" ({self.incomplete_text})" if inc else "")
                out.append(f'<circle class="point{" incomplete" if inc else ""}" cx="{px:.1f}" cy="{py:.1f}" r="{3 if n < 60 else 1.5}" '
                           f'fill="{"#fff" if inc else s.color}" stroke="{s.color}"><title>{escape(tip)}</title></circle>')
        for lim in self.limits:
            segs = []
            for i, val in enumerate(lim.values):
                if val is None:
                    continue
                x0, x1 = L + slot * i, L + slot * (i + 1)
                segs.append(f"M{x0:.1f},{y(val):.1f} L{x1:.1f},{y(val):.1f}")
            out.append(f'<path class="limit-line" d="{" ".join(segs)}" stroke="{lim.color}" stroke-width="2" '
                       f'stroke-dasharray="6 4" fill="none"><title>{escape(lim.name)}</title></path>')
        for i, title in self.markers:
            xx = x(min(max(i, 0), n - 1))
            out.append(f'<line class="event-marker" x1="{xx:.1f}" y1="{T}" x2="{xx:.1f}" y2="{T + ph}" stroke="#805ad5" '
                       f'stroke-width="2"><title>{escape(title)}</title></line>'
                       f'<text x="{xx + 3:.1f}" y="{T + 10}" font-size="10" fill="#805ad5">⚑</text>')
        if not self.has_data:
            out.append(f'<text x="{L + pw / 2}" y="{T + ph / 2}" text-anchor="middle" class="no-data" fill="#718096">'
                       f'{escape(self.empty_text)}</text>')
        lx = L
        for s in self.series:
            out.append(f'<rect x="{lx}" y="{H - 16}" width="10" height="10" fill="{s.color}"/>'
                       f'<text x="{lx + 14}" y="{H - 7}" font-size="11">{escape(s.name)}</text>')
            lx += 24 + 7 * len(s.name) + (7 * sum(ord(c) > 0x2e80 for c in s.name))
        for lim in self.limits:
            out.append(f'<line x1="{lx}" y1="{H - 11}" x2="{lx + 14}" y2="{H - 11}" stroke="{lim.color}" stroke-dasharray="4 2" '
                       f'stroke-width="2"/><text x="{lx + 18}" y="{H - 7}" font-size="11">{escape(lim.name)}</text>')
            lx += 28 + 7 * len(lim.name) + (7 * sum(ord(c) > 0x2e80 for c in lim.name))
        if any(any(s.incomplete) for s in self.series):
            out.append(f'<rect x="{lx}" y="{H - 16}" width="10" height="10" fill="url(#hatch)" stroke="#a0aec0"/>'
                       f'<text x="{lx + 14}" y="{H - 7}" font-size="11">{escape(self.incomplete_text)}</text>')
        out.append("</svg>")
        return Markup("".join(out))
