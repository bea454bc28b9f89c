"""Status v2: v1 plus dropped_readings_by_reason. The server accepts both; v1 cannot carry the new field."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from greenmine.schemas import STATUS_SCHEMA_V2, AgentState, AgentStatus, WireError, WireRejectReason, parse_status

NOW = datetime(2026, 11, 27, 8, tzinfo=timezone.utc)


def test_v2_round_trips_and_v1_still_parses():
    st = AgentStatus(schema_=STATUS_SCHEMA_V2, site="s1", agent="gw1", state=AgentState.ONLINE, ts=NOW,
                     dropped_readings=150, dropped_readings_by_reason={"disk_full": 100, "max_age": 50})
    doc = json.loads(st.to_json())
    assert doc["schema"] == "greenmine.status.v2" and doc["dropped_readings_by_reason"] == {"disk_full": 100, "max_age": 50}
    assert parse_status(st.to_json()) == st
    v1 = {"schema": "greenmine.status.v1", "site": "s1", "agent": "gw1", "state": "online", "ts": "2026-11-27T08:00:00Z"}
    assert parse_status(json.dumps(v1)).dropped_readings_by_reason is None


@pytest.mark.parametrize("change", [
    {"schema": "greenmine.status.v1"},                              # a v2 field in a v1 message
    {"dropped_readings_by_reason": {"cosmic_rays": 1}},             # not a reason
    {"dropped_readings_by_reason": {"disk_full": -1}},              # negative
])
def test_bad_v2_status_is_rejected(change):
    doc = {"schema": "greenmine.status.v2", "site": "s1", "agent": "gw1", "state": "online",
           "ts": "2026-11-27T08:00:00Z", "dropped_readings_by_reason": {"disk_full": 1}} | change
    with pytest.raises(WireError) as info:
        parse_status(json.dumps(doc))
    assert info.value.reason is WireRejectReason.INVALID
