"""Carries out the actions that reach outside the store, after the transaction that logged them.

garrison.detect.respond.actions logs quarantine, release, disable, enable, run-command and
reconfigure as `pending` in the same transaction as the event (or the operator's request) that
asked for them, so a crash loses none. `ActionRunner` claims each pending entry (so two
processes never both run one), does it, and writes the outcome and detail into the same log
entry: `done`, `no-change`, `sent`, or `failed`. In `serve` it is a thread woken after every
committed report and polling once a second, which also picks up requests the CLI wrote into
the database. An entry found `running` at start (the process died while doing it) runs again:
broker actions are idempotent; a command may then run twice.
"""

import json
import logging
import os
import select
import subprocess
import threading
import time
from typing import IO, Any, Callable, Dict, Optional, cast

from garrison.detect.respond.actions import BROKER_TYPES, RECONFIGURE, RUN_COMMAND
from garrison.detect.respond.brokercontrol import BrokerControl, BrokerControlError
from garrison.detect.respond.revocation import NOT_DURABLE, Revocation
from garrison.detect.state.store import Store
from garrison.wire.topics import control_topic

log = logging.getLogger("garrison.actions")

MAX_OUTPUT_BYTES = 4096  # of a command's output kept in the log (the rest is read and dropped)
POLL_S = 1.0


class ActionRunner:
    """broker: a BrokerControl (None: broker actions fail, saying why); publish(topic, payload, qos):
    the engine's MQTT publish, for reconfiguration requests (None: likewise); revocation: makes
    `disable` durable by revoking the certificate (None: the broker step only, and the log says so)."""

    def __init__(
        self,
        store: Store,
        broker: Optional[BrokerControl] = None,
        publish: Optional[Callable[..., Any]] = None,
        connected: Callable[[], bool] = lambda: True,
        revocation: Optional[Revocation] = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self.store = store
        self.broker = broker
        self.revocation = revocation
        self.now_ms = now_ms
        self.publish = publish
        self.connected = connected  # while False, actions that need the broker wait, still pending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def run_pending(self, limit: int = 100) -> int:
        """Carry out what is pending now; how many were done."""
        done = 0
        for entry in self.store.pending_actions(limit):
            needs_broker = entry["action"].get("type") in BROKER_TYPES + (RECONFIGURE,)
            if needs_broker and (self.broker is not None or self.publish is not None) and not self.connected():
                continue  # the connection is down: carried out once it is back, not failed
            if self.store.claim_action(entry["seq"]):
                outcome, detail = self.execute(entry)
                self.store.finish_action(entry["seq"], outcome, detail)
                level = logging.ERROR if outcome == "failed" else logging.WARNING
                log.log(
                    level,
                    "action %d (%s on %s): %s: %s",
                    entry["seq"],
                    entry["action"].get("type"),
                    entry["thingName"],
                    outcome,
                    detail,
                )
                done += 1
        return done

    def execute(self, entry: Dict[str, Any]):
        action, thing = entry["action"], entry["thingName"]
        kind = action.get("type")
        try:
            if kind in BROKER_TYPES:
                broker = self.broker
                if broker is None:
                    return "failed", (
                        f"{kind} {thing}: no broker control here (serve with --broker-control, "
                        "on a broker set up by broker-config --dynamic-security)"
                    )
                if kind == "disable":
                    return self.disable(broker, thing)
                detail = getattr(broker, kind)(thing)
                if kind == "enable" and self.revocation is not None:
                    detail += self.revocation.enable_note(thing)
                return "done", detail
            if kind == RUN_COMMAND:
                return run_command(
                    action["command"], action.get("timeout_seconds", 10), action.get("event") or {"thingName": thing}
                )
            if kind == RECONFIGURE:
                if self.publish is None:
                    return "failed", f"reconfigure {thing}: no broker connection here"
                info = self.publish(control_topic(thing), json.dumps(action["request"]).encode(), qos=1)
                if getattr(info, "rc", 0):
                    return "failed", f"reconfigure {thing}: not connected to the broker (rc {info.rc})"
                return "sent", f"sent {json.dumps(action['request'], sort_keys=True)} to {control_topic(thing)}"
            return "failed", f"unknown action type {kind!r}"
        except BrokerControlError as exc:
            return "failed", str(exc)
        except Exception as exc:  # one broken action must not stop the others
            log.exception("action %s on %s failed", kind, thing)
            return "failed", f"{type(exc).__name__}: {exc}"

    def disable(self, broker: BrokerControl, thing: str):
        """Revoke first, then drop the connection: the broker has re-read its CRL when the device
        reconnects (garrison.detect.respond.revocation says why), so its reconnect is refused."""
        if self.revocation is None:
            return "done", f"{broker.disable(thing)}; {NOT_DURABLE}"
        refused, steps = self.revocation.revoke(thing, self.now_ms())
        try:
            steps.append(broker.disable(thing))
        except BrokerControlError as exc:  # the revocation stands: say both
            return "failed", "; ".join(steps + [str(exc)])
        if refused:
            steps.append("its reconnect is refused at the TLS handshake")
        return ("done" if refused else "failed"), "; ".join(steps)

    # ---- the thread serve runs ------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> "ActionRunner":
        self.store.requeue_running_actions()
        self._thread = threading.Thread(target=self._loop, name="garrison-actions", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                self.run_pending()
            except Exception:
                log.exception("the action runner hit an error; retrying")


def run_command(argv, timeout_s: float, event: Dict[str, Any]):
    """Run argv (no shell) with the event as JSON on stdin, in its own process group, killed at
    the deadline; (outcome, detail) with the exit status and the first MAX_OUTPUT_BYTES of output."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        return "failed", f"could not start {argv[0]}: {exc.strerror or exc}"
    # both are pipes (PIPE above); Popen's stubs type them Optional whatever the arguments
    stdin, stdout = cast(IO[bytes], proc.stdin), cast(IO[bytes], proc.stdout)
    deadline = time.monotonic() + timeout_s
    kept, timed_out = bytearray(), False
    try:
        try:
            stdin.write(json.dumps(event).encode() + b"\n")
        except BrokenPipeError:
            pass  # it did not read its input: its business
        stdin.close()
        fd = stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            kept += chunk[: max(0, MAX_OUTPUT_BYTES - len(kept))]
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        if timed_out or proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
        stdout.close()
    output = kept.decode("utf-8", "replace").strip()
    if timed_out:
        return "failed", f"{argv[0]} killed after {timeout_s:g} s; output: {output!r}"
    status = proc.returncode
    return ("done" if status == 0 else "failed"), f"{argv[0]} exited with status {status}; output: {output!r}"
