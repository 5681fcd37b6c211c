"""The state directory is the agent's alone (issue 10, item 11): 0700 directories and 0600 files
whatever the umask, temporary files made with O_EXCL, and no symlink in it is ever followed."""
import errno
import json
import os
import stat

import pytest

from garrison.agent.statefile import atomic_write, read_json
from agent_helpers import run_agent
from fixtures import free_port


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _as_umask_022():
    os.umask(0o022)


def test_a_new_state_directory_is_0700_and_its_files_0600_under_umask_022(tmp_path):
    state = tmp_path / "state"
    result = run_agent("run", "--once", "--thing", "private", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(state), "--reply-timeout", "1", preexec_fn=_as_umask_022)
    assert result.returncode == 3, result.stderr.decode()   # unreachable: the report stays spooled
    files = [p for p in state.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"last_report_id", "counters.json"}
    assert len(list((state / "spool").glob("*.json"))) == 1
    assert {p.name: _mode(p) for p in [state, state / "spool"]} == {"state": 0o700, "spool": 0o700}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_an_existing_state_directory_open_to_others_is_tightened(tmp_path):
    state = tmp_path / "state"
    (state / "spool").mkdir(parents=True)
    os.chmod(state, 0o755)
    os.chmod(state / "spool", 0o777)
    result = run_agent("collect", "--state-dir", str(state), "--collectors", "listening_tcp")
    assert result.returncode == 0, result.stderr.decode()
    assert _mode(state) == 0o700       # a look (collect) does not touch the spool
    result = run_agent("run", "--once", "--thing", "tight", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(state), "--reply-timeout", "1")
    assert result.returncode == 3, result.stderr.decode()
    assert (_mode(state), _mode(state / "spool")) == (0o700, 0o700)


def test_symlinked_state_files_are_neither_read_nor_written_through(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    far_future = 10 ** 15
    (outside / "id").write_text(str(far_future))
    (outside / "counters").write_text("precious")
    (state / "last_report_id").symlink_to(outside / "id")
    (state / "counters.json").symlink_to(outside / "counters")
    result = run_agent("run", "--once", "--thing", "linked", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(state), "--reply-timeout", "1")
    assert result.returncode == 3, result.stderr.decode()
    (spooled,) = (state / "spool").glob("*.json")
    assert int(spooled.stem) < far_future                # the link's content was not used
    assert (outside / "id").read_text() == str(far_future)      # nor written through
    assert (outside / "counters").read_text() == "precious"
    assert "symbolic link" in result.stderr.decode()


def test_a_symlink_in_the_spool_is_never_sent(tmp_path, shared_mosquitto, responder):
    state, secret = tmp_path / "state", tmp_path / "secret.json"
    (state / "spool").mkdir(parents=True)
    # a file the agent (root) can read and an attacker wants published: a valid report
    secret.write_text(json.dumps({"header": {"report_id": 1, "version": "1.0"},
                                  "custom_metrics": {"secret": [{"number": 42}]}}))
    (state / "spool" / f"{1:020d}.json").symlink_to(secret)
    result = run_agent("run", "--once", "--thing", "spool-link", "--broker", shared_mosquitto.url,
                       "--state-dir", str(state), "--reply-timeout", "20")
    assert result.returncode == 0, result.stderr.decode()
    (sent,) = responder.wait_for("spool-link", 1)
    assert sent != 1 and 1 not in responder.report_ids("spool-link")
    assert secret.exists() and not (state / "spool" / f"{1:020d}.json").is_symlink()


def test_a_symlinked_spool_directory_is_refused(tmp_path):
    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state.mkdir()
    elsewhere.mkdir()
    (state / "spool").symlink_to(elsewhere)
    result = run_agent("run", "--once", "--thing", "spooldir", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(state), "--reply-timeout", "1")
    assert result.returncode == 2
    assert "symbolic link" in result.stderr.decode()
    assert list(elsewhere.iterdir()) == []


def test_the_state_directory_itself_may_be_a_symlink(tmp_path):
    """systemd's DynamicUser makes /var/lib/NAME a link into /var/lib/private."""
    real, link = tmp_path / "private" / "agent", tmp_path / "agent"
    real.mkdir(parents=True)
    link.symlink_to(real)
    result = run_agent("run", "--once", "--thing", "dynamic", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(link), "--reply-timeout", "1")
    assert result.returncode == 3, result.stderr.decode()
    assert len(list((real / "spool").glob("*.json"))) == 1


def test_atomic_write_makes_0600_files_and_refuses_a_symlink(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "plain", b"1")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "plain") == 0o600
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "link", b"overwritten")
    assert raised.value.errno == errno.ELOOP
    assert (tmp_path / "target").read_text() == "keep" and (tmp_path / "link").is_symlink()
    assert read_json(tmp_path / "link") is None                 # not read through either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "plain", "target"]   # no temp left
