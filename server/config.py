"""The server's config: MQTT ingest, spool, store, sites and their limits, SMTP.

Loading is pure: it never connects. Secrets can be given as
"${ENV_VAR}". Sections owned by later features (alert rules, uplinks) are
added here as their models land, each in its own module.
"""

from __future__ import annotations

import os
import string
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from greenmine.clock import ClockConfig
from greenmine.schemas import WireLimits
from greenmine.configbase import IDENT, ConfigModel, FileConfig
from greenmine.configfile import load_model
from greenmine.mqtttls import TlsConfig
from greenmine.server.uplink.hj212.config import PointConfig, check_points
from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.config import MonitorConfig
from greenmine.server.monitor.kpi import dust, energy, noise, water
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.uplink.config import UplinkConfig
from greenmine.server.uplink.energy.config import EnergyConfig
from greenmine.server.notify.config import NotifyConfig
from greenmine.server.supervision.config import SupervisionConfig
from greenmine.server.web.config import WebConfig


class ServerMqttConfig(ConfigModel):
    host: str = Field(default="127.0.0.1", description="broker host")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port")
    client_id: str = Field(default="greenmine-server-1", description="MQTT client id; the persistent session is keyed on it, so each server process needs its own")
    username: str | None = Field(default=None, description="user name, if the broker requires one")
    password: SecretStr | None = Field(default=None, description='password; use "${ENV_VAR}"')
    ca_file: str | None = Field(default=None, description="enable TLS, verifying the broker with this CA bundle (short for [mqtt.tls] ca_file)")
    tls: TlsConfig | None = Field(
        default=None, description="enable TLS with these files (CA, client certificate and key); absent: plain TCP"
    )
    shared_group: str | None = Field(
        default=None, pattern=IDENT, description="subscribe as $share/<group>/...: N servers split one stream"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive")
    session_expiry_s: int = Field(default=7 * 86400, ge=0, description="how long the broker keeps our session while we are away")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description='MQTT version: "5" (clean_start=false + session expiry) or "3.1.1" (clean_session=false)'
    )
    receive_maximum: int = Field(
        default=1000, ge=1, le=65535,
        description="MQTT 5: most unacknowledged messages the broker may send us at once; bounds ingest memory",
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, description="longest wait between reconnect attempts")

    @model_validator(mode="after")
    def _one_tls(self) -> ServerMqttConfig:
        if self.ca_file is not None and self.tls is not None:
            raise ValueError("give ca_file or [mqtt.tls], not both")
        return self

    def tls_settings(self) -> TlsConfig | None:
        """The TLS settings in effect: [mqtt.tls], or ca_file alone; None: plain TCP."""
        return self.tls if self.tls is not None else (TlsConfig(ca_file=self.ca_file) if self.ca_file else None)


class UnknownSitePolicy(str, Enum):
    REJECT = "reject"
    ACCEPT = "accept"


class IngestConfig(ConfigModel):
    spool_path: str = Field(default="spool.sqlite", description="durable spool file; relative to the config file's folder")
    spool_max_bytes: int = Field(default=1024**3, ge=1024**2, description="bound on the spool; when full, ingest stops acknowledging (block)")
    unknown_site: UnknownSitePolicy = Field(default=UnknownSitePolicy.REJECT, description="reject | accept telemetry of sites not configured")
    max_payload_bytes: int = Field(default=512 * 1024, ge=1024, description="larger payloads are rejected as oversize")
    max_readings_per_batch: int = Field(default=10_000, ge=1, description="more readings in one batch are rejected as oversize")
    max_future_skew_s: float = Field(default=300.0, ge=0, description="readings further in the future are rejected")
    max_past_age_s: float | None = Field(
        default=None, gt=0,
        description="readings older than this are dead-lettered as too_old; absent: the store's retention "
        "(store.raw_retention_days, or store.retention_days for influxdb), or no bound if it is not known",
    )
    max_json_depth: int = Field(default=16, ge=3, le=1000, description="deeper nesting of JSON arrays and objects is rejected as too_deep, before parsing")
    dead_letter_payload_bytes: int = Field(default=4096, ge=0, description="how much of a rejected payload is kept")
    dead_letter_max_rows: int = Field(default=100_000, ge=100, description="bound on the dead-letter table; the oldest rows are deleted")
    spool_synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous mode of the spool: full survives power loss; normal (WAL) survives a process crash only",
    )
    spool_commit_max_messages: int = Field(
        default=500, ge=1, description="most MQTT messages spooled in one transaction (group commit) before they are acknowledged"
    )
    writer_batch_readings: int = Field(default=20_000, ge=1, description="most readings the writer hands the store per write (fewer when the spool holds fewer)")
    writer_retry_min_s: float = Field(default=0.5, gt=0, description="first wait after a failed store write; doubles per failure")
    writer_retry_max_s: float = Field(default=30.0, gt=0, description="longest wait between store write retries")
    shutdown_flush_timeout_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, how long to keep draining the spool into the store before exiting"
    )
    store_durability_window_s: float = Field(
        default=10.0, ge=0,
        description="how long a batch stays in the spool after the store acknowledged it, to be re-sent if the "
        "store restarts meanwhile (VictoriaMetrics keeps the last -inmemoryDataFlushInterval, default 5 s, in "
        "memory); keep it above the store's flush interval. Not used with the SQLite store (durable at commit)",
    )


    def wire_limits(self, store_retention_s: float | None = None) -> WireLimits:
        """The bounds every consumer of the stream (ingest, monitor, uplink) validates messages with.
        `store_retention_s`: the store's retention, the bound on a reading's age when max_past_age_s is not set
        (ServerConfig.wire_limits passes it)."""
        ages = [a for a in (self.max_past_age_s, store_retention_s) if a is not None]
        return WireLimits(max_payload_bytes=self.max_payload_bytes, max_readings=self.max_readings_per_batch,
                          max_future_skew_s=self.max_future_skew_s, max_past_age_s=min(ages) if ages else None,
                          max_depth=self.max_json_depth)


class SqliteStoreConfig(ConfigModel):
    kind: Literal["sqlite"] = Field(default="sqlite", description="embedded SQLite store (the default)")
    path: str = Field(default="greenmine.sqlite", description="SQLite file; relative to the config file's folder")
    raw_retention_days: float = Field(default=400, gt=0, description="raw rows older than this are deleted; rollups stay")
    busy_timeout_ms: int = Field(default=10_000, ge=0, description="how long a write waits for another process's lock on the file")
    maintenance_interval_s: float = Field(default=3600, gt=0, description="how often raw retention is applied")


class InfluxStoreConfig(ConfigModel):
    kind: Literal["influxdb"] = Field(description="InfluxDB 2/3 or VictoriaMetrics through the v2 write API")
    url: str = Field(description="e.g. http://127.0.0.1:8086 (InfluxDB 2/3) or a VictoriaMetrics /api/v2/write base URL")
    token: SecretStr | None = Field(default=None, description='API token; use "${INFLUX_TOKEN}"')
    org: str = Field(default="greenmine", description="organisation")
    bucket: str = Field(default="greenmine", description="bucket (database)")
    precision: Literal["s", "ms"] = Field(default="ms", description="timestamp precision written")
    batch_size: int = Field(default=5000, ge=1, description="lines per write request")
    timeout_ms: int = Field(default=10_000, ge=100, description="write request timeout")
    retention_days: float | None = Field(
        default=None, gt=0,
        description="the bucket's retention (VictoriaMetrics: -retentionPeriod); older readings are dead-lettered as "
        "too_old instead of being dropped by the store; absent: not known, no bound (unless ingest.max_past_age_s)",
    )


def _citation(default: str, allowed: tuple[str, ...], what: str, note: str = ""):
    return Field(default=default, min_length=1, max_length=200, description=(
        f"the rule cited beside the {what} in emails and reports; placeholders "
        + ", ".join("{" + a + "}" for a in allowed) + note + " (format specs allowed, e.g. {limit:g})"))


_CITATION_FIELDS = {
    "water_reuse_standard": ("limit",),
    "dust_standard": ("limit",),
    "noise_standard": ("noise_class", "period", "limit"),
    "energy_intensity_standard": ("limit",),
}


class Limits(ConfigModel):
    """Per-site limits and the rules they come from. Defaults are the published figures (docs/kpi-alerts.md, "KPIs"); every one is configurable."""

    water_reuse_min_pct: float = Field(default=85.0, ge=0, le=100, description="daily beneficiation water reuse rate floor (Gansu plan)")
    water_reuse_standard: str = _citation(water.STANDARD, _CITATION_FIELDS["water_reuse_standard"], "water reuse floor")
    dust_tsp_limit_mgm3: float = Field(default=1.0, gt=0, description="boundary TSP, any 1-hour average (GB 16297-1996 Table 2)")
    dust_standard: str = _citation(dust.STANDARD, _CITATION_FIELDS["dust_standard"], "dust limits (TSP and PM10)")
    noise_class: int = Field(default=2, ge=0, le=4, description="GB 12348-2008 functional-area class 0..4")
    noise_standard: str = _citation(noise.STANDARD, _CITATION_FIELDS["noise_standard"], "noise limits",
                                    " ({period} is 昼间 or 夜间)")
    energy_intensity_max_kgce_t: float | None = Field(default=None, gt=0, description="kgce per tonne of ore; per-mineral value is [open]")
    energy_intensity_standard: str = _citation(energy.INTENSITY_STANDARD, _CITATION_FIELDS["energy_intensity_standard"],
                                               "energy intensity limit")

    @model_validator(mode="after")
    def _citations(self) -> Limits:
        # fail at load, not in the first email, on a placeholder the KPI does not fill
        for name, allowed in _CITATION_FIELDS.items():
            text = getattr(self, name)
            sample = {"limit": 1.0, "noise_class": 2, "period": "夜间"}
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
                if fields - set(allowed):
                    raise ValueError("unknown placeholder(s) " + ", ".join("{" + f + "}" for f in sorted(fields - set(allowed)))
                                     + "; allowed: " + ", ".join("{" + a + "}" for a in allowed))
                text.format(**{a: sample[a] for a in allowed})
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{name} {text!r}: {exc}") from None
            if not text.isprintable():
                raise ValueError(f"{name} {text!r}: has a control character")
        return self


class SiteConfig(ConfigModel):
    id: str = Field(pattern=IDENT, description="site id, as the agents publish it")
    name: str = Field(default="", description="human name, used in emails, e.g. 金昌某铜矿")
    prefecture: str = Field(default="", max_length=40, description="prefecture (市州) the console groups the site under, e.g. 金昌市")
    timezone: str = Field(default="Asia/Shanghai", description="local time zone for days, nights and reports")
    limits: Limits = Field(default_factory=Limits, description="the site's limits; defaults: the published figures (docs/kpi-alerts.md)")
    recipients: list[str] = Field(default_factory=list, description="officers' email addresses for this site")


class SmtpConfig(ConfigModel):
    host: str = Field(description="mail relay host")
    port: int = Field(default=587, ge=1, le=65535, description="587 for STARTTLS, 465 for implicit TLS, 25 plain")
    security: Literal["starttls", "tls", "none"] = Field(default="starttls", description="starttls | tls | none")
    username: str | None = Field(default=None, description="user name for AUTH")
    password: SecretStr | None = Field(default=None, description='password; use "${SMTP_PASSWORD}"')
    sender: str = Field(description="From: address")
    timeout_s: float = Field(default=30, gt=0, description="connection timeout")


class ServerConfig(FileConfig):
    """`greenmine server run --config FILE`."""

    kind: Literal["server"] = Field(default="server", description="config kind, for check-config")
    mqtt: ServerMqttConfig = Field(default_factory=ServerMqttConfig, description="broker connection and subscription")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="validation bounds, spool, dead letters")
    store: SqliteStoreConfig | InfluxStoreConfig = Field(
        default_factory=SqliteStoreConfig, discriminator="kind", description="time-series store: kind = sqlite | influxdb"
    )
    http_host: str = Field(default="127.0.0.1", description="address of the /metrics and /health endpoint")
    http_port: int | None = Field(default=None, ge=0, le=65535, description="port of /metrics and /health; 0: any free port; absent: off")
    sites: list[SiteConfig] = Field(default_factory=list, description="known sites and their limits")
    smtp: SmtpConfig | None = Field(default=None, description="mail relay; absent: emails are written as .eml files")
    default_recipients: list[str] = Field(default_factory=list, description="recipients for sites that list none")
    hj212: list[PointConfig] = Field(
        default_factory=list, description="HJ 212-2017 monitoring points reported to environmental platforms (docs/hj212.md)"
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig, description="the monitor role: which sites it judges, its replica (docs/server.md)"
    )
    uplink: UplinkConfig = Field(default_factory=UplinkConfig, description="the uplink role: its session and replica")
    energy: EnergyConfig = Field(
        default_factory=EnergyConfig,
        description="the energy role: the provincial energy-consumption platform, its data centres and items (docs/energy-platform.md)",
    )
    kpi: KpiConfig = Field(default_factory=KpiConfig, description="how KPIs are computed (docs/kpi-alerts.md)")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="alert rules, state file, re-notify and reminders")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="email templates, digests, outbox retries, .eml folder")
    supervision: SupervisionConfig = Field(
        default_factory=SupervisionConfig,
        description="the green-mine supervision database: mines, inspectors, rectification defaults (docs/supervision.md)",
    )
    web: WebConfig | None = Field(
        default=None, description="the officers' console (role web, docs/console.md); absent: `--role all` runs no console",
    )
    clock: ClockConfig = Field(
        default_factory=ClockConfig,
        description="time that ingest, KPIs, alerts and emails judge by; absent: the system clock. accelerated is for "
        "demos and tests (intervals in this file are then simulated seconds)",
    )

    @model_validator(mode="after")
    def _unique(self) -> ServerConfig:
        seen = set()
        for i, site in enumerate(self.sites):
            if site.id in seen:
                raise ValueError(f'sites[{i}] "{site.id}": duplicate site id')
            seen.add(site.id)
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(site.timezone)
            except Exception:
                raise ValueError(f'sites[{i}] "{site.id}": unknown timezone "{site.timezone}"') from None
        check_points(self.hj212, None if self.ingest.unknown_site is UnknownSitePolicy.ACCEPT else seen)
        for i, ent in enumerate(self.energy.enterprises):
            if ent.site not in seen:
                raise ValueError(f'energy.enterprises[{i}] "{ent.site}": not a configured site')
        for i, site in enumerate(self.monitor.sites or []):
            if site not in seen:
                raise ValueError(f'monitor.sites[{i}] "{site}": not a configured site')
        for i, w in enumerate(self.alerts.maintenance):
            if w.site not in seen:
                raise ValueError(f'alerts.maintenance[{i}] "{w.site}": not a configured site')
        self._own_files()
        return self

    def _own_files(self) -> None:
        """Every role's state is a file of its own: a spool, a replica or the alert state shared by two roles would
        be refused at start (each is locked by the process that writes it) or mix their rows."""
        files = {"ingest.spool_path": self.ingest.spool_path, "monitor.replica_path": self.monitor.replica_path,
                 "uplink.replica_path": self.uplink.replica_path, "energy.replica_path": self.energy.replica_path,
                 "alerts.db_path": self.alerts.db_path}
        if isinstance(self.store, SqliteStoreConfig):
            files["store.path"] = self.store.path
        owner: dict[Path, str] = {}
        for name, path in files.items():
            key = Path(os.path.normpath(path))  # both relative to this file's folder, or both absolute
            if key in owner:
                raise ValueError(f'{name} "{path}" is the file of {owner[key]} too: each needs a file of its own')
            owner[key] = name

    def wire_limits(self) -> WireLimits:
        """The wire bounds of every role: `[ingest]`'s, with the store's retention as the oldest reading kept."""
        days = self.store.raw_retention_days if isinstance(self.store, SqliteStoreConfig) else self.store.retention_days
        return self.ingest.wire_limits(None if days is None else days * 86400)

    def site(self, site_id: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.id == site_id), None)

    def for_instance(self, instance: str | None) -> ServerConfig:
        """This config for one of several processes sharing it (`server run --instance NAME`): every MQTT client id
        and every state file (spool, alert and KPI state, the monitor's and the uplink's replicas) get a `-NAME`
        suffix, so each process has its own sessions and files. None: unchanged."""
        if not instance:
            return self

        def suffixed(path: str) -> str:
            p = Path(path)
            return str(p.with_name(f"{p.stem}-{instance}{p.suffix}"))

        def role(section):
            # a role's own client id follows mqtt.client_id unless configured; a configured one is suffixed too
            cid = section.client_id and f"{section.client_id}-{instance}"
            return section.model_copy(update={"client_id": cid, "replica_path": suffixed(section.replica_path)})

        return self.model_copy(update={
            "mqtt": self.mqtt.model_copy(update={"client_id": f"{self.mqtt.client_id}-{instance}"}),
            "ingest": self.ingest.model_copy(update={"spool_path": suffixed(self.ingest.spool_path)}),
            "alerts": self.alerts.model_copy(update={"db_path": suffixed(self.alerts.db_path)}),
            "monitor": role(self.monitor),
            "uplink": role(self.uplink),
            "energy": role(self.energy).model_copy(update={"state_dir": f"{self.energy.state_dir}-{instance}"}),
        })

    @property
    def monitor_client_id(self) -> str:
        return self.monitor.client_id or f"{self.mqtt.client_id}-monitor"

    @property
    def uplink_client_id(self) -> str:
        return self.uplink.client_id or f"{self.mqtt.client_id}-uplink"

    @property
    def energy_client_id(self) -> str:
        return self.energy.client_id or f"{self.mqtt.client_id}-energy"


def load_server_config(path: str | Path, doc: dict | None = None) -> ServerConfig:
    """Load and validate a server config. Raises ConfigError."""
    cfg = load_model(ServerConfig, path, doc=doc)
    cfg.loaded_from(path)
    return cfg
