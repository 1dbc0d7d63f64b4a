"""Configuration handling, command line, JSON logs, robustness of the
daemons against abrupt peers."""

import glob
import json
import os
import re
import socket
import struct

from harness import check, check_eq, scaled, timeout

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _ids(h):
    return h.identity("srv"), h.identity("cli")


def _good(sid, cid, role):
    """Lines of a good one-tunnel file for role (client|server)."""
    connect = "127.0.0.1:7443" if role == "client" else "127.0.0.1:8080"
    me = cid if role == "client" else sid
    peer = sid if role == "client" else cid
    return ["[upseal]",                      # 1
            "log_level = info",              # 2
            "log_format = text",             # 3
            "",                              # 4
            "[app]",                         # 5
            "listen = 127.0.0.1:0",          # 6
            "connect = %s" % connect,        # 7
            "cert = %s" % me.crt,            # 8
            "key = %s" % me.key,             # 9
            "pin = %s" % peer.pin,           # 10
            "connect_timeout = 5s",          # 11
            "handshake_timeout = 10s",       # 12
            "idle_timeout = 5m",             # 13
            "max_connections = 100",         # 14
            ]


def _file(h, name, lines):
    return h.write_text(name + ".ini", "\n".join(lines) + "\n")


def _check(h, binary, path):
    return h.run([h.bin(binary), "--check", "-c", path], timeout=15)


@timeout(60)
def test_check_accepts_good_files(h):
    sid, cid = _ids(h)
    for role in ("client", "server"):
        lines = _good(sid, cid, role)
        p = _file(h, "good-" + role, lines)
        r = _check(h, "upseal-" + role, p)
        check_eq(r.returncode, 0, "upseal-%s --check %s exit (stderr %r)"
                 % (role, p, r.err))
        out = r.out.strip().splitlines()
        check_eq(out[-1], "%s: ok, 1 tunnel(s)" % p, "--check output")
        # Before it, the days the certificate has left (expiry).
        check(any(re.fullmatch(r"\[\w+\] cert notAfter \S+Z \(\d+ days left\)",
                               ln) for ln in out[:-1]),
              "--check prints no days left:\n%s" % r.out)
        two = lines + ["", "[second]"] + lines[5:]
        p2 = _file(h, "two-" + role, two)
        r = _check(h, "upseal-" + role, p2)
        check_eq(r.returncode, 0, "--check %s exit (stderr %r)" % (p2, r.err))
        check_eq(r.out.strip().splitlines()[-1], "%s: ok, 2 tunnel(s)" % p2,
                 "--check output")


def _broken_cases(sid, cid):
    """(name, role, lines, line number the error must name, words it must hold)."""
    cases = []
    g = _good(sid, cid, "server")
    c = _good(sid, cid, "client")

    def edit(base, lineno, text):
        out = list(base)
        out[lineno - 1] = text
        return out

    cases.append(("unknown-key", "server", g[:12] + ["colour = blue"] + g[13:],
                  13, ["[app]", "colour"]))
    cases.append(("bad-duration", "server", edit(g, 13, "idle_timeout = 5 minutes"),
                  13, ["idle_timeout"]))
    cases.append(("duration-no-unit", "client", edit(c, 11, "connect_timeout = 5"),
                  11, ["connect_timeout"]))
    cases.append(("bad-port", "server", edit(g, 6, "listen = 127.0.0.1:99999"),
                  6, ["listen"]))
    cases.append(("bad-listen", "client", edit(c, 6, "listen = nonsense"),
                  6, ["listen"]))
    cases.append(("bad-pin", "server", edit(g, 10, "pin = sha256//abc"),
                  10, ["pin"]))
    cases.append(("pin-prefix", "client", edit(c, 10, "pin = md5//" + "A" * 22),
                  10, ["pin"]))
    cases.append(("bad-level", "server", edit(g, 2, "log_level = loud"),
                  2, ["log_level"]))
    cases.append(("bad-format", "client", edit(c, 3, "log_format = xml"),
                  3, ["log_format"]))
    cases.append(("bad-max", "server", edit(g, 14, "max_connections = many"),
                  14, ["max_connections"]))
    cases.append(("handshakes-over-max", "server",
                  g + ["max_handshakes = 101"], 15,
                  ["max_handshakes", "max_connections (100)"]))
    cases.append(("long-line", "server",
                  edit(g, 7, "connect = 127.0.0.1:8080 ; " + "x" * 250), 7, []))
    nopin = g[:9] + g[10:]                       # [app] at 5, no pin, no ca
    cases.append(("no-pin-no-ca", "server", nopin, 5, ["[app]"]))
    cases.append(("remote-listen-client", "client",
                  edit(c, 6, "listen = 0.0.0.0:7001"), 6, ["listen"]))
    cases.append(("remote-backend-server", "server",
                  edit(g, 7, "connect = 192.0.2.10:8080"), 7, ["connect"]))
    cases.append(("unknown-upseal-key", "client", c[:3] + ["colour = red"] + c[4:],
                  4, ["[upseal]", "colour"]))
    return cases


@timeout(90)
def test_check_rejects_broken_files(h):
    sid, cid = _ids(h)
    problems = []
    for name, role, lines, lineno, words in _broken_cases(sid, cid):
        p = _file(h, name, lines)
        r = _check(h, "upseal-" + role, p)
        errs = [l for l in r.err.splitlines() if l.strip()]
        want = "%s:%d:" % (p, lineno)
        if r.returncode != 1:
            problems.append("%s: exit %d (want 1), stdout %r stderr %r"
                            % (name, r.returncode, r.out, r.err))
        elif len(errs) != 1:
            problems.append("%s: want one error line, got %r" % (name, errs))
        elif want not in errs[0]:
            problems.append("%s: %r does not name %s" % (name, errs[0], want))
        elif not all(w in errs[0] for w in words):
            problems.append("%s: %r lacks %r" % (name, errs[0], words))
    check(not problems, "%d broken file(s) mishandled:\n%s"
          % (len(problems), "\n".join(problems)))


@timeout(60)
def test_check_missing_file(h):
    p = h.path("does-not-exist.ini")
    for binary in ("upseal-client", "upseal-server"):
        r = _check(h, binary, p)
        check_eq(r.returncode, 1, "%s --check on a missing file" % binary)
        check(p in r.err, "%s: error %r does not name %s" % (binary, r.err, p))


@timeout(60)
def test_daemon_refuses_broken_config(h):
    sid, cid = _ids(h)
    g = _good(sid, cid, "server")
    bad = _file(h, "broken", g[:12] + ["colour = blue"] + g[13:])
    for binary in ("upseal-server",):
        p = h.start(binary, bad, wait_ready=False)
        p.expect_exit = 1
        rc = p.wait(scaled(10, 30))
        check_eq(rc, 1, "%s exit on a broken config" % binary)
        log = p.log()
        check("%s:13:" % bad in log, "error does not name %s:13:\n%s" % (bad, log))
        check("listening" not in log, "it listened anyway:\n%s" % log)
    c = _good(sid, cid, "client")
    badc = _file(h, "broken-client", c[:5] + ["listen = 127.0.0.1:notaport"] + c[6:])
    p = h.start("upseal-client", badc, wait_ready=False)
    p.expect_exit = 1
    check_eq(p.wait(scaled(10, 30)), 1, "upseal-client exit on a broken config")
    check("%s:6:" % badc in p.log(), "error does not name %s:6:\n%s"
          % (badc, p.log()))
    check("listening" not in p.log(), "it listened anyway")


@timeout(60)
def test_bad_cert_or_key_names_the_file(h):
    sid, cid = _ids(h)
    garbage = h.write_text("garbage.crt", "-----BEGIN CERTIFICATE-----\nnope\n"
                           "-----END CERTIFICATE-----\n")
    missing = h.path("nowhere", "missing.crt")
    other = h.identity("other")
    g = _good(sid, cid, "server")
    cases = [("missing-cert", 8, "cert = %s" % missing, missing),
             ("garbage-cert", 8, "cert = %s" % garbage, garbage),
             ("missing-key", 9, "key = %s" % missing.replace(".crt", ".key"),
              missing.replace(".crt", ".key")),
             ("garbage-key", 9, "key = %s" % garbage, garbage),
             ("garbage-ca", 10, "ca = %s" % garbage, garbage)]
    problems = []
    for name, lineno, text, named in cases:
        lines = list(g)
        if name == "garbage-ca":
            lines.insert(10, text)
        else:
            lines[lineno - 1] = text
        ini = _file(h, name, lines)
        p = h.start("upseal-server", ini, wait_ready=False, name=name)
        p.expect_exit = 1
        rc = p.wait(scaled(10, 30))
        log = p.log()
        if rc != 1:
            problems.append("%s: exit %r, want 1" % (name, rc))
        elif named not in log:
            problems.append("%s: error does not name %s: %r" % (name, named, log))
        elif "event=listening" in log or '"listening"' in log:
            problems.append("%s: listened anyway" % name)
    # A key that does not match the certificate.
    lines = list(g)
    lines[8] = "key = %s" % other.key
    ini = _file(h, "mismatch", lines)
    p = h.start("upseal-server", ini, wait_ready=False, name="mismatch")
    p.expect_exit = 1
    rc = p.wait(scaled(10, 30))
    if rc != 1:
        problems.append("mismatched key: exit %r, want 1" % rc)
    elif other.key not in p.log() and sid.crt not in p.log():
        problems.append("mismatched key: error names neither file: %r" % p.log())
    check(not problems, "\n".join(problems))


@timeout(60)
def test_examples_pass_check(h):
    files = sorted(glob.glob(os.path.join(REPO, "examples", "*.ini")))
    h.note("%d example file(s) checked" % len(files))
    check(files, "no examples/*.ini found")
    # The examples name /etc/upseal/...: point cert, key and ca at
    # identities made now, keeping every other line as shipped.
    ca = h.ca("exampleca")
    ident = h.identity("example", ca=ca)
    paths = {"cert": ident.crt, "key": ident.key, "ca": ca + ".crt"}
    problems = []
    for shipped in files:
        base = os.path.basename(shipped)
        lines = []
        with open(shipped) as fh:
            for line in fh:
                m = re.match(r"\s*(cert|key|ca)\s*=", line)
                lines.append("%s = %s\n" % (m.group(1), paths[m.group(1)])
                             if m else line)
        f = os.path.join(h.dir, base)
        with open(f, "w") as fh:
            fh.writelines(lines)
        roles = [r for r in ("client", "server") if r in base] or \
            ["client", "server"]
        results = []
        for role in roles:
            r = _check(h, "upseal-" + role, f)
            results.append((role, r.returncode, r.out.strip(), r.err.strip()))
        ok = [x for x in results if x[1] == 0]
        if not ok:
            problems.append("%s: %r" % (base, results))
        for role, rc, out, err in ok:
            # The last line says ok; each tunnel's dates come before it.
            if not re.fullmatch(re.escape(f) + r": ok, \d+ tunnel\(s\)",
                                out.splitlines()[-1]):
                problems.append("%s (%s): --check printed %r" % (base, role, out))
    check(not problems, "examples failing --check:\n" + "\n".join(problems))


@timeout(30)
def test_version_and_help(h):
    for b in ("upseal-client", "upseal-server"):
        r = h.run([h.bin(b), "--version"], timeout=10)
        check_eq(r.returncode, 0, "%s --version exit" % b)
        check(re.search(r"\d+\.\d+", r.out + r.err), "%s --version: %r"
              % (b, r.out + r.err))
        r = h.run([h.bin(b), "--help"], timeout=10)
        check_eq(r.returncode, 0, "%s --help exit" % b)
        check("--check" in r.out + r.err and "-c" in r.out + r.err,
              "%s --help does not mention -c / --check: %r" % (b, r.out + r.err))
        r = h.run([h.bin(b), "--no-such-option"], timeout=10)
        check(r.returncode != 0, "%s accepts an unknown option" % b)


@timeout(60)
def test_json_logs(h):
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr, upseal={"log_format": "json",
                                          "log_level": "debug"})
    s = h.echo_roundtrip(cli.addr("app"), b"json please\n")
    s.close()
    cli.wait_event("conn_end")
    srv.wait_event("conn_end")
    # A rejected peer, logged as JSON with the pin it presented.
    stranger = h.identity("stranger")
    h.openssl(["s_client", "-connect", srv.addr("app"), "-cert", stranger.crt,
               "-key", stranger.key, "-quiet", "-no_ign_eof"], input=b"x\n")
    srv.wait_for(r'"reason"\s*:\s*"pin_mismatch"', 10)
    rej = [d for d in srv.events() if d.get("reason") == "pin_mismatch"]
    check(any(d.get("presented_pin") == stranger.pin for d in rej),
          "JSON pin_mismatch lines %r lack presented_pin %s" % (rej, stranger.pin))
    for p in (cli, srv):
        check_eq(p.stop(), 0, "%s exit after SIGTERM" % p.name)
        lines = p.lines()
        check(len(lines) >= 3, "%s logged %d lines" % (p.name, len(lines)))
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except ValueError as e:
                check(False, "%s line %d is not JSON (%s): %r"
                      % (p.name, i + 1, e, line))
            check(isinstance(obj, dict), "%s line %d not an object" % (p.name, i + 1))
            for k in ("ts", "level", "event"):
                check(k in obj, "%s line %d lacks %r: %r" % (p.name, i + 1, k, line))
        ends = [json.loads(l) for l in lines if json.loads(l).get("event") == "conn_end"]
        check_eq(len(ends), 1 if p is cli else 2, "%s conn_end lines" % p.name)
        for k in ("tunnel", "id", "peer", "plain_in", "plain_out",
                  "duration_ms", "reason"):
            check(k in ends[0], "%s conn_end lacks %r: %r" % (p.name, k, ends[0]))


@timeout(60)
def test_conn_end_fields_text(h):
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr)
    s = h.echo_roundtrip(cli.addr("app"), b"a" * 1234)
    s.close()
    for p, peer in ((cli, ids["server"]), (srv, ids["client"])):
        e = p.wait_event("conn_end")
        check_eq(e.get("tunnel"), "app", "%s tunnel" % p.name)
        check_eq((e.get("plain_in"), e.get("plain_out")), ("1234", "1234"),
                 "%s plain_in/plain_out" % p.name)
        check_eq(e.get("reason"), "closed", "%s reason" % p.name)
        check(e.get("id", "").isdigit(), "%s id %r" % (p.name, e.get("id")))
        check(e.get("duration_ms", "").isdigit(), "%s duration_ms" % p.name)
        check(e.get("peer"), "%s peer %r" % (p.name, e.get("peer")))
        short = e.get("peer_pin", "")
        check(short.startswith("sha256//") and len(short) > len("sha256//")
              and peer.pin.startswith(short.rstrip(".").rstrip("…")),
              "%s peer_pin %r is not a prefix of %s" % (p.name, short, peer.pin))


@timeout(90)
def test_abrupt_app_resets_do_not_hurt(h):
    """Apps that reset mid-transfer (EPIPE/ECONNRESET in the daemon, never
    SIGPIPE) and a backend that resets: the daemons keep serving."""
    be = h.echo_backend()
    cli, srv, _ = h.pair(be.addr)
    for i in range(20):
        s = h.connect(cli.addr("app"))
        try:
            s.sendall(b"r" * (256 * 1024))
        except OSError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    cli.wait_event("conn_end", count=20, timeout=scaled(20, 60))
    check(cli.alive() and srv.alive(), "a daemon died: client %r server %r"
          % (cli.poll(), srv.poll()))
    h.echo_roundtrip(cli.addr("app"), b"after the resets\n")
