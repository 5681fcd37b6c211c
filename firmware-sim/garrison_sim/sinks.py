"""The cloud namespace's sinks: endpoints the live attacks talk to, holding or discarding traffic.

- TCP 443 on the C2 server address (203.0.113.66): accepts command-and-control sessions;
- TCP 23 on every address (the scan range is routed to loopback): accepts scan connections;
- TCP 9000 on every address: the exfiltration drop, reads and discards;
- UDP 9 (discard) on every address: the flood target; never read, the kernel drops what overflows.
One thread serves the TCP sockets with a selector; everything closes with `close()`.
"""

import selectors
import socket
import threading
from typing import List

from .netns import C2_SERVER, inside

C2_PORT = 443
SCAN_PORT = 23
EXFIL_PORT = 9000
FLOOD_PORT = 9


class Sinks:
    def __init__(self, cloud_ns: str):
        self._selector = selectors.DefaultSelector()
        self._sockets: List[socket.socket] = []
        self._stop = threading.Event()
        with inside(cloud_ns):
            for address, port in ((C2_SERVER, C2_PORT), ("0.0.0.0", SCAN_PORT), ("0.0.0.0", EXFIL_PORT)):
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((address, port))
                listener.listen(1024)
                listener.setblocking(False)
                self._selector.register(listener, selectors.EVENT_READ, "listener")
                self._sockets.append(listener)
            flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            flood.bind(("0.0.0.0", FLOOD_PORT))
            self._sockets.append(flood)
        self._thread = threading.Thread(target=self._serve, name="sinks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                if not isinstance(sock, socket.socket):  # only sockets are registered
                    continue
                try:
                    if key.data == "listener":
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ, "conn")
                        self._sockets.append(conn)
                    elif not sock.recv(1 << 20):  # peer closed
                        self._selector.unregister(sock)
                        sock.close()
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._sockets:
            sock.close()
        self._selector.close()
