"""greenmine.server.digest: what the monitor needs from a write."""

from greenmine.server.digest import DigestSpec, digest

SPEC = DigestSpec(kpi_metrics=frozenset({"water_fresh_m3_total", "noise_laeq_db"}), rule_metrics=frozenset({"power_kw"}))


def row(agent, device, metric, ts_ms, value=1.0, quality="good", site="s1"):
    return (site, agent, device, metric, ts_ms, value, "u", quality)


def test_digest_keeps_agents_latest_good_ts_kpi_timestamps_and_rule_rows():
    rows = [
        row("gw1", "m1", "power_kw", 2000, 5.0),
        row("gw1", "m1", "power_kw", 1000, 4.0),
        row("gw1", "m1", "water_fresh_m3_total", 2000),
        row("gw1", "m2", "water_fresh_m3_total", 2000),  # same (site, metric, ts): one KPI mark
        row("gw1", "m2", "noise_laeq_db", 3000, quality="bad"),  # not good: no mark, not latest
        row("gw2", "m9", "power_kw", 9000, quality="stale"),  # heard from, but nothing good
        row("gw1", "m3", "voltage_v", 4000),  # neither KPI nor rule metric: only seen
    ]
    d = digest(rows, SPEC)
    assert d.agents == {("s1", "gw1"), ("s1", "gw2")}
    assert d.latest == {("s1", "gw1", "m1"): 2000, ("s1", "gw1", "m2"): 2000, ("s1", "gw1", "m3"): 4000}
    assert d.kpi_ts == {("s1", "water_fresh_m3_total", 2000)}
    assert d.rule_rows == [rows[0], rows[1]]
    assert d.n == len(rows)


def test_an_empty_write_has_an_empty_digest():
    d = digest([], SPEC)
    assert (d.agents, d.latest, d.kpi_ts, d.rule_rows, d.n) == (set(), {}, set(), [], 0)


def test_first_and_last_of_each_slot_touch_every_period_all_timestamps_touch():
    """The digest keeps, per (site, KPI metric, 15-minute slot), the first and last timestamp. Marking periods
    from those gives exactly the periods all timestamps give, in odd time zones and around midnight and DST."""
    import random

    from greenmine.server.config import SiteConfig
    from greenmine.server.monitor.kpi.config import KpiConfig
    from greenmine.server.monitor.kpi.engine import KpiEngine

    rnd = random.Random(7)
    metrics = ["water_fresh_m3_total", "dust_tsp_mgm3", "noise_laeq_db"]
    for tz in ("Asia/Shanghai", "Asia/Kathmandu", "Australia/Lord_Howe", "America/New_York"):
        for interval in (60.0, 7.0, 1234.0):
            eng = KpiEngine(KpiConfig(counter_interval_s=interval), [SiteConfig(id="s1", timezone=tz)], source=None)
            site = eng.sites["s1"]
            spec = DigestSpec(kpi_metrics=eng.metrics, rule_metrics=frozenset())
            # around local midnights, the 22:00 and 06:00 noise edges and a DST change (New York, 2026-03-08)
            centres = [1772949600, 1772928000, 1773010800, 1772971200]
            rows = [row("gw1", f"m{rnd.randrange(3)}", rnd.choice(metrics), (c + rnd.randrange(-5400, 5400)) * 1000)
                    for c in centres for _ in range(300)]
            d = digest(rows, spec)

            def periods(triples):
                return {(m, p.kind, p.start) for _, m, ts in triples for p in eng.periods_for(site, m, ts / 1000)}

            everything = {(r[0], r[3], r[4]) for r in rows}
            assert len(d.kpi_ts) < len(everything)
            assert periods(d.kpi_ts) == periods(everything), (tz, interval)
