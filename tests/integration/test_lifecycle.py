"""Connection and process lifecycle: truncation, refused backends,
max_connections, idle timeout, SIGTERM drain."""

import signal
import socket
import threading
import time

from harness import (check, check_eq, free_port, recv_all, recv_exact,
                     scaled, sockaddr, timeout, wait_closed)

MiB = 1024 * 1024


def _reason_lines(proc, reason, n=1, timeout_s=10.0):
    proc.wait_for(r'\breason=%s\b|"reason"\s*:\s*"%s"' % (reason, reason),
                  timeout_s, n)
    return [d for d in proc.events() if d.get("reason") == reason]


@timeout(60)
def test_truncation_server_killed(h):
    """kill -9 upseal-server on a live, quiet connection: the kernel sends a
    FIN without close_notify; upseal-client must call it a truncation and
    reset the application's connection."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    s = h.echo_roundtrip(cli.addr("app"), b"x" * 100000)
    srv.kill9()
    t0 = time.monotonic()
    how, dt, n = wait_closed(s, 5)
    check(how != "open", "app connection still open 5s after the server died")
    check(dt < scaled(2, 4), "app connection closed only after %.2fs" % dt)
    check_eq(how, "reset", "how the app's connection ended (contract: "
             "a TLS end without close_notify resets the plaintext end)")
    _reason_lines(cli, "truncated")


@timeout(60)
def test_server_killed_while_data_flows(h):
    """kill -9 upseal-server while bytes move both ways: the app's
    connection is reset (not a clean EOF) and the client logs why.

    One thread drives the socket: while data flows, sends and receives
    interleave (non-blocking); from the kill on, the app only receives, so
    a reset cannot be consumed by a send and shows up in recv."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    s = h.echo_roundtrip(cli.addr("app"))
    s.setblocking(False)
    chunk = b"y" * 65536
    sent = got = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline or got < 256 * 1024:
        check(time.monotonic() < deadline + 10, "echo did not flow "
              "(sent %d, got %d)" % (sent, got))
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            pass
        try:
            got += len(s.recv(1024 * 1024))
        except BlockingIOError:
            time.sleep(0.001)
    s.setblocking(True)
    srv.kill9()
    how, dt, n = wait_closed(s, 5)
    check(how != "open", "app connection still open 5s after the server died")
    check(dt < scaled(2, 4), "app connection closed only after %.2fs" % dt)
    end = cli.wait_event("conn_end")
    check(end.get("reason") in ("truncated", "reset", "tls_reset"),
          "client conn_end reason %r, want truncated or a reset" % end.get("reason"))
    check_eq(how, "reset", "how the app's connection ended (client logged "
             "reason=%s)" % end.get("reason"))


@timeout(60)
def test_truncation_client_killed(h):
    """kill -9 upseal-client: upseal-server logs truncated and resets the
    backend's connection."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    h.echo_roundtrip(cli.addr("app"), b"z" * 5000)
    cli.kill9()
    _reason_lines(srv, "truncated")
    deadline = time.monotonic() + 5
    while not be.errors and time.monotonic() < deadline:
        time.sleep(0.02)
    check(be.errors and "ConnectionResetError" in be.errors[0][1],
          "backend's connection ended with %r / results %r, want a reset"
          % (be.errors, be.results))


@timeout(60)
def test_backend_refused_then_back(h):
    port = free_port()
    addr = "127.0.0.1:%d" % port
    cli, srv, _ = h.pair(addr, server_opts={"connect_timeout": "2s"})
    try:
        s = h.connect(cli.addr("app"))
        s.sendall(b"hello?\n")
        how, dt, n = wait_closed(s, 5)
    except ConnectionResetError:
        how, dt, n = "reset", 0.0, 0   # closed before connect() returned
    check(how != "open", "app connection open 5s after the backend refused")
    check(dt < 2.5, "app connection closed after %.2fs (connect_timeout 2s)" % dt)
    check_eq(n, 0, "bytes from a refused backend")
    _reason_lines(srv, "connect_failed")
    be = h.echo_backend(port=port)
    h.echo_roundtrip(cli.addr("app"), b"backend is back\n")
    check_eq(be.accepted, 1, "backend connections")


def _max_conn(h, which):
    be = h.echo_backend()
    opts = {"max_connections": "2"}
    if which == "client":
        cli, srv, _ = h.pair(be.addr, client_opts=opts)
    else:
        cli, srv, _ = h.pair(be.addr, server_opts=opts,
                             client_opts={"handshake_timeout": "20s"})
    s1 = h.echo_roundtrip(cli.addr("app"), b"one\n")
    s2 = h.echo_roundtrip(cli.addr("app"), b"two\n")
    s3 = h.connect(cli.addr("app"))
    s3.sendall(b"three\n")
    s3.settimeout(1.0)
    try:
        early = s3.recv(100)
    except socket.timeout:
        early = None
    check(early is None, "third connection got %r while two were open "
          "(max_connections=2 on the %s)" % (early, which))
    check_eq(be.accepted, 2, "backend connections at the cap")
    s1.close()
    got = recv_exact(s3, 6, 10)
    check_eq(got, b"three\n", "third connection after one closed")
    check_eq(be.accepted, 3, "backend connections")
    s2.close()
    s3.close()
    # With both slots free again, the next connection is served at once.
    h.echo_roundtrip(cli.addr("app"), b"four\n").close()
    check_eq(be.accepted, 4, "backend connections")


@timeout(60)
def test_max_connections_client(h):
    _max_conn(h, "client")


@timeout(60)
def test_max_connections_server(h):
    _max_conn(h, "server")


@timeout(60)
def test_idle_timeout(h):
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, client_opts={"idle_timeout": "1s"})
    # A connection that keeps moving bytes is not idle.
    busy = h.echo_roundtrip(cli.addr("app"))
    for _ in range(6):
        time.sleep(0.4)   # pacing the traffic under test, not a readiness wait
        busy.sendall(b".")
        check_eq(recv_exact(busy, 1, 5), b".", "busy echo")
    # A silent one is.
    s = h.echo_roundtrip(cli.addr("app"))
    t0 = time.monotonic()
    how, dt, n = wait_closed(s, scaled(5, 10))
    check(how != "open", "idle connection still open after %.1fs" % dt)
    check(dt >= 0.8, "idle connection closed after %.2fs < idle_timeout" % dt)
    check(dt <= scaled(3.5, 6), "idle connection closed only after %.2fs" % dt)
    _reason_lines(cli, "idle_timeout")


def _refused_soon(addr, limit):
    """Probe addr until a new connection is refused (within limit s).
    Returns (refused, how many probes connected before that)."""
    fam, sa = sockaddr(addr)
    deadline = time.monotonic() + limit
    connected = 0
    while time.monotonic() < deadline:
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.settimeout(1)
        try:
            t.connect(sa)
            connected += 1
        except (ConnectionRefusedError, FileNotFoundError):
            return True, connected
        except OSError:
            pass
        finally:
            t.close()
        time.sleep(0.05)   # probe interval, bounded by the deadline
    return False, connected


def _drain(h, which):
    h.drain_s = 10
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    target = srv if which == "server" else cli
    s = h.echo_roundtrip(cli.addr("app"))
    result = {}

    def stream():
        try:
            chunk = b"d" * 32768
            for i in range(40):
                s.sendall(chunk)
                if recv_exact(s, len(chunk), 10) != chunk:
                    result["err"] = "echo mismatch at chunk %d" % i
                    return
                result["chunks"] = i + 1
                time.sleep(0.05)   # keep the connection busy across the drain
            s.shutdown(socket.SHUT_WR)
            rest, how = recv_all(s, 10)
            result["end"] = (rest, how)
        except Exception as e:
            result["err"] = repr(e)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while result.get("chunks", 0) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    check(result.get("chunks", 0) >= 5, "stream did not start: %r" % result)
    target.signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    refused, probes = _refused_soon(target.addr("app"), 3)
    check(refused, "%s still accepts connections 3s after SIGTERM" % which)
    if which == "server":
        # Through the client: not served, never reaches the backend.
        try:
            x = h.connect(cli.addr("app"))
            x.sendall(b"new\n")
            how, _, n = wait_closed(x, 10)
        except ConnectionResetError:
            n = 0   # refused upstream and reset before connect() returned
        check_eq(n, 0, "bytes for a connection made during the drain")
    t.join(20)
    check(not t.is_alive(), "streaming connection did not finish")
    check("err" not in result, "streaming connection: %s" % result.get("err"))
    check_eq(result.get("chunks"), 40, "chunks echoed")
    check_eq(result.get("end"), (b"", "eof"), "end of the drained connection")
    rc = target.wait(scaled(5, 15))
    took = time.monotonic() - sigterm_at
    check(rc is not None, "%s still running %.1fs after SIGTERM" % (which, took))
    check_eq(rc, 0, "%s exit status after SIGTERM" % which)
    check(took < h.drain_s, "%s took %.1fs to exit, the drain limit (%ds) "
          "rather than the end of its last connection" % (which, took, h.drain_s))
    if which == "server":
        # Probes of the TLS port never handshake: only the stream got through.
        check_eq(be.accepted, 1, "backend connections")
    else:
        # A probe accepted before the listener closed is served normally.
        check(be.accepted <= 1 + probes, "backend connections %d > 1 + %d "
              "probes accepted before the listener closed" % (be.accepted, probes))
    ends = target.events("conn_end")
    check(any(e.get("reason") == "closed" for e in ends),
          "%s conn_end reasons %r" % (which, [e.get("reason") for e in ends]))


@timeout(60)
def test_sigterm_drains_server(h):
    _drain(h, "server")


@timeout(60)
def test_sigterm_drains_client(h):
    _drain(h, "client")


@timeout(60)
def test_drain_timeout_ends_lingering_connection(h):
    h.drain_s = 1
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    s = h.echo_roundtrip(cli.addr("app"))
    t0 = time.monotonic()
    cli.signal(signal.SIGINT)
    how, dt, n = wait_closed(s, scaled(5, 10))
    check(how != "open", "connection still open %.1fs after SIGINT "
          "(drain_timeout 1s)" % dt)
    rc = cli.wait(scaled(5, 10))
    took = time.monotonic() - t0
    check_eq(rc, 0, "client exit status after SIGINT")
    check(0.8 <= took <= scaled(4, 8), "client exited %.2fs after SIGINT "
          "(drain_timeout 1s)" % took)
    _reason_lines(cli, "drain")


def _blackhole(h):
    """A TCP address where connect() hangs: a listener with a full accept
    queue that never accepts (further SYNs are dropped)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    h.cleanups.append(ls.close)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(ls.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
        h.socks.append(s)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(ls.getsockname())
        hangs = False
    except socket.timeout:
        hangs = True
    finally:
        probe.close()
    check(hangs, "could not make a connect() that hangs on this host")
    return "127.0.0.1:%d" % ls.getsockname()[1]


@timeout(60)
def test_connect_timeout_server_to_backend(h):
    hole = _blackhole(h)
    cli, srv, _ = h.pair(hole, server_opts={"connect_timeout": "1s"},
                         client_opts={"idle_timeout": "30s"})
    s = h.connect(cli.addr("app"))
    s.sendall(b"anyone?\n")
    how, dt, n = wait_closed(s, scaled(6, 12))
    check(how != "open", "app connection open %.1fs after connect_timeout=1s" % dt)
    check(0.8 <= dt <= scaled(4, 8), "closed after %.2fs, want ~1s" % dt)
    check_eq(n, 0, "bytes back")
    _reason_lines(srv, "connect_timeout")


@timeout(60)
def test_connect_timeout_client_to_server(h):
    hole = _blackhole(h)
    cid = h.identity("cli")
    sid = h.identity("srv")
    cli = h.start_client({"app": {"connect": hole, "cert": cid.crt,
                                  "key": cid.key, "pin": sid.pin,
                                  "connect_timeout": "1s"}}, name="client")
    s = h.connect(cli.addr("app"))
    s.sendall(b"anyone?\n")
    how, dt, n = wait_closed(s, scaled(6, 12))
    check(how != "open", "app connection open %.1fs after connect_timeout=1s" % dt)
    check(0.8 <= dt <= scaled(4, 8), "closed after %.2fs, want ~1s" % dt)
    _reason_lines(cli, "connect_timeout")
