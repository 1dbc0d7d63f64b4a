#!/usr/bin/env bash
# Build the previous released version of upseal, the commit named in
# tests/prev-version, into build-prev/ (or DIR), for the upgrade tests
# (tests/integration/test_upgrade.py, run when UPSEAL_PREV_BUILD=DIR).
#
#   tests/prev-build.sh [DIR]
#
# The tree comes from `git archive` of that commit (the working tree is not
# touched) and is built with a plain `make` of the two daemons. A DIR that
# already holds that commit's build is kept. Without the git history (no
# .git, or a shallow clone that lacks the commit) it prints why and exits 0
# having built nothing: the upgrade tests then skip and say so.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-build-prev}")
REV=$(tr -d '[:space:]' < tests/prev-version)

if ! git rev-parse -q --verify "$REV^{commit}" >/dev/null 2>&1; then
	echo "prev-build: skipped: commit $REV (tests/prev-version) is not in this checkout's git history"
	exit 0
fi
if [ -x "$OUT/upseal-server" ] && [ -x "$OUT/upseal-client" ] &&
    [ "$(cat "$OUT/prev-version" 2>/dev/null)" = "$REV" ]; then
	echo "prev-build: $OUT already holds $REV"
	exit 0
fi
SRC=$(mktemp -d /tmp/upseal-prev-XXXXXX)
trap 'rm -rf "$SRC"' EXIT
git archive "$REV" | tar -x -C "$SRC"
rm -rf "$OUT"
mkdir -p "$OUT"
echo "prev-build: building $REV into $OUT"
make -C "$SRC" -j"${JOBS:-2}" BUILD="$OUT" "$OUT/upseal-server" \
	"$OUT/upseal-client" >"$OUT/build.log" 2>&1 ||
	{ tail -n 30 "$OUT/build.log"; echo "prev-build: build failed" >&2; exit 1; }
echo "$REV" > "$OUT/prev-version"
echo "prev-build: done: UPSEAL_PREV_BUILD=$OUT"
