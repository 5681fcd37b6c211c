"""Any local user may open tens of thousands of sockets (76,000 from four unprivileged processes
took one collection to 100 MB RSS, past the unit's MemoryMax=96M, which kills the agent each cycle). The
socket collectors keep a bounded number of records, and a flood on one port hides no other."""
import logging
import resource
import subprocess
import sys

import pytest

from garrison.collectors import sockets

FLOOD = 12000  # one process; more than base.MAX_SOCKETS
FLOODER = (
    "import resource, socket, sys\n"
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n + 50, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
    "keep = []\n"
    "for i in range(n):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind((f'127.77.{i // 250}.{i % 250 + 1}', 9000)); s.listen(1); keep.append(s)\n"
    "lone = socket.socket(); lone.bind(('127.0.0.1', 0)); lone.listen(1)\n"
    "print(lone.getsockname()[1], flush=True); sys.stdin.read()\n"
)


@pytest.fixture
def flood():
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < FLOOD + 50:
        pytest.skip("the hard limit on open files is too low for the flood")
    proc = subprocess.Popen([sys.executable, "-c", FLOODER, str(FLOOD)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("backend", ["netlink", "procfs"])
def test_a_flood_of_sockets_is_bounded_and_hides_no_other_port(flood, backend, caplog):
    caplog.set_level(logging.WARNING)
    found = sockets.listening("tcp", backend)
    assert len(found) <= 10100  # base.MAX_SOCKETS (10,000) of the flood, plus the few other ports
    assert {flood, 9000} <= {s.port for s in found}  # the lone port is seen, wherever the kernel lists it
    assert any("sockets not itemised" in r.getMessage() and backend in r.getMessage() for r in caplog.records)


def test_the_owner_scan_keeps_only_the_sockets_of_the_report(flood):
    """The scan of /proc/<pid>/fd held every socket inode of every process (76,000 of a flood:
    +11 MB, past the agent's 30 MB budget); it keeps those asked for."""
    from garrison.collectors import processes

    [lone] = [s for s in sockets.listening("tcp") if s.port == flood]
    owners = processes.socket_owners(wanted={lone.inode})
    assert list(owners) == [lone.inode] and owners[lone.inode][0] > 0
    assert len(processes.socket_owners()) > 12000  # without `wanted`: every socket, as before
