"""A TCP proxy between a client and a server that a test can cut and restore.

`cut("reset")` kills every open connection with a TCP reset and refuses new ones (a broker
that went down); `cut("blackhole")` keeps connections open but silently drops everything
in both directions (a network partition). `restore()` forwards again.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN, as a dead peer or a firewall would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(256)
        self.host, self.port = self._listener.getsockname()
        self.mode = "up"  # up | reset | blackhole
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stopped = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control

    def cut(self, mode: str = "reset") -> None:
        assert mode in ("reset", "blackhole")
        with self._lock:
            self.mode = mode
            pairs, self._pairs = (self._pairs, []) if mode == "reset" else (self._pairs, self._pairs)
        if mode == "reset":
            for a, b in pairs:
                _reset(a)
                _reset(b)

    def restore(self) -> None:
        with self._lock:
            self.mode = "up"

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _reset(a)
            _reset(b)
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                r, _, _ = select.select([self._listener], [], [], 0.1)
                if not r:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            mode = self.mode
            if mode == "reset":
                self.refused += 1
                _reset(client)
                continue
            if mode == "blackhole":
                # Accept and never answer: the client's handshake times out on its own.
                with self._lock:
                    self._pairs.append((client, client))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            self.accepted += 1
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stopped.is_set():
                if self.mode == "blackhole":
                    time.sleep(0.05)  # hold everything: nothing moves either way
                    continue
                try:
                    readable, _, _ = select.select([a, b], [], [], 0.1)
                except (OSError, ValueError):
                    return
                for s in readable:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data or self.mode == "reset":
                        return
                    if self.mode == "blackhole":
                        continue  # dropped on the floor
                    try:
                        peers[s].sendall(data)
                    except OSError:
                        return
        finally:
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._pairs.remove((a, b))
            for s in (a, b):
                if self.mode == "up":
                    with contextlib.suppress(OSError):
                        s.close()  # a normal close (FIN) when one side closed normally
                else:
                    _reset(s)
