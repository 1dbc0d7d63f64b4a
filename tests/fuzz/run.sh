#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS]: build the libFuzzer targets (make fuzz-build,
# into build-fuzz/), then for each target: replay every input kept in
# tests/fuzz/regressions/TARGET/ (each must run clean), then fuzz for SECONDS
# (default 20) from the seed corpus tests/fuzz/corpus/TARGET/. New corpus
# entries go to a temp dir, never into the repository. A crash fails the
# target; its input is copied to tests/fuzz/regressions/TARGET/ so that it is
# kept (commit it) and replayed from then on.
# Ends with `fuzz: N passed, M failed` (one per target).
# Environment: FUZZ_NO_BUILD=1 (targets already built), FUZZ_TARGETS.
set -uo pipefail

cd "$(dirname "$0")/../.."
SECS=${1:-20}
TARGETS=${FUZZ_TARGETS:-"config pin pinfile addr tls_server pool proxy"}
BIN=build-fuzz
WORK=$(mktemp -d /tmp/upseal-fuzz-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
	echo "# make fuzz-build"
	if ! make -s -j"${JOBS:-2}" fuzz-build >"$WORK/build.log" 2>&1; then
		tail -n 40 "$WORK/build.log"
		n=$(wc -w <<<"$TARGETS")
		echo "fuzz: 0 passed, $n failed"
		exit 1
	fi
fi

export ASAN_OPTIONS=${FUZZ_ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

for t in $TARGETS; do
	exe="$BIN/fuzz_$t"
	if [ ! -x "$exe" ]; then
		echo "not ok $t: $exe not built"
		failed=$((failed + 1))
		continue
	fi
	reg="tests/fuzz/regressions/$t"
	ok=1
	nreg=0
	if [ -d "$reg" ] && [ -n "$(ls -A "$reg" 2>/dev/null)" ]; then
		nreg=$(ls -A "$reg" | wc -l)
		if ! timeout 120 "$exe" -runs=1 "$reg"/* >"$WORK/$t.replay.log" 2>&1; then
			echo "not ok $t: a regression input fails again"
			tail -n 40 "$WORK/$t.replay.log" | sed 's/^/  | /'
			ok=0
		fi
	fi
	mkdir -p "$WORK/corpus-$t" "$WORK/art-$t"
	seeds="tests/fuzz/corpus/$t"
	[ -d "$seeds" ] || seeds=""
	timeout $((SECS + 120)) "$exe" -max_total_time="$SECS" -timeout=10 \
		-rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
		-artifact_prefix="$WORK/art-$t/" "$WORK/corpus-$t" $seeds \
		>"$WORK/$t.log" 2>&1
	rc=$?
	execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$WORK/$t.log" | tail -n 1)
	cov=$(grep -oE 'cov: [0-9]+' "$WORK/$t.log" | tail -n 1)
	crashes=$(ls -A "$WORK/art-$t" 2>/dev/null)
	if [ "$rc" -ne 0 ] || [ -n "$crashes" ]; then
		ok=0
		echo "not ok $t: libFuzzer exit $rc"
		grep -E 'ERROR|SUMMARY|runtime error|==[0-9]+==' "$WORK/$t.log" | head -n 20 | sed 's/^/  | /'
		if [ -n "$crashes" ]; then
			mkdir -p "$reg"
			for c in "$WORK/art-$t"/*; do
				cp "$c" "$reg/"
				echo "  kept $reg/$(basename "$c"): commit it (replayed from now on)"
			done
		fi
	fi
	if [ "$ok" -eq 1 ]; then
		passed=$((passed + 1))
		echo "ok $t (${SECS}s, ${execs:-?} execs, ${cov:-cov: ?}, $nreg regression input(s) replayed)"
	else
		failed=$((failed + 1))
	fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
