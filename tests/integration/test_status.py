"""The status endpoint under hostile local clients: idle connections that
hold every client slot must not keep /healthz unanswered, and a
`status = unix:PATH` must not take over a socket another process serves."""

import os
import re
import socket
import time

from harness import check, check_eq, scaled, timeout, wait_closed
from test_operate import healthz

HERE = os.path.dirname(os.path.abspath(__file__))
STATUS_C = os.path.join(HERE, "..", "..", "common", "daemon", "status.c")


def _status_const(name):
    """A #define of common/daemon/status.c, so the test follows the code."""
    with open(STATUS_C) as f:
        m = re.search(r"^#define %s (\d+)\b" % name, f.read(), re.M)
    check(m, "no #define %s in %s" % (name, STATUS_C))
    return int(m.group(1))


def _server(h, status, name="server", wait_ready=True):
    """An upseal-server with one tunnel and `status` set."""
    sid = h.identity(name)
    ini = h.write_ini(name, {"app": {
        "listen": "127.0.0.1:0", "connect": "127.0.0.1:9",
        "cert": sid.crt, "key": sid.key, "pin": [sid.pin]}},
        {"status": status})
    return h.start("upseal-server", ini, name=name, wait_ready=wait_ready)


@timeout(60)
def test_status_idle_clients_do_not_block_healthz(h):
    """CLIENTS_MAX idle connections hold every slot: a GET /healthz is
    still answered at once (the oldest idle one gives up its slot), and
    the idle ones are closed by the 2 s head deadline, not the 5 s one."""
    nmax = _status_const("CLIENTS_MAX")
    head_s = _status_const("HEAD_TIMEOUT_MS") / 1000.0
    check(head_s < _status_const("CLIENT_TIMEOUT_MS") / 1000.0,
          "the head deadline must be shorter than the response one")
    p = _server(h, "127.0.0.1:0")
    addr = p.events("status_listening")[-1]["addr"]
    check_eq(healthz(addr), (200, "ok\n"), "/healthz before")

    idle = []

    def hold():
        s = h.connect(addr)
        if len(idle) % 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")   # a head never finished
        idle.append((s, time.monotonic()))

    for _ in range(nmax):
        hold()
    # The kernel hands connections over in order: by the time the probe
    # is accepted, the idle ones hold every slot.
    nprobes = 3
    for i in range(nprobes):
        if i > 0:
            hold()   # the slot the last probe freed is taken again
        t0 = time.monotonic()
        got = healthz(addr)
        took = time.monotonic() - t0
        check_eq(got, (200, "ok\n"), "/healthz %d with %d idle connections "
                 "open" % (i + 1, nmax))
        check(took < min(1.0, head_s / 2), "/healthz %d took %.2fs with the "
              "table full: it waited for a slot" % (i + 1, took))

    # One idle connection (the oldest) made room for each probe.
    for i, (s, _) in enumerate(idle[:nprobes]):
        how, _, n = wait_closed(s, 1.0)
        check(how in ("eof", "reset") and n == 0,
              "oldest idle connection %d: %s with %d bytes, want closed to "
              "make room" % (i, how, n))
    # The rest stay until the head deadline, then go, well before the
    # 5 s the whole exchange may take.
    for i, (s, t_open) in enumerate(idle[nprobes:], nprobes):
        how, _, n = wait_closed(s, head_s + scaled(1.5, 2.5))
        age = time.monotonic() - t_open
        check(how in ("eof", "reset") and n == 0,
              "idle connection %d: %s after %.2fs (%d bytes), want closed "
              "by the %.1fs head deadline" % (i, how, age, n, head_s))
        check(age >= head_s - 0.3, "idle connection %d closed after %.2fs, "
              "before the %.1fs head deadline" % (i, age, head_s))
    check_eq(healthz(addr), (200, "ok\n"), "/healthz after")


@timeout(60)
def test_status_unix_path_in_use(h):
    """status = unix:PATH where another process accepts: the server refuses
    to start and leaves that socket working; a file that is not a socket is
    refused too; a stale socket (nobody accepts) is replaced."""
    path = h.path("status.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    other.listen(8)
    try:
        p = _server(h, "unix:" + path, "in-use", wait_ready=False)
        p.expect_exit = 1
        check_eq(p.wait(scaled(10, 30)), 1, "exit with the path in use")
        log = p.log()
        check("status unix:%s: another process is listening there" % path
              in log, "the error must name the path and why:\n%s" % log)
        check("event=ready" not in log, "it got ready anyway:\n%s" % log)
        # The other process's socket still works.
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(path)
        other.settimeout(5)
        a, _ = other.accept()
        c.sendall(b"still mine")
        # First in the backlog: the connection the daemon tried (closed).
        got = []
        for _ in range(3):
            a, _ = other.accept()
            a.settimeout(5)
            got.append(a.recv(64))
            a.close()
            if got[-1]:
                break
        check_eq(got[-1], b"still mine", "the other listener's socket "
                 "(accepted %r)" % got)
        c.close()
    finally:
        other.close()   # leaves a stale socket file behind

    # Stale: nobody accepts there any more, so it is replaced.
    check(os.path.exists(path), "the stale socket file is gone already")
    p = _server(h, "unix:" + path, "stale")
    check_eq(healthz("unix:" + path), (200, "ok\n"), "/healthz on the "
             "replaced stale socket")
    p.stop()

    plain = h.path("status.txt")
    with open(plain, "w") as f:
        f.write("not a socket\n")
    p = _server(h, "unix:" + plain, "not-socket", wait_ready=False)
    p.expect_exit = 1
    check_eq(p.wait(scaled(10, 30)), 1, "exit with a regular file there")
    check("status unix:%s: the path exists and is not a socket" % plain
          in p.log(), "the error must say why:\n%s" % p.log())
    with open(plain) as f:
        check_eq(f.read(), "not a socket\n", "the file was left alone")


@timeout(60)
def test_tunnel_unix_listen_in_use(h):
    """The same check guards a tunnel's `listen = unix:PATH` (one function
    serves both): a live listener there stops the start, untouched."""
    path = h.path("app.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    other.listen(8)
    try:
        sid = h.identity("srv")
        ini = h.write_ini("in-use", {"app": {
            "listen": "unix:" + path, "connect": "127.0.0.1:9",
            "cert": sid.crt, "key": sid.key, "pin": [sid.pin]}})
        p = h.start("upseal-server", ini, name="in-use", wait_ready=False)
        p.expect_exit = 1
        check_eq(p.wait(scaled(10, 30)), 1, "exit with the path in use")
        check("[app] listen unix:%s: another process is listening there"
              % path in p.log(), "the error must name the tunnel, the path "
              "and why:\n%s" % p.log())
        check(os.path.exists(path), "the other process's socket was removed")
    finally:
        other.close()
