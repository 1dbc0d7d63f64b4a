#!/usr/bin/env bash
# tests/valgrind.sh BUILD: a memcheck pass over a few quick integration
# tests, with every daemon they start run under valgrind (the harness puts
# $UPSEAL_WRAP before each daemon). A test passes when the integration test
# itself passes (a daemon that valgrind ends with status 99 fails it) AND
# every valgrind log it left shows no error, no definitely lost block and no
# descriptor left open at exit beyond stdin/stdout/stderr.
# Ends with `valgrind: N passed, M failed`.
set -uo pipefail

cd "$(dirname "$0")/.."
BUILD=${1:-build}
TESTS=${VALGRIND_TESTS:-"data.half_close_client_first
reject.wrong_client_pin_server_refuses
reject.no_client_certificate
lifecycle.idle_timeout
lifecycle.backend_refused_then_back
workers.drain_covers_every_worker
pool.request_served_by_pooled_connection"}

if ! command -v valgrind >/dev/null; then
	echo "valgrind is not installed (tests/deps.sh installs it)"
	echo "valgrind: 0 passed, 1 failed"
	exit 1
fi
VG=$(mktemp -d /tmp/upseal-valgrind-XXXXXX)
trap 'rm -rf "$VG"' EXIT
passed=0
failed=0

for t in $TESTS; do
	logs="$VG/$t"
	mkdir -p "$logs"
	# UPSEAL_SAN=1: the harness's longer limits and smaller sizes.
	UPSEAL_SAN=1 UPSEAL_WRAP="valgrind --quiet --error-exitcode=99 \
--leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
--track-fds=yes --log-file=$logs/vg.%p.log" \
		timeout 600 python3 tests/integration/run.py --build "$BUILD" \
		-k "$t" >"$logs/run.out" 2>&1
	rc=$?
	problems=""
	if [ "$rc" -ne 0 ] || ! grep -q "^ok $t" "$logs/run.out"; then
		problems="integration test failed (exit $rc)"
	fi
	n=0
	for f in "$logs"/vg.*.log; do
		[ -e "$f" ] || continue
		n=$((n + 1))
		if grep -qE "ERROR SUMMARY: [1-9]|definitely lost: [1-9]" "$f"; then
			problems="$problems; errors in $(basename "$f")"
		fi
		# valgrind --track-fds=yes lists what is open at exit; stdin,
		# stdout, stderr and valgrind's own log file are expected.
		leaked=$(grep -E "Open (file descriptor|AF_[A-Z0-9]+ socket) [0-9]+" "$f" |
			grep -vF "$f" | grep -vE "(descriptor|socket) [012]:" | wc -l)
		if [ "$leaked" -gt 0 ]; then
			problems="$problems; $(basename "$f"): $leaked descriptor(s) left open at exit"
		fi
	done
	if [ "$n" -eq 0 ]; then
		problems="$problems; no valgrind log (did UPSEAL_WRAP reach the daemons?)"
	fi
	if [ -z "$problems" ]; then
		passed=$((passed + 1))
		echo "ok $t ($n daemon(s) under valgrind: clean)"
	else
		failed=$((failed + 1))
		echo "not ok $t: ${problems#; }"
		grep -vE "^(ok|#)" "$logs/run.out" | head -n 40 | sed 's/^/  | /'
		for f in "$logs"/vg.*.log; do
			[ -s "$f" ] || continue
			echo "  --- $(basename "$f")"
			head -n 60 "$f" | sed 's/^/  | /'
		done
	fi
done
echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
