"""Line protocol built by the InfluxDB sink: escaping, on its own and against a real VictoriaMetrics."""

from __future__ import annotations

import pytest

from greenmine.server.errors import StoreRejected, StoreUnavailable
from greenmine.server.store.base import StoredReading
from greenmine.server.store.influx import InfluxSink, build_lines, escape_measurement, escape_tag
from tests.support.services import free_port

TS = 1_767_600_000_123  # ms


def reading(site="gs-demo", device="m1", metric="power_kw", value=1.5, quality="good", unit="kW") -> StoredReading:
    return StoredReading(site, "gw1", device, metric, TS, value, unit, quality)


def test_line_shape_and_precision():
    lines, bad = build_lines([reading(), reading(device="m2", value=2, quality="stale")])
    assert bad == []
    assert lines == [
        f"power_kw,device=m1,site=gs-demo,unit=kW value=1.5,quality=0i {TS}",
        f"power_kw,device=m2,site=gs-demo,unit=kW value=2.0,quality=2i {TS}",
    ]
    assert build_lines([reading()], "s")[0][0].endswith(f" {TS // 1000}")


def test_plain_rows_and_a_series_cache_kept_between_writes():
    """The writer hands sinks plain tuples in StoredReading's order; the sink escapes each series once and keeps
    its line head for the next write, which gives the same lines."""
    heads: dict = {}
    rows = [tuple(reading(device="m 1")), tuple(reading(device="m2", value=7, quality="bad"))]
    first, _ = build_lines(rows, "ms", heads)
    assert first == build_lines(rows)[0] == [f"power_kw,device=m\\ 1,site=gs-demo,unit=kW value=1.5,quality=0i {TS}",
                                             f"power_kw,device=m2,site=gs-demo,unit=kW value=7.0,quality=1i {TS}"]
    assert heads == {("power_kw", "m 1", "gs-demo", "kW"): "power_kw,device=m\\ 1,site=gs-demo,unit=kW",
                     ("power_kw", "m2", "gs-demo", "kW"): "power_kw,device=m2,site=gs-demo,unit=kW"}
    assert build_lines(rows, "ms", heads)[0] == first


def test_unit_is_a_tag_escaped_and_omitted_when_empty():
    lines, bad = build_lines([reading(unit="m3/h"), reading(unit="mg/m3 (std)"), reading(unit="")])
    assert bad == []
    assert lines[0].startswith("power_kw,device=m1,site=gs-demo,unit=m3/h value=")
    assert lines[1].startswith(r"power_kw,device=m1,site=gs-demo,unit=mg/m3\ (std) value=")
    assert lines[2].startswith("power_kw,device=m1,site=gs-demo value=")


def test_unit_reaches_victoriametrics_as_a_label(victoria_dedup):
    sink = InfluxSink(url=victoria_dedup.url, precision="ms")
    try:
        sink.write([StoredReading("gs-demo", "gw1", "n1", "noise_laeq_db", TS, 55.2, "dB", "good")])
        series = victoria_dedup.export('{__name__="noise_laeq_db_value"}')
    finally:
        sink.close()
    assert [s["metric"] for s in series] == [
        {"__name__": "noise_laeq_db_value", "device": "n1", "site": "gs-demo", "unit": "dB"}]
    assert series[0]["values"] == [55.2]


@pytest.mark.parametrize(
    "raw, measurement, tag",
    [
        ("a b", r"a\ b", r"a\ b"),
        ("a,b", r"a\,b", r"a\,b"),
        ("a=b", "a=b", r"a\=b"),
        ('a"b', 'a"b', 'a"b'),
        ("a\\", "a\\\\", "a\\\\"),
        ("a\nb", r"a\nb", r"a\nb"),
        ("a\r\nb\tc", r"a\r\nb\tc", r"a\r\nb\tc"),
    ],
)
def test_escaping_tables(raw, measurement, tag):
    assert escape_measurement(raw) == measurement
    assert escape_tag(raw) == tag


HOSTILE = [
    'dev ice,site=evil value=666 1\nx',
    'a"b=c,d e',
    "trailing\\",
    "nl\ninjected,device=x value=1 1",
]


def test_hostile_names_make_exactly_one_line_each():
    readings = [reading(device=h, site=h, metric=h) for h in HOSTILE]
    lines, bad = build_lines(readings)
    assert bad == [] and len(lines) == len(HOSTILE)
    for line in lines:
        assert "\n" not in line and "\r" not in line
        # unescaped spaces split a line into exactly three parts: key, fields, timestamp
        parts = line.replace("\\\\", "").replace("\\ ", "").split(" ")
        assert len(parts) == 3 and parts[1].startswith("value=") and parts[2] == str(TS), line


def test_empty_names_are_refused_not_written():
    lines, bad = build_lines([reading(device=""), reading()])
    assert len(lines) == 1 and len(bad) == 1


def test_hostile_names_round_trip_through_victoriametrics(victoria_dedup):
    sink = InfluxSink(url=victoria_dedup.url, precision="ms")
    try:
        sink.ping()
        sink.write([reading(device=h, site="gs-demo") for h in HOSTILE] + [reading(device="plain")])
        series = victoria_dedup.export('{__name__="power_kw_value"}')
    finally:
        sink.close()
    devices = sorted(s["metric"]["device"] for s in series)
    assert len(series) == len(HOSTILE) + 1, series
    assert all(s["metric"]["site"] == "gs-demo" for s in series), "a name injected a tag"
    assert all(s["values"] == [1.5] and s["timestamps"] == [TS] for s in series)
    assert "plain" in devices
    # spaces, commas, equals signs, quotes and backslashes come back as they were sent
    for h in HOSTILE:
        if "\n" not in h:
            assert h in devices, (h, devices)
    # no series other than value and quality was created by a hostile name
    names = {s["metric"]["__name__"] for s in victoria_dedup.export()}
    assert names == {"power_kw_value", "power_kw_quality"}


def test_partial_rejection_writes_the_rest(victoria_dedup):
    sink = InfluxSink(url=victoria_dedup.url)
    try:
        with pytest.raises(StoreRejected) as info:
            sink.write([reading(device=""), reading(device="ok")])
        assert len(info.value.rejected) == 1
        assert [s["metric"]["device"] for s in victoria_dedup.export('{__name__="power_kw_value"}')] == ["ok"]
    finally:
        sink.close()


def test_unreachable_store_is_unavailable():
    sink = InfluxSink(url=f"http://127.0.0.1:{free_port()}", timeout_ms=500)
    try:
        with pytest.raises(StoreUnavailable):
            sink.write([reading()])
        with pytest.raises(StoreUnavailable):
            sink.ping()
    finally:
        sink.close()


def test_every_sink_declares_what_the_writer_calls(tmp_path):
    """The writer calls the sink only through `Sink`: both stores implement all of it."""
    from greenmine.server.store.base import RestartAware, Sink
    from greenmine.server.store.sqlite import SqliteStore

    sinks = [SqliteStore(tmp_path / "s.sqlite"), InfluxSink(url=f"http://127.0.0.1:{free_port()}")]
    try:
        for sink in sinks:
            assert isinstance(sink, Sink), type(sink).__name__
            assert sink.maintain() == 0
        # only the store that acknowledges from memory is asked when it started
        assert [isinstance(s, RestartAware) for s in sinks] == [False, True]
    finally:
        for sink in sinks:
            sink.close()


def test_victoriametrics_start_time_and_age(victoria_dedup):
    """Its start time in whole seconds from /metrics, its age by its own clock from the Date header."""
    import time

    sink = InfluxSink(url=victoria_dedup.url)
    try:
        start = sink.started_at()
        assert start is not None and start.at == int(start.at)
        assert abs(start.at - time.time()) < 60
        assert start.age_s is not None and 0 <= start.age_s < 60
        assert sink.started_at().at == start.at
    finally:
        sink.close()
    down = InfluxSink(url=f"http://127.0.0.1:{free_port()}", timeout_ms=500)
    try:
        with pytest.raises(StoreUnavailable):
            down.started_at()
    finally:
        down.close()
