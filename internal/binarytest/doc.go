// Package binarytest checks a real Caddy binary built with this plugin, the
// way a user meets it: tokens made with `caddy api-token create`, a
// Caddyfile checked with `caddy validate` and served by `caddy run`, and
// requests sent with curl.
//
// The test uses the binary named by $CADDY_BINARY (scripts/test.sh builds
// one and sets it); without it, the test builds its own with
// scripts/build-caddy.sh. It never skips: a binary that cannot be built or
// a missing curl is a failure.
package binarytest
