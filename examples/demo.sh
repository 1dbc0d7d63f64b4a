#!/usr/bin/env bash
# upseal demo: install what is missing, build, make three identities, run an
# upseal-client/upseal-server pair on loopback in front of a small demo
# backend, send one request through the tunnel, then show that a sidecar
# holding an unpinned key is refused inside the handshake.
#
#   curl --> upseal-client ==mTLS, pinned==> upseal-server --> backend
#
# Everything runs on 127.0.0.1 with ports picked by the kernel (port 0),
# in a temp dir that is removed at exit. Exit 0 when the request came
# through and the intruder was refused; non-zero otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- what the demo needs -------------------------------------------------

# dpkg-query says whether a Debian package is installed.
installed() {
	dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null |
		grep -q '^install ok installed$'
}

say "checking packages"
if [ -x tests/deps.sh ]; then
	./tests/deps.sh
fi
# The demo itself also wants curl (the client) and python3 (the backend).
missing=()
for p in curl python3; do
	installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	SUDO=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "missing ${missing[*]} and not root"
		SUDO=(sudo)
	fi
	echo "demo: installing ${missing[*]}"
	apt_install() {
		"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends "${missing[@]}"
	}
	# deps.sh may just have refreshed the package lists: try without an
	# update first, and run apt-get update (once) only if that fails.
	if ! apt_install 2>/dev/null; then
		"${SUDO[@]}" apt-get update
		apt_install
	fi
fi

# ---- build -----------------------------------------------------------------

say "building (make -j2)"
if ! make -j2 >/tmp/upseal-demo-make.$$ 2>&1; then
	tail -n 40 /tmp/upseal-demo-make.$$
	rm -f /tmp/upseal-demo-make.$$
	die "make failed"
fi
rm -f /tmp/upseal-demo-make.$$
ls "$BIN"/upseal-client "$BIN"/upseal-server "$BIN"/upseal-certs

# ---- a temp dir, and a trap that ends only what this script started --------

DIR=$(mktemp -d /tmp/upseal-demo-XXXXXX)
PIDS=()
cleanup() {
	local rc=$?
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for FILE PATTERN PID WHAT: poll FILE for an extended regex, for at
# most 10 s, failing early if PID has exited.
wait_for() {
	local file=$1 pattern=$2 pid=$3 what=$4 i
	for ((i = 0; i < 100; i++)); do
		if grep -Eq -- "$pattern" "$file" 2>/dev/null; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$file" >&2 || true
			die "$what exited before it was ready"
		fi
		sleep 0.1
	done
	cat "$file" >&2 || true
	die "$what: no '$pattern' in its log after 10 s"
}

# listen_addr LOG: the address in the `event=listening` line.
listen_addr() {
	sed -n 's/.*event=listening .* addr=\([^ ]*\).*/\1/p' "$1" | head -n 1
}

# start_sidecar NAME BINARY INI: start it, wait for `event=ready`, and set
# ADDR to the address it bound.
start_sidecar() {
	local name=$1 bin=$2 ini=$3
	"$BIN/$bin" -c "$ini" 2>"$DIR/$name.log" &
	PIDS+=($!)
	wait_for "$DIR/$name.log" 'event=ready' $! "$bin ($name)"
	ADDR=$(listen_addr "$DIR/$name.log")
	[ -n "$ADDR" ] || die "$name: no listening address in its log"
	printf '%-8s %s -c %s  (pid %d) listening on %s\n' "$name" "$bin" \
		"${ini#"$DIR"/}" "${PIDS[-1]}" "$ADDR"
}

# ---- identities --------------------------------------------------------------

say "making identities with upseal-certs (in $DIR/ids)"
for who in server client intruder; do
	pin=$("$BIN/upseal-certs" new "$who" --dir "$DIR/ids" 2>>"$DIR/certs.log") ||
		{ cat "$DIR/certs.log" >&2; die "upseal-certs new $who failed"; }
	printf -v "PIN_${who^^}" '%s' "$pin"
	printf '%-8s %s\n' "$who" "$pin"
done

# ---- the backend ---------------------------------------------------------------

say "starting a demo backend on 127.0.0.1 (python3 -m http.server)"
mkdir "$DIR/www"
cat >"$DIR/www/index.html" <<'EOF'
<h1>hello from the backend</h1>
<p>This page came through upseal: curl -&gt; upseal-client
=mTLS, pinned=&gt; upseal-server -&gt; backend.</p>
EOF
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$DIR/www" \
	>"$DIR/backend.log" 2>&1 &
PIDS+=($!)
wait_for "$DIR/backend.log" 'port [0-9]+' $! "backend"
BACKEND_PORT=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$DIR/backend.log" | head -n 1)
printf '%-8s python3 -m http.server  (pid %d) listening on 127.0.0.1:%s\n' \
	backend "${PIDS[-1]}" "$BACKEND_PORT"

# ---- the pair ----------------------------------------------------------------------

say "writing server.ini and client.ini, starting upseal-server then upseal-client"
cat >"$DIR/server.ini" <<EOF
[upseal]
log_level = info
drain_timeout = 2s

[demo]
listen  = 127.0.0.1:0                 ; the TLS port (port 0: any free port)
connect = 127.0.0.1:$BACKEND_PORT     ; the backend, on loopback
cert    = $DIR/ids/server.crt
key     = $DIR/ids/server.key
pin     = $PIN_CLIENT   ; the client sidecar allowed in
EOF
start_sidecar server upseal-server "$DIR/server.ini"
SERVER_ADDR=$ADDR

# client_ini NAME: a client config that presents identity NAME.
client_ini() {
	cat >"$DIR/$1.ini" <<EOF
[upseal]
log_level = info
drain_timeout = 2s

[demo]
listen  = 127.0.0.1:0                 ; plaintext, for curl (or nginx)
connect = $SERVER_ADDR              ; upseal-server's TLS port
cert    = $DIR/ids/$1.crt
key     = $DIR/ids/$1.key
pin     = $PIN_SERVER   ; the server sidecar we expect
EOF
}
client_ini client
start_sidecar client upseal-client "$DIR/client.ini"
CLIENT_ADDR=$ADDR

# ---- a request through the tunnel ----------------------------------------------------

say "curl -sS http://$CLIENT_ADDR/"
PAGE=$(curl -sS --max-time 10 "http://$CLIENT_ADDR/" || true)
printf '%s\n' "$PAGE"
OK=0
if grep -q 'came through upseal' <<<"$PAGE"; then
	OK=1
fi

# conn_end_lines LOG: wait (bounded) for a conn_end line and print it.
conn_end_lines() {
	local i
	for ((i = 0; i < 50; i++)); do
		grep -q 'event=conn_end' "$1" && break
		sleep 0.1
	done
	grep 'event=conn_end' "$1" || echo "(no conn_end line)"
}

say "conn_end, as logged by each sidecar"
echo "client: $(conn_end_lines "$DIR/client.log")"
echo "server: $(conn_end_lines "$DIR/server.log")"
echo "backend: $(grep -c '"GET ' "$DIR/backend.log") request(s) seen"

# ---- an intruder: a valid certificate, but not a pinned key --------------------------

say "an intruder: a client sidecar holding a key the server does not pin"
client_ini intruder
start_sidecar intruder upseal-client "$DIR/intruder.ini"
INTRUDER_ADDR=$ADDR
BEFORE=$(grep -c '"GET ' "$DIR/backend.log" || true)
echo "\$ curl -sS http://$INTRUDER_ADDR/"
REFUSED=0
if OUT=$(curl -sS --max-time 10 "http://$INTRUDER_ADDR/" 2>&1); then
	printf '%s\n' "$OUT"
	echo "demo: the intruder's request got an answer"
else
	printf '%s\n' "$OUT"
	REFUSED=1
fi
for ((i = 0; i < 50; i++)); do
	grep -q 'reason=pin_mismatch' "$DIR/server.log" && break
	sleep 0.1
done
echo "server: $(grep 'event=handshake_failed' "$DIR/server.log" ||
	echo '(no handshake_failed line)')"
echo "intruder: $(grep -E 'event=(handshake_failed|conn_end)' \
	"$DIR/intruder.log" | tail -n 1)"
AFTER=$(grep -c '"GET ' "$DIR/backend.log" || true)
echo "backend: $((AFTER - BEFORE)) new request(s) seen"
if ! grep -q 'reason=pin_mismatch' "$DIR/server.log" || [ "$AFTER" != "$BEFORE" ]; then
	REFUSED=0
fi

# ---- stop -------------------------------------------------------------------------------

say "stopping (SIGTERM: stop accepting, drain, exit 0)"
# PIDS: backend, server, client, intruder, in that order.
NAMES=(backend server client intruder)
STOP_OK=1
for pid in "${PIDS[@]}"; do
	kill -TERM "$pid" 2>/dev/null || true
done
for i in "${!PIDS[@]}"; do
	rc=0
	wait "${PIDS[$i]}" 2>/dev/null || rc=$?
	name=${NAMES[$i]}
	[ "$name" = backend ] && continue
	echo "$name: exit $rc; $(grep -h 'event=stopped' "$DIR/$name.log" ||
		echo '(no stopped line)')"
	[ "$rc" -eq 0 ] || STOP_OK=0
done
PIDS=()

echo
if [ "$OK" -ne 1 ]; then
	die "the request did not come through the tunnel"
fi
if [ "$REFUSED" -ne 1 ]; then
	die "the intruder was not refused as expected"
fi
if [ "$STOP_OK" -ne 1 ]; then
	die "a sidecar did not exit 0 after SIGTERM"
fi
echo "demo: ok: the request crossed the tunnel, and the intruder was refused in the handshake"
