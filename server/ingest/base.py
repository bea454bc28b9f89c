"""The ingest stage's interface, as the subscriber and the app drive it."""

from __future__ import annotations

from typing import Protocol

from greenmine.server.ingest.mqtt import Delivery


class Ingest(Protocol):
    def submit(self, delivery: Delivery) -> None:
        """Take one MQTT delivery (paho's thread). May block: that is the back-pressure on the broker."""

    def start(self) -> None:
        """Start the ingest thread."""

    def stop(self) -> None:
        """Spool and acknowledge what was submitted, then stop. Call after the subscriber stopped consuming."""

    def abort(self) -> None:
        """Stop now; what is not yet spooled stays unacknowledged in the broker, which redelivers it."""
