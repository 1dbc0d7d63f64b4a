#!/usr/bin/env bash
# The pictures in docs/ are drawn from the Graphviz sources beside them:
# render each docs/*.dot again and require the committed .svg to be exactly
# that rendering (so a changed source without `make docs` fails here).
# Ends with `docs: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0
fail=0
tmp=$(mktemp -d /tmp/upseal-docs-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if ! command -v dot >/dev/null; then
	echo "not ok docs: Graphviz (dot) is not installed (tests/deps.sh installs it)"
	echo "docs: 0 passed, 1 failed"
	exit 1
fi
for src in docs/*.dot; do
	svg=${src%.dot}.svg
	if ! dot -Tsvg -o "$tmp/out.svg" "$src" 2>"$tmp/err"; then
		echo "not ok $src: dot failed: $(cat "$tmp/err")"
		fail=$((fail + 1))
	elif ! cmp -s "$tmp/out.svg" "$svg"; then
		echo "not ok $src: $svg is not what it draws: run make docs and commit $svg"
		fail=$((fail + 1))
	else
		echo "ok $src -> $svg"
		pass=$((pass + 1))
	fi
done
echo "docs: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
