"""Port overrides from the command line or the environment, so a second instance needs no copied config.

    port = port_override("--http-port", args.http_port, "GREENMINE_HTTP_PORT")   # None: keep the file's

The command line wins over the environment, which wins over the config file. The variables:

| variable | command | overrides |
|---|---|---|
| `GREENMINE_METRICS_PORT` | `agent run` (`--metrics-port`) | `metrics_port` (the agent's /metrics; 0: any free port) |
| `GREENMINE_HTTP_PORT` | `server run` (`--http-port`) | `http_port` (the server's /metrics and /health; 0: any free port) |
| `GREENMINE_MQTT_PORT` | `agent run`, `server run` (`--mqtt-port`) | `mqtt.port` (the broker's port) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_VARS = ("GREENMINE_METRICS_PORT", "GREENMINE_HTTP_PORT", "GREENMINE_MQTT_PORT")


class PortError(ValueError):
    """An override that is not a port; the message names the flag or the variable."""


def port_override(flag: str, given: int | None, env_var: str, *, env: Mapping[str, str] | None = None,
                  minimum: int = 0) -> int | None:
    """The port from `flag` (already parsed) or else `env_var`; None when neither is set. Raises PortError."""
    env = os.environ if env is None else env
    if given is not None:
        where, value = flag, given
    elif env.get(env_var, "").strip():
        where = f"environment variable {env_var}"
        try:
            value = int(env[env_var].strip())
        except ValueError:
            raise PortError(f"{where}: {env[env_var]!r} is not a port number") from None
    else:
        return None
    if not minimum <= value <= 65535:
        raise PortError(f"{where}: {value} is not a port ({minimum}..65535)")
    return value
