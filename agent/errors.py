"""The agent's exceptions. Library modules translate their library's failures into these
`agent.modbus` for pymodbus, `agent.publisher` for paho-mqtt.

    AgentError(Exception)
    ├── ModbusError                 one Modbus request that produced no usable answer
    │   ├── ModbusConnectError      the bus could not be opened / the link dropped (kind "connect")
    │   ├── ModbusTimeout           no (complete) reply within the device's timeout (kind "timeout")
    │   ├── ModbusExceptionReply    the device answered with a Modbus exception code (kind "exception")
    │   └── ModbusProtocolError     a reply that is malformed, short or for someone else (kind "protocol")
    ├── OutboxError                 the SQLite outbox cannot be opened or written
    └── PublishError                the MQTT client cannot be set up (bad TLS files, bad options)

`ModbusError.kind` is the label used in the failures metric and the device status.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ModbusError(AgentError):
    kind = "modbus"
    #: Whether repeating the request at once can help (a dropped link or a garbled frame can;
    #: a timeout would cost the bus another full timeout, so it waits for the next cycle).
    retry_now = False


class ModbusConnectError(ModbusError):
    kind = "connect"
    retry_now = True


class ModbusTimeout(ModbusError):
    kind = "timeout"


class ModbusExceptionReply(ModbusError):
    kind = "exception"

    #: Modbus exception codes (Modbus Application Protocol V1.1b3, §7).
    NAMES = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        8: "memory parity error",
        10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    }

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        name = self.NAMES.get(code, "unknown exception")
        super().__init__(f"exception code {code} ({name}){': ' + detail if detail else ''}")


class ModbusProtocolError(ModbusError):
    kind = "protocol"
    retry_now = True


class OutboxError(AgentError):
    """The outbox database cannot be used."""


class PublishError(AgentError):
    """The MQTT client cannot be configured."""
