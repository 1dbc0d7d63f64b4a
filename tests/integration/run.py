#!/usr/bin/env python3
"""
Run upseal's integration tests.

    tests/integration/run.py [--build DIR] [-k FILTER] [--list] [--skip-slow]

Discovers tests/integration/test_*.py and runs every `test_*` function
with a fresh harness (its own temp dir, daemons, backends). Prints
`ok NAME (1.2s)` or `not ok NAME (1.2s)` with the failure and the tail of
the daemon logs, or `ok NAME # skip WHY` for a test that raised
harness.Skip (`h.skip(WHY)`: it cannot run on this machine) or was left
out by --skip-slow. Ends with `integration: N passed, M failed`, or
`integration: N passed, M failed, K skipped` when K > 0; a skipped test
is neither passed nor failed. Exit status 1 if any test failed.

Environment: UPSEAL_SAN=1 (sanitizer build: smaller sizes, longer limits;
set automatically when the build dir name contains "asan"), UPSEAL_BIG_MIB
(size of the big transfer), UPSEAL_KEEP=1 (keep a failed test's temp dir),
UPSEAL_PREV_BUILD (the previous version's binaries, tests/prev-build.sh:
test_upgrade.py skips without it).
"""

import argparse
import importlib
import inspect
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


class TestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def discover():
    tests = []
    for fn in sorted(os.listdir(HERE)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        mod = importlib.import_module(fn[:-3])
        funcs = [(inspect.getsourcelines(f)[1], n, f)
                 for n, f in vars(mod).items()
                 if n.startswith("test_") and inspect.isfunction(f)
                 and f.__module__ == mod.__name__]
        for _, n, f in sorted(funcs):
            tests.append(("%s.%s" % (fn[3 + 2:-3], n[5:]), f))
    return tests


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--build", default="build", help="build dir (default build)")
    ap.add_argument("-k", dest="filter", action="append", default=[],
                    help="run tests whose name contains FILTER (repeatable)")
    ap.add_argument("--list", action="store_true", help="list tests and exit")
    ap.add_argument("--skip-slow", action="store_true",
                    help="skip tests marked slow")
    a = ap.parse_args()

    build = os.path.abspath(a.build)
    os.environ["UPSEAL_BUILD"] = build
    if "asan" in os.path.basename(build.rstrip("/")) and \
            "UPSEAL_SAN" not in os.environ:
        os.environ["UPSEAL_SAN"] = "1"
    sys.path.insert(0, HERE)
    import harness   # after the environment is set

    tests = discover()
    if a.filter:
        tests = [t for t in tests if any(f in t[0] for f in a.filter)]
    if a.list:
        for name, f in tests:
            print(name + (" (slow)" if getattr(f, "slow", False) else ""))
        return 0

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    passed = failed = skipped = 0
    t_all = time.monotonic()
    print("# build %s%s" % (build, " (sanitizers)" if harness.SAN else ""),
          flush=True)
    for name, f in tests:
        if a.skip_slow and getattr(f, "slow", False):
            print("ok %s # skip slow" % name, flush=True)
            skipped += 1
            continue
        limit = getattr(f, "timeout", 60)
        if harness.SAN:
            limit *= 3
        h = harness.Harness(name, build)
        t0 = time.monotonic()
        err = None
        skip = None
        signal.alarm(int(limit))
        try:
            f(h)
        except harness.Skip as e:
            skip = e.why or "no reason given"
        except BaseException as e:   # noqa: includes TestTimeout
            if isinstance(e, KeyboardInterrupt):
                signal.alarm(0)
                h.teardown(True)
                raise
            if isinstance(e, harness.TestFailure):
                err = "  %s\n  at %s" % (
                    str(e).replace("\n", "\n  "),
                    _where(e))
            else:
                err = "  " + traceback.format_exc().rstrip().replace("\n", "\n  ")
        finally:
            signal.alarm(0)
        signal.alarm(60 if not harness.SAN else 180)
        try:
            problems = h.teardown(err is not None)
        except TestTimeout:
            problems = ["teardown exceeded its time limit"]
        except Exception:
            problems = ["teardown: " + traceback.format_exc()]
        finally:
            signal.alarm(0)
        dt = time.monotonic() - t0
        if problems:
            err = (err + "\n" if err else "") + "\n".join(
                "  teardown: " + p.replace("\n", "\n  ") for p in problems)
        if err is None and skip is not None:
            skipped += 1
            print("ok %s # skip %s" % (name, " ".join(skip.split())),
                  flush=True)
        elif err is None:
            passed += 1
            print("ok %s (%.1fs)" % (name, dt), flush=True)
        else:
            failed += 1
            print("not ok %s (%.1fs)" % (name, dt))
            print(err)
            for p in h.procs:
                print("  --- %s (pid %d, exit %r): last lines of its log"
                      % (p.name, p.pid, p.returncode))
                print(harness.tail(p.log(), 25))
            sys.stdout.flush()
        for n in h.notes:
            print("  # " + n.replace("\n", "\n  # "), flush=True)
    print("# %d tests in %.1fs%s" % (passed + failed + skipped,
                                     time.monotonic() - t_all,
                                     ", %d skipped" % skipped if skipped else ""))
    print("integration: %d passed, %d failed%s"
          % (passed, failed, ", %d skipped" % skipped if skipped else ""),
          flush=True)
    return 1 if failed else 0


def _where(e):
    tb = traceback.extract_tb(e.__traceback__)
    for fr in reversed(tb):
        if os.path.basename(fr.filename).startswith("test_"):
            return "%s:%d" % (os.path.basename(fr.filename), fr.lineno)
    fr = tb[-1]
    return "%s:%d" % (os.path.basename(fr.filename), fr.lineno)


if __name__ == "__main__":
    sys.exit(main())
