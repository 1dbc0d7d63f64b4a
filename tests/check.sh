#!/usr/bin/env bash
# upseal's whole test run: install what is missing, build, run the unit,
# certs and integration tests, then the same against an ASan+UBSan build,
# then fuzzing, valgrind and the container examples (tests/containers.sh).
# Ends with one line `total: N passed, M failed`; exits non-zero if any
# test failed, any build failed or any runner crashed.
set -uo pipefail

cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
PASSED=0
FAILED=0
T0=$(date +%s)
OUT=$(mktemp -d /tmp/upseal-check-XXXXXX)
trap 'rm -rf "$OUT"' EXIT

# run LABEL CMD...: run one runner, show its output, add its summary line
# (`N passed, M failed`, optionally followed by `, K skipped`).
run() {
	local label=$1
	shift
	local log="$OUT/$label.log" t=$(date +%s)
	local sum='(^|[^0-9])([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?$'
	echo "=== $label: $*"
	"$@" 2>&1 | tee "$log"
	local rc=${PIPESTATUS[0]}
	local line
	line=$(grep -E "$sum" "$log" | tail -n 1)
	if [ -z "$line" ]; then
		echo "=== $label: no summary line (exit $rc): counted as 1 failure"
		FAILED=$((FAILED + 1))
		return
	fi
	local p f k
	p=$(sed -E "s/.*$sum/\2/" <<<"$line")
	f=$(sed -E "s/.*$sum/\3/" <<<"$line")
	k=$(sed -E "s/.*$sum/\5/" <<<"$line")
	k=${k:-0}
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
	SKIPPED=$((${SKIPPED:-0} + k))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "=== $label: exit $rc with 0 failures reported: counted as 1 failure"
		FAILED=$((FAILED + 1))
	fi
	echo "=== $label: $p passed, $f failed$([ "$k" -gt 0 ] && echo ", $k skipped"), exit $rc, $(($(date +%s) - t))s"
}

# suite DIR: the three runners against one build dir.
suite() {
	local dir=$1 tag=$2
	run "unit$tag" "$dir/unit-tests"
	run "certs$tag" tests/integration/certs_test.sh "$dir"
	run "integration$tag" python3 tests/integration/run.py --build "$dir"
}

if ! ./tests/deps.sh; then
	echo "=== deps.sh failed"
	echo "total: $PASSED passed, 1 failed"
	exit 1
fi

# The previous released version (tests/prev-version), for the upgrade
# tests: test_upgrade.py runs it against this one in both roles.
echo "=== tests/prev-build.sh build-prev"
if ./tests/prev-build.sh build-prev; then
	if [ -x build-prev/upseal-server ] && [ -x build-prev/upseal-client ]; then
		export UPSEAL_PREV_BUILD=$PWD/build-prev
	fi
else
	echo "=== prev-build failed: counted as 1 failure"
	FAILED=$((FAILED + 1))
fi

echo "=== make -j$JOBS"
if make -j"$JOBS"; then
	suite build ""
else
	echo "=== build failed: counted as 1 failure"
	FAILED=$((FAILED + 1))
fi

echo "=== make -j$JOBS SAN=1"
if make -j"$JOBS" SAN=1; then
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	export UPSEAL_SAN=1
	suite build-asan "-asan"
	unset UPSEAL_SAN
else
	echo "=== sanitizer build failed: counted as 1 failure"
	FAILED=$((FAILED + 1))
fi

# Fuzzing (libFuzzer, clang; builds build-fuzz/) briefly, then a valgrind
# memcheck pass over a few integration tests against the plain build.
run docs tests/docs.sh
run fuzz tests/fuzz/run.sh "${FUZZ_SECONDS:-15}"
run valgrind tests/valgrind.sh build

# Kernel TLS (issue 14) in a QEMU guest with Debian's stock kernel, whose
# tls module this machine's kernel may lack: the plain build, TLS 1.2
# (tests/mbedtls36.sh's build adds TLS 1.3 when it exists: .ci/run runs
# this again after it).
run ktls tests/ktls/run.sh build

# Last: the Dockerfile's image built with podman on a debootstrap base, the
# two-host scenario in pods, examples/compose.yaml and examples/k8s run
# (prints a skip line where podman cannot run).
run containers tests/containers.sh

echo "=== check took $(($(date +%s) - T0))s"
echo "total: $PASSED passed, $FAILED failed$([ "${SKIPPED:-0}" -gt 0 ] && echo ", $SKIPPED skipped")"
[ "$FAILED" -eq 0 ]
