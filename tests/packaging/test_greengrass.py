"""The Greengrass v2 component: recipe structure, configuration keys that reach real agent
options, IPC access control covering exactly the agent's topics, and the IPC transport.

No Greengrass nucleus can run here, so the transport is exercised against a stand-in IPC client
with GreengrassCoreIPCClientV2's methods (checked against the real SDK when it is installed);
messages use the SDK's real model classes.
"""
import inspect
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read the recipe (dev extra)")

import garrison.agent  # noqa: E402
from garrison.agent import config, report  # noqa: E402
from garrison.wire import replies, topics  # noqa: E402
from garrison.agent.transports import greengrass  # noqa: E402
from garrison.agent.transports.base import TransportError  # noqa: E402

RECIPE_PATH = Path(__file__).resolve().parents[2] / "packaging" / "greengrass" / "recipe.yaml"
THING_VAR = "{iot:thingName}"
# AWS's aws.greengrass.DeviceDefender 3.x configuration, with its defaults.
AWS_KEYS = {"SampleIntervalSeconds": 300, "UseInstaller": True}


@pytest.fixture(scope="module")
def recipe():
    return yaml.safe_load(RECIPE_PATH.read_text())


def _linux_manifest(recipe):
    (manifest,) = [m for m in recipe["Manifests"] if m["Platform"]["os"] == "linux"]
    return manifest


def test_recipe_has_the_required_fields(recipe):
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert re.fullmatch(r"[A-Za-z0-9.]+", recipe["ComponentName"])
    assert recipe["ComponentVersion"] == garrison.agent.__version__
    lifecycle = _linux_manifest(recipe)["Lifecycle"]
    assert "exec " in lifecycle["run"]["Script"] and lifecycle["run"]["RequiresPrivilege"] is False
    (artifact,) = _linux_manifest(recipe)["Artifacts"]
    wheel = f"garrison-{garrison.agent.__version__}-py3-none-any.whl"
    assert artifact["URI"].endswith(f"/{recipe['ComponentName']}/{garrison.agent.__version__}/{wheel}")
    assert f"{{artifacts:path}}/{wheel}[aws]" in lifecycle["install"]["Script"]


def test_configuration_mirrors_aws_device_defender(recipe):
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    for key, value in AWS_KEYS.items():
        assert defaults[key] == value


def _references(recipe):
    text = yaml.safe_dump(recipe["Manifests"])
    return set(re.findall(r"\{configuration:/(\w+)\}", text))


def test_every_configuration_key_is_used_and_every_reference_exists(recipe):
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert _references(recipe) == set(defaults) - {"accessControl"}


def _rendered_environment(recipe, thing, work):
    """The lifecycle environment as the nucleus would interpolate it with the default configuration."""
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]

    def render(value):
        value = value.replace(THING_VAR, thing).replace("{work:path}", str(work))
        return re.sub(r"\{configuration:/(\w+)\}", lambda m: str(defaults[m.group(1)]).lower()
                      if isinstance(defaults[m.group(1)], bool) else str(defaults[m.group(1)]), value)

    return {key: render(value) for key, value in _linux_manifest(recipe)["Lifecycle"]["Setenv"].items()}


def test_setenv_variables_are_real_agent_options(recipe):
    env_names = {opt.env for opt in config.OPTIONS}
    assert set(_linux_manifest(recipe)["Lifecycle"]["Setenv"]) <= env_names


def test_default_configuration_loads_in_the_agent(recipe, tmp_path):
    """The agent accepts what the component hands it: interval, format, names, transport."""
    environ = _rendered_environment(recipe, "gg-core-1", tmp_path)
    loaded = config.load(environ=environ)
    assert loaded.transport == "greengrass"
    assert loaded.thing == "gg-core-1"
    assert loaded.interval == AWS_KEYS["SampleIntervalSeconds"]
    assert (loaded.format, loaded.short_names, loaded.log_level) == ("json", False, "info")
    assert loaded.state_dir == str(tmp_path / "state")


def _policies(recipe):
    control = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert set(control) == {"aws.greengrass.ipc.mqttproxy"}, "only the MQTT proxy is needed"
    granted = {}
    for policy in control["aws.greengrass.ipc.mqttproxy"].values():
        for operation in policy["operations"]:
            granted.setdefault(operation, set()).update(policy["resources"])
    return granted


def test_access_control_covers_exactly_the_agents_topics(recipe):
    granted = _policies(recipe)
    publish = {report.topic(THING_VAR, fmt) for fmt in report.FORMATS}
    subscribe = {topic for fmt in report.FORMATS for topic in topics.reply_topics(THING_VAR, fmt)}
    assert granted == {"aws.greengrass#PublishToIoTCore": publish, "aws.greengrass#SubscribeToIoTCore": subscribe}
    assert not any(c in topic for topics in granted.values() for topic in topics for c in "*#+")


def test_recipe_needs_a_nucleus_that_interpolates_thing_name_in_policies(recipe):
    requirement = recipe["ComponentDependencies"]["aws.greengrass.Nucleus"]["VersionRequirement"]
    assert ">=2.6.0" in requirement


def test_build_script_lays_out_recipe_and_artifact(tmp_path, recipe):
    script = RECIPE_PATH.parent / "build.sh"
    proc = subprocess.run(["sh", str(script), str(tmp_path), "my-bucket"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    version = garrison.agent.__version__
    built = yaml.safe_load((tmp_path / "recipes" / f"io.garrison.Agent-{version}.yaml").read_text())
    wheel = tmp_path / "artifacts" / "io.garrison.Agent" / version / f"garrison-{version}-py3-none-any.whl"
    assert wheel.is_file()
    assert _linux_manifest(built)["Artifacts"][0]["URI"] == \
        f"s3://my-bucket/io.garrison.Agent/{version}/{wheel.name}"
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "garrison/agent/transports/greengrass.py" in names and "garrison/collectors/sockets.py" in names


# -- the transport --------------------------------------------------------------------------------


def test_importing_the_transport_does_not_import_awsiotsdk():
    code = "import sys, garrison.agent.transports.greengrass; print('awsiot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_awsiotsdk_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "awsiot", None)      # as if awsiotsdk were not installed
    monkeypatch.setitem(sys.modules, "awsiot.greengrasscoreipc", None)
    transport = greengrass.GreengrassTransport("gg-core-1")
    with pytest.raises(TransportError, match=r"awsiotsdk.*garrison\[aws\]"):
        transport.start(lambda reply: None)


def test_outside_greengrass_is_a_clear_error(monkeypatch):
    pytest.importorskip("awsiot.greengrasscoreipc.clientv2")
    for name in greengrass.NUCLEUS_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TransportError, match="not running as a Greengrass component"):
        greengrass.GreengrassTransport("gg-core-1").start(lambda reply: None)


def test_calls_match_the_real_sdk():
    """The methods and keyword arguments we use exist on GreengrassCoreIPCClientV2."""
    clientv2 = pytest.importorskip("awsiot.greengrasscoreipc.clientv2")
    from awsiot.greengrasscoreipc import model
    client = clientv2.GreengrassCoreIPCClientV2
    inspect.signature(client.publish_to_iot_core_async).bind(None, topic_name="t", qos="1", payload=b"")
    inspect.signature(client.subscribe_to_iot_core).bind(
        None, topic_name="t", qos="1", on_stream_event=print, on_stream_error=print, on_stream_closed=print)
    inspect.signature(client.close).bind(None)
    assert greengrass.QOS_AT_LEAST_ONCE == model.QOS.AT_LEAST_ONCE


class FakeOperation:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class FakeNucleusClient:
    """Stands in for GreengrassCoreIPCClientV2 (no nucleus here): records calls, acks publishes."""

    def __init__(self, publish_outcome="ack"):
        self.subscriptions = {}
        self.published = []
        self.publish_outcome = publish_outcome
        self.closed = False

    def subscribe_to_iot_core(self, *, topic_name, qos, on_stream_event, on_stream_error, on_stream_closed):
        self.subscriptions[topic_name] = (qos, on_stream_event, on_stream_error, on_stream_closed)
        return object(), FakeOperation()

    def publish_to_iot_core_async(self, *, topic_name, qos, payload):
        self.published.append((topic_name, qos, payload))
        future = Future()
        if self.publish_outcome == "ack":
            future.set_result(object())
        elif self.publish_outcome == "error":
            future.set_exception(RuntimeError("UnauthorizedError: not allowed"))
        return future  # "hang": never completes

    def close(self):
        self.closed = True


def _started(fmt="json", **kwargs):
    clients = []

    def factory():
        clients.append(FakeNucleusClient(**kwargs))
        return clients[-1]

    received = []
    transport = greengrass.GreengrassTransport("gg-core-1", fmt, client_factory=factory)
    transport.start(received.append)
    assert transport.wait_connected(10)
    return transport, clients, received


def test_start_subscribes_to_exactly_the_reply_topics():
    transport, clients, _ = _started("cbor")
    try:
        assert set(clients[0].subscriptions) == set(topics.reply_topics("gg-core-1", "cbor"))
        assert {sub[0] for sub in clients[0].subscriptions.values()} == {greengrass.QOS_AT_LEAST_ONCE}
    finally:
        transport.stop()


def test_publish_is_true_only_when_acknowledged():
    topic = report.topic("gg-core-1", "json")
    transport, clients, _ = _started()
    try:
        assert transport.publish(topic, b'{"x":1}', timeout=5) is True
        assert clients[0].published == [(topic, "1", b'{"x":1}')]
    finally:
        transport.stop()
    for outcome in ("error", "hang"):
        transport, clients, _ = _started(publish_outcome=outcome)
        try:
            assert transport.publish(topic, b"{}", timeout=0.2) is False
        finally:
            transport.stop()


def test_replies_reach_the_daemon():
    model = pytest.importorskip("awsiot.greengrasscoreipc.model")  # the SDK's real message classes
    transport, clients, received = _started()
    accepted, rejected = topics.reply_topics("gg-core-1", "json")
    on_event = clients[0].subscriptions[accepted][1]
    on_event(model.IoTCoreMessage(message=model.MQTTMessage(
        topic_name=accepted, payload=b'{"thingName":"gg-core-1","reportId":42,"status":"ACCEPTED"}')))
    on_event(model.IoTCoreMessage(message=model.MQTTMessage(
        topic_name=rejected, payload=b'{"reportId":43,"status":"REJECTED","statusDetails":'
                                     b'{"ErrorCode":"InvalidPayload","ErrorMessage":"bad"}}')))
    transport.stop()
    assert [(r.report_id, r.accepted, r.error_code) for r in received] == [(42, True, None),
                                                                           (43, False, "InvalidPayload")]


def test_a_lost_stream_reconnects_and_stop_closes_everything():
    transport, clients, _ = _started()
    accepted, _ = topics.reply_topics("gg-core-1", "json")
    on_error = clients[0].subscriptions[accepted][2]
    assert on_error(RuntimeError("nucleus restarted")) is True
    deadline = time.monotonic() + 15
    while (len(clients) < 2 or not transport.connected) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(clients) == 2 and transport.connected and clients[0].closed
    transport.stop()
    transport.stop()  # idempotent
    assert clients[1].closed and not transport.connected
    assert transport.publish(report.topic("gg-core-1", "json"), b"{}", timeout=1) is False
    assert not [t for t in threading.enumerate() if t.name == "garrison-greengrass"]


def test_cli_outside_greengrass_fails_with_one_line(tmp_path):
    """`garrison-agent run --transport greengrass` off a core device: exit 2, one clear line."""
    env = {k: v for k, v in os.environ.items() if k not in greengrass.NUCLEUS_ENV}
    proc = subprocess.run([sys.executable, "-m", "garrison.agent.cli", "run", "--transport", "greengrass", "--thing",
                           "gg-core-1", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ("Greengrass component" in lines[0] or "awsiotsdk" in lines[0])
