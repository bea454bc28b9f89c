"""The role replica: a reading counts once, however often and in whatever batch it arrives."""

from __future__ import annotations

from greenmine.server.store.base import StoredReading
from greenmine.server.store.replica import _ROWS_PER_INSERT, SeriesReplica


def row(i: int, device: str = "m1", metric: str = "energy_kwh_total", value: float | None = None) -> tuple:
    return ("gs-demo", "gw1", device, metric, 1_767_600_000_000 + i * 1000, float(i) if value is None else value,
            "kWh", "good")


def test_new_readings_are_returned_once_as_given(tmp_path):
    rep = SeriesReplica(tmp_path / "r.sqlite", metrics={"energy_kwh_total"})
    try:
        first = [row(0), StoredReading._make(row(1)), row(1), row(2, metric="power_kw")]
        with rep.transaction() as con:
            new = rep.add(first, con)
        # the repeat of reading 1 within the call counts once; power_kw is not a kept metric
        assert new == [row(0), StoredReading._make(row(1))]
        assert type(new[1]) is StoredReading
        with rep.transaction() as con:
            assert rep.add([row(1), row(3)], con) == [row(3)]  # redelivered: only the new one
        # a redelivered reading with another value does not overwrite the first (identity is the key)
        with rep.transaction() as con:
            assert rep.add([row(0, value=99.0)], con) == []
        assert [p.value for p in rep.query_series("gs-demo", "m1", "energy_kwh_total", 0, 2**62)] == [0.0, 1.0, 3.0]
    finally:
        rep.close()


def test_more_rows_than_one_statement_holds(tmp_path):
    rep = SeriesReplica(tmp_path / "r.sqlite")
    n = 2 * _ROWS_PER_INSERT + 7
    try:
        rows = [row(i, device=f"m{i % 3}") for i in range(n)]
        with rep.transaction() as con:
            assert len(rep.add(rows, con)) == n
        with rep.transaction() as con:
            assert rep.add(rows[::-1] + [row(n)], con) == [row(n)]
        assert rep.count() == n + 1
    finally:
        rep.close()


def test_series_lists_what_the_replica_holds_and_survives_reopen(tmp_path):
    rep = SeriesReplica(tmp_path / "r.sqlite")
    try:
        with rep.transaction() as con:
            rep.add([row(0), row(1), row(0, device="m2"), ("other", "gw9", "x", "noise_laeq_db", 5, 50.0, "dB", "good")], con)
        assert rep.series("gs-demo") == [("gs-demo", "m1", "energy_kwh_total"), ("gs-demo", "m2", "energy_kwh_total")]
        assert len(rep.series()) == 3
    finally:
        rep.close()
    # a file written before the series table existed is listed after a reopen
    import sqlite3

    con = sqlite3.connect(tmp_path / "r.sqlite")
    con.execute("DELETE FROM replica_series")
    con.commit()
    con.close()
    rep = SeriesReplica(tmp_path / "r.sqlite")
    try:
        assert len(rep.series()) == 3
    finally:
        rep.close()
