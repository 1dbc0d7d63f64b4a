"""The scenario upseal exists for, end to end, on two "hosts": two network
namespaces joined by a veth pair.

  host A (netns):  curl --https--> nginx|haproxy :443 --plain, loopback-->
                   upseal-client ==mTLS, pinned, over the veth==>
  host B (netns):  upseal-server (B's veth address) --plain, loopback-->
                   HTTP backend on 127.0.0.1 only

Asserts: the page comes through; from A the backend's port on B is closed;
a sidecar on A whose key B does not pin is refused (pin_mismatch); plain
TCP to upseal-server's port gets no backend bytes; `upseal-server --audit`
on B passes, and fails once the backend is rebound to 0.0.0.0 (which also
opens the backend to A directly: the hole the audit reports).

Needs root (ip netns add). Namespaces, veths and processes are removed
when the test ends, whatever happens.
"""

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time

from harness import (Proc, Skip, TestFailure, check, check_eq, scaled, tail,
                     timeout)

CLONE_NEWNET = 0x40000000
NET_A, NET_B = "10.231.7.1", "10.231.7.2"

BACKEND_PY = r"""
import http.server, os, signal, sys
host, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.chdir(root)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("backend request %s\n" % (fmt % args))
        sys.stderr.flush()
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
s = S((host, port), H)
sys.stderr.write("backend listening %s:%d\n" % (host, s.server_address[1]))
sys.stderr.flush()
s.serve_forever()
"""


def _run(argv, timeout=30, check_rc=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check_rc and r.returncode != 0:
        raise TestFailure("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                               r.stderr.decode()[-500:]))
    return r


_libc = ctypes.CDLL(None, use_errno=True)


def ns_socket(ns, family=socket.AF_INET):
    """A socket created inside network namespace ns (by a short-lived
    thread that joins it: setns acts on the calling thread only)."""
    out = {}

    def enter():
        try:
            fd = os.open("/run/netns/" + ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    out["err"] = OSError(e, "setns %s: %s"
                                         % (ns, os.strerror(e)))
                    return
                out["sock"] = socket.socket(family, socket.SOCK_STREAM)
            finally:
                os.close(fd)
        except OSError as e:
            out["err"] = e

    t = threading.Thread(target=enter, name="netns-" + ns)
    t.start()
    t.join(10)
    if "err" in out:
        raise out["err"]
    check("sock" in out, "could not make a socket in netns %s" % ns)
    return out["sock"]


def ns_connect(ns, host, port, timeout=5.0):
    """Connect from inside ns; returns the socket or raises OSError."""
    s = ns_socket(ns)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        raise
    return s


def wait_port(ns, host, port, timeout, what, proc=None):
    """Bounded wait until host:port accepts inside ns."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TestFailure("%s exited (%s) before listening on %s:%d:\n%s"
                              % (what, proc.returncode, host, port,
                                 tail(proc.log())))
        try:
            ns_connect(ns, host, port, timeout=1.0).close()
            return
        except OSError as e:
            last = e
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise TestFailure("%s: %s:%d in %s not accepting after %.0fs (%r)%s"
                      % (what, host, port, ns, timeout, last,
                         "\n" + tail(proc.log()) if proc else ""))


def stop_group(p):
    """End a non-upseal process: SIGTERM, then SIGKILL, to its own process
    group (start_new_session made it the group leader: the group is ours
    alone)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except OSError:
            pass
        if p.wait(10) is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait(10)
    p._close_files()


class TwoHosts:
    """Namespaces A and B, a veth pair between them, and every process
    started in them; close() removes all of it (idempotent)."""

    def __init__(self, h):
        self.h = h
        sfx = secrets.token_hex(3)
        self.a = "upsA-" + sfx
        self.b = "upsB-" + sfx
        self.va = "upvA" + sfx       # interface names: at most 15 bytes
        self.vb = "upvB" + sfx
        self.nss = []
        self.others = []             # non-upseal processes, stopped by us
        self.upseal = []             # upseal processes (also in h.procs)
        self.closed = False

    def setup(self):
        for ns in (self.a, self.b):
            _run(["ip", "netns", "add", ns])
            self.nss.append(ns)
        # Both ends are created straight inside their namespaces, so that
        # nothing is ever left in the root namespace.
        _run(["ip", "link", "add", self.va, "netns", self.a, "type", "veth",
              "peer", "name", self.vb, "netns", self.b])
        for ns, dev, ip in ((self.a, self.va, NET_A), (self.b, self.vb, NET_B)):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        # The veth is up once B is reachable from A (bounded).
        deadline = time.monotonic() + 10
        while True:
            r = _run(["ip", "netns", "exec", self.a, "ping", "-c1", "-W1",
                      NET_B], check_rc=False) if shutil.which("ping") else None
            if r is None or r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TestFailure("veth %s <-> %s not up after 10s"
                                  % (self.va, self.vb))

    # -- processes
    def start(self, ns, name, argv, upseal=False):
        p = Proc(self.h, name, ["ip", "netns", "exec", ns] + argv, self.h.dir)
        if upseal:
            self.h.procs.append(p)   # teardown checks its log and exit code
            self.upseal.append(p)
        else:
            self.others.append(p)
        return p

    def stop_other(self, p):
        stop_group(p)

    def close(self):
        if self.closed:
            return
        self.closed = True
        errors = []
        for p in reversed(self.others):
            try:
                self.stop_other(p)
            except Exception as e:
                errors.append("stopping %s: %r" % (p.name, e))
        for p in reversed(self.upseal):
            try:
                p.stop()
            except Exception as e:
                errors.append("stopping %s: %r" % (p.name, e))
        for ns in reversed(self.nss):
            r = _run(["ip", "netns", "del", ns], check_rc=False)
            if r.returncode != 0:
                errors.append("ip netns del %s: %s" % (ns, r.stderr.decode()))
        left = _run(["ip", "netns", "list"], check_rc=False).stdout.decode()
        for ns in self.nss:
            if re.search(r"^%s\b" % re.escape(ns), left, re.M):
                errors.append("namespace %s still there" % ns)
        if errors:
            raise TestFailure("two-host cleanup: " + "; ".join(errors))


# What `ip netns add` says when this machine does not let us make network
# namespaces (not root, or a container without CAP_SYS_ADMIN).
_NOT_PERMITTED = re.compile(r"not permitted|permission denied", re.I)


def _netns_permitted():
    """(True, "") if `ip netns add` works here; (False, why) if it is not
    permitted. Any other failure of it fails the test."""
    name = "upsP-" + secrets.token_hex(3)
    r = subprocess.run(["ip", "netns", "add", name], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    err = r.stderr.decode("utf-8", "replace").strip()
    if r.returncode != 0:
        if _NOT_PERMITTED.search(err):
            return False, err
        raise TestFailure("ip netns add %s: exit %d: %s"
                          % (name, r.returncode, err))
    subprocess.run(["ip", "netns", "del", name], timeout=20)
    return True, ""


def _backend(h, net, host, port, token_dir):
    script = h.path("backend.py")
    if not os.path.exists(script):
        h.write_text("backend.py", BACKEND_PY)
    p = net.start(net.b, "backend-%s" % host.replace(".", "_"),
                  ["python3", "-u", script, host, str(port), token_dir])
    m = p.wait_for(r"backend listening \S+:(\d+)", timeout=scaled(10, 20))
    return p, int(m.group(1))


def _requests_seen(p):
    return len(re.findall(r"backend request", p.log()))


def _nginx(h, net, crt, key, upstream):
    d = h.path("nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = """daemon off;
master_process on;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log info;
events { worker_connections 128; }
http {
    access_log %(d)s/access.log;
    client_body_temp_path %(d)s/tmp/body;
    proxy_temp_path %(d)s/tmp/proxy;
    fastcgi_temp_path %(d)s/tmp/fastcgi;
    uwsgi_temp_path %(d)s/tmp/uwsgi;
    scgi_temp_path %(d)s/tmp/scgi;
    upstream app {
        server %(up)s;
        keepalive 4;
    }
    server {
        listen 443 ssl;
        ssl_certificate %(crt)s;
        ssl_certificate_key %(key)s;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
}
""" % {"d": d, "up": upstream, "crt": crt, "key": key}
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    return net.start(net.a, "nginx", ["nginx", "-p", d, "-c", "nginx.conf",
                                      "-e", os.path.join(d, "error.log")])


def _haproxy(h, net, crt, key, upstream):
    pem = h.path("www.pem")
    with open(pem, "w") as o:
        for p in (crt, key):
            with open(p) as f:
                o.write(f.read())
    os.chmod(pem, 0o600)
    cfg = h.write_text("haproxy.cfg", """global
    log stderr format short local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend www
    bind :443 ssl crt %s
    default_backend upseal
backend upseal
    server upseal-client %s
""" % (pem, upstream))
    return net.start(net.a, "haproxy", ["haproxy", "-db", "-f", cfg])


def _curl(net, token_crt, timeout=20):
    r = subprocess.run(
        ["ip", "netns", "exec", net.a, "curl", "-sS", "--max-time",
         str(timeout), "--cacert", token_crt, "--resolve",
         "www:443:127.0.0.1", "https://www/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 10)
    return r.returncode, r.stdout.decode("utf-8", "replace"), \
        r.stderr.decode("utf-8", "replace")


def _audit(h, net, ini):
    r = subprocess.run(["ip", "netns", "exec", net.b, h.bin("upseal-server"),
                        "--audit", "-c", ini], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=scaled(30, 90))
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def netns_or_skip():
    """Skip the test where `ip netns add` is not permitted."""
    ok, why = _netns_permitted()
    if not ok:
        raise Skip("ip netns add not permitted here (%s)" % why)


def in_two_hosts(h, fn):
    """Run fn(net) with two fresh hosts, removed afterwards whatever
    happens (also if the test times out)."""
    net = TwoHosts(h)
    h.cleanups.append(net.close)
    try:
        fn(net)
    finally:
        net.close()


def _scenario(h, front):
    netns_or_skip()
    check(shutil.which(front), "%s is not installed (tests/deps.sh)" % front)
    check(shutil.which("curl"), "curl is not installed (tests/deps.sh)")
    in_two_hosts(h, lambda net: _scenario_in(h, net, front))


def _scenario_in(h, net, front):
    t0 = time.monotonic()
    net.setup()
    sid = h.identity("host-b")
    cid = h.identity("host-a")
    www = h.identity("www", dns=["www"])
    token = "upseal-twohost-" + secrets.token_hex(8)
    site = h.path("site")
    os.mkdir(site)
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write("<h1>%s</h1>\n" % token)

    # Host B: the backend on loopback only, upseal-server on the veth.
    backend, bport = _backend(h, net, "127.0.0.1", 0, site)
    sini = h.write_ini("server-b", {"app": {
        "listen": "%s:0" % NET_B, "connect": "127.0.0.1:%d" % bport,
        "cert": sid.crt, "key": sid.key, "pin": [cid.pin],
        "handshake_timeout": "5s"}})
    srv = net.start(net.b, "server-b", [h.bin("upseal-server"), "-c", sini],
                    upseal=True)
    srv.wait_ready()
    saddr = srv.addr("app")
    sport = int(saddr.rsplit(":", 1)[1])
    check_eq(saddr, "%s:%d" % (NET_B, sport), "upseal-server's address")

    # Host A: upseal-client on loopback dialing B, the proxy in front.
    cini = h.write_ini("client-a", {"app": {
        "listen": "127.0.0.1:0", "connect": saddr,
        "cert": cid.crt, "key": cid.key, "pin": [sid.pin],
        "connect_timeout": "3s", "handshake_timeout": "5s"}})
    cli = net.start(net.a, "client-a", [h.bin("upseal-client"), "-c", cini],
                    upseal=True)
    cli.wait_ready()
    caddr = cli.addr("app")
    if front == "nginx":
        fp = _nginx(h, net, www.crt, www.key, caddr)
    else:
        fp = _haproxy(h, net, www.crt, www.key, caddr)
    wait_port(net.a, "127.0.0.1", 443, scaled(15, 30), front, fp)
    h.note("%s: hosts up in %.1fs" % (front, time.monotonic() - t0))

    # 1. HTTPS to the proxy on A returns the backend's page, via the tunnel.
    rc, out, err = _curl(net, www.crt)
    check(rc == 0 and token in out,
          "curl https://www/ via %s on A: exit %d, body %r, stderr %r\n"
          "%s log:\n%s" % (front, rc, out[:300], err, front,
                           tail(fp.log())))
    check(_requests_seen(backend) >= 1, "backend saw no request")
    check(srv.refusals() == [],
          "server refused the pinned client: %r" % srv.refusals())

    # 2. From A, the backend's own port on B is closed (loopback only).
    try:
        s = ns_connect(net.a, NET_B, bport, timeout=5)
        s.close()
        raise TestFailure("from A, %s:%d (the backend's port) accepted a "
                          "connection" % (NET_B, bport))
    except (ConnectionRefusedError, socket.timeout) as e:
        h.note("%s: direct %s:%d from A: %s" % (front, NET_B, bport,
                                                type(e).__name__))

    # 3. A sidecar on A whose key B does not pin is refused in the handshake.
    rogue = h.identity("rogue")
    rini = h.write_ini("rogue-a", {"app": {
        "listen": "127.0.0.1:0", "connect": saddr,
        "cert": rogue.crt, "key": rogue.key, "pin": [sid.pin],
        "connect_timeout": "3s", "handshake_timeout": "5s"}})
    rp = net.start(net.a, "rogue-a", [h.bin("upseal-client"), "-c", rini],
                   upseal=True)
    rp.wait_ready()
    rport = int(rp.addr("app").rsplit(":", 1)[1])
    seen = _requests_seen(backend)
    s = ns_connect(net.a, "127.0.0.1", rport, timeout=10)
    s.sendall(b"GET / HTTP/1.0\r\nHost: www\r\n\r\n")
    got = _read_all(s, scaled(10, 30))
    s.close()
    check(token.encode() not in got and b"HTTP/1." not in got,
          "the unpinned sidecar got backend bytes: %r" % got[:200])
    ev = srv.wait_event("conn_end", reason="pin_mismatch",
                        timeout=scaled(10, 30))
    check_eq(ev.get("presented_pin"), rogue.pin, "presented_pin in B's log")
    check_eq(_requests_seen(backend), seen, "backend requests after the "
             "unpinned sidecar")

    # 4. Plain TCP from A to upseal-server's port: no backend bytes.
    s = ns_connect(net.a, NET_B, sport, timeout=10)
    s.sendall(b"GET / HTTP/1.0\r\nHost: www\r\n\r\n")
    got = _read_all(s, scaled(15, 30))
    s.close()
    check(token.encode() not in got and b"HTTP/1." not in got,
          "plain TCP to upseal-server got backend bytes: %r" % got[:200])
    srv.wait_event("conn_end", reason="not_tls",
                   timeout=scaled(10, 30))
    check_eq(_requests_seen(backend), seen, "backend requests after plain "
             "TCP to upseal-server")

    # The good path still works after the bad peers.
    rc, out, err = _curl(net, www.crt)
    check(rc == 0 and token in out, "second curl: exit %d %r %r"
          % (rc, out[:200], err))

    # 5. --audit on B: passes with the backend on loopback only...
    rc, text = _audit(h, net, sini)
    check_eq(rc, 0, "upseal-server --audit on B, backend on 127.0.0.1 "
             "(output %r)" % text)
    check("loopback" in text.lower(), "--audit output: %r" % text)
    # ...and fails once the backend is rebound to 0.0.0.0.
    net.stop_other(backend)
    backend2, _ = _backend(h, net, "0.0.0.0", bport, site)
    rc, text = _audit(h, net, sini)
    check_eq(rc, 1, "upseal-server --audit on B, backend on 0.0.0.0 "
             "(output %r)" % text)
    check("0.0.0.0" in text and re.search(r"bind\b.*(127\.0\.0\.1|loopback)",
                                          text, re.I | re.S),
          "--audit does not name 0.0.0.0 and say to bind to loopback: %r"
          % text)
    # That is a real hole: from A the backend now answers directly.
    s = ns_connect(net.a, NET_B, bport, timeout=10)
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    got = _read_all(s, 15)
    s.close()
    check(token.encode() in got, "the rebound backend did not answer A "
          "directly: %r" % got[:200])
    h.note("%s: scenario done in %.1fs" % (front, time.monotonic() - t0))


def _read_all(s, timeout):
    """Read until EOF/reset or timeout; returns what came (bounded)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < 1 << 20:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            break
        if not d:
            break
        buf += d
    return bytes(buf)


@timeout(120)
def test_twohost_nginx(h):
    _scenario(h, "nginx")


@timeout(120)
def test_twohost_haproxy(h):
    _scenario(h, "haproxy")
