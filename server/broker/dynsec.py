"""Talking to Mosquitto's dynamic-security plugin over MQTT (`$CONTROL/dynamic-security/v1`), as its
admin client; and the roles greenmine's clients get.

The plugin saves every change to its JSON file itself; nothing here edits that file.

Roles (`ACL`s are checked by the broker on every publish and subscribe):

- agent `agent.<site>.<agent>`: may publish `greenmine/v1/<site>/<agent>/#` (telemetry, status and
  its will). Everything else is denied: the plugin's default denies publishing and subscribing.
- server `greenmine-server`: may subscribe to `greenmine/v1/+/+/telemetry` and `.../status`, plain
  or through a shared group (`$share/<group>/...`), and receive them. It may publish nothing.
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from greenmine.schemas import TopicKind, subscription
from greenmine.schemas.topics import PREFIX

CONTROL = "$CONTROL/dynamic-security/v1"
SERVER_ROLE = "greenmine-server"


class DynsecError(RuntimeError):
    pass


def agent_username(site: str, agent: str) -> str:
    """`agent.<site>.<agent>`: a dot never appears in an identifier, so two agents never share a name."""
    return f"agent.{site}.{agent}"


def agent_acls(site: str, agent: str) -> list[dict[str, Any]]:
    return [{"acltype": "publishClientSend", "topic": f"{PREFIX}/{site}/{agent}/#", "allow": True}]


def server_acls() -> list[dict[str, Any]]:
    acls = []
    for kind in (TopicKind.TELEMETRY, TopicKind.STATUS):
        flt = subscription(kind)
        acls += [
            {"acltype": "subscribePattern", "topic": flt, "allow": True},
            # Mosquitto 2.0 checks a shared subscription with its $share/<group>/ prefix
            {"acltype": "subscribePattern", "topic": f"$share/+/{flt}", "allow": True},
            {"acltype": "publishClientReceive", "topic": flt, "allow": True},
        ]
    return acls


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str
    password: str
    ca_file: str | None = None  # TLS when set (or when tls is True)
    tls: bool = False
    cert_file: str | None = None
    key_file: str | None = None


def connect(ep: Endpoint, client_id: str, timeout_s: float = 10.0, context: ssl.SSLContext | None = None,
            anonymous: bool = False):
    """A connected paho client (MQTT 5, clean start) or DynsecError naming why not. `context`: TLS with this
    context (else TLS when the endpoint says so); `anonymous`: send no user name."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    if not anonymous:
        c.username_pw_set(ep.username, ep.password)
    if context is not None:
        c.tls_set_context(context)
    elif ep.tls or ep.ca_file:
        ctx = ssl.create_default_context(cafile=ep.ca_file)
        if ep.cert_file:
            ctx.load_cert_chain(ep.cert_file, ep.key_file)
        c.tls_set_context(ctx)
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client, userdata, flags, rc, props=None):
        result["rc"] = rc
        done.set()

    c.on_connect = on_connect
    try:
        c.connect(ep.host, ep.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise DynsecError(f"cannot connect to the broker at {ep.host}:{ep.port}: {exc}") from exc
    c.loop_start()
    if not done.wait(timeout_s):
        c.loop_stop()
        raise DynsecError(f"the broker at {ep.host}:{ep.port} did not answer CONNECT within {timeout_s:g} s")
    if result["rc"].is_failure:
        c.loop_stop()
        who = "an anonymous client" if anonymous else repr(ep.username)
        raise DynsecError(f"the broker at {ep.host}:{ep.port} refused {who}: {result['rc']}")
    return c


class Admin:
    """Sends dynamic-security commands and waits for their responses."""

    def __init__(self, ep: Endpoint, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self._client = connect(ep, f"greenmine-broker-admin-{uuid.uuid4().hex[:8]}", timeout_s)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a, **k: subscribed.set()
        self._client.subscribe(f"{CONTROL}/response", qos=1)
        if not subscribed.wait(timeout_s):
            self.close()
            raise DynsecError("the broker did not confirm the subscription to the dynamic-security responses")

    def _on_message(self, client, userdata, msg) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        for resp in doc.get("responses", []):
            corr = resp.get("correlationData")
            with self._lock:
                slot = self._waiting.get(corr)
            if slot is not None:
                slot[1].append(resp)
                slot[0].set()

    def command(self, name: str, **fields: Any) -> dict[str, Any]:
        """Run one command; its response (with `data` for get/list commands). Raises DynsecError on an error."""
        corr = uuid.uuid4().hex
        event: threading.Event = threading.Event()
        box: list = []
        with self._lock:
            self._waiting[corr] = (event, box)
        try:
            payload = json.dumps({"commands": [{"command": name, "correlationData": corr, **fields}]})
            self._client.publish(CONTROL, payload, qos=1)
            if not event.wait(self.timeout_s):
                raise DynsecError(f"no answer to {name} within {self.timeout_s:g} s (is the dynamic-security "
                                  "plugin loaded, and is this the admin client?)")
        finally:
            with self._lock:
                self._waiting.pop(corr, None)
        resp = box[0]
        if resp.get("error"):
            raise DynsecError(f"{name}: {resp['error']}")
        return resp

    def exists(self, kind: str, name: str) -> bool:
        key = {"Client": "username", "Role": "rolename"}[kind]
        try:
            self.command(f"get{kind}", **{key: name})
            return True
        except DynsecError as exc:
            if "not found" in str(exc).lower():
                return False
            raise

    def ensure_role(self, rolename: str, acls: list[dict[str, Any]], text: str) -> None:
        """Create the role with exactly these ACLs, or bring an existing one to them."""
        if not self.exists("Role", rolename):
            self.command("createRole", rolename=rolename, textname=text, acls=acls)
            return
        current = self.command("getRole", rolename=rolename).get("data", {}).get("role", {}).get("acls", [])
        for acl in current:
            self.command("removeRoleACL", rolename=rolename, acltype=acl["acltype"], topic=acl["topic"])
        for acl in acls:
            self.command("addRoleACL", rolename=rolename, **acl)

    def upsert_client(self, username: str, password: str, rolename: str, text: str, *, replace: bool) -> bool:
        """Create the client with this role. An existing one: DynsecError unless `replace` (then its password
        is set and its roles become just this one). True if it was created."""
        if self.exists("Client", username):
            if not replace:
                raise DynsecError(f"client {username!r} exists already (use --rotate to give it a new password)")
            self.command("setClientPassword", username=username, password=password)
            info = self.command("getClient", username=username).get("data", {}).get("client", {})
            for r in info.get("roles", []):
                if r.get("rolename") != rolename:
                    self.command("removeClientRole", username=username, rolename=r["rolename"])
            if rolename not in {r.get("rolename") for r in info.get("roles", [])}:
                self.command("addClientRole", username=username, rolename=rolename)
            return False
        self.command("createClient", username=username, password=password, textname=text,
                     roles=[{"rolename": rolename}])
        return True

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
