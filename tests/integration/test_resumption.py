"""Session resumption: tickets from the server, a cached session on the
client, and the pins still applied to resumed sessions."""

import os
import signal
import time

from tlsver import tls13
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
    # mbedTLS 3.6's TLS 1.3 tickets lack the client's certificate, so the
    # server issues none there (a resumed client could not be pin-checked).
    want = ["false"] * 4 if tls13(h) else ["false", "true", "true", "true"]
    for proc in (cli, srv):
        done = _handshakes(proc, 4)
        check_eq([d.get("resumed") for d in done], want,
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


def _s_client(h, port, ident, sess_flag, sess_path):
    r = h.openssl(["s_client", "-connect", "127.0.0.1:%d" % port,
                   "-tls1_2", "-cert", ident.crt, "-key", ident.key,
                   sess_flag, sess_path], input=b"", timeout=20)
    out = r.out
    check("Reused," in out or "New," in out,
          "s_client printed no session line: %s" % out[-600:])
    return "Reused," in out


def _ticket_servers(h, key_a, key_b):
    """Two upseal-servers in front of one backend, each with its own key
    file (paths may be the same file)."""
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    servers = []
    for i, keyfile in enumerate((key_a, key_b)):
        servers.append(h.start_server({"app": {
            "connect": be.addr, "cert": sid.crt, "key": sid.key,
            "pin": [cid.pin], "ticket_key_file": keyfile}},
            name="server%d" % i))
    return servers, cid


def _secret(h, name):
    path = "%s/%s" % (h.dir, name)
    with open(path, "wb") as f:
        f.write(os.urandom(48))
    os.chmod(path, 0o600)
    return path


@timeout(60)
def test_shared_ticket_key_resumes_across_servers(h):
    """Two servers sharing ticket_key_file resume each other's sessions;
    with different secrets they do not."""
    shared = _secret(h, "tickets.key")
    (a, b), cid = _ticket_servers(h, shared, shared)
    sess = "%s/sess.pem" % h.dir
    check(not _s_client(h, int(a.addr("app").rsplit(":", 1)[1]), cid, "-sess_out", sess),
          "first handshake with server A claimed to be resumed")
    check(_s_client(h, int(b.addr("app").rsplit(":", 1)[1]), cid, "-sess_in", sess),
          "server B did not resume the session that server A issued, "
          "with the same ticket_key_file")


@timeout(60)
def test_different_ticket_keys_do_not_resume(h):
    (a, b), cid = _ticket_servers(h, _secret(h, "a.key"), _secret(h, "b.key"))
    sess = "%s/sess.pem" % h.dir
    _s_client(h, int(a.addr("app").rsplit(":", 1)[1]), cid, "-sess_out", sess)
    check(not _s_client(h, int(b.addr("app").rsplit(":", 1)[1]), cid, "-sess_in", sess),
          "server B resumed a ticket sealed under another secret")
    check(_s_client(h, int(a.addr("app").rsplit(":", 1)[1]), cid, "-sess_in", sess),
          "server A did not resume its own ticket")


@timeout(60)
def test_ciphers_choose_the_suite(h):
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal={"log_level": "debug"},
                         client_opts={"ciphers":
                                      "ECDHE-ECDSA-AES256-GCM-SHA384"})
    h.echo_roundtrip(cli.addr("app")).close()
    done = _handshakes(cli, 1)
    check_eq(done[0].get("suite"), "TLS1-3-AES-256-GCM-SHA384" if tls13(h)
             else "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384", "negotiated suite")


@timeout(60)
def test_ciphers_without_overlap_fail_the_handshake(h):
    be = h.counting_backend()
    cli, srv, _ = h.pair(be.addr,
                         server_opts={"ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
                         client_opts={"ciphers":
                                      "ECDHE-ECDSA-CHACHA20-POLY1305"})
    try:
        s = h.connect(cli.addr("app"))
        s.sendall(b"x")
    except (ConnectionResetError, BrokenPipeError):
        # The handshake can fail, and upseal-client reset the plaintext
        # end, before connect() or send() returns here.
        pass
    srv.wait_refused(10)
    check_eq(be.accepted, 0, "backend connections without a common suite")
