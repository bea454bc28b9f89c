"""The InfluxDB sink: InfluxDB 2/3 or VictoriaMetrics through the v2 write API.

The only server module that imports influxdb_client; every
failure channel of it (ApiException with an HTTP status, urllib3 connection
errors, OSError) is translated into StoreUnavailable or StoreRejected here.

Line protocol is built directly: building `Point` objects is several times
slower. One line per reading:

    <metric>,device=<device>,site=<site>,unit=<unit> value=<float>,quality=<code>i <ts>

- The measurement is the metric; the tags are the rest of the reading's
  identity (device, site) and its unit, sorted as InfluxDB prefers. A reading
  is re-sent with the same unit, so (measurement, tags, ts) identifies it and a
  rewrite overwrites it: idempotent. The unit is a tag so that a query (and
  Grafana) sees it beside the value; a device whose unit changes starts a new
  series, which is what a changed unit means. A reading without a unit has no
  `unit` tag (line protocol has no empty tag values). The agent is not a tag:
  moving a meter to another gateway must not split its series.
- `quality` is an integer field (`QUALITY_CODES`: good 0, bad 1, stale 2,
  out_of_range 3) because VictoriaMetrics keeps numeric fields only.
- VictoriaMetrics maps this to the metrics `<metric>_value` and
  `<metric>_quality`. It keeps duplicate samples unless started with
  `-dedup.minScrapeInterval=1ms`; run it so (docs/server.md).
- `started_at()` (`RestartAware`) reads the store's process start time from
  its Prometheus `/metrics` (`process_start_time_seconds`, or
  VictoriaMetrics' `vm_app_start_timestamp`), at the URL's origin, and its
  age from the response's `Date` header: the writer's durability window
  re-sends what the store acknowledged when it changes.
- Escaping follows influxdb-client's own tables: backslash, comma, space (and
  `=` in tag keys and values) are backslash-escaped, and newline, CR and tab
  become the two-character escapes, so no name can break or inject a line.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import urllib.parse
from collections.abc import Sequence

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.service.write_service import WriteService
from influxdb_client.rest import ApiException

from greenmine.server.errors import StoreRejected, StoreUnavailable
from greenmine.server.store.base import QUALITY_CODES, Row, StoreStart

log = logging.getLogger(__name__)

_CONTROL = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}
_ESCAPE_MEASUREMENT = str.maketrans({"\\": "\\\\", ",": r"\,", " ": r"\ ", **_CONTROL})
_ESCAPE_TAG = str.maketrans({"\\": "\\\\", ",": r"\,", " ": r"\ ", "=": r"\=", **_CONTROL})


def escape_measurement(name: str) -> str:
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.translate(_ESCAPE_TAG)


def build_lines(readings: Sequence[Row], precision: str = "ms",
                heads: dict[tuple[str, str, str, str], str] | None = None) -> tuple[list[str], list[tuple[Row, str]]]:
    """Line protocol for `readings` (rows in StoredReading's field order), and the readings that cannot be written
    with why (empty names).

    `heads`: a cache of each series' escaped measurement and tags, (metric, device, site, unit) -> head, that the
    caller keeps between calls (a series is escaped once, not once per write); default: one for this call."""
    div = 1000 if precision == "s" else 1
    lines: list[str] = []
    append = lines.append
    bad: list[tuple[Row, str]] = []
    cache: dict[tuple[str, str, str, str], str] = {} if heads is None else heads
    codes = QUALITY_CODES
    for r in readings:
        site, _agent, device, metric, ts_ms, value, unit, quality = r
        key = (metric, device, site, unit)
        head = cache.get(key)
        if head is None:
            if not (metric and device and site):
                bad.append((r, "empty metric, device or site"))
                continue
            head = f"{escape_measurement(metric)},device={escape_tag(device)},site={escape_tag(site)}"
            if unit:
                head += f",unit={escape_tag(unit)}"
            cache[key] = head
        append(f"{head} value={float(value)!r},quality={codes.get(quality, 1)}i {ts_ms // div}")
    return lines, bad


class InfluxSink:
    """Writes readings in batches of `batch_size` lines, gzip-compressed, synchronously."""

    name = "influxdb"
    maintenance_interval_s = None  # retention is the database's own

    def __init__(
        self,
        *,
        url: str,
        token: str = "",
        org: str = "greenmine",
        bucket: str = "greenmine",
        precision: str = "ms",
        batch_size: int = 5000,
        timeout_ms: int = 10_000,
    ) -> None:
        if precision not in ("s", "ms"):
            raise ValueError(f"precision must be s or ms, not {precision!r}")
        self.url = url
        self.bucket = bucket
        self.org = org
        self.precision = precision
        self.batch_size = batch_size
        self._wp = WritePrecision.S if precision == "s" else WritePrecision.MS
        # retries=False: the writer owns retries and backoff, so a dead store fails fast here.
        # enable_gzip=False: bodies are compressed here, at level 1 (the client's gzip.compress uses level 9:
        # several times the CPU for a body a few percent smaller, on the ingest process's one core)
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms, enable_gzip=False, retries=False)
        origin = urllib.parse.urlsplit(url)
        self.metrics_url = f"{origin.scheme}://{origin.netloc}/metrics"
        self._http = urllib3.PoolManager(num_pools=1, timeout=urllib3.Timeout(total=min(timeout_ms, 5000) / 1000), retries=False)
        self._token = token
        self._service = WriteService(self._client.api_client)
        self._heads: dict[tuple[str, str, str, str], str] = {}  # build_lines' series cache, bounded by HEADS_MAX

    #: most series whose escaped line heads are kept between writes (beyond it the cache starts again)
    HEADS_MAX = 100_000

    def write(self, readings: Sequence[Row]) -> None:
        if len(self._heads) > self.HEADS_MAX:
            self._heads.clear()
        lines, bad = build_lines(readings, self.precision, self._heads)
        for i in range(0, len(lines), self.batch_size):
            self._post("\n".join(lines[i : i + self.batch_size]))
        if bad:
            raise StoreRejected(f"influxdb: {len(bad)} readings cannot be written as line protocol: {bad[0][1]}", rejected=bad)

    def _post(self, body: str) -> None:
        try:
            self._service.post_write(org=self.org, bucket=self.bucket, body=gzip.compress(body.encode(), compresslevel=1),
                                     precision=self._wp, content_encoding="gzip",
                                     content_type="text/plain; charset=utf-8")
        except ApiException as exc:
            status = exc.status or 0
            msg = f"influxdb {self.url}: HTTP {status} {(exc.body or exc.reason or '')!s:.300}"
            if status == 429 or status >= 500 or status == 0:
                raise StoreUnavailable(msg) from exc
            raise StoreRejected(msg) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"influxdb {self.url}: {exc}") from exc

    def ping(self) -> None:
        try:
            ok = self._client.ping()
        except Exception as exc:  # ping() itself swallows most errors; anything left is "unavailable"
            raise StoreUnavailable(f"influxdb {self.url}: ping: {exc}") from exc
        if not ok:
            raise StoreUnavailable(f"influxdb {self.url}: ping failed")

    def maintain(self) -> int:
        return 0

    def started_at(self) -> StoreStart | None:
        """The store process's start time (epoch seconds), which changes when it restarts, and its age by the
        store's own clock (the response's Date header); None if it reports no start time (no /metrics, or no
        start-time metric). Raises StoreUnavailable if it cannot be asked now."""
        headers = {"Authorization": f"Token {self._token}"} if self._token else {}
        try:
            r = self._http.request("GET", self.metrics_url, headers=headers, preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"influxdb {self.metrics_url}: {exc}") from exc
        if r.status >= 500 or r.status == 429:
            raise StoreUnavailable(f"influxdb {self.metrics_url}: HTTP {r.status}")
        if r.status != 200:
            return None
        found: dict[str, float] = {}
        for line in r.data.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(" ")
            if name in ("process_start_time_seconds", "vm_app_start_timestamp"):
                try:
                    found[name] = float(value.split()[0])
                except (ValueError, IndexError):
                    continue
        start = found.get("process_start_time_seconds", found.get("vm_app_start_timestamp"))
        if start is None:
            return None
        age = None
        try:
            age = max(0.0, email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp() - start)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # no usable Date header: the age is unknown
        return StoreStart(start, age)

    def close(self) -> None:
        self._client.close()
        self._http.clear()
