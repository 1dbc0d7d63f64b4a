"""`upseal-server --audit -c FILE`: does a tunnel's backend also listen where
the network can reach it? Exit 0 and say so when it listens on loopback
only; exit 1, name the address and say to bind it to loopback when it does
not; a unix-socket backend has nothing to audit."""

import re
import socket

from harness import check, check_eq, parse_line as _parse, timeout


def _listen(h, family, host):
    """A plain listening socket (the 'backend'); closed at teardown."""
    s = socket.socket(family, socket.SOCK_STREAM)
    h.socks.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    s.listen(8)
    return s, s.getsockname()[1]


def _server_ini(h, name, tunnels):
    """tunnels: {section: connect}; a server file that --check accepts."""
    sid = h.identity("srv-" + name)
    cid = h.identity("cli-" + name)
    t = {}
    for sec, connect in tunnels.items():
        t[sec] = {"listen": "127.0.0.1:0", "connect": connect,
                  "cert": sid.crt, "key": sid.key, "pin": [cid.pin]}
    return h.write_ini(name, t)


def _audit(h, ini):
    r = h.run([h.bin("upseal-server"), "--audit", "-c", ini], timeout=30)
    r.text = r.out + r.err
    return r


def _says_bind_loopback(text):
    return re.search(r"bind\b.*\b(127\.0\.0\.1|loopback)", text,
                     re.I | re.S) is not None


@timeout(60)
def test_backend_on_loopback_passes(h):
    _, port = _listen(h, socket.AF_INET, "127.0.0.1")
    ini = _server_ini(h, "lo", {"app": "127.0.0.1:%d" % port})
    r = _audit(h, ini)
    check_eq(r.returncode, 0, "--audit exit, backend on 127.0.0.1 only "
             "(output %r)" % r.text)
    check("loopback" in r.text.lower(),
          "--audit output does not say the backend is on loopback: %r"
          % r.text)
    check("[app]" in r.text or "app" in r.text,
          "--audit output does not name the tunnel: %r" % r.text)
    check("0.0.0.0" not in r.text, "--audit mentions 0.0.0.0: %r" % r.text)


@timeout(60)
def test_backend_on_wildcard_fails(h):
    _, port = _listen(h, socket.AF_INET, "0.0.0.0")
    ini = _server_ini(h, "any", {"app": "127.0.0.1:%d" % port})
    r = _audit(h, ini)
    check_eq(r.returncode, 1, "--audit exit, backend on 0.0.0.0 (output %r)"
             % r.text)
    check("0.0.0.0" in r.text, "--audit does not name 0.0.0.0: %r" % r.text)
    check(str(port) in r.text, "--audit does not name port %d: %r"
          % (port, r.text))
    check(_says_bind_loopback(r.text),
          "--audit does not say to bind the backend to loopback: %r" % r.text)


@timeout(60)
def test_backend_on_ipv6_wildcard_fails(h):
    try:
        _, port = _listen(h, socket.AF_INET6, "::")
    except OSError as e:
        h.note("no IPv6 here (%s): IPv6 wildcard case not run" % e)
        return
    # The v4 loopback side of the same port is taken too, so that the
    # audit has a loopback listener and a wildcard one to tell apart.
    lo = socket.socket()
    h.socks.append(lo)
    lo.bind(("127.0.0.1", port))
    lo.listen(8)
    ini = _server_ini(h, "v6", {"app": "127.0.0.1:%d" % port})
    r = _audit(h, ini)
    check_eq(r.returncode, 1, "--audit exit, backend also on [::] (output %r)"
             % r.text)
    check("::" in r.text, "--audit does not name [::]: %r" % r.text)
    check(_says_bind_loopback(r.text),
          "--audit does not say to bind the backend to loopback: %r" % r.text)


@timeout(60)
def test_unix_backend_nothing_to_audit(h):
    ini = _server_ini(h, "unix", {"app": "unix:" + h.path("app.sock")})
    r = _audit(h, ini)
    check_eq(r.returncode, 0, "--audit exit, unix backend (output %r)"
             % r.text)
    check(re.search(r"nothing to audit", r.text, re.I),
          "--audit does not say there is nothing to audit for a unix "
          "backend: %r" % r.text)


@timeout(60)
def test_one_exposed_tunnel_fails_the_file(h):
    _, good = _listen(h, socket.AF_INET, "127.0.0.1")
    _, bad = _listen(h, socket.AF_INET, "0.0.0.0")
    ini = _server_ini(h, "mixed", {
        "safe": "127.0.0.1:%d" % good,
        "open": "127.0.0.1:%d" % bad,
        "sock": "unix:" + h.path("s.sock"),
    })
    r = _audit(h, ini)
    check_eq(r.returncode, 1, "--audit exit, one of three tunnels exposed "
             "(output %r)" % r.text)
    for name in ("safe", "open", "sock"):
        check(name in r.text, "--audit does not report tunnel %s: %r"
              % (name, r.text))
    check("0.0.0.0:%d" % bad in r.text or "0.0.0.0" in r.text,
          "--audit does not name the exposed address: %r" % r.text)


# --- the warning upseal-server logs at start ---------------------------------

def _start_server(h, name, tunnels):
    """upseal-server with tunnels {section: connect}, waited on until ready
    (the start-up audit runs before `ready`)."""
    return h.start("upseal-server", _server_ini(h, name, tunnels), name=name)


@timeout(60)
def test_start_warns_when_backend_exposed(h):
    # Two tunnels: one backend also listens on every address, the other on
    # loopback only. Only the first is named, with the exposed address.
    _, bad = _listen(h, socket.AF_INET, "0.0.0.0")
    _, good = _listen(h, socket.AF_INET, "127.0.0.1")
    srv = _start_server(h, "exposed", {"open": "127.0.0.1:%d" % bad,
                                       "safe": "127.0.0.1:%d" % good})
    warns = srv.events("backend_exposed")
    check_eq([w.get("tunnel") for w in warns], ["open"],
             "tunnels named by backend_exposed at start (log:\n%s)"
             % srv.log())
    w = warns[0]
    check_eq(w.get("level"), "warn", "level of backend_exposed")
    check("0.0.0.0:%d" % bad in w.get("listening", "").split(","),
          "backend_exposed does not name 0.0.0.0:%d: %r" % (bad, w))
    check(_says_bind_loopback(w.get("msg", "")),
          "backend_exposed does not say to bind the backend to loopback: "
          "%r" % w)
    # The warning comes before `ready`: an operator who waits for ready
    # has already been told.
    lines = [d.get("event") for d in map(_parse, srv.lines())]
    check(lines.index("backend_exposed") < lines.index("ready"),
          "backend_exposed logged after ready: %r" % lines)
    check(srv.alive(), "upseal-server did not keep running after the "
          "warning (it is a warning, not a refusal)")


@timeout(60)
def test_start_quiet_when_backend_on_loopback(h):
    _, port = _listen(h, socket.AF_INET, "127.0.0.1")
    srv = _start_server(h, "quiet", {"app": "127.0.0.1:%d" % port})
    check_eq(srv.events("backend_exposed"), [],
             "backend_exposed lines with the backend on 127.0.0.1 only "
             "(log:\n%s)" % srv.log())
    check("backend_exposed" not in srv.log(),
          "backend_exposed in the log: %s" % srv.log())
