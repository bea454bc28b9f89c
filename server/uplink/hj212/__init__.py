"""HJ 212-2017 uplink to environmental monitoring platforms.

Modules, each owning one thing:
- `crc`: the HJ 212 checksum (not CRC-16/MODBUS);
- `codec`: frame syntax, encode/decode/split, `FrameError` (pure);
- `messages`: data flags, period aggregation, message builders (pure);
- `config`: `PointConfig`, one monitoring point (pure, pydantic);
- `queue`: `PacketQueue`, durable SQLite queue of unacknowledged uploads;
- `client`: `Hj212Client`, the asyncio transmission client;
- `cli`: `greenmine hj212 decode`.

The server wires a point by giving `Hj212Client` a `RealtimeSource` and a
`HistoryProvider` and running `await client.run()`.
"""
