#!/usr/bin/env bash
# Install what upseal's build and tests need on Debian 12, only if missing.
set -euo pipefail

PKGS=(build-essential pkg-config libmbedtls-dev libuv1-dev libinih-dev
      openssl python3 ca-certificates procps iproute2 make)

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
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y --no-install-recommends "${missing[@]}"
