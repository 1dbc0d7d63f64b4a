"""Scans of upseal-server by TLS tools nobody here wrote: testssl.sh
(protocols, cipher categories, forward secrecy, renegotiation and the
vulnerability checks, gated on its JSON, not its exit code) and sslscan
with a valid client certificate (only ECDHE AEAD suites may be listed).

testssl.sh takes most of a minute, and what it judges (protocols, suites,
extensions) does not depend on the sanitizers: it runs in the plain pass
only. sslscan runs in both.
"""

import json
import re
import shutil
import xml.etree.ElementTree as ET

from harness import SAN, check, slow, timeout

AEAD = re.compile(r"^ECDHE-ECDSA-(AES128-GCM-SHA256|AES256-GCM-SHA384|"
                  r"CHACHA20-POLY1305)$")
# TLS 1.3 suite names (offered by an mbedTLS 3.6 build): AEAD and (EC)DHE by
# construction.
TLS13 = re.compile(r"^TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|"
                   r"CHACHA20_POLY1305_SHA256)$")


def _server(h):
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr)
    return srv, ids


@slow
@timeout(300)
def test_testssl(h):
    if SAN:
        h.note("skipped in the sanitizer pass: testssl.sh judges the TLS "
               "configuration, which the plain pass already scanned")
        return
    exe = shutil.which("testssl") or shutil.which("testssl.sh")
    check(exe, "testssl.sh is not installed (tests/deps.sh installs it)")
    srv, ids = _server(h)
    out = h.path("testssl.json")
    r = h.run(["timeout", "240", exe, "--jsonfile", out, "--warnings", "off",
               "--quiet", "--color", "0", "--openssl", "/usr/bin/openssl",
               "-p", "-f", "-R", "-U", "--ip", "one",
               srv.addr("app")], timeout=260)
    check(r.returncode != 124, "testssl.sh did not finish within 240 s")
    try:
        with open(out) as f:
            findings = json.load(f)
    except (OSError, ValueError) as e:
        check(False, "testssl.sh wrote no JSON (%r), exit %d:\n%s"
              % (e, r.returncode, r.out[-3000:]))
    by_id = {x["id"]: x for x in findings}
    problems = []

    def want(fid, pred, what):
        x = by_id.get(fid)
        if x is None:
            problems.append("%s: no finding in the JSON" % fid)
        elif not pred(x["finding"]):
            problems.append("%s: %r, want %s" % (fid, x["finding"], what))

    # Protocols: TLS 1.2 (and 1.3 on an mbedTLS 3.6 build), nothing older.
    for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        want(p, lambda f: f.startswith("not offered"), "not offered")
    want("TLS1_2", lambda f: f.startswith("offered"), "offered")
    # Cipher categories (-s) cost testssl.sh 80 s more; the complete list of
    # accepted suites comes from sslscan below (all ECDHE AEAD). Should a
    # category check be in the JSON anyway, only the strong one may be offered.
    for fid, x in by_id.items():
        if fid.startswith("cipherlist_") and fid != "cipherlist_STRONG" and \
                not x["finding"].startswith("not offered"):
            problems.append("%s: %r, want not offered" % (fid, x["finding"]))
    # Forward secrecy on every suite, and only our suites.
    want("PFS", lambda f: f.startswith("offered"), "offered")
    fs = (by_id.get("PFS_ciphers") or {}).get("finding", "").split()
    check(fs, "testssl.sh listed no forward-secret suites")
    for c in fs:
        if not (AEAD.match(c) or TLS13.match(c)):
            problems.append("suite %s is not an ECDHE-ECDSA AEAD suite" % c)
    # Renegotiation: none initiated by the client. testssl.sh 3.0 cannot
    # present a client certificate, so it may say it could not test; the
    # test hostile.renegotiation_refused tries it with a pinned client.
    x = by_id.get("secure_client_renego", {"finding": "", "severity": ""})
    if "prevents this from being tested" in x["finding"]:
        h.note("secure_client_renego: %s (see hostile.renegotiation_refused)"
               % x["finding"])
    elif x["severity"] not in ("OK", "INFO"):
        problems.append("secure_client_renego: %s %r" % (x["severity"],
                                                        x["finding"]))
    # No finding of severity HIGH or CRITICAL, whatever check made it.
    for x in findings:
        if x.get("severity") in ("HIGH", "CRITICAL"):
            problems.append("%s %s: %s" % (x["severity"], x["id"], x["finding"]))
    check(not problems, "testssl.sh findings:\n  " + "\n  ".join(problems))
    sev = {}
    for x in findings:
        sev[x.get("severity")] = sev.get(x.get("severity"), 0) + 1
    h.note("testssl.sh: %d findings by severity %s; FS suites %s"
           % (len(findings), sev, " ".join(fs)))


@timeout(120)
def test_sslscan_with_client_certificate(h):
    exe = shutil.which("sslscan")
    check(exe, "sslscan is not installed (tests/deps.sh installs it)")
    srv, ids = _server(h)
    c = ids["client"]
    out = h.path("sslscan.xml")
    r = h.run(["timeout", "100", exe, "--no-colour", "--certs=" + c.crt,
               "--pk=" + c.key, "--xml=" + out, srv.addr("app")], timeout=110)
    check(r.returncode == 0, "sslscan exit %d:\n%s" % (r.returncode, r.out))
    root = ET.parse(out).getroot()
    enabled = sorted("%s%s" % (p.get("type"), p.get("version"))
                     for p in root.iter("protocol") if p.get("enabled") == "1")
    check(enabled in (["tls1.2"], ["tls1.2", "tls1.3"]),
          "protocols enabled: %r, want TLS 1.2 (and 1.3 on mbedTLS 3.6)"
          % enabled)
    suites = [(x.get("sslversion"), x.get("cipher"))
              for x in root.iter("cipher")
              if x.get("status") in ("accepted", "preferred")]
    check(suites, "sslscan listed no suites:\n%s" % r.out)
    bad = [s for s in suites
           if not (AEAD.match(s[1]) or TLS13.match(s[1]))]
    check(not bad, "non-ECDHE-AEAD suites accepted: %r" % bad)
    for reneg in root.iter("renegotiation"):
        check(reneg.get("supported") != "1" or reneg.get("secure") == "1",
              "insecure renegotiation supported: %r" % reneg.attrib)
    for hb in root.iter("heartbleed"):
        check(hb.get("vulnerable") == "0", "heartbleed: %r" % hb.attrib)
    h.note("sslscan: %s; suites %s" % (" ".join(enabled),
                                      " ".join(s[1] for s in suites)))
