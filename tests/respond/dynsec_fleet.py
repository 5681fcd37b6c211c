"""A live fleet for the response tests: a fleet CA, device and engine certificates, and Mosquitto
started (verbose, so its log shows denials) on `broker-config --dynamic-security`'s files."""
import os
import subprocess
from pathlib import Path

from garrison.detect.ops import brokerconf, pki
from garrison.detect.respond import brokercontrol
from fixtures import free_port, wait_for_port
from mqtt_clients import Client


class DynsecFleet:
    """A fleet CA, device and engine certificates, and Mosquitto on the generated configuration
    with the dynamic security plugin."""

    def __init__(self, workdir: Path, things=("pump-1", "pump-2")):
        self.ca = pki.FleetCA(workdir / "pki")
        self.ca.init()
        self.ca.issue_server(["localhost", "127.0.0.1"])
        self.engine_files = self.ca.issue_engine()
        for thing in things:
            self.ca.issue_thing(thing)
        self.port = free_port()
        self.conf, _ = brokerconf.write(workdir / "broker", self.ca.cert_path, self.ca.dir / "server.crt",
                                        self.ca.dir / "server.key", port=self.port, bind="127.0.0.1",
                                        run_as="root" if os.geteuid() == 0 else None, dynamic_security=True)
        self.log = workdir / "mosquitto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf), "-v"], stdout=out, stderr=out)
        wait_for_port("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def device(self, thing: str, **kwargs) -> Client:
        cert, key = self.ca.thing_paths(thing)
        return Client("127.0.0.1", self.port, str(self.ca.cert_path), str(cert), str(key), **kwargs)

    def engine(self, **kwargs) -> Client:
        cert, key = self.engine_files
        return Client("127.0.0.1", self.port, str(self.ca.cert_path), str(cert), str(key), **kwargs)

    def engine_with_control(self):
        """The engine's one connection (a second with its certificate would take over the first,
        as `serve` knows), carrying broker control: (client, BrokerControl)."""
        control = brokercontrol.BrokerControl(None)
        engine = self.engine(client_id="garrison-detect", on_message=lambda c, topic, payload: (
            control.on_response(payload) if topic == brokercontrol.DYNSEC_RESPONSE_TOPIC else None)).wait_connected()
        control.link = engine.client
        assert engine.subscribe(brokercontrol.DYNSEC_RESPONSE_TOPIC) == [1]
        return engine, control

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
