"""The shared fixtures themselves: a broker that relays, certificates that verify, a namespace that isolates."""
import ssl
import subprocess

import paho.mqtt.publish as publish
import paho.mqtt.subscribe as subscribe
import threading


def test_mosquitto_relays_a_message(mosquitto):
    got = {}

    def listen():
        got["msg"] = subscribe.simple("t/x", hostname=mosquitto.host, port=mosquitto.port)

    t = threading.Thread(target=listen)
    t.start()
    import time
    for _ in range(50):
        time.sleep(0.1)
        publish.single("t/x", b"hello", hostname=mosquitto.host, port=mosquitto.port)
        if "msg" in got:
            break
    t.join(5)
    assert got["msg"].payload == b"hello"


def test_tls_broker_refuses_client_without_certificate(tls_mosquitto, certs):
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    import socket
    with socket.create_connection((tls_mosquitto.host, tls_mosquitto.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            # the handshake completes lazily on TLS 1.3; the broker drops us on first use
            try:
                tls.sendall(b"\x10\x00")
                data = tls.recv(10)
            except (ssl.SSLError, ConnectionResetError):
                data = b""
    assert data == b""


def test_netns_is_isolated(netns):
    out = netns.run("ip", "-o", "link").stdout
    assert "lo:" in out and "eth0" not in out


def test_free_port_never_hands_out_a_port_twice():
    """Ports picked together before any is bound (a NATS cluster's dozen) must differ: bind(0)
    picks at random, so 500 picks of the old free_port repeated one almost always."""
    from fixtures import free_port
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
