"""max_handshakes: a flood of silent sockets must not lock pinned peers out.

The server keeps its own small budget of connections that have not
finished the handshake; at the budget it drops the oldest silent one for
each newcomer instead of pausing accepting, so a pinned client behind the
flood still gets in. Before the budget, silent sockets counted only against
max_connections: at the cap accepting paused and the pinned client waited
in the backlog behind the flood until handshake_timeout.
"""

import select
import socket
import threading
import time

from harness import check, check_eq, scaled, sockaddr, timeout

BUDGET = 8


class _Flood:
    """Keeps `width` silent TCP sockets open to addr (they never send a
    byte); each one the server closes is opened again, at most `max_opens`
    in all and `rate` a second, until stop()."""

    def __init__(self, addr, width, max_opens=1500, rate=300.0):
        self.fam, self.sa = sockaddr(addr)
        self.width, self.max_opens, self.rate = width, max_opens, rate
        self.opens = 0
        self.closed_by_server = 0
        self.errors = []
        self.socks = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _open(self):
        s = socket.socket(self.fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.sa)
        s.setblocking(False)
        self.opens += 1
        return s

    def start(self):
        for _ in range(self.width):
            self.socks.append(self._open())
        self._t.start()

    def _run(self):
        gap = 1.0 / self.rate
        deadline = time.monotonic() + 60
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                r, _, _ = select.select(self.socks, [], [], 0.05)
                for s in r:
                    try:
                        data = s.recv(64)
                    except OSError:
                        data = b""
                    check(data == b"", "a silent socket got %r" % data)
                    self.socks.remove(s)
                    s.close()
                    self.closed_by_server += 1
                    if self.opens < self.max_opens:
                        time.sleep(gap)
                        self.socks.append(self._open())
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.errors.append(e)

    def stop(self):
        self._stop.set()
        self._t.join(10)
        for s in self.socks:
            s.close()
        check(not self.errors, "flood thread: %r" % self.errors)


def _flood_then_serve(h, workers):
    be = h.echo_backend()
    # handshake_timeout well past the test: only shedding frees a place.
    cli, srv, _ = h.pair(
        be.addr, upseal={"workers": str(workers)},
        server_opts={"max_handshakes": str(BUDGET),
                     "handshake_timeout": "60s"},
        client_opts={"handshake_timeout": "3s"})
    flood = _Flood(srv.addr("app"), 3 * BUDGET)
    flood.start()
    try:
        # The flood fills the budget before the first pinned client comes.
        srv.wait_event("max_handshakes", scaled(5, 15))
        n, slowest = 20, 0.0
        for i in range(n):
            t0 = time.monotonic()
            msg = b"pinned %d behind %d silent sockets\n" % (i, 3 * BUDGET)
            h.echo_roundtrip(cli.addr("app"), msg, timeout=5).close()
            slowest = max(slowest, time.monotonic() - t0)
        check(slowest < scaled(1.0, 3.0), "a pinned round trip took %.2fs "
              "during the flood" % slowest)
        check(flood.closed_by_server > 0, "the server shed no silent socket")
        # No pinned connection failed (the flood's own end comes later).
        check_eq(srv.refusals(), [], "refused handshakes")
    finally:
        flood.stop()
    shed = srv.events("conn_end", reason="handshake_shed")
    check(len(shed) > 0, "no conn_end reason=handshake_shed")
    check(all(e.get("peer_pin") == "-" for e in shed),
          "a shed connection had a pinned peer: %r" % shed[:3])
    # Warned once per worker and burst, not once per shed connection.
    warns = srv.events("max_handshakes")
    check(1 <= len(warns) <= workers, "%d max_handshakes warnings for %d "
          "shed connections" % (len(warns), len(shed)))
    check_eq(warns[0].get("limit"), str(BUDGET), "limit in the warning")
    h.note("%d pinned round trips, slowest %.0f ms, next to %d silent "
           "sockets (%d opened, %d shed by the server)"
           % (n, slowest * 1000, 3 * BUDGET, flood.opens, len(shed)))


@timeout(90)
def test_silent_flood_sheds_for_pinned_peers(h):
    _flood_then_serve(h, workers=1)


@timeout(90)
def test_silent_flood_sheds_for_pinned_peers_two_workers(h):
    _flood_then_serve(h, workers=2)
