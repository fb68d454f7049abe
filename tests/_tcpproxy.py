"""A TCP forwarder a test can cut and restore, or silence: a database that goes away and
comes back, or stops answering, without touching the server other tests share."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``cut()`` drops every connection and
    refuses new ones, ``restore()`` listens again on the same port, ``silence_when()``
    freezes it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        # silence_when(): what ends forwarding, by direction ("client": sent to the
        # server, "server": sent to the client), and whether it has.
        self._triggers: dict[str, bytes] = {}
        self.silent = threading.Event()
        # reset_once_when(): what the client sends that resets its connection, once.
        self._reset_on = b""
        self.reset = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self.restore()

    def restore(self) -> None:
        """Listen (again) and forward."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b, side in ((client, upstream, "client"), (upstream, client, "server")):
                threading.Thread(target=self._pump, args=(a, b, side), daemon=True).start()

    def silence_when(self, *, client_sends: bytes = b"", server_sends: bytes = b"") -> None:
        """Stop forwarding, in both directions and for good, once a client sends bytes
        holding ``client_sends`` (not passed on) or the server sends ``server_sends``
        (passed on): a server that goes silent, its connections left open and every
        byte sent to it taken and dropped, as a frozen server's kernel does."""
        self._triggers = {"client": client_sends, "server": server_sends}

    def reset_once_when(self, client_sends: bytes) -> None:
        """Reset the first connection whose client sends bytes holding ``client_sends``
        (not passed on), as a server process that dies mid-statement does; later
        connections are forwarded as usual. ``reset`` is set once that happened."""
        self._reset_on = client_sends

    def _pump(self, source: socket.socket, sink: socket.socket, side: str) -> None:
        try:
            while data := source.recv(65536):
                if self.silent.is_set():
                    continue
                if side == "client" and self._reset_on and self._reset_on in data:
                    self._reset_on = b""
                    self.reset.set()
                    break  # the finally below shuts both ends
                trigger = self._triggers.get(side)
                if trigger and trigger in data:
                    self.silent.set()
                    if side == "client":
                        continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop forwarding for good."""
        self.cut()
