#!/usr/bin/env bash
# The kTLS tests (issue 14), in a QEMU guest running Debian's stock kernel,
# whose tls module this machine's kernel lacks. Software emulation only
# (no -enable-kvm: KVM guests hang on these machines).
#
#   tests/ktls/run.sh [BUILD]     default BUILD: build (make's output)
#
# 1. Installs what is missing (qemu-system-x86, busybox-static, cpio, kmod)
#    when run as root.
# 2. Downloads exactly the image package linux-image-amd64 depends on now
#    (apt-get download; kept in build-ktls/ for the next run), unpacks it
#    and runs depmod on the unpacked tree.
# 3. Builds an initramfs: busybox, the crypto and tls modules in load order,
#    BUILD's upseal-client and upseal-server with their shared libraries,
#    build-mbedtls36's (TLS 1.3) when tests/mbedtls36.sh made them, the
#    test tool kt (tests/ktls/kt.c), fresh identities and guest.sh.
# 4. Boots it with qemu-system-x86_64 -cpu max -smp 2 -m 1024 and reads
#    guest.sh's KT lines from the serial console.
# Ends with `ktls: N passed, M failed`, or `ktls: skipped (why)` and
# `ktls: 0 passed, 0 failed, 1 skipped` when qemu
# or the kernel package cannot be had. Exit 0 unless a test failed.
set -euo pipefail

cd "$(dirname "$0")/../.."
TOP=$PWD
BUILD=${1:-build}
WORK=$TOP/build-ktls
TIMEOUT=${KTLS_TIMEOUT:-600}
mkdir -p "$WORK"

skip() {
	echo "ktls: skipped ($*)"
	echo "ktls: 0 passed, 0 failed, 1 skipped"
	exit 0
}

need=()
for p in qemu-system-x86 busybox-static cpio kmod; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
		grep -q '^install ok installed$' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || skip "missing ${need[*]} and not root"
	{ apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends "${need[@]}"; } >"$WORK/apt.log" 2>&1 ||
		skip "could not install ${need[*]} (see $WORK/apt.log)"
fi
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64"

for f in upseal-client upseal-server upseal-certs; do
	[ -x "$BUILD/$f" ] || { echo "ktls: $BUILD/$f missing: run make" >&2; exit 1; }
done

# ---- the kernel: exactly the package linux-image-amd64 names ----
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
	awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || skip "apt-cache names no linux-image package (apt-get update?)"
KDIR=$WORK/$pkg
if [ ! -f "$KDIR/.unpacked" ]; then
	rm -rf "$KDIR" "$WORK"/linux-image-*.deb
	(cd "$WORK" && apt-get download "$pkg" >"$WORK/download.log" 2>&1) ||
		skip "could not download $pkg (see $WORK/download.log)"
	mkdir -p "$KDIR"
	dpkg-deb -x "$WORK"/"$pkg"_*.deb "$KDIR"
	rm -f "$WORK"/"$pkg"_*.deb
	touch "$KDIR/.unpacked"
fi
KVER=$(ls "$KDIR/lib/modules" | head -n 1)
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || skip "no kernel image in $pkg"
depmod -b "$KDIR" "$KVER"
MODDIR=$KDIR/lib/modules/$KVER

# ---- the initramfs ----
ROOT=$WORK/root
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,proc,sys,dev,tmp,t/modules,t/ids,t/28,t/36}

cp /bin/busybox "$ROOT/bin/busybox"
for a in $("$ROOT/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -sf busybox "$ROOT/bin/$a"
done
rm -f "$ROOT/bin/modprobe"	# no module loads itself: guest.sh decides

# Modules in load order: each one's dependencies (modules.dep) first.
declare -A seen=()
order=()
add_module() {
	local line path dep
	line=$(grep -E "^([^:]*/)?$1\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" || true)
	[ -n "$line" ] || return 0	# built in
	path=${line%%:*}
	[ -z "${seen[$path]:-}" ] || return 0
	seen[$path]=1
	for dep in ${line#*:}; do
		dep=$(basename "$dep")
		add_module "${dep%%.ko*}"
	done
	order+=("$path")
}
for m in cryptd crypto_simd aesni-intel ghash-clmulni-intel gcm \
	libchacha chacha-x86_64 poly1305-x86_64 chacha20poly1305 tls; do
	add_module "$m"
done
: >"$ROOT/t/modules.order"
for p in "${order[@]}"; do
	b=$(basename "$p")
	case "$b" in
	*.ko.xz) xz -dc "$MODDIR/$p" >"$ROOT/t/modules/${b%.xz}"; b=${b%.xz} ;;
	*.ko.zst) zstd -qdc "$MODDIR/$p" >"$ROOT/t/modules/${b%.zst}"; b=${b%.zst} ;;
	*) cp "$MODDIR/$p" "$ROOT/t/modules/$b" ;;
	esac
	echo "$b" >>"$ROOT/t/modules.order"
done

# Binaries and every shared library they load, at the same paths. (So no
# tmpfs goes over the guest's /tmp: a checkout under /tmp has its mbedTLS
# 3.6 libraries there; the initramfs root is in memory and writable.)
copy_libs() {
	ldd "$1" | awk '/=> \// { print $3 } /^\t\/[^ ]+ / { print $1 }' |
		while read -r lib; do
			mkdir -p "$ROOT$(dirname "$lib")"
			cp -L "$lib" "$ROOT$lib"
		done
}
cp "$BUILD/upseal-client" "$BUILD/upseal-server" "$ROOT/t/28/"
copy_libs "$BUILD/upseal-server"
B36=$TOP/build-mbedtls36
if [ -x "$B36/upseal-server" ] && [ -x "$B36/upseal-client" ]; then
	cp "$B36/upseal-client" "$B36/upseal-server" "$ROOT/t/36/"
	copy_libs "$B36/upseal-server"
fi
cc -O2 -Wall -Wextra -Werror -std=gnu11 -o "$ROOT/t/kt" tests/ktls/kt.c
copy_libs "$ROOT/t/kt"
cp tests/ktls/guest.sh "$ROOT/t/guest.sh"

"$BUILD/upseal-certs" new srv --dir "$ROOT/t/ids" --dns localhost \
	>"$ROOT/t/ids/srv.pin" 2>/dev/null
"$BUILD/upseal-certs" new cli --dir "$ROOT/t/ids" >"$ROOT/t/ids/cli.pin" \
	2>/dev/null
chmod 700 "$ROOT/t/ids"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo /bin/no-modprobe >/proc/sys/kernel/modprobe
ip link set lo up
cd /t
sh /t/guest.sh
poweroff -f
EOF
chmod 755 "$ROOT/init"
(cd "$ROOT" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet |
	gzip -1) >"$WORK/initrd.gz"

# ---- boot ----
start=$(date +%s)
LOG=$WORK/console.log
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -cpu max -smp 2 -m 1024 \
	-nographic -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1" </dev/null >"$LOG" 2>&1
qrc=$?
set -e
secs=$(($(date +%s) - start))

tr -d '\r' <"$LOG" | grep '^KT ' | grep -v '^KT result' || true
passed=$(tr -d '\r' <"$LOG" | grep -c '^KT ok ' || true)
failed=$(tr -d '\r' <"$LOG" | grep -c '^KT not ok ' || true)
# The guest's own count, in case a kernel message broke one of its lines.
gfailed=$(tr -d '\r' <"$LOG" | sed -n 's/^KT result [0-9]* passed, \([0-9]*\) failed$/\1/p')
[ -n "$gfailed" ] && [ "$gfailed" -gt "$failed" ] && failed=$gfailed
if ! tr -d '\r' <"$LOG" | grep -q '^KT done'; then
	echo "ktls: the guest did not finish (qemu exit $qrc after ${secs}s);" \
		"last console lines:" >&2
	tail -n 20 "$LOG" >&2
	failed=$((failed + 1))
fi
echo "ktls: guest ran ${secs}s ($pkg)"
echo "ktls: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
