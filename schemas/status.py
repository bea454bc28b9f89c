"""Agent status v1: the retained birth message and the MQTT will."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from typing import Annotated

from pydantic import Field

from greenmine.schemas.telemetry import Count, Identifier, Timestamp, _Wire

STATUS_SCHEMA_V1 = "greenmine.status.v1"


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

    schema_: Literal["greenmine.status.v1"] = Field(default=STATUS_SCHEMA_V1, alias="schema")
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
    # Optional, added within v1: absent from older agents' messages (and from the will). Servers before
    # it reject a status that carries it (extra="forbid"): upgrade the servers before the agents.
    counters: list[CounterWidth] | None = Field(
        default=None, max_length=10_000,
        description="the unsigned integer totals (metric ending in _total) this agent publishes, with their widths",
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
