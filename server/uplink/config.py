"""The `[uplink]` section: the uplink role's own session and its replica of the series it reports."""

from __future__ import annotations

from pydantic import Field

from greenmine.configbase import ConfigModel


class UplinkConfig(ConfigModel):
    client_id: str | None = Field(
        default=None, description='MQTT client id of the uplink\'s own session; absent: "<mqtt.client_id>-uplink"'
    )
    replica_path: str = Field(
        default="uplink-replica.sqlite",
        description="the uplink's own copy of the series its HJ 212 points report (minute, hour and day data, "
        "history requests), fed from the stream; relative to the config file",
    )
    replica_retention_days: float = Field(
        default=35, ge=2, description="how far back a platform's history request can be answered"
    )
