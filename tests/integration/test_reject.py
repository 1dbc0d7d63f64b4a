"""Peers that must be turned away in the handshake, and proof that the
backend never sees them and that everyone else keeps working."""

import re
import socket
import ssl
import threading
import time

from tlsver import tls13
from harness import (Flow, Source, check, check_eq, run_flows, scaled,
                     timeout, wait_closed)

MiB = 1024 * 1024
# Reasons that end a connection after its handshake, or that are not about
# a handshake at all: a handshake failure is logged with anything else.
NOT_HANDSHAKE = ("closed", "truncated", "reset", "tls_reset", "idle_timeout",
                 "drain", "connect_failed", "connect_timeout", "plain_error",
                 "nomem", None, "")


def _failed_in_handshake(end, who):
    """A conn_end for a connection that failed in the handshake: a
    handshake reason and not one byte relayed on the plaintext side."""
    check(end.get("reason") not in NOT_HANDSHAKE,
          "%s conn_end reason %r is not a handshake failure: %r"
          % (who, end.get("reason"), end))
    check_eq((end.get("plain_in"), end.get("plain_out")), ("0", "0"),
             "%s plaintext bytes of a failed handshake" % who)
    return end.get("reason")


def _rejections(proc, reason, n=1, timeout_s=10.0):
    """Wait for n log lines with reason=REASON; return them parsed."""
    proc.wait_for(r'\breason=%s\b|"reason"\s*:\s*"%s"' % (reason, reason),
                  timeout_s, n)
    return [d for d in (proc.events()) if d.get("reason") == reason]


def _presented(proc, reason, pin):
    lines = _rejections(proc, reason)
    pins = [d.get("presented_pin") for d in lines]
    check(pin in pins, "%s: %s lines carry presented_pin %r, want %s"
          % (proc.name, reason, pins, pin))


def _app_refused(h, addr, payload=b"GET / HTTP/1.0\r\n\r\n", limit=8.0):
    """The app's connection to upseal-client is closed with no data back."""
    try:
        s = h.connect(addr)
    except ConnectionResetError:
        return "reset", 0.0   # refused so fast that connect() saw the RST
    try:
        s.sendall(payload)
    except OSError:
        pass   # already reset: fine, we check how it ended below
    how, dt, n = wait_closed(s, limit)
    check(how != "open", "app connection still open after %.1fs" % limit)
    check_eq(n, 0, "bytes the app got from a refused tunnel")
    return how, dt


def _server_conn_end(srv, n=1, timeout_s=10.0):
    srv.wait_for(r"event=conn_end|\"event\"\s*:\s*\"conn_end\"", timeout_s, n)
    return srv.events("conn_end")


@timeout(60)
def test_wrong_server_pin_client_refuses(h):
    be = h.counting_backend()
    other = h.identity("other")
    cli, srv, ids = h.pair(be.addr, client_opts={"pin": other.pin})
    _app_refused(h, cli.addr("app"))
    _rejections(cli, "pin_mismatch")
    _presented(cli, "pin_mismatch", ids["server"].pin)
    ends = _server_conn_end(srv)
    _failed_in_handshake(ends[0], "server")
    check_eq(be.accepted, 0, "backend connections")


@timeout(60)
def test_wrong_client_pin_server_refuses(h):
    be = h.counting_backend()
    other = h.identity("other")
    cli, srv, ids = h.pair(be.addr, server_opts={"pin": other.pin})
    _app_refused(h, cli.addr("app"))
    _rejections(srv, "pin_mismatch")
    _presented(srv, "pin_mismatch", ids["client"].pin)
    end = cli.wait_event("conn_end")
    if tls13(h):
        # In TLS 1.3 the client's handshake is over once it sent its
        # Finished, before the server judges its certificate: the client
        # may read and encrypt the app's first bytes, which the server
        # never decrypts. What must hold is that they reach nobody.
        check_eq(end.get("plain_out"), "0", "client bytes to the app")
    else:
        _failed_in_handshake(end, "client")
    check_eq(be.accepted, 0, "backend connections")


@timeout(60)
def test_no_client_certificate(h):
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr)
    r = h.openssl(["s_client", "-connect", srv.addr("app"), "-quiet",
                   "-no_ign_eof"], input=b"hello without a cert\n")
    check("hello without a cert" not in r.out,
          "data came back without a client cert: %r" % r.out)
    _rejections(srv, "no_cert")
    check_eq(be.accepted, 0, "backend connections")
    # The daemon still serves pinned clients.
    h.echo_roundtrip(cli.addr("app"), b"still fine\n")
    check_eq(be.accepted, 1, "backend connections")


SNAME = "upseal-server.test"


def _ca_setup(h):
    ca_a = h.ca("caA")
    ca_b = h.ca("caB")
    sid = h.identity("srv", ca=ca_a, ip=["127.0.0.1"], dns=[SNAME])
    good = h.identity("good", ca=ca_a)
    bad = h.identity("bad", ca=ca_b)
    return ca_a, ca_b, sid, good, bad


@timeout(60)
def test_client_cert_from_another_ca(h):
    be = h.counting_backend()
    ca_a, ca_b, sid, good, bad = _ca_setup(h)
    srv = h.start_server({
        # CA-only: any certificate from caA is let in.
        "caonly": {"connect": be.addr, "cert": sid.crt, "key": sid.key,
                   "ca": ca_a + ".crt"},
        # CA and pin: the pin matches the caB client, the chain must fail it.
        "both": {"connect": be.addr, "cert": sid.crt, "key": sid.key,
                 "ca": ca_a + ".crt", "pin": bad.pin},
    }, name="server")
    mk = lambda ident: {"cert": ident.crt, "key": ident.key, "pin": sid.pin}
    cli = h.start_client({
        "good": dict(mk(good), connect=srv.addr("caonly")),
        "bad": dict(mk(bad), connect=srv.addr("caonly")),
        "badpinned": dict(mk(bad), connect=srv.addr("both")),
    }, name="client")
    # Positive control: same CA passes.
    h.echo_roundtrip(cli.addr("good"), b"same CA\n")
    check_eq(be.accepted, 1, "backend connections after the good client")
    _app_refused(h, cli.addr("bad"))
    _app_refused(h, cli.addr("badpinned"))
    _rejections(srv, "chain_invalid", 2)
    _presented(srv, "chain_invalid", bad.pin)
    check_eq(be.accepted, 1, "backend connections after two bad clients")


@timeout(60)
def test_server_cert_from_another_ca_or_name(h):
    be = h.counting_backend()
    ca_a, ca_b, sid, good, bad = _ca_setup(h)
    srv_b = h.identity("srvB", ca=ca_b, ip=["127.0.0.1"], dns=[SNAME])
    srv_noname = h.identity("srvNoName", ca=ca_a, dns=["elsewhere.example"])
    tun = lambda ident: {"connect": be.addr, "cert": ident.crt,
                         "key": ident.key, "pin": good.pin}
    srv = h.start_server({"a": tun(sid), "b": tun(srv_b),
                          "noname": tun(srv_noname)}, name="server")
    # CA-only client; the name to check is given (connect is an IP).
    ctun = lambda addr: {"connect": addr, "cert": good.crt, "key": good.key,
                         "ca": ca_a + ".crt", "server_name": SNAME}
    cli = h.start_client({"a": ctun(srv.addr("a")), "b": ctun(srv.addr("b")),
                          "noname": ctun(srv.addr("noname"))}, name="client")
    h.echo_roundtrip(cli.addr("a"), b"CA-only, right name\n")
    check_eq(be.accepted, 1, "backend connections after the good server")
    _app_refused(h, cli.addr("b"))
    _rejections(cli, "chain_invalid", 1)
    _presented(cli, "chain_invalid", srv_b.pin)
    _app_refused(h, cli.addr("noname"))
    cli.wait_event("conn_end", count=2)
    bad_ends = [e for e in cli.events("conn_end") if e.get("tunnel") == "noname"]
    check(bad_ends, "no conn_end for the wrong-name server")
    why = _failed_in_handshake(bad_ends[0], "client")
    h.note("wrong server name logged as reason=%s" % why)
    check_eq(be.accepted, 1, "backend connections after two bad servers")


@timeout(60)
def test_plaintext_http_to_tls_port(h):
    be = h.counting_backend()
    cli, srv, _ = h.pair(be.addr)
    s = h.connect(srv.addr("app"))
    s.sendall(b"GET / HTTP/1.1\r\nHost: upseal\r\n\r\n")
    how, dt, n = wait_closed(s, 5)
    check(how != "open", "plaintext connection to the TLS port still open after 5s")
    why = _failed_in_handshake(srv.wait_event("conn_end"), "server")
    h.note("plaintext HTTP logged as reason=%s" % why)
    check_eq(be.accepted, 0, "backend connections")
    h.echo_roundtrip(cli.addr("app"), b"after the HTTP garbage\n")
    check_eq(be.accepted, 1, "backend connections")


@timeout(60)
def test_tls11_refused(h):
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr)
    c = ids["client"]
    r = h.openssl(["s_client", "-connect", srv.addr("app"), "-tls1_1",
                   "-cipher", "DEFAULT@SECLEVEL=0", "-cert", c.crt, "-key",
                   c.key, "-no_ign_eof"], input=b"tls11 data\n")
    text = r.out + r.err
    check("no protocols available" not in text,
          "openssl refused TLS 1.1 locally, upseal was not tested:\n" + text)
    m = re.search(r"written (\d+) bytes", text)
    check(m and int(m.group(1)) > 0, "s_client sent no ClientHello:\n" + text)
    check(r.returncode != 0 or re.search(r"Cipher is \(NONE\)", text),
          "TLS 1.1 handshake succeeded:\n" + text)
    check(not re.search(r"Protocol\s*:\s*TLSv1\.1\s*\n\s*Cipher\s*:\s*[A-Z]",
                        text), "TLS 1.1 negotiated:\n" + text)
    why = _failed_in_handshake(srv.wait_event("conn_end"), "server")
    h.note("TLS 1.1 logged as reason=%s" % why)
    check_eq(be.accepted, 0, "backend connections")


def _client_hello_bytes():
    """The bytes of a real ClientHello (Python's ssl, in memory)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    check(len(hello) > 50 and hello[0] == 0x16, "no ClientHello: %r" % hello[:20])
    return hello


@timeout(60)
def test_silent_handshake_dropped_after_timeout(h):
    be = h.counting_backend()
    cli, srv, _ = h.pair(be.addr, server_opts={"handshake_timeout": "1s"})
    # A partial ClientHello: record header says 512 bytes, 10 are sent.
    s1 = h.connect(srv.addr("app"))
    s1.sendall(bytes.fromhex("160301020001000200030300"))
    s2 = h.connect(srv.addr("app"))   # a whole ClientHello, then nothing
    s2.sendall(_client_hello_bytes())
    s3 = h.connect(srv.addr("app"))   # connects and says nothing at all
    t0 = time.monotonic()
    for s, what in ((s1, "partial ClientHello"), (s2, "ClientHello"),
                    (s3, "nothing")):
        how, _, _ = wait_closed(s, scaled(6, 12))
        dt = time.monotonic() - t0
        check(how != "open", "%s: still open %.1fs after" % (what, dt))
        check(dt >= 0.8, "%s: dropped after %.2fs, before handshake_timeout=1s"
              % (what, dt))
        check(dt <= scaled(4, 8), "%s: dropped only after %.2fs" % (what, dt))
    _rejections(srv, "handshake_timeout", 3)
    check_eq(be.accepted, 0, "backend connections")
    h.echo_roundtrip(cli.addr("app"), b"still serving\n")


@timeout(60)
def test_client_handshake_timeout_to_silent_server(h):
    """upseal-client dials a TCP peer that never answers the ClientHello."""
    cid = h.identity("cli")
    sid = h.identity("srv")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)    # never accepted: the kernel completes the connect
    h.cleanups.append(silent.close)
    cli = h.start_client({"app": {
        "connect": "127.0.0.1:%d" % silent.getsockname()[1],
        "cert": cid.crt, "key": cid.key, "pin": sid.pin,
        "handshake_timeout": "1s"}}, name="client")
    how, dt = _app_refused(h, cli.addr("app"))
    check(0.8 <= dt <= scaled(4, 8), "app closed after %.2fs, want ~1s" % dt)
    _rejections(cli, "handshake_timeout")


@timeout(120)
def test_bad_peers_do_not_disturb_good_traffic(h):
    n = scaled(32 * MiB, 8 * MiB)
    be = h.source_sink_backend(n)
    cli, srv, ids = h.pair(be.addr)
    stranger = h.identity("stranger")
    good = Flow(h.connect(cli.addr("app")), Source(n, seed=99))
    errors = []

    def drive():
        try:
            run_flows([good], timeout=scaled(60, 200))
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    bad_socks = []
    for i in range(10):
        s = h.connect(srv.addr("app"))
        s.sendall(b"\x16\x03\x01\xff\xff" + bytes(range(256)) * 4
                  if i % 2 else b"garbage garbage garbage\r\n" * 20)
        bad_socks.append(s)
    for i in range(4):
        r = h.openssl(["s_client", "-connect", srv.addr("app"), "-cert",
                       stranger.crt, "-key", stranger.key, "-quiet",
                       "-no_ign_eof"], input=b"let me in\n")
        check("let me in" not in r.out, "a stranger's data came back")
    for s in bad_socks:
        how, _, _ = wait_closed(s, 10)
        check(how != "open", "a garbage connection was left open")
    t.join(scaled(90, 250))
    check(not t.is_alive(), "good transfer did not finish")
    check(not errors, "good transfer: %r" % errors)
    check(good.error is None, "good transfer error %s" % good.error)
    r = be.wait_results(1)[0]
    check_eq(r["recv_sha"], good.src.sha.hexdigest(), "good upstream sha256")
    check_eq(good.sha.hexdigest(), r["sent_sha"], "good downstream sha256")
    _rejections(srv, "pin_mismatch", 4)
    _presented(srv, "pin_mismatch", stranger.pin)
    check_eq(be.accepted, 1, "backend connections (only the good one)")
    s = h.connect(cli.addr("app"))
    s.sendall(b"x" * 1000)
    s.shutdown(socket.SHUT_WR)
    how, _, got = wait_closed(s, 10)
    check_eq((how, got), ("eof", n), "a fresh good connection afterwards "
             "(the source/sink backend sends its %d bytes)" % n)


def _pinned_tls_client(h, addr, ident, timeout_s=10.0, alpn=None):
    """A TLS 1.2 client (Python's ssl over memory BIOs) with a client
    certificate, offering alpn (a list) if given; returns (plain socket,
    SSLObject, in_bio, out_bio) after the handshake, so that raw bytes can
    be written under the TLS layer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ident.crt, ident.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    s = h.connect(addr)
    deadline = time.monotonic() + timeout_s
    while True:
        check(time.monotonic() < deadline, "TLS handshake did not finish")
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = out.read()
        if data:
            s.sendall(data)
        if done:
            return s, obj, inc, out
        s.settimeout(max(0.1, deadline - time.monotonic()))
        d = s.recv(65536)
        check(d, "server closed during the handshake")
        inc.write(d)


@timeout(60)
def test_garbage_record_after_handshake(h):
    """A pinned peer that sends a forged record after the handshake: the
    connection is dropped (the record fails authentication), the backend's
    end is reset rather than closed cleanly, the tunnel keeps serving."""
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr)
    s, obj, inc, out = _pinned_tls_client(h, srv.addr("app"), ids["client"])
    obj.write(b"hello through a real record\n")
    s.sendall(out.read())
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < 28 and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        d = s.recv(65536)
        check(d, "closed before the echo came back")
        inc.write(d)
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    check_eq(got, b"hello through a real record\n", "echo via a real record")
    # An application-data record whose AEAD tag cannot verify.
    s.sendall(bytes.fromhex("170303002a") + bytes(range(42)))
    how, dt, n = wait_closed(s, 5)
    check(how != "open", "connection still open after a forged record")
    end = srv.wait_event("conn_end")
    check(end.get("reason") not in ("closed", None),
          "forged record logged as reason=%r" % end.get("reason"))
    h.note("forged record logged as reason=%s" % end.get("reason"))
    deadline = time.monotonic() + 5
    while not be.errors and not be.results and time.monotonic() < deadline:
        time.sleep(0.02)
    check(be.errors and "ConnectionResetError" in be.errors[0][1],
          "backend's end after a forged record: errors %r results %r, "
          "want a reset" % (be.errors, be.results))
    h.echo_roundtrip(cli.addr("app"), b"others still fine\n")
