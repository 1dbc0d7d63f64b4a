"""workers = N: event-loop threads, each with its own listening socket
(SO_REUSEPORT), sharing the TLS settings, the counters and the limits."""

import os
import signal
import socket
import subprocess
import threading
import time

from harness import (check, check_eq, recv_exact, scaled, timeout,
                     wait_closed)

W2 = {"workers": "2"}


def _threads(proc):
    """{thread name: CPU ticks} of a daemon, from /proc."""
    out = {}
    base = "/proc/%d/task" % proc.pid
    for tid in os.listdir(base):
        try:
            with open("%s/%s/comm" % (base, tid)) as f:
                name = f.read().strip()
            with open("%s/%s/stat" % (base, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return out


def _parallel_echoes(h, addr, n, width=8):
    """n echo round trips, width at a time; returns the failures."""
    errors = []
    lock = threading.Lock()
    todo = list(range(n))

    def run():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            try:
                msg = b"echo %d\n" % i
                s = h.echo_roundtrip(addr, msg)
                s.close()
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append("%d: %r" % (i, e))
    ts = [threading.Thread(target=run) for _ in range(width)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(scaled(60, 180))
    return errors


def _workers_of(proc, n):
    proc.wait_event("conn_end", scaled(10, 30), n)
    return sorted({e.get("worker") for e in proc.events("conn_end")})


@timeout(90)
def test_connections_spread_over_workers(h):
    """Two workers on each side: both accept (the kernel spreads
    connections over the two SO_REUSEPORT sockets), both run handshakes,
    and every echo comes back."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal=W2,
                         server_opts={"resumption": "no"})
    for p in (cli, srv):
        check_eq(p.events("ready")[0].get("workers"), "2",
                 "%s: workers in the ready line" % p.name)
        names = _threads(p)
        check("worker-1" in names, "%s: no thread named worker-1 in %s"
              % (p.name, sorted(names)))
    errors = _parallel_echoes(h, cli.addr("app"), 64)
    check_eq(errors, [], "echo failures")
    for p in (cli, srv):
        check_eq(_workers_of(p, 64), ["0", "1"],
                 "%s: workers that ended connections" % p.name)
    # Full handshakes cost ~5 ms each: the second thread did real work.
    ticks = _threads(srv)
    check(ticks.get("worker-1", 0) > 0, "server worker-1 used no CPU: %r"
          % ticks)
    h.note("server CPU ticks per thread: %r" % ticks)


@timeout(60)
def test_one_worker(h):
    """workers = 1 runs everything on the main thread, as before."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal={"workers": "1"})
    check_eq(_parallel_echoes(h, cli.addr("app"), 16), [], "echo failures")
    for p in (cli, srv):
        check("worker-1" not in _threads(p), "%s: a worker thread with "
              "workers = 1" % p.name)
        check_eq(_workers_of(p, 16), ["0"], "%s: workers" % p.name)


@timeout(60)
def test_max_connections_counts_every_worker(h):
    """max_connections limits the tunnel, not each worker: with two
    workers and a limit of 2, the third connection waits whichever worker
    it reached, and goes through when one of the first two ends."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal=W2,
                         client_opts={"max_connections": "2"})
    held = [h.echo_roundtrip(cli.addr("app"), b"one\n"),
            h.echo_roundtrip(cli.addr("app"), b"two\n")]
    waiting = []
    for i in range(4):
        s = h.connect(cli.addr("app"))
        s.sendall(b"more %d\n" % i)
        waiting.append(s)
    deadline = time.monotonic() + 1.0
    for s in waiting:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            early = s.recv(100)
        except socket.timeout:
            early = None
        check(early is None, "a connection beyond max_connections = 2 was "
              "served (%r) with two open" % early)
    check_eq(be.accepted, 2, "backend connections at the cap")
    # Free the slots one at a time: each lets exactly one more in.
    served = 0
    for k in range(4):
        held.pop(0).close() if held else None
        got = None
        deadline = time.monotonic() + scaled(10, 20)
        while got is None and time.monotonic() < deadline:
            for s in list(waiting):
                s.settimeout(0.05)
                try:
                    data = s.recv(100)
                except socket.timeout:
                    continue
                waiting.remove(s)
                got = s
                held.append(s)
                check(data.startswith(b"more "), "odd echo %r" % data)
                break
        check(got is not None, "no waiting connection was let in after "
              "a slot was freed (round %d)" % k)
        served += 1
    check_eq(served, 4, "waiting connections served")
    check_eq(be.accepted, 6, "backend connections")


@timeout(60)
def test_reuseport_does_not_share_a_taken_port(h):
    """SO_REUSEPORT would let a second process of the same user join a
    port the first listens on; upseal checks first and refuses."""
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr, upseal=W2)
    taken = srv.addr("app")
    sid, cid = ids["server"], ids["client"]
    for workers in ("2", "1"):
        ini = h.write_ini("second-%s" % workers, {"app": {
            "listen": taken, "connect": be.addr, "cert": sid.crt,
            "key": sid.key, "pin": cid.pin}}, {"workers": workers})
        r = subprocess.run([h.bin("upseal-server"), "-c", ini],
                           capture_output=True, text=True,
                           timeout=scaled(10, 30))
        check_eq(r.returncode, 1, "second server (workers = %s) exit "
                 "status" % workers)
        check("address already in use" in r.stderr.lower(),
              "second server's error does not say the address is taken: %r"
              % r.stderr[-300:])
    # The first one still serves, on both workers.
    check_eq(_parallel_echoes(h, cli.addr("app"), 16), [], "echo failures")


@timeout(90)
def test_reload_reaches_every_worker(h):
    """A reload adds a tunnel on port 0 (every worker must listen on the
    one port the first bind chose), removes another, and a change of
    workers is refused with a warning until restart."""
    be = h.echo_backend()
    sid, cid = h.identity("srv"), h.identity("cli")
    srv_t = {"connect": be.addr, "cert": sid.crt, "key": sid.key,
             "pin": cid.pin, "listen": "127.0.0.1:0"}
    # Elsewhere than the new one: a section listening at the same address
    # would take the running listener over instead.
    ini = h.write_ini("server", {"old": dict(srv_t, listen="127.0.0.2:0")},
                      W2)
    srv = h.start("upseal-server", ini, name="server")
    ini = h.write_ini("server", {"new": dict(srv_t)}, {"workers": "1"})
    srv.signal(signal.SIGHUP)
    srv.wait_event("reloaded", scaled(10, 30))
    warn = srv.wait_event("workers_unchanged", scaled(5, 15))
    check_eq((warn.get("running"), warn.get("configured")),
             ("2", "1"), "workers_unchanged fields")
    new_addr = srv.events("listening", tunnel="new")[-1]["addr"]
    cli = h.start_client({"new": {"connect": new_addr, "cert": cid.crt,
                                  "key": cid.key, "pin": sid.pin}},
                         name="client")
    check_eq(_parallel_echoes(h, cli.addr("new"), 48), [], "echo failures")
    check_eq(_workers_of(srv, 48), ["0", "1"],
             "server workers serving the reloaded tunnel")
    # The removed tunnel's port is closed on every worker.
    old_addr = srv.events("listening", tunnel="old")[0]["addr"]
    host, port = old_addr.rsplit(":", 1)
    for _ in range(8):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, int(port)))
            refused = False
        except ConnectionRefusedError:
            refused = True
        finally:
            s.close()
        check(refused, "the removed tunnel still accepts on %s" % old_addr)


@timeout(60)
def test_drain_covers_every_worker(h):
    """SIGTERM: every worker stops accepting and lets its connections
    finish; at drain_timeout the ones left are ended on every worker."""
    h.drain_s = 2
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal=W2)
    socks = []
    for i in range(24):
        socks.append(h.echo_roundtrip(cli.addr("app"), b"keep %d\n" % i))
    check_eq(be.accepted, 24, "backend connections")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait_event("stopping", scaled(5, 15))
    # Still carrying data while draining, on whichever worker.
    for i, s in enumerate(socks[:4]):
        s.sendall(b"late %d\n" % i)
        check_eq(recv_exact(s, len(b"late %d\n" % i), 5),
                 b"late %d\n" % i, "echo while draining")
    rc = srv.wait(scaled(10, 30))
    took = time.monotonic() - t0
    check_eq(rc, 0, "server exit status")
    check(took >= 1.5, "server exited %.1fs after SIGTERM, before its "
          "drain_timeout of 2s" % took)
    drained = srv.events("conn_end", reason="drain")
    check_eq(len(drained), 24, "connections ended by the drain timeout")
    check_eq(sorted({e["worker"] for e in drained}), ["0", "1"],
             "workers whose connections were drained")
    for s in socks:
        how, _, _ = wait_closed(s, 5)
        check(how != "open", "a connection outlived the server")


@timeout(60)
def test_unix_listener_shared_by_workers(h):
    """A unix socket is one socket polled by every worker."""
    be = h.echo_backend()
    path = h.path("app.sock")
    cli, srv, _ = h.pair(be.addr, upseal=W2,
                         client_opts={"listen": "unix:" + path})
    check_eq(_parallel_echoes(h, "unix:" + path, 32), [], "echo failures")
    cli.stop()
    check(not os.path.exists(path), "the unix socket file outlived the "
          "client")
