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

The PROXY protocol (this version's): a new client that reads PROXY
headers and carries its clients' addresses offers ALPN upseal/2 and
upseal/1; an old server selects upseal/1 and gets the one-byte preamble,
no address. A new server with proxy_protocol = v2 behind an old client
tells its backend the TLS peer's address. Pooled and unpooled, both ways.
"""

import os
import socket
import struct

from harness import Backend, check, check_eq, recv_exact, timeout

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyEchoBackend(Backend):
    """Reads a PROXY v2 header (kept in results as (family, src, sport)),
    then echoes everything, as EchoBackend."""

    def handle(self, s, idx):
        head = b""
        while len(head) < 16:
            d = s.recv(16 - len(head))
            check(d, "backend: EOF inside the PROXY header")
            head += d
        check_eq(head[:12], V2_SIG, "PROXY v2 signature")
        n = struct.unpack("!H", head[14:16])[0]
        body = b""
        while len(body) < n:
            d = s.recv(n - len(body))
            check(d, "backend: EOF inside the PROXY header")
            body += d
        fam = head[13]
        src, sport = None, None
        if fam == 0x11:
            src = socket.inet_ntop(socket.AF_INET, body[0:4])
            sport = struct.unpack("!H", body[8:10])[0]
        elif fam == 0x21:
            src = socket.inet_ntop(socket.AF_INET6, body[0:16])
            sport = struct.unpack("!H", body[32:34])[0]
        while True:
            d = s.recv(256 * 1024)
            if not d:
                break
            s.sendall(d)
        s.shutdown(socket.SHUT_WR)
        with self.lock:
            self.results.append((fam, src, sport))

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


# ---- the PROXY protocol across versions ----

CARRIED = ("203.0.113.5", 4242)


def _v1_line(src, sport):
    return ("PROXY TCP4 %s 198.51.100.1 %d 443\r\n" % (src, sport)).encode()


def _pp(h, old_side, pool):
    """A new client with proxy_protocol = accept, or a new server with
    proxy_protocol = v2, against the other side's previous version."""
    prev = _prev(h)
    sid = h.identity("srv")
    cid = h.identity("cli")
    dbg = {"log_level": "debug"}
    new_server = old_side == "client"
    be = h._backend(ProxyEchoBackend) if new_server else h.echo_backend()
    so = {"connect": be.addr, "cert": sid.crt, "key": sid.key,
          "pin": cid.pin}
    if new_server:
        so["proxy_protocol"] = "v2"
    srv = h.start_server({"app": so}, dbg, name="server-" + (
        "new" if new_server else "old"), build=None if new_server else prev)
    co = {"connect": srv.addr("app"), "cert": cid.crt, "key": cid.key,
          "pin": sid.pin}
    if pool:
        co["pool"] = "2"
    if not new_server:
        co["proxy_protocol"] = "accept"
    cli = h.start_client({"app": co}, dbg, name="client-" + (
        "old" if new_server else "new"), build=prev if new_server else None)
    if pool:
        cli.wait_event("pool_filled", 15)
    for i in range(CONNS):
        data = os.urandom(16 * 1024)
        s = h.connect(cli.addr("app"), timeout=15)
        if not new_server:   # the new client reads a header first
            s.sendall(_v1_line(CARRIED[0], CARRIED[1] + i))
        s.sendall(data)
        got = recv_exact(s, len(data), 15)
        check_eq(got, data, "echo through the mixed pair")
        s.close()
    srv.wait_event("conn_end", count=CONNS)
    cli.wait_event("conn_end", count=CONNS)
    check_eq(be.accepted, CONNS, "backend connections")
    for p in (cli, srv):
        reasons = [e.get("reason") for e in p.events("conn_end")]
        check_eq(reasons, ["closed"] * CONNS, "%s conn_end reasons" % p.name)
    if new_server:
        # No address came across: the backend is told the TLS peer's.
        res = be.wait_results(CONNS)
        ends = srv.events("conn_end")
        peers = sorted(e.get("peer") for e in ends)
        got = sorted("%s:%d" % (src, sport) for fam, src, sport in res)
        check_eq([r[0] for r in res], [0x11] * CONNS, "header families")
        check_eq(got, peers, "header source = the TLS peer (conn_end peer=)")
        check(all(e.get("client") is None for e in ends),
              "the new server logged a carried client= from an old client")
    else:
        # The new client knew the address; the old server never saw it.
        ends = cli.events("conn_end")
        want = ["%s:%d" % (CARRIED[0], CARRIED[1] + i) for i in range(CONNS)]
        check_eq(sorted(e.get("client") for e in ends), sorted(want),
                 "new client conn_end client=")
        # It offered upseal/2 and upseal/1; the old server chose upseal/1
        # and read its one-byte preamble on every connection.
        check_eq(len(srv.events("preamble")), CONNS, "old server preambles")
    if pool:
        check(len(cli.events("pool_handoff")) >= 1, "no pooled connection "
              "was taken")


@timeout(90)
def test_old_client_new_server_proxy_protocol(h):
    _pp(h, "client", pool=False)


@timeout(90)
def test_new_client_old_server_proxy_protocol(h):
    _pp(h, "server", pool=False)


@timeout(90)
def test_old_client_new_server_proxy_protocol_pool(h):
    _pp(h, "client", pool=True)


@timeout(90)
def test_new_client_old_server_proxy_protocol_pool(h):
    _pp(h, "server", pool=True)
