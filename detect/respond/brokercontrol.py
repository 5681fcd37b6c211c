"""Broker control: the one module through which the engine changes what a client may do on the broker.

Mosquitto 2.x's dynamic security plugin (`mosquitto_dynamic_security.so`, in Debian's package)
takes JSON commands on `$CONTROL/dynamic-security/v1` from an administrator and answers on
`.../response`. `garrison-detect broker-config --dynamic-security` loads it next to the ACL
file, with the engine as its administrator (`initial_config`). The plugin is asked first; for a
client it does not know, or a topic none of the client's roles names, it defers to the ACL file,
which keeps every device's least privilege. So a device is a plugin client only while the engine
restricts it:

- quarantine: the role `garrison-quarantine:THING` at a high priority allows its own reports and
  replies and denies everything else (`#` and the `$...` roots, which `#` does not match);
- disable: `disableClient` plus the role `garrison-disabled`, which denies everything.

Each change makes the plugin drop the client's connection, so the new rights apply at once (it
reconnects under them). Release / enable remove the role again, which gives back whatever the
client had before (its ACL-file rights and any role an operator gave it). Mosquitto 2.0 skips the
plugin's login check for clients whose user name is their certificate's CN, so a disabled
device may still complete a connection but can neither publish nor receive anything; refusing
its TLS handshake needs its certificate in the CRL, which the runner's `disable` does first where
the engine knows the PKI (garrison.detect.respond.revocation, docs/actions.md).

Used by: the quarantine / release / disable / enable actions (garrison.detect.respond.runner);
Audit's mitigations should call the same `BrokerControl` rather than speak to the plugin.

The link is anything with `publish(topic, payload, qos)` whose messages on
DYNSEC_RESPONSE_TOPIC are handed to `BrokerControl.on_response`: in serve, the engine's one MQTT
connection (garrison.detect.service), since a second connection with the same
certificate would take over the first.
"""

import glob
import json
import logging
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

from garrison.wire.topics import DOLLAR_ROOTS, DYNSEC_COMMAND_TOPIC, DYNSEC_FILTER, FORMATS, report_topic, reply_topics
from garrison.wire.topics import DYNSEC_RESPONSE_TOPIC  # noqa: F401  (used as brokercontrol.DYNSEC_RESPONSE_TOPIC)

log = logging.getLogger("garrison.brokercontrol")

ADMIN_ROLE = "garrison-admin"
DISABLED_ROLE = "garrison-disabled"
QUARANTINE_ROLE_PREFIX = "garrison-quarantine:"
# A client's roles are checked highest priority first: these come before any operator's role.
QUARANTINE_PRIORITY = 1000
DISABLED_PRIORITY = 2000
DEFAULT_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 1 << 20  # a response we never asked to be big
PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
)
# What a plugin error means "already the case" for our idempotent commands.
_ALREADY = {
    "createClient": "Client already exists",
    "createRole": "Role already exists",
    "deleteRole": "Role not found",
}


class BrokerControlError(Exception):
    """The broker refused a command, or did not answer in time; the message says which."""


def plugin_path() -> Optional[str]:
    """Where this machine's Mosquitto keeps the dynamic security plugin, or None."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


# ------------------------------------------------------------------------------- roles


def _deny_everything(priority: int = 0) -> List[Dict[str, Any]]:
    return [
        {"acltype": kind, "topic": topic, "allow": False, "priority": priority}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
        for topic in ("#",) + DOLLAR_ROOTS
    ]


def quarantine_role(thing: str) -> str:
    return QUARANTINE_ROLE_PREFIX + thing


def quarantine_acls(thing: str) -> List[Dict[str, Any]]:
    """Its reports out, their replies in, and nothing else. (Mosquitto 2.0's plugin has no %u
    in ACLs, so the role is per thing.)"""
    allow = []
    for fmt in FORMATS:
        allow.append({"acltype": "publishClientSend", "topic": report_topic(thing, fmt), "allow": True, "priority": 10})
        for reply in reply_topics(thing, fmt):
            allow += [
                {"acltype": "subscribeLiteral", "topic": reply, "allow": True, "priority": 10},
                {"acltype": "publishClientReceive", "topic": reply, "allow": True, "priority": 10},
            ]
    return allow + _deny_everything()


def admin_acls() -> List[Dict[str, Any]]:
    return [
        {"acltype": kind, "topic": DYNSEC_FILTER, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]


def initial_config(admins: Sequence[str]) -> Dict[str, Any]:
    """The plugin's starting state (its JSON file): `admins` (the engine) administer it; nothing
    is allowed by default, so whatever the plugin does not decide falls to the ACL file."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {"username": name, "textname": "Garrison broker control", "roles": [{"rolename": ADMIN_ROLE}]}
            for name in admins
        ],
        "groups": [],
        "roles": [
            {"rolename": ADMIN_ROLE, "textname": "administers the dynamic security plugin", "acls": admin_acls()},
            {"rolename": DISABLED_ROLE, "textname": "a disabled client: nothing at all", "acls": _deny_everything()},
        ],
    }


# ----------------------------------------------------------------------------- control


class BrokerControl:
    """Sends dynamic security commands over `link` and waits (bounded) for their answers."""

    def __init__(self, link: Any, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.link = link
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._answers: Dict[str, Dict[str, Any]] = {}
        self._waiting: set = set()
        self._send_lock = threading.Lock()

    # the link calls this for every message on DYNSEC_RESPONSE_TOPIC (paho's network thread)
    def on_response(self, payload: bytes) -> None:
        if len(payload) > MAX_RESPONSE_BYTES:
            return
        try:
            responses = json.loads(payload).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("ignored a malformed dynamic security response")
            return
        with self._cond:
            for item in responses if isinstance(responses, list) else ():
                cid = item.get("correlationData") if isinstance(item, dict) else None
                if isinstance(cid, str) and cid in self._waiting:  # ours are strings; a list is unhashable
                    self._answers[cid] = item
            self._cond.notify_all()

    def send(self, commands: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Run `commands` in order; their responses. BrokerControlError names the first that
        failed (an "already exists" / "not found" on an idempotent step is not a failure)."""
        commands = [dict(c, correlationData=uuid.uuid4().hex) for c in commands]
        ids = [c["correlationData"] for c in commands]
        with self._cond:
            self._waiting.update(ids)
        try:
            with self._send_lock:
                info = self.link.publish(DYNSEC_COMMAND_TOPIC, json.dumps({"commands": commands}).encode(), qos=1)
            if getattr(info, "rc", 0):
                raise BrokerControlError(f"could not send to the broker (paho rc {info.rc}): not connected?")
            deadline = time.monotonic() + self.timeout_s
            with self._cond:
                while not all(i in self._answers for i in ids):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerControlError(
                            f"the broker did not answer {commands[0]['command']} within {self.timeout_s:g} s "
                            "(is the dynamic security plugin loaded and this identity its administrator?)"
                        )
                    self._cond.wait(remaining)
                answers = [self._answers.pop(i) for i in ids]
        finally:
            with self._cond:
                self._waiting.difference_update(ids)
                for i in ids:
                    self._answers.pop(i, None)
        for command, answer in zip(commands, answers):
            error = answer.get("error")
            if error and error != _ALREADY.get(command["command"]):
                raise BrokerControlError(
                    f"{command['command']} {command.get('username') or command.get('rolename')}: {error}"
                )
        return answers

    # ---- the actions ----------------------------------------------------------------------

    def quarantine(self, thing: str) -> str:
        """Only its reports and replies from now on; its connection is dropped so this applies at once."""
        self.send(
            [
                {"command": "createClient", "username": thing, "textname": "restricted by Garrison"},
                {"command": "createRole", "rolename": quarantine_role(thing), "acls": quarantine_acls(thing)},
                {
                    "command": "addClientRole",
                    "username": thing,
                    "rolename": quarantine_role(thing),
                    "priority": QUARANTINE_PRIORITY,
                },
            ]
        )
        return f"thing {thing} quarantined on the broker (reports and replies only; connection dropped)"

    def release(self, thing: str) -> str:
        """Back to the rights it had before the quarantine."""
        if quarantine_role(thing) not in self.client_roles(thing):
            return f"thing {thing} was not quarantined on the broker"
        self.send(
            [
                {"command": "removeClientRole", "username": thing, "rolename": quarantine_role(thing)},
                {"command": "deleteRole", "rolename": quarantine_role(thing)},
            ]
        )
        return f"thing {thing} released on the broker (previous rights restored; connection dropped)"

    def disable(self, thing: str) -> str:
        """No rights at all, and disconnected now."""
        self.send(
            [
                {"command": "createClient", "username": thing, "textname": "restricted by Garrison"},
                {"command": "createRole", "rolename": DISABLED_ROLE, "acls": _deny_everything()},
                {
                    "command": "addClientRole",
                    "username": thing,
                    "rolename": DISABLED_ROLE,
                    "priority": DISABLED_PRIORITY,
                },
                {"command": "disableClient", "username": thing},
            ]
        )
        return f"thing {thing} disabled on the broker (disconnected; no rights if it reconnects)"

    def enable(self, thing: str) -> str:
        if DISABLED_ROLE not in self.client_roles(thing):
            return f"thing {thing} was not disabled on the broker"
        self.send(
            [
                {"command": "removeClientRole", "username": thing, "rolename": DISABLED_ROLE},
                {"command": "enableClient", "username": thing},
            ]
        )
        return f"thing {thing} enabled on the broker (previous rights restored)"

    def client_roles(self, thing: str) -> List[str]:
        """The plugin roles `thing` holds ([] when the plugin does not know it)."""
        try:
            answer = self.send([{"command": "getClient", "username": thing}])[0]
        except BrokerControlError as exc:
            if "Client not found" in str(exc):
                return []
            raise
        client = (answer.get("data") or {}).get("client") or {}
        roles = [r.get("rolename") for r in client.get("roles", []) if isinstance(r, dict)]
        return [name for name in roles if isinstance(name, str)]
