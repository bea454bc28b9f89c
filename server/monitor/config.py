"""The `[monitor]` section: which sites this monitor judges, and its replica of the series it reads.

Monitors are partitioned by site so that two monitors never judge the same
site: either a list of sites (`sites`) or a hash partition (`partition =
"I/N"`: the sites whose stable hash modulo N is I). `greenmine server run
--role monitor --sites ... | --partition I/N` overrides either, so one config
file serves every monitor.
"""

from __future__ import annotations

import re
import zlib

from pydantic import Field, field_validator

from greenmine.configbase import ConfigModel


class MonitorConfig(ConfigModel):
    sites: list[str] | None = Field(
        default=None, description="site ids this monitor judges; absent: every configured site (or its partition)"
    )
    partition: str | None = Field(
        default=None, description='"I/N": judge the sites whose hash modulo N is I (0 <= I < N); absent: no hash partition'
    )
    client_id: str | None = Field(
        default=None, description='MQTT client id of the monitor\'s own session; absent: "<mqtt.client_id>-monitor"'
    )
    replica_path: str = Field(
        default="monitor-replica.sqlite",
        description="the monitor's own copy of the series KPIs and metric rules read, fed from the stream; "
        "relative to the config file",
    )
    replica_retention_days: float = Field(
        default=62, ge=2, description="how long the replica keeps readings: a month's totals plus the counter look-back"
    )

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str | None) -> str | None:
        if v is not None:
            parse_partition(v)
        return v

    def judges(self, site: str, partition: str | None = None) -> bool:
        """Whether this monitor judges `site` (before the configured-sites check)."""
        if self.sites is not None and site not in self.sites:
            return False
        part = partition if partition is not None else self.partition
        if part is None:
            return True
        i, n = parse_partition(part)
        return site_hash(site) % n == i


def parse_partition(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f'partition {text!r}: write "I/N" with 0 <= I < N, e.g. "0/2"')
    return int(m.group(1)), int(m.group(2))


def site_hash(site: str) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    return zlib.crc32(site.encode())
