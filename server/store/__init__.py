"""Time-series stores behind one small interface (`base.Sink`).

- `sqlite.SqliteStore`: the embedded default; raw rows, hourly and daily rollups, query API.
- `process.SqliteProcessStore`: the same, with its writes in a child process (`writer_process`, default).
- `influx.InfluxSink`: InfluxDB 2/3 or VictoriaMetrics through the v2 write API (line protocol).

`open_sink(cfg)` builds the configured one; influxdb_client is imported only if it is used.
"""

from __future__ import annotations

from greenmine.server.store.base import QUALITY_CODES, Sink, StoredReading

__all__ = ["QUALITY_CODES", "Sink", "StoredReading", "open_sink"]


def open_sink(cfg) -> Sink:
    """The sink configured in `cfg.store` (a ServerConfig). Does not connect yet."""
    from greenmine.server.config import SqliteStoreConfig

    store = cfg.store
    if isinstance(store, SqliteStoreConfig):
        if store.writer_process:
            from greenmine.server.store.process import SqliteProcessStore as SqliteStore
        else:
            from greenmine.server.store.sqlite import SqliteStore

        return SqliteStore(
            cfg.resolve(store.path),
            site_timezones={s.id: s.timezone for s in cfg.sites},
            raw_retention_days=store.raw_retention_days,
            busy_timeout_ms=store.busy_timeout_ms,
        )
    from greenmine.server.store.influx import InfluxSink

    return InfluxSink(
        url=store.url,
        token=store.token.get_secret_value() if store.token else "",
        org=store.org,
        bucket=store.bucket,
        precision=store.precision,
        batch_size=store.batch_size,
        timeout_ms=store.timeout_ms,
    )
