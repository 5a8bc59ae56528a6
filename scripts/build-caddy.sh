#!/usr/bin/env bash
# Builds a Caddy binary with this repository's plugin, as described by
# xcaddy.json, using the xcaddy library via internal/xcaddybuild (a nested
# module, so xcaddy stays out of the plugin's go.mod).
#
# Usage: scripts/build-caddy.sh [OUTPUT]
#   OUTPUT defaults to ./caddy at the repository root; a relative OUTPUT is
#   taken relative to the directory the script was called from.
set -euo pipefail

caller_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$PWD

output=${1:-$repo_root/caddy}
case $output in
/*) ;;
*) output=$caller_dir/$output ;;
esac

# `go -C` runs the program inside internal/xcaddybuild, hence absolute paths.
exec go -C internal/xcaddybuild run . -config "$repo_root/xcaddy.json" -output "$output"
