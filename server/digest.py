"""What the monitor needs to know about a write, computed where the rows already are.

    spec = DigestSpec(kpi_metrics=frozenset({...}), rule_metrics=frozenset({...}))
    d = digest(rows, spec)      # rows: (site, agent, device, metric, ts_ms, value, unit, quality)

The KPI engine and the alert monitor do not need every stored reading: they
need which agents were heard from, each device's latest good timestamp, which
(site, metric, ts) of KPI inputs arrived (to mark periods for recomputation),
and the readings of metrics that have a threshold rule. A digest is that, a
few entries per device instead of one per reading.

Why it exists: the writer's listeners run in the server process, under the
GIL that paho's network thread needs. With the SQLite store the rows of a
write are already decoded in the store's child process, so the child computes
the digest there (`write_spooled_async(bodies, digests=[spec])`) and the
server process never decodes them. Elsewhere the writer computes it from the
rows with this same function, so both paths agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import NamedTuple

from greenmine.server.monitor.kpi.periods import SLOT_S

_SITE_AGENT = itemgetter(0, 1)
_SITE_AGENT_DEVICE = itemgetter(0, 1, 2)
_SITE_METRIC_TS = itemgetter(0, 3, 4)
_TS = itemgetter(4)
_QUALITY = itemgetter(7)
_SLOT_MS = SLOT_S * 1000


class DigestSpec(NamedTuple):
    kpi_metrics: frozenset[str]
    rule_metrics: frozenset[str]


class Digest(NamedTuple):
    #: every (site, agent) with a row in the write, whatever its quality
    agents: set[tuple[str, str]]
    #: (site, agent, device) -> newest ts_ms of its good readings
    latest: dict[tuple[str, str, str], int]
    #: (site, metric, ts_ms) of good readings of KPI metrics: the first and last of each 15-minute slot
    #: (`server.kpi.periods.SLOT_S`), which touch every period the others touch
    kpi_ts: set[tuple[str, str, int]]
    #: good rows of metrics with a threshold rule, in write order
    rule_rows: list[tuple]
    #: rows in the write
    n: int


def digest(rows: Sequence[tuple], spec: DigestSpec) -> Digest:
    # C-level passes (itemgetter, set, sorted, dict(zip)) rather than a Python loop per reading
    agents = set(map(_SITE_AGENT, rows))
    good = rows if set(map(_QUALITY, rows)) <= {"good"} else [r for r in rows if r[7] == "good"]
    rules = spec.rule_metrics
    rule_rows = [r for r in good if r[3] in rules] if rules else []
    by_ts = sorted(good, key=_TS)  # stable: for each device the last row is its latest
    latest = dict(zip(map(_SITE_AGENT_DEVICE, by_ts), map(_TS, by_ts)))
    kpi = spec.kpi_metrics
    bounds: dict[tuple[str, str, int], list[int]] = {}
    for site, metric, ts in set(map(_SITE_METRIC_TS, good)):
        if metric in kpi:
            b = bounds.get((site, metric, ts // _SLOT_MS))
            if b is None:
                bounds[(site, metric, ts // _SLOT_MS)] = [ts, ts]
            elif ts < b[0]:
                b[0] = ts
            elif ts > b[1]:
                b[1] = ts
    kpi_ts = {(site, metric, ts) for (site, metric, _), b in bounds.items() for ts in b}
    return Digest(agents, latest, kpi_ts, rule_rows, len(rows))
