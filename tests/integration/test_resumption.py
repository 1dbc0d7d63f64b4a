"""Session resumption: tickets from the server, a cached session on the
client, and the pins still applied to resumed sessions."""

import signal
import time

from harness import check, check_eq, timeout


def _handshakes(proc, n):
    proc.wait_for(r"event=handshake_done", 10, n)
    return proc.events("handshake_done")


def _echo_n(h, cli, n):
    for i in range(n):
        s = h.echo_roundtrip(cli.addr("app"), b"resume %d\n" % i)
        s.close()


@timeout(60)
def test_resumed_after_first(h):
    """The first connection pays a full handshake; the next ones resume,
    on both sides, and carry data as usual."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal={"log_level": "debug"})
    _echo_n(h, cli, 4)
    for proc in (cli, srv):
        done = _handshakes(proc, 4)
        check_eq([d.get("resumed") for d in done],
                 ["false", "true", "true", "true"],
                 "%s: resumed flags of four handshakes" % proc.name)
        # Resumed or not, every handshake reports the peer's full pin.
        check(all(d.get("peer_pin", "").startswith("sha256//") for d in done),
              "%s: a handshake without the peer's pin" % proc.name)


def _all_full(h, side):
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal={"log_level": "debug"},
                         **{side: {"resumption": "no"}})
    _echo_n(h, cli, 3)
    for proc in (cli, srv):
        done = _handshakes(proc, 3)
        check_eq([d.get("resumed") for d in done], ["false"] * 3,
                 "%s with %s resumption=no" % (proc.name, side))


@timeout(60)
def test_resumption_off_on_server(h):
    """resumption = no on the server: no tickets, every handshake full."""
    _all_full(h, "server_opts")


@timeout(60)
def test_resumption_off_on_client(h):
    """resumption = no on the client: nothing cached, every handshake full."""
    _all_full(h, "client_opts")


@timeout(60)
def test_unpinned_client_cannot_resume_its_way_in(h):
    """A client that once held a pinned key keeps its cached session; after
    the server stops pinning it (reload), the resumed attempt must fail:
    the new settings come with new ticket keys, and any session is judged
    against the current pins."""
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr, upseal={"log_level": "debug"})
    h.echo_roundtrip(cli.addr("app"), b"hello").close()
    check_eq(be.accepted, 1, "backend connections after the first echo")
    other = h.identity("other")
    # Rewrite the server's pin list without the client, then reload.
    ini = srv.argv[-1]
    with open(ini) as f:
        text = f.read()
    with open(ini, "w") as f:
        f.write(text.replace(ids["client"].pin, other.pin))
    srv.signal(signal.SIGHUP)
    srv.wait_for(r"event=reloaded", 10)
    s = h.connect(cli.addr("app"))
    s.sendall(b"again")
    srv.wait_for(r"reason=pin_mismatch", 10)
    time.sleep(0.2)   # a wrongly dialed backend would show up by now
    check_eq(be.accepted, 1, "backend connections after the unpinned "
             "client tried again")
