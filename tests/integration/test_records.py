"""Bad records after a pinned handshake (tlsfuzzer findings): a record
whose AEAD tag was tampered with, and a record longer than TLS allows,
each end with its own reason (not `renegotiation`, not `tls_error`), the
alert the RFC asks for, and a count under that reason in /metrics; the
tampered record's bytes reach nobody."""

import socket
import ssl
import threading
import time

from harness import Backend, check, check_eq, scaled, timeout
from test_operate import http
from test_reject import _pinned_tls_client


class RecordingBackend(Backend):
    """Echoes, and keeps every byte each connection received, even when
    the connection then ends in a reset."""

    def __init__(self, h, **kw):
        self.got = {}
        self.ended = threading.Event()
        super().__init__(h, **kw)

    def handle(self, s, idx):
        with self.lock:
            self.got[idx] = bytearray()
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                with self.lock:
                    self.got[idx] += d
                s.sendall(d)
        finally:
            self.ended.set()


def _setup(h):
    be = h._backend(RecordingBackend)
    cli, srv, ids = h.pair(be.addr, upseal={"status": "127.0.0.1:0"})
    s, obj, inc, out = _pinned_tls_client(h, srv.addr("app"), ids["client"])
    obj.write(b"before\n")
    s.sendall(out.read())
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < 7 and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        d = s.recv(65536)
        check(d, "closed before the echo")
        inc.write(d)
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    check_eq(got, b"before\n", "echo through a real record")
    return be, srv, s, obj, inc, out


def _alert_after(s, inc, obj, limit):
    """Read what the server sends until it closes; return the SSLError
    the client's TLS layer raised for it (None if none)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            d = b""
        if d:
            inc.write(d)
        else:
            inc.write_eof()
        try:
            obj.read(65536)
        except ssl.SSLWantReadError:
            if not d:
                return None
            continue
        except ssl.SSLError as e:
            return e
        if not d:
            return None
    return None


def _metric(srv, reason):
    addr = srv.events("status_listening")[-1]["addr"]
    code, _, body = http(addr)
    check_eq(code, 200, "GET /metrics")
    want = 'upseal_connections_closed_total{tunnel="app",reason="%s"} 1' \
        % reason
    check(want in body.decode(), "/metrics has no %r:\n%s"
          % (want, "\n".join(l for l in body.decode().splitlines()
                            if "closed_total" in l)))


@timeout(60)
def test_tampered_record_tag(h):
    be, srv, s, obj, inc, out = _setup(h)
    obj.write(b"tampered payload\n")
    rec = bytearray(out.read())
    check(len(rec) > 5 and rec[0] == 0x17, "not an application data "
          "record: %r" % bytes(rec[:8]))
    rec[-1] ^= 0x01    # one bit of the AEAD tag
    s.sendall(bytes(rec))
    err = _alert_after(s, inc, obj, scaled(5, 15))
    check(err is not None and "BAD_RECORD_MAC" in str(err).upper(),
          "client's TLS layer after the tampered record: %r, want the "
          "bad_record_mac alert" % err)
    end = srv.wait_event("conn_end")
    check_eq(end.get("reason"), "bad_record", "server conn_end reason")
    check("integrity" in end.get("error", ""), "error=%r" % end.get("error"))
    check(be.ended.wait(5), "backend connection still open")
    check_eq([bytes(v) for v in be.got.values()], [b"before\n"],
             "what the backend received")
    _metric(srv, "bad_record")


@timeout(60)
def test_record_over_length_limit(h):
    be, srv, s, obj, inc, out = _setup(h)
    # 2^14 + 2048 + 1: one more than a TLSCiphertext may carry.
    s.sendall(bytes.fromhex("1703034801") + bytes(2048))
    err = _alert_after(s, inc, obj, scaled(5, 15))
    check(err is not None and "RECORD_OVERFLOW" in str(err).upper(),
          "client's TLS layer after the over-long record: %r, want the "
          "record_overflow alert" % err)
    end = srv.wait_event("conn_end")
    check_eq(end.get("reason"), "record_too_large", "server conn_end reason")
    check("record too large" in end.get("error", ""),
          "error=%r" % end.get("error"))
    check(be.ended.wait(5), "backend connection still open")
    check_eq([bytes(v) for v in be.got.values()], [b"before\n"],
             "what the backend received")
    _metric(srv, "record_too_large")
