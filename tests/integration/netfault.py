"""Network faults for the hostile tests: two network namespaces joined by a
veth pair, nftables drops inside them, and sockets made inside a namespace.

Everything is created by the test and removed in `close()` (called from the
harness cleanups even when the test fails). Only 10.x addresses of our own,
and only inside the namespaces: the host's network is never touched.
"""

import ctypes
import os
import subprocess
import threading

from harness import TestFailure, check

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_seq = [0]


def _run(argv, check_rc=True, timeout=10):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check_rc and r.returncode != 0:
        raise TestFailure("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                               r.stderr.decode().strip()))
    return r


class NetPair:
    """Namespaces A and B, veth a0 (10.213.S.1/30, in A) <-> b0
    (10.213.S.2/30, in B), loopback up in both."""

    def __init__(self, h):
        _seq[0] += 1
        tag = "%d-%d" % (os.getpid() % 100000, _seq[0])
        self.a = "upseal-a-" + tag
        self.b = "upseal-b-" + tag
        sub = (os.getpid() + _seq[0]) % 250 + 1
        self.ip_a = "10.213.%d.1" % sub
        self.ip_b = "10.213.%d.2" % sub
        self.made = []
        h.cleanups.append(self.close)
        for ns in (self.a, self.b):
            _run(["ip", "netns", "add", ns])
            self.made.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.a, "link", "add", "a0", "type", "veth",
              "peer", "name", "b0", "netns", self.b])
        _run(["ip", "-n", self.a, "addr", "add", self.ip_a + "/30", "dev", "a0"])
        _run(["ip", "-n", self.b, "addr", "add", self.ip_b + "/30", "dev", "b0"])
        _run(["ip", "-n", self.a, "link", "set", "a0", "up"])
        _run(["ip", "-n", self.b, "link", "set", "b0", "up"])

    def nft(self, ns, script):
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                           input=script.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        check(r.returncode == 0, "nft in %s: %s\n%s" % (ns, r.stderr.decode(),
                                                        script))

    def drop_tcp_port(self, ns, port):
        """Drop (no RST, no ICMP) every packet to TCP port `port` in ns."""
        self.nft(ns, "table inet upseal_test {\n"
                 " chain input { type filter hook input priority 0;\n"
                 "  tcp dport %d drop\n }\n}\n" % port)

    def partition(self):
        """Drop everything crossing the veth, both ways, in both namespaces."""
        for ns, dev in ((self.a, "a0"), (self.b, "b0")):
            self.nft(ns, "table inet upseal_test {\n"
                     " chain input { type filter hook input priority 0;\n"
                     "  iifname %s drop\n }\n"
                     " chain output { type filter hook output priority 0;\n"
                     "  oifname %s drop\n }\n}\n" % (dev, dev))

    def heal(self):
        for ns in (self.a, self.b):
            _run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet",
                  "upseal_test"], check_rc=False)

    def argv(self, ns, argv):
        """argv run inside ns (ip netns exec execs it: the pid is the same)."""
        return ["ip", "netns", "exec", ns] + list(argv)

    def close(self):
        for ns in reversed(self.made):
            _run(["ip", "netns", "del", ns], check_rc=False)
        self.made = []


def in_netns(ns, fn, *args, **kw):
    """Run fn(*args) in a fresh thread that has joined namespace ns; return
    its result. Sockets made there stay in ns and may be used anywhere."""
    out = {}

    def body():
        try:
            fd = os.open("/run/netns/" + ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns " + ns)
            finally:
                os.close(fd)
            out["v"] = fn(*args, **kw)
        except BaseException as e:   # handed to the caller
            out["e"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(30)
    check(not t.is_alive(), "in_netns(%s) did not return" % ns)
    if "e" in out:
        raise out["e"]
    return out["v"]
