"""
Worker scaling for `make bench` (issue 4, item 6): one upseal sidecar with
`workers = 1` and then `workers = 2`, interleaved over the rounds, facing an
OpenSSL peer (haproxy, one thread, ~7x cheaper per handshake than mbedTLS
2.28) so that the upseal side is the one that runs out of CPU. The load is
new connections at concurrency 32 with full handshakes (no resumption on
either side), the most CPU-bound thing a sidecar does.

A pair of upseal sidecars cannot show the scaling on a 2-core machine: two
single-worker sidecars already keep both cores busy.

Called by run.py, which passes its helpers in (this file has no state).
"""

import os
import statistics
import time

SIDES = ("server", "client")
WORKERS = (1, 2)


def _start(side, workers, ids, tmp, build, be_port, h, procs):
    """Start upseal (side, workers) and a haproxy peer, each appended to
    procs as it starts (so the caller stops them even if a start fails);
    returns (the plaintext address, the upseal proc)."""
    tls = ("ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2 ciphers %s ca-file %s "
           "verify required" % (h["PEER_CIPHER"], ids["ca_crt"]))
    sp, cp = h["free_port"](), h["free_port"]()

    def launch(name, argv, port, path, text):
        with open(path, "w") as f:
            f.write(text)
        p = h["Proc"](name, argv + [path], tmp)
        procs.append(p)
        h["wait_port"](port, procs)
        return p

    def upseal(role, listen, connect, me, peer):
        return launch("upseal-" + role, [os.path.join(build, "upseal-" + role),
                                         "-c"], listen,
                      os.path.join(tmp, "scale-%s.ini" % role),
                      "[upseal]\nlog_level = warn\ndrain_timeout = 1s\n"
                      "workers = %d\n\n[bench]\nlisten = 127.0.0.1:%d\n"
                      "connect = 127.0.0.1:%d\ncert = %s\nkey = %s\npin = %s\n"
                      "resumption = no\n" % (workers, listen, connect,
                                             ids[me + "_crt"], ids[me + "_key"],
                                             ids[peer + "_pin"]))

    def haproxy(role, listen, body):
        return launch("haproxy-" + role, ["haproxy", "-db", "-f"], listen,
                      os.path.join(tmp, "scale-haproxy-%s.cfg" % role),
                      h["haproxy_head"]() + body)

    if side == "server":
        up = upseal("server", sp, be_port, "srv", "cli")
        haproxy("client", cp, "listen bench\n  bind 127.0.0.1:%d\n"
                "  server s 127.0.0.1:%d ssl crt %s %s verifyhost srv "
                "no-ssl-reuse\n" % (cp, sp, ids["cli_pem"], tls))
    else:
        haproxy("server", sp, "listen bench\n  bind 127.0.0.1:%d ssl crt %s %s "
                "no-tls-tickets\n  server be 127.0.0.1:%d\n"
                % (sp, ids["srv_pem"], tls, be_port))
        up = upseal("client", cp, sp, "cli", "srv")
    return "127.0.0.1:%d" % cp, up


def run(cfg, ids, tmp, be_port, h, log):
    """Returns {(side, workers): [result dicts]} and a list of errors."""
    results = {(s, w): [] for s in SIDES for w in WORKERS}
    errors = []
    combos = [(s, w) for s in SIDES for w in WORKERS]
    for rnd in range(cfg.rounds):
        order = combos[rnd % len(combos):] + combos[:rnd % len(combos)]
        for side, workers in order:
            procs = []
            try:
                addr, upseal = _start(side, workers, ids, tmp, cfg.build,
                                      be_port, h, procs)
                h["load"](cfg.build, ["rate", "--addr", addr, "--conc", "1",
                                      "--max", "3"], 60)
                pids = h["children_of"]([upseal.pid])
                c0, t0 = h["cpu_of"](pids), time.monotonic()
                r = h["load"](cfg.build, ["rate", "--addr", addr, "--conc", "32",
                                          "--seconds", str(cfg.rate_s * 2),
                                          "--max", str(cfg.rate_max)], 180)
                c1, t1 = h["cpu_of"](pids), time.monotonic()
                if not r["ok"]:
                    raise RuntimeError("no connection succeeded")
                m = {"cps": r["conn_per_s"], "errors": r["errors"],
                     "cores": (c1 - c0) / (t1 - t0),
                     "cpu_ms_per_conn": (c1 - c0) * 1000 / r["ok"]}
                results[(side, workers)].append(m)
                log("scaling round %d upseal-%s workers=%d: %.0f conn/s, %.2f "
                    "cores" % (rnd + 1, side, workers, m["cps"], m["cores"]))
            except Exception as e:  # reported, the others go on
                errors.append("scaling %s workers=%d round %d: %s"
                              % (side, workers, rnd + 1, e))
                log("scaling %s workers=%d FAILED: %s" % (side, workers, e))
            finally:
                for p in reversed(procs):
                    p.stop()
    return results, errors


def table(results):
    def med(rows, k):
        v = [r[k] for r in rows if k in r]
        return statistics.median(v) if v else None
    out = ["| upseal side (peer: haproxy, 1 thread) | workers | conn/s c=32, "
           "full handshakes | upseal CPU, cores | CPU ms/conn | conn/s vs 1 "
           "worker |", "|---|---|---|---|---|---|"]
    for side in SIDES:
        base = med(results[(side, 1)], "cps")
        for w in WORKERS:
            rows = results[(side, w)]
            cps = med(rows, "cps")
            if cps is None:
                out.append("| upseal-%s | %d | failed | | | |" % (side, w))
                continue
            out.append("| upseal-%s | %d | %.0f | %.2f | %.2f | %s |" % (
                side, w, cps, med(rows, "cores"), med(rows, "cpu_ms_per_conn"),
                "%.2fx" % (cps / base) if base else "-"))
    return "\n".join(out)
