import pytest

from greenmine.schemas import Topic, TopicKind, WireError, WireRejectReason, parse_topic, status_topic, subscription, telemetry_topic


def test_build_and_parse():
    t = telemetry_topic("gs-demo", "gw-01")
    assert t == "greenmine/v1/gs-demo/gw-01/telemetry"
    assert parse_topic(t) == Topic("gs-demo", "gw-01", TopicKind.TELEMETRY)
    assert parse_topic(status_topic("gs-demo", "gw_2")).kind is TopicKind.STATUS


def test_subscriptions():
    assert subscription(TopicKind.TELEMETRY) == "greenmine/v1/+/+/telemetry"
    assert subscription(TopicKind.STATUS, shared_group="ingest") == "$share/ingest/greenmine/v1/+/+/status"


@pytest.mark.parametrize(
    "topic, reason",
    [
        ("greenmine/v1/gs-demo/gw-01", WireRejectReason.BAD_TOPIC),
        ("greenmine/v2/gs-demo/gw-01/telemetry", WireRejectReason.BAD_TOPIC),
        ("greenmine/v1/gs-demo/gw-01/telemetry/extra", WireRejectReason.BAD_TOPIC),
        ("greenmine/v1/gs-demo/gw-01/commands", WireRejectReason.BAD_TOPIC),
        ("greenmine/v1/gs demo/gw-01/telemetry", WireRejectReason.BAD_IDENTIFIER),
        ("greenmine/v1//gw-01/telemetry", WireRejectReason.BAD_IDENTIFIER),
        ("greenmine/v1/gs-demo/+/telemetry", WireRejectReason.BAD_IDENTIFIER),
    ],
)
def test_bad_topics(topic, reason):
    with pytest.raises(WireError) as info:
        parse_topic(topic)
    assert info.value.reason is reason


def test_builders_refuse_unsafe_identifiers():
    with pytest.raises(WireError):
        telemetry_topic("gs/demo", "gw-01")
