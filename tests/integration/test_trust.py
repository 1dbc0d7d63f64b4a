"""What resumption and the pool may keep: the regressions of an outside
review (issue 9). A ticket_key_file or a key that others can read is
refused; a ticket opens only in the tunnel and under the trust settings
that issued it, and its certificate is judged again against the tunnel's
current pins and CA; a reload that removes a pin ends that peer's
connections that have not reached the backend yet."""

import os
import pwd
import signal
import ssl
import time

from harness import check, check_eq, scaled, timeout, wait_closed
from test_operate import Side, roundtrip, close_echo, start_pair
from test_reject import _pinned_tls_client

ALPN = "upseal/1"


def _secret(h, name, mode=0o600):
    path = h.path(name)
    with open(path, "wb") as f:
        f.write(os.urandom(48))
    os.chmod(path, mode)
    return path


def _port(addr):
    return int(addr.rsplit(":", 1)[1])


def _s_client(h, addr, ident, sess_flag, sess_path):
    """openssl s_client (TLS 1.2) with ident's certificate, reading or
    writing a session file; returns (resumed, output)."""
    r = h.openssl(["s_client", "-connect", "127.0.0.1:%d" % _port(addr),
                   "-tls1_2", "-cert", ident.crt, "-key", ident.key,
                   sess_flag, sess_path], input=b"", timeout=20)
    return "Reused," in r.out, r.out


def _settle():
    # A backend that is (wrongly) dialed after a handshake shows up by now.
    time.sleep(0.3)


# -- 1. secrets that others can read ----------------------------------------

def _server_tunnel(be, sid, cid, **extra):
    t = {"listen": "127.0.0.1:0", "connect": be.addr, "cert": sid.crt,
         "key": sid.key, "pin": [cid.pin], "handshake_timeout": "5s"}
    t.update(extra)
    return t


def _refused_to_start(h, ini, *needles):
    """--check and a start both fail, naming every needle."""
    r = h.run([h.bin("upseal-server"), "--check", "-c", ini])
    check_eq(r.returncode, 1, "--check exit status:\n%s%s" % (r.out, r.err))
    for n in needles:
        check(n in r.err, "--check error does not say %r:\n%s" % (n, r.err))
    p = h.start("upseal-server", ini, wait_ready=False)
    p.expect_exit = 1
    check_eq(p.wait(scaled(10, 30)), 1, "exit status of a start")
    log = p.log()
    for n in needles:
        check(n in log, "start error does not say %r:\n%s" % (n, log))
    check("listening" not in log, "it listened anyway:\n%s" % log)


@timeout(60)
def test_loose_ticket_key_file_is_refused(h):
    """A ticket_key_file that group or others can read lets its reader
    resume as any client of every server sharing it: refused at start, by
    --check and on reload (the running settings stay), with the file, its
    mode and the safe recipe in the error."""
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    loose = _secret(h, "loose.key", 0o644)
    ini = h.write_ini("loose", {"app": _server_tunnel(
        be, sid, cid, ticket_key_file=loose)})
    _refused_to_start(h, ini, loose, "0644", "umask 077")
    # Reload: a good file works, then the same file made loose is refused
    # and the tunnel keeps serving with the settings it had.
    good = _secret(h, "tickets.key")
    cli, srv, _, _ = start_pair(h, be.addr, sid=sid, cid=cid,
                                server_extra={"ticket_key_file": good})
    close_echo(roundtrip(h, cli.addr(), b"before\n"))
    os.chmod(good, 0o640 if os.geteuid() != 0 else 0o604)
    d = srv.reload(ok=False)
    check(good in d.get("error", "") and "mode" in d.get("error", ""),
          "reload_failed does not name the file and its mode: %r" % d)
    close_echo(roundtrip(h, cli.addr(), b"still served\n"))


@timeout(60)
def test_loose_private_key_is_refused(h):
    """A private key others can read (or, as root, one another user owns)
    is refused, as ssh refuses a loose key; root-owned and group-readable
    (0640, a Kubernetes Secret with fsGroup) is accepted."""
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    ini = h.write_ini("srv", {"app": _server_tunnel(be, sid, cid)})
    os.chmod(sid.key, 0o644)
    _refused_to_start(h, ini, sid.key, "0644", "chmod")
    if os.geteuid() != 0:
        h.note("not root: the owner rules are not tested")
        return
    nobody = pwd.getpwnam("nobody")
    os.chmod(sid.key, 0o600)
    os.chown(sid.key, nobody.pw_uid, nobody.pw_gid)
    _refused_to_start(h, ini, sid.key, "owned by uid %d" % nobody.pw_uid)
    os.chown(sid.key, 0, nobody.pw_gid)
    os.chmod(sid.key, 0o640)
    r = h.run([h.bin("upseal-server"), "--check", "-c", ini])
    check_eq(r.returncode, 0, "--check of a root-owned 0640 key:\n%s" % r.err)


@timeout(60)
def test_unreadable_key_says_permission_denied(h):
    """After user = nobody, a reload that meets a key nobody may read says
    so, instead of calling it "not a PEM or DER private key"."""
    if os.geteuid() != 0:
        h.skip("needs root to drop to user = nobody")
    nobody = pwd.getpwnam("nobody")
    os.chmod(h.dir, 0o755)
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    for p in (sid.crt, cid.crt):
        os.chmod(p, 0o644)
    os.chown(sid.key, nobody.pw_uid, nobody.pw_gid)
    os.chown(cid.key, nobody.pw_uid, nobody.pw_gid)
    cli, srv, _, _ = start_pair(h, be.addr, sid=sid, cid=cid,
                                upseal={"user": "nobody"})
    os.chown(sid.key, 0, 0)     # 0600, root's: nobody may not read it
    d = srv.reload(ok=False)
    err = d.get("error", "")
    check("Permission denied" in err and sid.key in err,
          "reload_failed error: %r" % err)
    check("not a PEM" not in err, "still called a bad key: %r" % err)
    close_echo(roundtrip(h, cli.addr(), b"still served\n"))


# -- 2. tickets bound to their tunnel, judged against today's settings -------

def _two_tunnels(h, tunnels):
    """One upseal-server with the given tunnels, each in front of its own
    counting backend; returns (server Side, {name: backend})."""
    bes = {}
    secs = {}
    for name, extra in tunnels.items():
        bes[name] = h.counting_backend()
        secs[name] = dict({"listen": "127.0.0.1:0", "connect": bes[name].addr,
                           "handshake_timeout": "5s"}, **extra)
    return Side(h, "server", "server", secs), bes


@timeout(60)
def test_ticket_from_a_pinned_tunnel_does_not_open_a_ca_tunnel(h):
    """[a] pins the client, [b] takes only clients of its CA; both share a
    ticket_key_file. A ticket [a] issued does not resume into [b], where
    the client, which [b]'s CA did not sign, is refused as in a full
    handshake (chain_invalid); [b]'s backend sees nothing."""
    ca = h.ca("ca1")
    sid = h.identity("srv", ca=ca)
    cid = h.identity("cli")                 # self-signed: not ca1's
    tk = _secret(h, "tickets.key")
    common = {"cert": sid.crt, "key": sid.key, "ticket_key_file": tk}
    srv, bes = _two_tunnels(h, {
        "a": dict(common, pin=[cid.pin]),
        "b": dict(common, ca=ca + ".crt")})
    sess = h.path("a.sess")
    resumed, out = _s_client(h, srv.addr("a"), cid, "-sess_out", sess)
    check(not resumed and "New," in out, "first handshake with [a]:\n%s"
          % out[-600:])
    check(os.path.getsize(sess) > 0, "s_client saved no session")
    resumed, out = _s_client(h, srv.addr("b"), cid, "-sess_in", sess)
    check(not resumed, "[b] resumed a session that [a] issued")
    srv.p.wait_event("conn_end", 10, tunnel="b",
                     reason="chain_invalid")
    _settle()
    check_eq(bes["b"].accepted, 0, "[b]'s backend connections")
    check_eq(bes["a"].accepted, 1, "[a]'s backend connections")


@timeout(60)
def test_ticket_does_not_open_another_tunnel_that_pins_the_same_client(h):
    """The binding alone: [a] and [b] both pin the client and share the
    file; [a]'s ticket still does not resume into [b] (a full handshake
    lets the client in there)."""
    sid, cid = h.identity("srv"), h.identity("cli")
    tk = _secret(h, "tickets.key")
    common = {"cert": sid.crt, "key": sid.key, "ticket_key_file": tk,
              "pin": [cid.pin]}
    srv, bes = _two_tunnels(h, {"a": common, "b": common})
    sess = h.path("a.sess")
    _s_client(h, srv.addr("a"), cid, "-sess_out", sess)
    resumed, _ = _s_client(h, srv.addr("a"), cid, "-sess_in", sess)
    check(resumed, "[a] did not resume its own ticket (control)")
    resumed, out = _s_client(h, srv.addr("b"), cid, "-sess_in", sess)
    check(not resumed and "New," in out,
          "[b] resumed [a]'s ticket:\n%s" % out[-600:])


@timeout(60)
def test_ticket_after_the_pin_was_removed(h):
    """A ticket issued by [a] before a reload that removed the client's
    pin resumes neither into [a] nor into a CA tunnel [b] that shares the
    file; no backend sees the client after the reload."""
    ca = h.ca("ca1")
    sid = h.identity("srv", ca=ca)
    cid = h.identity("cli")
    other = h.identity("other")
    tk = _secret(h, "tickets.key")
    common = {"cert": sid.crt, "key": sid.key, "ticket_key_file": tk}
    srv, bes = _two_tunnels(h, {
        "a": dict(common, pin=[cid.pin]),
        "b": dict(common, ca=ca + ".crt")})
    sess = h.path("a.sess")
    _s_client(h, srv.addr("a"), cid, "-sess_out", sess)
    check_eq(bes["a"].accepted, 1, "[a]'s backend before the reload")
    srv.tunnels["a"]["pin"] = [other.pin]
    srv.reload()
    for name in ("a", "b"):
        resumed, _ = _s_client(h, srv.addr(name), cid, "-sess_in", sess)
        check(not resumed, "[%s] resumed a ticket issued before the "
              "client's pin was removed" % name)
    srv.p.wait_event("conn_end", 10, tunnel="a",
                     reason="pin_mismatch")
    srv.p.wait_event("conn_end", 10, tunnel="b",
                     reason="chain_invalid")
    _settle()
    check_eq(bes["a"].accepted, 1, "[a]'s backend after the reload")
    check_eq(bes["b"].accepted, 0, "[b]'s backend")


@timeout(60)
def test_ticket_after_the_ca_changed(h):
    """[b] takes clients of CA1 and issues a ticket to one; reloaded to
    CA2, the CA1 client is refused on a full handshake and its ticket no
    longer resumes it in."""
    ca1, ca2 = h.ca("ca1"), h.ca("ca2")
    sid = h.identity("srv", ca=ca1)
    cid = h.identity("cli", ca=ca1)
    tk = _secret(h, "tickets.key")
    srv, bes = _two_tunnels(h, {"b": {
        "cert": sid.crt, "key": sid.key, "ticket_key_file": tk,
        "ca": ca1 + ".crt"}})
    sess = h.path("b.sess")
    _s_client(h, srv.addr("b"), cid, "-sess_out", sess)
    resumed, _ = _s_client(h, srv.addr("b"), cid, "-sess_in", sess)
    check(resumed, "[b] did not resume its own ticket (control)")
    check_eq(bes["b"].accepted, 2, "backend connections under CA1")
    srv.tunnels["b"]["ca"] = ca2 + ".crt"
    srv.reload()
    resumed, _ = _s_client(h, srv.addr("b"), cid, "-sess_in", sess)
    check(not resumed, "a CA1 client resumed after [b] moved to CA2")
    srv.p.wait_event("conn_end", 10, tunnel="b",
                     reason="chain_invalid")
    _settle()
    check_eq(bes["b"].accepted, 2, "backend connections after the CA moved")


# -- 3. a reload that removes a pin ------------------------------------------

@timeout(60)
def test_reload_ends_pool_connections_of_an_unpinned_client(h):
    """Pool connections (upseal/1, waiting for the preamble) of a client
    whose pin a reload removed are ended at the reload: the preamble and
    data sent afterwards never reach the backend."""
    be = h.counting_backend()
    cli, srv, sid, cid = start_pair(h, be.addr)
    conns = [_pinned_tls_client(h, srv.addr(), cid, alpn=[ALPN])
             for _ in range(3)]
    for s, obj, inc, out in conns:
        check_eq(obj.selected_alpn_protocol(), ALPN, "negotiated ALPN")
    srv.tunnels["app"]["pin"] = [h.identity("other").pin]
    srv.reload()
    for s, obj, inc, out in conns:
        try:
            obj.write(b"\x01GET / HTTP/1.0\r\n\r\n")
            s.sendall(out.read())
        except OSError:
            pass    # already closed: fine
        how, _, _ = wait_closed(s, 5)
        check(how != "open", "a pool connection of the unpinned client "
              "is still open after the reload")
    ends = srv.p.events("conn_end", reason="pin_mismatch")
    check_eq(len(ends), 3, "conn_end reason=pin_mismatch lines")
    _settle()
    check_eq(be.accepted, 0, "backend connections")


@timeout(60)
def test_reload_judges_a_handshake_that_began_before_it(h):
    """A TCP connection accepted before the reload and handshaken after it
    is judged against the new pins: refused, no backend dial."""
    be = h.counting_backend()
    cli, srv, sid, cid = start_pair(h, be.addr, status=True)
    s = h.connect(srv.addr())
    # The server has accepted it once its gauge counts it.
    from test_pool import _wait_metric
    _wait_metric(srv, "upseal_connections_open", 1)
    srv.tunnels["app"]["pin"] = [h.identity("other").pin]
    srv.reload()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cid.crt, cid.key)
    t = ctx.wrap_socket(s, do_handshake_on_connect=False)
    # The handshake itself completes under the settings of accept time;
    # the judgement after it refuses the client with access_denied (RFC
    # 5246 7.2.2: a valid certificate that access control refused).
    why = None
    try:
        t.do_handshake()
        t.sendall(b"GET / HTTP/1.0\r\n\r\n")
        got = t.recv(100)
        why = "eof" if got == b"" else "data %r" % got
    except ssl.SSLError as e:
        why = str(e)
    except OSError as e:
        why = "os error %s" % e
    check(why is not None and "ACCESS_DENIED" in why,
          "the client was not refused with access_denied: %s" % why)
    srv.p.wait_event("conn_end", 10, reason="pin_mismatch")
    _settle()
    check_eq(be.accepted, 0, "backend connections")
