"""Fleets (issue 12): pin files of any length, names in CA mode (allow_dns,
allow_uri, allow_cn) on full and resumed handshakes, CRLs written by
upseal-certs revoke and picked up on SIGHUP, and the expiry metrics and
warnings."""

import os
import re
import ssl
import time

from harness import check, check_eq, scaled, timeout, wait_closed
from test_operate import Side, close_echo, roundtrip, scrape
from test_hostile import _expired_identity
from tlsver import tls13


def _until(cond, what, timeout_s=10.0):
    """Poll cond (bounded) until it is true."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        check(time.monotonic() < deadline, "no %s after %.0fs"
              % (what, timeout_s))
        time.sleep(0.02)


def _certs(h, *args):
    r = h.run([h.bin("upseal-certs")] + list(args))
    check_eq(r.returncode, 0, "upseal-certs %s: %s" % (" ".join(args), r.err))
    return r


def _client(h, srv, ids, name="client", upseal=None, extra=None):
    """One upseal-client with a tunnel per identity (named after it),
    each pinning the server."""
    secs = {}
    for ident in ids:
        secs[ident.name] = dict({"listen": "127.0.0.1:0",
                                 "connect": srv.addr(), "cert": ident.crt,
                                 "key": ident.key, "pin": srv.pin,
                                 "handshake_timeout": "5s",
                                 "connect_timeout": "3s"}, **(extra or {}))
    return Side(h, "client", name, secs, upseal)


def _server(h, be, sid, upseal=None, **keys):
    t = dict({"listen": "127.0.0.1:0", "connect": be.addr, "cert": sid.crt,
              "key": sid.key, "handshake_timeout": "5s"}, **keys)
    srv = Side(h, "server", "server", {"app": t}, upseal)
    srv.pin = sid.pin
    return srv


def _refused(h, cli, tunnel, srv, reason, count=1):
    s = h.connect(cli.addr(tunnel))
    s.sendall(b"let me in\n")
    how, _, n = wait_closed(s, 8)
    check(how != "open" and n == 0, "[%s] was let through: %s, %d bytes"
          % (tunnel, how, n))
    e = srv.p.wait_event("conn_end", 10, count=count, reason=reason)
    return e


# -- names -----------------------------------------------------------------

@timeout(90)
def test_names_accepted_and_refused_full_and_resumed(h):
    """A CA, and a server that lets in *.proxies.internal, the SPIFFE IDs
    under spiffe://prod.example/ns/web/ and the CN legacy-proxy. Each
    allowed client passes (the conn_end line names its rule) on a full
    and then a resumed handshake; a client of the same CA with other
    names is refused (the line lists its names). A reload that drops the
    CN rule refuses that client from then on (its ticket no longer opens:
    a reload without ticket_key_file makes new keys; the next test keeps
    the ticket alive to see the resumption itself refused)."""
    be = h.echo_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca, dns=["srv.internal"])
    ids = [h.identity("dnsok", ca=ca, dns=["a.proxies.internal"]),
           h.identity("uriok", ca=ca, dns=["x.other.internal"],
                      uri=["spiffe://prod.example/ns/web/sa/api"]),
           h.identity("legacy-proxy", ca=ca, dns=["legacy.other.internal"]),
           h.identity("bad", ca=ca, dns=["a.b.proxies.internal"],
                      uri=["spiffe://prod.example/ns/db/sa/x"])]
    rules = {"allow_dns": "*.proxies.internal",
             "allow_uri": "spiffe://prod.example/ns/web/*",
             "allow_cn": "legacy-proxy"}
    srv = _server(h, be, sid, upseal={"log_level": "debug"},
                  ca=ca + ".crt", **rules)
    # The client checks the server's names too (client role rules).
    cli = _client(h, srv, ids, upseal={"log_level": "debug"},
                  extra={"ca": ca + ".crt", "server_name": "srv.internal",
                         "allow_dns": "srv.internal"})
    want = {"dnsok": "allow_dns=*.proxies.internal",
            "uriok": "allow_uri=spiffe://prod.example/ns/web/*",
            "legacy-proxy": "allow_cn=legacy-proxy"}
    resumable = not tls13(h)
    for name, rule in want.items():
        for i in range(2):
            close_echo(roundtrip(h, cli.addr(name), b"%s %d\n"
                                 % (name.encode(), i)))
        # Both conn_end lines name the rule (the second may still come).
        _until(lambda: len([e for e in srv.p.events("conn_end")
                            if e.get("peer_rule") == rule]) == 2,
               "[%s] two conn_end lines naming %s" % (name, rule))
        cli.p.wait_event("conn_end", 10, count=2, tunnel=name)
        done = [d for d in srv.p.events("handshake_done")
                if d.get("peer_rule") == rule]
        check_eq([d.get("resumed") for d in done],
                 ["false", "true" if resumable else "false"],
                 "[%s] server handshakes (full, then resumed)" % name)
        # The client judged the server's names as well, resumed too.
        cdone = cli.p.events("handshake_done", tunnel=name)
        check(all(d.get("peer_rule") == "allow_dns=srv.internal"
                  for d in cdone) and len(cdone) == 2,
              "[%s] client handshakes: %r" % (name, cdone))
    e = _refused(h, cli, "bad", srv, "name_not_allowed")
    check_eq(e.get("peer_names"), "dns=a.b.proxies.internal,"
             "uri=spiffe://prod.example/ns/db/sa/x,cn=bad",
             "names of the refused certificate")
    check_eq(be.accepted, 6, "backend connections")

    # No rule for the CN any more: that client is refused.
    del srv.tunnels["app"]["allow_cn"]
    srv.reload()
    _refused(h, cli, "legacy-proxy", srv, "name_not_allowed", count=2)
    close_echo(roundtrip(h, cli.addr("dnsok"), b"still in\n"))
    check_eq(be.accepted, 7, "backend connections after the reload")


@timeout(60)
def test_ticket_judged_by_names_on_resumption(h):
    """With a shared ticket_key_file the ticket survives a reload, so the
    resumption itself is judged: the server refuses the ticket of a
    client no rule allows any more (ticket_refused, name_not_allowed),
    and the full handshake that follows refuses the client."""
    if tls13(h):
        h.skip("no TLS 1.3 tickets from upseal-server (mbedTLS 3.6)")
    be = h.echo_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca)
    a = h.identity("a", ca=ca, dns=["a.proxies.internal"])
    tk = h.path("tickets.key")
    with open(tk, "wb") as f:
        f.write(os.urandom(48))
    os.chmod(tk, 0o600)
    srv = _server(h, be, sid, upseal={"log_level": "debug"},
                  ca=ca + ".crt", allow_dns="a.proxies.internal",
                  ticket_key_file=tk)
    cli = _client(h, srv, [a], upseal={"log_level": "debug"})
    for i in range(2):
        close_echo(roundtrip(h, cli.addr("a"), b"a %d\n" % i))
    check_eq([d.get("resumed") for d in srv.p.events("handshake_done")],
             ["false", "true"], "full, then resumed")
    srv.tunnels["app"]["allow_dns"] = "b.proxies.internal"
    srv.reload()
    _refused(h, cli, "a", srv, "name_not_allowed")
    t = srv.p.wait_event("ticket_refused", 10)
    check_eq(t.get("reason"), "name_not_allowed", "ticket_refused reason")
    check_eq(t.get("peer_names"), "dns=a.proxies.internal,cn=a",
             "ticket_refused names")


def test_name_rules_errors(h):
    """Invalid rules and rules without a CA are errors naming the line."""
    sid = h.identity("srv")
    base = ["[app]", "listen = 127.0.0.1:0", "connect = 127.0.0.1:9",
            "cert = " + sid.crt, "key = " + sid.key]
    for extra, line, words in (
            (["ca = " + sid.crt, "allow_dns = a.*.internal"], 7,
             "[app] allow_dns: \"a.*.internal\" has a '*'"),
            (["ca = " + sid.crt, "allow_uri = spiffe://td/a*"], 7,
             "[app] allow_uri: \"spiffe://td/a*\" has a '*'"),
            (["pin = " + sid.pin, "allow_cn = x"], 7,
             "[app] allow_cn: needs ca = FILE"),
            (["pin = " + sid.pin, "crl = x.crl"], 7,
             "[app] crl: needs ca = FILE")):
        p = h.write_text("bad.ini", "\n".join(base + extra) + "\n")
        r = h.run([h.bin("upseal-server"), "--check", "-c", p])
        check_eq(r.returncode, 1, "--check of %r" % extra)
        check("%s:%d: %s" % (p, line, words) in r.err,
              "--check error for %r:\n%s" % (extra, r.err))


# -- pin files -------------------------------------------------------------

def _pin_file(h, name, pins, junk=0):
    lines = ["# pins of the proxies", ""]
    for i in range(junk):
        lines.append("sha256//%s  # host %d" % (
            __import__("base64").b64encode(os.urandom(32)).decode(), i))
    lines += ["  %s  # the one that connects" % p for p in pins]
    return h.write_text(name, "\n".join(lines) + "\n")


@timeout(60)
def test_pin_file_any_length_and_reload(h):
    """pin_file with 2,000 pins, comments and blank lines lets the pinned
    client in; rewritten without its pin and reloaded, it refuses it; a
    bad line is an error naming FILE:LINE (the running settings stay)."""
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    pf = _pin_file(h, "clients.pins", [cid.pin], junk=2000)
    srv = _server(h, be, sid, pin_file=pf)
    cli = _client(h, srv, [cid])
    close_echo(roundtrip(h, cli.addr("cli"), b"pinned by file\n"))
    r = h.run([h.bin("upseal-server"), "--check", "-c", srv.ini])
    check_eq(r.returncode, 0, "--check: %s" % r.err)

    with open(pf, "a") as f:
        f.write("sha256//not-a-pin\n")
    d = srv.reload(ok=False)
    check("%s:2004: \"sha256//not-a-pin\"" % pf in d.get("error", ""),
          "reload_failed names FILE:LINE: %r" % d)
    close_echo(roundtrip(h, cli.addr("cli"), b"still pinned\n"))

    _pin_file(h, "clients.pins", [], junk=10)
    srv.reload()
    s = h.connect(cli.addr("cli"))
    s.sendall(b"x\n")
    how, _, n = wait_closed(s, 8)
    check(how != "open" and n == 0, "an unpinned client got through")
    srv.p.wait_event("conn_end", 10, reason="pin_mismatch")

    _pin_file(h, "clients.pins", [])
    d = srv.reload(ok=False)
    check("no pin in the file" in d.get("error", ""), "empty file: %r" % d)


# -- revocation ------------------------------------------------------------

@timeout(90)
def test_crl_revoke_then_sighup(h):
    """A CA's CRL, made by upseal-certs revoke: revoking client a and
    reloading refuses a's next connection, the resumption it offers (the
    ticket survives the reload with ticket_key_file) as well as the full
    handshake; b is unaffected. The CRL's nextUpdate is on /metrics."""
    be = h.echo_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca)
    a = h.identity("a", ca=ca)
    b = h.identity("b", ca=ca)
    r = _certs(h, "revoke", "--ca", ca)          # an empty CRL to start
    crl = r.out.strip()
    check_eq(crl, ca + ".crl", "the CRL's path")
    tk = h.path("tickets.key")
    with open(tk, "wb") as f:
        f.write(os.urandom(48))
    os.chmod(tk, 0o600)
    srv = _server(h, be, sid, upseal={"log_level": "debug",
                                      "status": "127.0.0.1:0"},
                  ca=ca + ".crt", crl=crl, ticket_key_file=tk)
    cli = _client(h, srv, [a, b])
    for ident in (a, b):
        for i in range(2):
            close_echo(roundtrip(h, cli.addr(ident.name), b"%d\n" % i))
    _certs(h, "revoke", "--ca", ca, a.crt)
    srv.reload()
    _refused(h, cli, "a", srv, "revoked")
    if not tls13(h):
        t = srv.p.wait_event("ticket_refused", 10)
        check_eq(t.get("reason"), "revoked", "ticket_refused reason")
    _refused(h, cli, "a", srv, "revoked", count=2)
    close_echo(roundtrip(h, cli.addr("b"), b"b is not revoked\n"))
    check_eq(be.accepted, 5, "backend connections")
    m = scrape(srv)
    out = h.openssl(["crl", "-in", crl, "-noout", "-nextupdate"]).out
    want = ssl.cert_time_to_seconds(out.strip().split("=", 1)[1])
    check_eq(m.get("upseal_crl_next_update_seconds", tunnel="app"),
             float(want), "CRL nextUpdate gauge")
    check_eq(m.count("upseal_handshake_failures_total", tunnel="app",
                     reason="revoked"), 2, "revoked handshakes")


@timeout(60)
def test_crl_errors_and_stale(h):
    """A CRL of another CA is an error naming the file; a CRL past its
    nextUpdate still revokes (and warns: crl_stale)."""
    be = h.echo_backend()
    ca, other = h.ca("ca"), h.ca("other")
    sid = h.identity("srv", ca=ca)
    a = h.identity("a", ca=ca)
    r = _certs(h, "revoke", "--ca", other)
    ini = h.write_ini("bad", {"app": {
        "listen": "127.0.0.1:0", "connect": be.addr, "cert": sid.crt,
        "key": sid.key, "ca": ca + ".crt", "crl": r.out.strip()}})
    r = h.run([h.bin("upseal-server"), "--check", "-c", ini])
    check_eq(r.returncode, 1, "--check with another CA's CRL")
    check("[app] crl: %s: issued by none of the certificates" % (other + ".crl")
          in r.err, "error: %s" % r.err)
    # A stale CRL: openssl writes one that revokes a and is valid for one
    # second (openssl ca -gencrl -crlsec 1); upseal-certs cannot.
    d = h.path("ossl")
    os.mkdir(d)
    with open(os.path.join(d, "index.txt"), "w") as f:
        f.write("")
    cnf = os.path.join(d, "ca.cnf")
    with open(cnf, "w") as f:
        f.write("[ca]\ndefault_ca = c\n[c]\ndatabase = %s/index.txt\n"
                "default_md = sha256\ncrlnumber = %s/crlnumber\n"
                % (d, d))
    with open(os.path.join(d, "crlnumber"), "w") as f:
        f.write("01\n")
    r = h.openssl(["ca", "-config", cnf, "-cert", ca + ".crt", "-keyfile",
                   ca + ".key", "-revoke", a.crt])
    check_eq(r.returncode, 0, "openssl ca -revoke: %s" % r.err)
    stale = h.path("stale.crl")
    r = h.openssl(["ca", "-config", cnf, "-cert", ca + ".crt", "-keyfile",
                   ca + ".key", "-gencrl", "-crlsec", "1", "-out", stale])
    check_eq(r.returncode, 0, "openssl ca -gencrl: %s" % r.err)
    time.sleep(2.2)     # past its nextUpdate
    srv = _server(h, be, sid, ca=ca + ".crt", crl=stale)
    w = srv.p.wait_event("crl_stale", 5)
    check_eq(w.get("crl"), stale, "crl_stale names the file")
    cli = _client(h, srv, [a])
    _refused(h, cli, "a", srv, "revoked")


# -- expiry ----------------------------------------------------------------

def _not_after(h, crt):
    out = h.openssl(["x509", "-in", crt, "-noout", "-enddate"]).out
    return float(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))


@timeout(60)
def test_expiry_metrics_warning_and_check(h):
    """The gauges equal the certificates' notAfter (as openssl reads
    them); a certificate that expires in 3 days (upseal-certs --days 3)
    logs cert_expiring at start and at each reload, --check prints its
    days left; a peer with an expired certificate in CA mode is counted."""
    be = h.echo_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca, days=3)
    good = h.identity("good", ca=ca)
    old = _expired_identity(h, ca, "expired")
    srv = _server(h, be, sid, upseal={"status": "127.0.0.1:0"},
                  ca=ca + ".crt")
    w = srv.p.wait_event("cert_expiring", 5)
    # 3 days less the seconds since it was made: 2, or 3 if within one.
    check((w.get("tunnel"), w.get("cert")) == ("app", sid.crt) and
          w.get("days_left") in ("2", "3"), "cert_expiring at start: %r" % w)
    m = scrape(srv)
    check_eq(m.get("upseal_cert_not_after_seconds", tunnel="app"),
             _not_after(h, sid.crt), "own certificate's notAfter")
    check_eq(m.get("upseal_ca_not_after_seconds", tunnel="app"),
             _not_after(h, ca + ".crt"), "CA's notAfter")
    check_eq(m.count("upseal_peer_cert_expired_total", tunnel="app"), 0,
             "expired peers before")
    cli = _client(h, srv, [good, old])
    close_echo(roundtrip(h, cli.addr("good"), b"valid\n"))
    _refused(h, cli, "expired", srv, "chain_invalid")
    m = scrape(srv)
    check_eq(m.count("upseal_peer_cert_expired_total", tunnel="app"), 1,
             "expired peers after")
    srv.reload()
    srv.p.wait_event("cert_expiring", 5, count=2)
    r = h.run([h.bin("upseal-server"), "--check", "-c", srv.ini])
    check_eq(r.returncode, 0, "--check: %s" % r.err)
    check(re.search(r"^\[app\] cert notAfter \S+ \([23] days left\)$", r.out,
                    re.M), "--check output:\n%s" % r.out)
    check(re.search(r"^\[app\] ca notAfter \S+ \(36\d\d days left\)$",
                    r.out, re.M), "--check output:\n%s" % r.out)
    # Outside the window: no warning (expiry_warning = 2d).
    srv.tunnels["app"]["expiry_warning"] = "2d"
    srv.reload()
    check_eq(len(srv.p.events("cert_expiring")), 2, "warnings with 2d")
