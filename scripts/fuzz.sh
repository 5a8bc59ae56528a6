#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, and stops
# at the first failure. Each target first runs its seed corpus (the f.Add
# seeds and testdata/fuzz/<FuzzName>/ in its package), which plain
# `go test` also runs.
#
# Usage: FUZZTIME=1m scripts/fuzz.sh [FuzzName...]
#
# FUZZTIME is go test's -fuzztime (default 20s per target). With names,
# only those targets run. A failing input is saved by go test under
# <package>/testdata/fuzz/<FuzzName>/; commit it once fixed, so that it
# stays a test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZTIME="${FUZZTIME:-20s}"

# targets lists "package target" pairs.
targets=(
	"./caddyauth/ FuzzParseAuthorization"
	"./caddyauth/ FuzzCaddyfile"
	"./tokenstore/ FuzzPlausibleSecret"
	"./tokenstore/ FuzzChecksum"
	"./tokenstore/ FuzzParseHash"
	"./tokenstore/ FuzzDecodeDocument"
	"./tokenstore/ FuzzTokenPrepare"
	"./admin/ FuzzAdminBodies"
)

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

for entry in "${targets[@]}"; do
	read -r pkg name <<<"$entry"
	if [ "$#" -gt 0 ] && [[ " $* " != *" $name "* ]]; then
		continue
	fi
	printf '\n==> [%ds] %s %s for %s\n' "$SECONDS" "$pkg" "$name" "$FUZZTIME"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1 | tee "$log"; then
		echo
		echo "scripts/fuzz.sh: $name in $pkg failed after ${SECONDS}s" >&2
		if crasher="$(grep -o "testdata/fuzz/${name}/[0-9a-f]*" "$log" | head -n 1)" && [ -n "$crasher" ]; then
			echo "scripts/fuzz.sh: failing input saved to ${pkg%/}/${crasher#./}" >&2
			echo "scripts/fuzz.sh: reproduce with: go test -run '^${name}\$/$(basename "$crasher")\$' $pkg" >&2
		fi
		exit 1
	fi
done
printf '\n==> [%ds] every fuzz target passed\n' "$SECONDS"
