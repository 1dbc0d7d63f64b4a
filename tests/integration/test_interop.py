"""Interop with OpenSSL on each side of the tunnel."""

import os
import re
import signal
import subprocess
import time

from tlsver import tls13
from harness import TestFailure, check, check_eq, recv_exact, tail, timeout


class OpenSSLPeer:
    """An `openssl` process with stdin as a pipe and output to a file."""

    def __init__(self, h, name, args):
        self.h = h
        self.out_path = h.path(name + ".out")
        self._out = open(self.out_path, "wb")
        self.p = subprocess.Popen(["openssl"] + args, stdin=subprocess.PIPE,
                                  stdout=self._out, stderr=subprocess.STDOUT,
                                  cwd=h.dir, start_new_session=True)
        self.pid = self.p.pid
        h.cleanups.append(self.kill)

    def text(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_output(self, regex, timeout_s=10.0):
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if self.p.poll() is not None:
                m = rx.search(self.text())
                if m:
                    return m
                break
            time.sleep(0.02)
        raise TestFailure("openssl output has no /%s/ (exit %r):\n%s"
                          % (regex, self.p.poll(), tail(self.text(), 40)))

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def wait(self, timeout_s=10.0):
        try:
            return self.p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.p.wait(5)
        self.close_stdin()
        self._out.close()


TLS12_SUITES = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305")
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256")


def _protocol(h):
    """Built on mbedTLS 3.x, upseal offers TLS 1.3 too and OpenSSL takes it."""
    return "TLSv1.3" if tls13(h) else "TLSv1.2"


def _allowed(h):
    return TLS13_SUITES if tls13(h) else TLS12_SUITES


@timeout(60)
def test_openssl_s_client_through_upseal_server(h):
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    srv = h.start_server({"app": {"connect": be.addr, "cert": sid.crt,
                                  "key": sid.key, "pin": cid.pin}},
                         name="server")
    peer = OpenSSLPeer(h, "s_client", [
        "s_client", "-connect", srv.addr("app"), "-cert", cid.crt,
        "-key", cid.key, "-CAfile", sid.crt, "-verify_return_error",
        "-no_ign_eof"])
    m = peer.wait_output(r"(TLSv1\.\d), Cipher is (\S+)")
    proto, cipher = m.group(1), m.group(2)
    check(cipher in _allowed(h),
          "negotiated cipher %s is not one of the allowed" % cipher)
    check_eq(proto, _protocol(h), "negotiated protocol")
    peer.wait_output(r"Verify return code: 0 \(ok\)")
    peer.send(b"hello from openssl s_client\n")
    peer.wait_output(r"\nhello from openssl s_client\n")
    peer.close_stdin()
    rc = peer.wait(10)
    check(rc is not None, "s_client did not exit after its stdin closed")
    end = srv.wait_event("conn_end")
    check_eq(end.get("tunnel"), "app", "conn_end tunnel")
    check_eq(be.accepted, 1, "backend connections")
    h.note("openssl s_client <-> upseal-server: %s %s" % (proto, cipher))


@timeout(60)
def test_upseal_client_to_openssl_s_server(h):
    sid = h.identity("srv")
    cid = h.identity("cli")
    peer = OpenSSLPeer(h, "s_server", [
        "s_server", "-accept", "127.0.0.1:0", "-cert", sid.crt, "-key", sid.key,
        "-Verify", "1", "-verify_return_error", "-CAfile", cid.crt,
        "-rev", "-naccept", "1"])
    port = peer.wait_output(r"ACCEPT 127\.0\.0\.1:(\d+)").group(1)
    cli = h.start_client({"app": {"connect": "127.0.0.1:" + port,
                                  "cert": cid.crt, "key": cid.key,
                                  "pin": sid.pin}}, name="client")
    s = h.connect(cli.addr("app"))
    s.sendall(b"hello upseal\n")
    got = recv_exact(s, len(b"laespu olleh\n"), 10)
    check_eq(got, b"laespu olleh\n", "s_server -rev answer through upseal-client")
    s.sendall(b"second line, same connection\n")
    got = recv_exact(s, 29, 10)
    check_eq(got, b"noitcennoc emas ,enil dnoces\n", "second answer")
    cs = peer.wait_output(r"Ciphersuite: (\S+)").group(1)
    pv = peer.wait_output(r"Protocol version: (\S+)").group(1)
    check_eq(pv, _protocol(h), "protocol s_server saw")
    check(cs in _allowed(h), "ciphersuite %s" % cs)
    m = re.search(r"Client cipher list: (\S+)", peer.text())
    if m:
        offered = m.group(1).split(":")
        weak = [c for c in offered if not c.startswith("ECDHE-")
                or not re.search(r"GCM|CHACHA20", c)]
        weak = [c for c in weak if c != "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
                and c not in TLS13_SUITES]   # all AEAD, all (EC)DHE
        check(not weak, "upseal-client offers non-ECDHE/AEAD suites: %s" % weak)
    s.close()
    check(peer.wait(10) is not None, "s_server (-naccept 1) did not finish")
    cli.wait_event("conn_end")
    h.note("upseal-client <-> openssl s_server: %s %s" % (pv, cs))


@timeout(60)
def test_key_exchange_groups(h):
    """X25519 and P-256 are the groups upseal-server takes: X25519 when the
    client prefers it, P-256 (never P-521/P-384) when the client lists the
    bigger curves first, and no handshake when only P-521 is offered."""
    be = h.echo_backend()
    sid = h.identity("srv")
    cid = h.identity("cli")
    srv = h.start_server({"app": {"connect": be.addr, "cert": sid.crt,
                                  "key": sid.key, "pin": cid.pin}},
                         name="server")
    base = ["s_client", "-connect", srv.addr("app"), "-cert", cid.crt,
            "-key", cid.key, "-no_ign_eof", "-tls1_2"]
    for groups, want in (("X25519:P-256", "X25519"),
                         ("P-521:P-384:P-256", "prime256v1"),
                         ("P-521", None)):
        r = h.openssl(base + ["-groups", groups], input=b"")
        text = r.out + r.err
        handshaken = re.search(r"Cipher is ECDHE", text) is not None
        check_eq(handshaken, want is not None,
                 "handshake with groups %s offered (exit %d):\n%s"
                 % (groups, r.returncode, tail(text, 12)))
        if want:
            m = re.search(r"Server Temp Key: ([^\n]*)", text)
            check(m and want in m.group(1), "server temp key %r with %s "
                  "offered, want %s" % (m and m.group(1), groups, want))
