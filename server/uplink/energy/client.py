"""One data centre over HTTPS: registration or token, the upload body, the reply.

    client = CentreClient(centre_cfg, profile, resolve=cfg.resolve)
    creds = client.register(enterprise)                # variant A: deviceId, secretKey, uploadTime
                                                       # variant B: key -> apply -> requestAK -> dictionary -> items
    client.upload(enterprise, creds, records, now)     # raises one of the errors below

Errors (every failure of http.client, ssl and the socket is mapped here, `raise ... from`):

    EnergyError(Exception)
    ├── TransportError      no reply: refused, timed out, TLS failure, HTTP 5xx; resend after back-off
    ├── StaleCredentials    HTTP 401 or a profile stale_code: renew the token / register again, then resend
    └── Rejected            the platform answered responseCode != success (e.g. a decryption failure);
                            .message is the platform's message

The transport is the standard library's `http.client` with an `ssl` context: verification on by
default (the system's CAs, or `ca_file`), an optional client certificate, and separate connect and
read timeouts.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from greenmine.server.uplink.energy.config import CentreConfig, EnterpriseConfig, PlatformProfile
from greenmine.server.uplink.energy.queue import Record
from greenmine.server.uplink.energy.sm4 import Sm4Error, sm4_cbc_encrypt_hex, sm4_ecb_encrypt_hex


class EnergyError(Exception):
    """A send to a data centre failed."""


class TransportError(EnergyError):
    """No usable reply: refused, timed out, TLS failure, HTTP 5xx."""


class StaleCredentials(EnergyError):
    """The platform says the registration or the token is no longer valid."""


class Rejected(EnergyError):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"responseCode {code}: {message}")


def format_value(value: float, decimals: int | None = None) -> str:
    text = f"{value:.{decimals}f}" if decimals is not None else repr(float(value))
    return text


class CentreClient:
    def __init__(self, centre: CentreConfig, profile: PlatformProfile, *, resolve: Callable[[str], Path] = Path,
                 tz_of: Callable[[str], str] = lambda site: "Asia/Shanghai", decimals_of: Callable[[str, str], int] | None = None,
                 real_clock: Callable[[], float] = time.time) -> None:
        self.centre, self.profile = centre, profile
        self.tz_of = tz_of
        self.decimals_of = decimals_of or (lambda site, code: 2)
        self._real = real_clock
        u = urlsplit(centre.url)
        self.scheme, self.host, self.port = u.scheme, u.hostname or "", u.port
        self.base_path = u.path.rstrip("/")
        self.ssl = self._context(resolve) if self.scheme == "https" else None

    def _context(self, resolve) -> ssl.SSLContext:
        c = self.centre
        ctx = ssl.create_default_context(cafile=str(resolve(c.ca_file)) if c.ca_file else None)
        if not c.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if c.client_cert:
            ctx.load_cert_chain(str(resolve(c.client_cert)), str(resolve(c.client_key)) if c.client_key else None)
        return ctx

    # --- the wire ----------------------------------------------------------

    def post(self, path: str, body: dict, token: str | None = None) -> dict:
        """POST JSON, return the JSON reply. Raises TransportError or StaleCredentials (HTTP 401)."""
        c = self.centre
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.ssl is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=c.connect_timeout_s, context=self.ssl)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=c.connect_timeout_s)
        try:
            conn.connect()
            conn.sock.settimeout(c.read_timeout_s)
            conn.request("POST", self.base_path + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(4 * 1024 * 1024)
            status = resp.status
        except ssl.SSLError as exc:
            raise TransportError(f"TLS: {exc}") from exc
        except (socket.timeout, TimeoutError) as exc:
            raise TransportError("timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if status == 401:
            raise StaleCredentials("HTTP 401")
        if status >= 500 or status in (408, 429):
            raise TransportError(f"HTTP {status}")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Rejected(f"HTTP {status}", f"reply is not JSON: {raw[:200]!r}") from None
        if not isinstance(doc, dict):
            raise Rejected(f"HTTP {status}", "reply is not a JSON object")
        return doc

    def _check(self, doc: dict) -> dict:
        f = self.profile.fields
        code = str(doc.get(f.response_code, ""))
        if code == self.profile.success_code:
            return doc
        message = str(doc.get(f.response_message, ""))[:500]
        if code in self.profile.stale_codes:
            raise StaleCredentials(f"responseCode {code}: {message}")
        raise Rejected(code, message)

    # --- registration --------------------------------------------------------

    def register(self, ent: EnterpriseConfig) -> dict:
        return self._register_a(ent) if self.profile.variant == "a" else self._register_b(ent)

    def _register_a(self, ent: EnterpriseConfig) -> dict:
        f, c = self.profile.fields, self.centre
        doc = self._check(self.post(self.profile.paths.registration, {f.region: ent.region, f.enterprise_code: ent.enterprise_code}))
        creds = {"device_id": c.device_id or str(doc.get(f.device_id, "")),
                 "secret_key": c.secret_key.get_secret_value() if c.secret_key else str(doc.get(f.secret_key, "")),
                 "upload_time": doc.get(f.upload_time)}
        if not creds["device_id"]:
            raise Rejected("register", f"registration reply has no {f.device_id}")
        if self.profile.encryption != "none" and not creds["secret_key"]:
            raise Rejected("register", f"registration reply has no {f.secret_key}")
        return creds

    def _register_b(self, ent: EnterpriseConfig) -> dict:
        f, p = self.profile.fields, self.profile.paths
        key_doc = self._check(self.post(p.key, {f.enterprise_code: ent.enterprise_code}))
        key, iv = str(key_doc.get(f.key, "")), str(key_doc.get(f.iv, ""))
        self._check(self.post(p.apply, {f.enterprise_code: ent.enterprise_code, f.name: ent.name, f.region: ent.region}))
        try:
            password = sm4_cbc_encrypt_hex(key, iv, self.centre.password.get_secret_value())
        except Sm4Error as exc:
            raise Rejected("key", f"the platform's key cannot be used: {exc}") from None
        ak = self._check(self.post(p.request_ak, {f.enterprise_code: ent.enterprise_code, f.password: password}))
        token = str(ak.get(f.token, ""))
        if not token:
            raise Rejected("requestAK", f"reply has no {f.token}")
        expires_in = float(ak.get(f.expires_in) or 3600)
        version = self._check(self.post(p.dictionary, {f.enterprise_code: ent.enterprise_code}, token)).get(f.version)
        items = [{f.data_code: it.code, f.input_type: it.input_type, f.scope: it.scope} for it in ent.items]
        self._check(self.post(p.registration, {f.enterprise_code: ent.enterprise_code, f.data: items}, token))
        return {"token": token, "expires_at": self._real() + expires_in, "upload_time": ak.get(f.upload_time),
                "dictionary_version": version}

    def fresh(self, creds: dict | None) -> bool:
        """Credentials usable now: variant B's token renews a minute before it expires."""
        if not creds:
            return False
        if self.profile.variant == "b":
            return self._real() < float(creds.get("expires_at", 0)) - 60
        return True

    # --- upload ----------------------------------------------------------------

    def stat_date(self, site: str, ts: float) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo(self.tz_of(site))).strftime(self.profile.date_format)

    def body(self, ent: EnterpriseConfig, creds: dict | None, records: list[Record], now: float,
             *, encrypt: bool = True) -> dict:
        """The exact upload body (values encrypted if the profile says so and `encrypt`)."""
        f, prof = self.profile.fields, self.profile
        creds = creds or {}
        key = creds.get("secret_key") or ""
        rows = []
        for r in records:
            text = format_value(r.value, self.decimals_of(r.site, r.code))
            value: object = text if prof.value_as_string else r.value
            if encrypt and prof.encryption == "sm4-ecb":
                value = sm4_ecb_encrypt_hex(key, text)
            rows.append({
                f.data_code: r.code, f.data_value: value, f.input_type: r.input_type, f.stat_type: r.stat_type,
                f.stat_date: self.stat_date(r.site, r.period_start), f.upload_date: self.stat_date(r.site, now),
                f.scope: r.scope, f.valid: prof.valid.valid if r.complete else prof.valid.invalid,
            })
        doc = {f.enterprise_code: ent.enterprise_code, f.data: rows}
        if prof.variant == "a":
            doc = {f.device_id: creds.get("device_id", ""), **doc}
        return doc

    def upload(self, ent: EnterpriseConfig, creds: dict, records: list[Record], now: float) -> None:
        try:
            body = self.body(ent, creds, records, now)
        except Sm4Error as exc:
            raise StaleCredentials(f"the secret key cannot be used: {exc}") from None
        self._check(self.post(self.profile.paths.upload, body, creds.get("token")))

    def slot_open(self, creds: dict | None, site: str, period_end: float, now: float) -> bool:
        """Day and month records wait for the platform's daily upload slot (uploadTime, site-local)."""
        if not self.profile.respect_upload_slot or not creds or not creds.get("upload_time"):
            return True
        try:
            parts = [int(x) for x in str(creds["upload_time"]).split(":")]
            hh, mm, ss = (parts + [0, 0])[:3]
        except ValueError:
            return True
        z = ZoneInfo(self.tz_of(site))
        end = datetime.fromtimestamp(period_end, z)
        slot = end.replace(hour=hh, minute=mm, second=ss, microsecond=0)
        if slot < end:
            slot += timedelta(days=1)
        return now >= slot.timestamp()
