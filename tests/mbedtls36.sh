#!/usr/bin/env bash
# Build upseal against mbedTLS 3.6 (Debian 13's source package) and run the
# tests against that build.
#
#   tests/mbedtls36.sh [PREFIX]     default PREFIX: build-mbedtls36-src/prefix
#
# 1. Fetches the source package `mbedtls` of Debian 13 (trixie) with
#    apt-get source. The deb-src entry is derived from this machine's own
#    Debian mirror (/etc/apt/sources.list{,.d}) and used through a private
#    apt configuration: the system's sources and lists are not touched.
# 2. Builds its libraries (with Debian's patches, and the build options
#    Debian's debian/rules sets with scripts/config.py, among them
#    MBEDTLS_THREADING_C: upseal's workers need it) into PREFIX.
# 3. Builds upseal into build-mbedtls36/ against PREFIX (rpath set).
# 4. Runs the unit tests and the integration tests on that build, which
#    then speaks TLS 1.3 between two upseal sidecars (the suite checks it).
# Ends with `mbedtls36: N passed, M failed`.
set -euo pipefail

cd "$(dirname "$0")/.."
TOP=$PWD
PREFIX=${1:-$TOP/build-mbedtls36-src/prefix}
WORK=$TOP/build-mbedtls36-src
mkdir -p "$WORK" "$PREFIX"

need=()
for p in dpkg-dev xz-utils bzip2 make gcc python3; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
		grep -q '^install ok installed$' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

# A prefix built before the Debian options were applied is built again.
if [ ! -f "$PREFIX/lib/libmbedtls.so" ] || [ ! -f "$PREFIX/debian-options" ]; then
	rm -rf "$PREFIX" "$WORK"/mbedtls-3.* "$WORK"/mbedtls_3.*
	mkdir -p "$PREFIX"
	# The machine's Debian mirror, from deb822 or one-line sources.
	mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '{print $2}' | grep -v security | head -n 1 || true)
	if [ -z "$mirror" ]; then
		mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null |
			awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' |
			grep -v security | head -n 1 || true)
	fi
	[ -n "$mirror" ] || { echo "mbedtls36: no Debian mirror found in apt sources" >&2; exit 1; }
	APT=$WORK/apt
	mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
		> "$APT/sources.list"
	opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
	      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
	      -o "APT::Sandbox::User=root")
	echo "==> apt-get source mbedtls (trixie, from $mirror)"
	if ! apt-get "${opts[@]}" update ||
	    ! (cd "$WORK" && apt-get "${opts[@]}" source mbedtls); then
		# The archive could not be reached: nothing of ours was tested.
		echo "mbedtls36: 0 passed, 0 failed, 1 skipped"
		exit 0
	fi
	src=$(find "$WORK" -maxdepth 1 -type d -name 'mbedtls-3.*' | sort | tail -n 1)
	[ -n "$src" ] || { echo "mbedtls36: no mbedtls-3.* source tree" >&2; exit 1; }
	# What debian/rules does before configuring (override_dh_auto_configure).
	options=$(sed -nE 's/^[[:space:]]*scripts\/config\.py set ([A-Z0-9_]+)$/\1/p' \
		"$src/debian/rules")
	for o in $options; do
		(cd "$src" && python3 scripts/config.py set "$o")
	done
	echo "==> building $(basename "$src") into $PREFIX (Debian options: $(echo $options))"
	make -C "$src" -j"${JOBS:-2}" lib SHARED=1 >"$WORK/build.log" 2>&1 ||
		{ tail -n 30 "$WORK/build.log"; exit 1; }
	mkdir -p "$PREFIX/lib" "$PREFIX/include"
	cp -a "$src"/include/mbedtls "$src"/include/psa "$PREFIX/include/"
	cp -a "$src"/library/lib*.so* "$PREFIX/lib/"
	echo "$options" > "$PREFIX/debian-options"
fi

echo "==> building upseal against $PREFIX"
make -j"${JOBS:-2}" BUILD=build-mbedtls36 MBEDTLS_PREFIX="$PREFIX"

passed=0
failed=0
count() {
	local line
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
	if [ -z "$line" ]; then
		failed=$((failed + 1))
		return
	fi
	passed=$((passed + $(sed -E 's/.*[^0-9]([0-9]+) passed.*/\1/' <<<"$line")))
	failed=$((failed + $(sed -E 's/.*, ([0-9]+) failed.*/\1/' <<<"$line")))
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
build-mbedtls36/unit-tests | tee "$log" || true
count "$log"
UPSEAL_MBEDTLS=3 python3 tests/integration/run.py --build build-mbedtls36 | tee "$log" || true
count "$log"
echo "mbedtls36: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
