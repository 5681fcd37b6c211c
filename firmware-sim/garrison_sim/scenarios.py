"""Real attacks on namespaced devices, judged by a real engine: the detection matrix.

For each scenario a device namespace runs the real `garrison-agent` (reporting every 2 s) to a
Mosquitto in a "cloud" namespace, where the real `garrison-detect serve` judges reports against
the fleet profile. A clean control device runs alongside. After a baseline (every device has a
few accepted reports and nothing may alarm) every attack starts at once, with real sockets and
real traffic, and the runner waits for the engine's alerts on `garrison/alerts/{thing}`.

The matrix says, per scenario, which behaviors fired, after how many accepted reports and
seconds since the attack began, and which scenarios (and the control) raised no alarm.
Everything is torn down at the end, namespaces included, whatever happened.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from garrison.wire import topics

from . import FLEET_PROFILE, mqtt
from .live_attacks import DEFAULT_SCENARIOS, LIVE_ATTACKS, LiveAttack
from .netns import NetnsError, Topology, inside, supported

if TYPE_CHECKING:
    from .sinks import Sinks

log = logging.getLogger("garrison.sim.scenarios")

BROKER_PORT = 1883
AGENT_INTERVAL = 2.0
BASELINE_REPORTS = 3
CONTROL = "clean"
BLIND = "-blind"  # suffix of a device whose agent runs without socket events
BLIND_REPORTS = 4  # accepted reports a blind device makes under attack before the run ends
# The engine's sweep runs every second, and aws:disconnect-duration counts seconds instead of
# AWS's minutes: the fleet profile's "at most 10 minutes without a report" becomes 10 seconds
# (five missed reports at AGENT_INTERVAL), so `silent` is caught within the run.
ENGINE_CONFIG = 'sweep_interval = "1s"\ndisconnect_duration_unit = "1s"\n'


@dataclass
class Row:
    scenario: str
    thing: str
    expected: List[str]
    detected: bool = False
    behaviors: List[str] = field(default_factory=list)  # every behavior that went in-alarm, in order
    reports: Optional[int] = None  # accepted reports from the attack's start to the first alarm
    # (0 for a device that went silent)
    seconds: Optional[float] = None  # from the attack's start to the first alarm
    socket_events: bool = True  # False: the agent ran snapshot-only (a blind-spot probe)
    accepted: int = 0  # accepted reports from the attack's start to the end of the run
    cleared: List[str] = field(default_factory=list)  # behaviors that went alarm-cleared after an alarm


@dataclass
class Matrix:
    rows: List[Row]
    baseline_alerts: List[dict]  # alarms raised before any attack (must be none)
    violations: List[dict]  # `garrison-detect violations list --json` at the end
    baseline_seconds: float = 0.0

    def missed(self) -> List[str]:
        """Attack scenarios whose expected behaviors did not all fire."""
        return [
            row.scenario
            for row in self.rows
            if row.scenario != CONTROL
            and row.socket_events
            and not (row.detected and set(row.expected) <= set(row.behaviors))
        ]

    def blind_spots(self) -> List[str]:
        """Attacks on snapshot-only agents (socket events off) that raised no alarm."""
        return [row.scenario for row in self.rows if not row.socket_events and not row.detected]

    def false_alarms(self) -> int:
        return len(self.baseline_alerts) + sum(len(r.behaviors) for r in self.rows if r.scenario == CONTROL)

    @property
    def ok(self) -> bool:
        return not self.missed() and not self.false_alarms()

    def table(self) -> str:
        lines = [
            f"{'scenario':20} {'thing':26} {'detected':9} {'reports':>7} {'seconds':>7}  behaviors fired (expected)"
        ]
        for row in self.rows:
            detected = (
                "yes"
                if row.detected
                else ("no alarm" if row.scenario == CONTROL or not row.socket_events else "NO ALARM")
            )
            reports = "-" if row.reports is None else str(row.reports)
            seconds = "-" if row.seconds is None else f"{row.seconds:.1f}"
            fired = ", ".join(row.behaviors) or "-"
            lines.append(
                f"{row.scenario:20} {row.thing:26} {detected:9} {reports:>7} {seconds:>7}  "
                f"{fired} ({', '.join(row.expected) or 'none'})"
            )
        if self.ok:
            verdict = "every attack detected, no false alarm"
        else:
            verdict = "; ".join(
                filter(
                    None,
                    [
                        f"NOT DETECTED: {', '.join(self.missed())}" if self.missed() else "",
                        f"{self.false_alarms()} FALSE ALARM(S)" if self.false_alarms() else "",
                    ],
                )
            )
        if self.blind_spots():
            lines.append(f"snapshot-only agents (socket events off) missed: {', '.join(self.blind_spots())}")
        lines.append(
            f"baseline: {len(self.baseline_alerts)} alarm(s) over {self.baseline_seconds:.1f} s "
            f"of clean reports; verdict: {verdict}"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "missed": self.missed(),
                "rows": [asdict(r) for r in self.rows],
                "baseline_alerts": self.baseline_alerts,
                "violations": self.violations,
            },
            indent=2,
        )


class Observer:
    """An MQTT client living in the cloud namespace: engine replies and alerts, timestamped."""

    def __init__(self, cloud_ns: str):
        self.accepted: Dict[str, List[float]] = defaultdict(list)
        self.rejected: Dict[str, List[dict]] = defaultdict(list)
        self.alerts: List[tuple] = []  # (monotonic time, message)
        self._lock = threading.Lock()
        with inside(cloud_ns):  # the client's socket and network thread stay there
            self.client = mqtt.connect(f"mqtt://127.0.0.1:{BROKER_PORT}", client_id="garrison-sim-observer")
        self.client.on_message = self._on_message
        self.client.subscribe(
            [
                (topics.reply_filter(outcome="accepted"), 1),
                (topics.reply_filter(outcome="rejected"), 1),
                ("garrison/alerts/#", 1),
            ]
        )

    def _on_message(self, _client, _userdata, message):
        now = time.monotonic()
        reply = topics.parse_reply_topic(message.topic)  # (thing, format, outcome) or None
        with self._lock:
            if reply is None:
                try:
                    self.alerts.append((now, json.loads(message.payload)))
                except ValueError:
                    log.warning("unreadable alert on %s", message.topic)
            elif reply[2] == "accepted":
                self.accepted[reply[0]].append(now)
            else:
                self.rejected[reply[0]].append({"topic": message.topic, "payload": message.payload[:200]})

    def snapshot(self):
        with self._lock:
            return {k: list(v) for k, v in self.accepted.items()}, list(self.alerts)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class Run:
    """One scenario run: namespaces, broker, engine, agents, attacks; `close()` undoes it all."""

    def __init__(
        self, scenarios: Sequence[str], workdir: Path, profile: Path = FLEET_PROFILE, blind: Sequence[str] = ()
    ):
        self.scenarios = list(scenarios)
        self.workdir = workdir
        self.profile = profile
        # blind: scenarios also run against a snapshot-only agent (device "NAME-blind"), to show
        # what a snapshot misses
        self.blind = [name + BLIND for name in blind]
        self.things = {name: f"ns-{name}" for name in self.scenarios + self.blind + [CONTROL]}
        self.procs: Dict[str, subprocess.Popen] = {}  # log name -> process, in start order
        self.stopped: set = set()  # processes stopped on purpose
        self.attacks: Dict[str, LiveAttack] = {}
        self.topology: Optional[Topology] = None
        self.observer: Optional[Observer] = None
        self.sinks: Optional["Sinks"] = None
        self.db = workdir / "engine.db"

    def _topology(self) -> Topology:
        if self.topology is None:
            raise RuntimeError("Run.setup() first: the network namespaces do not exist yet")
        return self.topology

    def _observer(self) -> Observer:
        if self.observer is None:
            raise RuntimeError("Run.setup() first: nothing listens to the broker yet")
        return self.observer

    # -- setting up --------------------------------------------------------------------------------

    def _spawn(self, ns: str, argv: List[str], logname: str) -> subprocess.Popen:
        with open(self.workdir / logname, "ab") as out:
            proc = subprocess.Popen(
                self._topology().exec_argv(ns, argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        self.procs[logname] = proc
        return proc

    def _wait_broker(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-500:]}")
            with inside(self._topology().cloud):
                sock = socket.socket()
            try:
                sock.settimeout(0.5)
                sock.connect(("127.0.0.1", BROKER_PORT))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                sock.close()
        raise RuntimeError("mosquitto did not start in the cloud namespace")

    def _detect(self, *argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "garrison.detect.cli", "--db", str(self.db), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"garrison-detect {' '.join(argv)}: {done.stderr.strip()[-500:]}")
        return done

    def setup(self) -> None:
        from .sinks import Sinks

        topology = self.topology = Topology(list(self.things))
        cloud = topology.cloud
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {BROKER_PORT} 0.0.0.0",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        broker = self._spawn(cloud, ["mosquitto", "-c", str(conf)], "mosquitto.log")
        self._wait_broker(broker)
        self.sinks = Sinks(cloud)
        self._detect("profiles", "apply", str(self.profile), "--attach", "all")
        engine_config = self.workdir / "engine.toml"
        engine_config.write_text(ENGINE_CONFIG)
        self._spawn(
            cloud,
            [
                sys.executable,
                "-m",
                "garrison.detect.cli",
                "--db",
                str(self.db),
                "serve",
                "--broker",
                f"mqtt://127.0.0.1:{BROKER_PORT}",
                "--min-report-interval",
                "0",
                "--config",
                str(engine_config),
            ],
            "engine.log",
        )
        self.observer = Observer(cloud)
        for name, thing in self.things.items():
            state = self.workdir / "agents" / thing
            state.mkdir(parents=True, exist_ok=True)
            self._spawn(
                topology.devices[name],
                [
                    sys.executable,
                    "-m",
                    "garrison.agent.cli",
                    "run",
                    "--thing",
                    thing,
                    "--broker",
                    f"mqtt://{topology.addresses[name]}:{BROKER_PORT}",
                    "--interval",
                    str(AGENT_INTERVAL),
                    "--format",
                    "json",
                    "--state-dir",
                    str(state),
                    "--socket-events",
                    "off" if name in self.blind else "auto",
                ],
                f"agent-{thing}.log",
            )

    # -- running ------------------------------------------------------------------------------------

    def _check_alive(self) -> None:
        for logname, proc in self.procs.items():
            if logname not in self.stopped and proc.poll() is not None:
                tail = (self.workdir / logname).read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(
                    f"{logname[:-4]} exited with {proc.returncode} ({' '.join(tail) or 'no output'}); "
                    f"logs in {self.workdir}"
                )

    def _silence(self, name: str) -> None:
        logname = f"agent-{self.things[name]}.log"
        self.stopped.add(logname)
        self.procs[logname].terminate()

    def baseline(self, timeout: float) -> float:
        """Wait until every device has BASELINE_REPORTS accepted reports; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self._check_alive()
            accepted, _ = self._observer().snapshot()
            if all(len(accepted.get(t, ())) >= BASELINE_REPORTS for t in self.things.values()):
                return time.monotonic() - start
            time.sleep(0.1)
        accepted, _ = self._observer().snapshot()
        counts = {t: len(accepted.get(t, ())) for t in self.things.values()}
        rejected = {t: v[:1] for t, v in self._observer().rejected.items()}
        raise RuntimeError(
            f"devices did not report within {timeout:.0f} s: accepted {counts}, rejected {rejected}; "
            f"see the logs in {self.workdir}"
        )

    def attack(self, timeout: float) -> Matrix:
        baseline_seconds = self.baseline(timeout)
        _, alerts = self._observer().snapshot()
        baseline_alerts = [msg for _, msg in alerts if msg.get("violationEventType") == "in-alarm"]
        seen_alerts = len(alerts)
        started: Dict[str, float] = {}
        for name in self.scenarios + self.blind:
            attack = LIVE_ATTACKS[_attack_of(name)](self._topology().devices[name], self._topology().addresses[name])
            self.attacks[name] = attack
            started[name] = time.monotonic()
            if attack.silences:
                self._silence(name)
            else:
                try:
                    attack.start()
                except OSError as exc:
                    raise RuntimeError(f"attack {name} could not start: {exc}") from None
            log.info("attack %s started on %s", name, self.things[name])
        rows = {
            name: Row(
                name,
                thing,
                list(LIVE_ATTACKS[_attack_of(name)].expected) if name != CONTROL else [],
                socket_events=name not in self.blind,
            )
            for name, thing in self.things.items()
        }
        deadline = time.monotonic() + timeout
        last_alarm = None
        while time.monotonic() < deadline:
            self._check_alive()
            accepted, alerts = self._observer().snapshot()
            for when, msg in alerts[seen_alerts:]:
                row = next((r for r in rows.values() if r.thing == msg.get("thingName")), None)
                behavior = (msg.get("behavior") or {}).get("name", "?")
                if msg.get("violationEventType") == "alarm-cleared" and row is not None:
                    row.cleared.append(behavior)
                if msg.get("violationEventType") != "in-alarm":
                    continue
                if row is None or behavior in row.behaviors:
                    continue
                row.behaviors.append(behavior)
                last_alarm = when
                if not row.detected:
                    row.detected = True
                    begun = started.get(row.scenario, when)
                    row.seconds = when - begun
                    reports = sum(1 for t in accepted.get(row.thing, ()) if begun <= t <= when)
                    silenced = row.scenario in self.attacks and self.attacks[row.scenario].silences
                    row.reports = reports if silenced else max(reports, 1)
            seen_alerts = len(alerts)
            # with blind devices, every attacked device reports BLIND_REPORTS times under attack
            blind_seen = all(
                sum(1 for t in accepted.get(self.things[n], ()) if t >= started[n]) >= BLIND_REPORTS
                for n in (self.scenarios + self.blind if self.blind else ())
            )
            if blind_seen and all(
                rows[n].detected and set(rows[n].expected) <= set(rows[n].behaviors) for n in self.scenarios
            ):
                # one more report interval, so the control and the other behaviors have their say
                if last_alarm is not None and time.monotonic() - last_alarm > 2 * AGENT_INTERVAL:
                    break
            time.sleep(0.1)
        accepted, _ = self._observer().snapshot()
        for name, row in rows.items():
            begun = started.get(name, min(started.values(), default=0.0))
            row.accepted = sum(1 for t in accepted.get(row.thing, ()) if t >= begun)
        violations = json.loads(self._detect("violations", "list", "--json").stdout or "[]")
        return Matrix([rows[n] for n in self.things], baseline_alerts, violations, baseline_seconds)

    # -- tearing down -------------------------------------------------------------------------------

    def close(self) -> None:
        for attack in self.attacks.values():
            attack.stop()
        procs = list(self.procs.values())[::-1]  # agents, then engine, then broker
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.observer:
            self.observer.close()
        if self.sinks:
            self.sinks.close()
        if self.topology:
            self.topology.close()


def _attack_of(device: str) -> str:
    return device[: -len(BLIND)] if device.endswith(BLIND) else device


def run(
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
    workdir: Optional[Path] = None,
    timeout: float = 60.0,
    blind: Sequence[str] = (),
) -> Matrix:
    """Run the scenarios (plus the clean control) and return the detection matrix."""
    scenarios = list(dict.fromkeys(scenarios))
    unknown = [s for s in list(scenarios) + list(blind) if s not in LIVE_ATTACKS]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(LIVE_ATTACKS)})")
    if not supported():
        raise NetnsError("scenarios need root and iproute2 (network namespaces)")
    if shutil.which("mosquitto") is None:
        raise NetnsError("mosquitto is not installed (apt-get install mosquitto)")
    keep = workdir is not None
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="garrison-scenarios-"))
    workdir.mkdir(parents=True, exist_ok=True)
    current = Run(scenarios, workdir, blind=blind)
    try:
        current.setup()
        return current.attack(timeout)
    finally:
        current.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(args) -> int:
    """`garrison-sim scenarios`: print the matrix; exit 0 if every attack was caught and nothing else."""
    import signal

    scenarios = [s.strip() for s in args.only.split(",")] if args.only else list(DEFAULT_SCENARIOS)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt  # unwinds through run()'s cleanup

    signal.signal(signal.SIGTERM, interrupted)
    try:
        blind = [s.strip() for s in args.blind.split(",")] if getattr(args, "blind", None) else []
        matrix = run(scenarios, Path(args.workdir) if args.workdir else None, args.timeout, blind)
    except (ValueError, NetnsError, RuntimeError) as exc:
        print(f"garrison-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("garrison-sim: interrupted; namespaces removed", file=sys.stderr)
        return 130
    print(matrix.to_json() if args.json else matrix.table())
    return 0 if matrix.ok else 1
