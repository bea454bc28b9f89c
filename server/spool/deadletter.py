"""Dead letters: what is kept of a rejected message, and the closed set of reasons.

Rejected messages are stored in the spool file's `dead_letters` table (so a
rejection is recorded in the same transaction that lets the message be
acknowledged), counted by reason in `greenmine_ingest_rejected_total`, and
listed by `greenmine server dead-letters`.
"""

from __future__ import annotations

from greenmine.schemas import WireRejectReason
from greenmine.server.spool.spool import DeadLetter

#: A batch the store itself refused (HTTP 4xx); not a wire reason, so it is added here.
STORE_REJECTED = "store_rejected"

#: every reason label, pre-registered on the metric so each shows as 0 before it first happens
REASONS = tuple(r.value for r in WireRejectReason) + (STORE_REJECTED,)

_DETAIL_MAX = 500


def dead_letter(topic: str, payload: bytes, reason: str, detail: str, received_ms: int, keep_bytes: int) -> DeadLetter:
    """A dead letter keeping at most `keep_bytes` of the payload (its full size is recorded)."""
    return DeadLetter(received_ms, topic, reason, detail[:_DETAIL_MAX], bytes(payload[:keep_bytes]), len(payload))
