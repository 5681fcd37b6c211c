"""A full disk does not silence the agent (issue 10, item 7): with its state directory on a
small tmpfs filled to the last byte, each report it builds is still sent (held in memory), it
says once that spooling is off and once that it is back, and leaves no temporary file."""
import os
import signal
import subprocess

import pytest

from agent_helpers import AGENT
from fixtures import wait_for


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted by this test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory):
    """Write a file until the filesystem has no byte left; returns it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (4096, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == 28, exc
    return filler


def test_a_full_state_directory_still_sends_each_report_and_says_so_once(small_tmpfs, tmp_path,
                                                                          shared_mosquitto, responder):
    state = small_tmpfs / "state"
    state.mkdir()
    stray = state / ".last_report_id.4242.tmp"       # a write cut short by an earlier full disk
    stray.write_bytes(b"17")
    filler = _fill(small_tmpfs)
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    proc = subprocess.Popen(AGENT + ["run", "--thing", "disk-full", "--broker", shared_mosquitto.url,
                                     "--interval", "0.3", "--jitter", "0", "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    try:
        sent = responder.wait_for("disk-full", 4, timeout=60)
        assert len(sent) >= 4 and sent == sorted(set(sent)), sent
        assert not stray.exists()                        # temp files are cleaned at start
        assert not list(state.rglob("*.tmp")), list(state.rglob("*"))
        filler.unlink()                                  # room again
        wait_for(lambda: "spooling is back on" in log.read_text(), 30, "spooling to come back")
        count = len(responder.report_ids("disk-full"))
        assert len(responder.wait_for("disk-full", count + 2, timeout=30)) >= count + 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "could not build a report" not in text, text
    assert text.count("spooling is off") == 1, text
    assert text.count("spooling is back on") == 1, text
    assert "No space left on device" in text
    assert not list(state.rglob("*.tmp"))
