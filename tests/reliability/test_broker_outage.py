"""Nothing lost across a broker outage: the real agent spools, the real engine takes the backlog.

The broker is stopped mid-run and started again; every report id the agent made must reach the
engine exactly once, in order, and none may be Throttled although the backlog arrives at once.
"""
import json
import os
import re
import signal
import subprocess

from fixtures import Mosquitto, wait_for

CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}


def accepted_ids(log_path):
    return [int(rid) for rid in re.findall(r"report (\d+) accepted", log_path.read_text())]


def spooled_ids(spool):
    """Report ids waiting in the agent's spool (one file per report: ID.json or ID.cbor)."""
    return sorted(int(p.stem) for p in spool.glob("*") if p.suffix in (".json", ".cbor"))


def test_every_report_id_reaches_the_engine_exactly_once_across_a_broker_outage(tmp_path):
    db, engine_log, agent_log = tmp_path / "engine.db", tmp_path / "engine.log", tmp_path / "agent.log"
    # a broker that keeps sessions across a restart, as in production (docs/security.md)
    mosquitto = Mosquitto(tmp_path / "broker", persistent=True).start()
    # the engine throttles at its real rule (one report per 2 s, less a tenth of grace)
    engine = subprocess.Popen(["garrison-detect", "serve", "--broker", mosquitto.url, "--db", str(db),
                               "--min-report-interval", "2"], stdout=open(engine_log, "wb"),
                              stderr=subprocess.STDOUT, env=CLI_ENV)
    wait_for(lambda: "serving:" in engine_log.read_text(), 30, "the engine to subscribe")
    agent = subprocess.Popen(["garrison-agent", "run", "--thing", "outage-1", "--broker", mosquitto.url,
                              "--interval", "2", "--jitter", "0", "--state-dir", str(tmp_path / "state"),
                              "--publish-timeout", "1", "--log-level", "debug"], stdout=open(agent_log, "wb"),
                             stderr=subprocess.STDOUT, env=CLI_ENV)
    spool = tmp_path / "state" / "spool"
    try:
        wait_for(lambda: len(accepted_ids(agent_log)) >= 2, 60, "two accepted reports")
        mosquitto.stop()
        waiting = wait_for(lambda: (lambda ids: ids if len(ids) >= 3 else None)(spooled_ids(spool)), 60,
                           "three reports to wait in the spool")
        mosquitto.start()
        before = len(accepted_ids(agent_log))
        wait_for(lambda: "sent " in agent_log.read_text() and len(accepted_ids(agent_log)) >= before + 6,
                 60, "the backlog and fresh reports to be accepted")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        engine.send_signal(signal.SIGTERM)
        engine.wait(20)
        mosquitto.stop()
    log = agent_log.read_text()
    assert "rejected" not in log, log
    published = [int(rid) for rid in re.findall(r"report (\d+) published", log)]
    assert published == sorted(set(published)), f"published twice or out of order: {published}"
    assert "sent " in log and len(published) >= before + 5
    assert spooled_ids(spool) == [], "reports left in the spool"
    # every report made reached the engine once and was answered; none was throttled
    assert accepted_ids(agent_log) == published
    assert set(waiting) <= set(published), "a report that waited in the spool was never sent"
    things = json.loads(subprocess.run(["garrison-detect", "things", "list", "--json", "--db", str(db)],
                                       capture_output=True, text=True, check=True, env=CLI_ENV).stdout)
    (thing,) = [t for t in things if t["thingName"] == "outage-1"]
    assert thing["reports"] == len(published)
