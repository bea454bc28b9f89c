"""server.digest: what the monitor needs from a write."""

from server.digest import DigestSpec, digest

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
