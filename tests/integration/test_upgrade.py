"""Upgrades: sidecars are upgraded one host at a time, so this version
must work with the previous released one in both roles. The previous
version is the commit in tests/prev-version, built by tests/prev-build.sh
into the dir UPSEAL_PREV_BUILD names (tests/check.sh does both); without
it these tests skip and say so.

Each case runs old client -> new server and new client -> old server, and
carries data both ways (an echo backend) over several connections:
without resumption, with resumption (the later connections must resume
across the versions), and with a pool of 2 (the request must take a
pooled connection: ALPN upseal/1 and the preamble, across the versions).
"""

import os

from harness import check, check_eq, timeout

PREV = os.environ.get("UPSEAL_PREV_BUILD", "")
CONNS = 3


def _prev(h):
    if not PREV:
        h.skip("UPSEAL_PREV_BUILD is not set (tests/prev-build.sh builds the "
               "previous version; tests/check.sh sets it)")
    for b in ("upseal-client", "upseal-server"):
        if not os.access(os.path.join(PREV, b), os.X_OK):
            h.skip("UPSEAL_PREV_BUILD=%s holds no %s (run tests/prev-build.sh)"
                   % (PREV, b))
    return os.path.abspath(PREV)


def _mixed(h, old_side, client_opts=None):
    """Server and client, one of them (old_side: "client" or "server")
    from the previous version. Returns (client, server)."""
    prev = _prev(h)
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    dbg = {"log_level": "debug"}
    srv = h.start_server({"app": {
        "connect": be.addr, "cert": sid.crt, "key": sid.key,
        "pin": cid.pin}}, dbg, name="server-" + (
            "old" if old_side == "server" else "new"),
        build=prev if old_side == "server" else None)
    co = {"connect": srv.addr("app"), "cert": cid.crt, "key": cid.key,
          "pin": sid.pin}
    co.update(client_opts or {})
    cli = h.start_client({"app": co}, dbg, name="client-" + (
        "old" if old_side == "client" else "new"),
        build=prev if old_side == "client" else None)
    return be, cli, srv


def _traffic(h, be, cli, srv):
    """CONNS connections, each 64 KiB out and the same 64 KiB back."""
    for i in range(CONNS):
        data = os.urandom(64 * 1024)
        s = h.echo_roundtrip(cli.addr("app"), data, timeout=15)
        s.close()
    srv.wait_event("conn_end", count=CONNS)
    cli.wait_event("conn_end", count=CONNS)
    check_eq(be.accepted, CONNS, "backend connections")
    for p in (cli, srv):
        reasons = [e.get("reason") for e in p.events("conn_end")]
        check_eq(reasons, ["closed"] * CONNS, "%s conn_end reasons" % p.name)


def _resumed(proc):
    return [d.get("resumed") for d in proc.events("handshake_done")]


def _plain(h, old_side):
    be, cli, srv = _mixed(h, old_side, {"resumption": "no"})
    _traffic(h, be, cli, srv)
    for p in (cli, srv):
        check_eq(_resumed(p), ["false"] * CONNS, "%s handshakes" % p.name)


def _resumption(h, old_side):
    be, cli, srv = _mixed(h, old_side)
    _traffic(h, be, cli, srv)
    want = ["false"] + ["true"] * (CONNS - 1)
    for p in (cli, srv):
        check_eq(_resumed(p), want, "%s handshakes resumed" % p.name)


def _pool(h, old_side):
    be, cli, srv = _mixed(h, old_side, {"pool": "2"})
    cli.wait_event("pool_filled", 15)
    _traffic(h, be, cli, srv)
    hand = cli.events("pool_handoff")
    pre = srv.events("preamble")
    check(len(hand) >= 1, "%s: no pool_handoff: no request took a pooled "
          "connection" % cli.name)
    check_eq(len(pre), len(hand), "%s preambles vs %s handoffs"
             % (srv.name, cli.name))


@timeout(90)
def test_old_client_new_server_plain(h):
    _plain(h, "client")


@timeout(90)
def test_new_client_old_server_plain(h):
    _plain(h, "server")


@timeout(90)
def test_old_client_new_server_resumption(h):
    _resumption(h, "client")


@timeout(90)
def test_new_client_old_server_resumption(h):
    _resumption(h, "server")


@timeout(90)
def test_old_client_new_server_pool(h):
    _pool(h, "client")


@timeout(90)
def test_new_client_old_server_pool(h):
    _pool(h, "server")
