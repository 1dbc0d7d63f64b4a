#!/usr/bin/env python3
"""
The cost of a 10,000-pin file (issue 12) for `make bench`: upseal-server
with `pin_file` holding 10,000 pins (the client's among them, at a random
place) against the same server with a file of one pin, as ratios:

  start    spawn to the `ready` line (reads, parses and sorts the file)
  RSS      of the server after start, and after the handshake load
  hs/s     full handshakes per second at concurrency 32 through an
           upseal-client (resumption off on both sides, workers = 1)

The two variants alternate for --rounds rounds; the table shows medians.
Run alone (`python3 bench/pinfile.py --build build`) or from bench/run.py
(BENCH_PINFILE=no skips it). Everything listens on 127.0.0.1 with ports
picked at run time; every process is ended by its pid; the temp dir is
removed at exit.
"""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

NPINS = 10000


def log(msg):
    print("bench pinfile: " + msg, file=sys.stderr, flush=True)


class Proc:
    def __init__(self, name, argv, tmp):
        self.name = name
        self.path = os.path.join(tmp, "%s.log" % name)
        self.logf = open(self.path, "w")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=self.logf,
                                  stderr=subprocess.STDOUT)
        self.pid = self.p.pid

    def log(self):
        with open(self.path) as f:
            return f.read()

    def wait_for(self, text, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lg = self.log()
            if text in lg:
                return lg
            if self.p.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError("%s: no %r:\n%s" % (self.name, text,
                                               self.log()[-1500:]))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
        return 0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.logf.close()


def addr_of(lg, tunnel):
    for ln in lg.splitlines():
        if "event=listening" in ln and "tunnel=%s " % tunnel in ln:
            return ln.split("addr=")[1].split()[0]
    raise RuntimeError("no listening line for %s" % tunnel)


def ini(path, body):
    with open(path, "w") as f:
        f.write("[upseal]\nlog_level = info\nworkers = 1\ndrain_timeout = 1s\n\n"
                + body)
    return path


def one(build, bench_bin, tmp, ids, pins, be_port, seconds, tag):
    """Start server (pin_file = pins) and client, measure; returns a dict."""
    m = {}
    srv_ini = ini(os.path.join(tmp, "srv-%s.ini" % tag),
                  "[t]\nlisten = 127.0.0.1:0\nconnect = 127.0.0.1:%d\n"
                  "cert = %s\nkey = %s\npin_file = %s\nresumption = no\n"
                  % (be_port, ids["srv_crt"], ids["srv_key"], pins))
    procs = []
    try:
        srv = Proc("server-" + tag, [os.path.join(build, "upseal-server"), "-c",
                                    srv_ini], tmp)
        procs.append(srv)
        lg = srv.wait_for("event=ready")
        m["start_ms"] = (time.monotonic() - srv.t0) * 1000
        m["rss_start_kib"] = srv.rss_kib()
        cli_ini = ini(os.path.join(tmp, "cli-%s.ini" % tag),
                      "[t]\nlisten = 127.0.0.1:0\nconnect = %s\ncert = %s\n"
                      "key = %s\npin = %s\nresumption = no\n"
                      % (addr_of(lg, "t"), ids["cli_crt"], ids["cli_key"],
                         ids["srv_pin"]))
        cli = Proc("client-" + tag, [os.path.join(build, "upseal-client"), "-c",
                                    cli_ini], tmp)
        procs.append(cli)
        addr = addr_of(cli.wait_for("event=ready"), "t")
        r = subprocess.run([os.path.join(bench_bin, "load"), "rate", "--addr",
                            addr, "--conc", "32", "--seconds", str(seconds),
                            "--max", "200000"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=seconds + 120)
        out = json.loads(r.stdout.decode().strip().splitlines()[-1])
        m["hs_per_s"] = out["conn_per_s"]
        m["errors"] = out["errors"]
        m["rss_after_kib"] = srv.rss_kib()
    finally:
        for p in reversed(procs):
            p.stop()
    return m


def make_ids(build, tmp):
    certs = os.path.join(build, "upseal-certs")
    # Its own directory: run.py's identities in tmp have the same names.
    tmp = os.path.join(tmp, "pinfile")
    os.makedirs(tmp, exist_ok=True)
    ids = {}
    for side in ("srv", "cli"):
        r = subprocess.run([certs, "new", side, "--dir", tmp],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           check=True, timeout=30)
        ids[side + "_pin"] = r.stdout.decode().strip().splitlines()[-1]
        ids[side + "_crt"] = os.path.join(tmp, side + ".crt")
        ids[side + "_key"] = os.path.join(tmp, side + ".key")
    return ids


def pin_files(tmp, cli_pin):
    small = os.path.join(tmp, "one.pins")
    with open(small, "w") as f:
        f.write(cli_pin + "\n")
    big = os.path.join(tmp, "many.pins")
    lines = ["sha256//" + base64.b64encode(os.urandom(32)).decode()
             for _ in range(NPINS - 1)]
    lines.insert(random.randrange(NPINS), cli_pin)
    with open(big, "w") as f:
        f.write("# %d pins\n" % NPINS + "\n".join(lines) + "\n")
    return small, big


def run(build, bench_bin, be_port, tmp, rounds, seconds):
    """Both variants, alternating; returns {"1": [m...], "10000": [m...]}."""
    ids = make_ids(build, tmp)
    small, big = pin_files(tmp, ids["cli_pin"])
    res = {"1": [], str(NPINS): []}
    for rnd in range(rounds):
        order = [("1", small), (str(NPINS), big)]
        if rnd % 2:
            order.reverse()
        for tag, path in order:
            m = one(build, bench_bin, tmp, ids, path, be_port, seconds,
                    "%s-%d" % (tag, rnd))
            res[tag].append(m)
            log("round %d, %5s pin(s): start %.1f ms, RSS %d KiB, %.0f hs/s"
                % (rnd + 1, tag, m["start_ms"], m["rss_start_kib"],
                   m["hs_per_s"]))
    return res


def table(res):
    keys = (("start_ms", "start to ready (ms)", "%.1f"),
            ("rss_start_kib", "server RSS after start (KiB)", "%.0f"),
            ("rss_after_kib", "server RSS after the load (KiB)", "%.0f"),
            ("hs_per_s", "full handshakes/s, c=32", "%.0f"))
    big = str(NPINS)
    rows = ["| | 1 pin | %d pins | ratio |" % NPINS, "|---|---:|---:|---:|"]
    for k, label, f in keys:
        a = statistics.median(m[k] for m in res["1"])
        b = statistics.median(m[k] for m in res[big])
        rows.append("| %s | %s | %s | %.2f |" % (label, f % a, f % b,
                                                 b / a if a else 0))
    errs = sum(m["errors"] for v in res.values() for m in v)
    rows.append("")
    rows.append("Medians over %d rounds; connection errors: %d."
                % (len(res["1"]), errs))
    return "\n".join(rows)


def start_backend(bench_bin, tmp):
    be = Proc("backend", [os.path.join(bench_bin, "backend")], tmp)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for ln in be.log().splitlines():
            if ln.startswith("port "):
                return be, int(ln.split()[1])
        time.sleep(0.02)
    be.stop()
    raise RuntimeError("backend did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--bench-bin", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    bench_bin = os.path.abspath(a.bench_bin or os.path.join(build, "bench"))
    tmp = tempfile.mkdtemp(prefix="upseal-bench-pinfile-")
    be = None
    try:
        be, port = start_backend(bench_bin, tmp)
        res = run(build, bench_bin, port, tmp, a.rounds, a.seconds)
        print(table(res))
        return 0
    finally:
        if be is not None:
            be.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
