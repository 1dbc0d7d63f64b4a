"""Hostile peers and network faults (issue 5): malformed records, a
renegotiation attempt, a forged CertificateVerify, slow and half-open
sockets, resets and kills in the middle of a transfer, descriptor
exhaustion, a black-holed backend and a partition (network namespaces and
nftables), churn, and the identity cases not covered by test_reject.

Each case ends with the daemon's open descriptors back at the baseline
measured before it (from /proc/PID/fd): a connection that is not torn down
shows up there. Every loop is bounded in count and in time, ports are
picked by the kernel, and only the processes the test started are killed.
"""

import os
import socket
import struct
import subprocess
import threading
import time

from harness import (Backend, Flow, Proc, Source, check, check_eq, recv_exact,
                     run_flows, scaled, slow, timeout, wait_closed)
from netfault import NetPair, in_netns
from test_reject import _client_hello_bytes, _pinned_tls_client

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))


# --- measurements ----------------------------------------------------------

def fds(proc):
    try:
        return len(os.listdir("/proc/%d/fd" % proc.pid))
    except OSError:
        return None


def wait_fds(proc, want, limit, what=""):
    """Wait (bounded) until proc has at most `want` descriptors open."""
    deadline = time.monotonic() + limit
    n = fds(proc)
    while n is not None and n > want and time.monotonic() < deadline:
        time.sleep(0.05)
        n = fds(proc)
    check(n is not None and n <= want, "%s: %s descriptors open %.0fs later, "
          "baseline %d%s" % (proc.name, n, limit, want,
                             " (%s)" % what if what else ""))
    return n


def settle_baseline(h, cli, addr):
    """One round trip to warm up, then the daemons' descriptor counts."""
    h.echo_roundtrip(addr, b"warm-up\n").close()
    cli.wait_event("conn_end")
    time.sleep(0.1)   # let the last close callbacks run before counting
    return fds(cli)


def _conn_ends(proc, n, limit=10.0):
    proc.wait_for(r"event=conn_end|\"event\"\s*:\s*\"conn_end\"", limit, n)
    return proc.events("conn_end")


def _echo_pair(h, **kw):
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr, **kw)
    h.echo_roundtrip(cli.addr("app"), b"warm-up\n").close()
    cli.wait_event("conn_end")
    srv.wait_event("conn_end")
    time.sleep(0.1)   # last close callbacks
    return be, cli, srv, ids, fds(srv), fds(cli)


def _wait_backend_end(be, n=1, limit=5.0):
    """Wait until n backend connections ended (EOF result or error)."""
    deadline = time.monotonic() + limit
    while len(be.results) + len(be.errors) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(be.results) + len(be.errors) >= n


# --- raw records -------------------------------------------------------------

def _raw_case(h, srv, base, payload, what, limit=2.0):
    """A raw TCP peer sends payload to the TLS port: closed promptly."""
    s = h.connect(srv.addr("app"))
    t0 = time.monotonic()
    try:
        s.sendall(payload)
    except OSError:
        pass
    how, dt, _ = wait_closed(s, scaled(limit, limit * 3))
    check(how != "open", "%s: still open after %.1fs (handshake_timeout is "
          "5s: the record itself must end it)" % (what, time.monotonic() - t0))
    s.close()
    return how


def _tls_then(h, srv, ident, raw, what):
    """A pinned TLS client completes the handshake and one echo, then
    writes raw bytes under the TLS layer: the connection is closed promptly
    and the backend's end is reset (not a clean EOF)."""
    s, obj, inc, out = _pinned_tls_client(h, srv.addr("app"), ident)
    obj.write(b"before\n")
    s.sendall(out.read())
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < 7 and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        d = s.recv(65536)
        check(d, "%s: closed before the echo" % what)
        inc.write(d)
        try:
            got += obj.read(65536)
        except Exception:
            pass
    check_eq(got, b"before\n", "%s: echo before the bad record" % what)
    s.sendall(raw)
    how, dt, _ = wait_closed(s, scaled(3, 9))
    check(how != "open", "%s: connection still open %.1fs after" % (what, dt))
    s.close()
    return how, dt


@timeout(60)
def test_unknown_record_content_type(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    n0 = len(srv.events("conn_end"))
    # Before any handshake: a record of type 99.
    _raw_case(h, srv, base_s, bytes.fromhex("6303030005") + b"hello",
              "type 99 as the first record")
    # After a pinned handshake: a record of type 99 between app records.
    how, dt = _tls_then(h, srv, ids["client"],
                        bytes.fromhex("6303030010") + bytes(16),
                        "type 99 after the handshake")
    ends = _conn_ends(srv, n0 + 2)[n0:]
    reasons = [e.get("reason") for e in ends]
    h.note("type 99 logged as %s" % reasons)
    check(all(r not in ("closed", None) for r in reasons),
          "a bad record ended as %r" % reasons)
    check(_wait_backend_end(be, 2), "backend leg of the bad connection "
          "still open")
    wait_fds(srv, base_s, scaled(3, 9), "after two type-99 records")
    h.echo_roundtrip(cli.addr("app"), b"still serving\n")


@timeout(60)
def test_overlong_record(h):
    """Length 18,433: one more than the largest TLS 1.2 ciphertext."""
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    n0 = len(srv.events("conn_end"))
    _raw_case(h, srv, base_s, bytes.fromhex("1603034801") + bytes(1024),
              "over-long handshake record")
    _tls_then(h, srv, ids["client"], bytes.fromhex("1703034801") + bytes(1024),
              "over-long application record")
    ends = _conn_ends(srv, n0 + 2)[n0:]
    reasons = [e.get("reason") for e in ends]
    h.note("over-long records logged as %s" % reasons)
    check(all(r not in ("closed", None) for r in reasons),
          "an over-long record ended as %r" % reasons)
    wait_fds(srv, base_s, scaled(3, 9), "after over-long records")
    h.echo_roundtrip(cli.addr("app"), b"still serving\n")


@timeout(60)
def test_renegotiation_refused(h):
    """openssl s_client (pinned client certificate) sends `R` after the
    handshake: the server must answer with an alert (no_renegotiation, or a
    fatal one) or close; never a second handshake; then back to baseline."""
    be, cli, srv, ids, base_s, base_c = _echo_pair(h, upseal={"log_level": "debug"})
    c = ids["client"]
    out_path = h.path("s_client.out")
    with open(out_path, "wb") as out:
        p = subprocess.Popen(["openssl", "s_client", "-msg", "-connect",
                              srv.addr("app"), "-tls1_2", "-cert", c.crt,
                              "-key", c.key], stdin=subprocess.PIPE,
                             stdout=out, stderr=subprocess.STDOUT)
    h.cleanups.append(lambda: p.poll() is None and p.kill())

    def text():
        with open(out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_text(pred, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if pred(text()) or p.poll() is not None:
                return pred(text())
            time.sleep(0.05)
        return pred(text())

    p.stdin.write(b"hello-before\n")
    p.stdin.flush()
    check(wait_text(lambda t: t.count("hello-before") >= 1 and
                    "Verify return code" in t, scaled(10, 30)),
          "no echo before renegotiating:\n" + text()[-3000:])
    p.stdin.write(b"R\n")
    p.stdin.flush()
    check(wait_text(lambda t: "RENEGOTIATING" in t, 5),
          "s_client did not start renegotiating:\n" + text()[-2000:])

    def answered(t):
        after = t.split("RENEGOTIATING", 1)[1]
        return "<<< TLS 1.2, Alert" in after or "Alert [length" in after.split(
            "ClientHello", 1)[-1]
    limit = scaled(5, 10)
    t0 = time.monotonic()
    got_alert = wait_text(answered, limit)
    closed = p.poll() is not None or len(srv.events("conn_end")) > 1
    try:
        p.stdin.close()
    except OSError:
        pass
    after = text().split("RENEGOTIATING", 1)[1]
    check(got_alert or closed,
          "the server neither sent an alert nor closed %.0fs after a "
          "client-initiated renegotiation (the client hangs until "
          "idle_timeout). s_client after RENEGOTIATING:\n%s"
          % (time.monotonic() - t0, after[:1500]))
    check_eq(len(srv.events("handshake_done")), 2,
             "handshakes (warm-up + s_client; a renegotiation must not add one)")
    if p.poll() is None:
        p.wait(5)
    if p.poll() is None:
        p.kill()
    srv.wait_event("conn_end", count=2)
    wait_fds(srv, base_s, scaled(3, 9), "after the renegotiation attempt")


def _forge_tool(h):
    exe = h.path("forge_cv")
    r = subprocess.run(["cc", "-O1", "-o", exe,
                        os.path.join(HERE, "helpers", "forge_cv.c"),
                        "-lmbedtls", "-lmbedx509", "-lmbedcrypto"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    check(r.returncode == 0, "building helpers/forge_cv.c failed:\n%s"
          % r.stdout.decode())
    return exe


@timeout(60)
def test_forged_certificate_verify(h):
    """A client presents the pinned client's certificate (public) but signs
    CertificateVerify with another key: refused in the handshake."""
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    exe = _forge_tool(h)
    host, port = srv.addr("app").rsplit(":", 1)
    c = ids["client"]
    # Control: the same tool, honest (matching key), is served.
    r = h.run([exe, host, port, c.crt, c.key], timeout=scaled(20, 60))
    check(r.returncode == 0 and "echo ok" in r.out,
          "control (honest key) failed: exit %d %s" % (r.returncode, r.out))
    other = h.identity("thief")
    accepted = be.accepted
    r = h.run([exe, host, port, c.crt, other.key], timeout=scaled(20, 60))
    check(r.returncode == 1 and "handshake failed" in r.out,
          "forged CertificateVerify: exit %d, output %r" % (r.returncode, r.out))
    check_eq(be.accepted, accepted, "backend connections after the forgery")
    fails = srv.wait_refused()
    h.note("forged CertificateVerify logged as reason=%s error=%s"
           % (fails.get("reason"), fails.get("error")))
    wait_fds(srv, base_s, scaled(3, 9), "after the forgery")


# --- slow and half-open peers ---------------------------------------------

@timeout(60)
def test_half_client_hello_reaped(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(
        h, server_opts={"handshake_timeout": "1s"})
    hello = _client_hello_bytes()
    s = h.connect(srv.addr("app"))
    s.sendall(hello[:len(hello) // 2])
    t0 = time.monotonic()
    how, _, _ = wait_closed(s, scaled(5, 12))
    dt = time.monotonic() - t0
    check(how != "open", "half a ClientHello: still open after %.1fs" % dt)
    check(0.8 <= dt <= scaled(3, 8), "half a ClientHello reaped after %.2fs, "
          "handshake_timeout 1s" % dt)
    e = srv.wait_event("conn_end", count=2)
    check_eq(e.get("reason"), "handshake_timeout", "reason")
    wait_fds(srv, base_s, scaled(3, 9))


@timeout(90)
def test_sixty_silent_sockets_do_not_block_service(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(
        h, server_opts={"handshake_timeout": "3s"})
    hello = _client_hello_bytes()
    bad = []
    for i in range(60):
        s = h.connect(srv.addr("app"))
        if i % 3 == 1:
            s.sendall(hello[:len(hello) // 2])         # stalls mid-hello
        elif i % 3 == 2:
            s.sendall(hello[:7])
            s.shutdown(socket.SHUT_WR)                 # half-open
        bad.append(s)
    # A real client through the tunnel is served at once.
    t0 = time.monotonic()
    h.echo_roundtrip(cli.addr("app"), b"served among sixty stalls\n",
                     timeout=5).close()
    dt = time.monotonic() - t0
    check(dt < scaled(1.0, 3.0), "a real client waited %.2fs while 60 "
          "sockets stalled" % dt)
    h.note("real client served in %.0f ms next to 60 stalled sockets"
           % (dt * 1000))
    for s in bad:
        how, _, _ = wait_closed(s, scaled(8, 20))
        check(how != "open", "a stalled socket outlived handshake_timeout")
    wait_fds(srv, base_s, scaled(3, 9), "after 60 stalled sockets")


# --- resets and kills in the middle of a transfer --------------------------

class _RstBackend(Backend):
    """Sends `n` bytes, then closes with SO_LINGER 0 (an RST)."""

    def __init__(self, h, n, **kw):
        self.n = n
        super().__init__(h, **kw)

    def handle(self, s, idx):
        src = Source(self.n, seed=idx)
        while not src.done():
            src.advance(s.send(src.peek()))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        s.close()
        with self.lock:
            self.results.append(self.n)


def _stream_some(s, n):
    """Push and pull until n bytes came back (bounded)."""
    s.setblocking(False)
    chunk = b"m" * 65536
    got = 0
    deadline = time.monotonic() + scaled(10, 30)
    while got < n:
        check(time.monotonic() < deadline, "stream: only %d bytes back" % got)
        try:
            s.send(chunk)
        except BlockingIOError:
            pass
        try:
            d = s.recv(1 << 20)
            check(d, "stream: EOF after %d bytes" % got)
            got += len(d)
        except BlockingIOError:
            time.sleep(0.002)
    s.setblocking(True)


@timeout(60)
def test_rst_mid_transfer_from_app(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    s = h.connect(cli.addr("app"))
    _stream_some(s, 2 * MiB)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t0 = time.monotonic()
    s.close()
    check(_wait_backend_end(be, 2, scaled(2, 6)),
          "backend leg still open %.1fs after the app's RST"
          % (time.monotonic() - t0))
    dt = time.monotonic() - t0
    e = cli.wait_event("conn_end", count=2)
    h.note("app RST: client reason=%s, backend leg closed after %.0f ms"
           % (e.get("reason"), dt * 1000))
    wait_fds(cli, base_c, scaled(3, 9), "client after the app's RST")
    wait_fds(srv, base_s, scaled(3, 9), "server after the app's RST")
    h.echo_roundtrip(cli.addr("app"), b"after the RST\n")


@timeout(60)
def test_rst_mid_transfer_from_backend(h):
    be = _RstBackend(h, 4 * MiB)
    h.backends.append(be)
    cli, srv, ids = h.pair(be.addr)
    base_c, base_s = fds(cli), fds(srv)
    s = h.connect(cli.addr("app"))
    s.sendall(b"go\n")
    how, dt, n = wait_closed(s, scaled(10, 30))
    check(how != "open", "app leg still open %.1fs after the backend's RST"
          % dt)
    h.note("backend RST: the app's leg ended by %s after %d bytes, %.2fs"
           % (how, n, dt))
    ends = srv.events("conn_end")
    try:
        srv.wait_event("conn_end", scaled(3, 9))
        ends = srv.events("conn_end")
    except AssertionError:
        pass
    check(ends, "the server did not end the connection within %ds of its "
          "backend's RST (the app's leg ended by %s after %d of %d bytes: a "
          "reset must not become a clean end)"
          % (scaled(3, 9), how, n, be.n))
    e = ends[0]
    check_eq(how, "reset", "how the app's leg ended after the backend's RST "
             "(server logged reason=%s)" % e.get("reason"))
    wait_fds(cli, base_c, scaled(3, 9), "client after the backend's RST")
    wait_fds(srv, base_s, scaled(3, 9), "server after the backend's RST")


@timeout(60)
def test_kill9_client_mid_transfer(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    s = h.connect(cli.addr("app"))
    _stream_some(s, 2 * MiB)
    cli.kill9()
    t0 = time.monotonic()
    check(_wait_backend_end(be, 2, scaled(2, 6)),
          "backend leg still open %.1fs after upseal-client was killed"
          % (time.monotonic() - t0))
    e = srv.wait_event("conn_end", count=2)
    check(e.get("reason") in ("truncated", "tls_reset"),
          "server reason %r after kill -9 of the client" % e.get("reason"))
    wait_fds(srv, base_s, scaled(3, 9), "server after the client died")


@timeout(60)
def test_kill9_server_mid_transfer_fds(h):
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    s = h.connect(cli.addr("app"))
    _stream_some(s, 2 * MiB)
    srv.kill9()
    how, dt, _ = wait_closed(s, 5)
    check(how != "open" and dt < scaled(2, 4),
          "app leg %s %.1fs after upseal-server was killed" % (how, dt))
    wait_fds(cli, base_c, scaled(3, 9), "client after the server died")


# --- descriptor exhaustion ----------------------------------------------------

@timeout(120)
def test_descriptor_exhaustion(h):
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    t = h._tunnels({"app": {"connect": be.addr, "cert": sid.crt,
                            "key": sid.key, "pin": cid.pin,
                            "handshake_timeout": "60s"}},
                   {"listen": "127.0.0.1:0"})
    ini = h.write_ini("server-nofile", t)
    srv = Proc(h, "server", ["prlimit", "--nofile=64", "--",
                             h.bin("upseal-server"), "-c", ini], h.dir)
    h.procs.append(srv)
    srv.wait_ready()
    cli = h.start_client({"app": {"connect": srv.addr("app"), "cert": cid.crt,
                                  "key": cid.key, "pin": sid.pin,
                                  "handshake_timeout": "10s"}}, name="client")
    h.echo_roundtrip(cli.addr("app"), b"before\n").close()
    base = fds(srv)
    hogs = []
    fam = socket.AF_INET
    host, port = srv.addr("app").rsplit(":", 1)
    for _ in range(200):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, int(port)))
        except OSError:
            s.close()
            continue
        hogs.append(s)
    h.socks.extend(hogs)
    deadline = time.monotonic() + 5
    while fds(srv) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    full = fds(srv)
    check(full >= 60, "the server holds only %d descriptors with %d "
          "connections open: not exhausted" % (full, len(hogs)))
    time.sleep(0.5)    # let any accept storm show itself before measuring
    cpu0 = srv.cpu_seconds()
    time.sleep(2.0)    # the measurement window
    cpu = srv.cpu_seconds() - cpu0
    check(srv.alive(), "upseal-server died at the descriptor limit")
    check(cpu < 0.5, "upseal-server burned %.2f s of CPU in 2 s while out of "
          "descriptors (accept busy loop?)" % cpu)
    # New connections while exhausted: may fail, must not crash anything.
    for _ in range(5):
        try:
            x = h.connect(cli.addr("app"), timeout=3)
            x.sendall(b"x")
            wait_closed(x, 3)
        except OSError:
            pass
    warns = len(srv.events("accept_error"))
    h.note("exhausted at %d fds (baseline %d); CPU %.3f s in 2 s; %d "
           "accept_error lines" % (full, base, cpu, warns))
    check(warns < 1000, "%d accept_error lines: a log flood" % warns)
    for s in hogs:
        s.close()
    wait_fds(srv, base, scaled(5, 15), "after the hogs left")
    # Service resumes.
    deadline = time.monotonic() + scaled(10, 30)
    last = None
    while time.monotonic() < deadline:
        try:
            h.echo_roundtrip(cli.addr("app"), b"after\n", timeout=5).close()
            last = None
            break
        except Exception as e:
            last = e
            time.sleep(0.2)
    check(last is None, "no service after the descriptors were freed: %r"
          % last)
    check(srv.alive(), "upseal-server died")


# --- network namespaces ----------------------------------------------------------

def _ns_proc(h, net, ns, binary, ini, name):
    p = Proc(h, name, net.argv(ns, [h.bin(binary), "-c", ini]), h.dir)
    h.procs.append(p)
    p.wait_ready()
    return p


def _ns_connect(ns, addr, timeout_s=10):
    host, port = addr.rsplit(":", 1)

    def mk():
        s = socket.socket()
        s.settimeout(timeout_s)
        s.connect((host, int(port)))
        return s
    return in_netns(ns, mk)


@timeout(90)
def test_blackholed_backend_other_tunnel_unaffected(h):
    net = NetPair(h)
    hole_port = 9
    net.drop_tcp_port(net.b, hole_port)
    be = in_netns(net.a, h.echo_backend)     # a backend in namespace A
    sid, cid = h.identity("srv"), h.identity("cli")
    common = {"listen": "127.0.0.1:0", "cert": sid.crt, "key": sid.key,
              "pin": cid.pin, "handshake_timeout": "5s"}
    sini = h.write_ini("server", {
        "hole": dict(common, connect="%s:%d" % (net.ip_b, hole_port),
                     allow_remote="yes", connect_timeout="1s"),
        "ok": dict(common, connect=be.addr)})
    srv = _ns_proc(h, net, net.a, "upseal-server", sini, "server")
    cc = {"listen": "127.0.0.1:0", "cert": cid.crt, "key": cid.key,
          "pin": sid.pin, "idle_timeout": "30s"}
    cini = h.write_ini("client", {"hole": dict(cc, connect=srv.addr("hole")),
                                  "ok": dict(cc, connect=srv.addr("ok"))})
    cli = _ns_proc(h, net, net.a, "upseal-client", cini, "client")
    # Open a good connection first; it must keep working while the other
    # tunnel's dial hangs.
    good = _ns_connect(net.a, cli.addr("ok"))
    h.socks.append(good)
    good.sendall(b"one\n")
    check_eq(recv_exact(good, 4), b"one\n", "good echo")
    s = _ns_connect(net.a, cli.addr("hole"))
    h.socks.append(s)
    s.sendall(b"anyone?\n")
    t0 = time.monotonic()
    for i in range(5):       # the good tunnel, during the hang
        good.sendall(b"during %d\n" % i)
        check_eq(recv_exact(good, 9), b"during %d\n" % i, "good echo")
    how, dt, n = wait_closed(s, scaled(6, 12))
    dt = time.monotonic() - t0
    check(how != "open", "black-holed tunnel still open after %.1fs" % dt)
    check(0.8 <= dt <= scaled(3, 8), "closed after %.2fs, want ~1s "
          "(connect_timeout)" % dt)
    e = srv.wait_event("conn_end", tunnel="hole")
    check_eq(e.get("reason"), "connect_timeout", "black-holed backend reason")
    good.sendall(b"after\n")
    check_eq(recv_exact(good, 6), b"after\n", "good echo after the timeout")
    fresh = _ns_connect(net.a, cli.addr("ok"))
    h.socks.append(fresh)
    fresh.sendall(b"fresh\n")
    check_eq(recv_exact(fresh, 6), b"fresh\n", "a new good connection")


@timeout(120)
def test_partition_mid_stream_then_heal(h):
    net = NetPair(h)
    be = in_netns(net.b, h.echo_backend)     # backend next to the server, in B
    sid, cid = h.identity("srv"), h.identity("cli")
    sini = h.write_ini("server", {"app": {
        "listen": "%s:0" % net.ip_b, "connect": be.addr, "cert": sid.crt,
        "key": sid.key, "pin": cid.pin, "idle_timeout": "1s"}})
    srv = _ns_proc(h, net, net.b, "upseal-server", sini, "server")
    cini = h.write_ini("client", {"app": {
        "listen": "127.0.0.1:0", "connect": srv.addr("app"), "cert": cid.crt,
        "key": cid.key, "pin": sid.pin, "idle_timeout": "1s",
        "connect_timeout": "2s"}})
    cli = _ns_proc(h, net, net.a, "upseal-client", cini, "client")
    s = _ns_connect(net.a, cli.addr("app"))
    h.socks.append(s)
    _stream_some(s, 1 * MiB)
    base_s = fds(srv) - 2   # minus this connection's two legs
    base_c = fds(cli) - 2
    net.partition()
    t0 = time.monotonic()
    try:
        s.sendall(b"lost in the partition\n")
    except OSError:
        pass
    how, _, _ = wait_closed(s, scaled(6, 12))
    dt = time.monotonic() - t0
    check(how != "open", "app leg still open %.1fs into the partition" % dt)
    check(dt <= scaled(4, 8), "app leg closed only after %.1fs "
          "(idle_timeout 1s)" % dt)
    check(_wait_backend_end(be, 1, scaled(5, 10)),
          "backend leg still open %.1fs into the partition"
          % (time.monotonic() - t0))
    ec = cli.wait_event("conn_end")
    es = srv.wait_event("conn_end")
    h.note("partition: client reason=%s, server reason=%s"
           % (ec.get("reason"), es.get("reason")))
    check_eq(ec.get("reason"), "idle_timeout", "client reason")
    check_eq(es.get("reason"), "idle_timeout", "server reason")
    wait_fds(cli, base_c, scaled(3, 9), "client during the partition")
    wait_fds(srv, base_s, scaled(3, 9), "server during the partition")
    net.heal()
    x = _ns_connect(net.a, cli.addr("app"))
    h.socks.append(x)
    x.sendall(b"healed\n")
    check_eq(recv_exact(x, 7, scaled(10, 30)), b"healed\n",
             "echo after the partition healed")


# --- churn -----------------------------------------------------------------------

@slow
@timeout(240)
def test_churn_2000_short_connections(h):
    total = scaled(2000, 400)
    be, cli, srv, ids, base_s, base_c = _echo_pair(h)
    # Warm the allocators (and the per-thread buffer cache) first.
    for _ in range(20):
        h.echo_roundtrip(cli.addr("app"), b"w\n").close()
    time.sleep(0.2)
    rss0 = (cli.rss_kib(), srv.rss_kib())
    errors = []
    done = [0]
    lock = threading.Lock()
    fam_host, port = cli.addr("app").rsplit(":", 1)

    def worker(n):
        for i in range(n):
            try:
                s = socket.create_connection((fam_host, int(port)), timeout=20)
                s.sendall(b"churn %d\n" % i)
                want = len(b"churn %d\n" % i)
                got = recv_exact(s, want, 20)
                if len(got) != want:
                    raise RuntimeError("short echo %r" % got)
                s.close()
                with lock:
                    done[0] += 1
            except Exception as e:
                with lock:
                    errors.append(repr(e))
                if len(errors) > 20:
                    return

    workers = 8
    ts = [threading.Thread(target=worker, args=(total // workers,), daemon=True)
          for _ in range(workers)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(scaled(180, 600))
    dt = time.monotonic() - t0
    check(not any(t.is_alive() for t in ts), "churn did not finish")
    check(not errors, "%d failed connections, first: %s"
          % (len(errors), errors[:3]))
    check_eq(done[0], total // workers * workers, "connections done")
    # Every connection ended on both sides before we count.
    _conn_ends(cli, done[0] + 21, scaled(30, 90))
    _conn_ends(srv, done[0] + 21, scaled(30, 90))
    wait_fds(cli, base_c, scaled(5, 15), "client after churn")
    wait_fds(srv, base_s, scaled(5, 15), "server after churn")
    rss1 = (cli.rss_kib(), srv.rss_kib())
    h.note("%d connections in %.1fs; RSS client %s -> %s KiB, server %s -> %s "
           "KiB" % (done[0], dt, rss0[0], rss1[0], rss0[1], rss1[1]))
    # ASan's quarantine holds freed memory on purpose: only the plain build
    # can say whether memory returns.
    if not scaled(False, True):
        for i, p in enumerate((cli, srv)):
            if None not in (rss0[i], rss1[i]):
                check(rss1[i] - rss0[i] < 4 * 1024, "%s RSS grew %d KiB over "
                      "%d connections" % (p.name, rss1[i] - rss0[i], done[0]))


# --- identities --------------------------------------------------------------

_OPENSSL_CA_CNF = """[ca]
default_ca = d
[d]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth, serverAuth
subjectAltName = DNS:{name}
"""


def _expired_identity(h, ca_base, name):
    """A P-256 identity signed by ca_base (an upseal-certs CA) whose
    validity ended in 2020 (openssl ca -startdate/-enddate)."""
    d = h.path("ossl-" + name)
    os.mkdir(d)
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1000\n")
    cnf = os.path.join(d, "ca.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CA_CNF.format(dir=d, name=name))
    key, csr, crt = (h.path(name + ext) for ext in (".key", ".csr", ".crt"))
    for argv in (["genpkey", "-algorithm", "EC", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-out", key],
                 ["req", "-new", "-key", key, "-subj", "/CN=" + name,
                  "-out", csr],
                 ["ca", "-batch", "-config", cnf, "-cert", ca_base + ".crt",
                  "-keyfile", ca_base + ".key", "-in", csr, "-out", crt,
                  "-startdate", "20200101000000Z", "-enddate",
                  "20200201000000Z", "-extensions", "ext", "-notext"]):
        r = h.openssl(argv)
        check(r.returncode == 0, "openssl %s: %s" % (argv[0], r.err))
    r = h.run([h.bin("upseal-certs"), "pin", crt])
    check(r.returncode == 0, "upseal-certs pin: %s" % r.err)
    from harness import Identity
    return Identity(name, crt, key, r.out.strip())


@timeout(60)
def test_expired_certificate_with_ca_refused(h):
    be = h.counting_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca)
    good = h.identity("good", ca=ca)
    old = _expired_identity(h, ca, "expired")
    base = {"connect": be.addr, "cert": sid.crt, "key": sid.key}
    srv = h.start_server({
        # CA and pins: the expired key is pinned, the date must still fail it.
        "ca": dict(base, ca=ca + ".crt", pin=[good.pin, old.pin]),
        # Pins only: dates are not looked at (the key is what was pinned).
        "pinonly": dict(base, pin=[old.pin])}, name="server")
    mk = lambda ident, tun: {"connect": srv.addr(tun), "cert": ident.crt,
                             "key": ident.key, "pin": sid.pin}
    cli = h.start_client({"good": mk(good, "ca"), "old": mk(old, "ca"),
                          "oldpin": mk(old, "pinonly")}, name="client")
    h.echo_roundtrip(cli.addr("good"), b"valid under the CA\n")
    s = h.connect(cli.addr("old"))
    s.sendall(b"expired\n")
    how, _, n = wait_closed(s, 8)
    check(how != "open" and n == 0, "expired certificate: %s, %d bytes back"
          % (how, n))
    e = srv.wait_refused()
    check_eq(e.get("reason"), "chain_invalid", "expired certificate reason")
    check_eq(e.get("presented_pin"), old.pin, "presented pin")
    check_eq(be.accepted, 1, "backend connections")
    h.echo_roundtrip(cli.addr("oldpin"), b"pin-only ignores dates\n")
    check_eq(be.accepted, 2, "backend connections")


@timeout(60)
def test_ca_valid_but_unpinned_key_refused(h):
    be = h.counting_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca)
    good = h.identity("good", ca=ca)
    intruder = h.identity("intruder", ca=ca)   # same CA, key not pinned
    srv = h.start_server({"app": {"connect": be.addr, "cert": sid.crt,
                                  "key": sid.key, "ca": ca + ".crt",
                                  "pin": good.pin}}, name="server")
    mk = lambda ident: {"connect": srv.addr("app"), "cert": ident.crt,
                        "key": ident.key, "pin": sid.pin}
    cli = h.start_client({"good": mk(good), "intruder": mk(intruder)},
                         name="client")
    h.echo_roundtrip(cli.addr("good"), b"pinned and chained\n")
    s = h.connect(cli.addr("intruder"))
    s.sendall(b"let me in\n")
    how, _, n = wait_closed(s, 8)
    check(how != "open" and n == 0, "intruder: %s, %d bytes back" % (how, n))
    e = srv.wait_refused()
    check_eq(e.get("reason"), "pin_mismatch", "intruder reason")
    check_eq(e.get("presented_pin"), intruder.pin, "presented pin")
    check_eq(be.accepted, 1, "backend connections")


@timeout(60)
def test_two_pins_both_keys_accepted(h):
    be = h.counting_backend()
    sid = h.identity("srv")
    k1, k2, k3 = h.identity("old"), h.identity("new"), h.identity("other")
    srv = h.start_server({"app": {"connect": be.addr, "cert": sid.crt,
                                  "key": sid.key, "pin": [k1.pin, k2.pin]}},
                         name="server")
    mk = lambda ident: {"connect": srv.addr("app"), "cert": ident.crt,
                        "key": ident.key, "pin": sid.pin}
    cli = h.start_client({"old": mk(k1), "new": mk(k2), "other": mk(k3)},
                         name="client")
    h.echo_roundtrip(cli.addr("old"), b"first pin\n")
    h.echo_roundtrip(cli.addr("new"), b"second pin\n")
    s = h.connect(cli.addr("other"))
    s.sendall(b"third key\n")
    how, _, n = wait_closed(s, 8)
    check(how != "open" and n == 0, "unpinned third key: %s, %d bytes" % (how, n))
    check_eq(srv.wait_refused().get("reason"), "pin_mismatch",
             "third key reason")
    check_eq(be.accepted, 2, "backend connections")


@timeout(60)
def test_key_not_matching_cert_is_startup_error(h):
    sid, cid, other = h.identity("srv"), h.identity("cli"), h.identity("other")
    ini = h.write_ini("client-mismatch", {"app": {
        "listen": "127.0.0.1:0", "connect": "127.0.0.1:9", "cert": cid.crt,
        "key": other.key, "pin": sid.pin}})
    for args, name in (((), "run"), (("--check",), "check")):
        p = h.start("upseal-client", ini, wait_ready=False, name=name,
                    args=args)
        p.expect_exit = 1
        rc = p.wait(scaled(10, 30))
        log = p.log() + p.stdout()
        check_eq(rc, 1, "upseal-client %s with a key that is not the "
                 "certificate's: exit status" % " ".join(args))
        check(cid.crt in log and other.key in log, "the error must name both "
              "files (%s, %s): %r" % (cid.crt, other.key, log))
        check("event=listening" not in log, "it listened anyway")
