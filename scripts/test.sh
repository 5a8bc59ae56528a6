#!/usr/bin/env bash
# Runs the whole test suite: formatting, go vet, a real Caddy binary built
# with the plugin, and every package's tests with the race detector.
#
# Usage: scripts/test.sh
#
# Needs Go (the version in go.mod) and, for -race, a C compiler (gcc; the
# official Go images have one). On a fresh Debian/Ubuntu machine it
# installs what else is missing with apt-get (as root, or through sudo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# section prints a step's header, with the seconds spent so far.
section() {
	printf '\n==> [%ds] %s\n' "$SECONDS" "$*"
}

# as_root and apt_install.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# cleanup runs on exit, however the script ends: it removes the Caddy binary's
# directory and stops the PostgreSQL cluster that this script started.
bin_dir=""
pg_dir=""
cleanup() {
	if [ -n "$pg_dir" ]; then
		./scripts/pg-test-cluster.sh stop "$pg_dir" || true
	fi
	if [ -n "$bin_dir" ]; then
		rm -rf "$bin_dir"
	fi
}
trap cleanup EXIT

section "Tools"
if ! command -v go >/dev/null 2>&1; then
	echo "scripts/test.sh: go is not on PATH; install Go (see go.mod for the version)" >&2
	exit 1
fi
go version
if ! command -v curl >/dev/null 2>&1; then
	section "Installing curl (the binary test sends its requests with it)"
	apt_install curl
fi
curl --version | sed -n 1p # sed reads it all: no SIGPIPE under pipefail
if ! command -v "$(go env CC)" >/dev/null 2>&1; then
	section "Installing a C compiler (go test -race needs cgo)"
	apt_install gcc libc6-dev
fi

# The PostgreSQL store's tests (internal/testdb) read APITOKEN_TEST_PG_DSN and
# fail, never skip, without it. A developer who exported one keeps it; else
# scripts/pg-test-cluster.sh installs Debian's postgresql when it is missing
# and starts a throwaway cluster on 127.0.0.1, which cleanup stops.
if [ -n "${APITOKEN_TEST_PG_DSN:-}" ]; then
	section "PostgreSQL: using APITOKEN_TEST_PG_DSN from the environment"
else
	section "PostgreSQL: starting a throwaway cluster (scripts/pg-test-cluster.sh)"
	pg_out=$(./scripts/pg-test-cluster.sh)
	pg_dir=$(sed -n 's/^PG_DIR=//p' <<<"$pg_out")
	APITOKEN_TEST_PG_DSN=$(sed -n 's/^PG_DSN=//p' <<<"$pg_out")
	if [ -z "$pg_dir" ] || [ -z "$APITOKEN_TEST_PG_DSN" ]; then
		echo "scripts/test.sh: scripts/pg-test-cluster.sh printed no PG_DIR/PG_DSN:" >&2
		echo "$pg_out" >&2
		exit 1
	fi
	export APITOKEN_TEST_PG_DSN
fi
# The password stays out of the log.
sed 's#://\([^:/@]*\):[^@]*@#://\1:***@#' <<<"APITOKEN_TEST_PG_DSN=$APITOKEN_TEST_PG_DSN"

# The browser test of the unlock page (caddyauth/browser_test.go, SPEC §7)
# drives Debian's headless chromium with chromedp; it fails without one.
# fonts-dejavu-core is what renders the page's text (chromium pulls in a
# font through fontconfig anyway; naming it keeps the screenshots the same).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
	section "Installing chromium (the browser test of the unlock page drives it)"
	apt_install chromium fonts-dejavu-core
fi
# Where /dev/shm is mounted twice, Debian's launcher prints a harmless
# "[: ...: unexpected operator" (/etc/chromium.d/dev-shm) before the version.
"$(command -v chromium || echo /usr/bin/chromium)" --version

section "gofmt"
# One walk covers the plugin and the nested module internal/xcaddybuild.
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "These files are not gofmt-formatted (run gofmt -w on them):" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "ok"

section "go vet ./..."
go vet ./...

section "go vet ./... (internal/xcaddybuild)"
go -C internal/xcaddybuild vet ./...

section "Building Caddy with the plugin (scripts/build-caddy.sh)"
bin_dir=$(mktemp -d) # removed by cleanup
./scripts/build-caddy.sh "$bin_dir/caddy"
export CADDY_BINARY=$bin_dir/caddy
"$CADDY_BINARY" version
modules=$("$CADDY_BINARY" list-modules)
if ! grep -qx 'http.handlers.api_token_auth' <<<"$modules"; then
	echo "scripts/test.sh: the built Caddy lacks the http.handlers.api_token_auth module" >&2
	exit 1
fi

# Last, so that go test's own summary closes the output.
section "go test -race -count=1 ./... (CADDY_BINARY=$CADDY_BINARY)"
go test -race -count=1 ./...
