"""A provincial energy-consumption platform (one data centre), for tests and commissioning.

    sim = EnergyPlatformSim(profile="variant-a-sm4", tls_dir=tmp, secret_key=KEY)
    sim.start(); sim.url; sim.ca_file      # a real HTTPS server on 127.0.0.1, its test CA
    sim.records                            # {(enterpriseCode, dataCode, statType, statDate): AcceptedRecord}
    sim.duplicates                         # records received again for a key it already held
    sim.fault("timeout" | "refuse" | "decrypt_error" | "expire_token" | None)
    sim.down(); sim.up()                   # close the listening socket (connection refused), reopen the same port
    sim.stop()

It implements both variants as the profiles in config/energy-platforms/ describe them, reading
the profile's paths and field names (so a province's casing is exercised end to end):

- **A** (NECC style): `registration` {region, enterpriseCode} → responseCode "0", deviceId,
  secretKey, uploadTime, dictionary and data URLs; `upload` {deviceId, enterpriseCode, data:[...]}:
  each dataValue SM4-ECB decrypted with secretKey when the profile encrypts; a value that does not
  decrypt → responseCode "1" "数据解密失败" and nothing of the upload is stored; a deviceId that does
  not belong to the enterprise → "1"; a forgotten registration (`expire_token`) → a stale code.
- **B** (token style): key → {key, iv}; apply; requestAK with the SM4-CBC encrypted password →
  token, expiresIn, uploadTime; dictionary version; item registration; upload with Bearer. A missing,
  unknown or expired token → HTTP 401.

SM4 here uses `cryptography` directly, independently of the uplink's own code, so a mistake there
is not mirrored here. The test CA (`make_test_ca`) is generated with `cryptography.x509`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import threading
import time
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

DECRYPT_FAILED = "数据解密失败"
DEVICE_MISMATCH = "deviceId与统一社会信用代码不匹配"

_FIELDS = {
    "region": "region", "enterprise_code": "enterpriseCode", "device_id": "deviceId", "secret_key": "secretKey",
    "upload_time": "uploadTime", "data": "data", "data_code": "dataCode", "data_value": "dataValue",
    "input_type": "inputType", "stat_type": "statType", "stat_date": "statDate", "upload_date": "uploadDate",
    "scope": "scope", "valid": "valid", "response_code": "responseCode", "response_message": "responseMessage",
    "password": "password", "key": "key", "iv": "iv", "token": "token", "expires_in": "expiresIn",
    "version": "version", "name": "enterpriseName",
}
_PATHS = {"registration": "/register", "upload": "/upload", "key": "/key", "apply": "/apply",
          "request_ak": "/requestAK", "dictionary": "/dictionary/version"}


def profile_doc(profile: str | Path) -> dict:
    """A platform profile TOML by name (config/energy-platforms/NAME.toml) or path."""
    from greenmine import CONFIG_DIR

    p = Path(profile)
    if p.suffix != ".toml":
        p = CONFIG_DIR / "energy-platforms" / f"{profile}.toml"
    return tomllib.loads(p.read_text(encoding="utf-8"))


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, in `folder` (reused if present).
    Returns (ca.pem, server.pem, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    if ca_pem.exists() and cert_pem.exists() and key_pem.exists():
        return ca_pem, cert_pem, key_pem
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "greenmine test CA (energy platform simulator)")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_pem.chmod(0o600)
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_pem, cert_pem, key_pem


def _sm4(key: bytes, mode, data: bytes, encrypt: bool) -> bytes:
    c = Cipher(algorithms.SM4(key), mode)
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def _unpad(data: bytes) -> bytes:
    u = padding.PKCS7(128).unpadder()
    return u.update(data) + u.finalize()


def sm4_decrypt(key_hex: str, cipher_hex: str, iv_hex: str | None = None) -> str:
    """Decrypt a hex SM4-ECB (or CBC with `iv_hex`) PKCS#7 value. Raises ValueError on any failure."""
    data = bytes.fromhex(cipher_hex)
    if not data or len(data) % 16:
        raise ValueError("not whole blocks")
    mode = modes.CBC(bytes.fromhex(iv_hex)) if iv_hex else modes.ECB()
    return _unpad(_sm4(bytes.fromhex(key_hex), mode, data, False)).decode("utf-8")


@dataclass
class AcceptedRecord:
    value: str
    valid: object
    input_type: object
    scope: object
    upload_date: str
    received_at: float
    times: int = 1


@dataclass
class _Token:
    enterprise: str
    expires_at: float


@dataclass
class SimState:
    records: dict = field(default_factory=dict)
    duplicates: int = 0
    uploads: int = 0
    registrations: int = 0
    tokens_issued: int = 0
    unauthorized: int = 0
    held_requests: int = 0
    errors: list = field(default_factory=list)  # (responseCode, message) of every error reply
    items_registered: set = field(default_factory=set)


class EnergyPlatformSim:
    def __init__(self, *, profile: str | Path = "variant-a", tls_dir: Path, port: int = 0, host: str = "127.0.0.1",
                 secret_key: str | None = None, upload_time: str = "00:00:00", password: str = "greenmine-test",
                 token_ttl_s: float = 3600.0, device_id: str = "GM-DEVICE-0001", client_ca: Path | None = None,
                 timeout_hold_s: float = 30.0) -> None:
        doc = profile_doc(profile)
        self.variant = doc.get("variant", "a")
        self.encrypted = doc.get("encryption", "none") == "sm4-ecb"
        self.f = {**_FIELDS, **doc.get("fields", {})}
        self.paths = {**_PATHS, **doc.get("paths", {})}
        self.success = str(doc.get("success_code", "0"))
        self.stale = str((doc.get("stale_codes") or ["2"])[0])
        self.secret_key = secret_key or secrets.token_hex(16)
        self.key_b, self.iv_b = secrets.token_hex(16), secrets.token_hex(16)
        self.upload_time, self.password, self.token_ttl_s = upload_time, password, token_ttl_s
        self.device_id = device_id
        self.host, self._port = host, port
        self.ca_file, self.cert_file, self.key_file = make_test_ca(tls_dir)
        self.client_ca = client_ca
        self.timeout_hold_s = timeout_hold_s
        self.state = SimState()
        self.devices: dict[str, str] = {}  # deviceId -> enterpriseCode
        self.tokens: dict[str, _Token] = {}
        self._fault: str | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.client_ca is not None:
            ctx.load_verify_locations(str(self.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> EnergyPlatformSim:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                sim._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/_sim/state":
                    sim._reply(self, 200, sim.summary())
                else:
                    sim._reply(self, 404, {"error": "not found"})

            def log_message(self, fmt: str, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, addr = self.socket.accept()
                sock.settimeout(10)
                return sim._context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address) -> None:
                pass  # a client that hangs up mid-handshake is not the simulator's problem

        self._server = Server((self.host, self._port), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"energy-sim-{self._port}", daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening: clients get connection refused until `up`."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def up(self) -> None:
        self._release.clear()
        self.start()

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> EnergyPlatformSim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fault(self, kind: str | None) -> None:
        """refuse (HTTP 503), timeout (hold replies), decrypt_error (every upload), expire_token (tokens and
        registrations forgotten, once), or None (healthy)."""
        if kind not in (None, "refuse", "timeout", "decrypt_error", "expire_token"):
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            if kind == "expire_token":
                self.tokens.clear()
                self.devices.clear()
                kind = None
            self._fault = kind
        if kind != "timeout":
            self._release.set()
        else:
            self._release.clear()

    # --- what it holds ------------------------------------------------------------

    @property
    def records(self) -> dict:
        return self.state.records

    @property
    def duplicates(self) -> int:
        return self.state.duplicates

    def summary(self) -> dict:
        with self._lock:
            by_stat: dict[str, int] = {}
            for (_ent, _code, stat, _date) in self.state.records:
                by_stat[str(stat)] = by_stat.get(str(stat), 0) + 1
            return {"variant": self.variant, "records": len(self.state.records), "by_stat_type": by_stat,
                    "duplicates": self.state.duplicates,
                    "uploads": self.state.uploads, "registrations": self.state.registrations,
                    "tokens_issued": self.state.tokens_issued, "unauthorized": self.state.unauthorized,
                    "errors": self.state.errors[-20:], "fault": self._fault}

    # --- the protocol ---------------------------------------------------------------

    def _reply(self, h: BaseHTTPRequestHandler, status: int, doc: dict) -> None:
        data = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass

    def _code(self, code: str, message: str, **extra) -> dict:
        if code != self.success:
            self.state.errors.append((code, message))
        return {self.f["response_code"]: code, self.f["response_message"]: message, **extra}

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if h.path == "/_sim/fault":
            try:
                self.fault(json.loads(raw or b"{}").get("kind"))
            except ValueError as exc:
                return self._reply(h, 400, {"error": str(exc)})
            return self._reply(h, 200, self.summary())
        fault = self._fault
        if fault == "timeout":
            with self._lock:
                self.state.held_requests += 1
            self._release.wait(self.timeout_hold_s)
            h.close_connection = True
            return  # no reply: the connection closes when the handler returns
        if fault == "refuse":
            return self._reply(h, 503, {"error": "refused (simulated)"})
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            with self._lock:
                return self._reply(h, 200, self._code("1", "请求报文不是JSON"))
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with self._lock:
            status, doc = self._route(h.path, body, token, fault)
        self._reply(h, status, doc)

    def _route(self, path: str, body: dict, token: str, fault: str | None) -> tuple[int, dict]:
        f, p = self.f, self.paths
        ent = str(body.get(f["enterprise_code"], ""))
        if self.variant == "a":
            if path == p["registration"]:
                self.state.registrations += 1
                self.devices[self.device_id] = ent
                return 200, self._code(self.success, "注册成功", **{
                    f["device_id"]: self.device_id, f["secret_key"]: self.secret_key, f["upload_time"]: self.upload_time,
                    "dictUrl": f"{self.url}/dictionary", "dataUrl": f"{self.url}{p['upload']}"})
            if path == p["upload"]:
                dev = str(body.get(f["device_id"], ""))
                if dev not in self.devices:
                    return 200, self._code(self.stale, "设备未注册或注册已失效")
                if self.devices[dev] != ent:
                    return 200, self._code("1", DEVICE_MISMATCH)
                return 200, self._upload(ent, body, fault)
            return 404, self._code("1", f"no such path {path}")
        # variant B
        if path == p["key"]:
            return 200, self._code(self.success, "ok", **{f["key"]: self.key_b, f["iv"]: self.iv_b})
        if path == p["apply"]:
            return 200, self._code(self.success, "申请成功")
        if path == p["request_ak"]:
            try:
                plain = sm4_decrypt(self.key_b, str(body.get(f["password"], "")), self.iv_b)
            except ValueError:
                return 200, self._code("1", "密码解密失败")
            if plain != self.password:
                return 200, self._code("1", "密码错误")
            tok = secrets.token_hex(16)
            self.tokens[tok] = _Token(ent, time.time() + self.token_ttl_s)
            self.state.tokens_issued += 1
            self.state.registrations += 1
            return 200, self._code(self.success, "ok", **{f["token"]: tok, f["expires_in"]: self.token_ttl_s,
                                                           f["upload_time"]: self.upload_time})
        t = self.tokens.get(token)
        if t is None or t.expires_at < time.time():
            self.state.unauthorized += 1
            return 401, {"error": "token invalid or expired"}
        if path == p["dictionary"]:
            return 200, self._code(self.success, "ok", **{f["version"]: "1.0"})
        if path == p["registration"]:
            for it in body.get(f["data"]) or []:
                self.state.items_registered.add((ent, str(it.get(f["data_code"]))))
            return 200, self._code(self.success, "数据项注册成功")
        if path == p["upload"]:
            return 200, self._upload(ent, body, fault)
        return 404, self._code("1", f"no such path {path}")

    def _upload(self, ent: str, body: dict, fault: str | None) -> dict:
        f = self.f
        rows = body.get(f["data"])
        if not isinstance(rows, list) or not rows:
            return self._code("1", "data 为空")
        parsed = []
        for row in rows:
            value = row.get(f["data_value"])
            if self.encrypted or fault == "decrypt_error":
                try:
                    if fault == "decrypt_error":
                        raise ValueError("simulated")
                    value = sm4_decrypt(self.secret_key, str(value))
                    float(value)
                except ValueError:
                    return self._code("1", DECRYPT_FAILED)
            try:
                stat = int(row.get(f["stat_type"]))
            except (TypeError, ValueError):
                stat = -1
            if stat not in (0, 1, 2, 3):  # real-time, day, month, year
                return self._code("1", f"statType {row.get(f['stat_type'])!r} 无效")
            parsed.append((str(row.get(f["data_code"])), stat, str(row.get(f["stat_date"])),
                           AcceptedRecord(str(value), row.get(f["valid"]), row.get(f["input_type"]), row.get(f["scope"]),
                                          str(row.get(f["upload_date"])), time.time())))
        self.state.uploads += 1
        for code, stat, date, rec in parsed:
            key = (ent, code, stat, date)
            old = self.state.records.get(key)
            if old is not None:
                self.state.duplicates += 1
                rec.times = old.times + 1
            self.state.records[key] = rec
        return self._code(self.success, "上传成功")


def serve(args) -> int:
    """`greenmine sim energy-platform`: serve one data centre until Ctrl-C / SIGTERM."""
    import signal

    sim = EnergyPlatformSim(profile=args.profile, tls_dir=Path(args.tls_dir), port=args.port, secret_key=args.secret_key,
                            upload_time=args.upload_time, password=args.password, token_ttl_s=args.token_ttl_s)
    sim.start()
    print(f"energy platform simulator ({sim.variant}, profile {args.profile}) on {sim.url}", flush=True)
    print(f"  test CA: {sim.ca_file}  (give it as ca_file in [[energy.centres]])", flush=True)
    if sim.variant == "a":
        print(f"  secretKey {sim.secret_key}, uploadTime {sim.upload_time}", flush=True)
    else:
        print(f"  password {sim.password!r}, token lifetime {sim.token_ttl_s:g} s", flush=True)
    print(f"  state: GET {sim.url}/_sim/state; faults: POST {sim.url}/_sim/fault "
          '{"kind": "refuse|timeout|decrypt_error|expire_token|null"}', flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.wait(0.5):
        pass
    sim.stop()
    print(f"stopped: {json.dumps(sim.summary(), ensure_ascii=False)}", flush=True)
    return 0
