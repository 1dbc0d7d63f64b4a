"""The PROXY protocol, with real peers on both ends.

  sender (Python, nginx stream, haproxy) --PROXY header + plaintext-->
  upseal-client (proxy_protocol = accept) ==mTLS, upseal/2 preamble==>
  upseal-server (proxy_protocol = v1 | v2) --PROXY header + plaintext-->
  backend (raw Python socket, haproxy accept-proxy, nginx proxy_protocol)

What the backends receive is parsed here by a parser of this file's own
(nothing of the product's is imported), byte by byte: the v2 signature,
command, family, addresses, every TLV (authority, unique id, SSL and its
sub-TLVs, the client's pin), then the data, intact. Bad headers are
refused by upseal-client with nothing reaching upseal-server; the
counters in /metrics follow.
"""

import base64
import os
import re
import shutil
import socket
import struct
import time

from harness import (Backend, Proc, TestFailure, check, check_eq,
                     free_port, recv_all, recv_exact, scaled, tail, timeout,
                     wait_closed)
from test_operate import Side, scrape
from test_pool import _wait_metric
from test_twohost import (NET_A, NET_B, in_two_hosts, netns_or_skip,
                          ns_connect, stop_group)
from tlsver import tls13

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
T_AUTHORITY, T_CRC32C, T_UNIQUE_ID, T_SSL, T_PIN = 0x02, 0x03, 0x05, 0x20, 0xE0
S_VERSION, S_CN, S_CIPHER, S_SIG_ALG, S_KEY_ALG = 0x21, 0x22, 0x23, 0x24, 0x25
SNI = "backend.example"


# --- an independent PROXY protocol parser (haproxy's proxy-protocol.txt) --

def split_header(buf):
    """(header, rest) of what a backend read: v1 or v2, else a failure."""
    if buf.startswith(V2_SIG):
        check(len(buf) >= 16, "a v2 header cut short: %r" % buf)
        n = 16 + struct.unpack("!H", buf[14:16])[0]
        check(len(buf) >= n, "v2 header of %d bytes, %d came" % (n, len(buf)))
        return buf[:n], buf[n:]
    if buf.startswith(b"PROXY "):
        i = buf.find(b"\r\n")
        check(0 < i and i + 2 <= 107, "v1 line without CRLF within 107 "
              "bytes: %r" % buf[:120])
        return buf[:i + 2], buf[i + 2:]
    raise TestFailure("no PROXY header at the start of %r" % buf[:64])


def parse_tlvs(b, what):
    out = []
    off = 0
    while off < len(b):
        check(off + 3 <= len(b), "%s: a TLV head cut at %d of %d: %r"
              % (what, off, len(b), b))
        t, n = b[off], struct.unpack("!H", b[off + 1:off + 3])[0]
        check(off + 3 + n <= len(b), "%s: TLV 0x%02x of %d bytes overruns "
              "(%d left)" % (what, t, n, len(b) - off - 3))
        out.append((t, bytes(b[off + 3:off + 3 + n])))
        off += 3 + n
    return out


def parse_v2(hdr):
    """A v2 header into a dict: cmd, fam, src, sport, dst, dport, tlvs."""
    check(hdr[:12] == V2_SIG, "v2 signature: %r" % hdr[:12])
    body = hdr[16:]
    check_eq(len(body), struct.unpack("!H", hdr[14:16])[0], "v2 length")
    d = {"ver_cmd": hdr[12], "fam": hdr[13]}
    fam = hdr[13]
    if fam == 0x11:
        alen, af, n = 12, socket.AF_INET, 4
    elif fam == 0x21:
        alen, af, n = 36, socket.AF_INET6, 16
    elif fam == 0x00:
        alen = 0
    elif fam == 0x31:
        alen = 216
        check(len(body) >= alen, "v2 UNIX address block of %d bytes"
              % len(body))
        d["src"] = bytes(body[:108]).rstrip(b"\0").decode()
        d["dst"] = bytes(body[108:216]).rstrip(b"\0").decode()
    else:
        raise TestFailure("v2 family 0x%02x unexpected here" % fam)
    check(len(body) >= alen, "v2 address block of %d bytes, %d there"
          % (alen, len(body)))
    if alen and fam != 0x31:
        d["src"] = socket.inet_ntop(af, body[:n])
        d["dst"] = socket.inet_ntop(af, body[n:2 * n])
        d["sport"], d["dport"] = struct.unpack("!HH", body[2 * n:2 * n + 4])
    d["tlvs"] = parse_tlvs(body[alen:], "v2 TLVs")
    return d


def tlv(d, t):
    vals = [v for k, v in d["tlvs"] if k == t]
    check_eq(len(vals), 1, "number of TLVs of type 0x%02x in %r"
             % (t, d["tlvs"]))
    return vals[0]


def parse_ssl(v):
    check(len(v) >= 5, "PP2_TYPE_SSL of %d bytes" % len(v))
    return v[0], struct.unpack("!I", v[1:5])[0], parse_tlvs(v[5:], "SSL TLV")


def v2_header(src, dst, sport, dport, tlvs=b"", cmd=0x21, fam=None):
    """A v2 header as a sender (nginx, haproxy) writes it."""
    if fam is None:
        fam = 0x21 if ":" in src else 0x11
    af = socket.AF_INET6 if fam >> 4 == 2 else socket.AF_INET
    addrs = (socket.inet_pton(af, src) + socket.inet_pton(af, dst) +
             struct.pack("!HH", sport, dport))
    body = addrs + tlvs
    return V2_SIG + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def crc32c(data):
    """CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(hdr, wrong=False):
    """hdr (a v2 header) with a PP2_TYPE_CRC32C TLV appended, right or
    wrong."""
    body = bytearray(hdr[16:]) + b"\x03\x00\x04\x00\x00\x00\x00"
    h = bytearray(hdr[:14]) + struct.pack("!H", len(body)) + body
    crc = crc32c(bytes(h)) ^ (1 if wrong else 0)
    h[-4:] = struct.pack("!I", crc)
    return bytes(h)


def v2_local():
    return V2_SIG + b"\x20\x00\x00\x00"


def hostport(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# --- peers ----------------------------------------------------------------

class RecordingBackend(Backend):
    """Reads to EOF (the PROXY header and the data), records it with the
    TCP peer it came from, answers b"ok" and FIN."""

    def handle(self, s, idx):
        peer = s.getpeername()
        buf = bytearray()
        while len(buf) < 1 << 20:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.sendall(b"ok")
        s.shutdown(socket.SHUT_WR)
        with self.lock:
            self.results.append({"idx": idx, "raw": bytes(buf), "peer": peer})


def exchange(h, addr, payload, chunks=None, src_ip=None, timeout_s=None):
    """Connect to addr (from src_ip), send payload (in chunks: a list of
    lengths, one send each), half-close, expect b"ok" then EOF."""
    timeout_s = timeout_s or scaled(10, 30)
    host, port = hostport(addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.socks.append(s)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if src_ip:
        s.bind((src_ip, 0))
    s.settimeout(timeout_s)
    s.connect((host, port))
    if chunks is None:
        s.sendall(payload)
    else:
        off = 0
        for n in chunks:
            s.sendall(payload[off:off + n])
            off += n
        s.sendall(payload[off:])
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s, timeout_s)
    check_eq(got, (b"ok", "eof"), "the backend's answer through %s" % addr)
    local = s.getsockname()
    s.close()
    return local


def pin_bytes(h, crt):
    """The 32 bytes `upseal-certs pin CRT` names."""
    r = h.run([h.bin("upseal-certs"), "pin", crt])
    check_eq(r.returncode, 0, "upseal-certs pin %s (%s)" % (crt, r.err))
    m = re.fullmatch(r"sha256//([A-Za-z0-9+/]{43}=)", r.out.strip())
    check(m, "upseal-certs pin printed %r" % r.out)
    raw = base64.b64decode(m.group(1))
    check_eq(len(raw), 32, "pin length")
    return raw


def start_sides(h, backend_addr, tag="", sid=None, cid=None,
                server_extra=None, client_extra=None, upseal=None):
    """upseal-server in front of backend_addr, upseal-client in front of
    it, both with a status endpoint; names end in tag (several pairs)."""
    sid = sid or h.identity("srv")
    cid = cid or h.identity("cli")
    up = {"status": "127.0.0.1:0", "log_level": "debug"}
    up.update(upseal or {})
    st = {"app": dict({"listen": "127.0.0.1:0", "connect": backend_addr,
                       "cert": sid.crt, "key": sid.key, "pin": [cid.pin],
                       "handshake_timeout": "5s"}, **(server_extra or {}))}
    srv = Side(h, "server", "server" + tag, st, up)
    ct = {"app": dict({"listen": "127.0.0.1:0", "connect": srv.addr(),
                       "cert": cid.crt, "key": cid.key, "pin": [sid.pin],
                       "connect_timeout": "3s", "handshake_timeout": "5s"},
                      **(client_extra or {}))}
    cli = Side(h, "client", "client" + tag, ct, up)
    return cli, srv, sid, cid


def conn_end(side, n, **fields):
    """The n-th conn_end line of side (waited for, bounded)."""
    return side.p.wait_event("conn_end", scaled(10, 30), count=n, **fields)


# --- 1. v2, byte by byte --------------------------------------------------

def _check_v2_from_server(h, res, srv_end, srv, cid, data, full, pin):
    hdr, rest = split_header(res["raw"])
    check_eq(rest, data, "the data after the v2 header")
    d = parse_v2(hdr)
    check_eq(d["ver_cmd"], 0x21, "v2 version/command (v2, PROXY)")
    check_eq(d["fam"], 0x11, "v2 family (TCP over IPv4)")
    check_eq((d["src"], d["sport"]), hostport(srv_end["peer"]),
             "v2 source vs the server's conn_end peer=")
    check_eq((d["dst"], d["dport"]), hostport(srv.addr()),
             "v2 destination vs the server's listen address")
    types = [t for t, _ in d["tlvs"]]
    check_eq(sorted(types), sorted([T_AUTHORITY, T_UNIQUE_ID, T_SSL, T_PIN]),
             "the TLV types sent (no CRC32C, nothing else)")
    check_eq(tlv(d, T_AUTHORITY), SNI.encode(), "PP2_TYPE_AUTHORITY (SNI)")
    check_eq(tlv(d, T_UNIQUE_ID), srv_end["id"].encode(),
             "PP2_TYPE_UNIQUE_ID vs the server's conn_end id")
    client, verify, subs = parse_ssl(tlv(d, T_SSL))
    check_eq(client, 0x07 if full else 0x05,
             "PP2_TYPE_SSL client byte (%s handshake)"
             % ("full" if full else "resumed"))
    check_eq(verify, 0, "PP2_TYPE_SSL verify")
    sub = dict(subs)
    check_eq(sorted(sub), [S_VERSION, S_CN, S_CIPHER, S_SIG_ALG, S_KEY_ALG],
             "SSL sub-TLV types (%r)" % subs)
    check_eq(len(subs), 5, "SSL sub-TLVs, each once")
    v13 = tls13(h)
    check_eq(sub[S_VERSION], b"TLSv1.3" if v13 else b"TLSv1.2",
             "SSL_VERSION")
    check_eq(sub[S_CN], cid.name.encode(), "SSL_CN (the client cert's CN)")
    ciphers = ([b"TLS_CHACHA20_POLY1305_SHA256", b"TLS_AES_128_GCM_SHA256",
                b"TLS_AES_256_GCM_SHA384"] if v13 else
               [b"ECDHE-ECDSA-CHACHA20-POLY1305",
                b"ECDHE-ECDSA-AES128-GCM-SHA256",
                b"ECDHE-ECDSA-AES256-GCM-SHA384"])
    check(sub[S_CIPHER] in ciphers, "SSL_CIPHER %r, an OpenSSL name of "
          "one of %r" % (sub[S_CIPHER], ciphers))
    check_eq(sub[S_SIG_ALG], b"ecdsa-with-SHA256", "SSL_SIG_ALG")
    check_eq(sub[S_KEY_ALG], b"EC256", "SSL_KEY_ALG")
    check_eq(tlv(d, T_PIN), pin, "TLV 0xE0 vs `upseal-certs pin` of the "
             "client's certificate")
    return sub


@timeout(60)
def test_v2_header_byte_exact(h):
    """server proxy_protocol = v2 to a raw backend: every field of the
    header checked; a second connection resumes (SSL client 0x05)."""
    be = h._backend(RecordingBackend)
    cli, srv, sid, cid = start_sides(
        h, be.addr, server_extra={"proxy_protocol": "v2"},
        client_extra={"server_name": SNI})
    pin = pin_bytes(h, cid.crt)
    check_eq("sha256//" + base64.b64encode(pin).decode(), cid.pin,
             "upseal-certs pin vs what upseal-certs new printed")
    v13 = tls13(h)
    data = [b"first connection through the tunnel\n" * 40,
            b"second one, " + bytes(range(256)) * 8]
    for i, payload in enumerate(data):
        exchange(h, cli.addr(), payload)
        res = be.wait_results(i + 1)[i]
        end = conn_end(srv, i + 1)
        hs = srv.p.wait_event("handshake_done", scaled(10, 30), count=i + 1)
        chs = cli.p.wait_event("handshake_done", scaled(10, 30), count=i + 1)
        # mbedTLS 3.6's TLS 1.3 issues no tickets here (test_resumption).
        want_resumed = "true" if (i == 1 and not v13) else "false"
        check_eq((hs.get("resumed"), chs.get("resumed")),
                 (want_resumed, want_resumed),
                 "connection %d: resumed= on the server and the client" % i)
        check_eq(hs["id"], end["id"], "handshake_done and conn_end ids")
        check_eq(end["reason"], "closed", "server conn_end reason")
        check("client" not in end, "server conn_end has client= with "
              "nothing carried: %r" % end)
        check_eq(res["peer"][0], "127.0.0.1", "backend's TCP peer")
        sub = _check_v2_from_server(h, res, end, srv, cid, payload,
                                    want_resumed == "false", pin)
        h.note("connection %d: %s %s resumed=%s" % (
            i, sub[S_VERSION].decode(), sub[S_CIPHER].decode(),
            want_resumed))
    m = scrape(srv)
    check_eq(m.count("upseal_client_addresses_carried_total", tunnel="app"),
             0, "server: addresses carried (none: a loopback peer)")
    check_eq(m.count("upseal_proxy_headers_total", tunnel="app"), 2,
             "server: PROXY headers sent to the backend")


# --- 2. v1 ------------------------------------------------------------------

@timeout(60)
def test_v1_line_exact(h):
    """server proxy_protocol = v1: `PROXY TCP4 src dst sport dport\\r\\n`
    (the TLS peer, the server's address), then the data."""
    be = h._backend(RecordingBackend)
    cli, srv, sid, cid = start_sides(h, be.addr,
                                     server_extra={"proxy_protocol": "v1"})
    data = b"after the v1 line\r\n" * 100
    exchange(h, cli.addr(), data)
    res = be.wait_results(1)[0]
    end = conn_end(srv, 1)
    pip, pport = hostport(end["peer"])
    dip, dport = hostport(srv.addr())
    line = ("PROXY TCP4 %s %s %d %d\r\n" % (pip, dip, pport, dport)).encode()
    check_eq(res["raw"][:len(line)], line, "the v1 line")
    check_eq(res["raw"][len(line):], data, "the data after the v1 line")

    # upseal-server on [::1]: the TLS end is IPv6, the line TCP6.
    be6 = h._backend(RecordingBackend)
    cli6, srv6, _, _ = start_sides(h, be6.addr, "-v6", sid, cid,
                                   server_extra={"proxy_protocol": "v1",
                                                 "listen": "[::1]:0"})
    exchange(h, cli6.addr(), data)
    res = be6.wait_results(1)[0]
    end = conn_end(srv6, 1)
    pip, pport = hostport(end["peer"])
    dip, dport = hostport(srv6.addr())
    check_eq((pip, dip), ("::1", "::1"), "IPv6 ends")
    line = ("PROXY TCP6 ::1 ::1 %d %d\r\n" % (pport, dport)).encode()
    check_eq(res["raw"], line + data, "the v1 TCP6 line and the data")


# --- 3. accept, and the address carried ------------------------------------

CARRIED_V4 = ("203.0.113.5", "198.51.100.1", 4242, 443)
CARRIED_V6 = ("2001:db8::7", "2001:db8::1", 5555, 443)


def _carried_case(h, tag, pool, server_pp, sid, cid, trust=True):
    be = h._backend(RecordingBackend)
    se = {"proxy_protocol": server_pp}
    if not trust:
        se["trust_client_address"] = "no"
    ce = {"proxy_protocol": "accept"}
    if pool:
        ce["pool"] = str(pool)
    cli, srv, _, _ = start_sides(h, be.addr, tag, sid, cid, se, ce)
    what = "%s (pool %d, server %s, trust %s)" % (tag, pool, server_pp, trust)
    sends = [
        (v2_header(*CARRIED_V4), CARRIED_V4,
         b"data after a v2 header, same write\n" * 10),
        (b"PROXY TCP6 %s %s %s %s\r\n" % tuple(str(x).encode()
                                               for x in CARRIED_V6),
         CARRIED_V6, b"data after a v1 line for an IPv6 client\n" * 10),
    ]
    for i, (hdr, addrs, data) in enumerate(sends):
        if pool:    # every connection through a ready pooled one
            cli.p.wait_event("pool_filled", scaled(10, 30))
            _wait_metric(cli, "upseal_pool_ready", pool)
        exchange(h, cli.addr(), hdr + data)
        res = be.wait_results(i + 1)[i]
        send = conn_end(srv, i + 1)
        cend = conn_end(cli, i + 1)
        src, dst, sport, dport = addrs
        fmt = "[%s]:%d" if ":" in src else "%s:%d"
        check_eq(cend.get("client"), fmt % (src, sport),
                 "%s #%d: client= on upseal-client's conn_end" % (what, i))
        if trust:
            check_eq(send.get("client"), fmt % (src, sport),
                     "%s #%d: client= on upseal-server's conn_end" % (what, i))
            want = (src, dst, sport, dport)
        else:
            check("client" not in send, "%s #%d: upseal-server logged an "
                  "untrusted client=: %r" % (what, i, send))
            pip, pport = hostport(send["peer"])
            dip, dp = hostport(srv.addr())
            want = (pip, dip, pport, dp)
        hdr_got, rest = split_header(res["raw"])
        check_eq(rest, data, "%s #%d: the data after the header" % (what, i))
        if server_pp == "v2":
            d = parse_v2(hdr_got)
            check_eq(d["ver_cmd"], 0x21, "%s #%d: v2 command" % (what, i))
            check_eq(d["fam"], 0x21 if ":" in want[0] else 0x11,
                     "%s #%d: v2 family" % (what, i))
            check_eq((d["src"], d["dst"], d["sport"], d["dport"]), want,
                     "%s #%d: v2 addresses" % (what, i))
            check_eq(tlv(d, T_UNIQUE_ID), send["id"].encode(),
                     "%s #%d: unique id" % (what, i))
        else:
            proto = "TCP6" if ":" in want[0] else "TCP4"
            check_eq(hdr_got, ("PROXY %s %s %s %d %d\r\n" % ((proto,) + want))
                     .encode(), "%s #%d: v1 line" % (what, i))
    mc, ms = scrape(cli), scrape(srv)
    check_eq(mc.count("upseal_proxy_headers_total", tunnel="app"), 2,
             "%s: client proxy headers" % what)
    check_eq(mc.count("upseal_client_addresses_carried_total", tunnel="app"),
             2, "%s: client addresses carried" % what)
    check_eq(ms.count("upseal_client_addresses_carried_total", tunnel="app"),
             2 if trust else 0, "%s: server addresses carried" % what)
    check_eq(ms.count("upseal_proxy_headers_total", tunnel="app"), 2,
             "%s: server PROXY headers sent" % what)
    if pool:
        check_eq((mc.count("upseal_pool_handoffs_total", tunnel="app"),
                  mc.count("upseal_pool_misses_total", tunnel="app")),
                 (2, 0), "%s: pool handoffs, misses" % what)


@timeout(90)
def test_accept_carries_address_unpooled(h):
    """proxy_protocol = accept, no pool: a v2 header (IPv4) and a v1 line
    (IPv6) from a Python sender; the backend sees those addresses, with
    server v2 and v1; trust_client_address = no: the TLS peer's."""
    sid, cid = h.identity("srv"), h.identity("cli")
    _carried_case(h, "-v2", 0, "v2", sid, cid)
    _carried_case(h, "-v1", 0, "v1", sid, cid)
    _carried_case(h, "-untrusted", 0, "v2", sid, cid, trust=False)


@timeout(90)
def test_accept_carries_address_pooled(h):
    """The same through pool = 2: the preamble sent at handoff carries the
    address."""
    sid, cid = h.identity("srv"), h.identity("cli")
    _carried_case(h, "-v2", 2, "v2", sid, cid)
    _carried_case(h, "-v1", 2, "v1", sid, cid)
    _carried_case(h, "-untrusted", 2, "v1", sid, cid, trust=False)


# --- 4. bad input -------------------------------------------------------------

def _bad_cases():
    good4 = v2_header("192.0.2.10", "192.0.2.20", 1000, 2000)
    over = bytearray(v2_header("192.0.2.10", "192.0.2.20", 1000, 2000))
    over[0] ^= 0x01
    tlv_overrun = v2_header("192.0.2.10", "192.0.2.20", 1000, 2000,
                            tlvs=b"\x04\x00\x28" + b"ab")
    return [
        # (name, bytes, close after sending, reason)
        ("truncated v2 then close", good4[:10], True,
         "proxy_header_truncated"),
        ("truncated v1 then close", b"PROXY TCP4 192.0.2.1", True,
         "proxy_header_truncated"),
        ("wrong signature byte", bytes(over), False, "proxy_header_invalid"),
        ("plain HTTP, no header", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
         False, "proxy_header_invalid"),
        ("v1 over 107 bytes without CRLF",
         b"PROXY UNKNOWN " + b"x" * 110, False,
         "proxy_header_invalid"),
        ("v2 unknown family 0x41",
         V2_SIG + b"\x21\x41\x00\x0c" + b"\x00" * 12, False,
         "proxy_header_invalid"),
        ("v2 UDP over IPv4 (0x12)",
         V2_SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12, False,
         "proxy_header_invalid"),
        ("v2 length past the limit",
         V2_SIG + b"\x21\x11\xff\xff" + b"\x00" * 12, False,
         "proxy_header_invalid"),
        ("v2 TLVs overrunning the header", tlv_overrun, False,
         "proxy_header_invalid"),
        ("v2 with a wrong CRC32C",
         with_crc(v2_header("192.0.2.10", "192.0.2.20", 1000, 2000),
                  wrong=True), False, "proxy_header_invalid"),
        ("v2 unknown version 3", V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,
         False, "proxy_header_invalid"),
    ]


@timeout(120)
def test_bad_headers_refused(h):
    """A table of bad headers against one running upseal-client: each ends
    its connection with its reason and an error=, counted in /metrics;
    nothing reaches upseal-server; the good connections in between (a
    header split byte by byte, LOCAL, PROXY UNKNOWN) carry their data."""
    be = h._backend(RecordingBackend)
    cli, srv, _, _ = start_sides(
        h, be.addr, server_extra={"proxy_protocol": "v2"},
        client_extra={"proxy_protocol": "accept",
                      "proxy_header_timeout": "500ms"})
    addr = cli.addr()
    ends = {"c": 0, "s": 0}
    good = {"n": 0}
    want = {}

    def good_one(hdr, data, chunks=None, carried=None):
        exchange(h, addr, hdr + data, chunks=chunks)
        good["n"] += 1
        ends["c"] += 1
        ends["s"] += 1
        res = be.wait_results(good["n"])[good["n"] - 1]
        cend = conn_end(cli, ends["c"])
        send = conn_end(srv, ends["s"])
        check_eq(cend["reason"], "closed", "good connection's client reason")
        hg, rest = split_header(res["raw"])
        check_eq(rest, data, "data after a good header")
        d = parse_v2(hg)
        if carried:
            check_eq((d["src"], d["sport"]), carried, "carried source")
            check_eq(cend.get("client"), "%s:%d" % carried, "client=")
        else:   # LOCAL / UNKNOWN: the backend is told the TLS peer
            check_eq((d["src"], d["sport"]), hostport(send["peer"]),
                     "source with nothing carried (the TLS peer)")
            check("client" not in cend and "client" not in send,
                  "client= with nothing carried: %r / %r" % (cend, send))

    def bad_one(name, payload, close, reason):
        s = socket.create_connection(hostport(addr), timeout=10)
        h.socks.append(s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(payload)
        if close:
            s.shutdown(socket.SHUT_WR)
        how, secs, n = wait_closed(s, scaled(5, 15))
        s.close()
        check(how in ("eof", "reset") and n == 0,
              "%s: upseal-client did not just close (%s after %.1fs, %d "
              "bytes)" % (name, how, secs, n))
        ends["c"] += 1
        e = conn_end(cli, ends["c"])
        check_eq(e["reason"], reason, "%s: conn_end reason" % name)
        check(e.get("error"), "%s: conn_end without error=: %r" % (name, e))
        check("client" not in e, "%s: client= on a refused header" % name)
        want[reason] = want.get(reason, 0) + 1
        h.note("%s: %s (%s)" % (name, reason, e.get("error")))

    good_one(v2_header("192.0.2.77", "192.0.2.1", 3333, 80), b"first\n",
             carried=("192.0.2.77", 3333))
    for name, payload, close, reason in _bad_cases():
        bad_one(name, payload, close, reason)
        check_eq(len(srv.p.events("conn_end")), ends["s"],
                 "%s: upseal-server connections" % name)
        check_eq(be.accepted, good["n"], "%s: backend connections" % name)
        # Another connection works right after.
        good_one(b"PROXY TCP4 192.0.2.78 192.0.2.1 4444 80\r\n",
                 b"after " + name.encode() + b"\n",
                 carried=("192.0.2.78", 4444))

    # A header split byte by byte, with the data after it.
    hdr = v2_header("192.0.2.79", "192.0.2.1", 5555, 80)
    good_one(hdr, b"byte by byte\n", chunks=[1] * len(hdr),
             carried=("192.0.2.79", 5555))
    # TLVs from the sender (a right CRC32C, NOOP, AUTHORITY) are fine.
    assert crc32c(b"123456789") == 0xE3069283
    hdr = with_crc(v2_header("192.0.2.80", "192.0.2.1", 6666, 80,
                             tlvs=b"\x04\x00\x02xx\x02\x00\x03a.b"))
    good_one(hdr, b"after TLVs\n", carried=("192.0.2.80", 6666))
    # A header, then the sender's FIN at once: no data, a clean end.
    good_one(v2_header("192.0.2.81", "192.0.2.1", 7777, 80), b"",
             carried=("192.0.2.81", 7777))
    # A header and far more than its 2048-byte limit in the same write.
    big = bytes(range(256)) * 1024
    good_one(v2_header("192.0.2.82", "192.0.2.1", 8888, 80), big,
             carried=("192.0.2.82", 8888))
    # LOCAL and PROXY UNKNOWN: accepted, nothing carried.
    good_one(v2_local(), b"after LOCAL\n")
    good_one(b"PROXY UNKNOWN\r\n", b"after UNKNOWN\n")

    # Nothing, then a clean close (a TCP health check): closed, not a
    # warning, and nothing reaches the server.
    s_before = len(srv.p.events("conn_end"))
    s = socket.create_connection(hostport(addr), timeout=10)
    h.socks.append(s)
    s.shutdown(socket.SHUT_WR)
    how, secs, n = wait_closed(s, scaled(5, 15))
    s.close()
    check(how == "eof" and n == 0, "empty connection: %s after %.1fs, %d "
          "bytes" % (how, secs, n))
    ends["c"] += 1
    e = conn_end(cli, ends["c"])
    check_eq(e["reason"], "closed", "empty connection: reason")
    check("before sending anything" in e.get("error", ""),
          "empty connection: error=%r" % e.get("error"))
    check_eq(len(srv.p.events("conn_end")), s_before,
             "empty connection: upseal-server connections")

    # A sender that stops half-way: proxy_header_timeout (500ms).
    s_before, be_before = len(srv.p.events("conn_end")), be.accepted
    hs_before = len(srv.p.events("handshake_done"))
    s = socket.create_connection(hostport(addr), timeout=10)
    h.socks.append(s)
    s.sendall(hdr[:20])
    how, secs, n = wait_closed(s, scaled(5, 15))
    s.close()
    check(how in ("eof", "reset"), "half a header: still open after %.1fs"
          % secs)
    check(0.4 <= secs, "half a header: closed after %.2fs, before the "
          "500ms proxy_header_timeout" % secs)
    ends["c"] += 1
    e = conn_end(cli, ends["c"])
    check_eq(e["reason"], "proxy_header_timeout", "half a header: reason")
    check(e.get("error"), "half a header: no error=: %r" % e)
    want["proxy_header_timeout"] = 1
    check_eq((len(srv.p.events("conn_end")),
              len(srv.p.events("handshake_done")), be.accepted),
             (s_before, hs_before, be_before),
             "server conn_end, server handshakes, backend accepts after "
             "a timed-out header")
    good_one(v2_local(), b"still working\n")

    mc = scrape(cli)
    for reason, n in sorted(want.items()):
        check_eq(mc.count("upseal_connections_closed_total", tunnel="app",
                          reason=reason), n, "client closed_total %s" % reason)
    check_eq(mc.count("upseal_proxy_headers_total", tunnel="app"), good["n"],
             "client proxy headers accepted")
    carried = 1 + len(_bad_cases()) + 4
    check_eq(mc.count("upseal_client_addresses_carried_total", tunnel="app"),
             carried, "client addresses carried")
    ms = scrape(srv)
    check_eq(ms.count("upseal_client_addresses_carried_total", tunnel="app"),
             carried, "server addresses carried")
    check_eq(ms.count("upseal_connections_closed_total", tunnel="app",
                      reason="closed"), good["n"], "server connections")


# --- 5. real senders and backends: nginx and haproxy ------------------------

SRC_IP = "127.0.0.9"    # the Python client's address: not 127.0.0.1


def _nginx_modules(h, realip=False):
    """The load_module line `stream {}` needs ('' when built in); skips
    when this nginx has no stream module (or, realip, no realip)."""
    check(shutil.which("nginx"), "nginx is not installed (tests/deps.sh)")
    r = h.run(["nginx", "-V"])
    v = r.out + r.err
    if realip and "--with-http_realip_module" not in v:
        h.skip("this nginx has no http_realip_module (nginx -V)")
    if re.search(r"--with-stream(\s|$)", v):
        return ""
    if "--with-stream=dynamic" not in v:
        h.skip("this nginx has no stream module (nginx -V)")
    m = re.search(r"--modules-path=(\S+)", v)
    so = os.path.join(m.group(1) if m else "/usr/lib/nginx/modules",
                      "ngx_stream_module.so")
    if not os.path.exists(so):
        h.skip("nginx's stream module is dynamic and %s is absent "
               "(apt install libnginx-mod-stream)" % so)
    return "load_module %s;\n" % so


def _nginx_conf(h, tag, load, body):
    d = h.path("nginx-" + tag)
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = load + """daemon off;
master_process on;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log stderr info;
events { worker_connections 128; }
""" % {"d": d} + body % {"d": d}
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    return d, ["nginx", "-p", d, "-c", "nginx.conf", "-e", "stderr"]


def _nginx_stream_front(h, tag, load, listen, upstream):
    return _nginx_conf(h, tag, load, """stream {
    server {
        listen %s;
        proxy_pass %s;
        proxy_protocol on;
    }
}
""" % (listen, upstream))


def _nginx_http_backend(h, tag, listen):
    """An HTTP backend that takes the PROXY protocol and logs both
    $remote_addr (real_ip from it) and $proxy_protocol_addr."""
    return _nginx_conf(h, tag, "", """http {
    log_format pp 'request uri=$request_uri remote=$remote_addr '
                  'pp=$proxy_protocol_addr:$proxy_protocol_port';
    access_log %%(d)s/access.log pp;
    client_body_temp_path %%(d)s/tmp/body;
    proxy_temp_path %%(d)s/tmp/proxy;
    fastcgi_temp_path %%(d)s/tmp/fastcgi;
    uwsgi_temp_path %%(d)s/tmp/uwsgi;
    scgi_temp_path %%(d)s/tmp/scgi;
    server {
        listen %s proxy_protocol;
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;
        location / { return 200 "hello from nginx\\n"; }
    }
}
""" % listen)


def _access_line(d, uri, timeout_s=None):
    """The access log line of uri (bounded wait: nginx logs after the
    response)."""
    path = os.path.join(d, "access.log")
    deadline = time.monotonic() + (timeout_s or scaled(10, 30))
    while True:
        try:
            with open(path) as f:
                for line in f:
                    if "uri=%s " % uri in line:
                        return dict(kv.split("=", 1) for kv in
                                    line.split()[1:])
        except FileNotFoundError:
            pass
        check(time.monotonic() < deadline, "no access log line for %s in "
              "%s within the time limit" % (uri, path))
        time.sleep(0.02)


def _haproxy_conf(h, tag, body):
    return h.write_text("haproxy-%s.cfg" % tag, """global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
""" + body)


def _other(h, name, argv):
    """A non-upseal daemon, ended by this test (its process group, made
    by start_new_session, is its own)."""
    p = Proc(h, name, argv, h.dir)
    h.cleanups.append(lambda: stop_group(p))
    return p


def _wait_listening(p, port, what):
    """Bounded: until 127.0.0.1:port accepts (a connection opened and
    closed at once), failing early if p exits."""
    deadline = time.monotonic() + scaled(10, 30)
    delay = 0.01
    while True:
        check(p.poll() is None, "%s exited (%s):\n%s"
              % (what, p.returncode, tail(p.log())))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError as e:
            check(time.monotonic() < deadline, "%s: 127.0.0.1:%d not "
                  "accepting (%r):\n%s" % (what, port, e, tail(p.log())))
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _http_get(h, port, uri, src_ip=SRC_IP):
    s = socket.socket()
    h.socks.append(s)
    s.bind((src_ip, 0))
    s.settimeout(scaled(10, 30))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % uri.encode())
    got, how = recv_all(s, scaled(10, 30))
    local = s.getsockname()
    s.close()
    check(got.startswith(b"HTTP/1.1 200") and
          got.endswith(b"hello from nginx\n"),
          "GET %s: %r (%s)" % (uri, got[:300], how))
    return local


def _wait_client_field(side, want):
    e = side.p.wait_event("conn_end", scaled(10, 30), client=want)
    check_eq(e["reason"], "closed", "%s: conn_end with client=%s"
             % (side.name, want))
    return e


@timeout(60)
def test_nginx_sender_haproxy_backend(h):
    """nginx stream `proxy_protocol on` -> upseal-client (accept) ->
    upseal-server (v1) -> haproxy `accept-proxy`: haproxy's log shows the
    Python client's 127.0.0.9 and port."""
    load = _nginx_modules(h)
    check(shutil.which("haproxy"), "haproxy is not installed (tests/deps.sh)")
    echo = h.echo_backend()
    hport = free_port()
    cfg = _haproxy_conf(h, "backend", """frontend fe
    bind 127.0.0.1:%d accept-proxy
    log-format "haproxy-conn client=%%ci:%%cp frontend=%%f"
    default_backend be
backend be
    server echo %s
""" % (hport, echo.addr))
    hp = _other(h, "haproxy", ["haproxy", "-db", "-f", cfg])
    _wait_listening(hp, hport, "haproxy")
    cli, srv, _, _ = start_sides(
        h, "127.0.0.1:%d" % hport, server_extra={"proxy_protocol": "v1"},
        client_extra={"proxy_protocol": "accept"})
    nport = free_port()
    _, argv = _nginx_stream_front(h, "front", load, "127.0.0.1:%d" % nport,
                                  cli.addr())
    ng = _other(h, "nginx", argv)
    ng.wait_for(r"start worker process", scaled(10, 30))

    s = socket.socket()
    h.socks.append(s)
    s.bind((SRC_IP, 0))
    s.settimeout(scaled(10, 30))
    s.connect(("127.0.0.1", nport))
    payload = b"through nginx, upseal and haproxy\n" * 20
    s.sendall(payload)
    # No half-close: nginx's stream proxy ends both ways on a client's FIN
    # (proxy_half_close off by default).
    got = recv_exact(s, len(payload), scaled(10, 30))
    sport = s.getsockname()[1]
    s.close()
    check_eq(got, payload, "the echo through the chain")
    want = "%s:%d" % (SRC_IP, sport)
    hp.wait_for(r"haproxy-conn client=%s " % re.escape(want), scaled(10, 30))
    _wait_client_field(cli, want)
    _wait_client_field(srv, want)


@timeout(60)
def test_haproxy_sender_nginx_backend(h):
    """haproxy `send-proxy-v2` -> upseal-client (accept) -> upseal-server
    (v2) -> nginx `listen ... proxy_protocol` with real_ip: its access log
    shows 127.0.0.9 as $remote_addr and $proxy_protocol_addr."""
    _nginx_modules(h, realip=True)
    check(shutil.which("haproxy"), "haproxy is not installed (tests/deps.sh)")
    nport = free_port()
    d, argv = _nginx_http_backend(h, "backend", "127.0.0.1:%d" % nport)
    ng = _other(h, "nginx", argv)
    ng.wait_for(r"start worker process", scaled(10, 30))
    cli, srv, _, _ = start_sides(
        h, "127.0.0.1:%d" % nport, server_extra={"proxy_protocol": "v2"},
        client_extra={"proxy_protocol": "accept"})
    hport = free_port()
    cfg = _haproxy_conf(h, "front", """frontend fe
    bind 127.0.0.1:%d
    default_backend be
backend be
    server upseal %s send-proxy-v2
""" % (hport, cli.addr()))
    hp = _other(h, "haproxy", ["haproxy", "-db", "-f", cfg])
    _wait_listening(hp, hport, "haproxy")
    local = _http_get(h, hport, "/five-b")
    line = _access_line(d, "/five-b")
    check_eq((line.get("remote"), line.get("pp")),
             (SRC_IP, "%s:%d" % local),
             "nginx's $remote_addr and $proxy_protocol_addr:port (%r)" % line)
    want = "%s:%d" % local
    _wait_client_field(cli, want)
    _wait_client_field(srv, want)


# --- 6. two hosts -------------------------------------------------------------

FRONT_PORT, BACKEND_PORT = 8443, 8080   # fixed: fresh namespaces, all free


def _ns_get(ns, host, port, uri):
    """GET uri from inside ns; returns the client socket's address."""
    s = ns_connect(ns, host, port, timeout=scaled(10, 30))
    try:
        s.sendall(b"GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % uri.encode())
        local = s.getsockname()
        got, how = recv_all(s, scaled(10, 30))
    finally:
        s.close()
    check(got.startswith(b"HTTP/1.1 200") and
          got.endswith(b"hello from nginx\n"),
          "GET %s from %s: %r (%s)" % (uri, ns, got[:300], how))
    return local


@timeout(120)
def test_twohost_client_address(h):
    """Host A: nginx stream (proxy_protocol on, on A's veth address) ->
    upseal-client (accept); host B: upseal-server (v2) -> nginx on B's
    127.0.0.1 with proxy_protocol and real_ip. A client in B's namespace
    (10.231.7.2, neither 127.0.0.1 nor upseal-client's 10.231.7.1) goes
    through A: B's backend logs 10.231.7.2. Then straight to an
    upseal-client tunnel on A's veth address (proxy_protocol off,
    allow_remote = yes): the remote peer's address is carried too."""
    netns_or_skip()
    load = _nginx_modules(h, realip=True)
    in_two_hosts(h, lambda net: _twohost_in(h, net, load))


def _twohost_in(h, net, load):
    net.setup()
    sid, cid = h.identity("host-b"), h.identity("host-a")

    # Host B: nginx on loopback, upseal-server on the veth.
    d, argv = _nginx_http_backend(h, "b", "127.0.0.1:%d" % BACKEND_PORT)
    ngb = net.start(net.b, "nginx-b", argv)
    ngb.wait_for(r"start worker process", scaled(10, 30))
    sini = h.write_ini("server-b", {"app": {
        "listen": "%s:0" % NET_B, "connect": "127.0.0.1:%d" % BACKEND_PORT,
        "cert": sid.crt, "key": sid.key, "pin": [cid.pin],
        "handshake_timeout": "5s", "proxy_protocol": "v2"}})
    srv = net.start(net.b, "server-b", [h.bin("upseal-server"), "-c", sini],
                    upseal=True)
    srv.wait_ready()
    saddr = srv.addr("app")

    # Host A: one upseal-client, two tunnels: behind nginx (accept) and
    # straight on the veth address (off, allow_remote).
    common = {"connect": saddr, "cert": cid.crt, "key": cid.key,
              "pin": [sid.pin], "connect_timeout": "3s",
              "handshake_timeout": "5s"}
    cini = h.write_ini("client-a", {
        "front": dict(common, listen="127.0.0.1:0", proxy_protocol="accept"),
        "direct": dict(common, listen="%s:0" % NET_A, allow_remote="yes")})
    cli = net.start(net.a, "client-a", [h.bin("upseal-client"), "-c", cini],
                    upseal=True)
    cli.wait_ready()
    _, argv = _nginx_stream_front(h, "a", load, "%s:%d" % (NET_A, FRONT_PORT),
                                  cli.addr("front"))
    nga = net.start(net.a, "nginx-a", argv)
    nga.wait_for(r"start worker process", scaled(10, 30))

    # Through nginx on A.
    local = _ns_get(net.b, NET_A, FRONT_PORT, "/via-front")
    check_eq(local[0], NET_B, "the client's address in B")
    line = _access_line(d, "/via-front")
    check_eq((line.get("remote"), line.get("pp")),
             (NET_B, "%s:%d" % local), "B's backend: $remote_addr and "
             "$proxy_protocol_addr:port via nginx on A (%r)" % line)
    want = "%s:%d" % local
    ce = cli.wait_event("conn_end", scaled(10, 30), tunnel="front",
                        client=want)
    se = srv.wait_event("conn_end", scaled(10, 30), client=want)
    check_eq(hostport(ce["peer"])[0], "127.0.0.1", "A: nginx, the peer")
    check_eq(hostport(se["peer"])[0], NET_A, "B: upseal-client, the peer")

    # Straight to upseal-client on A: the remote peer is the client.
    local = _ns_get(net.b, NET_A, hostport(cli.addr("direct"))[1],
                    "/direct")
    line = _access_line(d, "/direct")
    check_eq((line.get("remote"), line.get("pp")),
             (NET_B, "%s:%d" % local), "B's backend: $remote_addr and "
             "$proxy_protocol_addr:port, straight to upseal-client (%r)"
             % line)
    want = "%s:%d" % local
    cli.wait_event("conn_end", scaled(10, 30), tunnel="direct", client=want)
    srv.wait_event("conn_end", scaled(10, 30), client=want)


@timeout(60)
def test_bad_header_with_pool(h):
    """pool = 2: a bad header and a header that times out end the
    connection (which had taken a pooled one) with their reasons, the
    backend is never dialed for them, and the next connection works
    through the refilled pool."""
    be = h._backend(RecordingBackend)
    cli, srv, _, _ = start_sides(
        h, be.addr, server_extra={"proxy_protocol": "v1"},
        client_extra={"proxy_protocol": "accept", "pool": "2",
                      "proxy_header_timeout": "500ms"})
    _wait_metric(cli, "upseal_pool_ready", 2)
    s = socket.create_connection(hostport(cli.addr()), timeout=10)
    h.socks.append(s)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    how, secs, n = wait_closed(s, scaled(5, 15))
    check(how in ("eof", "reset") and n == 0, "bad header: %s after %.1fs, "
          "%d bytes" % (how, secs, n))
    s.close()
    e = conn_end(cli, 1)
    check_eq(e["reason"], "proxy_header_invalid", "client reason")
    _wait_metric(cli, "upseal_pool_ready", 2)
    s = socket.create_connection(hostport(cli.addr()), timeout=10)
    h.socks.append(s)
    s.sendall(V2_SIG[:6])
    how, secs, n = wait_closed(s, scaled(5, 15))
    check(how in ("eof", "reset") and n == 0 and secs >= 0.4,
          "half a header: %s after %.1fs, %d bytes" % (how, secs, n))
    s.close()
    e = conn_end(cli, 2)
    check_eq(e["reason"], "proxy_header_timeout", "client reason")
    check_eq(be.accepted, 0, "backend connections for refused headers")
    _wait_metric(cli, "upseal_pool_ready", 2)
    exchange(h, cli.addr(), b"PROXY TCP4 192.0.2.9 192.0.2.1 99 80\r\nok?\n")
    res = be.wait_results(1)[0]
    check_eq(res["raw"], b"PROXY TCP4 192.0.2.9 192.0.2.1 99 80\r\nok?\n",
             "what the backend got")
    check_eq(be.accepted, 1, "backend connections")
    mc = scrape(cli)
    check_eq(mc.count("upseal_pool_misses_total", tunnel="app"), 0,
             "pool misses")
    # upseal-server: the two pooled connections ended unused (the
    # backend never dialed), the third one carried the address.
    conn_end(srv, 3)
    ends = srv.p.events("conn_end")
    check_eq(sorted((x["reason"], x.get("client")) for x in ends),
             [("closed", "192.0.2.9:99"), ("pool_closed", None),
              ("pool_closed", None)], "upseal-server's conn_end lines")


@timeout(60)
def test_unix_tls_end(h):
    """upseal-server listening on a unix socket, nothing carried: v2 says
    UNIX stream (0x31) with the listen path as destination, v1 says
    `PROXY UNKNOWN`."""
    sid, cid = h.identity("srv"), h.identity("cli")
    for pp in ("v2", "v1"):
        be = h._backend(RecordingBackend)
        path = h.path("srv-%s.sock" % pp)
        cli, srv, _, _ = start_sides(h, be.addr, "-" + pp, sid, cid,
                                     server_extra={"proxy_protocol": pp,
                                                   "listen": "unix:" + path})
        data = b"over a unix socket\n"
        exchange(h, cli.addr(), data)
        res = be.wait_results(1)[0]
        hdr, rest = split_header(res["raw"])
        check_eq(rest, data, "%s: the data after the header" % pp)
        if pp == "v1":
            check_eq(hdr, b"PROXY UNKNOWN\r\n", "v1 over a unix socket")
            continue
        d = parse_v2(hdr)
        check_eq((d["ver_cmd"], d["fam"]), (0x21, 0x31),
                 "v2 command and family over a unix socket")
        check_eq((d["src"], d["dst"]), ("", path), "v2 UNIX paths")
        end = conn_end(srv, 1)
        check_eq(tlv(d, T_UNIQUE_ID), end["id"].encode(), "unique id")
        check_eq(tlv(d, T_PIN), pin_bytes(h, cid.crt), "pin TLV")
