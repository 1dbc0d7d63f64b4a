#!/usr/bin/env python3
"""
upseal's side-by-side benchmark (issue 4): upseal against stunnel4, haproxy
and nginx (stream module), each a client-side + server-side mutual-TLS pair in
front of the same backend, plus a direct row without a tunnel.

    python3 bench/run.py [--build DIR] [--rounds N] [--bulk-mib N] [--idle N]
                         [--contenders a,b,...] [--quick] [--json FILE] [--perf]

`make bench` builds $(BUILD)/bench/{load,backend,aead} and runs this. Options
also come from the environment: BENCH_ROUNDS, BENCH_BULK_MIB, BENCH_IDLE,
BENCH_CONTENDERS, BENCH_QUICK=1, BENCH_JSON, BENCH_SCALING=yes|no,
BENCH_UPSEAL_WORKERS (workers of the upseal rows, default 1), BENCH_PINFILE=yes|no
(a 10,000-pin pin_file against one pin, bench/pinfile.py), BENCH_PERF=1 (perf record of
both upseal sides in the last round's bulk test; BENCH_PERF_DATA=FILE keeps
the perf.data).

Each round starts every contender fresh, in turn (A B C ... A B C ...; the
order rotates by one each round), and runs against it, in this order: idle
connections (RSS of both sides before and after, per connection), 64-byte
ping-pong, connection rate at concurrency 1 and 32 (CPU of both sides per
connection), bulk one way (CPU of both sides per GiB). The table shows the
median over rounds of each metric and its ratio to upseal's.

Everything listens on 127.0.0.1 with ports picked at run time; every process
started here is ended by its pid; the temp dir is removed at exit.
"""

import argparse
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GIB = 1024 ** 3
MIB = 1024 ** 2

# OpenSSL-based peers: TLS 1.2, ECDHE-ECDSA with AES-128-GCM (what OpenSSL
# picks first with AES-NI). upseal offers CHACHA20 first (fastest in mbedTLS
# 2.28) and two upseal sidecars negotiate it.
PEER_CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"
NGINX_STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"
ALL = ["upseal", "upseal+res", "upseal+pool", "upseal+pp", "upseal+ktls", "upseal36",
       "stunnel", "stunnel+res", "haproxy", "haproxy+res", "nginx", "nginx+res",
       "direct"]
# upseal36: the same sources built against mbedTLS 3.6 by tests/mbedtls36.sh
# (two sidecars then speak TLS 1.3; no TLS 1.3 tickets, so no +res row).
BUILD36 = os.environ.get("BENCH_BUILD36") or os.path.join(ROOT, "build-mbedtls36")
# upseal-prev: the previous version (tests/prev-version), as tests/prev-build.sh
# builds it, so old and new binaries are measured in one run. Not in ALL:
# name it, e.g. BENCH_CONTENDERS=upseal,upseal-prev,upseal+res,upseal-prev+res.
BUILD_PREV = os.environ.get("BENCH_BUILD_PREV") or os.path.join(ROOT, "build-prev")
# Set in main(): whether this upseal build knows the `resumption` key (the
# resumption work of issue 4). Without it, "upseal" is the only upseal row.
UPSEAL_HAS_RESUMPTION = False
# Likewise for `workers` (a build before it runs one thread anyway). The
# upseal rows run BENCH_UPSEAL_WORKERS workers, 1 by default like the peers.
UPSEAL_HAS_WORKERS = False
UPSEAL_WORKERS = int(os.environ.get("BENCH_UPSEAL_WORKERS") or 1)
# upseal+pool: resumption on and `pool = POOL_SIZE` on the client (known
# to the build if `upseal-client --check` accepts the key).
POOL_SIZE = 8
# Paced connection test: one connection at a time, this many ms apart.
GAP_MS = 5
UPSEAL_HAS_POOL = False
# upseal+ktls: `ktls = auto` (the kernel's TLS record layer after mbedTLS's
# handshake, issue 14); every other upseal row says `ktls = off`, so that
# they measure mbedTLS's records whatever the kernel. The row runs only where
# the kernel has the TLS ULP and the build knows the key; after its run the
# runner reads upseal_ktls_connections_total to say whether kTLS engaged.
UPSEAL_HAS_KTLS = False


def kernel_has_ktls():
    """The kernel answers TCP_ULP "tls" on an unconnected socket with
    ENOTCONN when it has the ULP (ENOENT when not)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_TCP, 31, b"tls")   # TCP_ULP
        return True
    except OSError as e:
        return e.errno == 107   # ENOTCONN
    finally:
        s.close()


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def children_of(pids):
    """Every descendant of pids (scan of /proc), pids included."""
    want = set(pids)
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    grew = True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in want and p not in want:
                want.add(p)
                grew = True
    return want


def cpu_of(pids):
    t = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fl = f.read().rsplit(")", 1)[1].split()
            t += int(fl[11]) + int(fl[12])
        except (OSError, IndexError, ValueError):
            pass
    return t / CLK


def rss_kib_of(pids):
    t = 0
    for p in pids:
        try:
            with open("/proc/%d/statm" % p) as f:
                t += int(f.read().split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            pass
    return t


class Proc:
    def __init__(self, name, argv, tmp, cwd=None):
        self.name = name
        self.logpath = os.path.join(tmp, name + ".log")
        self.logf = open(self.logpath, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=self.logf, stderr=subprocess.STDOUT,
                                  cwd=cwd or tmp)
        self.pid = self.p.pid

    def log(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        tree = children_of([self.pid]) if self.alive() else set()
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:          # what is left of our own tree only
            try:
                if pid != self.pid:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.alive():
            self.p.kill()
            self.p.wait(5)
        self.logf.close()


def listening(port):
    """Whether a TCP socket listens on 127.0.0.1:port (from /proc/net/tcp,
    so that waiting for it opens no connection through a tunnel)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for ln in f:
            w = ln.split()
            if len(w) > 3 and w[1] == want and w[3] == "0A":
                return True
    return False


def wait_port(port, procs, timeout=15.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for p in procs:
            if not p.alive():
                raise RuntimeError("%s exited at start:\n%s" % (p.name, p.log()[-2000:]))
        if listening(port):
            return
        time.sleep(0.02)
    raise RuntimeError("port %d never opened" % port)


def wait_log(proc, text, timeout=15.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        lg = proc.log()
        if text in lg:
            return lg
        if not proc.alive():
            break
        time.sleep(0.05)
    raise RuntimeError("%s: no %r:\n%s" % (proc.name, text, proc.log()[-2000:]))


# ---- contenders: start() returns the plaintext address the load tool uses ---

class Contender:
    def __init__(self, name, ids, tmp, build):
        self.name = name
        self.pool = name.endswith("+pool")
        # +pp: the PROXY protocol on both sides (load -> client: v2 header
        # read; server -> backend: v2 header sent), with resumption.
        self.pp = name.endswith("+pp")
        self.resume = name.endswith("+res") or self.pool or self.pp
        self.ktls = name.endswith("+ktls")
        self.status_ports = []
        self.ids = ids
        self.tmp = tmp
        self.build = build
        self.procs = []

    def pids(self):
        return children_of([p.pid for p in self.procs]) if self.procs else set()

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class Direct(Contender):
    def start(self, be_port):
        return "127.0.0.1:%d" % be_port


class Upseal(Contender):
    knows_ktls = True

    def start(self, be_port):
        # log_level = warn, as the peers log only warnings and errors: the
        # `listening`/`ready` lines are info, so ports are picked here.
        i = self.ids
        sp, cp = free_port(), free_port()
        # workers = 1, as the peers run one thread (haproxy nbthread 1,
        # nginx worker_processes 1); scaling.py measures more workers.
        conf = ("[upseal]\nlog_level = warn\ndrain_timeout = 1s\n%s\n[bench]\n"
                "listen = 127.0.0.1:%d\nconnect = 127.0.0.1:%d\ncert = %s\n"
                "key = %s\npin = %s\n")
        if UPSEAL_HAS_RESUMPTION:
            conf += "resumption = %s\n" % ("yes" if self.resume else "no")
        if UPSEAL_HAS_KTLS and self.knows_ktls:
            conf += "ktls = %s\n" % ("auto" if self.ktls else "off")
        if self.ktls:   # a status endpoint, to tell whether kTLS engaged
            self.status_ports = [free_port(), free_port()]
            conf = conf.replace("[bench]", "status = 127.0.0.1:%d\n[bench]")
        w = ("workers = %d\n" % UPSEAL_WORKERS) if UPSEAL_HAS_WORKERS else ""
        st = tuple(self.status_ports[:1]) if self.ktls else ()
        srv = self.write("upseal-server.ini", conf % ((
            w,) + st + (sp, be_port, i["srv_crt"], i["srv_key"], i["cli_pin"])) +
            ("proxy_protocol = v2\n" if self.pp else ""))
        st = tuple(self.status_ports[1:]) if self.ktls else ()
        cli = self.write("upseal-client.ini", conf % ((
            w,) + st + (cp, sp, i["cli_crt"], i["cli_key"], i["srv_pin"])) +
            ("pool = %d\n" % POOL_SIZE if self.pool else "") +
            ("proxy_protocol = accept\n" if self.pp else ""))
        self.procs.append(Proc("upseal-server", [
            os.path.join(self.build, "upseal-server"), "-c", srv], self.tmp))
        wait_port(sp, self.procs)
        self.procs.append(Proc("upseal-client", [
            os.path.join(self.build, "upseal-client"), "-c", cli], self.tmp))
        wait_port(cp, self.procs)
        return "127.0.0.1:%d" % cp


    def stop(self):
        if self.ktls and self.procs:
            self.say_ktls()
        super().stop()

    def say_ktls(self):
        """Log how many connections each side carried on kTLS."""
        import urllib.request
        seen = []
        for side, port in zip(("server", "client"), self.status_ports):
            n = 0
            try:
                with urllib.request.urlopen(
                        "http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                    for ln in r.read().decode().splitlines():
                        if ln.startswith("upseal_ktls_connections_total{"):
                            n += int(float(ln.split()[-1]))
            except OSError as e:
                seen.append("%s: no metrics (%s)" % (side, e))
                continue
            seen.append("%s %d" % (side, n))
        engaged = all(s.split()[-1].isdigit() and s.split()[-1] != "0"
                      for s in seen)
        log("%s: connections on kTLS (tx + rx): %s%s" % (
            self.name, ", ".join(seen),
            "" if engaged else " (NOT engaged: this row measured mbedTLS)"))


class Upseal36(Upseal):
    """upseal built against mbedTLS 3.6 (a copy in the snapshot's b36/)."""

    def __init__(self, name, ids, tmp, build):
        super().__init__(name, ids, tmp, os.path.join(build, "b36"))


class UpsealPrev(Upseal):
    """The previous version of upseal (a copy in the snapshot's prev/)."""

    knows_ktls = False   # before issue 14: no `ktls` key, no kTLS

    def __init__(self, name, ids, tmp, build):
        super().__init__(name, ids, tmp, os.path.join(build, "prev"))


class Stunnel(Contender):
    def start(self, be_port):
        i = self.ids
        sp, cp = free_port(), free_port()
        res = "" if self.resume else "sessionResume = no\n"
        common = ("sslVersion = TLSv1.2\nciphers = %s\nCAfile = %s\n"
                  "verifyChain = yes\n%s" % (PEER_CIPHER, i["ca_crt"], res))
        srv = self.write("stunnel-server.conf", (
            "foreground = yes\npid =\nsyslog = no\ndebug = 4\n\n[bench]\n"
            "accept = 127.0.0.1:%d\nconnect = 127.0.0.1:%d\ncert = %s\nkey = %s\n%s")
            % (sp, be_port, i["srv_crt"], i["srv_key"], common))
        cli = self.write("stunnel-client.conf", (
            "foreground = yes\npid =\nsyslog = no\ndebug = 4\n\n[bench]\nclient = yes\n"
            "accept = 127.0.0.1:%d\nconnect = 127.0.0.1:%d\ncert = %s\nkey = %s\n"
            "checkHost = srv\n%s") % (cp, sp, i["cli_crt"], i["cli_key"], common))
        exe = shutil.which("stunnel4") or shutil.which("stunnel")
        self.procs.append(Proc("stunnel-server", [exe, srv], self.tmp))
        wait_port(sp, self.procs)
        self.procs.append(Proc("stunnel-client", [exe, cli], self.tmp))
        wait_port(cp, self.procs)
        return "127.0.0.1:%d" % cp


def haproxy_head():
    """The global and defaults sections of every haproxy side: one thread."""
    return ("global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode tcp\n"
            "  maxconn 8000\n  timeout connect 5s\n  timeout client 10m\n"
            "  timeout server 10m\n\n")


class Haproxy(Contender):
    def start(self, be_port):
        i = self.ids
        sp, cp = free_port(), free_port()
        tls = ("ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2 ciphers %s ca-file %s "
               "verify required" % (PEER_CIPHER, i["ca_crt"]))
        head = haproxy_head()
        srv = self.write("haproxy-server.cfg", head + (
            "listen bench\n  bind 127.0.0.1:%d ssl crt %s %s%s\n"
            "  server be 127.0.0.1:%d\n") % (
            sp, i["srv_pem"], tls, "" if self.resume else " no-tls-tickets", be_port))
        cli = self.write("haproxy-client.cfg", head + (
            "listen bench\n  bind 127.0.0.1:%d\n"
            "  server s 127.0.0.1:%d ssl crt %s %s verifyhost srv%s\n") % (
            cp, sp, i["cli_pem"], tls, "" if self.resume else " no-ssl-reuse"))
        self.procs.append(Proc("haproxy-server", ["haproxy", "-db", "-f", srv], self.tmp))
        wait_port(sp, self.procs)
        self.procs.append(Proc("haproxy-client", ["haproxy", "-db", "-f", cli], self.tmp))
        wait_port(cp, self.procs)
        return "127.0.0.1:%d" % cp


class Nginx(Contender):
    def start(self, be_port):
        i = self.ids
        sp, cp = free_port(), free_port()

        def conf(side, server):
            return (("load_module %s;\ndaemon off;\nmaster_process on;\n"
                     "worker_processes 1;\npid %s/nginx-%s.pid;\n"
                     "error_log %s/nginx-%s.err error;\n"
                     "events { worker_connections 8192; }\n"
                     "stream {\n  server {\n%s  }\n}\n")
                    % (NGINX_STREAM_SO, self.tmp, side, self.tmp, side, server))
        onoff = "on" if self.resume else "off"
        srv = self.write("nginx-server.conf", conf("server", (
            "    listen 127.0.0.1:%d ssl;\n    ssl_certificate %s;\n"
            "    ssl_certificate_key %s;\n    ssl_client_certificate %s;\n"
            "    ssl_verify_client on;\n    ssl_protocols TLSv1.2;\n"
            "    ssl_ciphers %s;\n    ssl_session_tickets %s;\n"
            "    ssl_session_cache %s;\n    proxy_pass 127.0.0.1:%d;\n"
            "    proxy_timeout 10m;\n    proxy_half_close on;\n") % (
            sp, i["srv_crt"], i["srv_key"], i["ca_crt"], PEER_CIPHER, onoff,
            "shared:bench:1m" if self.resume else "off", be_port)))
        cli = self.write("nginx-client.conf", conf("client", (
            "    listen 127.0.0.1:%d;\n    proxy_pass 127.0.0.1:%d;\n"
            "    proxy_ssl on;\n    proxy_ssl_certificate %s;\n"
            "    proxy_ssl_certificate_key %s;\n"
            "    proxy_ssl_trusted_certificate %s;\n    proxy_ssl_verify on;\n"
            "    proxy_ssl_name srv;\n    proxy_ssl_protocols TLSv1.2;\n"
            "    proxy_ssl_ciphers %s;\n    proxy_ssl_session_reuse %s;\n"
            "    proxy_timeout 10m;\n    proxy_half_close on;\n") % (
            cp, sp, i["cli_crt"], i["cli_key"], i["ca_crt"], PEER_CIPHER, onoff)))
        for side, path, port in (("server", srv, sp), ("client", cli, cp)):
            self.procs.append(Proc("nginx-" + side, [
                "nginx", "-p", self.tmp, "-e", "%s/nginx-%s.early" % (self.tmp, side),
                "-c", path], self.tmp))
            wait_port(port, self.procs)
        return "127.0.0.1:%d" % cp


KINDS = {"upseal": Upseal, "upseal36": Upseal36, "upseal-prev": UpsealPrev,
         "stunnel": Stunnel,
         "haproxy": Haproxy, "nginx": Nginx, "direct": Direct}


def available(name):
    base = name.split("+")[0]
    if base == "stunnel":
        return bool(shutil.which("stunnel4") or shutil.which("stunnel"))
    if base == "haproxy":
        return bool(shutil.which("haproxy"))
    if base == "nginx":
        return bool(shutil.which("nginx")) and os.path.exists(NGINX_STREAM_SO)
    if base in ("upseal36", "upseal-prev"):
        d = BUILD36 if base == "upseal36" else BUILD_PREV
        return all(os.access(os.path.join(d, b), os.X_OK)
                   for b in ("upseal-server", "upseal-client"))
    return True


# ---- the load tool ---------------------------------------------------------

def load(build, args, timeout):
    r = subprocess.run([os.path.join(build, "bench", "load")] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    out = r.stdout.decode().strip().splitlines()
    if not out:
        raise RuntimeError("load %s: no output (exit %d) %s"
                           % (args[0], r.returncode, r.stderr.decode()[-500:]))
    return json.loads(out[-1])


def measure(c, addr, build, cfg):
    """One contender, already started: every test once. Returns a dict."""
    m = {}
    # +pp: every connection of the load tool begins with a PROXY v2 header.
    pp = ["--proxy-v2"] if getattr(c, "pp", False) else []
    addr_args = ["--addr", addr] + pp
    pids = c.pids()
    # idle: RSS of both sides after one warm-up connection, then with N held.
    load(build, ["rate"] + addr_args + ["--conc", "1", "--max", "3"], 60)
    time.sleep(0.2)
    base = rss_kib_of(pids)
    lp = subprocess.Popen([os.path.join(build, "bench", "load"), "idle"] +
                          addr_args + ["--conns", str(cfg.idle), "--conc", "32"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([lp.stdout], [], [], 300)
        line = lp.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("load idle: no result")
        r = json.loads(line)
        time.sleep(0.5)
        pids = c.pids()
        held = rss_kib_of(pids)
    finally:
        lp.stdin.close()
        try:
            lp.wait(60)
        except subprocess.TimeoutExpired:
            lp.kill()
            lp.wait()
    m["idle_ok"], m["idle_errors"] = r["ok"], r["errors"]
    if c.procs and r["ok"]:
        m["rss_kib_per_conn"] = (held - base) / r["ok"]
        m["rss_base_kib"] = base
    time.sleep(0.5)
    # ping-pong
    r = load(build, ["pingpong"] + addr_args + ["--count", str(cfg.pings)], 120)
    m["pp_p50_us"], m["pp_p99_us"] = r["p50_us"], r["p99_us"]
    # connection rate at 1 and 32
    for conc in (1, 32):
        pids = c.pids()
        c0 = cpu_of(pids)
        r = load(build, ["rate"] + addr_args + ["--conc", str(conc),
                         "--seconds", str(cfg.rate_s), "--max",
                         str(cfg.rate_max)], 120)
        time.sleep(0.3)   # let the sides finish closing what the run opened
        c1 = cpu_of(c.pids())
        k = "c%d" % conc
        m[k + "_cps"] = r["conn_per_s"]
        m[k + "_p50_us"], m[k + "_p99_us"] = r["p50_us"], r["p99_us"]
        m[k + "_errors"] = r["errors"]
        m[k + "_load_cpu_s"] = r["load_cpu_s"]
        if c.procs and r["ok"]:
            m[k + "_cpu_ms_per_conn"] = (c1 - c0) * 1000 / r["ok"]
    # paced arrivals: one connection at a time, GAP_MS between them, as a
    # proxy sees when its clients are not a load generator's tight loop
    r = load(build, ["rate"] + addr_args + ["--conc", "1", "--gap-ms",
                     str(GAP_MS), "--seconds", str(cfg.rate_s),
                     "--max", str(cfg.rate_max)], 120)
    m["paced_p50_us"], m["paced_p99_us"] = r["p50_us"], r["p99_us"]
    m["paced_errors"] = r["errors"]
    # bulk one way
    pids = c.pids()
    c0 = cpu_of(pids)
    perf = None
    if cfg.perf_now and c.name == "upseal":
        perf = subprocess.Popen(["perf", "record", "-q", "-o", cfg.perf_data, "-p",
                                 ",".join(str(p.pid) for p in c.procs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    r = load(build, ["bulk"] + addr_args + ["--bytes", str(cfg.bulk)], 900)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    c1 = cpu_of(pids)
    if r.get("error"):
        raise RuntimeError("bulk: %s" % r["error"])
    m["bulk_mbps"] = r["mbps"]
    m["bulk_load_cpu_s"] = r["load_cpu_s"]
    if c.procs:
        m["bulk_cpu_s_per_gib"] = (c1 - c0) / (cfg.bulk / GIB)
    return m


# ---- report -----------------------------------------------------------------

COLUMNS = [  # key, header, format, better ("hi"/"lo")
    ("bulk_mbps", "bulk MB/s", "%.0f"),
    ("bulk_cpu_s_per_gib", "CPU s/GiB (both)", "%.2f"),
    ("c1_cps", "conn/s c=1", "%.0f"),
    ("c32_cps", "conn/s c=32", "%.0f"),
    ("c1_cpu_ms_per_conn", "CPU ms/conn c=1", "%.2f"),
    ("c32_cpu_ms_per_conn", "CPU ms/conn c=32", "%.2f"),
    ("c1_p50_us", "CFB p50 c=1 ms", "ms"),
    ("c1_p99_us", "CFB p99 c=1 ms", "ms"),
    ("paced_p50_us", "CFB p50 c=1 paced ms", "ms"),
    ("paced_p99_us", "CFB p99 c=1 paced ms", "ms"),
    ("c32_p50_us", "CFB p50 c=32 ms", "ms"),
    ("c32_p99_us", "CFB p99 c=32 ms", "ms"),
    ("pp_p50_us", "ping-pong p50 µs", "%.0f"),
    ("pp_p99_us", "ping-pong p99 µs", "%.0f"),
    ("rss_kib_per_conn", "RSS KiB/idle conn", "%.1f"),
]


def fmt(v, f):
    if f == "ms":
        return "%.2f" % (v / 1000.0)
    return f % v


def median_of(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] >= 0]
    return statistics.median(vals) if vals else None


def table(results, names, aead):
    med = {n: {k: median_of(results[n], k) for k, _, _ in COLUMNS} for n in names}
    out = ["| contender | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
    for n in names:
        cells = []
        ref = ("upseal+res" if (n.endswith("+res") or
                               n in ("upseal+pool", "upseal+pp")) and
               "upseal+res" in med else "upseal")
        up = med.get(ref, {})
        for k, _, f in COLUMNS:
            v = med[n][k]
            if v is None:
                cells.append("—")
                continue
            s = fmt(v, f)
            u = up.get(k)
            if n != ref and u:
                s += " (%.2f×)" % (v / u)
            cells.append(s)
        out.append("| %s | %s |" % (n, " | ".join(cells)))
    if aead:
        cc = aead["CHACHA20-POLY1305"]
        ceil = min(cc["seal_mbps"], cc["open_mbps"])
        crypto = GIB / 1e6 / cc["seal_mbps"] + GIB / 1e6 / cc["open_mbps"]
        cells = ["—"] * len(COLUMNS)
        cells[0] = "%.0f" % ceil
        cells[1] = "%.2f" % crypto
        up = med.get("upseal", {})
        u = up.get("bulk_mbps")
        if u:
            cells[0] += " (upseal at %.0f%%)" % (100 * u / ceil)
        u = up.get("bulk_cpu_s_per_gib")
        if u:
            cells[1] += " (upseal %.2f×)" % (u / crypto)
        out.append("| mbedTLS ceiling (ChaCha20-Poly1305, 1 core) | %s |" % " | ".join(cells))
    return "\n".join(out)


def pool_target_line(results, names):
    """Issue 4's latency target: upseal+pool's connect-to-first-byte p50 at
    c=1 against the best peer's (the lowest of every non-upseal row but
    direct)."""
    if "upseal+pool" not in names:
        return None
    out = []
    for key, what in (("c1_p50_us", "back to back"),
                      ("paced_p50_us", "paced, %d ms apart" % GAP_MS)):
        mine = median_of(results["upseal+pool"], key)
        peers = [(median_of(results[n], key), n) for n in names
                 if not n.startswith("upseal") and n != "direct"]
        peers = [(v, n) for v, n in peers if v is not None]
        if mine is None or not peers:
            continue
        best, who = min(peers)
        out.append("Connect-to-first-byte p50 at c=1 (%s): upseal+pool (pool = "
                   "%d) %.2f ms, best peer %s %.2f ms: %.2f× (target ≤ 0.5×)."
                   % (what, POOL_SIZE, mine / 1000.0, who, best / 1000.0,
                      mine / best))
    return "\n".join(out) if out else None


def aead_table(aead):
    out = ["| mbedTLS %s, 16 KiB records, 1 core | seal MB/s | open MB/s | "
           "CPU s per GiB (seal + open) |" % aead["mbedtls"], "|---|---|---|---|"]
    for s in ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"):
        d = aead[s]
        out.append("| %s | %.0f | %.0f | %.2f |" % (
            s, d["seal_mbps"], d["open_mbps"],
            GIB / 1e6 / d["seal_mbps"] + GIB / 1e6 / d["open_mbps"]))
    return "\n".join(out)


def versions():
    v = {}

    def first(argv, pat=None):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=10)
            lines = r.stdout.decode(errors="replace").splitlines()
            for ln in lines:
                if pat is None or pat in ln:
                    return ln.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "?"
    v["openssl"] = first(["openssl", "version"])
    v["stunnel"] = first([shutil.which("stunnel4") or "stunnel", "-version"], "stunnel")
    v["haproxy"] = first(["haproxy", "-v"], "version")
    v["nginx"] = first(["nginx", "-v"], "version")
    v["mbedtls"] = first(["dpkg-query", "-W", "-f=${Version}", "libmbedtls-dev"])
    return v


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true", default=env("BENCH_QUICK") == "1")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--bulk-mib", type=int, default=None)
    ap.add_argument("--idle", type=int, default=None)
    ap.add_argument("--contenders", default=env("BENCH_CONTENDERS"))
    ap.add_argument("--json", default=env("BENCH_JSON"))
    ap.add_argument("--perf", action="store_true", default=env("BENCH_PERF") == "1")
    ap.add_argument("--scaling", choices=("yes", "no"), default=env("BENCH_SCALING"),
                    help="also measure workers = 1 vs 2 (default: yes unless --quick)")
    ap.add_argument("--bench-bin", default=None,
                    help="dir of load, backend, aead (default BUILD/bench)")
    cfg = ap.parse_args()
    q = cfg.quick
    cfg.build = os.path.abspath(cfg.build)
    cfg.rounds = cfg.rounds or int(env("BENCH_ROUNDS") or (1 if q else 3))
    mib = cfg.bulk_mib or int(env("BENCH_BULK_MIB") or (16 if q else 1024))
    cfg.bulk = mib * MIB
    cfg.idle = cfg.idle or int(env("BENCH_IDLE") or (50 if q else 2000))
    cfg.pings = 300 if q else 5000
    cfg.rate_s = 0.5 if q else 3.0
    cfg.rate_max = 2000 if q else 20000
    names = (cfg.contenders.split(",") if cfg.contenders
             else (["upseal", "direct"] if q else ALL))
    for n in names:
        if n.split("+")[0] not in KINDS:
            ap.error("unknown contender %r (known: %s)" % (n, ", ".join(ALL)))
    skipped = [n for n in names if not available(n)]
    names = [n for n in names if n not in skipped]
    for n in skipped:
        log("skipping %s: not installed" % n)
    cfg.bench_bin = os.path.abspath(cfg.bench_bin or os.path.join(cfg.build, "bench"))
    need = [os.path.join(cfg.build, b) for b in ("upseal-server", "upseal-client",
                                                 "upseal-certs")]
    need += [os.path.join(cfg.bench_bin, b) for b in ("load", "backend", "aead")]
    for b in need:
        if not os.access(b, os.X_OK):
            sys.exit("bench: %s missing: run `make bench-build`" % b)

    tmp = tempfile.mkdtemp(prefix="upseal-bench-")
    procs = []
    cur = [None]

    def on_term(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    try:
        # identities: a CA and two leaves, P-256 ECDSA, made by upseal-certs
        certs = os.path.join(cfg.build, "upseal-certs")
        ids = {}

        def run_certs(*a):
            r = subprocess.run([certs] + list(a), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, check=True, timeout=30)
            return r.stdout.decode().strip().splitlines()[-1]
        run_certs("ca", "ca", "--dir", tmp)
        for side in ("srv", "cli"):
            ids[side + "_pin"] = run_certs("new", side, "--dir", tmp, "--ca",
                                           os.path.join(tmp, "ca"))
            ids[side + "_crt"] = os.path.join(tmp, side + ".crt")
            ids[side + "_key"] = os.path.join(tmp, side + ".key")
            pem = os.path.join(tmp, side + ".pem")
            with open(pem, "w") as f:
                f.write(open(ids[side + "_crt"]).read() + open(ids[side + "_key"]).read())
            ids[side + "_pem"] = pem
        ids["ca_crt"] = os.path.join(tmp, "ca.crt")

        # A copy of the binaries: a rebuild of build/ during the run does not
        # change what is measured.
        snap = os.path.join(tmp, "bin")
        os.makedirs(os.path.join(snap, "bench"))
        for b in ("upseal-server", "upseal-client", "upseal-certs"):
            shutil.copy2(os.path.join(cfg.build, b), os.path.join(snap, b))
        for kind, src, sub in (("upseal36", BUILD36, "b36"),
                               ("upseal-prev", BUILD_PREV, "prev")):
            if not any(n.split("+")[0] == kind for n in names):
                continue
            os.makedirs(os.path.join(snap, sub))
            for b in ("upseal-server", "upseal-client"):
                shutil.copy2(os.path.join(src, b), os.path.join(snap, sub, b))
        for b in ("load", "backend", "aead"):
            shutil.copy2(os.path.join(cfg.bench_bin, b), os.path.join(snap, "bench", b))
        cfg.build = snap
        global UPSEAL_HAS_RESUMPTION, UPSEAL_HAS_WORKERS
        probe = os.path.join(tmp, "probe.ini")

        def accepts(role, tunnel_key, upseal=""):
            """Whether this build's upseal-ROLE --check takes the key
            (builds of older versions lack some)."""
            side = "srv" if role == "server" else "cli"
            peer = "cli" if role == "server" else "srv"
            with open(probe, "w") as f:
                f.write("%s[t]\nlisten = 127.0.0.1:1\nconnect = 127.0.0.1:2\n"
                        "cert = %s\nkey = %s\npin = %s\n%s"
                        % (upseal, ids[side + "_crt"], ids[side + "_key"],
                           ids[peer + "_pin"], tunnel_key))
            return subprocess.run(
                [os.path.join(snap, "upseal-" + role), "--check", "-c", probe],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=30).returncode == 0

        UPSEAL_HAS_RESUMPTION = accepts("server", "resumption = no\n")
        UPSEAL_HAS_WORKERS = accepts("server", "", "[upseal]\nworkers = 1\n")
        if not UPSEAL_HAS_RESUMPTION and "upseal+res" in names:
            log("skipping upseal+res: this build has no `resumption` key")
            names.remove("upseal+res")
        global UPSEAL_HAS_POOL
        UPSEAL_HAS_POOL = accepts("client", "pool = 1\n")
        if not UPSEAL_HAS_POOL and "upseal+pool" in names:
            log("skipping upseal+pool: this build has no `pool` key")
            names.remove("upseal+pool")
        global UPSEAL_HAS_KTLS
        UPSEAL_HAS_KTLS = accepts("server", "ktls = off\n")
        if "upseal+ktls" in names and not (UPSEAL_HAS_KTLS and
                                           kernel_has_ktls()):
            log("skipping upseal+ktls: %s" % (
                "this build has no `ktls` key" if not UPSEAL_HAS_KTLS else
                "this kernel has no kTLS (TCP_ULP tls)"))
            names.remove("upseal+ktls")

        be = Proc("backend", [os.path.join(cfg.build, "bench", "backend")], tmp)
        procs.append(be)
        t_end = time.monotonic() + 10
        be_port = None
        while be_port is None and time.monotonic() < t_end:
            for ln in be.log().splitlines():
                if ln.startswith("port "):
                    be_port = int(ln.split()[1])
            time.sleep(0.02)
        if be_port is None:
            raise RuntimeError("backend did not start")

        r = subprocess.run([os.path.join(cfg.build, "bench", "aead"), "--seconds",
                            "0.2" if q else "1"], stdout=subprocess.PIPE, timeout=120)
        aead = json.loads(r.stdout.decode().strip().splitlines()[-1])

        m0 = machine()
        results = {n: [] for n in names}
        errors = []
        # BENCH_PERF_DATA keeps perf.data for `perf report -i` afterwards.
        cfg.perf_data = env("BENCH_PERF_DATA") or os.path.join(tmp, "perf.data")
        t0 = time.monotonic()
        for rnd in range(cfg.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for n in order:
                cfg.perf_now = cfg.perf and rnd == cfg.rounds - 1
                c = KINDS[n.split("+")[0]](n, ids, tmp, cfg.build)
                cur[0] = c
                t1 = time.monotonic()
                try:
                    addr = c.start(be_port)
                    m = measure(c, addr, cfg.build, cfg)
                    m["round"] = rnd
                    results[n].append(m)
                    log("round %d %-12s %.1fs bulk %.0f MB/s, c32 %.0f conn/s"
                        % (rnd + 1, n, time.monotonic() - t1, m["bulk_mbps"],
                           m["c32_cps"]))
                except Exception as e:   # one contender failing is reported
                    errors.append("%s round %d: %s" % (n, rnd + 1, e))
                    log("round %d %s FAILED: %s" % (rnd + 1, n, e))
                    for p in c.procs:
                        log("%s log tail:\n%s" % (p.name, p.log()[-1500:]))
                finally:
                    c.stop()
                    cur[0] = None
        scaling = None
        want_scaling = (cfg.scaling or ("no" if q else "yes")) == "yes"
        if want_scaling and not (UPSEAL_HAS_WORKERS and available("haproxy")):
            log("skipping the workers scaling: needs haproxy and `workers`")
        elif want_scaling:
            import scaling as scaling_mod
            helpers = {"PEER_CIPHER": PEER_CIPHER, "free_port": free_port,
                       "haproxy_head": haproxy_head,
                       "Proc": Proc, "wait_port": wait_port, "load": load,
                       "cpu_of": cpu_of, "children_of": children_of}
            scaling, serr = scaling_mod.run(cfg, ids, tmp, be_port, helpers, log)
            errors.extend(serr)
        pinres = None
        if (env("BENCH_PINFILE") or ("no" if q else "yes")) == "yes":
            import pinfile
            try:
                pinres = pinfile.run(cfg.build, os.path.join(cfg.build, "bench"),
                                     be_port, tmp, cfg.rounds, cfg.rate_s)
            except Exception as e:   # reported like a failed contender
                errors.append("pinfile: %s" % e)
                log("pinfile FAILED: %s" % e)
        elapsed = time.monotonic() - t0
        m1 = machine()

        print("## upseal benchmark, %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print()
        print("Machine: %d CPUs, %s, kernel %s; load average %s at start, %s at end "
              "(rounds: %d, bulk %d MiB, %d idle connections, %.0f s)."
              % (m0["cpus"], m0["cpu"], m0["kernel"], " ".join(m0["loadavg"]),
                 " ".join(m1["loadavg"]), cfg.rounds, mib, cfg.idle, elapsed))
        print("Versions: " + "; ".join("%s %s" % kv for kv in versions().items()))
        print()
        print(table(results, names, aead))
        print()
        target = pool_target_line(results, names)
        if target:
            print(target)
            print()
        print(aead_table(aead))
        print()
        if scaling is not None:
            import scaling as scaling_mod
            print("Workers (`workers = N`), one upseal side facing haproxy; "
                  "medians over the rounds:")
            print()
            print(scaling_mod.table(scaling))
            print()
        if pinres is not None:
            import pinfile
            print("A %d-pin `pin_file` against a one-pin file, upseal-server "
                  "with workers = 1, full handshakes (bench/pinfile.py):"
                  % pinfile.NPINS)
            print()
            print(pinfile.table(pinres))
            print()
        d = results.get("direct")
        if d:
            print("Load tool on the direct path (medians): bulk %.0f MB/s using %.2f s "
                  "of its own CPU; c=32 %.0f conn/s using %.2f s."
                  % (median_of(d, "bulk_mbps"), median_of(d, "bulk_load_cpu_s"),
                     median_of(d, "c32_cps"), median_of(d, "c32_load_cpu_s")))
        errs = sum(m.get(k, 0) for n in names for m in results[n]
                   for k in ("idle_errors", "c1_errors", "c32_errors",
                             "paced_errors"))
        print("Connection errors seen by the load tool: %d." % errs)
        if cfg.perf and os.path.exists(cfg.perf_data):
            print()
            print("perf of both upseal sides during the bulk test (last round), "
                  "by side and library, then the top symbols:")
            print("```")
            for sort, limit in (("comm,dso", "0.5"), ("dso,symbol", "1")):
                r = subprocess.run(["perf", "report", "--stdio", "-i", cfg.perf_data,
                                    "--sort", sort, "--percent-limit", limit],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   timeout=300)
                rows = [ln.rstrip() for ln in r.stdout.decode(errors="replace").splitlines()
                        if ln.strip() and not ln.startswith("#")]
                print("\n".join(rows[:25]))
                print()
            print("```")
        for e in errors:
            print("FAILED: " + e)
        if cfg.json:
            with open(cfg.json, "w") as f:
                json.dump({"machine": m0, "aead": aead, "results": results,
                           "scaling": {"%s-w%d" % k: v for k, v in
                                       (scaling or {}).items()},
                           "errors": errors}, f, indent=1)
        return 1 if errors else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if cur[0] is not None:
            cur[0].stop()
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
