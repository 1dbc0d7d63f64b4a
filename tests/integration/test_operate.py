"""Operating upseal: SIGHUP reload (under load, key rotation, broken files,
tunnels added, removed and moved), SIGTERM drain under load, the status
endpoint (/metrics checked against what the test did, /healthz), both log
formats parsed strictly for every event kind, and `user =`."""

import hashlib
import json
import os
import re
import signal
import socket
import threading
import time

from harness import (Source, check, check_eq, free_port, recv_all,
                     recv_exact, scaled, sockaddr, timeout, wait_closed)

MiB = 1024 * 1024


# --- one sidecar whose ini the test rewrites ------------------------------

class Side:
    """A sidecar started from an ini this test owns: change `tunnels` or
    `upseal`, then reload() rewrites the file and sends SIGHUP."""

    def __init__(self, h, role, name, tunnels, upseal=None):
        self.h = h
        self.role = role
        self.name = name
        self.tunnels = tunnels
        self.upseal = dict(upseal or {})
        self.ini = h.write_ini(name, tunnels, self.upseal)
        self.p = h.start("upseal-" + role, self.ini, name=name)

    def write(self, text=None):
        if text is None:
            self.h.write_ini(self.name, self.tunnels, self.upseal)
        else:
            with open(self.ini, "w") as f:
                f.write(text)

    def count(self, event):
        return len(self.p.events(event))

    def reload(self, ok=True, text=None, timeout_s=None):
        """Rewrite the ini (or write `text`), SIGHUP, wait for the verdict;
        returns the reloaded / reload_failed line."""
        timeout_s = timeout_s or scaled(10, 30)
        want, other = (("reloaded", "reload_failed") if ok else
                       ("reload_failed", "reloaded"))
        n, n_other = self.count(want), self.count(other)
        self.write(text)
        self.p.signal(signal.SIGHUP)
        d = self.p.wait_event(want, timeout_s, count=n + 1)
        check_eq(self.count(other), n_other, "%s: %s lines after SIGHUP "
                 "(wanted %s)" % (self.name, other, want))
        return d

    def addr(self, tunnel="app"):
        """The address tunnel listens on now (its last listening line)."""
        ls = self.p.events("listening", tunnel=tunnel)
        check(ls, "%s: no listening line for %s" % (self.name, tunnel))
        return ls[-1]["addr"]

    def status(self):
        d = self.p.events("status_listening")
        check(d, "%s: no status_listening line" % self.name)
        return d[-1]["addr"]


def start_pair(h, backend_addr, status=False, upseal=None, sid=None,
               cid=None, server_extra=None, client_extra=None):
    sid = sid or h.identity("srv")
    cid = cid or h.identity("cli")
    up = dict(upseal or {})
    sup, cup = dict(up), dict(up)
    if status:
        sup["status"] = cup["status"] = "127.0.0.1:0"
    st = {"app": dict({"listen": "127.0.0.1:0", "connect": backend_addr,
                       "cert": sid.crt, "key": sid.key, "pin": [cid.pin],
                       "handshake_timeout": "5s"}, **(server_extra or {}))}
    srv = Side(h, "server", "server", st, sup)
    ct = {"app": dict({"listen": "127.0.0.1:0", "connect": srv.addr(),
                       "cert": cid.crt, "key": cid.key, "pin": [sid.pin],
                       "connect_timeout": "3s", "handshake_timeout": "5s"},
                      **(client_extra or {}))}
    cli = Side(h, "client", "client", ct, cup)
    return cli, srv, sid, cid


def roundtrip(h, addr, data=b"ping\n", timeout_s=10.0):
    """A new connection that echoes data: returns the open socket."""
    return h.echo_roundtrip(addr, data, timeout_s)


def close_echo(s, timeout_s=10.0):
    """Half-close an echo connection and expect a clean EOF."""
    s.shutdown(socket.SHUT_WR)
    rest, how = recv_all(s, timeout_s)
    check_eq((rest, how), (b"", "eof"), "end of an echo connection")
    s.close()


def refused(addr, within=3.0):
    """True once a connect to addr is refused (bounded poll)."""
    fam, sa = sockaddr(addr)
    deadline = time.monotonic() + within
    while True:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(sa)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            pass
        finally:
            s.close()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def wait_conn_ends(side, n, timeout_s=None, **fields):
    side.p.wait_event("conn_end", timeout_s or scaled(15, 40), count=n,
                      **fields)
    return side.p.events("conn_end", **fields)


# --- throttled, checksummed streams --------------------------------------

class Stream:
    """One app connection through upseal-client to a SourceSinkBackend:
    sends `size` bytes at about `rate` bytes/s and reads what the backend
    sends at the same pace, hashing both ways."""

    def __init__(self, h, addr, size, seed, rate):
        self.s = h.connect(addr, timeout=scaled(60, 180))
        self.src = Source(size, seed=seed)
        self.rate = rate
        self.recv = 0
        self.sha = hashlib.sha256()
        self.error = None
        self.end = None
        self.finished = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        self.t.start()
        return self

    def _pace(self, done):
        ahead = self.t0 + done / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(min(ahead, 0.5))

    def _send(self):
        try:
            while not self.src.done():
                n = self.s.send(self.src.peek(64 * 1024))
                self.src.advance(n)
                self._pace(self.src.pos)
            self.s.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = "send: %r" % e

    def _run(self):
        snd = threading.Thread(target=self._send, daemon=True)
        snd.start()
        try:
            while True:
                d = self.s.recv(64 * 1024)
                if not d:
                    self.end = "eof"
                    break
                self.sha.update(d)
                self.recv += len(d)
                self._pace(self.recv)
        except ConnectionResetError:
            self.end = "reset"
        except OSError as e:
            self.error = "recv: %r" % e
        snd.join(scaled(120, 300))
        self.finished.set()

    def wait(self, timeout_s):
        check(self.finished.wait(timeout_s), "stream not finished after "
              "%.0fs (sent %d/%d, received %d)" % (timeout_s, self.src.pos,
                                                   self.src.total, self.recv))


def check_streams(streams, backend, size):
    """Every byte arrived, both ways, in order, with a clean end."""
    res = backend.wait_results(len(streams), scaled(30, 90))
    for i, st in enumerate(streams):
        check(st.error is None, "stream %d: %s" % (i, st.error))
        check_eq(st.end, "eof", "stream %d end" % i)
        check_eq(st.src.pos, size, "stream %d bytes sent" % i)
        check_eq(st.recv, size, "stream %d bytes received" % i)
    sent = sorted(st.src.sha.hexdigest() for st in streams)
    got = sorted(st.sha.hexdigest() for st in streams)
    check_eq(sorted(r["recv_sha"] for r in res), sent,
             "sha256 of what the backend received vs what the app sent")
    check_eq(sorted(r["sent_sha"] for r in res), got,
             "sha256 of what the app received vs what the backend sent")
    check(all(r["recv"] == size and r["sent"] == size and not r["send_error"]
              for r in res), "backend results %r" % res)


def wait_progress(streams, nbytes, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(st.recv >= nbytes and st.src.pos >= nbytes for st in streams):
            return
        time.sleep(0.01)
    check(False, "streams did not reach %d bytes each within %.0fs: %r"
          % (nbytes, timeout_s, [(st.src.pos, st.recv) for st in streams]))


# --- the status endpoint --------------------------------------------------

def http(addr, method="GET", path="/metrics", extra=b"", timeout_s=5.0):
    """One HTTP/1.1 request on a new connection; (status, headers, body)."""
    fam, sa = sockaddr(addr)
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_s)
        s.connect(sa)
        s.sendall(("%s %s HTTP/1.1\r\nHost: upseal\r\n" % (method, path))
                  .encode() + extra + b"\r\n")
        data, how = recv_all(s, timeout_s)
    finally:
        s.close()
    head, sep, body = data.partition(b"\r\n\r\n")
    check(sep, "%s %s: no complete response head (%s): %r"
          % (method, path, how, data[:200]))
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", lines[0])
    check(m, "%s %s: status line %r" % (method, path, lines[0]))
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if method != "HEAD":
        check_eq(int(hdrs.get("content-length", -1)), len(body),
                 "%s %s: Content-Length vs body" % (method, path))
    return int(m.group(1)), hdrs, body


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_VALUE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|"
                    r"[-+]?Inf|NaN")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Metrics:
    """A strictly parsed Prometheus text exposition (format 0.0.4)."""

    def __init__(self, text):
        self.text = text
        self.types = {}
        self.helps = {}
        self.samples = {}      # (name, ((k, v), ...)) -> float
        self.order = []
        check(text.endswith("\n"), "exposition does not end with a newline")
        done = set()           # families whose block has ended
        cur = None
        for no, line in enumerate(text[:-1].split("\n"), 1):
            where = "metrics line %d: %r" % (no, line)
            check(line.strip() != "" and line == line.strip(),
                  "%s: blank or padded line" % where)
            if line.startswith("#"):
                m = re.fullmatch(r"# (HELP|TYPE) (%s) (.+)" % _NAME, line)
                check(m, "%s: a comment that is not HELP or TYPE" % where)
                kind, name, rest = m.groups()
                fam = name
                if fam != cur:
                    check(fam not in done, "%s: family %s split in two"
                          % (where, fam))
                    if cur is not None:
                        done.add(cur)
                    cur = fam
                if kind == "TYPE":
                    check(rest in _TYPES, "%s: unknown type" % where)
                    check(name not in self.types, "%s: second TYPE" % where)
                    check(not any(k[0].startswith(name) and
                                  self.family(k[0]) == name
                                  for k in self.samples),
                          "%s: TYPE after samples" % where)
                    self.types[name] = rest
                else:
                    check(name not in self.helps, "%s: second HELP" % where)
                    self.helps[name] = rest
                continue
            m = re.fullmatch(r"(%s)(?:\{(.*)\})? (\S+)(?: (-?\d+))?" % _NAME,
                             line)
            check(m, "%s: not a sample line" % where)
            name, labels, value, _ = m.groups()
            lab = []
            if labels is not None:
                pos = 0
                while pos < len(labels):
                    lm = _LABEL.match(labels, pos)
                    check(lm, "%s: bad label set" % where)
                    lab.append((lm.group(1), lm.group(2)))
                    pos = lm.end()
                    if pos < len(labels):
                        check(labels[pos] == ",", "%s: bad label set" % where)
                        pos += 1
                check(len(set(k for k, _ in lab)) == len(lab),
                      "%s: repeated label" % where)
            check(_VALUE.fullmatch(value), "%s: bad value" % where)
            fam = self.family(name)
            check(fam is not None, "%s: sample of an undeclared family"
                  % where)
            check(fam == cur, "%s: sample outside its family's block" % where)
            t = self.types[fam]
            if t == "histogram" and name.endswith("_bucket"):
                check(any(k == "le" for k, _ in lab), "%s: bucket without "
                      "le" % where)
            if t == "counter":
                check(name.endswith("_total"), "%s: counter not named "
                      "..._total" % where)
            key = (name, tuple(sorted(lab)))
            check(key not in self.samples, "%s: duplicate sample" % where)
            v = float(value)
            if t == "counter" or name.endswith(("_bucket", "_count")):
                check(v >= 0, "%s: negative counter" % where)
            self.samples[key] = v
            self.order.append(key)
        for fam in self.types:
            check(fam in self.helps, "family %s has no HELP" % fam)
        for fam, t in self.types.items():
            if t == "histogram":
                self._check_histogram(fam)

    def family(self, name):
        if name in self.types:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base = name[:-len(suffix)]
                if self.types.get(base) == "histogram" or (
                        suffix != "_bucket" and
                        self.types.get(base) == "summary"):
                    return base
        return None

    def _check_histogram(self, fam):
        groups = {}
        for (name, lab), v in self.samples.items():
            if name != fam + "_bucket":
                continue
            d = dict(lab)
            le = d.pop("le")
            groups.setdefault(tuple(sorted(d.items())), []).append(
                (float(le), v))
        for key, bs in groups.items():
            bs.sort()
            check(bs[-1][0] == float("inf"), "%s%r: no +Inf bucket"
                  % (fam, key))
            vals = [v for _, v in bs]
            check(vals == sorted(vals), "%s%r: buckets not cumulative: %r"
                  % (fam, key, bs))
            check_eq(self.samples.get((fam + "_count", key)), vals[-1],
                     "%s%r: _count vs the +Inf bucket" % (fam, key))
            check((fam + "_sum", key) in self.samples, "%s%r: no _sum"
                  % (fam, key))

    def get(self, name, default=None, **labels):
        return self.samples.get((name, tuple(sorted(
            (k, str(v)) for k, v in labels.items()))), default)

    def count(self, name, **labels):
        """A counter by labels; absent (never incremented) is 0."""
        v = self.get(name, 0.0, **labels)
        check(float(v).is_integer(), "%s %r: %r" % (name, labels, v))
        return int(v)


def scrape(side):
    code, hdrs, body = http(side.status(), "GET", "/metrics")
    check_eq(code, 200, "%s GET /metrics" % side.name)
    check(hdrs.get("content-type", "").startswith("text/plain; version=0.0.4"),
          "%s /metrics content type %r" % (side.name, hdrs.get("content-type")))
    return Metrics(body.decode("utf-8"))


def healthz(addr):
    code, _, body = http(addr, "GET", "/healthz")
    return code, body.decode("utf-8", "replace")


# --- reload ---------------------------------------------------------------

@timeout(90)
def test_reload_under_load(h):
    """Four throttled streams, 24 MiB each way (8 under ASan), while five
    SIGHUPs go to each sidecar, alternating a harmless change (log_level,
    idle_timeout) with a new pin list: every byte arrives, each reload is
    logged, no connection is dropped."""
    size = scaled(24, 8) * MiB
    nstreams = 4
    duration = scaled(5.0, 6.0)
    be = h.source_sink_backend(size)
    spare = h.identity("spare")
    cli, srv, sid, cid = start_pair(h, be.addr)
    streams = [Stream(h, cli.addr(), size, seed=1000 + 7 * i,
                      rate=size / duration).start() for i in range(nstreams)]
    wait_progress(streams, 256 * 1024, scaled(10, 30))
    t_first = time.monotonic()
    for i in range(5):
        for side, peer_pin in ((srv, cid.pin), (cli, sid.pin)):
            if i % 2 == 0:
                side.upseal["log_level"] = "debug" if i % 4 == 0 else "info"
                side.tunnels["app"]["idle_timeout"] = "%ds" % (60 + i)
            else:
                side.tunnels["app"]["pin"] = (
                    [peer_pin, spare.pin] if i % 4 == 1 else [peer_pin])
            d = side.reload()
            check_eq((d.get("tunnels"), d.get("kept"), d.get("added"),
                      d.get("removed")), ("1", "1", "0", "0"),
                     "%s reload %d counts" % (side.name, i + 1))
        time.sleep(0.15)   # spread the reloads over the transfer
    t_last = time.monotonic()
    unfinished = [st for st in streams if not st.finished.is_set()]
    check_eq(len(unfinished), nstreams, "streams still moving data after "
             "the fifth reload (%.1fs of reloads)" % (t_last - t_first))
    for st in streams:
        st.wait(scaled(60, 180))
    check_streams(streams, be, size)
    for side in (cli, srv):
        check_eq(side.count("reloaded"), 5, "%s reloaded lines" % side.name)
        check_eq(side.count("reload_failed"), 0, "%s reload_failed" % side.name)
        ends = wait_conn_ends(side, nstreams)
        check_eq(sorted(e.get("reason") for e in ends), ["closed"] * nstreams,
                 "%s conn_end reasons" % side.name)
        check_eq(len(side.p.refusals()), 0,
                 "%s handshake failures" % side.name)
    # The last settings serve new connections.
    s = h.connect(cli.addr())
    s.shutdown(socket.SHUT_WR)
    got, how = recv_all(s, scaled(30, 90))
    check_eq((len(got), how), (size, "eof"), "new connection after five "
             "reloads")


@timeout(90)
def test_key_rotation_with_two_pins(h):
    """The README's rotation, by reload: client pins old+new, server
    switches key, client pins only new. A new connection works at every
    step; a connection opened before keeps working; at the end a server on
    the old key is refused (pin_mismatch on the client)."""
    be = h.echo_backend()
    old = h.identity("backend-1")
    new = h.identity("backend-2")
    cli, srv, _, cid = start_pair(h, be.addr, sid=old)

    def peer_pin_of_new_conn(step):
        n = len(cli.p.events("conn_end"))
        s = roundtrip(h, cli.addr(), b"step %s\n" % step.encode())
        close_echo(s)
        end = cli.p.wait_event("conn_end", scaled(10, 30), count=n + 1)
        check_eq(end.get("reason"), "closed", "step %s: conn_end" % step)
        return end.get("peer_pin", "")

    held = roundtrip(h, cli.addr(), b"held 0\n")
    check(old.pin.startswith(peer_pin_of_new_conn("0")), "step 0: not the "
          "old key")

    cli.tunnels["app"]["pin"] = [old.pin, new.pin]
    cli.reload()
    check(old.pin.startswith(peer_pin_of_new_conn("1")), "step 1: the server "
          "should still show the old key")
    held.sendall(b"h1\n")
    check_eq(recv_exact(held, 3), b"h1\n", "held connection after step 1")

    srv.tunnels["app"]["cert"], srv.tunnels["app"]["key"] = new.crt, new.key
    srv.reload()
    pp = peer_pin_of_new_conn("2")
    check(pp and new.pin.startswith(pp), "step 2: new connection saw %r, "
          "want the new key %s" % (pp, new.pin))
    held.sendall(b"h2\n")
    check_eq(recv_exact(held, 3), b"h2\n", "held connection across the "
             "server's key switch")

    cli.tunnels["app"]["pin"] = [new.pin]
    cli.reload()
    pp = peer_pin_of_new_conn("3")
    check(pp and new.pin.startswith(pp), "step 3: peer pin %r" % pp)
    held.sendall(b"h3\n")
    check_eq(recv_exact(held, 3), b"h3\n", "held connection after step 3")

    # The old key is no longer accepted: put the server back on it.
    srv.tunnels["app"]["cert"], srv.tunnels["app"]["key"] = old.crt, old.key
    srv.reload()
    accepted = be.accepted
    nfail = len(cli.p.refusals())
    try:
        s = h.connect(cli.addr())
        s.sendall(b"refused?\n")
        how, _, n = wait_closed(s, scaled(10, 30))
    except ConnectionResetError:
        how, n = "reset", 0
    check_eq(n, 0, "bytes through a server on the retired key")
    hf = cli.p.wait_refused(scaled(10, 30), count=nfail + 1)
    check_eq(hf.get("reason"), "pin_mismatch", "client's verdict on the old key")
    check_eq(hf.get("presented_pin"), old.pin, "presented_pin")
    check_eq(be.accepted, accepted, "backend connections for the refused one")
    close_echo(held)


BROKEN = [
    # (what, how to break the server's ini, what error= must name)
    ("syntax error", "syntax", r"server\.ini:\d+: "),
    ("missing key file", "missing_key", r"missing\.key"),
    ("key not matching cert", "other_key", r"other\.key.*does not match"),
    ("unknown key", "unknown_key", r"server\.ini:\d+: \[app\] frobnicate"),
    ("listen address in use", "listen_busy", r"address already in use"),
]


@timeout(90)
def test_broken_reload_keeps_serving(h):
    """Each broken file: reload_failed says what and where, the old tunnel
    serves a new connection, the failure counter goes up; a good file
    afterwards reloads."""
    be = h.echo_backend()
    other = h.identity("other")
    cli, srv, sid, cid = start_pair(h, be.addr, status=True)
    good = dict(srv.tunnels["app"])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    h.cleanups.append(busy.close)
    busy_addr = "127.0.0.1:%d" % busy.getsockname()[1]
    with open(srv.ini) as f:
        good_text = f.read()
    for i, (what, how, want) in enumerate(BROKEN, 1):
        text = None
        srv.tunnels["app"] = dict(good)
        if how == "syntax":
            text = good_text + "[app\nthis line is not ini\n"
        elif how == "missing_key":
            srv.tunnels["app"]["key"] = h.path("missing.key")
        elif how == "other_key":
            srv.tunnels["app"]["key"] = other.key
        elif how == "unknown_key":
            srv.tunnels["app"]["frobnicate"] = "1"
        elif how == "listen_busy":
            srv.tunnels["app"]["listen"] = busy_addr
        d = srv.reload(ok=False, text=text)
        check_eq(d.get("level"), "error", "%s: level" % what)
        check_eq(d.get("file"), srv.ini, "%s: file=" % what)
        check(re.search(want, d.get("error", "")), "%s: error=%r does not "
              "match /%s/" % (what, d.get("error"), want))
        check_eq(d.get("msg"), "the running configuration is unchanged",
                 "%s: msg" % what)
        s = roundtrip(h, cli.addr(), b"still serving after %s\n"
                      % what.encode())
        close_echo(s)
        m = scrape(srv)
        check_eq(m.count("upseal_config_reloads_total", result="failure"), i,
                 "reload failures after %s" % what)
        check_eq(m.count("upseal_config_reloads_total", result="success"), 0,
                 "reload successes after %s" % what)
        check_eq(m.get("upseal_tunnel_listening", tunnel="app"), 1.0,
                 "app listening after %s" % what)
        check_eq(healthz(srv.status()), (200, "ok\n"), "/healthz after %s"
                 % what)
    check_eq(len(srv.p.events("listening", tunnel="app")), 1,
             "listening lines: the busy address must not be half-bound")
    srv.tunnels["app"] = dict(good)
    srv.tunnels["app"]["idle_timeout"] = "90s"
    srv.reload()
    check_eq(scrape(srv).count("upseal_config_reloads_total",
                               result="success"), 1, "reload successes")
    close_echo(roundtrip(h, cli.addr(), b"after a good reload\n"))


@timeout(90)
def test_tunnels_added_removed_moved(h):
    """Add a section: it listens and works. Remove it: its port stops
    accepting while an open connection on it finishes. Change a listen:
    the new address works, the old one stops accepting."""
    be = h.echo_backend()
    cli, srv, sid, cid = start_pair(h, be.addr)
    app = cli.tunnels["app"]
    cli.tunnels["second"] = dict(app)
    d = cli.reload()
    check_eq((d.get("tunnels"), d.get("kept"), d.get("added"),
              d.get("removed")), ("2", "1", "1", "0"), "reload adding second")
    second = cli.addr("second")
    check(second != cli.addr("app"), "second listens on app's address")
    held = roundtrip(h, second, b"on second\n")
    close_echo(roundtrip(h, cli.addr("app"), b"app still there\n"))

    del cli.tunnels["second"]
    d = cli.reload()
    check_eq((d.get("tunnels"), d.get("kept"), d.get("added"),
              d.get("removed")), ("1", "1", "0", "1"), "reload removing second")
    check(refused(second), "removed tunnel's %s still accepts" % second)
    held.sendall(b"still open\n")
    check_eq(recv_exact(held, 11), b"still open\n", "open connection on the "
             "removed tunnel")
    close_echo(held)
    ends = wait_conn_ends(cli, 1, tunnel="second")
    check_eq([e.get("reason") for e in ends], ["closed"], "second's conn_end")
    close_echo(roundtrip(h, cli.addr("app"), b"app after removal\n"))

    old = cli.addr("app")
    held = roundtrip(h, old, b"before the move\n")
    port = free_port()
    app["listen"] = "127.0.0.1:%d" % port
    d = cli.reload()
    check_eq((d.get("tunnels"), d.get("kept"), d.get("added"),
              d.get("removed")), ("1", "0", "1", "1"), "reload moving app")
    check_eq(cli.addr("app"), "127.0.0.1:%d" % port, "app's new address")
    close_echo(roundtrip(h, cli.addr("app"), b"at the new address\n"))
    check(refused(old), "app's old address %s still accepts" % old)
    held.sendall(b"moved\n")
    check_eq(recv_exact(held, 6), b"moved\n", "connection open across the "
             "move")
    close_echo(held)
    ends = [e.get("reason") for e in wait_conn_ends(cli, 5)]
    check_eq(ends, ["closed"] * 5, "client conn_end reasons")


@timeout(60)
def test_reload_renamed_section(h):
    """A section renamed with its listen unchanged is a removed tunnel and
    an added one: the reload succeeds and the address keeps serving under
    the new name (a connection open under the old name finishes)."""
    be = h.echo_backend()
    addr = "127.0.0.1:%d" % free_port()
    cli, srv, _, _ = start_pair(h, be.addr, client_extra={"listen": addr})
    held = roundtrip(h, addr, b"old name\n")
    cli.tunnels = {"renamed": cli.tunnels["app"]}
    verdicts = cli.count("reloaded") + cli.count("reload_failed")
    cli.write()
    cli.p.signal(signal.SIGHUP)
    cli.p.wait_for(r"event=(reloaded|reload_failed)\b", scaled(10, 30),
                   count=verdicts + 1)
    failed = cli.p.events("reload_failed")
    check(not failed, "renaming [app] to [renamed] (same listen %s) was "
          "refused: %s" % (addr, failed and failed[-1].get("error")))
    check_eq(cli.addr("renamed"), addr, "renamed tunnel's address")
    close_echo(roundtrip(h, addr, b"new name\n"))
    close_echo(held)


@timeout(60)
def test_metrics_across_a_moved_listen(h):
    """A tunnel whose listen changes keeps its name, so its series go on:
    counters do not go back to 0, and a connection still open on the old
    listener is counted in connections_open and, when it ends, in
    closed_total."""
    be = h.echo_backend()
    cli, srv, _, _ = start_pair(h, be.addr, status=True)
    held = roundtrip(h, cli.addr(), b"held\n")
    close_echo(roundtrip(h, cli.addr(), b"done\n"))
    wait_conn_ends(cli, 1)
    m = scrape(cli)
    check_eq((m.count("upseal_connections_accepted_total", tunnel="app"),
              m.get("upseal_connections_open", tunnel="app")), (2, 1.0),
             "accepted, open before the move")
    cli.tunnels["app"]["listen"] = "127.0.0.1:%d" % free_port()
    cli.reload()
    m = scrape(cli)
    got = (m.count("upseal_connections_accepted_total", tunnel="app"),
           m.get("upseal_connections_open", tunnel="app"))
    close_echo(held)
    wait_conn_ends(cli, 2)
    m2 = scrape(cli)
    check_eq(got, (2, 1.0), "accepted_total, connections_open right after "
             "the move (the held connection is still open)")
    check_eq(m2.count("upseal_connections_closed_total", tunnel="app",
                      reason="closed"), 2,
             "closed_total{closed} once the held connection ended")


# --- drain ----------------------------------------------------------------

@timeout(90)
def test_drain_under_load(h):
    """SIGTERM to the server while four streams move data: new connections
    are refused, /healthz answers 503 and upseal_draining is 1 during the
    drain, every stream completes byte-exact, exit 0 before drain_timeout."""
    size = scaled(16, 6) * MiB
    duration = 4.0
    be = h.source_sink_backend(size)
    cli, srv, _, _ = start_pair(h, be.addr, status=True,
                                upseal={"drain_timeout": "60s"})
    check_eq(healthz(srv.status()), (200, "ok\n"), "/healthz before")
    streams = [Stream(h, cli.addr(), size, seed=77 + i,
                      rate=size / duration).start() for i in range(4)]
    wait_progress(streams, 512 * 1024, scaled(10, 30))
    t0 = time.monotonic()
    srv.p.signal(signal.SIGTERM)
    srv.p.wait_event("stopping", scaled(5, 15), signal="SIGTERM")
    check(refused(srv.addr()), "server still accepts after SIGTERM")
    code, body = healthz(srv.status())
    check_eq((code, body), (503, "draining\n"), "/healthz while draining")
    m = scrape(srv)
    check_eq(m.get("upseal_draining"), 1.0, "upseal_draining")
    check_eq(m.get("upseal_connections_open", tunnel="app"), 4.0,
             "connections open while draining")
    check_eq(m.get("upseal_tunnel_listening", tunnel="app"), 0.0,
             "tunnel listening while draining")
    check(all(not st.finished.is_set() for st in streams),
          "a stream ended before the drain checks were done")
    # A new connection through the client reaches nothing.
    try:
        x = h.connect(cli.addr())
        x.sendall(b"new\n")
        how, _, n = wait_closed(x, scaled(10, 30))
    except ConnectionResetError:
        n = 0
    check_eq(n, 0, "bytes for a connection made during the drain")
    for st in streams:
        st.wait(scaled(60, 180))
    check_streams(streams, be, size)
    rc = srv.p.wait(scaled(10, 30))
    took = time.monotonic() - t0
    check_eq(rc, 0, "server exit status after the drain")
    check(took < 30, "server took %.1fs (drain_timeout 60s)" % took)
    ends = srv.p.events("conn_end")
    check_eq(sorted(e.get("reason") for e in ends), ["closed"] * 4,
             "server conn_end reasons")
    check(not srv.p.events("drain_timeout"), "drain_timeout logged")
    srv.p.wait_event("stopped", 1)
    check_eq(be.accepted, 4, "backend connections")


@timeout(60)
def test_drain_timeout_drops_stuck_connection(h):
    """A connection that never ends, drain_timeout 1s: drain_timeout is
    logged with the count, conn_end reason=drain, exit 0."""
    be = h.echo_backend()
    cli, srv, _, _ = start_pair(h, be.addr, status=True,
                                upseal={"drain_timeout": "1s"})
    stuck = roundtrip(h, cli.addr(), b"stuck\n")
    t0 = time.monotonic()
    srv.p.signal(signal.SIGTERM)
    srv.p.wait_event("stopping", 5)
    check_eq(healthz(srv.status())[0], 503, "/healthz while draining")
    d = srv.p.wait_event("drain_timeout", scaled(5, 15))
    check_eq(d.get("connections"), "1", "drain_timeout connections=")
    how, _, _ = wait_closed(stuck, scaled(5, 15))
    check(how in ("reset", "eof"), "stuck connection %s after the drain" % how)
    rc = srv.p.wait(scaled(5, 15))
    took = time.monotonic() - t0
    check_eq(rc, 0, "server exit status")
    check(0.8 <= took <= scaled(4, 8), "server exited %.2fs after SIGTERM "
          "(drain_timeout 1s)" % took)
    ends = srv.p.events("conn_end")
    check_eq([e.get("reason") for e in ends], ["drain"], "server conn_end")
    srv.p.wait_event("stopped", 1)


# --- metrics --------------------------------------------------------------

@timeout(90)
def test_metrics_match_traffic(h):
    """Counters against what the test did, on both sides."""
    n_good, up, down = 5, 300007, 123457     # bytes app->backend, back
    be = h.source_sink_backend(down)
    dead = "127.0.0.1:%d" % free_port()
    cli, srv, sid, cid = start_pair(h, be.addr, status=True)
    m = scrape(cli)
    bi = [(dict(lab), v) for (name, lab), v in m.samples.items()
          if name == "upseal_build_info"]
    check(len(bi) == 1 and bi[0][0].get("role") == "client" and
          bi[0][0].get("version") and bi[0][1] == 1.0, "build_info %r" % bi)
    check_eq(m.get("upseal_draining"), 0.0, "upseal_draining")
    check_eq(m.get("upseal_tunnel_listening", tunnel="app"), 1.0, "listening")
    check_eq(m.count("upseal_connections_accepted_total", tunnel="app"), 0,
             "accepted before traffic")

    # N good connections, with a scrape in the middle of one.
    for i in range(n_good):
        s = h.connect(cli.addr())
        src = Source(up, seed=i)
        data = src.bytes()
        s.sendall(data[:up // 2])
        if i == 2:
            # The gauge settles at 1: this connection accepted, the one
            # before it freed (its close callbacks may still be running
            # when the test's socket saw EOF). Bounded poll, then exact.
            deadline = time.monotonic() + scaled(5, 15)
            mid = scrape(cli)
            while (mid.get("upseal_connections_open", tunnel="app") != 1.0
                   and time.monotonic() < deadline):
                time.sleep(0.02)
                mid = scrape(cli)
            check_eq(mid.get("upseal_connections_open", tunnel="app"), 1.0,
                     "client connections_open during a transfer")
            check(mid.count("upseal_bytes_total", tunnel="app",
                            direction="plain_in") >= 2 * up,
                  "plain_in during traffic")
        s.sendall(data[up // 2:])
        s.shutdown(socket.SHUT_WR)
        got, how = recv_all(s, scaled(10, 30))
        check_eq((len(got), how), (down, "eof"), "reply %d" % i)
        s.close()
    for side in (cli, srv):
        wait_conn_ends(side, n_good)
    be.wait_results(n_good)

    # Wrong pin: an intruder with a key the server does not pin.
    bad = h.identity("intruder")
    n_bad = 3
    intr = Side(h, "client", "intruder", {"app": {
        "listen": "127.0.0.1:0", "connect": srv.addr(), "cert": bad.crt,
        "key": bad.key, "pin": [sid.pin], "handshake_timeout": "5s"}})
    for i in range(n_bad):
        try:
            s = h.connect(intr.addr())
            s.sendall(b"let me in\n")
            wait_closed(s, scaled(10, 30))
        except ConnectionResetError:
            pass
    srv.p.wait_event("conn_end", scaled(10, 30), count=n_bad,
                     reason="pin_mismatch")

    # A refused backend, through a second client tunnel to nowhere.
    cli.tunnels["dead"] = dict(cli.tunnels["app"], connect=dead)
    cli.reload()
    try:
        s = h.connect(cli.addr("dead"))
        wait_closed(s, scaled(10, 30))
    except ConnectionResetError:
        pass
    cli.p.wait_event("conn_end", scaled(10, 30), tunnel="dead",
                     reason="connect_failed")

    # Held connections: connections_open on both sides.
    n_held = 3
    held = []
    for i in range(n_held):
        s = h.connect(cli.addr())
        s.sendall(b"held\n")
        check_eq(len(recv_exact(s, down, scaled(10, 30))), down,
                 "reply on held connection %d" % i)
        held.append(s)
    mc, ms = scrape(cli), scrape(srv)
    check_eq(mc.get("upseal_connections_open", tunnel="app"), float(n_held),
             "client connections_open with held connections")
    check_eq(ms.get("upseal_connections_open", tunnel="app"), float(n_held),
             "server connections_open with held connections")
    for s in held:
        close_echo(s)   # the backend has sent all: EOF follows ours
    wait_conn_ends(cli, n_good + 1 + n_held)
    wait_conn_ends(srv, n_good + n_bad + n_held)

    mc, ms = scrape(cli), scrape(srv)
    held_in, held_out = n_held * 5, n_held * down
    c_acc = n_good + n_held
    s_acc = n_good + n_bad + n_held
    for side, m, acc in (("client", mc, c_acc), ("server", ms, s_acc)):
        check_eq(m.count("upseal_connections_accepted_total", tunnel="app"),
                 acc, "%s accepted_total" % side)
        check_eq(m.count("upseal_connections_closed_total", tunnel="app",
                         reason="closed"), n_good + n_held,
                 "%s closed_total{closed}" % side)
        check_eq(m.get("upseal_connections_open", tunnel="app"), 0.0,
                 "%s connections_open at the end" % side)
        # Full or resumed (session tickets, when the build has them):
        # every completed handshake is counted once, and timed once.
        full = m.count("upseal_handshakes_total", tunnel="app", kind="full")
        resumed = m.count("upseal_handshakes_total", tunnel="app",
                          kind="resumed")
        check_eq(full + resumed, n_good + n_held,
                 "%s handshakes full %d + resumed %d" % (side, full, resumed))
        check(full >= 1, "%s: no full handshake at all" % side)
        check_eq(m.count("upseal_handshake_duration_seconds_count",
                         tunnel="app"), full + resumed,
                 "%s handshake histogram _count vs handshakes_total" % side)
        check(m.get("upseal_handshake_duration_seconds_sum", tunnel="app")
              > 0, "%s handshake duration sum" % side)
    check_eq(mc.count("upseal_handshakes_total", tunnel="app",
                      kind="resumed"),
             ms.count("upseal_handshakes_total", tunnel="app",
                      kind="resumed"), "resumed handshakes, client vs server")
    check_eq(mc.count("upseal_bytes_total", tunnel="app",
                      direction="plain_in"), n_good * up + held_in,
             "client plain_in (bytes the app sent)")
    check_eq(mc.count("upseal_bytes_total", tunnel="app",
                      direction="plain_out"), n_good * down + held_out,
             "client plain_out (bytes the app received)")
    check_eq(ms.count("upseal_bytes_total", tunnel="app",
                      direction="plain_in"), n_good * down + held_out,
             "server plain_in (bytes the backend sent)")
    check_eq(ms.count("upseal_bytes_total", tunnel="app",
                      direction="plain_out"), n_good * up + held_in,
             "server plain_out (bytes the backend received)")
    check_eq(ms.count("upseal_handshake_failures_total", tunnel="app",
                      reason="pin_mismatch"), n_bad,
             "server handshake_failures{pin_mismatch}")
    check_eq(sum(v for (name, lab), v in mc.samples.items()
                 if name == "upseal_handshake_failures_total"), 0,
             "client handshake failures")
    check_eq(mc.count("upseal_connect_failures_total", tunnel="dead"), 1,
             "client connect_failures{dead}")
    check_eq(mc.count("upseal_connect_failures_total", tunnel="app"), 0,
             "client connect_failures{app}")
    check_eq(ms.count("upseal_connect_failures_total", tunnel="app"), 0,
             "server connect_failures")
    check_eq(mc.count("upseal_config_reloads_total", result="success"), 1,
             "client reloads")
    # Every declared family of the contract is there.
    for fam, typ in (("upseal_build_info", "gauge"),
                     ("upseal_draining", "gauge"),
                     ("upseal_config_reloads_total", "counter"),
                     ("upseal_tunnel_listening", "gauge"),
                     ("upseal_connections_open", "gauge"),
                     ("upseal_connections_accepted_total", "counter"),
                     ("upseal_connections_closed_total", "counter"),
                     ("upseal_handshake_failures_total", "counter"),
                     ("upseal_handshakes_total", "counter"),
                     ("upseal_bytes_total", "counter"),
                     ("upseal_connect_failures_total", "counter"),
                     ("upseal_handshake_duration_seconds", "histogram")):
        check_eq(mc.types.get(fam), typ, "TYPE of %s" % fam)


@timeout(60)
def test_status_http(h):
    """/healthz 200, unknown path 404, POST 405, HEAD without a body, a
    10 KB request head 431, and the status port keeps answering."""
    be = h.echo_backend()
    cli, srv, _, _ = start_pair(h, be.addr, status=True)
    addr = srv.status()
    check(re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", addr), "status addr %r" % addr)
    check_eq(healthz(addr), (200, "ok\n"), "/healthz")
    check_eq(http(addr, "GET", "/healthz?verbose=1")[0], 200, "/healthz?query")
    check_eq(http(addr, "GET", "/nope")[0], 404, "unknown path")
    check_eq(http(addr, "POST", "/metrics",
                  b"Content-Length: 0\r\n")[0], 405, "POST /metrics")
    code, hdrs, body = http(addr, "HEAD", "/metrics")
    check_eq((code, body), (200, b""), "HEAD /metrics")
    check(int(hdrs.get("content-length", "0")) > 0, "HEAD Content-Length")
    big = b"X-Filler: " + b"a" * 10240 + b"\r\n"
    code, _, _ = http(addr, "GET", "/metrics", big)
    check_eq(code, 431, "10 KB request head")
    # A client that connects and says nothing does not block the others.
    mute = h.connect(addr)
    for _ in range(3):
        check_eq(healthz(addr), (200, "ok\n"), "/healthz after the big one")
        Metrics(http(addr)[2].decode())
    mute.close()
    close_echo(roundtrip(h, cli.addr(), b"tunnel unaffected\n"))


@timeout(60)
def test_status_on_unix_socket(h):
    be = h.echo_backend()
    path = h.path("status.sock")
    cli, srv, _, _ = start_pair(h, be.addr)
    srv.upseal["status"] = "unix:" + path
    srv.reload()
    d = srv.p.wait_event("status_listening", 5)
    check(path in d.get("addr", ""), "status_listening addr %r" % d)
    addr = "unix:" + path
    check_eq(healthz(addr), (200, "ok\n"), "/healthz over unix")
    close_echo(roundtrip(h, cli.addr(), b"one\n"))
    wait_conn_ends(srv, 1)
    m = Metrics(http(addr)[2].decode())
    check_eq(m.count("upseal_connections_accepted_total", tunnel="app"), 1,
             "accepted over unix status")
    # curl too, as an operator would.
    r = h.run(["curl", "-sS", "--unix-socket", path, "http://upseal/healthz"],
              timeout=10)
    check_eq((r.returncode, r.out), (0, "ok\n"), "curl --unix-socket")
    srv.p.stop()
    check(not os.path.exists(path), "status socket file left after exit")


# --- logs -----------------------------------------------------------------

_LF_PAIR = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\\x00-\x1f]|\\["\\nt]|'
                      r'\\u[0-9a-f]{4})*"|[\x21\x23-\x3c\x3e-\x5b\x5d-\x7e]+)'
                      r'(?= |$)')
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_LEVELS = ("error", "warn", "info", "debug")


def _unquote(v):
    if not v.startswith('"'):
        return v
    return json.loads(v)    # the escapes are JSON's


def parse_logfmt_strict(line):
    out = {}
    keys = []
    pos = 0
    while pos < len(line):
        m = _LF_PAIR.match(line, pos)
        check(m, "logfmt: cannot parse at %d of %r" % (pos, line))
        k, v = m.group(1), _unquote(m.group(2))
        check(k not in out, "logfmt: key %s twice in %r" % (k, line))
        out[k] = v
        keys.append(k)
        pos = m.end()
        if pos < len(line):
            pos += 1
            check(pos < len(line), "logfmt: trailing space in %r" % line)
    check_eq(keys[:3], ["ts", "level", "event"], "first keys of %r" % line)
    return out


def parse_json_strict(line):
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise AssertionError("json: %s in %r" % (e, line))
    check(isinstance(obj, dict), "json: not an object: %r" % line)
    check_eq(list(obj)[:3], ["ts", "level", "event"], "first keys of %r"
             % line)
    for k, v in obj.items():
        check(isinstance(v, (str, int, bool)), "json: %s=%r" % (k, v))
    return {k: (v if isinstance(v, str) else json.dumps(v))
            for k, v in obj.items()}


EVENTS = ("listening", "status_listening", "ready", "conn_end",
          "reloaded", "reload_failed", "stopping",
          "drain_timeout", "stopped", "max_connections",
          "allow_remote")


def _logs(h, fmt):
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    up = {"log_format": fmt, "drain_timeout": "1s",
          "status": "127.0.0.1:0"}
    srv = Side(h, "server", "server", {
        "app": {"listen": "127.0.0.1:0", "connect": be.addr,
                "cert": sid.crt, "key": sid.key, "pin": [cid.pin],
                "handshake_timeout": "5s"},
        # A backend beyond loopback, allowed on purpose (never dialed).
        "remote": {"listen": "127.0.0.1:0", "connect": "192.0.2.1:9",
                   "allow_remote": "yes", "cert": sid.crt, "key": sid.key,
                   "pin": [cid.pin]}}, up)
    cli = Side(h, "client", "client", {"app": {
        "listen": "127.0.0.1:0", "connect": srv.addr("app"),
        "cert": cid.crt, "key": cid.key, "pin": [sid.pin],
        "max_connections": "1", "handshake_timeout": "5s"}}, up)
    # conn_end, and max_connections with one held connection.
    held = roundtrip(h, cli.addr(), b"held\n")
    waiting = h.connect(cli.addr())
    waiting.sendall(b"second\n")
    cli.p.wait_event("max_connections", 10, tunnel="app")
    close_echo(held)
    check_eq(recv_exact(waiting, 7, 10), b"second\n", "the waiting connection")
    close_echo(waiting)
    # A refused peer: a client whose key the server does not pin.
    bad = h.identity("intruder")
    intr = Side(h, "client", "intruder", {"app": {
        "listen": "127.0.0.1:0", "connect": srv.addr("app"),
        "cert": bad.crt, "key": bad.key, "pin": [sid.pin]}},
        {"log_format": fmt})
    try:
        s = h.connect(intr.addr())
        s.sendall(b"x")
        wait_closed(s, 10)
    except ConnectionResetError:
        pass
    srv.p.wait_event("conn_end", 10, reason="pin_mismatch")
    intr.p.stop()
    # reloaded, reload_failed (an error= with quotes and brackets).
    srv.tunnels["app"]["idle_timeout"] = "2m"
    srv.reload()
    srv.tunnels["app"]["key"] = h.path("no such \"key\".key")
    srv.reload(ok=False)
    # stopping, drain_timeout, stopped, with a stuck connection.
    stuck = roundtrip(h, cli.addr(), b"stuck\n")
    srv.p.signal(signal.SIGTERM)
    srv.p.wait_event("drain_timeout", scaled(5, 15))
    wait_closed(stuck, 10)
    check_eq(srv.p.wait(scaled(5, 15)), 0, "server exit")
    srv.p.wait_event("stopped", 1)
    cli.p.stop()
    check_eq(cli.p.returncode, 0, "client exit")

    seen = {}
    parse = parse_json_strict if fmt == "json" else parse_logfmt_strict
    for side in (srv, cli, intr):
        for line in side.p.lines():
            d = parse(line)
            check(_TS.fullmatch(d["ts"]), "ts %r" % d["ts"])
            check(d["level"] in _LEVELS, "level %r" % d["level"])
            seen.setdefault(d["event"], d)
    missing = [e for e in EVENTS if e not in seen]
    check(not missing, "%s: events never logged: %s (seen %s)"
          % (fmt, missing, sorted(seen)))
    rf = seen["reload_failed"]
    check('no such "key".key' in rf.get("error", ""),
          "reload_failed error=%r (quotes must survive)" % rf.get("error"))
    check_eq(seen["allow_remote"].get("tunnel"), "remote", "allow_remote tunnel")
    check_eq(seen["drain_timeout"].get("connections"), "1", "drain_timeout")
    refused = [parse(line) for line in srv.p.lines()
               if "pin_mismatch" in line]
    check(refused and refused[0].get("event") == "conn_end" and
          refused[0].get("presented_pin") == bad.pin,
          "the refused peer's one line: %r" % refused[:1])
    for ev, lvl in (("reload_failed", "error"), ("reloaded", "info"),
                    ("drain_timeout", "warn"),
                    ("stopped", "info"), ("ready", "info")):
        check_eq(seen[ev]["level"], lvl, "level of %s" % ev)
    h.note("%s: %d event kinds parsed" % (fmt, len(seen)))


@timeout(90)
def test_logs_text(h):
    _logs(h, "text")


@timeout(90)
def test_logs_json(h):
    _logs(h, "json")


# --- privileges -----------------------------------------------------------

def _ids(pid):
    with open("/proc/%d/status" % pid) as f:
        st = dict(line.rstrip("\n").split(":\t", 1) for line in f
                  if ":\t" in line)
    return (st["Uid"].split(), st["Gid"].split(), st.get("Groups", "").split())


@timeout(60)
def test_user_nobody(h):
    """user = nobody: after start, every uid and gid of the process is
    nobody's, traffic flows, a reload as nobody works. Root reads the keys
    at start: one owned by nobody (0600) and one owned by root that
    nobody's group may read (0640) are both accepted (test_trust has the
    refusals)."""
    import pwd
    if os.geteuid() != 0:
        h.note("not root: user = nobody not tested")
        return
    pw = pwd.getpwnam("nobody")
    os.chmod(h.dir, 0o755)
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    for p in (sid.crt, cid.crt):
        os.chmod(p, 0o644)
    os.chown(sid.key, pw.pw_uid, pw.pw_gid)        # 0600, nobody's
    os.chown(cid.key, 0, pw.pw_gid)                # root's, group nobody
    os.chmod(cid.key, 0o640)
    cli, srv, _, _ = start_pair(h, be.addr, sid=sid, cid=cid,
                                upseal={"user": "nobody"})
    for side in (srv, cli):
        uid, gid, groups = _ids(side.p.pid)
        check_eq(uid, [str(pw.pw_uid)] * 4, "%s Uid" % side.name)
        check_eq(gid, [str(pw.pw_gid)] * 4, "%s Gid" % side.name)
        check("0" not in groups, "%s still in group 0: %r"
              % (side.name, groups))
        check_eq(side.p.events("ready")[0].get("user"), "nobody",
                 "%s ready user=" % side.name)
    close_echo(roundtrip(h, cli.addr(), b"as nobody\n"))
    srv.tunnels["app"]["idle_timeout"] = "2m"
    srv.reload()
    close_echo(roundtrip(h, cli.addr(), b"after a reload as nobody\n"))
