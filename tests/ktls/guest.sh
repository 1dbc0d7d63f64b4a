#!/bin/sh
# The kTLS tests, run inside the QEMU guest by /init (busybox sh), as root,
# on loopback. run.sh built the guest: /t holds upseal's binaries (/t/28:
# mbedTLS 2.28; /t/36: mbedTLS 3.6, when built), kt, the identities and
# the modules to load. Each check prints "KT ok NAME" or "KT not ok NAME:
# why"; the last line is "KT done".
#
# Order: first without the tls module (the userspace path must carry the
# same streams), then with it (kTLS on both sides, on one side only, each
# suite, half-close each way, close_notify, a reset, the pool, a resumed
# handshake, a reload during a stream, TLS 1.3 on the 3.6 build).

T=/t
R=/tmp/run
SPORT=7443
CPORT=7001
BPORT=8080
CSTAT=9180
SSTAT=9181
MIB=1048576
BULK=$((4 * MIB))

PASSED=0
FAILED=0

ok() { PASSED=$((PASSED + 1)); echo "KT ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "KT not ok $1: $2"; }

# Wait (bounded) until file $1 has a line matching $2.
wait_for() {
	i=0
	while [ $i -lt 300 ]; do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

stat_of() {	# a /proc/net/tls_stat counter, 0 when there is none
	v=$(awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null)
	echo "${v:-0}"
}

metric() {	# metric PORT 'NAME{labels}': its value, or 0
	wget -q -O - "http://127.0.0.1:$1/metrics" 2>/dev/null |
		awk -v k="$2" 'index($0, k " ") == 1 { print $2 }' | head -n 1 |
		grep . || echo 0
}

# ini ROLE EXTRA: write $R/ROLE.ini with the tunnel "t" and EXTRA keys.
ini() {
	role=$1
	shift
	if [ "$role" = server ]; then
		listen=127.0.0.1:$SPORT connect=127.0.0.1:$BPORT
		status=127.0.0.1:$SSTAT id=srv pin=$(cat $T/ids/cli.pin)
	else
		listen=127.0.0.1:$CPORT connect=127.0.0.1:${CCONNECT:-$SPORT}
		status=127.0.0.1:$CSTAT id=cli pin=$(cat $T/ids/srv.pin)
	fi
	{
		printf '[upseal]\nlog_level = debug\nstatus = %s\nworkers = 1\n' \
			"$status"
		printf 'watch = no\n\n[t]\nlisten = %s\nconnect = %s\n' \
			"$listen" "$connect"
		printf 'cert = %s/ids/%s.crt\nkey = %s/ids/%s.key\npin = %s\n' \
			"$T" "$id" "$T" "$id" "$pin"
		for kv in "$@"; do
			printf '%s\n' "$kv"
		done
	} >"$R/$role.ini"
}

SPID=
CPID=
BEPID=

stop_pair() {
	for p in $CPID $SPID; do
		kill "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	CPID=
	SPID=
	cat "$R/server.log" "$R/client.log" >>"$R/all.log" 2>/dev/null
}

# start_pair BUILD_S BUILD_C: start the sidecars on $R/*.ini; 0 when ready.
start_pair() {
	: >"$R/server.log"
	: >"$R/client.log"
	"$T/$1/upseal-server" -c "$R/server.ini" 2>"$R/server.log" &
	SPID=$!
	"$T/$2/upseal-client" -c "$R/client.ini" 2>"$R/client.log" &
	CPID=$!
	wait_for "$R/server.log" 'event=ready' &&
		wait_for "$R/client.log" 'event=ready'
}

# kt_run NAME MODE N M: one connection through the pair, byte-exact both
# ways, and the backend's verdict on what it received.
kt_run() {
	lines=$(grep -c . "$R/backend.log")
	out=$("$T/kt" client $CPORT "$2" "$3" "$4" 2>&1)
	rc=$?
	if [ $rc -ne 0 ]; then
		bad "$1" "client: $out"
		return 1
	fi
	[ "$2" = R ] && { ok "$1"; return 0; }
	i=0
	while [ "$(grep -c . "$R/backend.log")" -le "$lines" ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	verdict=$(tail -n 1 "$R/backend.log")
	case "$verdict" in
	"ok $2 "*) ok "$1" ;;
	*) bad "$1" "backend: $verdict"; return 1 ;;
	esac
}

# Both sidecars ended the last connection with reason $1 (wait for it).
ends_with() {
	if wait_for "$R/server.log" "event=conn_end.*reason=$1" &&
		wait_for "$R/client.log" "event=conn_end.*reason=$1"; then
		ok "$2"
	else
		bad "$2" "$(grep -h conn_end "$R/server.log" "$R/client.log" | tail -n 2)"
	fi
}

# tls_delta NAME TX RX: /proc/net/tls_stat moved by TX and RX since mark.
mark() { TX0=$(stat_of TlsTxSw); RX0=$(stat_of TlsRxSw); }
tls_delta() {
	tx=$(($(stat_of TlsTxSw) - TX0))
	rx=$(($(stat_of TlsRxSw) - RX0))
	if [ "$tx" -eq "$2" ] && [ "$rx" -eq "$3" ]; then
		ok "$1"
	else
		bad "$1" "TlsTxSw +$tx TlsRxSw +$rx, expected +$2 +$3"
		grep -h 'ktls' "$R/server.log" "$R/client.log" | tail -n 4 |
			sed 's/^/KT info /'
	fi
}

log_has() {	# log_has NAME FILE PATTERN
	if grep -q "$3" "$2"; then ok "$1"; else bad "$1" "no '$3' in $2"; fi
}

# One suite, both sides auto: bulk each way, echo, half-close each way.
suite_run() {	# suite_run TAG CIPHER BUILD_S BUILD_C TX RX
	ini server "ciphers = $2"
	ini client "ciphers = $2"
	if ! start_pair "$3" "$4"; then
		bad "$1.start" "$(tail -n 3 "$R/server.log" "$R/client.log")"
		stop_pair
		return
	fi
	mark
	kt_run "$1.up_then_down_client_fin_first" U $BULK $BULK
	ends_with closed "$1.close_notify_both_ends_closed"
	kt_run "$1.down_then_up_backend_fin_first" D $BULK $BULK
	kt_run "$1.echo_both_ways_at_once" E $BULK 0
	tls_delta "$1.tls_stat" $((3 * $5)) $((3 * $6))
	stop_pair
}

mkdir -p $R
"$T/kt" backend $BPORT >"$R/backend.log" 2>&1 &
BEPID=$!
wait_for "$R/backend.log" ready || bad backend "did not start"

# ---- without the tls module: the userspace path, and the one line ----
if [ "$(stat_of TlsTxSw)" = 0 ] && [ ! -e /proc/net/tls_stat ]; then
	ini server
	ini client
	if start_pair 28 28; then
		kt_run notls.up_then_down U $BULK $BULK
		kt_run notls.down_then_up D $BULK $BULK
		kt_run notls.echo E $BULK 0
		log_has notls.default_suite_chacha20 "$R/client.log" \
			'event=handshake_done.*suite=TLS-ECDHE-ECDSA-WITH-CHACHA20'
		log_has notls.tunnel_says_why "$R/client.log" \
			'event=ktls tunnel=t ktls=off why="the kernel has no TLS ULP'
		v=$(metric $CSTAT 'upseal_ktls_connections_total{tunnel="t",direction="tx"}')
		[ "$v" = 0 ] && ok notls.metric_zero || bad notls.metric_zero "$v"
	else
		bad notls.start "$(tail -n 3 "$R/server.log" "$R/client.log")"
	fi
	stop_pair
else
	bad notls.setup "/proc/net/tls_stat exists before tls is loaded"
fi

# ---- with it ----
for m in $(cat $T/modules.order); do
	insmod "$T/modules/$m" 2>/dev/null
done
if [ ! -e /proc/net/tls_stat ]; then
	bad ktls.module "tls did not load"
	echo "KT done"
	return 0 2>/dev/null || exit 0
fi

suite_run aes128 ECDHE-ECDSA-AES128-GCM-SHA256 28 28 2 2
log_has aes128.tunnel_line "$R/client.log" 'event=ktls tunnel=t ktls=on'
for d in tx rx; do
	n=$(grep -c "event=ktls_switched.*direction=$d bytes=splice" \
		"$R/client.log" "$R/server.log" | awk -F: '{ s += $2 } END { print s }')
	[ "$n" -eq 6 ] && ok "aes128.splice_$d" || bad "aes128.splice_$d" \
		"$n of 6 switched to splice"
done
suite_run aes256 ECDHE-ECDSA-AES256-GCM-SHA384 28 28 2 2
suite_run chacha ECDHE-ECDSA-CHACHA20-POLY1305 28 28 2 2

# One side only: the other keeps mbedTLS records; both directions each.
ini server "ktls = off"
ini client
start_pair 28 28 || bad oneside.start "$(tail -n 3 "$R/server.log")"
mark
kt_run oneside_client.up_then_down U $BULK $BULK
kt_run oneside_client.down_then_up D $BULK $BULK
tls_delta oneside_client.tls_stat 2 2
log_has oneside_client.server_says_off "$R/server.log" \
	'event=ktls tunnel=t ktls=off why="ktls = off"'
v=$(metric $CSTAT 'upseal_ktls_connections_total{tunnel="t",direction="rx"}')
[ "$v" = 2 ] && ok oneside_client.metric_rx || bad oneside_client.metric_rx "$v"
v=$(metric $SSTAT 'upseal_ktls_connections_total{tunnel="t",direction="tx"}')
[ "$v" = 0 ] && ok oneside_client.server_metric_zero ||
	bad oneside_client.server_metric_zero "$v"
stop_pair

ini server
ini client "ktls = off"
start_pair 28 28 || bad oneside.start "$(tail -n 3 "$R/client.log")"
mark
kt_run oneside_server.up_then_down U $BULK $BULK
kt_run oneside_server.echo E $BULK 0
tls_delta oneside_server.tls_stat 2 2

# A reset from the backend crosses as a reset (no close_notify).
kt_run reset.backend_rst_reaches_client R 0 $MIB
if wait_for "$R/server.log" 'event=conn_end.*reason=plain_reset' &&
	wait_for "$R/client.log" 'event=conn_end.*reason=truncated'; then
	ok reset.reasons
else
	bad reset.reasons "$(grep -h conn_end "$R/server.log" "$R/client.log" | tail -n 2)"
fi
stop_pair

# A record that fails its check after the switch: the same end as on
# mbedTLS (bad_record), with kTLS on the receiving side and without it.
FPORT=7444
for mode in auto off; do
	"$T/kt" flip $FPORT $SPORT $((2 * MIB)) >"$R/flip.log" 2>&1 &
	FLPID=$!
	wait_for "$R/flip.log" ready
	CCONNECT=$FPORT ini client "ktls = $mode"
	ini server
	start_pair 28 28 || bad "badrecord_$mode.start" "$(tail -n 3 "$R/client.log")"
	de=$(stat_of TlsDecryptError)
	out=$("$T/kt" client $CPORT D 0 $BULK 2>&1)
	if wait_for "$R/client.log" 'event=conn_end.*reason=bad_record'; then
		ok "badrecord_$mode.client_ends_bad_record"
	else
		bad "badrecord_$mode.client_ends_bad_record" \
			"$out / $(grep -h conn_end "$R/client.log" | tail -n 1)"
	fi
	de=$(($(stat_of TlsDecryptError) - de))
	want=1
	[ $mode = off ] && want=0
	[ $de -eq $want ] && ok "badrecord_$mode.kernel_decrypt_errors_$want" ||
		bad "badrecord_$mode.kernel_decrypt_errors_$want" "TlsDecryptError +$de"
	case "$out" in
	"ok "*) bad "badrecord_$mode.proxy_sees_a_cut" "$out" ;;
	*) ok "badrecord_$mode.proxy_sees_a_cut" ;;
	esac
	kill $FLPID 2>/dev/null
	wait $FLPID 2>/dev/null
	stop_pair
done

# Resumption, the pool's handoff and a reload during a stream.
ini server
ini client "pool = 2"
start_pair 28 28 || bad pool.start "$(tail -n 3 "$R/client.log")"
wait_for "$R/client.log" 'event=pool_' >/dev/null
i=0
while [ "$(metric $CSTAT 'upseal_pool_ready{tunnel="t"}')" -lt 2 ] &&
	[ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mark
kt_run pool.handoff_up_then_down U $BULK $BULK
kt_run pool.handoff_echo E $BULK 0
tls_delta pool.tls_stat 4 4
log_has default_suite.aes128gcm_with_ktls "$R/client.log" \
	'event=handshake_done.*suite=TLS-ECDHE-ECDSA-WITH-AES-128-GCM'
v=$(metric $CSTAT 'upseal_pool_handoffs_total{tunnel="t"}')
[ "$v" -ge 2 ] && ok pool.handed_off || bad pool.handed_off "handoffs $v"
v=$(metric $CSTAT 'upseal_handshakes_total{tunnel="t",kind="resumed"}')
[ "$v" -ge 1 ] && ok resumed.handshakes || bad resumed.handshakes "resumed $v"
mark
"$T/kt" client $CPORT E $((16 * MIB)) 0 >"$R/reload.out" 2>&1 &
KPID=$!
sleep 1
kill -HUP "$SPID" "$CPID"
wait "$KPID"
rc=$?
if [ $rc -eq 0 ] && grep -q '^ok E' "$R/reload.out"; then
	ok reload.stream_survives
else
	bad reload.stream_survives "$(cat "$R/reload.out")"
fi
log_has reload.server_reloaded "$R/server.log" 'event=reloaded'
tls_delta reload.tls_stat 2 2
stop_pair

# TLS 1.3 (and TLS 1.2 through 3.6's master-secret export) on the 3.6 build.
if [ -x "$T/36/upseal-server" ]; then
	suite_run tls13_aes128 ECDHE-ECDSA-AES128-GCM-SHA256 36 36 2 2
	log_has tls13.version "$R/client.log" 'version=TLSv1.3'
	suite_run tls13_chacha ECDHE-ECDSA-CHACHA20-POLY1305 36 36 2 2
	suite_run tls12_on_36_client ECDHE-ECDSA-AES256-GCM-SHA384 28 36 2 2
	log_has tls12_on_36_client.version "$R/client.log" 'version=TLSv1.2'
else
	echo "KT skip tls13: no mbedTLS 3.6 build (tests/mbedtls36.sh makes one)"
fi

# Not a check (it depends on timing): how many RX switches had plaintext
# left in mbedTLS, and how many completed a record read in part.
rxs=$(grep -c 'event=ktls_switched.*direction=rx' "$R/all.log")
echo "KT info of $rxs RX switches, $(grep 'event=ktls_switched.*direction=rx' \
	"$R/all.log" | grep -vc 'mbedtls_bytes=0 ') had plaintext left in" \
	"mbedTLS, $(grep 'event=ktls_switched.*direction=rx' "$R/all.log" |
	grep -vc 'exact_read=0$') completed a record by an exact read"
kill $BEPID 2>/dev/null
echo "KT result $PASSED passed, $FAILED failed"
echo "KT done"
