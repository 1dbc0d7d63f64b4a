"""pool = N: handshaken connections kept ready by upseal-client, the
preamble that makes upseal-server dial its backend only when one is used
(agreed through ALPN upseal/1), and the plain behaviour for every peer
that does not negotiate it."""

import signal
import socket
import ssl
import time

from harness import (check, check_eq, recv_all, recv_exact, scaled, timeout,
                     wait_closed)
from test_interop import OpenSSLPeer
from test_operate import Side, scrape, start_pair
from test_reject import _pinned_tls_client

ALPN = "upseal/1"


def _wait_metric(side, name, want, timeout_s=None, cmp=None):
    """Poll side's /metrics until name{tunnel="app"} satisfies want (bounded)."""
    timeout_s = timeout_s or scaled(10, 30)
    cmp = cmp or (lambda got: got == want)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        got = scrape(side).get(name, tunnel="app")
        if got is not None and cmp(got):
            return got
        check(time.monotonic() < deadline, "%s: %s is %r after %.0fs, want %r"
              % (side.name, name, got, timeout_s, want))
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _pool_pair(h, backend_addr, pool=3, client_extra=None, server_extra=None,
               log_level="debug"):
    ce = {"pool": str(pool)}
    ce.update(client_extra or {})
    cli, srv, sid, cid = start_pair(h, backend_addr, status=True,
                                    upseal={"log_level": log_level},
                                    client_extra=ce, server_extra=server_extra)
    return cli, srv, sid, cid


def _filled(cli, n, count=1):
    """Wait for the count-th pool_filled line and the gauge at n."""
    cli.p.wait_event("pool_filled", scaled(10, 30), count=count)
    _wait_metric(cli, "upseal_pool_ready", n)


@timeout(60)
def test_pool_fills_without_dialing_the_backend(h):
    """pool = 3 and no client traffic: three pinned handshakes, the gauge
    at 3, the server waiting for the preamble on each, and the backend
    never dialed."""
    be = h.counting_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=3)
    _filled(cli, 3)
    srv.p.wait_for(r"event=handshake_done", scaled(10, 30), 3)
    m = scrape(cli)
    check_eq(m.get("upseal_connections_open", tunnel="app"), 0,
             "client connections open (pool conns are not counted)")
    check_eq(m.get("upseal_pool_handoffs_total", tunnel="app"), 0,
             "client handoffs with no traffic")
    check_eq(scrape(srv).get("upseal_connections_open", tunnel="app"), 3,
             "server connections waiting for the preamble")
    # Idle for a moment: still nothing reaches the backend.
    time.sleep(0.3)   # the behaviour under test: no dial while idle
    check_eq(be.accepted, 0, "backend connections for idle pooled conns")
    check_eq(cli.p.events("conn_end"), [], "client conn_end lines for "
             "pool conns that were never used")


@timeout(60)
def test_request_served_by_pooled_connection(h):
    """A client's request takes a pooled connection: the server dials the
    backend after the preamble, not at the handshake; the pool refills."""
    be = h.echo_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=2)
    _filled(cli, 2)
    n_hs = len(srv.p.events("handshake_done"))
    s = h.echo_roundtrip(cli.addr(), b"through the pool\n")
    s.shutdown(socket.SHUT_WR)
    check_eq(recv_all(s, 10), (b"", "eof"), "end of the echo")
    s.close()
    hand = cli.p.wait_event("pool_handoff", 10)
    pre = srv.p.wait_event("preamble", 10)
    check_eq(be.accepted, 1, "backend connections after one request")
    # The server conn that got the preamble is one handshaken earlier.
    done_ids = [d["id"] for d in srv.p.events("handshake_done")[:n_hs]]
    check(pre["id"] in done_ids, "preamble on server conn %s, which was "
          "not among the pool's handshakes %r" % (pre["id"], done_ids))
    # No new handshake was needed for the request itself: the client's
    # conn_end is the handed-off pool conn.
    end = cli.p.wait_event("conn_end", 10)
    check_eq((end["id"], end["reason"]), (hand["id"], "closed"),
             "client conn_end of the handed-off connection")
    m = scrape(cli)
    check_eq(m.get("upseal_pool_handoffs_total", tunnel="app"), 1, "handoffs")
    check_eq(m.get("upseal_pool_misses_total", tunnel="app"), 0, "misses")
    _wait_metric(cli, "upseal_pool_ready", 2)   # refilled
    check_eq(scrape(srv).get("upseal_pool_handoffs_total", tunnel="app"), 1,
             "server: preambles received")


@timeout(60)
def test_banner_first_backend_through_pool(h):
    """A server-speaks-first backend (banner on accept) works through a
    pooled connection: the banner is dialed for by the preamble."""
    be = h.banner_first_backend(b"220 hello from the backend\r\n")
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=2)
    _filled(cli, 2)
    check_eq(be.accepted, 0, "backend connections before any client")
    s = h.connect(cli.addr())
    got = recv_exact(s, 28, 10)
    check_eq(got, b"220 hello from the backend\r\n", "banner")
    s.sendall(b"QUIT\r\n")
    s.shutdown(socket.SHUT_WR)
    check_eq(recv_all(s, 10), (b"", "eof"), "end after the banner")
    res = be.wait_results(1)
    check_eq(res[0]["recv"], 6, "bytes the backend got after its banner")
    check_eq(cli.p.events("pool_handoff") != [], True, "a pool handoff")


@timeout(60)
def test_pool_misses_fall_back_to_dialing(h):
    """More clients at once than pooled conns: the rest dial as without a
    pool (counted as misses), and all are served. One worker: with two,
    the kernel could hand all three clients to the worker whose share of
    pool = 1 is none."""
    be = h.echo_backend()
    cli, srv, _, _ = start_pair(h, be.addr, status=True,
                                upseal={"log_level": "debug", "workers": "1"},
                                client_extra={"pool": "1"})
    _filled(cli, 1)
    socks = [h.connect(cli.addr()) for _ in range(3)]
    for i, s in enumerate(socks):
        s.sendall(b"client %d\n" % i)
    for i, s in enumerate(socks):
        check_eq(recv_exact(s, 9, 10), b"client %d\n" % i, "echo %d" % i)
        s.close()
    m = scrape(cli)
    check_eq(m.get("upseal_pool_handoffs_total", tunnel="app") +
             m.get("upseal_pool_misses_total", tunnel="app"), 3,
             "handoffs + misses for three clients")
    check(m.get("upseal_pool_handoffs_total", tunnel="app") >= 1,
          "no client used the pooled connection")


@timeout(60)
def test_pool_recycles_after_pool_idle(h):
    """pool_idle = 400ms: unused conns are closed (close_notify, the
    server ends them quietly as pool_closed) and replaced."""
    be = h.counting_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=2,
                                client_extra={"pool_idle": "400ms"})
    _filled(cli, 2)
    _wait_metric(cli, "upseal_pool_recycled_total", 4, scaled(10, 30),
                 cmp=lambda got: got >= 4)
    _wait_metric(cli, "upseal_pool_ready", 2)
    ends = srv.p.events("conn_end")
    check(len(ends) >= 3, "server conn_end lines: %r" % ends)
    check_eq(set(d["reason"] for d in ends), {"pool_closed"},
             "server reasons for recycled pool conns")
    check(all(d["level"] == "info" for d in ends),
          "recycled pool conns logged above info: %r" % ends)
    check_eq(be.accepted, 0, "backend connections for recycled conns")
    check_eq(cli.p.events("conn_end"), [], "client conn_end lines for "
             "recycled pool conns")
    check_eq([d for d in cli.p.events() if d.get("level") == "warn"], [],
             "client warnings while recycling")


@timeout(90)
def test_server_restart_pool_recovers_with_backoff(h):
    """The server is killed: the pool empties, refills fail with one
    warning per failure streak (backoff, no log flood), and once a
    server listens again at the same address the pool is full again."""
    be = h.echo_backend()
    cli, srv, sid, cid = _pool_pair(h, be.addr, pool=4, log_level="info")
    _filled(cli, 4)
    addr = srv.addr()
    srv.p.kill9()
    _wait_metric(cli, "upseal_pool_ready", 0)
    cli.p.wait_event("pool_failed", 10)
    # Down for a while: attempts back off 1s, 2s, ...
    time.sleep(scaled(3.5, 4.5))   # the behaviour under test: backoff
    warns = [d for d in cli.p.events() if d.get("level") == "warn"]
    check_eq([d["event"] for d in warns], ["pool_failed"],
             "client warnings while the server is down")
    m = scrape(cli)
    fails = m.get("upseal_pool_failures_total", tunnel="app")
    # Up to 4 at once (one round), then one at about 1s and 3s: not dozens.
    check(2 <= fails <= 8, "pool failures in ~3.5s of downtime: %r" % fails)
    # A new server at the same address.
    st = dict(srv.tunnels)
    st["app"] = dict(st["app"], listen=addr)
    Side(h, "server", "server2", st, {"log_level": "info"})
    cli.p.wait_event("pool_recovered", scaled(40, 60))
    _filled(cli, 4, count=2)
    s = h.echo_roundtrip(cli.addr(), b"after the restart\n")
    s.close()


@timeout(60)
def test_reload_flushes_and_refills(h):
    """SIGHUP on the client: the pool's conns are closed (quietly) and a
    pool of the new size is opened with the new settings."""
    be = h.counting_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=2)
    _filled(cli, 2)
    first = set(d["id"] for d in cli.p.events("pool_conn_ready"))
    cli.tunnels["app"]["pool"] = "3"
    cli.reload()
    _filled(cli, 3, count=2)
    flushed = cli.p.events("pool_conn_end", reason="pool_flush")
    check_eq(set(d["id"] for d in flushed), first,
             "conns closed by the reload")
    ready = [d["id"] for d in cli.p.events("pool_conn_ready")]
    check_eq(len(ready), 5, "pool conns made ready (2 before, 3 after)")
    srv.p.wait_for(r"reason=pool_closed", 10, 2)
    check_eq(be.accepted, 0, "backend connections")
    # pool = 0 by reload: everything closes, nothing is reopened.
    cli.tunnels["app"]["pool"] = "0"
    cli.reload()
    _wait_metric(cli, "upseal_pool_ready", 0)
    s = h.echo_roundtrip(cli.addr(), b"no pool\n")
    s.close()
    check_eq(scrape(cli).get("upseal_pool_misses_total", tunnel="app"), 0,
             "misses with pool = 0")


@timeout(60)
def test_sigterm_with_full_pool_exits_promptly(h):
    """A full pool holds nothing a client waits for: SIGTERM ends both
    sidecars well before drain_timeout."""
    be = h.counting_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=8,
                                log_level="info")
    _filled(cli, 8)
    for side in (cli, srv):
        t0 = time.monotonic()
        side.p.signal(signal.SIGTERM)
        rc = side.p.wait(scaled(5, 15))
        dt = time.monotonic() - t0
        check_eq(rc, 0, "%s exit status after SIGTERM" % side.name)
        check(dt < 1.5, "%s took %.1fs to stop with a full pool "
              "(drain_timeout is %ds)" % (side.name, dt, h.drain_s))
        check_eq([d for d in side.p.events("drain_timeout")], [],
                 "%s drain_timeout lines" % side.name)


@timeout(60)
def test_sigterm_on_server_closes_waiting_pool_conns(h):
    """The server stops first: its conns waiting for a preamble close at
    once (no drain wait), and the client discards them quietly."""
    be = h.counting_backend()
    cli, srv, _, _ = _pool_pair(h, be.addr, pool=3, log_level="info")
    _filled(cli, 3)
    t0 = time.monotonic()
    srv.p.signal(signal.SIGTERM)
    check_eq(srv.p.wait(scaled(5, 15)), 0, "server exit status")
    check(time.monotonic() - t0 < 1.5, "server took %.1fs to stop"
          % (time.monotonic() - t0))
    _wait_metric(cli, "upseal_pool_ready", 0)
    check_eq(be.accepted, 0, "backend connections")


# --- peers that are not upseal-client --------------------------------------

def _tls_client(h, addr, ident, alpn=None, timeout_s=10.0):
    """test_reject's pinned TLS 1.2 client, offering alpn if given."""
    return _pinned_tls_client(h, addr, ident, timeout_s, alpn=alpn)


def _tls_read(s, obj, inc, n, timeout_s=10.0):
    got = b""
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        check(time.monotonic() < deadline, "TLS read: %d of %d bytes" %
              (len(got), n))
        try:
            got += obj.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        s.settimeout(max(0.1, deadline - time.monotonic()))
        d = s.recv(65536)
        check(d, "closed after %d of %d bytes" % (len(got), n))
        inc.write(d)
    return got


@timeout(60)
def test_wrong_preamble_byte_is_refused(h):
    """A pinned peer that negotiates upseal/1 and then sends anything but
    0x01: bad_preamble (a warning naming the byte), no backend dial."""
    be = h.counting_backend()
    cli, srv, sid, cid = start_pair(h, be.addr)
    s, obj, inc, out = _tls_client(h, srv.addr(), cid, alpn=[ALPN])
    check_eq(obj.selected_alpn_protocol(), ALPN, "negotiated ALPN")
    obj.write(b"GET / HTTP/1.0\r\n\r\n")
    s.sendall(out.read())
    how, _, n = wait_closed(s, 5)
    check(how != "open", "connection still open after a bad preamble")
    end = srv.p.wait_event("conn_end", 10, reason="bad_preamble")
    check_eq(end["level"], "warn", "level of the bad_preamble line")
    check("0x47" in end.get("error", ""), "the error names the byte 0x47: %r"
          % end.get("error"))
    time.sleep(0.2)   # a wrongly dialed backend would show up by now
    check_eq(be.accepted, 0, "backend connections after a bad preamble")


@timeout(60)
def test_upseal_alpn_peer_with_right_preamble(h):
    """A peer of our own making that speaks the preamble: 0x01 then data in
    the same record reaches the backend without the 0x01."""
    be = h.echo_backend()
    cli, srv, sid, cid = start_pair(h, be.addr)
    s, obj, inc, out = _tls_client(h, srv.addr(), cid, alpn=[ALPN])
    obj.write(b"\x01hello")
    s.sendall(out.read())
    check_eq(_tls_read(s, obj, inc, 5), b"hello", "echo after the preamble")
    check_eq(be.accepted, 1, "backend connections")


@timeout(60)
def test_alpn_less_client_gets_plain_behaviour(h):
    """A TLS client without ALPN (as openssl s_client, stunnel or nginx
    proxy_ssl by default): the server dials the backend right after the
    handshake, and the first byte is data, not a preamble."""
    be = h.banner_first_backend(b"banner\n")
    cli, srv, sid, cid = start_pair(h, be.addr)
    s, obj, inc, out = _tls_client(h, srv.addr(), cid)
    check_eq(obj.selected_alpn_protocol(), None, "negotiated ALPN")
    # The banner comes without us sending anything: dialed at once.
    check_eq(_tls_read(s, obj, inc, 7), b"banner\n", "banner")
    check_eq(be.accepted, 1, "backend connections")


@timeout(60)
def test_openssl_s_client_without_alpn(h):
    """openssl s_client without -alpn: the server dials the backend right
    after the handshake, before s_client sends a byte, as before the pool;
    a first byte of 0x02 is data, echoed."""
    be = h.echo_backend()
    cli, srv, sid, cid = start_pair(h, be.addr, upseal={"log_level": "debug"})
    peer = OpenSSLPeer(h, "s_client", [
        "s_client", "-connect", srv.addr(), "-cert", cid.crt, "-key",
        cid.key, "-no_ign_eof"])
    peer.wait_output(r"Cipher is ")
    check_eq(be.wait_accepted(1, 10), 1, "backend connections before "
             "s_client sent anything")
    peer.send(b"\x02plain bytes\n")
    peer.wait_output(r"\x02plain bytes\n")
    peer.close_stdin()
    check(peer.wait(10) is not None, "s_client did not exit")
    check_eq(srv.p.events("preamble"), [], "preamble lines for an ALPN-less "
             "peer")
    check_eq(srv.p.events("conn_end", reason="bad_preamble"), [],
             "bad_preamble lines for an ALPN-less peer")


@timeout(60)
def test_other_alpn_only_is_refused_clearly(h):
    """A client offering only other ALPN protocols (curl --http2 at the
    server): mbedTLS refuses it with no_application_protocol, logged as
    such; the backend is not dialed."""
    be = h.counting_backend()
    cli, srv, sid, cid = start_pair(h, be.addr)
    r = h.openssl(["s_client", "-connect", srv.addr(), "-cert", cid.crt,
                   "-key", cid.key, "-alpn", "h2,http/1.1"],
                  input=b"", timeout=20)
    check(r.returncode != 0 or "no application protocol" in r.err + r.out,
          "s_client with -alpn h2 was not refused: %r" % r.out[-300:])
    d = srv.p.wait_refused(10)
    check_eq(d["reason"], "no_application_protocol", "refused handshake's reason")
    check(ALPN in d.get("error", ""), "the error names %s: %r"
          % (ALPN, d.get("error")))
    check_eq(be.accepted, 0, "backend connections")
