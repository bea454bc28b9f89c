"""Agent status (v1, v2): the retained birth message and the MQTT will."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from greenmine.schemas.telemetry import Count, Identifier, Timestamp, _Wire

STATUS_SCHEMA_V1 = "greenmine.status.v1"
#: v2 = v1 plus `dropped_readings_by_reason` and `counters`. The server accepts both.
STATUS_SCHEMA_V2 = "greenmine.status.v2"
STATUS_SCHEMAS = (STATUS_SCHEMA_V1, STATUS_SCHEMA_V2)

#: Why an agent lost readings (docs/agent.md "What can go wrong"):
#: disk_full     the outbox could not be written because the disk (or quota) is full
#: write_failed  the outbox could not be written for another reason (I/O error, a damaged file)
#: outbox_full   dropped, oldest first, by the outbox's max_bytes bound
#: max_age       dropped by the outbox's max_age_s bound
#: corrupt       read back from the outbox damaged (failed the wire contract), so not published
DropReason = Literal["disk_full", "write_failed", "outbox_full", "max_age", "corrupt"]
DROP_REASONS: tuple[str, ...] = ("disk_full", "write_failed", "outbox_full", "max_age", "corrupt")


class AgentState(str, Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class DeviceState(str, Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


#: Free text an agent reports (an error message, a version): any printable character. No control, format
#: or line/paragraph separator character: it reaches logs, the console and emails.
Text = Annotated[str, Field(pattern=r"^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$")]


def clean_text(text: str, max_length: int) -> str:
    """`text` as a `Text` field takes it: each control, format or separator character a space, cut to length
    (for a sender composing a status from an exception's message)."""
    return "".join(c if c.isprintable() else " " for c in text[:max_length])


class DeviceStatus(_Wire):
    device: Identifier
    state: DeviceState
    since: Timestamp | None = None
    last_error: Text | None = Field(default=None, max_length=500)


class CounterWidth(_Wire):
    """A totalizer's register width, from the device profile: the server's KPIs need it to tell a
    rollover (at 2^width_bits x scale) from a meter reset, without repeating it in [[kpi.meters]]."""

    device: Identifier
    metric: Identifier
    width_bits: Literal[16, 32, 64] = Field(description="unsigned register width; the total wraps at 2^width_bits x scale")
    scale: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="the register's scale (litres -> m3: 0.001)")


class AgentStatus(_Wire):
    """Published retained on greenmine/v1/{site}/{agent}/status.

    The birth message says `online` with the counters; the will, registered at
    connect time, says `offline` and carries only what was known then.
    """

    schema_: Literal["greenmine.status.v1", "greenmine.status.v2"] = Field(default=STATUS_SCHEMA_V1, alias="schema")
    site: Identifier
    agent: Identifier
    state: AgentState
    ts: Timestamp = Field(description="when this status was produced")
    version: Text | None = Field(default=None, max_length=64)
    config_hash: Text | None = Field(default=None, max_length=128)
    # counters are 0 to 2^63-1: the server keeps them in SQLite INTEGER columns
    outbox_depth: Count | None = Field(default=None, description="batches waiting in the outbox")
    outbox_bytes: Count | None = Field(default=None)
    dropped_batches: Count | None = Field(default=None, description="batches dropped by the outbox bound, ever")
    dropped_readings: Count | None = Field(default=None)
    devices: list[DeviceStatus] = Field(default_factory=list, max_length=10_000)
    dropped_readings_by_reason: dict[DropReason, Count] | None = Field(
        default=None, description="v2: dropped_readings by reason (DROP_REASONS)")
    # v2: absent from older agents' messages (and from the will)
    counters: list[CounterWidth] | None = Field(
        default=None, max_length=10_000,
        description="the unsigned integer totals (metric ending in _total) this agent publishes, with their widths",
    )

    @model_validator(mode="after")
    def _v2_fields(self) -> "AgentStatus":
        if self.schema_ == STATUS_SCHEMA_V1:
            for name in ("dropped_readings_by_reason", "counters"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs schema {STATUS_SCHEMA_V2!r}")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
