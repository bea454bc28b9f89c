"""The server's own exceptions. Third-party errors (sqlite3, influxdb_client,
urllib3, paho) are translated into these at the one module that uses the
library, with `raise ... from exc`.

    ServerError(Exception)
     ├── StoreError                a sink could not write or answer
     │    ├── StoreUnavailable     transient: retry later (refused, timeout, HTTP 5xx/429, database locked)
     │    └── StoreRejected        permanent for this data: retrying the same write cannot succeed (HTTP 4xx)
     ├── SpoolError                the local spool cannot be opened or written (locked by another process, disk, corrupt)
     │    └── SpoolRejected        this data cannot be stored (a value out of SQLite's range, a constraint,
     │                             or any other exception inside the transaction): retrying it cannot succeed
     ├── BrokerError               the MQTT client cannot be set up (bad TLS file, refused at start)
     └── StateInUse                a role's state file is another process's (two monitors on one replica,
                                   `kpi recompute` beside the running monitor)
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the server raises on purpose."""


class StoreError(ServerError):
    """A sink failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is overloaded; the same write may succeed later."""


class StoreRejected(StoreError):
    """The store refused this data; retrying it unchanged will not help.

    `rejected`: when the sink wrote the rest of the write, the readings it refused with the reason for each;
    None: the whole write was refused."""

    def __init__(self, message: str, rejected: list | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected


class SpoolError(ServerError):
    """The durable spool cannot be used."""


class SpoolRejected(SpoolError):
    """The spool cannot store this data; the same transaction will fail again (ingest dead-letters it as poison)."""


class BrokerError(ServerError):
    """The MQTT connection cannot be set up."""


class StateInUse(ServerError):
    """Another process owns this state file (`greenmine.filelock`): `what` ("replica /path"), `holder` ("process
    4711 (monitor)")."""

    def __init__(self, what: str, holder: str, hint: str = "") -> None:
        super().__init__(f"{what} is in use by {holder}" + (f"; {hint}" if hint else ""))
        self.what = what
        self.holder = holder
