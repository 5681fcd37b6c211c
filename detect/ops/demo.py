"""garrison-detect demo: the whole system on this machine, and an alarm you can watch.

Starts a local broker (Mosquitto, or the embedded amqtt), applies the example security profile
(detect/ops/examples/demo-profile.json), runs the detect engine and the device agent as child
processes, and prints every reply and alert as it happens. After a few accepted reports it
opens TCP port 4444 on 127.0.0.1, a port the profile forbids (NoBackdoorListener): the next
report raises an alarm; then it closes the port and the alarm clears. Ctrl-C (or --duration)
stops everything. Nothing listens beyond 127.0.0.1. Before the fleet starts, it audits a
demo fleet PKI in which one device certificate expires in 10 days, and prints the finding.
The engine serves its console at http://127.0.0.1:8765/console/ (or the next free port); the
demo prints the address and the sign-in token, so the fleet page shows the demo device going
into alarm and clearing.
"""

import argparse
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from garrison.wire import replies, topics
from garrison.detect.ops.broker import BrokerError, LocalBroker, start_local_broker
from garrison.agent.transports.paho_compat import new_client, parse_broker_url

PROFILE = Path(__file__).resolve().parent / "examples" / "demo-profile.json"
TRIP_BEHAVIOR = "NoBackdoorListener"
ENGINE_READY = "listening for Device Defender reports"  # MqttIngest's log line once subscribed
ALERTS_TOPIC = "garrison/alerts/#"


class DemoError(RuntimeError):
    """A part of the demo failed to start; the message says which and why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="garrison-detect demo",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="Example: garrison-detect demo --duration 60",
    )
    parser.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this many seconds (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the agent's report interval (default 10; the engine accepts one report per 5 s)",
    )
    parser.add_argument("--thing", default="demo-device", help="the demo device's thing name")
    parser.add_argument(
        "--trip-after",
        type=int,
        default=2,
        metavar="N",
        help="open the forbidden port after N accepted reports (default 2)",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="which local broker to start (default: mosquitto if installed)",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=8765,
        metavar="PORT",
        help="serve the console (and the HTTP API) on 127.0.0.1:PORT (default 8765; a free port if it is taken)",
    )
    parser.add_argument(
        "--workdir", help="keep the database, state and logs here (default: a temporary directory, removed at the end)"
    )
    return parser


def _console_port(preferred: int) -> int:
    """`preferred` if it is free on 127.0.0.1, else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise DemoError("no free port for the console")


def _trip_port() -> int:
    profile = json.loads(PROFILE.read_text())
    behavior = next(b for b in profile["behaviors"] if b["name"] == TRIP_BEHAVIOR)
    return behavior["criteria"]["value"]["ports"][0]


class Child:
    """A child process whose output goes to a log file we can show when it fails."""

    def __init__(self, name: str, argv: List[str], log_path: Path, env: Optional[dict] = None):
        self.name, self.argv, self.log_path = name, argv, log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"the {self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise DemoError(f"the {self.name} did not get ready in {timeout:g}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Watcher:
    """An MQTT client that passes replies and alerts to the main thread."""

    def __init__(self, url: str, thing: str):
        host, port, _, _, _ = parse_broker_url(url)
        self.events: "queue.Queue" = queue.Queue()
        self.client = new_client(f"garrison-demo-watcher-{thing}")
        self.client.on_message = lambda client, userdata, msg: self.events.put((msg.topic, msg.payload))
        self.client.connect(host, port)
        self.client.subscribe([(ALERTS_TOPIC, 1), (topics.reply_filter(thing), 1)])
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Demo:
    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir
        self.started = time.monotonic()
        self.children: List[Child] = []
        self.broker: Optional[LocalBroker] = None
        self.watcher: Optional[Watcher] = None
        self.listener: Optional[socket.socket] = None
        self.counts = {"accepted": 0, "rejected": 0, "in-alarm": 0, "alarm-cleared": 0, "alarm-invalidated": 0}
        self.port = _trip_port()
        self.tripped = False

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def start(self) -> None:
        db = self.workdir / "garrison.db"
        broker = self.broker = start_local_broker(self.workdir / "broker", kind=self.args.broker)
        self.say(f"broker: {broker.kind} on {broker.url}")
        detect = [sys.executable, "-m", "garrison.detect.cli"]
        applied = subprocess.run(
            detect + ["profiles", "apply", str(PROFILE), "--attach", "all", "--db", str(db)],
            capture_output=True,
            text=True,
        )
        if applied.returncode != 0:
            raise DemoError(f"applying {PROFILE.name} failed: {(applied.stderr or applied.stdout).strip()}")
        self.say(f"profile: {applied.stdout.strip()}")
        self.audit(detect, db)
        self.watcher = Watcher(broker.url, self.args.thing)
        port = _console_port(self.args.console_port)
        token = secrets.token_urlsafe(16)  # handed to serve in its environment, not on its command line
        engine = Child(
            "engine",
            detect
            + [
                "serve",
                "--broker",
                broker.url,
                "--db",
                str(db),
                "--min-report-interval",
                "5",
                "--api-bind",
                f"127.0.0.1:{port}",
            ],
            self.workdir / "engine.log",
            env=dict(os.environ, GARRISON_API_TOKEN=token),
        )
        self.children.append(engine)
        engine.wait_for_log(ENGINE_READY, 30)
        self.say(f"engine: running (log: {engine.log_path})")
        self.console_url = f"http://127.0.0.1:{port}/console/"
        self.say(f"console: {self.console_url}  (sign in with the token {token})")
        agent = Child(
            "agent",
            [
                sys.executable,
                "-m",
                "garrison.agent.cli",
                "run",
                "--broker",
                broker.url,
                "--thing",
                self.args.thing,
                "--interval",
                f"{self.args.interval:g}",
                "--state-dir",
                str(self.workdir / "agent-state"),
            ],
            self.workdir / "agent.log",
        )
        self.children.append(agent)
        self.say(f"agent: reporting as {self.args.thing} every {self.args.interval:g}s (log: {agent.log_path})")
        self.say(
            f"after {self.args.trip_after} accepted reports the demo opens TCP port {self.port}, "
            f"which the profile forbids ({TRIP_BEHAVIOR})"
        )

    def audit(self, detect: List[str], db: Path) -> None:
        """Audit a demo fleet PKI whose second device certificate expires soon; print the finding."""
        from garrison.detect.ops import pki

        ca = pki.FleetCA(self.workdir / "pki")
        ca.init()
        ca.issue_thing(self.args.thing)
        ca.issue_thing("demo-expiring", days=10)
        ran = subprocess.run(
            detect
            + [
                "audit",
                "run",
                "--pki",
                str(ca.dir),
                "--check",
                "DEVICE_CERTIFICATE_EXPIRING_CHECK",
                "--json",
                "--db",
                str(db),
            ],
            capture_output=True,
            text=True,
        )
        if ran.returncode != 0:
            raise DemoError(f"the audit failed: {(ran.stderr or ran.stdout).strip()}")
        for finding in json.loads(ran.stdout)["findings"]:
            thing = finding["nonCompliantResource"].get("additionalInfo", {}).get("thingName", "?")
            self.say(
                f"audit: {finding['checkName']} {finding['severity']} on {thing}: {finding['reasonForNonCompliance']}"
            )

    def run(self) -> None:
        if self.watcher is None:
            raise DemoError("the demo runs after start()")
        watcher = self.watcher
        deadline = None if self.args.duration is None else self.started + self.args.duration
        while deadline is None or time.monotonic() < deadline:
            for child in self.children:
                if child.proc.poll() is not None:
                    raise DemoError(
                        f"the {child.name} stopped (exit code {child.proc.returncode}):\n{child.log_tail()}"
                    )
            try:
                topic, payload = watcher.events.get(timeout=0.5)
            except queue.Empty:
                continue
            self.show(topic, payload)

    def show(self, topic: str, payload: bytes) -> None:
        reply = replies.parse(topic, payload)
        if reply is not None:
            self.counts["accepted" if reply.accepted else "rejected"] += 1
            self.say(f"reply  {reply.thing}: {reply.describe()}")
            if reply.accepted and not self.tripped and self.counts["accepted"] >= self.args.trip_after:
                self.open_port()
            return
        try:
            alert = json.loads(payload)
        except ValueError:
            return
        if not isinstance(alert, dict):
            return
        event = alert.get("violationEventType", "?")
        behavior = alert.get("behavior")
        name = behavior.get("name") if isinstance(behavior, dict) else behavior
        self.counts[event] = self.counts.get(event, 0) + 1
        label = {"in-alarm": "ALARM  ", "alarm-cleared": "CLEARED"}.get(event, event.upper())
        explained = alert.get("explanation")  # e.g. "4444/tcp opened by /usr/bin/python3, pid 812, user me"
        self.say(
            f"{label} {alert.get('thingName')}: {alert.get('securityProfileName')}/{name} {event}, "
            f"value {json.dumps(alert.get('metricValue'))}" + (f": {explained}" if explained else "")
        )
        if event == "in-alarm" and name == TRIP_BEHAVIOR and self.listener is not None:
            self.listener.close()
            self.listener = None
            self.say(f"closed port {self.port}; the next report clears the alarm")

    def open_port(self) -> None:
        self.tripped = True
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
            sock.listen()
        except OSError as exc:
            sock.close()
            self.say(
                f"port {self.port} is taken on this machine ({exc.strerror}): whatever holds it "
                "trips the alarm just the same"
            )
            return
        self.listener = sock
        self.say(f"opened TCP port {self.port} on 127.0.0.1: the next report should raise an alarm")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.listener is not None:
            self.listener.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.broker is not None:
            self.broker.stop()

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c['accepted']} reports accepted, {c['rejected']} rejected; "
            f"alarms: {c['in-alarm']} raised, {c['alarm-cleared']} cleared"
        )


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        print("garrison-detect demo: --duration must be more than 0", file=sys.stderr)
        return 2
    if args.interval < 5.5:
        print(
            "garrison-detect demo: --interval must be at least 5.5 s (the demo engine accepts one "
            "report per 5 s per device)",
            file=sys.stderr,
        )
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="garrison-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(args, workdir)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 0
    try:
        demo.start()
        demo.run()
    except KeyboardInterrupt:
        print(flush=True)
    except (DemoError, BrokerError) as exc:
        print(f"garrison-detect demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.say("stopping")
        demo.stop()
        demo.say(demo.summary())
        if args.workdir:
            demo.say(f"database, state and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
