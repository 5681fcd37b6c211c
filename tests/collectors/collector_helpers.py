"""Helpers for the collector tests: run the namespace probe, read `ss` output."""
import ipaddress
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BACKENDS = ("netlink", "procfs")


def probe(ns, *extra_addresses):
    """Run netns_probe.py inside `ns` and return its JSON."""
    done = ns.run(sys.executable, str(HERE / "netns_probe.py"), *extra_addresses, timeout=60)
    return json.loads(done.stdout)


def normalize(address):
    """An address as `ss` or a backend prints it -> one comparable text (IPv4-mapped unmapped)."""
    address = address.strip("[]").partition("%")[0]
    if address == "*":
        return "::"
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def split_endpoint(text):
    address, _, port = text.rpartition(":")
    return normalize(address), int(port)


def ss_endpoints(text, established=False):
    """(local, port) per line of `ss -H -tln/-uln`, or ((local, port), (remote, port)) for
    `ss -H -tn state established` (whose lines have no State column)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        local, peer = (fields[2], fields[3]) if established else (fields[3], fields[4])
        found.append((split_endpoint(local), split_endpoint(peer)) if established else split_endpoint(local))
    return sorted(found)
