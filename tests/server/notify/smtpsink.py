"""A real SMTP server for tests: aiosmtpd on a free loopback port, stoppable and restartable on that port."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.services import free_port, port_open, wait_for


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.sink.lock:
            self.sink.messages.append(msg)
            self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


class SmtpSink:
    def __init__(self, *, mode: str = "plain", tls_files: tuple[Path, Path] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.mode = mode  # plain | starttls | tls
        self.tls_files = tls_files
        self.credentials = credentials
        self.messages: list = []
        self.envelopes: list = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def _server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.tls_files)
        return ctx

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls_files[0]))

    def _auth(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        return AuthResult(success=ok)

    def start(self) -> None:
        kwargs: dict = {}
        if self.mode == "starttls":
            kwargs["server_kwargs"] = {"tls_context": self._server_ctx(), "require_starttls": True}
        elif self.mode == "tls":
            kwargs["ssl_context"] = self._server_ctx()
        if self.credentials:
            kwargs.setdefault("server_kwargs", {})
            kwargs["server_kwargs"].update(authenticator=self._auth, auth_required=True, auth_require_tls=self.mode == "starttls")  # implicit TLS: aiosmtpd cannot tell, the socket is TLS anyway
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        if self.mode == "tls":
            # Controller's readiness probe speaks plain SMTP; with implicit TLS we wait for the port ourselves
            self._controller.ready_timeout = 5
        self._controller.start()
        wait_for(lambda: port_open(self.port), 5, what="aiosmtpd")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list:
        with self.lock:
            return list(self.messages)
