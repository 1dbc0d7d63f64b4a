"""
Integration-test harness for upseal (Python 3 standard library only).

Every test function receives a fresh `Harness` (`h`). It owns:
  - a temp dir (removed afterwards; kept on failure when UPSEAL_KEEP=1);
  - every daemon it started (`Proc`), stopped by pid at teardown;
  - every in-process backend (threads) and every socket it handed out.

Teardown fails the test when a daemon exited non-zero after SIGTERM, had
to be SIGKILLed, or when any daemon log holds a sanitizer report or an
internal error. Nothing here sleeps for readiness: daemons are waited on
through their `event=ready` / `event=listening` log lines, and every loop
is bounded in count and in time.
"""

import errno
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

BUILD = os.environ.get("UPSEAL_BUILD", "build")
SAN = os.environ.get("UPSEAL_SAN", "") == "1"

# Log patterns that fail any test, whatever it asserted.
BAD_LOG = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|"
                     r"level=error event=internal|"
                     r'"level"\s*:\s*"error"\s*,\s*"event"\s*:\s*"internal"')


class TestFailure(AssertionError):
    pass


class Skip(Exception):
    """Raised by a test that cannot run here (`raise Skip("why")` or
    `h.skip("why")`): run.py prints `ok NAME # skip why` and counts it as
    skipped, neither passed nor failed. Only for a missing capability of
    the machine (e.g. no permission to create network namespaces), never
    for a check that did not hold."""

    def __init__(self, why):
        super().__init__(why)
        self.why = str(why)


def check(cond, msg):
    """Assert with a message (works under python -O too)."""
    if not cond:
        raise TestFailure(msg)


def check_eq(got, want, what):
    if got != want:
        raise TestFailure("%s: got %r, want %r" % (what, got, want))


# --- test markers ---------------------------------------------------------

def slow(fn):
    """Mark a test as heavy: sizes shrink under the sanitizer build."""
    fn.slow = True
    return fn


def timeout(seconds):
    """Per-test time limit (default 60s; scaled up under ASan)."""
    def mark(fn):
        fn.timeout = seconds
        return fn
    return mark


def scaled(full, san):
    """`full` normally, `san` in the sanitizer pass (UPSEAL_SAN=1)."""
    return san if SAN else full


def big_mib():
    """Size of the big transfer, MiB (UPSEAL_BIG_MIB overrides)."""
    v = os.environ.get("UPSEAL_BIG_MIB")
    if v:
        return int(v)
    return scaled(256, 64)


# --- log parsing ----------------------------------------------------------

_LOGFMT = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_line(line):
    """One log line (logfmt or JSON) into a dict of strings; {} if neither."""
    line = line.strip()
    if not line:
        return {}
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return {}
        if not isinstance(obj, dict):
            return {}
        out = {}
        for k, v in obj.items():
            if isinstance(v, str):
                out[k] = v
            elif isinstance(v, bool):
                out[k] = "true" if v else "false"
            elif isinstance(v, (int, float)):
                out[k] = str(v)
            else:
                out[k] = json.dumps(v)
        return out
    out = {}
    for m in _LOGFMT.finditer(line):
        v = m.group(2)
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[m.group(1)] = v
    return out


# The reasons of a conn_end line that refused a peer or failed a handshake:
# that one line carries the peer's presented_pin (reason.h).
HANDSHAKE_REASONS = ("pin_mismatch", "no_cert", "chain_invalid",
                     "name_mismatch", "not_tls", "protocol_version",
                     "peer_alert", "handshake_eof", "handshake_failed",
                     "no_application_protocol", "revoked",
                     "name_not_allowed")


def event_re(event, **fields):
    """Regex matching a log line with this event (and fields), either format."""
    parts = []
    for k, v in [("event", event)] + sorted(fields.items()):
        v = re.escape(str(v))
        parts.append(r'(?=.*(?:\b%s=%s(?:\s|$)|"%s"\s*:\s*"?%s"?[,}]))' %
                     (re.escape(k), v, re.escape(k), v))
    return "".join(parts)


# --- addresses ------------------------------------------------------------

def sockaddr(addr):
    """'127.0.0.1:5' | '[::1]:5' | 'unix:/p' -> (family, sockaddr)."""
    if addr.startswith("unix:"):
        return socket.AF_UNIX, addr[5:]
    if addr.startswith("["):
        host, _, port = addr[1:].rpartition("]:")
        return socket.AF_INET6, (host, int(port))
    host, _, port = addr.rpartition(":")
    return socket.AF_INET, (host, int(port))


def free_port():
    """A TCP port nothing listens on right now (for 'refused' cases)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- data patterns --------------------------------------------------------

_PATTERN_LEN = 4 * 1024 * 1024 + 7     # not a power of two: shifts show up
_PATTERN = None
_PATTERN_LOCK = threading.Lock()


def pattern():
    global _PATTERN
    with _PATTERN_LOCK:
        if _PATTERN is None:
            buf = bytearray(os.urandom(_PATTERN_LEN))
            _PATTERN = memoryview(bytes(buf + buf[:1024 * 1024]))
    return _PATTERN


class Source:
    """`total` bytes from the random pattern, starting at `seed`; hashes what it yields."""

    def __init__(self, total, seed=0):
        self.total = total
        self.pos = 0
        self.off = seed % _PATTERN_LEN
        self.sha = hashlib.sha256()

    def peek(self, n=256 * 1024):
        n = min(n, self.total - self.pos, 1024 * 1024)
        return pattern()[self.off:self.off + n]

    def advance(self, n):
        p = pattern()
        self.sha.update(p[self.off:self.off + n])
        self.pos += n
        self.off = (self.off + n) % _PATTERN_LEN

    def done(self):
        return self.pos >= self.total

    def bytes(self):
        """The whole content (small sources only)."""
        out = bytearray()
        off = self.off
        left = self.total - self.pos
        p = pattern()
        while left:
            n = min(left, _PATTERN_LEN - off)
            out += p[off:off + n]
            off = (off + n) % _PATTERN_LEN
            left -= n
        return bytes(out)


# --- daemons --------------------------------------------------------------

class Proc:
    """A started binary: stderr to a file, stopped by pid."""

    def __init__(self, h, name, argv, cwd):
        self.h = h
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(h.dir, name + ".log")
        self.out_path = os.path.join(h.dir, name + ".out")
        self._err = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=self._out, stderr=self._err,
                                  cwd=cwd, start_new_session=True)
        self.pid = self.p.pid
        self.returncode = None
        self.expect_exit = None   # set when the test expects a given exit
        self.killed = False       # set by kill9(): exit -9 is expected
        self.addrs = {}           # tunnel -> bound address
        self.stop_signal_sent = False
        self.final_log = None     # the log, kept once the temp dir is gone

    def log(self):
        if self.final_log is not None:
            return self.final_log
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def lines(self):
        return self.log().splitlines()

    def events(self, event=None, **fields):
        """Parsed log lines with this event and these field values."""
        out = []
        for line in self.lines():
            d = parse_line(line)
            if not d:
                continue
            if event is not None and d.get("event") != event:
                continue
            if all(d.get(k) == str(v) for k, v in fields.items()):
                out.append(d)
        return out

    def poll(self):
        if self.returncode is None:
            rc = self.p.poll()
            if rc is not None:
                self.returncode = rc
                self._close_files()
        return self.returncode

    def alive(self):
        return self.poll() is None

    def _close_files(self):
        for f in (self._err, self._out):
            try:
                f.close()
            except OSError:
                pass

    def wait_for(self, regex, timeout=10.0, count=1):
        """Wait until `count` log lines match regex; return the last match.

        Fails early if the process exits first (and the match is absent).
        """
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            ms = [m for m in (rx.search(line) for line in self.lines()) if m]
            if len(ms) >= count:
                return ms[count - 1]
            if self.poll() is not None:
                ms = [m for m in (rx.search(line) for line in self.lines()) if m]
                if len(ms) >= count:
                    return ms[count - 1]
                raise TestFailure("%s exited (%s) before logging /%s/ x%d:\n%s"
                                  % (self.name, self.returncode, regex, count,
                                     tail(self.log())))
            if time.monotonic() > deadline:
                raise TestFailure("%s: no /%s/ x%d within %.1fs (got %d):\n%s"
                                  % (self.name, regex, count, timeout, len(ms),
                                     tail(self.log())))
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def refusals(self):
        """conn_end lines of refused peers and failed handshakes."""
        return [e for e in self.events("conn_end")
                if e.get("reason") in HANDSHAKE_REASONS]

    def wait_refused(self, timeout=10.0, count=1):
        """Wait for the count-th refusal (see refusals) and return it."""
        alt = "|".join(HANDSHAKE_REASONS)
        rx = event_re("conn_end") + (
            r'(?=.*(?:\breason=(?:%s)(?:\s|$)|"reason"\s*:\s*"(?:%s)"))'
            % (alt, alt))
        self.wait_for(rx, timeout, count)
        return self.refusals()[count - 1]

    def wait_event(self, event, timeout=10.0, count=1, **fields):
        self.wait_for(event_re(event, **fields), timeout, count)
        return self.events(event, **fields)[count - 1]

    def wait_ready(self, timeout=None):
        if timeout is None:
            timeout = scaled(15.0, 40.0)
        self.wait_event("ready", timeout)
        for d in self.events("listening"):
            self.addrs[d.get("tunnel")] = d.get("addr")
        return self.addrs

    def addr(self, tunnel):
        a = self.addrs.get(tunnel)
        check(a, "%s: no listening line for tunnel %r (have %r)"
              % (self.name, tunnel, self.addrs))
        return a

    def cpu_seconds(self):
        """User + system CPU time so far (Linux /proc), or None."""
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def rss_kib(self):
        """Resident memory now, in KiB (Linux /proc), or None."""
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, IndexError, ValueError):
            pass
        return None

    def signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    def stop(self, timeout=None):
        """SIGTERM to this pid, wait bounded, then SIGKILL. Returns exit code."""
        if timeout is None:
            timeout = self.h.drain_s + scaled(5.0, 15.0)
        if self.poll() is not None:
            return self.returncode
        self.stop_signal_sent = True
        os.kill(self.pid, signal.SIGTERM)
        if self.wait(timeout) is None:
            self.h.note("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL"
                        % (self.name, self.pid, timeout))
            self.sigkilled_by_harness = True
            os.kill(self.pid, signal.SIGKILL)
            self.wait(10)
        return self.poll()

    def kill9(self):
        """kill -9 on purpose: its exit status is not held against it."""
        self.killed = True
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(10)
        return self.poll()


def tail(text, n=30):
    lines = text.splitlines()
    return "\n".join("    | " + l for l in lines[-n:]) or "    | (empty)"


class Identity:
    def __init__(self, name, crt, key, pin):
        self.name, self.crt, self.key, self.pin = name, crt, key, pin

    def __repr__(self):
        return "Identity(%s, %s)" % (self.name, self.pin)


# --- in-process backends --------------------------------------------------

def _drain_hashed(s):
    """Read s to EOF; return (bytes read, their sha256 object)."""
    sha = hashlib.sha256()
    n = 0
    while True:
        d = s.recv(1024 * 1024)
        if not d:
            return n, sha
        sha.update(d)
        n += len(d)


class Backend:
    """A listening socket and one thread per connection, all bounded.

    Subclasses implement handle(sock, index). `accepted` counts every
    connection ever accepted. `results` gathers what handlers report.
    """

    LIFETIME = 900.0

    def __init__(self, h, unix_path=None, port=0, family=socket.AF_INET):
        self.h = h
        self.accepted = 0
        self.results = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.conns = []
        if unix_path:
            self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.ls.bind(unix_path)
            self.addr = "unix:" + unix_path
        else:
            self.ls = socket.socket(family, socket.SOCK_STREAM)
            self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
            self.ls.bind((host, port))
            p = self.ls.getsockname()[1]
            self.addr = ("[::1]:%d" if family == socket.AF_INET6 else
                         "127.0.0.1:%d") % p
            self.port = p
        self.ls.listen(1024)
        self.ls.settimeout(0.1)
        self.t = threading.Thread(target=self._accept_loop, daemon=True,
                                  name="backend-accept")
        self.t.start()

    def _accept_loop(self):
        deadline = time.monotonic() + self.LIFETIME
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.accepted += 1
                idx = self.accepted
                self.conns.append(s)
            s.settimeout(scaled(60.0, 180.0))
            t = threading.Thread(target=self._run, args=(s, idx), daemon=True,
                                 name="backend-conn")
            t.start()

    def _run(self, s, idx):
        try:
            self.handle(s, idx)
        except Exception as e:   # recorded, looked at by tests that care
            with self.lock:
                self.errors.append((idx, repr(e)))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def wait_accepted(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self.accepted < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.accepted

    def wait_results(self, n, timeout=30.0):
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        check(len(self.results) >= n,
              "backend: %d results after %.0fs, want %d (errors %r)"
              % (len(self.results), timeout, n, self.errors[:5]))
        return self.results

    def stop(self):
        self.stopping.set()
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass
        self.t.join(2)


class EchoBackend(Backend):
    """Echoes everything; EOF in -> FIN out after the echo is flushed."""

    def handle(self, s, idx):
        n = 0
        while True:
            d = s.recv(256 * 1024)
            if not d:
                break
            s.sendall(d)
            n += len(d)
        s.shutdown(socket.SHUT_WR)
        with self.lock:
            self.results.append(n)


CountingBackend = EchoBackend   # every backend counts `accepted`


class SourceSinkBackend(Backend):
    """Hashes all it receives while it sends `send_bytes` of its own."""

    def __init__(self, h, send_bytes, **kw):
        self.send_bytes = send_bytes
        super().__init__(h, **kw)

    def handle(self, s, idx):
        src = Source(self.send_bytes, seed=idx * 7919 + 13)
        err = []

        def sender():
            try:
                while not src.done():
                    n = s.send(src.peek())
                    src.advance(n)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(repr(e))

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got, sha = _drain_hashed(s)
        t.join(scaled(120, 300))
        with self.lock:
            self.results.append({"recv": got, "recv_sha": sha.hexdigest(),
                                 "sent": src.pos, "sent_sha": src.sha.hexdigest(),
                                 "send_error": err})


class DelayedReplyBackend(Backend):
    """Reads to EOF, waits `delay`, sends `reply`, then FIN."""

    def __init__(self, h, reply, delay=0.3, **kw):
        self.reply = reply
        self.delay = delay
        super().__init__(h, **kw)

    def handle(self, s, idx):
        got = bytearray()
        while True:
            d = s.recv(256 * 1024)
            if not d:
                break
            got += d
        time.sleep(self.delay)   # the behaviour under test, not a readiness wait
        s.sendall(self.reply)
        s.shutdown(socket.SHUT_WR)
        with self.lock:
            self.results.append(bytes(got))


class BannerFirstBackend(Backend):
    """Sends `banner` and FIN at once, then reads everything to EOF."""

    def __init__(self, h, banner, **kw):
        self.banner = banner
        super().__init__(h, **kw)

    def handle(self, s, idx):
        s.sendall(self.banner)
        s.shutdown(socket.SHUT_WR)
        n, sha = _drain_hashed(s)
        with self.lock:
            self.results.append({"recv": n, "recv_sha": sha.hexdigest()})


# --- flows: many client connections driven by one selector --------------

class Flow:
    """One client connection: send a Source, hash what comes back."""

    def __init__(self, sock, src, shut_wr=True):
        self.sock = sock
        self.src = src
        self.shut_wr = shut_wr
        self.shut_done = False
        self.recv = 0
        self.sha = hashlib.sha256()
        self.eof = False
        self.error = None
        self.first_byte_at = None

    def done(self):
        return self.error is not None or (self.eof and
                                          (self.shut_done or not self.shut_wr))


def run_flows(flows, timeout):
    """Drive flows until every one saw EOF (or failed); bounded by timeout."""
    sel = selectors.DefaultSelector()
    for f in flows:
        f.sock.setblocking(False)
        sel.register(f.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, f)
    deadline = time.monotonic() + timeout
    live = len(flows)
    while live and time.monotonic() < deadline:
        for key, ev in sel.select(0.2):
            f = key.data
            try:
                if ev & selectors.EVENT_WRITE:
                    if not f.src.done():
                        try:
                            n = f.sock.send(f.src.peek())
                            f.src.advance(n)
                        except (BlockingIOError, InterruptedError):
                            pass
                    if f.src.done() and not f.shut_done:
                        if f.shut_wr:
                            f.sock.shutdown(socket.SHUT_WR)
                        f.shut_done = True
                if ev & selectors.EVENT_READ:
                    try:
                        d = f.sock.recv(1024 * 1024)
                        if d:
                            f.sha.update(d)
                            f.recv += len(d)
                        else:
                            f.eof = True
                    except (BlockingIOError, InterruptedError):
                        pass
            except OSError as e:
                f.error = repr(e)
            mask = 0
            if f.error is None:
                if not f.eof:
                    mask |= selectors.EVENT_READ
                if not f.shut_done:
                    mask |= selectors.EVENT_WRITE
            if mask == 0:
                sel.unregister(f.sock)
                live -= 1
            elif mask != key.events:
                sel.modify(f.sock, mask, f)
    sel.close()
    for f in flows:
        f.sock.setblocking(True)
    stuck = [i for i, f in enumerate(flows) if not f.done()]
    check(not stuck, "%d of %d flows not finished after %.0fs (first: #%d "
          "sent %d/%d recv %d)" % (len(stuck), len(flows), timeout, stuck[0],
                                   flows[stuck[0]].src.pos,
                                   flows[stuck[0]].src.total,
                                   flows[stuck[0]].recv) if stuck else "")
    return flows


# --- the per-test context -------------------------------------------------

class Harness:
    def __init__(self, test_name, build=None):
        self.name = test_name
        self.build = os.path.abspath(build or BUILD)
        self.dir = tempfile.mkdtemp(prefix="upseal-it-", dir="/tmp")
        self.procs = []
        self.backends = []
        self.socks = []
        self.notes = []
        self.cleanups = []
        self.drain_s = 2
        self.failed = False
        self._nprocs = 0
        self._ncerts = 0

    # -- misc
    def note(self, text):
        self.notes.append(text)

    def skip(self, why):
        """End this test as skipped (see Skip); does not return."""
        raise Skip(why)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def bin(self, name, build=None):
        """A binary of the build under test, or of `build` (another dir)."""
        p = os.path.join(build or self.build, name)
        check(os.access(p, os.X_OK), "binary %s not built" % p)
        return p

    def run(self, argv, timeout=30, input=None):
        """Run a command to completion (bounded); return CompletedProcess."""
        try:
            r = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=timeout,
                               cwd=self.dir)
        except subprocess.TimeoutExpired:
            raise TestFailure("%r did not finish within %ss" % (argv, timeout))
        r.out = r.stdout.decode("utf-8", "replace")
        r.err = r.stderr.decode("utf-8", "replace")
        for text in (r.out, r.err):
            check(not BAD_LOG.search(text),
                  "%s reported:\n%s" % (argv[0], tail(text, 60)))
        return r

    # -- identities
    def ca(self, name):
        r = self.run([self.bin("upseal-certs"), "ca", name, "--dir", self.dir])
        check(r.returncode == 0, "upseal-certs ca %s: exit %d: %s"
              % (name, r.returncode, r.err.strip()))
        return os.path.join(self.dir, name)   # the --ca argument

    def identity(self, name, ca=None, dns=(), ip=(), days=None, uri=()):
        argv = [self.bin("upseal-certs"), "new", name, "--dir", self.dir]
        if days is not None:
            argv += ["--days", str(days)]
        for d in dns:
            argv += ["--dns", d]
        for a in ip:
            argv += ["--ip", a]
        for u in uri:
            argv += ["--uri", u]
        if ca:
            argv += ["--ca", ca]
        r = self.run(argv)
        check(r.returncode == 0, "upseal-certs new %s: exit %d: %s"
              % (name, r.returncode, r.err.strip()))
        pin = r.out.strip()
        check(re.fullmatch(r"sha256//[A-Za-z0-9+/]{43}=", pin),
              "upseal-certs new %s printed %r, want one sha256// pin line"
              % (name, r.out))
        crt = os.path.join(self.dir, name + ".crt")
        key = os.path.join(self.dir, name + ".key")
        check(os.path.exists(crt) and os.path.exists(key),
              "upseal-certs new %s: %s or %s missing" % (name, crt, key))
        return Identity(name, crt, key, pin)

    # -- config files
    def write_ini(self, name, tunnels, upseal=None):
        """tunnels: {section: {key: value or [values]}}; returns the path."""
        opts = {"log_level": "info", "log_format": "text",
                "drain_timeout": "%ds" % self.drain_s}
        opts.update(upseal or {})
        lines = ["[upseal]"] + ["%s = %s" % kv for kv in opts.items()
                                if kv[1] is not None]
        for sec, keys in tunnels.items():
            lines.append("")
            lines.append("[%s]" % sec)
            for k, v in keys.items():
                if v is None:
                    continue
                for one in (v if isinstance(v, (list, tuple)) else [v]):
                    lines.append("%s = %s" % (k, one))
        p = self.path(name + ".ini")
        with open(p, "w") as f:
            f.write("\n".join(lines) + "\n")
        return p

    def write_text(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    # -- daemons
    def start(self, binary, ini, name=None, wait_ready=True, args=(),
              build=None):
        self._nprocs += 1
        name = name or "%s-%d" % (binary.replace("upseal-", ""), self._nprocs)
        # UPSEAL_WRAP: a launcher put before every daemon (tests/valgrind.sh
        # sets `valgrind ...`); it must exec the daemon in the same pid.
        wrap = shlex.split(os.environ.get("UPSEAL_WRAP", ""))
        p = Proc(self, name, wrap + [self.bin(binary, build)] + list(args) +
                 ["-c", ini], self.dir)
        self.procs.append(p)
        if wait_ready:
            p.wait_ready()
        return p

    def _tunnels(self, tunnels, defaults):
        out = {}
        for sec, keys in tunnels.items():
            t = dict(defaults)
            t.update(keys)
            out[sec] = t
        return out

    def start_server(self, tunnels, upseal=None, name=None, build=None):
        """tunnels: {name: {connect, cert, key, pin, ...}}; listen 127.0.0.1:0.
        build: run another build dir's binary (e.g. the previous version)."""
        t = self._tunnels(tunnels, {"listen": "127.0.0.1:0",
                                    "handshake_timeout": "5s"})
        ini = self.write_ini(name or "server%d" % (len(self.procs) + 1), t, upseal)
        return self.start("upseal-server", ini, name=name, build=build)

    def start_client(self, tunnels, upseal=None, name=None, build=None):
        t = self._tunnels(tunnels, {"listen": "127.0.0.1:0",
                                    "connect_timeout": "3s",
                                    "handshake_timeout": "5s"})
        ini = self.write_ini(name or "client%d" % (len(self.procs) + 1), t, upseal)
        return self.start("upseal-client", ini, name=name, build=build)

    def pair(self, backend_addr, server_opts=None, client_opts=None,
             upseal=None, tunnel="app"):
        """The standard chain: identities, server in front of backend_addr,
        client in front of the server. Returns (client, server, ids)."""
        sid = self.identity("srv")
        cid = self.identity("cli")
        so = {"connect": backend_addr, "cert": sid.crt, "key": sid.key,
              "pin": [cid.pin]}
        so.update(server_opts or {})
        srv = self.start_server({tunnel: so}, upseal, name="server")
        co = {"connect": srv.addr(tunnel), "cert": cid.crt, "key": cid.key,
              "pin": [sid.pin]}
        co.update(client_opts or {})
        cli = self.start_client({tunnel: co}, upseal, name="client")
        return cli, srv, {"server": sid, "client": cid}

    # -- backends
    def _backend(self, cls, *a, **kw):
        b = cls(self, *a, **kw)
        self.backends.append(b)
        return b

    def echo_backend(self, **kw):
        return self._backend(EchoBackend, **kw)

    def counting_backend(self, **kw):
        return self._backend(CountingBackend, **kw)

    def source_sink_backend(self, send_bytes, **kw):
        return self._backend(SourceSinkBackend, send_bytes, **kw)

    def delayed_reply_backend(self, reply, delay=0.3, **kw):
        return self._backend(DelayedReplyBackend, reply, delay, **kw)

    def banner_first_backend(self, banner, **kw):
        return self._backend(BannerFirstBackend, banner, **kw)

    # -- client sockets
    def connect(self, addr, timeout=10.0):
        fam, sa = sockaddr(addr)
        s = socket.socket(fam, socket.SOCK_STREAM)
        self.socks.append(s)
        s.settimeout(timeout)
        s.connect(sa)
        return s

    def echo_roundtrip(self, addr, data=b"ping\n", timeout=10.0):
        """Connect, send, read back len(data) bytes; return the socket."""
        s = self.connect(addr, timeout)
        s.sendall(data)
        got = recv_exact(s, len(data), timeout)
        check_eq(got, data, "echo through %s" % addr)
        return s

    def openssl(self, args, input=None, timeout=20):
        return self.run(["openssl"] + args, timeout=timeout, input=input)

    # -- teardown
    def teardown(self, test_failed):
        problems = []
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:
                problems.append("cleanup: %r" % e)
        for p in reversed(self.procs):
            was_running = p.poll() is None
            rc = p.stop()
            log = p.log()
            m = BAD_LOG.search(log)
            if m:
                problems.append("%s (pid %d) log has %r:\n%s"
                                % (p.name, p.pid, m.group(0),
                                   _around(log, m.start())))
            if p.killed:
                continue
            if p.expect_exit is not None:
                if rc != p.expect_exit:
                    problems.append("%s exited %r, expected %r"
                                    % (p.name, rc, p.expect_exit))
                continue
            if getattr(p, "sigkilled_by_harness", False):
                problems.append("%s (pid %d) did not exit after SIGTERM"
                                % (p.name, p.pid))
            elif rc != 0:
                problems.append("%s (pid %d) exited %r %s" %
                                (p.name, p.pid, rc,
                                 "after SIGTERM" if was_running or
                                 p.stop_signal_sent else "on its own"))
        for b in self.backends:
            b.stop()
        for p in self.procs:
            p.final_log = p.log()
        keep = (test_failed or problems) and os.environ.get("UPSEAL_KEEP") == "1"
        if keep:
            self.note("kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def _around(text, pos, before=5, after=25):
    lines = text.splitlines()
    line_no = text.count("\n", 0, pos)
    lo = max(0, line_no - before)
    return "\n".join("    | " + l for l in lines[lo:line_no + after])


def recv_exact(s, n, timeout=10.0):
    """Read exactly n bytes (fewer if EOF first); bounded by timeout."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        check(left > 0, "recv: %d of %d bytes after %.1fs" % (len(buf), n, timeout))
        s.settimeout(left)
        try:
            d = s.recv(n - len(buf))
        except socket.timeout:
            raise TestFailure("recv: %d of %d bytes after %.1fs"
                              % (len(buf), n, timeout))
        if not d:
            break
        buf += d
    return bytes(buf)


def recv_all(s, timeout=10.0, limit=512 * 1024 * 1024):
    """Read to EOF; returns (bytes, how) with how in eof|reset; bounded."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < limit:
        left = deadline - time.monotonic()
        check(left > 0, "recv_all: no EOF after %.1fs (%d bytes)"
              % (timeout, len(buf)))
        s.settimeout(left)
        try:
            d = s.recv(256 * 1024)
        except socket.timeout:
            raise TestFailure("recv_all: no EOF after %.1fs (%d bytes)"
                              % (timeout, len(buf)))
        except ConnectionResetError:
            return bytes(buf), "reset"
        if not d:
            return bytes(buf), "eof"
        buf += d
    raise TestFailure("recv_all: more than %d bytes" % limit)


def wait_closed(s, timeout):
    """Wait for EOF or reset, discarding data; returns (how, seconds, nbytes)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    n = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open", time.monotonic() - t0, n
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return "open", time.monotonic() - t0, n
        except ConnectionResetError:
            return "reset", time.monotonic() - t0, n
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                return "reset", time.monotonic() - t0, n
            raise
        if not d:
            return "eof", time.monotonic() - t0, n
        n += len(d)
