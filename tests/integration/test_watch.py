"""Automatic reload: a sidecar watches its config and every file it names
(watch = yes, the default) and reloads, as SIGHUP does, once a burst of
changes has been quiet for 300 ms; reload_interval polls the contents.

Kubernetes-style rotation without a cluster (a directory laid out as the
kubelet lays out a mounted Secret, swapped atomically while a client
streams), an editor's rename-on-save, a `cp` over the file, a half-written
file, a burst of 100 changes, `watch = no`, `reload_interval` against
`touch`, and a change-less event that logs nothing at info."""

import os
import shutil
import socket
import threading
import time

from harness import check, check_eq, recv_exact, scaled, timeout

QUIET_S = 0.3          # WATCH_QUIET_MS
# A window in which nothing may happen: a few quiet periods, kept short.
NOTHING_S = scaled(1.0, 2.0)
LEVELS_ABOVE_DEBUG = ("info", "warn", "error")
# Where a test checks which certificate the next connection gets: one
# worker, so that `reloaded` means every listener has the new settings
# (other workers apply a reload a moment later, through their mailbox).
ONE_WORKER = {"workers": "1"}


# --- helpers --------------------------------------------------------------

def short(pin):
    """The peer_pin form of a pin (conn_end lines): sha256// + 12."""
    return pin[:len("sha256//") + 12]


def replace_text(path, text):
    """An editor's save: write a temporary file, rename it over path."""
    tmp = path + ".tmp~"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class KubeDir:
    """A directory as the kubelet lays out a mounted Secret: `..data` is a
    symlink to a timestamped directory holding the files, and each file
    is a symlink `NAME -> ..data/NAME`. swap() is the kubelet's atomic
    update: a new timestamped directory, a `..data_tmp` symlink to it
    renamed over `..data`, the old directory removed."""

    def __init__(self, h, name, files):
        self.root = h.path(name)
        os.mkdir(self.root)
        self.n = 0
        self.ts = self._write(files)
        os.symlink(self.ts, os.path.join(self.root, "..data"))
        for f in files:
            os.symlink(os.path.join("..data", f), os.path.join(self.root, f))

    def _write(self, files):
        self.n += 1
        ts = "..2024_06_01_00_00_%02d.%d" % (self.n, 1000 + self.n)
        d = os.path.join(self.root, ts)
        os.mkdir(d, 0o755)
        for f, data in files.items():
            p = os.path.join(d, f)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        return ts

    def path(self, f):
        return os.path.join(self.root, f)

    def swap(self, files):
        old = self.ts
        self.ts = self._write(files)
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(self.ts, tmp)
        os.rename(tmp, os.path.join(self.root, "..data"))
        shutil.rmtree(os.path.join(self.root, old))


class EchoStream:
    """One connection through the tunnel to an echo backend, kept busy by
    a thread: 16 KiB chunks out, each echo read back and compared, until
    stop(). Any error or mismatch is kept in `error`."""

    def __init__(self, h, addr):
        self.s = h.connect(addr, timeout=scaled(20, 60))
        self.stopping = threading.Event()
        self.error = None
        self.chunks = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        i = 0
        deadline = time.monotonic() + scaled(120, 300)
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                data = (b"%08d" % i) * 2048
                self.s.sendall(data)
                got = recv_exact(self.s, len(data), scaled(20, 60))
                if got != data:
                    self.error = "chunk %d came back altered" % i
                    return
                i += 1
                self.chunks = i
        except Exception as e:
            self.error = "chunk %d: %r" % (i, e)

    def wait_chunks(self, n, timeout_s):
        deadline = time.monotonic() + timeout_s
        while self.chunks < n and self.error is None and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        check(self.error is None, "stream: %s" % self.error)
        check(self.chunks >= n, "stream: %d chunks after %.0fs, want %d"
              % (self.chunks, timeout_s, n))

    def stop(self):
        self.stopping.set()
        self.t.join(scaled(30, 90))
        check(not self.t.is_alive(), "stream thread still running")
        check(self.error is None, "stream: %s" % self.error)
        self.s.shutdown(socket.SHUT_WR)
        rest = self.s.recv(1)
        check_eq(rest, b"", "stream: EOF after its last echo")
        self.s.close()


def count(p, event, **fields):
    return len(p.events(event, **fields))


def wait_reload(p, n_before, trigger="file", timeout_s=None):
    """Wait for the next reloaded line (after n_before); check its trigger
    and that no reload failed meanwhile."""
    failed = count(p, "reload_failed")
    d = p.wait_event("reloaded", timeout_s or scaled(10, 30),
                     count=n_before + 1)
    check_eq(d.get("trigger"), trigger, "reloaded trigger")
    check_eq(count(p, "reload_failed"), failed, "reload_failed lines")
    return d


def nothing_happens(p, what, seconds=NOTHING_S):
    """Prove that p logs no reload within a short, bounded window."""
    n = count(p, "reloaded") + count(p, "reload_failed")
    time.sleep(seconds)
    check_eq(count(p, "reloaded") + count(p, "reload_failed"), n,
             "reload lines within %.1fs of %s" % (seconds, what))


def echo_once(h, addr, data=b"ping\n"):
    s = h.echo_roundtrip(addr, data, scaled(10, 30))
    s.shutdown(socket.SHUT_WR)
    check_eq(s.recv(1), b"", "EOF after the echo")
    s.close()


def pair(h, be, server_files=None, client_pins=None, server_up=None,
         client_up=None, sid=None):
    """Server (cert/key given, or those of sid, or a fresh identity) and a
    client pinning client_pins (or the server's pin). Returns (cli, srv,
    sid, cid)."""
    sid = sid or h.identity("srv")
    cid = h.identity("cli")
    crt, key = server_files or (sid.crt, sid.key)
    srv = h.start_server({"app": {"connect": be.addr, "cert": crt,
                                  "key": key, "pin": [cid.pin]}},
                         server_up, name="server")
    cli = h.start_client({"app": {"connect": srv.addr("app"),
                                  "cert": cid.crt, "key": cid.key,
                                  "pin": client_pins or [sid.pin]}},
                         client_up, name="client")
    return cli, srv, sid, cid


def client_pins_seen(cli, since):
    """The server pins (short) on the client's conn_end lines after the
    first `since`."""
    return [e.get("peer_pin") for e in cli.events("conn_end")[since:]]


# --- tests ----------------------------------------------------------------

@timeout(90)
def test_kubelet_swap_while_streaming(h):
    """The server's identity lives in a kubelet-style Secret directory.
    The kubelet's swap (new timestamped dir, `..data` renamed over) while
    a client streams: the stream is untouched, the next connections
    present the new certificate, and no connection fails (the client pins
    the old and the new key)."""
    be = h.echo_backend()
    old = h.identity("srv-old")
    new = h.identity("srv-new")
    kd = KubeDir(h, "secret", {"tls.crt": read(old.crt),
                               "tls.key": read(old.key)})
    cli, srv, _, _ = pair(h, be, (kd.path("tls.crt"), kd.path("tls.key")),
                          client_pins=[old.pin, new.pin], server_up=ONE_WORKER)
    addr = cli.addr("app")
    echo_once(h, addr)
    cli.wait_event("conn_end", scaled(10, 30), count=1)
    check_eq(client_pins_seen(cli, 0), [short(old.pin)], "pin before")

    stream = EchoStream(h, addr)
    stream.wait_chunks(20, scaled(20, 60))
    n = count(srv, "reloaded")
    kd.swap({"tls.crt": read(new.crt), "tls.key": read(new.key)})
    d = wait_reload(srv, n)
    check(d.get("changed", "").endswith("/..data") or
          "tls." in d.get("changed", ""),
          "changed=%r names the swap" % d.get("changed"))
    at = stream.chunks
    stream.wait_chunks(at + 20, scaled(20, 60))

    ends = count(cli, "conn_end")
    for i in range(5):
        echo_once(h, addr, b"after %d\n" % i)
    cli.wait_event("conn_end", scaled(10, 30), count=ends + 5)
    check_eq(client_pins_seen(cli, ends), [short(new.pin)] * 5,
             "pins the client saw after the swap")
    stream.stop()
    cli.wait_event("conn_end", scaled(10, 30), count=ends + 6)
    reasons = [e.get("reason") for e in cli.events("conn_end")]
    check_eq(reasons, ["closed"] * len(reasons), "client conn_end reasons")
    check_eq(srv.refusals() + cli.refusals(), [], "refused handshakes")
    check_eq(count(srv, "reloaded"), n + 1, "one reload for one swap")
    h.note("stream: %d chunks; %s" % (stream.chunks, d))


@timeout(60)
def test_editor_rename_of_the_config(h):
    """An editor saves by writing a temporary file and renaming it over the
    config: one reload, naming the file; what it changed applies."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be)
    n = count(cli, "reloaded")
    text = open(cli.argv[-1]).read()
    extra = "\n[extra]\nlisten = 127.0.0.1:0\nconnect = %s\ncert = %s\n" \
            "key = %s\npin = %s\n" % (srv.addr("app"), cid.crt, cid.key,
                                      sid.pin)
    replace_text(cli.argv[-1], text + extra)
    d = wait_reload(cli, n)
    check_eq(d.get("changed"), os.path.realpath(cli.argv[-1]), "changed")
    check_eq((d.get("tunnels"), d.get("kept"), d.get("added")),
             ("2", "1", "1"), "reload counts")
    extra_addr = cli.wait_event("listening", 5, tunnel="extra")["addr"]
    echo_once(h, extra_addr)
    nothing_happens(cli, "the rename")


@timeout(60)
def test_cp_over_the_certificate(h):
    """`cp` over the key and the certificate, in place: one reload (the two
    copies fall in one quiet period), and the next connections present
    the new certificate."""
    be = h.echo_backend()
    sid = h.identity("srv")
    new = h.identity("srv-new")
    crt, key = h.path("live.crt"), h.path("live.key")
    shutil.copyfile(sid.crt, crt)
    shutil.copyfile(sid.key, key)
    os.chmod(key, 0o600)
    cli, srv, _, _ = pair(h, be, (crt, key), client_pins=[sid.pin, new.pin],
                          sid=sid, server_up=ONE_WORKER)
    echo_once(h, cli.addr("app"))
    n = count(srv, "reloaded")
    for src, dst in ((new.key, key), (new.crt, crt)):
        r = h.run(["cp", src, dst])
        check_eq(r.returncode, 0, "cp %s %s: %s" % (src, dst, r.err))
    wait_reload(srv, n)
    ends = count(cli, "conn_end")
    echo_once(h, cli.addr("app"), b"after\n")
    cli.wait_event("conn_end", scaled(10, 30), count=ends + 1)
    check_eq(client_pins_seen(cli, ends), [short(new.pin)], "pin after cp")
    nothing_happens(srv, "the copies")
    check_eq(count(srv, "reloaded"), n + 1, "reloads for two copies")


@timeout(60)
def test_half_written_then_complete(h):
    """A config written in two steps: the first half is one reload_failed
    (the running configuration serves on), the complete file is a
    successful reload."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be)
    ini = cli.argv[-1]
    text = open(ini).read()
    cut = text.index("\nkey = ")
    n_ok, n_failed = count(cli, "reloaded"), count(cli, "reload_failed")
    with open(ini, "w") as f:
        f.write(text[:cut + 1].replace("connect_timeout = 3s",
                                       "connect_timeout = 4s"))
    d = cli.wait_event("reload_failed", scaled(10, 30), count=n_failed + 1)
    check_eq(d.get("trigger"), "file", "reload_failed trigger")
    check("key" in d.get("error", ""), "error names the missing key: %r"
          % d.get("error"))
    check_eq(count(cli, "reloaded"), n_ok, "reloaded lines")
    echo_once(h, cli.addr("app"), b"served while broken\n")
    with open(ini, "w") as f:
        f.write(text.replace("connect_timeout = 3s", "connect_timeout = 4s"))
    wait_reload(cli, n_ok)
    echo_once(h, cli.addr("app"), b"served after\n")
    check_eq(count(cli, "reload_failed"), n_failed + 1, "reload_failed lines")


@timeout(60)
def test_burst_of_changes_is_coalesced(h):
    """100 saves of the config within about a second: one or two reloads,
    and the last save is what runs."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be)
    ini = cli.argv[-1]
    text = open(ini).read()
    n = count(cli, "reloaded")
    last = text + ("\n[extra]\nlisten = 127.0.0.1:0\nconnect = %s\n"
                   "cert = %s\nkey = %s\npin = %s\n"
                   % (srv.addr("app"), cid.crt, cid.key, sid.pin))
    t0 = time.monotonic()
    for i in range(99):
        replace_text(ini, text + "; save %d\n" % i)
        time.sleep(0.01)
    replace_text(ini, last)
    spent = time.monotonic() - t0
    cli.wait_event("listening", scaled(10, 30), tunnel="extra")
    nothing_happens(cli, "the burst")
    reloads = count(cli, "reloaded") - n
    h.note("100 saves in %.2fs: %d reload(s)" % (spent, reloads))
    check(1 <= reloads <= 2, "%d reloads for a burst of 100 saves in %.2fs"
          % (reloads, spent))
    check_eq(count(cli, "reload_failed"), 0, "reload_failed lines")


@timeout(60)
def test_watch_no_does_not_reload(h):
    """watch = no: a changed config is not reloaded by itself; SIGHUP still
    reloads it."""
    be = h.echo_backend()
    cli, srv, _, _ = pair(h, be, client_up={"watch": "no"})
    ini = cli.argv[-1]
    n = count(cli, "reloaded")
    replace_text(ini, open(ini).read().replace("connect_timeout = 3s",
                                               "connect_timeout = 4s"))
    nothing_happens(cli, "a change with watch = no")
    import signal
    cli.signal(signal.SIGHUP)
    wait_reload(cli, n, trigger="signal")


@timeout(60)
def test_reload_interval_reloads_on_content_not_mtime(h):
    """watch = no, reload_interval = 200ms: touching every file (new
    times, same bytes) reloads nothing; a changed content reloads at the
    next tick."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be, client_up={
        "watch": "no", "reload_interval": "200ms", "log_level": "debug"})
    ini = cli.argv[-1]
    # The timer runs: it looks, finds nothing new, says so at debug.
    cli.wait_event("reload_unchanged", scaled(5, 15), trigger="interval")
    n = count(cli, "reloaded")
    ticks = count(cli, "reload_unchanged")
    future = time.time() + 60
    for p in (ini, cid.crt, cid.key):
        os.utime(p, (future, future))
    cli.wait_event("reload_unchanged", scaled(5, 15), count=ticks + 3)
    check_eq(count(cli, "reloaded"), n, "reloads after touch")
    with open(ini, "a") as f:
        f.write("; a comment is a change of content\n")
    wait_reload(cli, n, trigger="interval")


@timeout(60)
def test_event_without_change_logs_nothing_at_info(h):
    """A watched file rewritten with the same bytes, and touched: the
    watch looks (event=reload_unchanged, at debug) and nothing is logged
    at info or above; connections go on."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be, client_up={"log_level": "debug"})
    echo_once(h, cli.addr("app"))
    cli.wait_event("conn_end", scaled(10, 30), count=1)
    mark = len(cli.lines())
    n = count(cli, "reload_unchanged")
    data = read(cid.crt)
    with open(cid.crt, "wb") as f:
        f.write(data)
    os.utime(cli.argv[-1])
    cli.wait_event("reload_unchanged", scaled(10, 30), count=n + 1,
                   trigger="file")
    time.sleep(QUIET_S * 2)   # a second event would be coalesced by now
    louder = [ln for ln in cli.lines()[mark:]
              if any(("level=%s " % lv) in ln for lv in LEVELS_ABOVE_DEBUG)]
    check_eq(louder, [], "lines at info or above after a change-less event")
    echo_once(h, cli.addr("app"), b"still\n")


@timeout(60)
def test_unwatchable_directory_is_a_warning(h):
    """A directory that cannot be watched (here: no read permission, which
    inotify needs, while the files in it stay reachable by path) is one
    warning naming it; the sidecar starts, serves, and SIGHUP reloads."""
    if os.geteuid() == 0:
        h.skip("root reads any directory: nothing to refuse the watch")
    be = h.echo_backend()
    sid = h.identity("srv")
    hidden = h.path("hidden")
    os.mkdir(hidden)
    crt, key = os.path.join(hidden, "srv.crt"), os.path.join(hidden, "srv.key")
    shutil.copyfile(sid.crt, crt)
    shutil.copyfile(sid.key, key)
    os.chmod(key, 0o600)
    os.chmod(hidden, 0o311)
    h.cleanups.append(lambda: os.chmod(hidden, 0o755))
    cli, srv, _, _ = pair(h, be, (crt, key), sid=sid)
    w = srv.wait_event("watch_failed", 5, path=os.path.realpath(hidden))
    check("denied" in w.get("error", "").lower(), "error=%r" % w.get("error"))
    check_eq(len(srv.events("watch_failed")), 1, "watch_failed lines")
    echo_once(h, cli.addr("app"))
    import signal
    n = count(srv, "reloaded")
    srv.signal(signal.SIGHUP)
    wait_reload(srv, n, trigger="signal")
    check_eq(len(srv.events("watch_failed")), 1, "watch_failed lines after "
             "a reload (warned once)")
    echo_once(h, cli.addr("app"), b"after\n")


@timeout(60)
def test_missing_directory_is_a_warning_then_watched(h):
    """A config saved with the key and certificate in a directory that
    does not exist yet: the reload fails, the directory cannot be watched
    (one warning naming it), the sidecar serves on. Once the directory is
    there, SIGHUP reloads and watches it: a change in it reloads by
    itself."""
    be = h.echo_backend()
    cli, srv, sid, cid = pair(h, be, client_up={"log_level": "debug"})
    ini = cli.argv[-1]
    text = open(ini).read()
    later = h.path("later")
    crt, key = os.path.join(later, "cli.crt"), os.path.join(later, "cli.key")
    n_failed = count(cli, "reload_failed")
    replace_text(ini, text.replace(cid.crt, crt).replace(cid.key, key))
    d = cli.wait_event("reload_failed", scaled(10, 30), count=n_failed + 1)
    check_eq(d.get("trigger"), "file", "reload_failed trigger")
    w = cli.wait_event("watch_failed", 5, path=later)
    check("no such file" in w.get("error", "").lower(),
          "error=%r" % w.get("error"))
    echo_once(h, cli.addr("app"), b"served on\n")
    os.mkdir(later)
    shutil.copyfile(cid.crt, crt)
    shutil.copyfile(cid.key, key)
    os.chmod(key, 0o600)
    import signal
    n = count(cli, "reloaded")
    cli.signal(signal.SIGHUP)
    wait_reload(cli, n, trigger="signal")
    cli.wait_event("watching", 5, dir=os.path.realpath(later))
    check_eq(len(cli.events("watch_failed")), 1, "watch_failed lines")
    # Watched now: a new identity copied in reloads by itself.
    new = h.identity("cli-new")
    for src, dst in ((new.key, key), (new.crt, crt)):
        r = h.run(["cp", src, dst])
        check_eq(r.returncode, 0, "cp %s %s: %s" % (src, dst, r.err))
    d = wait_reload(cli, n + 1)
    check(d.get("changed", "").startswith(os.path.realpath(later) + "/"),
          "changed=%r" % d.get("changed"))


# --- pin files and CRLs are watched too (cfg_files) -----------------------

def _fleet():
    import test_fleet
    return test_fleet


@timeout(60)
def test_pin_file_change_reloads(h):
    """A pin added to a pin_file (editor-style save) is picked up without
    a signal: the client it names, refused before, gets in after one
    reload with trigger=file naming the pin file."""
    f = _fleet()
    be = h.echo_backend()
    sid, a, b = h.identity("srv"), h.identity("a"), h.identity("b")
    pf = h.path("clients.pins")
    replace_text(pf, "# the proxies\n%s\n" % a.pin)
    srv = f._server(h, be, sid, upseal=ONE_WORKER, pin_file=pf)
    cli = f._client(h, srv, [a, b])
    f.close_echo(f.roundtrip(h, cli.addr("a"), b"a is pinned\n"))
    f._refused(h, cli, "b", srv, "pin_mismatch")
    n = count(srv.p, "reloaded")
    replace_text(pf, "# the proxies\n%s\n%s\n" % (a.pin, b.pin))
    d = wait_reload(srv.p, n)
    check(d.get("changed", "").endswith("clients.pins"),
          "reloaded changed=%r, want the pin file" % d.get("changed"))
    f.close_echo(f.roundtrip(h, cli.addr("b"), b"b is pinned now\n"))


@timeout(90)
def test_crl_rewritten_by_upseal_certs_reloads(h):
    """upseal-certs revoke rewrites the CRL a server tunnel names: the
    server reloads by itself and refuses the revoked client's next
    connection, resumed (its ticket survives the reload through
    ticket_key_file) and full; the other client is unaffected."""
    f = _fleet()
    be = h.echo_backend()
    ca = h.ca("ca")
    sid = h.identity("srv", ca=ca)
    a, b = h.identity("a", ca=ca), h.identity("b", ca=ca)
    crl = f._certs(h, "revoke", "--ca", ca).out.strip()
    tk = h.path("tickets.key")
    with open(tk, "wb") as fh:
        fh.write(os.urandom(48))
    os.chmod(tk, 0o600)
    srv = f._server(h, be, sid, upseal=dict(ONE_WORKER, log_level="debug"),
                    ca=ca + ".crt", crl=crl, ticket_key_file=tk)
    cli = f._client(h, srv, [a, b])
    for i in range(2):   # the second one resumes
        f.close_echo(f.roundtrip(h, cli.addr("a"), b"a before %d\n" % i))
    n = count(srv.p, "reloaded")
    f._certs(h, "revoke", "--ca", ca, a.crt)
    wait_reload(srv.p, n)
    f._refused(h, cli, "a", srv, "revoked")
    if not f.tls13(h):
        t = srv.p.wait_event("ticket_refused", 10)
        check_eq(t.get("reason"), "revoked", "ticket_refused reason")
    f._refused(h, cli, "a", srv, "revoked", count=2)
    f.close_echo(f.roundtrip(h, cli.addr("b"), b"b is not revoked\n"))
