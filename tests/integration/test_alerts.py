"""Refusals say why (tlsfuzzer findings): wherever upseal-server refuses
a peer, in the handshake or right after it, the peer gets a fatal alert
before the close, not a bare TCP close. No certificate: handshake_failure
(RFC 5246 7.4.6); a forged CertificateVerify: decrypt_error; a resumed
session whose key is no longer pinned: access_denied (7.2.2)."""

import os
import ssl

from harness import check, check_eq, scaled, timeout
from test_hostile import _forge_tool


def _alert_number(text):
    import re
    m = re.search(r"SSL alert number (\d+)", text)
    return int(m.group(1)) if m else None


@timeout(60)
def test_no_cert_openssl_gets_handshake_failure(h):
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr)
    r = h.openssl(["s_client", "-connect", srv.addr("app"), "-tls1_2",
                   "-ign_eof"], input=b"hello without a cert\n")
    text = r.out + r.err
    check_eq(_alert_number(text), 40, "alert s_client received (40: "
             "handshake_failure); s_client said:\n" + text[-1500:])
    check("hello without a cert" not in r.out, "data came back")
    end = srv.wait_event("conn_end")
    check_eq(end.get("reason"), "no_cert", "server conn_end reason")
    check_eq(be.accepted, 0, "backend connections")


@timeout(60)
def test_no_cert_python_ssl_gets_handshake_failure(h):
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    s = h.connect(srv.addr("app"))
    err = None
    try:
        t = ctx.wrap_socket(s)
        h.socks.append(t)
        t.settimeout(scaled(5, 15))
        t.sendall(b"hello\n")
        got = t.recv(100)
        check(False, "read %r after a certificate-less handshake" % got)
    except ssl.SSLError as e:
        err = e
    check("HANDSHAKE_FAILURE" in str(err).upper(),
          "Python's ssl after a certificate-less handshake: %r, want the "
          "handshake_failure alert" % err)
    srv.wait_event("conn_end", reason="no_cert")
    check_eq(be.accepted, 0, "backend connections")


@timeout(60)
def test_forged_certificate_verify_gets_decrypt_error(h):
    be = h.counting_backend()
    cli, srv, ids = h.pair(be.addr)
    exe = _forge_tool(h)
    host, port = srv.addr("app").rsplit(":", 1)
    other = h.identity("thief")
    r = h.run([exe, host, port, ids["client"].crt, other.key],
              timeout=scaled(20, 60))
    check(r.returncode == 1 and "alert 51" in r.out,
          "forged CertificateVerify: exit %d, output %r; want the alert "
          "51 (decrypt_error)" % (r.returncode, r.out))
    srv.wait_refused()
    check_eq(be.accepted, 0, "backend connections")


def _sha1_tool(h):
    exe = h.path("sha1_cv")
    r = h.run(["cc", "-O1", "-o", exe,
               os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "helpers", "sha1_cv.c"),
               "-lmbedtls", "-lmbedx509", "-lmbedcrypto"], timeout=60)
    check(r.returncode == 0, "building helpers/sha1_cv.c failed:\n%s%s"
          % (r.out, r.err))
    return exe


@timeout(60)
def test_sha1_certificate_verify_refused(h):
    """The pinned client, with its own key, signs CertificateVerify with
    SHA-1, which the CertificateRequest did not offer (RFC 5246 7.4.8):
    refused in the handshake with illegal_parameter. Control: the same
    tool signing with SHA-256 is served."""
    be = h.echo_backend()
    cli, srv, ids = h.pair(be.addr)
    exe = _sha1_tool(h)
    host, port = srv.addr("app").rsplit(":", 1)
    c = ids["client"]
    r = h.run([exe, host, port, c.crt, c.key, "sha256"],
              timeout=scaled(20, 60))
    check(r.returncode == 0 and "echo ok" in r.out,
          "control (SHA-256): exit %d %r" % (r.returncode, r.out))
    r = h.run([exe, host, port, c.crt, c.key, "sha1"], timeout=scaled(20, 60))
    check(r.returncode == 1 and "alert 47" in r.out,
          "SHA-1 CertificateVerify: exit %d, output %r; want refused with "
          "the alert 47 (illegal_parameter)" % (r.returncode, r.out))
    end = srv.wait_refused()
    check_eq(end.get("presented_pin"), c.pin, "the refused client's pin")
    check_eq(be.accepted, 1, "backend connections (the control's)")
