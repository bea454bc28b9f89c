"""Configuration of the energy-platform uplink: the `[energy]` section and the platform profiles.

    [energy]                       the role's session, replica, state folder, timing
    [[energy.centres]]             each data centre: its URL, profile, TLS, timeouts, credentials
    [[energy.enterprises]]         per site: the enterprise (credit code, region) and its items
    [[energy.enterprises.items]]   one data item: its code, what it reports, its statType periods

A platform profile (`PlatformProfile`) is data, a TOML file in
config/energy-platforms/ (or a path): the variant (A: NECC style, B: token
style), every endpoint path, field name and casing, what `valid` is sent as,
whether values are SM4-encrypted, and what happens to an incomplete period.
Loading is pure: nothing here opens a socket; every mistake fails at load
naming its place (`enterprises[0].items[2].code "04-01-00": ...`).
"""

from __future__ import annotations

import re
import tomllib
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from greenmine.configbase import IDENT, ConfigModel

#: processCode(2)-processUnitCode(2)-equipmentCode(2)+equipmentUnitCode(2)-energyClassCode(2)+energyTypeCode(4)-dataUsageCode(2)
ITEM_CODE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})(\d{2})-(\d{2})(\d{4})-(\d{2})$")
ITEM_CODE_SHAPE = "pp-uu-eeEE-ccTTTT-dd (process 2, unit 2, equipment 2+2, energy class 2 + type 4, usage 2 digits)"


def check_item_code(code: str) -> str:
    if not ITEM_CODE.match(code):
        raise ValueError(f"item code {code!r} is not of the form {ITEM_CODE_SHAPE}, e.g. 04-01-0000-040200-30")
    return code


class StatType(str, Enum):
    """The platform's statType: 0 real-time, 1 day, 2 month, 3 year (the sum of the item's twelve month records)."""

    REALTIME = "realtime"
    DAY = "day"
    MONTH = "month"
    YEAR = "year"

    @property
    def code(self) -> int:
        return {"realtime": 0, "day": 1, "month": 2, "year": 3}[self.value]


class Source(str, Enum):
    METER_KWH = "meter_kwh"          # one meter's kWh (device = the meter)
    SITE_KWH = "site_kwh"            # the site's electricity, all meters
    SITE_KGCE = "site_kgce"          # the site's 综合能耗 in kgce (scale 0.001 for tce)
    ORE_T = "ore_t"                  # ore processed (belt-scale increments), t
    WATER_FRESH_M3 = "water_fresh_m3"
    WATER_REUSED_M3 = "water_reused_m3"
    KPI = "kpi"                      # any KPI of the engine by name and subject (day and month only)


class ItemConfig(ConfigModel):
    code: str = Field(description="数据采集项编码, pp-uu-eeEE-ccTTTT-dd, e.g. 04-01-0000-040200-30")
    source: Source = Field(description="what it reports: meter_kwh | site_kwh | site_kgce | ore_t | water_fresh_m3 | water_reused_m3 | kpi")
    device: str | None = Field(default=None, pattern=IDENT, description="meter_kwh: the meter's device name")
    kpi: str | None = Field(default=None, pattern=IDENT, description="kpi: the KPI name, e.g. energy_intensity_daily (the _daily/_monthly suffix follows the period)")
    subject: str = Field(default="site", pattern=IDENT, description="kpi: the KPI's subject (site or a device)")
    stat_types: list[StatType] = Field(
        default_factory=lambda: [StatType.REALTIME, StatType.DAY, StatType.MONTH, StatType.YEAR],
        description="periods sent: realtime (every profile realtime_interval_min), day (00:00 site-local), month, "
                    "year (the sum of the item's month records: needs month; not for source kpi)",
    )
    scale: float = Field(default=1.0, allow_inf_nan=False, description="factor applied before sending (kgce -> tce is 0.001)")
    decimals: int = Field(default=2, ge=0, le=6, description="decimal places sent")
    input_type: int = Field(default=2, ge=1, le=5, description="inputType: 1 MIS, 2 production monitoring, 3 DCS, 4 field instrument, 5 manual")
    scope: int = Field(default=1, ge=1, le=4, description="scope: 1 whole plant, 2 process, 3 process unit, 4 key equipment")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_item_code(v)

    @model_validator(mode="after")
    def _needs(self) -> ItemConfig:
        if self.source is Source.METER_KWH and not self.device:
            raise ValueError("source meter_kwh needs device")
        if self.source is Source.KPI:
            if not self.kpi:
                raise ValueError("source kpi needs kpi")
            if StatType.REALTIME in self.stat_types or StatType.YEAR in self.stat_types:
                raise ValueError("source kpi: KPIs have day and month periods only (a KPI's months need not add up "
                                 "to a year); stat_types may be day and month")
        if StatType.YEAR in self.stat_types and StatType.MONTH not in self.stat_types:
            raise ValueError("stat_types: year is the sum of the item's month records, so it needs month too")
        if not self.stat_types or len(set(self.stat_types)) != len(self.stat_types):
            raise ValueError("stat_types must be a non-empty list without repeats")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class EnterpriseConfig(ConfigModel):
    site: str = Field(pattern=IDENT, description="the greenmine site this enterprise is")
    enterprise_code: str = Field(pattern=r"^[0-9A-Z]{18}$", description="统一社会信用代码 (18 characters)")
    region: str = Field(pattern=r"^\d{6}$", description="administrative region code, e.g. 620300 (金昌市)")
    name: str = Field(default="", description="enterprise name, for variant B's apply step")
    items: list[ItemConfig] = Field(min_length=1, description="the data items reported")

    @model_validator(mode="after")
    def _unique(self) -> EnterpriseConfig:
        seen: set[str] = set()
        for i, it in enumerate(self.items):
            if it.code in seen:
                raise ValueError(f'items[{i}] "{it.code}": duplicate item code')
            seen.add(it.code)
        return self


class CentreConfig(ConfigModel):
    name: str = Field(pattern=IDENT, description="data centre name (its queue file and metrics label)")
    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="base URL; the profile's paths are appended")
    profile: str = Field(description="platform profile: a name in config/energy-platforms/ (variant-a) or a TOML path")
    ca_file: str | None = Field(default=None, description="verify the centre with this CA bundle instead of the system's")
    client_cert: str | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    client_key: str | None = Field(default=None, description="its private key (PEM); absent: in client_cert")
    verify_tls: bool = Field(default=True, description="verify the centre's certificate (never switch off in production)")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP + TLS connect timeout")
    read_timeout_s: float = Field(default=30.0, gt=0, description="time allowed for the reply")
    retry_initial_s: float = Field(default=2.0, gt=0, description="first wait after a failed send; doubles per failure")
    retry_max_s: float = Field(default=300.0, gt=0, description="longest wait between resends")
    batch_max_records: int = Field(default=200, ge=1, le=10_000, description="most records in one upload")
    password: SecretStr | None = Field(default=None, description='variant B: the enterprise password for requestAK; use "${ENERGY_PASSWORD}"')
    device_id: str | None = Field(default=None, description="variant A: a device id given out of band; absent: from registration")
    secret_key: SecretStr | None = Field(default=None, description="variant A: SM4 key (32 hex) given out of band; absent: from registration")

    @field_validator("secret_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not re.fullmatch(r"[0-9A-Fa-f]{32}", v.get_secret_value()):
            raise ValueError("secret_key must be 32 hex digits (a 128-bit SM4 key)")
        return v


class EnergyConfig(ConfigModel):
    """The `[energy]` section. Absent or without centres: the energy role does nothing."""

    client_id: str | None = Field(default=None, description='MQTT client id of the energy role\'s session; absent: "<mqtt.client_id>-energy"')
    replica_path: str = Field(default="energy-replica.sqlite", description="the role's own copy of the counter series it reports, fed from the stream")
    replica_retention_days: float = Field(default=62, ge=2, description="how long the replica keeps reads (a month's values are recomputed from it)")
    state_dir: str = Field(default="energy", description="folder of the KPI store, each centre's queue and history; relative to the config file")
    history_days: float = Field(default=190, ge=183, description="how long sent records are kept, re-sendable by period (>= 6 months)")
    close_delay_s: float = Field(default=600.0, ge=0, description="wait after a period ends for its last reads before computing and sending it")
    late_data_wait_s: float = Field(
        default=3600.0, ge=0,
        description="a closed period waits until the stream has brought a read after its end (after a restart, the broker's "
        "backlog) for at most this long past close_delay_s; then it is produced with what arrived (flagged if incomplete)")
    tick_s: float = Field(default=1.0, gt=0, description="how often periods are checked and queues are served (real seconds)")
    month_day_tolerance_pct: float = Field(default=5.0, ge=0, le=100, description="the month total and the sum of its day records may differ by this much")
    centres: list[CentreConfig] = Field(default_factory=list, description="the data centres; every record goes to each (two or more in production)")
    enterprises: list[EnterpriseConfig] = Field(default_factory=list, description="per site: the enterprise and its data items")

    @model_validator(mode="after")
    def _check(self) -> EnergyConfig:
        names: set[str] = set()
        for i, c in enumerate(self.centres):
            if c.name in names:
                raise ValueError(f'centres[{i}] "{c.name}": duplicate centre name')
            names.add(c.name)
        sites: set[str] = set()
        for i, e in enumerate(self.enterprises):
            if e.site in sites:
                raise ValueError(f'enterprises[{i}] "{e.site}": a second enterprise for the site')
            sites.add(e.site)
        if self.enterprises and not self.centres:
            raise ValueError("enterprises are configured but no centres: add [[energy.centres]]")
        for i, c in enumerate(self.centres):
            # names (config/energy-platforms/) and absolute paths are checked here; a relative path is
            # relative to the config file and is checked when the role starts
            if profile_path(c.profile, Path.cwd()).is_absolute():
                try:
                    prof = load_profile(c.profile, Path.cwd())
                except ValueError as exc:
                    raise ValueError(f'centres[{i}] "{c.name}": {exc}') from None
                check_centre(c, prof, f'centres[{i}] "{c.name}"')
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.centres and self.enterprises)


# --- platform profiles (data files) ------------------------------------------


class ValidEncoding(ConfigModel):
    valid: bool | str | int = Field(description="what `valid` is sent as for a complete period: true, \"0\" or \"1\" by province")
    invalid: bool | str | int = Field(description="what it is sent as for an incomplete one")

    @model_validator(mode="after")
    def _differ(self) -> ValidEncoding:
        if self.valid == self.invalid and type(self.valid) is type(self.invalid):
            raise ValueError("valid and invalid must be sent as different values")
        return self


class Paths(ConfigModel):
    registration: str = Field(default="/register", description="A: registration; B: per-item registration")
    upload: str = Field(default="/upload", description="data upload")
    key: str = Field(default="/key", description="B: fetch the platform key")
    apply: str = Field(default="/apply", description="B: apply with the enterprise profile")
    request_ak: str = Field(default="/requestAK", description="B: credit code + SM4-CBC password -> token")
    dictionary: str = Field(default="/dictionary/version", description="B: the dictionary version")


def _name(default: str):
    return Field(default=default, min_length=1, description=f'JSON field name (default "{default}")')


class Fields(ConfigModel):
    """JSON field names, so a province's casing (deviceId, DeviceID, device_id) is configuration."""

    region: str = _name("region")
    enterprise_code: str = _name("enterpriseCode")
    device_id: str = _name("deviceId")
    secret_key: str = _name("secretKey")
    upload_time: str = _name("uploadTime")
    data: str = _name("data")
    data_code: str = _name("dataCode")
    data_value: str = _name("dataValue")
    input_type: str = _name("inputType")
    stat_type: str = _name("statType")
    stat_date: str = _name("statDate")
    upload_date: str = _name("uploadDate")
    scope: str = _name("scope")
    valid: str = _name("valid")
    response_code: str = _name("responseCode")
    response_message: str = _name("responseMessage")
    password: str = _name("password")
    key: str = _name("key")
    iv: str = _name("iv")
    token: str = _name("token")
    expires_in: str = _name("expiresIn")
    version: str = _name("version")
    name: str = _name("enterpriseName")


class PlatformProfile(ConfigModel):
    kind: Literal["energy-platform"] = Field(description="file kind")
    name: str = Field(pattern=IDENT, description="profile name")
    description: str = Field(default="", description="what this profile is modelled on")
    variant: Literal["a", "b"] = Field(description="a: NECC style (register -> deviceId, secretKey); b: token style (requestAK -> bearer token)")
    encryption: Literal["none", "sm4-ecb"] = Field(default="none", description="per-value encryption of dataValue with the secret key, hex")
    realtime_interval_min: Literal[15, 30, 60] = Field(default=15, description="real-time item period")
    incomplete: Literal["flag", "hold"] = Field(
        default="flag", description="a period below kpi.completeness_min_pct: flag (sent with valid = invalid) or hold (not sent; logged and counted)")
    respect_upload_slot: bool = Field(default=True, description="send day and month records only after the platform-assigned daily uploadTime")
    date_format: str = Field(default="%Y-%m-%d %H:%M:%S", description="statDate and uploadDate format (strftime)")
    value_as_string: bool = Field(default=True, description="send dataValue as a string (encrypted values always are)")
    success_code: str = Field(default="0", description="responseCode of success")
    stale_codes: list[str] = Field(default_factory=lambda: ["2"], description="responseCodes that mean the registration or token is stale: re-register and resend")
    valid: ValidEncoding = Field(description="how `valid` is encoded")
    paths: Paths = Field(default_factory=Paths, description="endpoint paths under the centre's url")
    fields: Fields = Field(default_factory=Fields, description="JSON field names")

    @model_validator(mode="after")
    def _variant(self) -> PlatformProfile:
        if self.variant == "b" and self.encryption != "none":
            raise ValueError("variant b authenticates with a token; per-value encryption is a variant a setting")
        return self


def check_centre(c: CentreConfig, prof: PlatformProfile, where: str) -> None:
    if prof.variant == "b" and c.password is None:
        raise ValueError(f"{where}: profile {prof.name} (variant b) needs password for requestAK")


def profile_path(name: str, base: Path) -> Path:
    from greenmine import CONFIG_DIR

    p = Path(name)
    if p.suffix == ".toml" or "/" in name:
        return p if p.is_absolute() else base / p
    return CONFIG_DIR / "energy-platforms" / f"{name}.toml"


def load_profile(name: str, base: Path) -> PlatformProfile:
    """A platform profile by name (config/energy-platforms/NAME.toml) or path. Raises ValueError naming the file."""
    path = profile_path(name, base)
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f'profile "{name}": no such platform profile ({path})') from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f'profile "{name}": {path}: {exc}') from None
    try:
        return PlatformProfile.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ValueError(f'profile "{name}" ({path}): {loc}: {first["msg"]}') from None
