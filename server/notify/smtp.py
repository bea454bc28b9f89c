"""SMTP delivery: the one module that imports smtplib.

STARTTLS, implicit TLS and AUTH as configured in `SmtpConfig`; every failure
channel of smtplib/ssl/socket is translated into TransientSendError (retry) or
PermanentSendError (do not retry).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage

from greenmine.server.config import SmtpConfig
from greenmine.server.notify.errors import PermanentSendError, TransientSendError


class SmtpTransport:
    def __init__(self, cfg: SmtpConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        # tests pass a context trusting their own CA; production uses the system store
        self.ssl_context = ssl_context or ssl.create_default_context()

    @property
    def sender(self) -> str:
        return self.cfg.sender

    def send(self, msg: EmailMessage) -> dict:
        """Hand `msg` to the relay. Returns the recipients refused while others were accepted (then it counts as sent)."""
        cfg = self.cfg
        try:
            if cfg.security == "tls":
                client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=self.ssl_context)
            else:
                client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
            with client:
                client.ehlo()
                if cfg.security == "starttls":
                    client.starttls(context=self.ssl_context)
                    client.ehlo()
                if cfg.username:
                    client.login(cfg.username, cfg.password.get_secret_value() if cfg.password else "")
                refused = client.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _classify(exc.recipients, "all recipients refused") from exc
        except smtplib.SMTPAuthenticationError as exc:
            # wrong credentials do not fix themselves, but mail must not be lost: retry slowly, log loudly
            raise TransientSendError(f"SMTP authentication failed: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600 and not isinstance(exc, smtplib.SMTPSenderRefused):
                raise PermanentSendError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            raise TransientSendError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
        except (smtplib.SMTPException, ssl.SSLError, socket.timeout, OSError) as exc:
            raise TransientSendError(f"cannot deliver via {cfg.host}:{cfg.port}: {exc}") from exc
        return dict(refused)


def _classify(recipients: dict, what: str):
    codes = [c for c, _ in recipients.values()]
    if codes and all(500 <= c < 600 for c in codes):
        return PermanentSendError(f"{what}: {recipients}")
    return TransientSendError(f"{what}: {recipients}")
