"""Time-series stores behind one interface (`base.Sink`), and the writer that feeds them from the spool.

- `sqlite.SqliteStore`: the embedded default; raw rows, hourly and daily rollups, query API.
- `influx.InfluxSink`: InfluxDB 2/3 or VictoriaMetrics through the v2 write API (line protocol).
- `writer.Writer`: the one thread that drains the spool into the sink.

`open_sink(cfg.store, ...)` builds the configured one; influxdb_client is imported only if it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from greenmine.server.store.base import QUALITY_CODES, Sink, StoredReading

__all__ = ["QUALITY_CODES", "Sink", "StoredReading", "open_sink"]


def open_sink(store, *, resolve: Callable[[str], Path] = Path, site_timezones: dict[str, str] | None = None) -> Sink:
    """The sink a `[store]` section (SqliteStoreConfig | InfluxStoreConfig) configures. Does not connect yet.
    `resolve` turns the SQLite path into a file path (ServerConfig.resolve: relative to the config file)."""
    from greenmine.server.config import SqliteStoreConfig

    if isinstance(store, SqliteStoreConfig):
        from greenmine.server.store.sqlite import SqliteStore

        return SqliteStore(
            resolve(store.path),
            site_timezones=site_timezones,
            raw_retention_days=store.raw_retention_days,
            busy_timeout_ms=store.busy_timeout_ms,
            maintenance_interval_s=store.maintenance_interval_s,
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
