"""A plaintext end given as a name is checked after it resolves: the
server's `connect` (resolved for each connection) and the client's
`listen` (resolved at bind time) must resolve to loopback unless the
tunnel says allow_remote = yes. `localhost` passes the config check by its
name; here it resolves to 192.0.2.1 (TEST-NET-1).

Each daemon runs in a network namespace of its own that has only `lo`,
and in a mount namespace where our own file is bind-mounted on
/etc/hosts (the host's file is never touched). So even a broken build
cannot send a packet to 192.0.2.1: with no route, connect() fails with
ENETUNREACH in the kernel. Needs root (ip netns, mount); skipped where
that is not permitted.
"""

import os
import socket
import subprocess
import time

from harness import Proc, check, check_eq, recv_exact, scaled, timeout, \
    wait_closed
from netfault import in_netns

OFF_HOST = "192.0.2.1"
_seq = [0]


def _run(argv, timeout_s=10):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout_s)


class Box:
    """One network namespace with only `lo` up; daemons started in it see
    a hosts file of the test's choosing."""

    def __init__(self, h):
        self.h = h
        _seq[0] += 1
        self.ns = "upseal-r-%d-%d" % (os.getpid() % 100000, _seq[0])
        r = _run(["ip", "netns", "add", self.ns])
        if r.returncode != 0:
            h.skip("cannot create a network namespace (ip netns add: %s)"
                   % r.stderr.decode().strip())
        h.cleanups.append(self.close)
        r = _run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        check(r.returncode == 0, "lo up: %s" % r.stderr.decode())
        probe = self.hosts("probe", "127.0.0.1 upseal-probe\n")
        r = _run(self.argv(probe, ["cat", "/etc/hosts"]))
        if r.returncode != 0 or r.stdout != b"127.0.0.1 upseal-probe\n":
            h.skip("cannot bind-mount a hosts file in a mount namespace "
                   "(unshare --mount: exit %d, %s)"
                   % (r.returncode, r.stderr.decode().strip()))

    def hosts(self, name, text):
        return self.h.write_text("hosts-" + name, text)

    def argv(self, hosts, argv):
        """argv run in the namespace with hosts on /etc/hosts; every step
        execs the next, so the pid is the daemon's."""
        return (["ip", "netns", "exec", self.ns, "unshare", "--mount",
                 "--propagation", "private", "sh", "-c",
                 'mount --bind "$1" /etc/hosts && shift && exec "$@"', "sh",
                 hosts] + list(argv))

    def start(self, binary, ini, name, hosts, wait_ready=True):
        p = Proc(self.h, name, self.argv(hosts, [self.h.bin(binary), "-c",
                                                 ini]), self.h.dir)
        self.h.procs.append(p)
        if wait_ready:
            p.wait_ready()
        return p

    def connect(self, addr, timeout_s=10):
        host, port = addr.rsplit(":", 1)

        def mk():
            s = socket.create_connection((host, int(port)), timeout_s)
            return s
        s = in_netns(self.ns, mk)
        self.h.socks.append(s)
        return s

    def close(self):
        _run(["ip", "netns", "del", self.ns])


def _ids(h):
    return h.identity("srv"), h.identity("cli")


def _chain(h, box, hosts, ids, server_extra=None):
    """backend (127.0.0.1 in the box) <- server (connect = localhost:PORT,
    with this hosts file) <- client; returns (backend, server, client)."""
    be = in_netns(box.ns, h.echo_backend)
    port = be.addr.rsplit(":", 1)[1]
    sid, cid = ids
    name = "server-%d" % len(h.procs)
    st = dict({"listen": "127.0.0.1:0", "connect": "localhost:" + port,
               "cert": sid.crt, "key": sid.key, "pin": cid.pin,
               "connect_timeout": "5s"}, **(server_extra or {}))
    srv = box.start("upseal-server", h.write_ini(name, {"app": st}), name,
                    hosts)
    plain = box.hosts("plain", "127.0.0.1 localhost\n")
    cname = "client-%d" % len(h.procs)
    cini = h.write_ini(cname, {"app": {
        "listen": "127.0.0.1:0", "connect": srv.addr("app"),
        "cert": cid.crt, "key": cid.key, "pin": sid.pin}})
    cli = box.start("upseal-client", cini, cname, plain)
    return be, srv, cli


@timeout(90)
def test_backend_name_off_loopback_refused(h):
    """connect = localhost:PORT, localhost resolving to 192.0.2.1 only:
    the server refuses to dial it (connect_failed, the error naming the
    name and the address, logged once), the client's connection ends at
    once and the backend sees nothing. With 127.0.0.1 listed as well, the
    off-host address is skipped and the loopback one works."""
    box = Box(h)
    bad = box.hosts("bad", "%s localhost\n" % OFF_HOST)
    ids = _ids(h)
    be, srv, cli = _chain(h, box, bad, ids)
    s = box.connect(cli.addr("app"))
    s.sendall(b"never to 192.0.2.1\n")
    t0 = time.monotonic()
    how, _, n = wait_closed(s, scaled(4, 8))
    took = time.monotonic() - t0
    check(how in ("eof", "reset") and n == 0, "client connection: %s after "
          "%.1fs with %d bytes, want closed with none" % (how, took, n))
    e = srv.wait_event("conn_end", tunnel="app")
    check_eq(e.get("reason"), "connect_failed", "server conn_end reason")
    want = ("localhost resolved to %s, which is not loopback "
            "(allow_remote = no)" % OFF_HOST)
    check_eq(e.get("error"), want, "server conn_end error")
    mentions = [ln for ln in srv.lines() if OFF_HOST in ln]
    check_eq(len(mentions), 1, "lines naming %s (logged once): %r"
             % (OFF_HOST, mentions))
    check(not [ln for ln in srv.lines() if "unreachable" in ln],
          "a dial to %s was attempted:\n%s" % (OFF_HOST, srv.log()))
    check(took < 2.0, "refused after %.1fs: it waited (connect_timeout "
          "is 5s)" % took)
    check_eq(be.accepted, 0, "backend connections")

    # Both listed: 192.0.2.1 is skipped, 127.0.0.1 is dialed.
    mixed = box.hosts("mixed", "%s localhost\n127.0.0.1 localhost\n"
                      % OFF_HOST)
    _, srv2, cli2 = _chain(h, box, mixed, ids)
    for i in range(3):
        s = box.connect(cli2.addr("app"))
        s.sendall(b"hello %d\n" % i)
        check_eq(recv_exact(s, 8), b"hello %d\n" % i, "echo through "
                 "localhost with an off-host address listed too")
        s.close()
    check(not [ln for ln in srv2.lines() if OFF_HOST in ln or
               "connect_failed" in ln],
          "server 2 refused or tried %s:\n%s" % (OFF_HOST, srv2.log()))


@timeout(60)
def test_client_listen_name_off_loopback(h):
    """The client's listen = localhost:0 with localhost resolving to
    192.0.2.1: a start error naming the tunnel, the name and the address;
    with 127.0.0.1 listed as well, it listens on 127.0.0.1."""
    box = Box(h)
    sid, cid = h.identity("srv"), h.identity("cli")
    t = {"listen": "localhost:0", "connect": "127.0.0.1:9",
         "cert": cid.crt, "key": cid.key, "pin": sid.pin}
    bad = box.hosts("bad", "%s localhost\n" % OFF_HOST)
    p = box.start("upseal-client", h.write_ini("bad", {"app": t}), "bad", bad,
                  wait_ready=False)
    p.expect_exit = 1
    check_eq(p.wait(scaled(10, 30)), 1, "upseal-client exit")
    want = ("[app] listen localhost:0: localhost resolved to %s, which is "
            "not loopback (allow_remote = no)" % OFF_HOST)
    check(want in p.log(), "want %r in:\n%s" % (want, p.log()))
    check("event=listening" not in p.log(), "it listened anyway")

    mixed = box.hosts("mixed", "%s localhost\n127.0.0.1 localhost\n"
                      % OFF_HOST)
    p = box.start("upseal-client", h.write_ini("mixed", {"app": t}), "mixed",
                  mixed)
    check(p.addr("app").startswith("127.0.0.1:"), "listening on %r, want "
          "127.0.0.1" % p.addr("app"))
