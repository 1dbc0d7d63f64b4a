"""A tiny run of the benchmark (bench/run.py, BENCH_QUICK) so that it does
not rot: it must produce its table with a number in every measured cell of
every row. No performance target is asserted here."""

import os
import re
import shutil
import signal
import subprocess
import sys

from harness import SAN, check, check_eq, timeout

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow",
         "-Wstrict-prototypes", "-Wmissing-prototypes", "-D_GNU_SOURCE"]
NUM = r"-?[0-9]+(?:\.[0-9]+)?"


def _build_bench(h):
    """The three bench programs, built into the test's own dir (the upseal
    binaries come from the build under test)."""
    out = h.path("bench")
    os.makedirs(out, exist_ok=True)
    for name, libs in (("load", []), ("backend", []), ("aead", ["-lmbedcrypto"])):
        r = subprocess.run(["cc"] + FLAGS + ["-o", os.path.join(out, name),
                                             os.path.join(REPO, "bench", name + ".c")]
                           + libs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=120)
        check(r.returncode == 0, "cc bench/%s.c:\n%s" % (name, r.stdout.decode()))
    return out


@timeout(150)
def test_bench_quick_produces_the_table(h):
    bench_bin = _build_bench(h)
    contenders = ["upseal", "direct"]
    if not SAN:   # under ASan the upseal rows alone are slow enough
        for peer, exe in (("stunnel", "stunnel4"), ("haproxy", "haproxy"),
                          ("nginx", "nginx")):
            if shutil.which(exe):
                contenders.insert(-1, peer)
    env = dict(os.environ, BENCH_QUICK="1", BENCH_CONTENDERS=",".join(contenders),
               BENCH_JSON=h.path("bench.json"))
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "bench", "run.py"),
                          "--build", h.build, "--bench-bin", bench_bin],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=h.dir)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)   # run.py ends what it started
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        check(False, "bench/run.py took over 120 s:\n%s" % err.decode()[-3000:])
    out, err = out.decode(), err.decode()
    h.note(err.strip().splitlines()[-1] if err.strip() else "")
    check_eq(p.returncode, 0, "bench/run.py exit status (stderr:\n%s\nstdout:\n%s)"
             % (err[-3000:], out[-3000:]))
    lines = out.splitlines()
    head = [ln for ln in lines if ln.startswith("| contender |")]
    check_eq(len(head), 1, "table header lines in:\n%s" % out)
    ncols = head[0].count("|") - 1
    for name in contenders:
        rows = [ln for ln in lines if ln.startswith("| %s |" % name)]
        check_eq(len(rows), 1, "table rows for %s in:\n%s" % (name, out))
        cells = [c.strip() for c in rows[0].strip().strip("|").split("|")][1:]
        check_eq(len(cells) + 1, ncols, "cells in the %s row" % name)
        # direct has no tunnel: no tunnel CPU and no tunnel RSS, "—" there.
        numeric = [c for c in cells if re.match(NUM, c)]
        want = len(cells) if name != "direct" else len(cells) - 5
        check(len(numeric) >= want, "%s row: numbers in %d of %d cells: %s"
              % (name, len(numeric), len(cells), rows[0]))
        check(re.match(NUM, cells[0]), "%s bulk MB/s: %r" % (name, cells[0]))
    check(any(ln.startswith("| mbedTLS ceiling") for ln in lines),
          "no mbedTLS ceiling row in:\n%s" % out)
    check("Connection errors seen by the load tool: 0." in out,
          "load tool errors:\n%s" % out)
