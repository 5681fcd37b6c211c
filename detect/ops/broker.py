"""Start a local MQTT broker on loopback: Mosquitto if installed, else the embedded amqtt.

For one-machine setups, the demo and the test suite. Mosquitto (from the OS packages) is the
real thing; the pure-Python amqtt broker is the fallback where Mosquitto is absent. Both listen
on 127.0.0.1 only and run as a child process we stop on `.stop()`. Mosquitto can also serve TLS
(mutual TLS with the certificate's CN as the user name) and take extra configuration lines
(`mosquitto_config`), which is how the tests run it (tests/fixtures.py).
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger("garrison.broker")
HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The local broker could not be started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as brokers do: TIME_WAIT is fine
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise BrokerError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class TlsListener:
    """The listener's TLS files; with `require_certificate`, clients need one signed by `ca` and
    its CN becomes their user name (what per-thing ACLs match)."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


class LocalBroker:
    """A running local broker: `.url`, `.kind` ("mosquitto" or "amqtt"), `.stop()`, `.restart()`."""

    def __init__(
        self, kind: str, port: int, proc: subprocess.Popen, log_path: Path, argv: Sequence[str] = (), tls: bool = False
    ):
        self.kind, self.host, self.port = kind, HOST, port
        self.proc, self.log_path = proc, log_path
        self.argv, self.tls = list(argv), tls

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start the same broker on the same port (persistent sessions survive)."""
        self.stop()
        self.proc = _spawn(self.kind, self.argv, self.port, self.log_path, timeout)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LocalBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def mosquitto_config(
    workdir: Path,
    port: int,
    persistent: bool = True,
    tls: Optional[TlsListener] = None,
    extra_config: str = "",
    log_types: Sequence[str] = ("error", "warning", "notice"),
) -> Path:
    """Write WORKDIR/mosquitto.conf for a loopback listener on `port`; returns its path."""
    workdir = Path(workdir)
    # persistence keeps persistent sessions and queued QoS 1 reports across broker restarts
    persistence = ["persistence true", f"persistence_location {workdir}/"] if persistent else ["persistence false"]
    lines = [
        f"listener {port} {HOST}",
        "allow_anonymous true",
        *persistence,
        "log_dest stderr",
        *(f"log_type {t}" for t in log_types),
        "max_queued_messages 100000",
        "set_tcp_nodelay true",
    ]  # replies without Nagle delay (an agent waits for each)
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to the mosquitto user and cannot use workdir
    if tls:
        lines += [
            f"cafile {tls.ca}",
            f"certfile {tls.cert}",
            f"keyfile {tls.key}",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
        ]
        if tls.require_certificate:
            lines.append("use_identity_as_username true")
    if extra_config:
        lines.append(extra_config)
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def mosquitto_argv(config: Path) -> List[str]:
    return [shutil.which("mosquitto") or "mosquitto", "-c", str(config)]


def launch(
    kind: str, argv: Sequence[str], port: int, log_path: Path, timeout: float = 20.0, tls: bool = False
) -> LocalBroker:
    """Run the broker `argv` (its output appended to `log_path`) and wait until `port` answers."""
    proc = _spawn(kind, argv, port, log_path, timeout)
    broker = LocalBroker(kind, port, proc, log_path, argv, tls)
    log.info("started %s on %s (log: %s)", kind, broker.url, log_path)
    return broker


def _spawn(kind: str, argv: Sequence[str], port: int, log_path: Path, timeout: float) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(list(argv), stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)
    if not _wait_for_port(port, proc, timeout):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace")[-1000:].strip()
        raise BrokerError(f"{kind} did not start on {HOST}:{port}: {tail or 'no output'}")
    return proc


def _amqtt_argv(workdir: Path, port: int):
    config = {  # JSON is YAML; amqtt reads it with its YAML loader
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    path = workdir / "amqtt.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return [sys.executable, "-m", "garrison.detect.ops.broker", "--serve-amqtt", str(path)]


def start_local_broker(workdir, port: Optional[int] = None, kind: str = "auto", timeout: float = 20.0) -> LocalBroker:
    """Start a broker on 127.0.0.1:`port` (a free one if None); `kind`: auto|mosquitto|amqtt."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "auto":
        kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
    if kind == "mosquitto":
        if not shutil.which("mosquitto"):
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    elif kind == "amqtt":
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise BrokerError(
                "neither mosquitto nor amqtt is installed "
                "(apt-get install mosquitto, or pip install 'garrison[detect]')"
            ) from None
    else:
        raise BrokerError(f"unknown broker kind {kind!r} (auto, mosquitto or amqtt)")
    if port:
        _check_port_free(port)
    else:
        port = _free_port()
    argv = mosquitto_argv(mosquitto_config(workdir, port)) if kind == "mosquitto" else _amqtt_argv(workdir, port)
    return launch(kind, argv, port, workdir / f"{kind}.log", timeout)


# ------------------------------------------------------------------ the embedded amqtt broker


class _ClientMayPublish(str):
    """A topic amqtt lets a client publish although it starts with "$".

    amqtt 0.12 refuses every client PUBLISH to a "$" topic (reading MQTT-4.7.2-1 strictly), but
    Device Defender's topics are "$aws/things/..." and devices publish there, as on AWS IoT.
    """

    def startswith(self, prefix, *args):
        return False if prefix == "$" else str.startswith(self, prefix, *args)


def _serve_amqtt(config_path: str) -> None:
    """Run amqtt in this process until SIGTERM/SIGINT, letting clients publish to $aws/..."""
    import asyncio
    import signal

    from amqtt.broker import Broker
    from amqtt.utils import read_yaml_config

    class DeviceDefenderBroker(Broker):
        async def _handle_message_delivery(self, client_session, handler, wait_deliver):
            message = wait_deliver.result()
            if message is not None and isinstance(message.topic, str) and message.topic.startswith("$aws/"):
                message.topic = _ClientMayPublish(message.topic)
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    broker = DeviceDefenderBroker(read_yaml_config(config_path), loop=loop)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    async def serve():
        await broker.start()
        await stopping.wait()
        await broker.shutdown()

    loop.run_until_complete(serve())
    loop.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-amqtt":
        _serve_amqtt(sys.argv[2])
    else:
        sys.exit("usage: python -m garrison.detect.ops.broker --serve-amqtt CONFIG")
