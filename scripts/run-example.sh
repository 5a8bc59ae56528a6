#!/usr/bin/env bash
# Builds Caddy with the plugin from xcaddy.json into ./caddy and runs
# Caddyfile.example (http://localhost:8080) in the foreground.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/build-caddy.sh "$PWD/caddy"
exec ./caddy run --config Caddyfile.example --adapter caddyfile
