"""Which mbedTLS the binaries under test were built against: with 3.x,
two upseal sidecars (and OpenSSL peers) negotiate TLS 1.3."""

import re
import subprocess

_cache = {}


def mbedtls_major(h):
    """The major version of the linked mbedTLS, from --version."""
    path = h.bin("upseal-client")
    if path not in _cache:
        out = subprocess.run([path, "--version"], capture_output=True,
                             text=True, timeout=10).stdout
        m = re.search(r"mbedTLS (\d+)\.", out)
        _cache[path] = int(m.group(1)) if m else 2
    return _cache[path]


def tls13(h):
    return mbedtls_major(h) >= 3
