"""Topic names: `greenmine/v1/{site}/{agent}/telemetry|status`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from greenmine.schemas.errors import WireError, WireRejectReason

PREFIX = "greenmine/v1"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TopicKind(str, Enum):
    TELEMETRY = "telemetry"
    STATUS = "status"


@dataclass(frozen=True)
class Topic:
    site: str
    agent: str
    kind: TopicKind

    def __str__(self) -> str:
        return f"{PREFIX}/{self.site}/{self.agent}/{self.kind.value}"


def _check_id(what: str, value: str) -> str:
    if not _ID.match(value):
        raise WireError(
            WireRejectReason.BAD_IDENTIFIER,
            f"{what} {value!r} must be 1-64 characters of A-Z a-z 0-9 - _",
        )
    return value


def telemetry_topic(site: str, agent: str) -> str:
    return str(Topic(_check_id("site", site), _check_id("agent", agent), TopicKind.TELEMETRY))


def status_topic(site: str, agent: str) -> str:
    return str(Topic(_check_id("site", site), _check_id("agent", agent), TopicKind.STATUS))


def subscription(kind: TopicKind, site: str = "+", shared_group: str | None = None) -> str:
    """A subscription filter for every agent (of one site, or all sites)."""
    flt = f"{PREFIX}/{site}/+/{kind.value}"
    return f"$share/{shared_group}/{flt}" if shared_group else flt


def parse_topic(topic: str) -> Topic:
    """Split a topic into site, agent and kind, or raise WireError(bad_topic)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX:
        raise WireError(WireRejectReason.BAD_TOPIC, f"topic {topic!r} is not {PREFIX}/<site>/<agent>/<kind>")
    try:
        kind = TopicKind(parts[4])
    except ValueError:
        raise WireError(WireRejectReason.BAD_TOPIC, f"topic {topic!r}: unknown kind {parts[4]!r}") from None
    return Topic(_check_id("site", parts[2]), _check_id("agent", parts[3]), kind)
