"""kill -9 of `garrison-detect serve` in the middle of a stream loses nothing and duplicates
nothing: the broker keeps the engine's persistent session, the engine acknowledges a report
only after it is stored, and a redelivered report id is never applied twice."""
import json

from engine_stream import LIMIT, PROFILE, Engine, Publisher, Replies, cli, report
from mqtt_clients import wait_for

THINGS = [f"crash-{n:02d}" for n in range(16)]
REPORTS = 24
FIRST_ID = 1000


def violating(i: int) -> bool:
    return (i // 3) % 2 == 1  # three normal reports, three violating, ...


def connections(thing_index: int, i: int) -> int:
    # a violating value unique to (thing, report), so each event names the report behind it
    return LIMIT + thing_index * REPORTS + i if violating(i) else i % LIMIT


def expected_events(thing_index: int):
    events, open_ = [], False
    for i in range(REPORTS):
        if violating(i) and not open_:
            events.append(("in-alarm", connections(thing_index, i)))
        elif not violating(i) and open_:
            events.append(("alarm-cleared", None))
        open_ = violating(i)
    return events


def test_kill_9_during_a_stream_loses_and_duplicates_nothing(mosquitto, tmp_path):
    engine = Engine(tmp_path, mosquitto.url)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    cli(engine.db, "profiles", "apply", str(profile), "--attach", "all")
    plan = [(thing, FIRST_ID + i, report(FIRST_ID + i, connections(t, i)))
            for i in range(REPORTS) for t, thing in enumerate(THINGS)]
    replies = Replies(mosquitto.host, mosquitto.port)
    engine.start()
    publisher = Publisher(mosquitto.host, mosquitto.port, plan, rate=150).start()
    kills = 0
    try:
        for fraction in (0.3, 0.6):   # kill -9 twice while reports are being judged
            wait_for(lambda: replies.answered() >= fraction * len(plan), 120, f"{fraction:.0%} of the replies")
            engine.kill9()
            kills += 1
            engine.start()
        publisher.join()
        wait_for(lambda: replies.answered() == len(plan), 120, "a reply to every report")
    finally:
        publisher.close()
        replies.close()
        assert engine.stop() == 0
    assert kills == 2

    events = json.loads(cli(engine.db, "violations", "events", "--json"))
    for t, thing in enumerate(THINGS):
        mine = [e for e in events if e["thingName"] == thing]
        got = [(e["violationEventType"],
                e["metricValue"]["count"] if e["violationEventType"] == "in-alarm" else None) for e in mine]
        assert got == expected_events(t), thing                          # none lost, none twice
        episodes = {}
        for e in mine:
            episodes.setdefault(e["violationId"], []).append(e["violationEventType"])
        *closed, last = episodes.values()                                 # each opened once, cleared once
        assert closed == [["in-alarm", "alarm-cleared"]] * len(closed) and last == ["in-alarm"], episodes
    active = json.loads(cli(engine.db, "violations", "list", "--active", "--json"))
    assert sorted(v["thingName"] for v in active) == THINGS                # the last episode is still open
    things = {t["thingName"]: t for t in json.loads(cli(engine.db, "things", "list", "--json"))}
    assert {name: things[name]["reports"] for name in THINGS} == {name: REPORTS for name in THINGS}
    # the last report of every thing came after both kills and was accepted: the stream went on
    for thing in THINGS:
        assert "ACCEPTED" in replies.by_report[(thing, FIRST_ID + REPORTS - 1)]
