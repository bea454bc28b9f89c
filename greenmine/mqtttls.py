"""TLS to the MQTT broker, the same for the agent and the server: the `[mqtt.tls]` section and how a
paho client is set up from it.

- Verification is on by default: the broker's certificate must chain to `ca_file` (or to the
  system CAs when `ca_file` is absent) and name the host connected to.
- `insecure = true` turns both checks off. It must be written out, and it is logged at warning
  every time a client is set up (every start), so it cannot be forgotten in a config.
- `cert_file` and `key_file` give a client certificate for brokers that require one
  (`require_certificate true` in Mosquitto).

Only the standard library and pydantic are imported here; the paho client is passed in.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from greenmine.configbase import ConfigModel


class TlsConfig(ConfigModel):
    ca_file: str | None = Field(default=None, description="CA bundle to verify the broker (PEM); default: system CAs")
    cert_file: str | None = Field(default=None, description="client certificate (PEM), for mutual TLS")
    key_file: str | None = Field(default=None, description="client private key (PEM), for mutual TLS")
    insecure: bool = Field(
        default=False,
        description="true: do NOT verify the broker's certificate or host name (logged at warning at every start)",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


def ssl_context(tls: TlsConfig, resolve: Callable[[str], Any] = str) -> ssl.SSLContext:
    """A client context for `tls`; raises OSError / ssl.SSLError for unreadable or bad files."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(resolve(tls.ca_file)) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(resolve(tls.cert_file)), str(resolve(tls.key_file)))
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def apply_tls(client: Any, tls: TlsConfig, log: logging.Logger, where: str, resolve: Callable[[str], Any] = str) -> None:
    """Set up TLS on a paho client. `where` names the config section in the warning for `insecure`."""
    if tls.insecure:
        log.warning("%s: insecure = true: the broker's TLS certificate and host name are NOT verified; "
                    "anyone on the path can read and change the traffic", where)
    client.tls_set_context(ssl_context(tls, resolve))
    if tls.insecure:
        client.tls_insecure_set(True)


def tls_files(tls: TlsConfig, resolve: Callable[[str], Any] = str) -> list[Path]:
    """The files a TLS section names, resolved (for checks that they exist)."""
    return [Path(str(resolve(f))) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f]
