#!/usr/bin/env bash
# Install what upseal's build and tests need on Debian 12, only if missing.
set -euo pipefail

PKGS=(build-essential pkg-config libmbedtls-dev libuv1-dev libinih-dev
      openssl python3 ca-certificates procps iproute2 make
      nginx haproxy curl man-db groff-base python3-yaml
      stunnel4 libnginx-mod-stream
      testssl.sh sslscan nftables valgrind clang libclang-rt-14-dev
      graphviz)

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
		grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all ${#PKGS[@]} packages present"
	exit 0
fi

echo "deps: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || {
		echo "deps: missing ${missing[*]} and not root (no sudo)" >&2
		exit 1
	}
	SUDO=(sudo)
fi
# nginx and haproxy are only run by the tests, in the foreground with their
# own config: keep their packages from starting a system service (on :80)
# while installing, with a policy-rc.d that is removed again afterwards.
POLICY=/usr/sbin/policy-rc.d
ours_policy=0
if [ ! -e "$POLICY" ]; then
	printf '#!/bin/sh\n# upseal tests/deps.sh: no service starts during install\nexit 101\n' |
		"${SUDO[@]}" tee "$POLICY" >/dev/null
	"${SUDO[@]}" chmod 0755 "$POLICY"
	ours_policy=1
	trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y --no-install-recommends "${missing[@]}"
if [ "$ours_policy" -eq 1 ]; then
	"${SUDO[@]}" rm -f "$POLICY"
	trap - EXIT
fi
