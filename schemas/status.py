"""Agent status v1: the retained birth message and the MQTT will."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, model_validator

from greenmine.schemas.telemetry import Identifier, _Wire

STATUS_SCHEMA_V1 = "greenmine.status.v1"
#: v2 = v1 plus `dropped_readings_by_reason`. The server accepts both.
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


class DeviceStatus(_Wire):
    device: Identifier
    state: DeviceState
    since: AwareDatetime | None = None
    last_error: str | None = Field(default=None, max_length=500)


class AgentStatus(_Wire):
    """Published retained on greenmine/v1/{site}/{agent}/status.

    The birth message says `online` with the counters; the will, registered at
    connect time, says `offline` and carries only what was known then.
    """

    schema_: Literal["greenmine.status.v1", "greenmine.status.v2"] = Field(default=STATUS_SCHEMA_V1, alias="schema")
    site: Identifier
    agent: Identifier
    state: AgentState
    ts: AwareDatetime = Field(description="when this status was produced")
    version: str | None = Field(default=None, max_length=64)
    config_hash: str | None = Field(default=None, max_length=128)
    outbox_depth: int | None = Field(default=None, ge=0, description="batches waiting in the outbox")
    outbox_bytes: int | None = Field(default=None, ge=0)
    dropped_batches: int | None = Field(default=None, ge=0, description="batches dropped by the outbox bound, ever")
    dropped_readings: int | None = Field(default=None, ge=0, description="readings lost, ever, for every reason")
    dropped_readings_by_reason: dict[DropReason, Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="v2: dropped_readings by reason (DROP_REASONS)")
    devices: list[DeviceStatus] = Field(default_factory=list)

    @model_validator(mode="after")
    def _v2_fields(self) -> "AgentStatus":
        if self.dropped_readings_by_reason is not None and self.schema_ == STATUS_SCHEMA_V1:
            raise ValueError(f"dropped_readings_by_reason needs schema {STATUS_SCHEMA_V2!r}")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
