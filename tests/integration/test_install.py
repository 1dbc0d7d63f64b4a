"""`make install DESTDIR=... PREFIX=/usr`: the layout the Dockerfile takes,
run from DESTDIR: binaries, man pages, examples (every ini passes --check),
systemd units (systemd-analyze verify, when it is there)."""

import glob
import os
import re
import shutil
import subprocess

from harness import check, check_eq, timeout

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINS = ("upseal-client", "upseal-server", "upseal-certs")
MANS = ("man8/upseal-client.8", "man8/upseal-server.8",
        "man1/upseal-certs.1", "man5/upseal.ini.5")


def _install(h):
    """make install into a fresh DESTDIR from the build under test; the
    binaries are not rebuilt (-o), whatever their age."""
    dest = h.path("destdir")
    argv = ["make", "-C", REPO, "--no-print-directory", "install",
            "DESTDIR=" + dest, "PREFIX=/usr", "BUILD=" + h.build]
    for b in BINS:
        argv += ["-o", os.path.join(h.build, b)]
    r = h.run(argv, timeout=120)
    check_eq(r.returncode, 0, "make install (stderr %r)" % r.err[-2000:])
    return dest


def _exe(dest, name):
    sub = "bin" if name == "upseal-certs" else "sbin"
    return os.path.join(dest, "usr", sub, name)


@timeout(90)
def test_install_layout_and_versions(h):
    dest = _install(h)
    for b in BINS:
        p = _exe(dest, b)
        check(os.access(p, os.X_OK), "%s not installed (executable)" % p)
        check_eq(oct(os.stat(p).st_mode & 0o777), oct(0o755), "%s mode" % p)
        r = h.run([p, "--version"], timeout=20)
        check_eq(r.returncode, 0, "%s --version exit" % p)
        check(re.search(r"\b%s \d+\.\d+" % b, r.out + r.err),
              "%s --version printed %r" % (p, r.out + r.err))
    for m in MANS:
        p = os.path.join(dest, "usr/share/man", m)
        check(os.path.isfile(p), "man page %s not installed" % p)
    ex = os.path.join(dest, "usr/share/doc/upseal/examples")
    for f in glob.glob(os.path.join(REPO, "examples", "*.ini")):
        check(os.path.isfile(os.path.join(ex, os.path.basename(f))),
              "example %s not installed in %s" % (os.path.basename(f), ex))
    for f in ("systemd/upseal-client.service", "systemd/upseal-server.service",
              "compose.yaml", "k8s/proxy.yaml", "k8s/app.yaml"):
        check(os.path.isfile(os.path.join(ex, f)), "%s not installed" % f)
    # The installed units point at where the daemons went.
    with open(os.path.join(ex, "systemd/upseal-server.service")) as f:
        unit = f.read()
    check("ExecStart=/usr/sbin/upseal-server " in unit,
          "installed unit's ExecStart is not /usr/sbin/upseal-server: %r"
          % [l for l in unit.splitlines() if l.startswith("Exec")])
    # Nothing outside DESTDIR/usr.
    check_eq(sorted(os.listdir(dest)), ["usr"], "top of DESTDIR")


@timeout(90)
def test_install_man_pages_render(h):
    check(shutil.which("man"), "man is not installed (tests/deps.sh: man-db)")
    dest = _install(h)
    mandir = os.path.join(dest, "usr/share/man")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    env.pop("MANPATH", None)
    problems = []
    for m in MANS:
        p = os.path.join(mandir, m)
        r = subprocess.run(["man", "--warnings", "-l", p], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        out = r.stdout.decode("utf-8", "replace")
        err = r.stderr.decode("utf-8", "replace")
        if r.returncode != 0 or err.strip():
            problems.append("%s: exit %d, warnings %r" % (m, r.returncode, err))
        if "NAME" not in out or "SEE ALSO" not in out:
            problems.append("%s: rendered text lacks NAME / SEE ALSO" % m)
        wide = [l for l in out.splitlines() if len(l) > 80]
        if wide:
            problems.append("%s: %d line(s) wider than 80: %r"
                            % (m, len(wide), wide[:2]))
        # By name, from the installed tree, as `man` finds it.
        sec, name = m.split("/")[0][3:], os.path.basename(m).rsplit(".", 1)[0]
        r = subprocess.run(["man", "-M", mandir, sec, name], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        if r.returncode != 0:
            problems.append("man -M DESTDIR %s %s: exit %d %r"
                            % (sec, name, r.returncode, r.stderr[-300:]))
    check(not problems, "\n".join(problems))


def _rewrite_ini(text, me, peer, ca_crt, crl):
    """Point cert/key/ca/crl/pin at identities this test made."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)(cert|key|ca|crl|pin)(\s*)=", line)
        if not m:
            out.append(line)
            continue
        k = m.group(2)
        v = {"cert": me.crt, "key": me.key, "ca": ca_crt, "crl": crl,
             "pin": peer.pin}[k]
        out.append("%s%s%s= %s" % (m.group(1), k, m.group(3), v))
    return "\n".join(out) + "\n"


def _k8s_inis(path):
    """The ini files embedded in a ConfigMap (`NAME.ini: |` blocks)."""
    with open(path) as f:
        lines = f.read().splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)([\w.-]+\.ini): \|\s*$", lines[i])
        i += 1
        if not m:
            continue
        base = len(m.group(1))
        body = []
        indent = None
        while i < len(lines):
            l = lines[i]
            if l.strip():
                ind = len(l) - len(l.lstrip())
                if ind <= base:
                    break
                if indent is None:
                    indent = ind
            body.append(l[indent:] if indent and l.strip() else "")
            i += 1
        found.append((m.group(2), "\n".join(body) + "\n"))
    return found


@timeout(120)
def test_install_examples_pass_check(h):
    dest = _install(h)
    ex = os.path.join(dest, "usr/share/doc/upseal/examples")
    srv, cli = h.identity("ex-srv"), h.identity("ex-cli")
    ca_dir = h.ca("ex-ca")
    ca_crt = ca_dir + ".crt"
    r = h.run([h.bin("upseal-certs"), "revoke", "--ca", ca_dir])
    check_eq(r.returncode, 0, "upseal-certs revoke (stderr %r)" % r.err)
    crl = ca_dir + ".crl"
    files = [(os.path.basename(p), open(p).read())
             for p in sorted(glob.glob(os.path.join(ex, "*.ini")))]
    for y in sorted(glob.glob(os.path.join(ex, "k8s", "*.yaml"))):
        files += [("k8s-" + n, t) for n, t in _k8s_inis(y)]
    check(len(files) >= 4, "only %d example ini file(s): %r"
          % (len(files), [n for n, _ in files]))
    problems = []
    for name, text in files:
        roles = [r for r in ("client", "server") if r in name] or \
            ["client", "server"]
        ok = []
        tried = []
        for role in roles:
            me, peer = (cli, srv) if role == "client" else (srv, cli)
            p = h.write_text("%s.%s.ini" % (name, role),
                             _rewrite_ini(text, me, peer, ca_crt, crl))
            r = h.run([_exe(dest, "upseal-" + role), "--check", "-c", p],
                      timeout=20)
            tried.append((role, r.returncode, r.err.strip()))
            if r.returncode == 0:
                # The last line says ok; the dates come before it.
                if not re.fullmatch(re.escape(p) + r": ok, \d+ tunnel\(s\)",
                                    r.out.strip().splitlines()[-1]):
                    problems.append("%s (%s): --check printed %r"
                                    % (name, role, r.out))
                ok.append(role)
        if not ok:
            problems.append("%s: %r" % (name, tried))
    h.note("%d example ini file(s) checked from DESTDIR" % len(files))
    check(not problems, "examples failing --check from DESTDIR:\n"
          + "\n".join(problems))


def _dockerfile():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = f.read()
    # Join continuation lines.
    return re.sub(r"\\\n", " ", text)


@timeout(90)
def test_install_matches_dockerfile(h):
    """The Dockerfile's build stage installs with DESTDIR=/out PREFIX=/usr
    and takes the binaries from paths that install makes; its ldd filter,
    run here on the installed binaries, keeps every shared object and the
    loader (and nothing else); the runtime stage is scratch, user 10001.
    tests/containers.sh builds the image itself."""
    dest = _install(h)
    df = _dockerfile()
    check(re.search(r"make .*install DESTDIR=/out PREFIX=/usr", df),
          "Dockerfile does not install with DESTDIR=/out PREFIX=/usr")
    srcs = sorted(set(re.findall(r"(/out/usr/[\w./-]+)", df)))
    check(srcs, "Dockerfile takes nothing from /out")
    for s in srcs:
        p = os.path.join(dest, s[len("/out/"):])
        check(os.path.exists(p), "Dockerfile takes %s, but make install "
              "made no %s" % (s, p))
    stages = re.split(r"^FROM ", df, flags=re.M)
    runtime = stages[-1]
    check(runtime.startswith("scratch"), "runtime stage is %r"
          % runtime.splitlines()[0])
    check(re.search(r"^COPY --from=build /rootfs/ /$", runtime, re.M),
          "runtime stage does not copy the build stage's /rootfs")
    check(not re.search(r"^RUN ", runtime, re.M),
          "runtime stage has a RUN step (there is no shell in it)")
    check(re.search(r"^USER 10001:10001$", runtime, re.M),
          "runtime stage does not run as uid/gid 10001")
    m = re.search(r"ldd \$bins \| awk '([^']*)'", df)
    check(m, "Dockerfile does not pick the libraries with ldd | awk")
    if not shutil.which("ldd") or not shutil.which("awk"):
        h.note("no ldd/awk: the library filter was not run")
        return
    bins = [_exe(dest, b) for b in BINS]
    r = subprocess.run("ldd %s | awk '%s'" % (" ".join(bins), m.group(1)),
                       shell=True, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    check_eq(r.returncode, 0, "ldd | awk (stderr %r)" % r.stderr[-300:])
    picked = set(r.stdout.decode().split())
    want = set()
    for b in bins:
        out = subprocess.run(["ldd", b], stdout=subprocess.PIPE,
                             timeout=30).stdout.decode()
        want.update(re.findall(r"=> (/\S+)", out))
        want.update(re.findall(r"^\s*(/\S+) \(", out, re.M))
    check(want, "ldd lists no library")
    check_eq(sorted(picked), sorted(want), "the Dockerfile's ldd filter")
    h.note("the image takes %s" % ", ".join(sorted(os.path.basename(x)
                                                  for x in picked)))


@timeout(90)
def test_install_systemd_units_verify(h):
    dest = _install(h)
    units = sorted(glob.glob(os.path.join(
        dest, "usr/share/doc/upseal/examples/systemd/*.service")))
    check_eq(len(units), 2, "installed systemd units")
    for u in units:
        text = open(u).read()
        for want in ("Type=simple", "ExecReload=/bin/kill -HUP $MAINPID",
                     "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "PrivateTmp=yes", "ReadOnlyPaths=/etc/upseal",
                     "User=upseal"):
            check(want in text, "%s lacks %s" % (os.path.basename(u), want))
    if not shutil.which("systemd-analyze"):
        h.note("systemd-analyze not installed: units not verified")
        return
    # Verify copies whose binaries are the DESTDIR ones (verify wants
    # ExecStart to exist), with the installed man pages on MANPATH.
    vdir = h.path("units")
    os.mkdir(vdir)
    copies = []
    for u in units:
        p = os.path.join(vdir, os.path.basename(u))
        with open(u) as f, open(p, "w") as o:
            o.write(f.read().replace("=/usr/sbin/", "=%s/usr/sbin/" % dest))
        copies.append(p)
    env = dict(os.environ, MANPATH=os.path.join(dest, "usr/share/man"),
               SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run(["systemd-analyze", "verify"] + copies, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    out = r.stdout.decode("utf-8", "replace")
    check(r.returncode == 0 and "upseal" not in out,
          "systemd-analyze verify: exit %d:\n%s" % (r.returncode, out))


@timeout(30)
def test_deployment_yaml_parses(h):
    try:
        import yaml
    except ImportError:
        h.note("python3-yaml not installed: compose/k8s files not parsed")
        return
    with open(os.path.join(REPO, "examples", "compose.yaml")) as f:
        c = yaml.safe_load(f)
    svc = c["services"]
    check_eq(svc["upseal-client"]["network_mode"], "service:proxy",
             "upseal-client shares the proxy's network namespace")
    check_eq(svc["upseal-server"]["network_mode"], "service:app",
             "upseal-server shares the app's network namespace")
    check(c["networks"]["tunnel"].get("internal") is True,
          "the network between the sidecars is not internal")
    check("public" not in svc["app"].get("networks", {}),
          "the app is on the public network")
    kinds = []
    for p in sorted(glob.glob(os.path.join(REPO, "examples", "k8s", "*.yaml"))):
        with open(p) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            kinds.append(d["kind"])
            if d["kind"] != "Deployment":
                continue
            cs = d["spec"]["template"]["spec"]["containers"]
            side = [x for x in cs if x["name"].startswith("upseal-")]
            check_eq(len(side), 1, "%s: upseal sidecar" % os.path.basename(p))
            s = side[0]
            for probe in ("livenessProbe", "readinessProbe"):
                check_eq(s[probe]["httpGet"]["path"], "/healthz",
                         "%s %s" % (s["name"], probe))
    for k in ("ConfigMap", "Deployment", "Service"):
        check(k in kinds, "no %s in examples/k8s" % k)
