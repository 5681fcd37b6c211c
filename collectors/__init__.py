"""Kernel collectors: sockets, interface counters, socket owners. No MQTT, no report format.

- `garrison.collectors.sockets`: listening TCP/UDP sockets and established TCP connections, read over
  NETLINK_SOCK_DIAG (`_netlink`) or, where that is unavailable, /proc/net (`_procfs`).
- `garrison.collectors.interfaces`: /proc/net/dev counters; which interface owns an address.
- `garrison.collectors.processes`: which process owns a socket (/proc/<pid>/fd scan).

Each collector class has a `name` and a `collect()` returning a `base.CollectorResult`; each
works alone. Importing this package imports nothing heavy (no psutil, no pyroute2).
"""
