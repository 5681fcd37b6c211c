"""Kernel collectors: sockets, interface counters, socket owners. No MQTT, no report format."""
