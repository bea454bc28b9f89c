"""Why a wire message was rejected.

    WireError(ValueError)      one rejected message; .reason is a WireRejectReason
"""

from __future__ import annotations

from enum import Enum


class WireRejectReason(str, Enum):
    """A closed set of reasons, used as a metric label and stored with dead letters."""

    NOT_JSON = "not_json"
    UNKNOWN_SCHEMA = "unknown_schema"
    TOPIC_MISMATCH = "topic_mismatch"
    BAD_TOPIC = "bad_topic"
    NAN_OR_INF = "nan_or_inf"
    FUTURE_TIMESTAMP = "future_timestamp"
    OVERSIZE = "oversize"
    BAD_IDENTIFIER = "bad_identifier"
    EMPTY_BATCH = "empty_batch"
    INVALID = "invalid"
    UNKNOWN_SITE = "unknown_site"
    TOO_OLD = "too_old"
    TOO_DEEP = "too_deep"


class WireError(ValueError):
    """A message that does not satisfy the wire contract."""

    def __init__(self, reason: WireRejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
