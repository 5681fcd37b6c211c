"""Run the agent's report cycle many times in one process and print its memory over time.

    python3 agent_probe.py BROKER_URL STATE_DIR THING WARMUP ROUNDS CYCLES_PER_ROUND

Each cycle is the agent's own: collect (real kernel), build, encode, spool on disk, publish
QoS 1 to a real broker, take the reply. Prints one JSON line: RSS (bytes), open fds and
threads after the warm-up and after each round, and how many replies came back.
"""
import gc
import json
import sys
import threading

import psutil

from garrison.agent.api import Agent


def main(broker, state_dir, thing, warmup, rounds, per_round):
    agent = Agent(thing=thing, broker=broker, state_dir=state_dir, interval=1, log_level="warning")
    daemon = agent.daemon
    replies = []
    original = daemon._on_reply

    def count_reply(reply):
        replies.append(reply.report_id)
        del replies[:-10]  # keep the probe itself from growing
        count_reply.total += 1
        original(reply)
    count_reply.total = 0
    daemon._on_reply = count_reply
    daemon.start()
    if not daemon.transport.wait_connected(20):
        raise SystemExit("the agent could not connect")
    process = psutil.Process()

    def sample():
        gc.collect()
        return {"rss": process.memory_info().rss, "fds": process.num_fds(), "threads": threading.active_count()}

    for _ in range(warmup):
        daemon.cycle()
    samples = [sample()]
    for _ in range(rounds):
        for _ in range(per_round):
            daemon.cycle()
        samples.append(sample())
    spooled = len(daemon.spool)
    agent.close()
    print(json.dumps({"samples": samples, "replies": count_reply.total, "spooled": spooled,
                      "cycles": warmup + rounds * per_round}))


if __name__ == "__main__":
    broker, state_dir, thing, *numbers = sys.argv[1:]
    main(broker, state_dir, thing, *map(int, numbers))
