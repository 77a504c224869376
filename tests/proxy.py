"""A loopback TCP proxy (threads and sockets) in front of a real server, that can stall or cut an answer.

    proxy = Proxy(port)                      # forwards 127.0.0.1:proxy.port <-> 127.0.0.1:port
    proxy.plan = Plan(events=4, then="stall")  # the next connection: the answer stops mid-event 4
    ...
    proxy.close()

Each connection takes the plan set when it was accepted (korepl opens one connection per request),
and a plan serves one connection only; with no plan the bytes pass both ways as they come.  With a
plan the answer is forwarded up to a few bytes into its `events`-th server-sent event (counting
`data:` lines after the headers), then either held (`stall`: nothing more is forwarded until the
client hangs up or `hold` seconds pass) or cut (`cut`: both sides are closed at once).  No server is
imitated: every byte the client gets is one the real server sent.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import threading
import time

MARK = b"data:"


@dataclasses.dataclass
class Plan:
    events: int  # forward this many whole events and a few bytes of the next one
    then: str = "stall"  # "stall" or "cut"
    hold: float = 30.0  # a stall ends after this long at most (or when the client hangs up)


class Proxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.plan: Plan | None = None
        self.done = threading.Event()  # set when a planned connection was stalled or cut
        self.closed = False
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            plan, self.plan = self.plan, None
            thread = threading.Thread(target=self._serve, args=(client, plan), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: socket.socket, plan: Plan | None) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        sent = bytearray()  # the answer so far, to find the events in
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 60)
                if not ready:
                    return
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if plan is None:
                        client.sendall(data)
                        continue
                    cut = self._cut_at(bytes(sent) + data, plan.events)
                    if cut is None:
                        client.sendall(data)
                        sent += data
                        continue
                    client.sendall(data[:cut - len(sent)])
                    self.done.set()
                    if plan.then == "stall":  # nothing more, until the client gives up
                        deadline = time.monotonic() + plan.hold
                        while time.monotonic() < deadline:
                            if select.select([client], [], [], 0.05)[0] and not client.recv(65536):
                                break
                    return
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _cut_at(answer: bytes, events: int) -> int | None:
        """Where to stop: a few bytes into the answer's event number `events` + 1, or None when not there yet."""
        body = answer.find(b"\r\n\r\n")
        if body < 0:
            return None
        at = body
        for _ in range(events + 1):
            at = answer.find(MARK, at + 1)
            if at < 0:
                return None
        return at + len(MARK) + 3 if len(answer) >= at + len(MARK) + 3 else None

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
