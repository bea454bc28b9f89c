"""The MQTT wire contract, version 1: message models, topic names, validation.

This package imports only pydantic and the standard library (a test enforces
it), so the agent, the server and third parties can all depend on it.

Models are frozen, forbid unknown fields, and carry a literal `schema` field.
A new field means a new schema version; the server accepts a known set.
"""

from greenmine.schemas.errors import WireError, WireRejectReason
from greenmine.schemas.status import (
    DROP_REASONS,
    STATUS_SCHEMA_V1,
    STATUS_SCHEMA_V2,
    AgentState,
    AgentStatus,
    CounterWidth,
    DeviceState,
    DeviceStatus,
)
from greenmine.schemas.telemetry import (
    IDENTIFIER_PATTERN,
    METRICS,
    TELEMETRY_SCHEMA_V1,
    Quality,
    Reading,
    TelemetryBatch,
    WireLimits,
    parse_status,
    parse_telemetry,
)
from greenmine.schemas.topics import Topic, TopicKind, parse_topic, status_topic, subscription, telemetry_topic

__all__ = [
    "IDENTIFIER_PATTERN",
    "METRICS",
    "DROP_REASONS",
    "STATUS_SCHEMA_V1",
    "STATUS_SCHEMA_V2",
    "TELEMETRY_SCHEMA_V1",
    "AgentState",
    "AgentStatus",
    "CounterWidth",
    "DeviceState",
    "DeviceStatus",
    "Quality",
    "Reading",
    "TelemetryBatch",
    "Topic",
    "TopicKind",
    "WireError",
    "WireLimits",
    "WireRejectReason",
    "parse_status",
    "parse_telemetry",
    "parse_topic",
    "status_topic",
    "subscription",
    "telemetry_topic",
]
