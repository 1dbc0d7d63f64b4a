#!/usr/bin/env bash
# The container examples, built and run: the Dockerfile's image, the
# two-host scenario in pods, examples/compose.yaml and examples/k8s.
#
#   tests/containers.sh [--no-trixie]
#
# Rootful podman (Debian's), with its own containers.conf and storage under
# a temp dir, so nothing in /etc or /var/lib/containers is used or changed,
# and everything this run makes (images, containers, pods, networks,
# volumes, secrets) lives there and is removed at exit:
#
#  1. Base images with debootstrap --variant=minbase from the machine's
#     Debian mirror (bookworm; trixie too, in the background), imported and
#     tagged with the names the FROM lines use (debian:12, debian:13): no
#     registry is reachable here, so nothing is pulled. Then `podman build`
#     of the Dockerfile, and of tests/containers/tools.Containerfile, which
#     stands in for the public images the examples name (nginx:stable,
#     python:3-slim).
#  2. The image: under 20 MB, nothing in it but the three binaries, the
#     shared objects they load and passwd/group/nsswitch.conf; no shell.
#     Keys mounted read-only as the README says (owner 10001 mode 0600, or
#     root:10001 mode 0640) pass --check; a group-readable key owned by
#     10001 is refused.
#  3. Two hosts as two pods on a podman network: host B runs
#     tests/containers/app.py on 127.0.0.1:8080 and upseal-server, host A
#     nginx (examples/nginx-upstream.conf) and upseal-client, both sidecars
#     from the image with --read-only, as uid 10001, with examples/*.ini.
#     A third container on the network gets the app's page through nginx,
#     reads /healthz on the status port, and cannot reach port 8080. A
#     client sidecar whose key is not pinned is refused (pin_mismatch). The
#     backend's key is swapped in its mounted directory and `podman kill -s
#     HUP` reloads it: the client then logs the new pin. `podman stop` drains:
#     a stream in flight completes, /healthz answers 503 meanwhile, exit 0.
#  4. examples/compose.yaml as the README sets it up, with Debian's
#     docker-compose against podman's Docker API (`podman system service`):
#     Debian 12's podman-compose 1.0.3 cannot run it (see README).
#  5. examples/k8s with `podman kube play`, set up as its comments say: a
#     CA, its (empty) CRL and an identity per role with its names, made with
#     the image's upseal-certs, in the Secrets the manifests mount; the
#     Service's DNS name is a network alias of the app pods. Each proxy pod
#     gets the app's page and the app pods name the rule that let it in; an
#     identity of the same CA with another SPIFFE ID is refused; /metrics
#     serves what alerts.yaml (not played: a CRD) uses. What podman 4.3 does
#     not do as a kubelet would is listed in README ("What the test stands
#     in for").
#  6. With the trixie base: the image with --build-arg DEBIAN=13 (mbedTLS
#     3.6), and a pair of its sidecars speaking TLS 1.3.
#
# Every wait polls a log line or a port, bounded in count and time. Prints
# `ok NAME` or `not ok NAME: why` per check and ends with
# `containers: N passed, M failed` (`, K skipped`). Where podman cannot run
# (not root, packages not installable, no container can start) it prints
# why and `containers: 0 passed, 0 failed, 1 skipped`.
#
# Environment: UPSEAL_CONTAINERS_TRIXIE=0 (as --no-trixie),
# UPSEAL_CONTAINERS_CACHE=DIR (developers: keep the debootstrap tarballs in
# DIR between runs; CI does not set it).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
TRIXIE=${UPSEAL_CONTAINERS_TRIXIE:-1}
CACHE=${UPSEAL_CONTAINERS_CACHE:-}

for a in "$@"; do
	case $a in
	--no-trixie) TRIXIE=0 ;;
	-h | --help)
		sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "containers.sh: unknown argument '$a' (usage: tests/containers.sh [--no-trixie])" >&2
		exit 2
		;;
	esac
done
case $TRIXIE in
0 | 1) ;;
*)
	echo "containers.sh: UPSEAL_CONTAINERS_TRIXIE must be 0 or 1, not '$TRIXIE'" >&2
	exit 2
	;;
esac
if [ -n "$CACHE" ] && [ ! -d "$CACHE" ]; then
	echo "containers.sh: UPSEAL_CONTAINERS_CACHE=$CACHE is not a directory" >&2
	exit 2
fi

PASSED=0
FAILED=0
SKIPPED=0
T0=$(date +%s)

summary() {
	echo "containers: took $(($(date +%s) - T0))s"
	echo "containers: $PASSED passed, $FAILED failed$([ "$SKIPPED" -gt 0 ] && echo ", $SKIPPED skipped")"
}

skip_all() {
	echo "containers: skipped: $*"
	echo "containers: 0 passed, 0 failed, 1 skipped"
	exit 0
}

# t NAME FUNC [ARG...]: one check. FUNC returns 0 when it holds, and sets
# WHY to say what was wrong when it does not.
t() {
	local name=$1 t1
	shift
	WHY=
	t1=$(date +%s%N)
	if "$@"; then
		PASSED=$((PASSED + 1))
		echo "ok $name ($(elapsed "$t1")s)"
		return 0
	fi
	FAILED=$((FAILED + 1))
	echo "not ok $name ($(elapsed "$t1")s): ${WHY:-failed}"
	return 1
}

skip() {
	SKIPPED=$((SKIPPED + 1))
	echo "ok $1 # skip $2"
}

note() { echo "# $*"; }

# elapsed T1: seconds since T1 (date +%s%N), one decimal.
elapsed() {
	local ns=$(($(date +%s%N) - $1))
	printf '%d.%d' $((ns / 1000000000)) $((ns / 100000000 % 10))
}

[ "$(id -u)" -eq 0 ] || skip_all "needs root: the images are built and run with rootful podman"

# ---- packages ---------------------------------------------------------------
# podman with runc (crun refuses this kernel's hybrid cgroup layout),
# catatonit (the pods' infra process), netavark + aardvark-dns (networks
# whose containers find each other by name), debootstrap (the bases),
# docker-compose (examples/compose.yaml, through podman's Docker API).
PKGS=(podman runc catatonit netavark aardvark-dns debootstrap docker-compose curl ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "containers: installing ${missing[*]}"
	if ! apt-get update >/dev/null ||
		! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			"${missing[@]}" >/dev/null; then
		skip_all "apt-get could not install ${missing[*]}"
	fi
fi

# The machine's Debian mirror, from deb822 or one-line sources (as
# tests/mbedtls36.sh finds it).
MIRROR=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
	awk '{print $2}' | grep -v security | head -n 1 || true)
if [ -z "$MIRROR" ]; then
	MIRROR=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null |
		awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' |
		grep -v security | head -n 1 || true)
fi
[ -n "$MIRROR" ] || skip_all "no Debian mirror in /etc/apt/sources.list{,.d}"

# ---- this run's podman ------------------------------------------------------
WORK=$(mktemp -d /tmp/upseal-containers-XXXXXX)
chmod 0755 "$WORK"
P=upseal-$$ # every name this run gives starts with it
LOG=$WORK/podman.log
BG_PIDS=()
SVC_PID=
PODMAN_READY=0

cleanup() {
	set +e
	local p n
	for p in "${BG_PIDS[@]}"; do
		kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
	done
	for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [ "$PODMAN_READY" -eq 1 ]; then
		# This storage and network config hold only what this run made.
		timeout 120 podman pod rm -af -t 0 >>"$LOG" 2>&1
		timeout 120 podman rm -af -t 0 >>"$LOG" 2>&1
		n=$(podman network ls --format '{{.Name}}' 2>/dev/null | grep -vx podman)
		[ -n "$n" ] && timeout 60 podman network rm -f $n >>"$LOG" 2>&1
		timeout 60 podman volume rm -af >>"$LOG" 2>&1
		timeout 60 podman secret rm -a >>"$LOG" 2>&1
	fi
	if [ -n "$SVC_PID" ]; then
		kill "$SVC_PID" 2>/dev/null
		wait "$SVC_PID" 2>/dev/null
	fi
	# Processes still running from this run's storage, by pid: podman's API
	# keeps a conmon for a while after each exec (--exit-delay), which runs
	# a `podman container cleanup` when it ends. Until none is left (10 s).
	local i pids sig=TERM
	for ((i = 0; i < 50; i++)); do
		pids=()
		for p in /proc/[0-9]*; do
			n=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")
			[[ $n == *"$WORK/"* ]] && pids+=("${p#/proc/}")
		done
		[ ${#pids[@]} -eq 0 ] && break
		[ "$i" -ge 25 ] && sig=KILL
		kill -"$sig" "${pids[@]}" 2>/dev/null
		sleep 0.2
	done
	# Mounts left under WORK (the storage's own, a killed debootstrap's).
	awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/self/mounts |
		sort -r | while read -r p; do umount "$p" 2>/dev/null || umount -l "$p"; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NOFILE=$(ulimit -Hn)
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi
cat >"$WORK/containers.conf" <<EOF
# tests/containers.sh: this run's podman settings (CONTAINERS_CONF).
[containers]
# Explicit limits: podman's defaults ask for more than this machine's hard
# limits allow. Soft = hard, because podman 4.3's kube play swaps the two
# for a pod's infra container.
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "$WORK/libpod"
pull_policy = "never"

[network]
network_backend = "netavark"
network_config_dir = "$WORK/networks"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
mkdir -p "$WORK/libpod" "$WORK/networks"
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
PODMAN_READY=1
if ! podman info >"$WORK/info.txt" 2>&1; then
	skip_all "podman cannot run here: $(tail -n 1 "$WORK/info.txt")"
fi
note "podman $(podman version --format '{{.Client.Version}}'), runc, netavark; work dir $WORK; mirror $MIRROR"

pm() { timeout "${PM_TIMEOUT:-60}" podman "$@"; }

# ---- helpers ----------------------------------------------------------------
# logs_match CTR STR...: some line of CTR's log holds every STR.
logs_match() {
	local c=$1
	shift
	podman logs "$c" 2>&1 | awk '
		BEGIN { for (i = 1; i < ARGC; i++) { s[i] = ARGV[i]; delete ARGV[i] } }
		{ for (i in s) if (index($0, s[i]) == 0) next; found = 1; exit }
		END { exit !found }' "$@"
}

# log_count CTR STR: lines of CTR's log holding STR.
log_count() { podman logs "$1" 2>&1 | grep -cF -- "$2"; }

# wait_log CTR SECS STR...: poll CTR's log every 0.2 s, at most SECS, for
# a line holding every STR.
wait_log() {
	local c=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 5; i++)); do
		logs_match "$c" "$@" && return 0
		sleep 0.2
	done
	WHY="no line with [$*] in $c's log within ${secs}s; its last lines: $(podman logs --tail 4 "$c" 2>&1 | tr '\n' '|')"
	return 1
}

# wait_cmd SECS CMD...: run CMD every 0.2 s, at most SECS, until it exits 0.
wait_cmd() {
	local secs=$1 i
	shift
	for ((i = 0; i < secs * 5; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

# certs DIR ARG...: upseal-certs from the image, writing into DIR (as root,
# as the README's `docker run --rm -u "$(id -u)"`); prints what it prints.
certs() {
	local dir=$1
	shift
	certs_in "$dir" "$@" --dir /w
}

# certs_in DIR ARG...: upseal-certs from the image, run in DIR (its working
# directory: relative paths in ARG are DIR's).
certs_in() {
	local dir=$1
	shift
	pm run --rm --user 0 --read-only -v "$dir:/w" -w /w --entrypoint /usr/bin/upseal-certs \
		localhost/upseal:latest "$@" 2>>"$LOG"
}

# newid DIR new NAME [ARG...]: a fresh identity in DIR; prints its pin, or fails.
newid() { pin_of certs "$@"; }

# pin_of CMD...: the pin CMD (an upseal-certs new) prints, or fails.
pin_of() {
	local pin
	pin=$("$@" | tail -n 1)
	if ! [[ $pin =~ ^sha256//[A-Za-z0-9+/]{43}=$ ]]; then
		echo "containers: upseal-certs ${*:3} printed '$pin', not a pin" >&2
		return 1
	fi
	echo "$pin"
}

# short PIN: the pin as conn_end's peer_pin shows it.
short() { echo "${1:0:20}"; }

# uid_of CTR: the uids and gids of CTR's process (from /proc, as the host
# sees it), e.g. "10001 10001 10001 10001 10001 10001 10001 10001".
uid_of() {
	local pid
	pid=$(podman inspect -f '{{.State.Pid}}' "$1" 2>/dev/null) || return 1
	awk '/^Uid:|^Gid:/ {printf "%s %s %s %s ", $2, $3, $4, $5}' "/proc/$pid/status" | sed 's/ $//'
}

# sidecar_locked CTR: runs as uid/gid 10001, read-only root, no capabilities.
sidecar_locked() {
	local c=$1 ids ro pid cap
	ids=$(uid_of "$c")
	ro=$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$c")
	pid=$(podman inspect -f '{{.State.Pid}}' "$c")
	cap=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
	if [ "$ids" != "10001 10001 10001 10001 10001 10001 10001 10001" ] ||
		[ "$ro" != true ] || [ "$cap" != 0000000000000000 ]; then
		WHY="$c: uid/gid [$ids], read-only root $ro, CapEff $cap"
		return 1
	fi
}

# pin_into FILE PLACEHOLDER PIN: put PIN in place of the example's
# placeholder pin line (one of examples/*.ini).
pin_into() {
	local f=$1 ph=$2 pin=$3
	grep -qF "sha256//$ph" "$f" || {
		echo "containers: $f has no placeholder pin sha256//$ph" >&2
		return 1
	}
	sed -i "s|sha256//$ph|$pin|" "$f"
}

# ---- 1. base images and builds ----------------------------------------------
# debootstrap_tar SUITE TAR: a minbase root of SUITE from the mirror as a
# tarball (taken from / kept in UPSEAL_CONTAINERS_CACHE when set).
debootstrap_tar() {
	local suite=$1 tar=$2 root=$WORK/rootfs-$1
	if [ -n "$CACHE" ] && [ -s "$CACHE/debootstrap-$suite.tar" ]; then
		cp "$CACHE/debootstrap-$suite.tar" "$tar"
		return
	fi
	timeout 600 debootstrap --variant=minbase "$suite" "$root" "$MIRROR" \
		>"$WORK/debootstrap-$suite.log" 2>&1 || return 1
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
	tar -C "$root" -cf "$tar" . && rm -rf "$root" || return 1
	if [ -n "$CACHE" ]; then cp "$tar" "$CACHE/debootstrap-$suite.tar"; fi
}

# import_base SUITE TAR NAME...: the tarball as an image, under each NAME.
import_base() {
	local suite=$1 tar=$2 n
	shift 2
	pm import --change 'CMD ["/bin/bash"]' "$tar" "localhost/upseal-test-base:$suite" >>"$LOG" 2>&1 || return 1
	for n in "$@"; do pm tag "localhost/upseal-test-base:$suite" "$n" >>"$LOG" 2>&1 || return 1; done
}

t1=$(date +%s%N)
if ! debootstrap_tar bookworm "$WORK/bookworm.tar"; then
	tail -n 20 "$WORK/debootstrap-bookworm.log" 2>/dev/null
	skip_all "debootstrap of bookworm from $MIRROR failed (see above)"
fi
import_base bookworm "$WORK/bookworm.tar" docker.io/library/debian:12 docker.io/library/debian:12-slim ||
	skip_all "podman import failed: $(tail -n 2 "$LOG" | tr '\n' ' ')"
rm -f "$WORK/bookworm.tar"
if ! pm run --rm localhost/upseal-test-base:bookworm true >"$WORK/smoke.log" 2>&1; then
	skip_all "podman cannot run a container here: $(tail -n 2 "$WORK/smoke.log" | tr '\n' ' ')"
fi
note "bookworm base (debootstrap, import): $(elapsed "$t1")s"

# The trixie base meanwhile, in the background (joined in part 6).
TRIXIE_PID=
if [ "$TRIXIE" -eq 1 ]; then
	if curl -sfI --max-time 15 "$MIRROR/dists/trixie/Release" >/dev/null; then
		setsid bash -c "$(declare -f debootstrap_tar); WORK=$WORK MIRROR=$MIRROR CACHE='$CACHE'; debootstrap_tar trixie $WORK/trixie.tar" &
		TRIXIE_PID=$!
		BG_PIDS+=("$TRIXIE_PID")
	else
		TRIXIE=0
		TRIXIE_WHY="the mirror $MIRROR has no trixie"
	fi
else
	TRIXIE_WHY="--no-trixie / UPSEAL_CONTAINERS_TRIXIE=0"
fi

# The tools image in the background, the project's image in the foreground.
t1=$(date +%s%N)
(timeout 900 podman build --network host -f tests/containers/tools.Containerfile \
	-t localhost/upseal-test-tools:latest tests/containers >"$WORK/build-tools.log" 2>&1) &
TOOLS_PID=$!
BG_PIDS+=("$TOOLS_PID")
if ! timeout 900 podman build --network host -t localhost/upseal:latest . >"$WORK/build.log" 2>&1; then
	tail -n 30 "$WORK/build.log"
	t build_image false
	summary
	exit 1
fi
note "podman build of the Dockerfile: $(elapsed "$t1")s"
wait "$TOOLS_PID"
TOOLS_RC=$?
if [ "$TOOLS_RC" -ne 0 ] ||
	! pm tag localhost/upseal-test-tools:latest docker.io/library/nginx:stable \
		docker.io/library/python:3-slim >>"$LOG" 2>&1; then
	tail -n 30 "$WORK/build-tools.log"
	t build_tools_image false
	summary
	exit 1
fi
note "podman build of the tools image: $(elapsed "$t1")s (both)"
TOOLS=localhost/upseal-test-tools:latest
IMG=localhost/upseal:latest

# ---- 2. the image -----------------------------------------------------------
image_small() {
	local img=$1 size
	size=$(podman image inspect -f '{{.Size}}' "$img") || return 1
	note "$img: $size bytes ($((size / 1024)) KiB)"
	[ "$size" -lt $((20 * 1024 * 1024)) ] || {
		WHY="$img is $size bytes, not under 20 MB"
		return 1
	}
}

# Every file in the image is one of the binaries, a shared object or the
# three files of /etc; the user is 10001.
image_contents() {
	local img=$1 mnt files bad user
	mnt=$(podman image mount "$img" 2>>"$LOG") || {
		WHY="podman image mount $img failed"
		return 1
	}
	files=$(cd "$mnt" && find . ! -type d | sed 's|^\./||' | sort)
	podman image unmount "$img" >>"$LOG" 2>&1
	note "$img holds: $(echo $files)"
	bad=$(grep -vE '^(usr/sbin/upseal-(client|server)|usr/bin/upseal-certs|usr/local/bin/upseal|etc/(passwd|group|nsswitch\.conf)|(usr/)?lib(64|/x86_64-linux-gnu)?/[^/]+\.so(\.[0-9]+)*)$' <<<"$files")
	user=$(podman image inspect -f '{{.Config.User}}' "$img")
	if [ -n "$bad" ] || [ "$user" != 10001:10001 ]; then
		WHY="unexpected files [$(echo $bad)], user '$user'"
		return 1
	fi
}

no_shell() {
	local out
	if out=$(pm run --rm --entrypoint /bin/sh "$1" -c true 2>&1); then
		WHY="/bin/sh ran in $1"
		return 1
	fi
	grep -qiE 'no such file|not found' <<<"$out" || {
		WHY="/bin/sh failed, but not for lack of it: $out"
		return 1
	}
}

t image_under_20mb image_small "$IMG"
t image_holds_only_binaries_and_libs image_contents "$IMG"
t image_has_no_shell no_shell "$IMG"

# ---- 3. two hosts in pods ---------------------------------------------------
A=$WORK/pods
mkdir -p "$A"/{hosta,hostb,next,intruder,loose,nginx/tls}
TOKEN=token-$$-$RANDOM
pods_setup() {
	BPIN=$(newid "$A/hostb" new backend --dns backend.internal) &&
		NPIN=$(newid "$A/next" new backend --dns backend.internal) &&
		PPIN=$(newid "$A/hosta" new proxy) &&
		IPIN=$(newid "$A/intruder" new proxy) &&
		certs "$A/nginx/tls" new www.example.com >/dev/null || return 1
	# The examples' ini files, with these pins; host B's status port for
	# the probes from outside.
	cp examples/server.ini "$A/hostb/server.ini"
	pin_into "$A/hostb/server.ini" 'PIN+of+proxy+crt+FROM+upseal+certs+new+AAAA=' "$PPIN" || return 1
	sed -i '/^\[upseal\]/a status = 0.0.0.0:9180\nstatus_allow_remote = yes' "$A/hostb/server.ini"
	cp examples/client.ini "$A/hosta/client.ini"
	pin_into "$A/hosta/client.ini" 'PIN+of+backend+crt+FROM+upseal+certs+new+AA=' "$BPIN" || return 1
	pin_into "$A/hosta/client.ini" 'PIN+of+NEXT+backend+key+FOR+rotation+AAAAAA=' "$NPIN" || return 1
	cp "$A/hosta/client.ini" "$A/intruder/client.ini"
	# The two ownerships the README allows: the image's user with 0600,
	# root with group 10001 and 0640.
	chown 10001:10001 "$A/hostb/backend.key" "$A/intruder/proxy.key" "$A/next/backend.key"
	chown 0:10001 "$A/hosta/proxy.key"
	chmod 0640 "$A/hosta/proxy.key"
	cp -a "$A/hostb/." "$A/loose/"
	chmod 0640 "$A/loose/backend.key" # group-readable, owned by 10001: refused
}

key_modes() {
	local out rc
	out=$(pm run --rm --read-only -v "$A/hostb:/etc/upseal:ro" "$IMG" --check -c /etc/upseal/server.ini 2>&1)
	[[ $out == *"server.ini: ok, 1 tunnel(s)"* ]] || {
		WHY="owner 10001 mode 0600: $out"
		return 1
	}
	out=$(pm run --rm --read-only -v "$A/hosta:/etc/upseal:ro" --entrypoint /usr/sbin/upseal-client \
		"$IMG" --check -c /etc/upseal/client.ini 2>&1)
	[[ $out == *"client.ini: ok, 1 tunnel(s)"* ]] || {
		WHY="root:10001 mode 0640: $out"
		return 1
	}
	out=$(pm run --rm --read-only -v "$A/loose:/etc/upseal:ro" "$IMG" --check -c /etc/upseal/server.ini 2>&1)
	rc=$?
	note "a key owned by 10001 with mode 0640: exit $rc: $out"
	[ "$rc" -eq 1 ] && [[ $out == *backend.key* ]] || {
		WHY="a group-readable key owned by 10001 gave exit $rc: $out"
		return 1
	}
}

pods_start() {
	pm network create "$P-net" >>"$LOG" 2>&1 &&
		pm pod create --name "$P-hostb" --network "$P-net" --network-alias backend.internal >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-hostb" --name "$P-app" -v "$REPO/tests/containers/app.py:/app.py:ro" \
			"$TOOLS" python3 /app.py "$TOKEN" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-hostb" --name "$P-server" --read-only -v "$A/hostb:/etc/upseal:ro" \
			"$IMG" -c /etc/upseal/server.ini >>"$LOG" 2>&1 &&
		pm pod create --name "$P-hosta" --network "$P-net" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-hosta" --name "$P-nginx" \
			-v "$REPO/examples/nginx-upstream.conf:/etc/nginx/conf.d/default.conf:ro" \
			-v "$A/nginx/tls:/etc/nginx/tls:ro" "$TOOLS" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-hosta" --name "$P-client" --read-only -v "$A/hosta:/etc/upseal:ro" \
			--entrypoint /usr/sbin/upseal-client "$IMG" -c /etc/upseal/client.ini >>"$LOG" 2>&1 &&
		pm pod create --name "$P-intruder" --network "$P-net" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-intruder" --name "$P-itools" "$TOOLS" sleep 900 >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-intruder" --name "$P-iclient" --read-only -v "$A/intruder:/etc/upseal:ro" \
			--entrypoint /usr/sbin/upseal-client "$IMG" -c /etc/upseal/client.ini >>"$LOG" 2>&1 &&
		pm run -d --name "$P-prober" --network "$P-net" "$TOOLS" sleep 900 >>"$LOG" 2>&1 || {
		WHY="could not start the pods: $(tail -n 3 "$LOG" | tr '\n' '|')"
		return 1
	}
	wait_log "$P-app" 20 "app: listening" &&
		wait_log "$P-server" 20 "event=ready" &&
		wait_log "$P-client" 20 "event=ready" &&
		wait_log "$P-iclient" 20 "event=ready" || return 1
	# nginx has no ready line: poll its port from the network.
	wait_cmd 20 podman exec "$P-prober" curl -sk -o /dev/null --max-time 2 "https://$P-hosta/" || {
		WHY="nginx in $P-hosta did not answer on 443 within 20s"
		return 1
	}
}

through_nginx() {
	local body
	body=$(pm exec "$P-prober" curl -sSk --max-time 10 "https://$P-hosta/" 2>&1)
	[[ $body == *"hello from the app $TOKEN"* ]] || {
		WHY="curl https://$P-hosta/ from the network gave: $body"
		return 1
	}
	wait_log "$P-server" 10 "event=conn_end" "peer_pin=$(short "$PPIN") " "reason=closed" &&
		wait_log "$P-client" 10 "event=conn_end" "peer_pin=$(short "$BPIN") " "reason=closed"
}

healthz_from_outside() {
	local out
	out=$(pm exec "$P-prober" curl -sS --max-time 5 -w ' %{http_code}' "http://$P-hostb:9180/healthz" 2>&1)
	[[ $out == *" 200" ]] || {
		WHY="GET http://$P-hostb:9180/healthz from the network: $out"
		return 1
	}
}

app_unreachable() {
	local out rc
	# On host B's loopback the app answers...
	out=$(pm exec "$P-app" curl -sS --max-time 5 http://127.0.0.1:8080/ 2>&1)
	[[ $out == *"$TOKEN"* ]] || {
		WHY="the app does not answer on 127.0.0.1:8080 in its pod: $out"
		return 1
	}
	# ...from the network its port is closed, and upseal-server's is open.
	out=$(pm exec "$P-prober" curl -sS --max-time 5 "http://$P-hostb:8080/" 2>&1)
	rc=$?
	[ "$rc" -eq 7 ] || {
		WHY="curl http://$P-hostb:8080/ from the network: exit $rc (7: could not connect expected): $out"
		return 1
	}
	pm exec "$P-prober" timeout 5 bash -c "exec 3<>/dev/tcp/$P-hostb/7443" >/dev/null 2>&1 || {
		WHY="$P-hostb:7443 is not reachable from the network either"
		return 1
	}
	out=$(pm exec "$P-server" /usr/sbin/upseal-server --audit -c /etc/upseal/server.ini 2>&1)
	rc=$?
	note "upseal-server --audit in host B: $out"
	[ "$rc" -eq 0 ] || {
		WHY="upseal-server --audit in host B: exit $rc: $out"
		return 1
	}
}

unpinned_refused() {
	local n0 out rc
	n0=$(log_count "$P-app" "app: request")
	out=$(pm exec "$P-itools" curl -sS --max-time 10 http://127.0.0.1:7001/ 2>&1)
	rc=$?
	if [ "$rc" -eq 0 ] || [[ $out == *"$TOKEN"* ]]; then
		WHY="the unpinned client got through: exit $rc: $out"
		return 1
	fi
	wait_log "$P-server" 10 "event=conn_end" "reason=pin_mismatch" "presented_pin=\"$IPIN\"" || return 1
	[ "$(log_count "$P-app" "app: request")" -eq "$n0" ] || {
		WHY="the app saw a request from the unpinned client"
		return 1
	}
}

# The documented rotation's step 3: client.ini already pins the next key;
# the backend's key and certificate are swapped in the mounted directory,
# then SIGHUP. New connections show the new key.
reload_after_swap() {
	local n body
	install -o 10001 -g 10001 -m 0600 "$A/next/backend.key" "$A/hostb/backend.key.new" &&
		install -m 0644 "$A/next/backend.crt" "$A/hostb/backend.crt.new" &&
		mv -f "$A/hostb/backend.crt.new" "$A/hostb/backend.crt" &&
		mv -f "$A/hostb/backend.key.new" "$A/hostb/backend.key" || return 1
	n=$(log_count "$P-server" "event=reloaded")
	pm kill -s HUP "$P-server" >>"$LOG" 2>&1 || {
		WHY="podman kill -s HUP failed"
		return 1
	}
	wait_cmd 10 test_more "$P-server" "event=reloaded" "$n" || {
		WHY="no new event=reloaded within 10s: $(podman logs --tail 3 "$P-server" 2>&1 | tr '\n' '|')"
		return 1
	}
	body=$(pm exec "$P-nginx" curl -sS --max-time 10 http://127.0.0.1:7001/ 2>&1)
	[[ $body == *"$TOKEN"* ]] || {
		WHY="after the reload: $body"
		return 1
	}
	wait_log "$P-client" 10 "event=conn_end" "peer_pin=$(short "$NPIN") " "reason=closed"
}

test_more() { [ "$(log_count "$1" "$2")" -gt "$3" ]; }

stop_drains() {
	local t1 secs rc code saw503=0 i size
	(pm exec "$P-nginx" curl -sS -N --max-time 30 http://127.0.0.1:7001/slow \
		>"$A/stream.out" 2>"$A/stream.err"
	echo $? >"$A/stream.rc") &
	local spid=$!
	BG_PIDS+=("$spid")
	wait_log "$P-app" 10 "app: slow stream started" || return 1
	t1=$(date +%s%N)
	(timeout 60 podman stop -t 30 "$P-server" >"$A/stop.out" 2>&1
	echo $? >"$A/stop.rc") &
	local stpid=$!
	BG_PIDS+=("$stpid")
	for ((i = 0; i < 25; i++)); do
		code=$(podman exec "$P-prober" curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
			"http://$P-hostb:9180/healthz" 2>/dev/null)
		if [ "$code" = 503 ]; then
			saw503=1
			break
		fi
		kill -0 "$stpid" 2>/dev/null || break
		sleep 0.2
	done
	wait "$stpid"
	secs=$(elapsed "$t1")
	wait "$spid"
	rc=$(cat "$A/stream.rc" 2>/dev/null)
	size=$(stat -c %s "$A/stream.out" 2>/dev/null || echo 0)
	note "podman stop took ${secs}s (drain_timeout 15s) with a stream in flight; /healthz meanwhile: $code"
	[ "$(cat "$A/stop.rc")" = 0 ] || {
		WHY="podman stop: $(cat "$A/stop.out")"
		return 1
	}
	[ "$rc" = 0 ] && [ "$size" -eq 6010 ] && [ "$(tail -n 1 "$A/stream.out")" = END ] || {
		WHY="the stream in flight: curl exit $rc, $size bytes (6010 expected): $(cat "$A/stream.err")"
		return 1
	}
	[ "${secs%.*}" -lt 15 ] || {
		WHY="podman stop took ${secs}s, not under drain_timeout (15s)"
		return 1
	}
	[ "$saw503" -eq 1 ] || {
		WHY="/healthz never answered 503 while draining (last: $code)"
		return 1
	}
	[ "$(podman inspect -f '{{.State.ExitCode}}' "$P-server")" = 0 ] || {
		WHY="upseal-server exited $(podman inspect -f '{{.State.ExitCode}}' "$P-server")"
		return 1
	}
	logs_match "$P-server" "event=stopping" && logs_match "$P-server" "event=stopped" &&
		! logs_match "$P-server" "event=drain_timeout" || {
		WHY="the log has no stopping/stopped, or a drain_timeout: $(podman logs --tail 4 "$P-server" 2>&1 | tr '\n' '|')"
		return 1
	}
	# The client has nothing open: it stops at once, exit 0.
	pm stop -t 30 "$P-client" >>"$LOG" 2>&1 &&
		[ "$(podman inspect -f '{{.State.ExitCode}}' "$P-client")" = 0 ] &&
		logs_match "$P-client" "event=stopped" || {
		WHY="upseal-client: exit $(podman inspect -f '{{.State.ExitCode}}' "$P-client")"
		return 1
	}
}

if pods_setup; then
	t image_key_ownership_and_modes key_modes
	if t pods_start pods_start; then
		t pods_request_through_nginx through_nginx
		t pods_healthz_from_outside healthz_from_outside
		t pods_app_port_unreachable_from_network app_unreachable
		t pods_sidecars_non_root_read_only sidecar_locked "$P-server"
		t pods_client_non_root_read_only sidecar_locked "$P-client"
		t pods_unpinned_client_refused unpinned_refused
		t pods_hup_reloads_swapped_key reload_after_swap
		t pods_stop_drains stop_drains
	fi
else
	t pods_setup false
fi
pm pod rm -f -t 0 "$P-hosta" "$P-hostb" "$P-intruder" >>"$LOG" 2>&1
pm rm -f -t 0 "$P-prober" >>"$LOG" 2>&1
pm network rm -f "$P-net" >>"$LOG" 2>&1

# ---- 4. examples/compose.yaml -----------------------------------------------
# With Debian's docker-compose against podman's Docker API: Debian 12's
# podman-compose (1.0.3) passes `network_mode: service:X` to podman as it
# is, which podman does not know, and fails on per-network aliases.
C=$WORK/compose
DC=(timeout 300 docker-compose -p "${P}c" -f "$C/compose.yaml")
export DOCKER_HOST=unix://$WORK/podman.sock

compose_setup() {
	mkdir -p "$C" &&
		cp examples/compose.yaml examples/nginx-upstream.conf examples/client.ini examples/server.ini "$C/" ||
		return 1
	# The set-up steps at the top of compose.yaml.
	mkdir -p "$C/host-a/tls" "$C/host-b"
	CPPIN=$(newid "$C/host-a" new proxy) &&
		CBPIN=$(newid "$C/host-b" new backend --dns backend.internal) &&
		certs "$C/host-a/tls" new www.example.com >/dev/null || return 1
	cp "$C/client.ini" "$C/host-a/" && cp "$C/server.ini" "$C/host-b/" || return 1
	pin_into "$C/host-a/client.ini" 'PIN+of+backend+crt+FROM+upseal+certs+new+AA=' "$CBPIN" &&
		sed -i '/PIN+of+NEXT+backend/d' "$C/host-a/client.ini" &&
		pin_into "$C/host-b/server.ini" 'PIN+of+proxy+crt+FROM+upseal+certs+new+AAAA=' "$CPPIN" &&
		chown 10001:10001 "$C"/host-a/*.key "$C"/host-b/*.key || return 1
	podman system service --time=0 "$DOCKER_HOST" >"$WORK/service.log" 2>&1 &
	SVC_PID=$!
	wait_cmd 20 curl -sf --max-time 2 --unix-socket "$WORK/podman.sock" http://d/_ping || {
		WHY="podman system service did not answer on $WORK/podman.sock: $(tail -n 2 "$WORK/service.log")"
		return 1
	}
}

compose_up() {
	# HTTPS_PUBLISH: nginx's 443 on a port of 127.0.0.1 that podman picks.
	HTTPS_PUBLISH=127.0.0.1: "${DC[@]}" up -d >"$WORK/compose-up.log" 2>&1 || {
		WHY="docker-compose up: $(tail -n 5 "$WORK/compose-up.log" | tr '\n' '|')"
		return 1
	}
	CSRV=$("${DC[@]}" ps -q upseal-server 2>>"$LOG") &&
		CCLI=$("${DC[@]}" ps -q upseal-client 2>>"$LOG") &&
		CPROXY=$("${DC[@]}" ps -q proxy 2>>"$LOG") &&
		[ -n "$CSRV" ] && [ -n "$CCLI" ] && [ -n "$CPROXY" ] || {
		WHY="docker-compose ps: no container for a service"
		return 1
	}
	wait_log "$CSRV" 20 "event=ready" && wait_log "$CCLI" 20 "event=ready" || return 1
	CPORT=$(podman port "$CPROXY" 443/tcp | head -n 1)
	[ -n "$CPORT" ] || {
		WHY="nginx's 443 is not published"
		return 1
	}
	wait_cmd 20 curl -sk -o /dev/null --max-time 2 "https://$CPORT/" || {
		WHY="nginx did not answer on $CPORT within 20s"
		return 1
	}
}

compose_request() {
	local body
	body=$(curl -sSk --max-time 10 "https://$CPORT/" 2>&1)
	[[ $body == *"Directory listing for /"* ]] || {
		WHY="curl https://$CPORT/ gave: $body"
		return 1
	}
	wait_log "$CSRV" 10 "event=conn_end" "peer_pin=$(short "$CPPIN") " "reason=closed" &&
		wait_log "$CCLI" 10 "event=conn_end" "peer_pin=$(short "$CBPIN") " "reason=closed"
}

compose_app_unreachable() {
	local out rc
	out=$("${DC[@]}" exec -T proxy curl -sS --max-time 5 http://backend.internal:8080/ 2>&1)
	rc=$?
	[ "$rc" -eq 7 ] || {
		WHY="from host A, curl http://backend.internal:8080/: exit $rc (7 expected): $out"
		return 1
	}
	out=$("${DC[@]}" exec -T upseal-server upseal-server --audit -c /etc/upseal/server.ini 2>&1)
	rc=$?
	[ "$rc" -eq 0 ] || {
		WHY="docker-compose exec upseal-server upseal-server --audit: exit $rc: $out"
		return 1
	}
}

compose_reload() {
	local n
	n=$(log_count "$CCLI" "event=reloaded")
	"${DC[@]}" kill -s HUP upseal-client >>"$LOG" 2>&1 || {
		WHY="docker-compose kill -s HUP upseal-client failed"
		return 1
	}
	wait_cmd 10 test_more "$CCLI" "event=reloaded" "$n" || {
		WHY="no new event=reloaded within 10s: $(podman logs --tail 2 "$CCLI" 2>&1 | tr '\n' '|')"
		return 1
	}
}

compose_stop() {
	local c
	"${DC[@]}" stop >>"$LOG" 2>&1 || {
		WHY="docker-compose stop failed"
		return 1
	}
	for c in "$CSRV" "$CCLI"; do
		[ "$(podman inspect -f '{{.State.ExitCode}}' "$c")" = 0 ] && logs_match "$c" "event=stopped" || {
			WHY="$c: exit $(podman inspect -f '{{.State.ExitCode}}' "$c"), $(podman logs --tail 2 "$c" 2>&1 | tr '\n' '|')"
			return 1
		}
	done
	# podman does not remove a container whose network namespace another
	# one uses, and docker-compose removes them all at once: the sidecars
	# first (README).
	"${DC[@]}" rm -sf upseal-client upseal-server >>"$LOG" 2>&1 &&
		"${DC[@]}" down >"$WORK/compose-down.log" 2>&1 || {
		WHY="docker-compose down: $(tail -n 4 "$WORK/compose-down.log" | tr '\n' '|')"
		return 1
	}
}

if t compose_setup compose_setup && t compose_up compose_up; then
	t compose_request_end_to_end compose_request
	t compose_sidecars_non_root_read_only sidecar_locked "$CSRV"
	t compose_client_non_root_read_only sidecar_locked "$CCLI"
	t compose_app_port_unreachable_from_host_a compose_app_unreachable
	t compose_kill_hup_reloads compose_reload
	t compose_stop_exits_0 compose_stop
fi
"${DC[@]}" down -t 1 >>"$LOG" 2>&1
if [ -n "$SVC_PID" ]; then
	kill "$SVC_PID" 2>/dev/null
	wait "$SVC_PID" 2>/dev/null
	SVC_PID=
fi

# ---- 5. examples/k8s --------------------------------------------------------
K=$WORK/kube
KPODS=()

# The fleet's names, as the manifests' comments give them.
KSVC=app-upseal.default.svc.cluster.local
KURI=spiffe://example.org/ns/default/sa

# k8s_copy SRC DST: the manifest without the containers' `ports:` (podman
# 4.3 publishes every containerPort on the host, so two replicas collide
# on it).
k8s_copy() {
	awk '
		/^[ ]*containers:/ { inctr = 1 }
		/^kind:/ { inctr = 0 }
		inctr && /^[ ]*ports:[ ]*$/ { ind = match($0, /[^ ]/); skip = 1; next }
		skip {
			i = match($0, /[^ ]/)
			if (i > ind || (i == ind && $0 ~ /^[ ]*- /)) next
			skip = 0
		}
		{ print }' "$1" >"$2"
}

# secret NAME KEY FILE...: the Secret `kubectl create secret generic NAME
# --from-file=KEY=FILE...` makes, applied with kube play (which keeps it as
# a podman secret, where a secret volume looks it up).
secret() {
	local name=$1 f=$K/secret-$1.yaml
	shift
	{
		printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\ntype: Opaque\ndata:\n' "$name"
		while [ $# -gt 0 ]; do
			printf '  %s: %s\n' "$1" "$(base64 -w0 "$2")"
			shift 2
		done
	} >"$f"
	pm kube play --network "$P-kube" "$f" >>"$LOG" 2>&1
}

# secret_volume NAME MODE KEY FILE...: what the kubelet puts in the volume
# of a Secret mounted with defaultMode MODE and fsGroup 10001 (podman 4.3
# writes the data still base64-encoded, 0644, owned by root:root).
secret_volume() {
	local mp mode=$2
	mp=$(podman volume inspect -f '{{.Mountpoint}}' "$1") || return 1
	shift 2
	note "kube play wrote $1 as $(stat -c '%s bytes, mode %a, %U:%G' "$mp/$1" 2>&1) ($(stat -c %s "$2") bytes in the Secret)"
	while [ $# -gt 0 ]; do
		install -o 0 -g 10001 -m "$mode" "$2" "$mp/$1" || return 1
		shift 2
	done
}

kube_play() {
	mkdir -p "$K"/{www,intruder} || return 1
	# In $K, as app.yaml's and proxy.yaml's comments say: the CA, its empty
	# CRL, and each role's identity with the names the other side checks.
	certs_in "$K" ca upseal-ca --dir ca >/dev/null &&
		certs_in "$K" revoke --ca ca >/dev/null &&
		KBPIN=$(pin_of certs_in "$K" new backend --dir app-id --ca ca --days 7 \
			--dns "$KSVC" --uri "$KURI/app") &&
		KPPIN=$(pin_of certs_in "$K" new proxy --dir proxy-id --ca ca --days 7 \
			--uri "$KURI/proxy") &&
		certs "$K/www" new www >/dev/null || return 1
	[ -s "$K/ca/upseal-ca.crl" ] || {
		WHY="upseal-certs revoke --ca ca made no ca/upseal-ca.crl"
		return 1
	}
	k8s_copy examples/k8s/app.yaml "$K/app.yaml" && k8s_copy examples/k8s/proxy.yaml "$K/proxy.yaml" ||
		return 1
	pm network create "$P-kube" >>"$LOG" 2>&1 || return 1
	secret upseal-app-identity backend.crt "$K/app-id/backend.crt" backend.key "$K/app-id/backend.key" &&
		secret upseal-proxy-identity proxy.crt "$K/proxy-id/proxy.crt" proxy.key "$K/proxy-id/proxy.key" &&
		secret upseal-trust ca.crt "$K/ca/upseal-ca.crt" ca.crl "$K/ca/upseal-ca.crl" &&
		secret www-tls tls.crt "$K/www/www.crt" tls.key "$K/www/www.key" || {
		WHY="kube play of a Secret failed: $(tail -n 2 "$LOG")"
		return 1
	}
	# The Service: its DNS name is an alias of the app pods on the network.
	pm kube play --start=false --network "$P-kube:alias=$KSVC" \
			"$K/app.yaml" >"$K/play-app.log" 2>&1 &&
		pm kube play --start=false --network "$P-kube" "$K/proxy.yaml" >"$K/play-proxy.log" 2>&1 || {
		WHY="podman kube play: $(tail -n 3 "$K"/play-*.log | tr '\n' '|')"
		return 1
	}
	# The modes are the manifests' defaultMode (www-tls: the default, 0644).
	secret_volume upseal-app-identity 0440 backend.crt "$K/app-id/backend.crt" backend.key "$K/app-id/backend.key" &&
		secret_volume upseal-proxy-identity 0440 proxy.crt "$K/proxy-id/proxy.crt" proxy.key "$K/proxy-id/proxy.key" &&
		secret_volume upseal-trust 0444 ca.crt "$K/ca/upseal-ca.crt" ca.crl "$K/ca/upseal-ca.crl" &&
		secret_volume www-tls 0644 tls.crt "$K/www/www.crt" tls.key "$K/www/www.key" || {
		WHY="the Secret volumes are not there"
		return 1
	}
	local id
	for id in $(awk '/^Pod:/ {getline; print}' "$K"/play-app.log "$K"/play-proxy.log); do
		KPODS+=("$(podman pod inspect -f '{{.Name}}' "$id")")
	done
	note "kube play made the pods ${KPODS[*]} (replicas: 2 each)"
	[ "${#KPODS[@]}" -eq 4 ] || {
		WHY="${#KPODS[@]} pods, not 2 app + 2 proxy"
		return 1
	}
	pm pod start "${KPODS[@]}" >>"$LOG" 2>&1 || {
		WHY="podman pod start: $(tail -n 3 "$LOG" | tr '\n' '|')"
		return 1
	}
	local p
	for p in "${KPODS[@]}"; do
		case $p in
		app-*) wait_log "$p-upseal-server" 20 '"event":"ready"' || return 1 ;;
		proxy-*) wait_log "$p-upseal-client" 20 '"event":"ready"' || return 1 ;;
		esac
	done
}

# kube_logged SECS ROLE STR...: within SECS, a line of the sidecar of some
# pod of ROLE (app or proxy) holds every STR.
kube_logged() {
	local secs=$1 role=$2 i p
	shift 2
	for ((i = 0; i < secs * 5; i++)); do
		for p in "${KPODS[@]}"; do
			case $p in
			app-*) [ "$role" = app ] && logs_match "$p-upseal-server" "$@" && return 0 ;;
			proxy-*) [ "$role" = proxy ] && logs_match "$p-upseal-client" "$@" && return 0 ;;
			esac
		done
		sleep 0.2
	done
	WHY="no $role pod's sidecar logged a line with [$*] within ${secs}s"
	return 1
}

# Each proxy pod gets the app's page; the app pods' sidecars saw the proxy
# pods' identity and name the rule that let it in, and the proxies' the
# app's.
kube_request() {
	local p body n=0
	for p in "${KPODS[@]}"; do
		[[ $p == proxy-* ]] || continue
		wait_cmd 20 podman exec "$p-nginx" curl -sk -o /dev/null --max-time 2 https://127.0.0.1/ || {
			WHY="nginx of $p did not answer within 20s"
			return 1
		}
		body=$(pm exec "$p-nginx" curl -sSk --max-time 10 https://127.0.0.1/ 2>&1)
		[[ $body == *"Directory listing for /"* ]] || {
			WHY="from $p: $body"
			return 1
		}
		n=$((n + 1))
	done
	[ "$n" -eq 2 ] || {
		WHY="$n proxy pods answered"
		return 1
	}
	kube_logged 10 app '"event":"conn_end"' "\"peer_pin\":\"$(short "$KPPIN")\"" \
		"\"peer_rule\":\"allow_uri=$KURI/proxy\"" '"reason":"closed"' &&
		kube_logged 10 proxy '"event":"conn_end"' "\"peer_pin\":\"$(short "$KBPIN")\"" \
			"\"peer_rule\":\"allow_uri=$KURI/app\"" '"reason":"closed"'
}

kube_locked() {
	local p
	for p in "${KPODS[@]}"; do
		case $p in
		app-*) sidecar_locked "$p-upseal-server" || return 1 ;;
		proxy-*) sidecar_locked "$p-upseal-client" || return 1 ;;
		esac
	done
}

kube_from_outside() {
	local out rc
	pm run -d --name "$P-kprober" --network "$P-kube" "$TOOLS" sleep 300 >>"$LOG" 2>&1 || return 1
	out=$(pm exec "$P-kprober" curl -sS --max-time 5 --retry 3 --retry-delay 1 \
		--retry-all-errors -w ' %{http_code}' http://app-pod-0:9180/healthz 2>&1)
	[[ $out == *" 200" ]] || {
		WHY="GET http://app-pod-0:9180/healthz: $out"
		return 1
	}
	out=$(pm exec "$P-kprober" curl -sS --max-time 5 http://app-pod-0:8080/ 2>&1)
	rc=$?
	[ "$rc" -eq 7 ] || {
		WHY="curl http://app-pod-0:8080/ from the network: exit $rc (7 expected): $out"
		return 1
	}
	pm exec "$P-kprober" timeout 5 bash -c "exec 3<>/dev/tcp/$KSVC/7443" >/dev/null 2>&1 || {
		WHY="$KSVC:7443 is not reachable"
		return 1
	}
}

# An identity of the same CA, with the app's DNS name checked as the
# manifests do, but another SPIFFE ID: the app pods refuse it by name.
kube_other_name_refused() {
	local out rc
	KIPIN=$(pin_of certs_in "$K" new intruder --dir intruder --ca ca --days 7 \
		--uri "$KURI/intruder") || return 1
	cp "$K/ca/upseal-ca.crt" "$K/intruder/ca.crt" && chown 10001:10001 "$K/intruder/intruder.key" || return 1
	cat >"$K/intruder/client.ini" <<EOF
[upseal]
log_level = info

[app]
listen  = 0.0.0.0:7001
allow_remote = yes
connect = $KSVC:7443
cert    = /etc/upseal/intruder.crt
key     = /etc/upseal/intruder.key
ca      = /etc/upseal/ca.crt
EOF
	pm run -d --name "$P-kintruder" --network "$P-kube" --read-only -v "$K/intruder:/etc/upseal:ro" \
		--entrypoint /usr/sbin/upseal-client "$IMG" -c /etc/upseal/client.ini >>"$LOG" 2>&1 || {
		WHY="could not start the intruder's sidecar: $(tail -n 2 "$LOG" | tr '\n' '|')"
		return 1
	}
	wait_log "$P-kintruder" 20 "event=ready" || return 1
	# By address: aardvark-dns was seen not to answer for a container
	# started moments before (the lookup timed out, three times in a row).
	local try ip
	ip=$(pm inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
		"$P-kintruder" 2>>"$LOG")
	[ -n "$ip" ] || {
		WHY="no address for the intruder's container"
		return 1
	}
	for try in 1 2 3; do
		out=$(pm exec "$P-kprober" curl -sS --max-time 10 "http://$ip:7001/" 2>&1)
		rc=$?
		if [ "$rc" -eq 0 ] || [[ $out == *"Directory listing"* ]]; then
			WHY="the intruder got through: exit $rc: $out"
			return 1
		fi
		kube_logged 5 app '"event":"conn_end"' '"reason":"name_not_allowed"' \
			"\"presented_pin\":\"$KIPIN\"" "uri=$KURI/intruder" && break
		[ "$try" -lt 3 ] || return 1
		note "try $try: no refusal logged yet (curl exit $rc: $out)"
	done
	note "$(for p in "${KPODS[@]}"; do [[ $p == app-* ]] && podman logs "$p-upseal-server" 2>&1; done |
		grep -m 1 '"reason":"name_not_allowed"')"
}

# Every series alerts.yaml's rules use is on an app pod's /metrics, and the
# three dates are there with values: the certificate's in 7 days, the CA's
# in 10 years, the CRL's in 30 days.
kube_alert_series() {
	local m name now v want
	m=$(pm exec "$P-kprober" curl -sS --max-time 5 --retry 3 --retry-delay 1 \
		--retry-all-errors http://app-pod-0:9180/metrics 2>&1) || {
		WHY="GET http://app-pod-0:9180/metrics: $m"
		return 1
	}
	for name in $(grep -o 'upseal_[a-z_]*' examples/k8s/alerts.yaml | sort -u); do
		grep -q "^# TYPE $name " <<<"$m" || {
			WHY="alerts.yaml uses $name, which /metrics does not serve"
			return 1
		}
	done
	now=$(date +%s)
	for want in upseal_cert_not_after_seconds:7 upseal_ca_not_after_seconds:3650 \
		upseal_crl_next_update_seconds:30; do
		name=${want%:*}
		v=$(awk -v n="$name{tunnel=\"app\"}" '$1 == n { print $2 }' <<<"$m")
		[ -n "$v" ] && [ $(((v - now + 43200) / 86400)) -eq "${want#*:}" ] || {
			WHY="$name{tunnel=\"app\"} is '$v', not ${want#*:} days from now"
			return 1
		}
	done
}

if t kube_play_starts_the_pods kube_play; then
	t kube_request_from_each_proxy_pod kube_request
	t kube_sidecars_non_root_read_only kube_locked
	if t kube_healthz_from_outside_app_port_closed kube_from_outside; then
		t kube_other_spiffe_id_refused kube_other_name_refused
		t kube_metrics_serve_the_alerts_series kube_alert_series
	fi
fi
[ "${#KPODS[@]}" -gt 0 ] && pm pod rm -f -t 0 "${KPODS[@]}" >>"$LOG" 2>&1
pm rm -f -t 0 "$P-kprober" "$P-kintruder" >>"$LOG" 2>&1
pm volume rm -af >>"$LOG" 2>&1
pm secret rm -a >>"$LOG" 2>&1
pm network rm -f "$P-kube" >>"$LOG" 2>&1

# ---- 6. Debian 13: mbedTLS 3.6, TLS 1.3 -------------------------------------
D=$WORK/trixie
IMG13=localhost/upseal:trixie

trixie_build() {
	local rc t1
	t1=$(date +%s%N)
	wait "$TRIXIE_PID"
	rc=$?
	[ "$rc" -eq 0 ] || {
		WHY="debootstrap of trixie: exit $rc: $(tail -n 3 "$WORK/debootstrap-trixie.log" 2>/dev/null | tr '\n' '|')"
		return 1
	}
	import_base trixie "$WORK/trixie.tar" docker.io/library/debian:13 || {
		WHY="podman import of trixie failed"
		return 1
	}
	rm -f "$WORK/trixie.tar"
	timeout 900 podman build --network host --build-arg DEBIAN=13 -t "$IMG13" . >"$WORK/build-trixie.log" 2>&1 || {
		WHY="podman build --build-arg DEBIAN=13: $(tail -n 5 "$WORK/build-trixie.log" | tr '\n' '|')"
		return 1
	}
	note "podman build --build-arg DEBIAN=13 (after waiting for debootstrap): $(elapsed "$t1")s"
}

trixie_version() {
	local out
	out=$(pm run --rm "$IMG13" --version 2>&1)
	note "$out"
	[[ $out == *"mbedTLS 3.6."* ]] || {
		WHY="--version: $out"
		return 1
	}
}

trixie_pair() {
	mkdir -p "$D" && cp -a "$A/hostb" "$D/hostb" && cp -a "$A/hosta" "$D/hosta" || return 1
	sed -i 's/^log_level *= *[a-z]*/log_level = debug/' "$D/hostb/server.ini" "$D/hosta/client.ini"
	pm network create "$P-t" >>"$LOG" 2>&1 &&
		pm pod create --name "$P-t-hostb" --network "$P-t" --network-alias backend.internal >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-t-hostb" --name "$P-t-app" -v "$REPO/tests/containers/app.py:/app.py:ro" \
			"$TOOLS" python3 /app.py "$TOKEN" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-t-hostb" --name "$P-t-server" --read-only -v "$D/hostb:/etc/upseal:ro" \
			"$IMG13" -c /etc/upseal/server.ini >>"$LOG" 2>&1 &&
		pm pod create --name "$P-t-hosta" --network "$P-t" >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-t-hosta" --name "$P-t-tools" "$TOOLS" sleep 300 >>"$LOG" 2>&1 &&
		pm run -d --pod "$P-t-hosta" --name "$P-t-client" --read-only -v "$D/hosta:/etc/upseal:ro" \
			--entrypoint /usr/sbin/upseal-client "$IMG13" -c /etc/upseal/client.ini >>"$LOG" 2>&1 || {
		WHY="could not start the trixie pods: $(tail -n 3 "$LOG" | tr '\n' '|')"
		return 1
	}
	wait_log "$P-t-app" 20 "app: listening" && wait_log "$P-t-server" 20 "event=ready" &&
		wait_log "$P-t-client" 20 "event=ready" || return 1
	local body
	body=$(pm exec "$P-t-tools" curl -sS --max-time 10 http://127.0.0.1:7001/ 2>&1)
	[[ $body == *"$TOKEN"* ]] || {
		WHY="through the trixie pair: $body"
		return 1
	}
	wait_log "$P-t-server" 10 "event=handshake_done" "version=TLSv1.3" &&
		wait_log "$P-t-client" 10 "event=handshake_done" "version=TLSv1.3" &&
		wait_log "$P-t-client" 10 "event=conn_end" "reason=closed" || return 1
	note "$(podman logs "$P-t-client" 2>&1 | grep -m 1 'event=handshake_done')"
	sidecar_locked "$P-t-server"
}

if [ "$TRIXIE" -eq 1 ]; then
	if t trixie_build trixie_build; then
		t trixie_image_under_20mb image_small "$IMG13"
		t trixie_image_holds_only_binaries_and_libs image_contents "$IMG13"
		t trixie_image_mbedtls_36 trixie_version
		t trixie_pair_speaks_tls13 trixie_pair
	fi
	pm pod rm -f -t 0 "$P-t-hosta" "$P-t-hostb" >>"$LOG" 2>&1
	pm network rm -f "$P-t" >>"$LOG" 2>&1
else
	skip trixie "$TRIXIE_WHY"
fi

summary
[ "$FAILED" -eq 0 ]
