#!/usr/bin/env bash
# Load benchmark of the api_token_auth handler in the real Caddy binary,
# driven by wrk, next to a no-auth baseline and to two peers (Caddy's own
# basic_auth and greenpau/caddy-security's API keys).
#
# Usage: scripts/bench-load.sh
#
# It builds one Caddy with this plugin and caddy-security (bench/xcaddy-bench.json),
# starts it pinned to CPU 0, and runs wrk pinned to CPU 1. Every round
# loads each config in turn into that one Caddy (admin API /load), each
# right after a run of the baseline, and runs wrk against it: each config
# is compared with the baseline run just before it, so that the changing
# load of a shared machine hits both sides of every ratio alike. For
# each run it reads Caddy's CPU time from /proc/<pid>/stat, and the wrk
# script (bench/wrk/bench.lua) counts the status codes, so the report shows
# that each config took the path it claims to measure. A second part times
# Caddy's start with a 100,000-token file store and the memory it adds.
# At the end it prints a Markdown report (see BENCHMARKS.md). With the
# defaults a run takes about 15 minutes on 2 cores; a smoke run
# (ROUNDS=1 DURATION=2s WARMUP=1s LOAD_TOKENS=10000) about 2.
#
# Environment:
#   ROUNDS=3            rounds (every config once per round, each after
#                       a baseline run of its own)
#   DURATION=5s         each measured wrk run (wrk syntax: 10s, 1m)
#   WARMUP=2s           unmeasured wrk run before each measured one: fills
#                       caches, starts the ban of the ban config
#   CONNECTIONS=32      wrk connections (one wrk thread)
#   PEERS=on            off: no basic_auth/caddy-security configs, and a
#                       Caddy built from xcaddy.json alone
#   CONFIGS=            space-separated subset of the config names below
#   BENCH_OUT=          also write the report to this file
#   PROFILE=            space-separated config names: after the rounds,
#                       take a 5 s CPU profile of Caddy under each, and add
#                       the top of it to the report
#   CADDY_BIN=          use this Caddy instead of building one
#   STORE_TOKENS=1000   tokens in each store of the throughput runs
#   LOAD_TOKENS=100000  tokens in the start-up and memory measurement
#   BCRYPT_COST=10      bcrypt cost of basic_auth's hash (caddy-security
#                       hashes its API key at its own default, also 10)
#   BENCH_HTTP_PORT=9180, BENCH_ADMIN_PORT=2119   loopback ports it uses
#   APITOKEN_TEST_PG_DSN  use this PostgreSQL database (tokens go into a
#                       realm of their own, left behind) instead of a
#                       throwaway cluster from scripts/pg-test-cluster.sh
#
# Configs: baseline (respond, no auth); noop (the baseline with one more
# handler that does next to nothing: the floor of any handler); file,
# sqlite, postgres (a valid Bearer token, warm cache); flood-garbage, flood-unknown, flood-badsum
# (random Bearer tokens without the prefix / with the prefix and a valid
# checksum / with a wrong checksum; lockout off); ban (random tokens, IP
# banned: 429); basic-ok, basic-fail (basic_auth, right and random
# password); security-ok, security-wrong (caddy-security API key, right
# and wrong secret).
#
# Installs wrk and curl with apt-get when missing. Everything listens on
# 127.0.0.1; every process it starts and its temporary directory go away
# when it exits.
set -euo pipefail

caller_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$PWD
# as_root and apt_install.
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
PEERS=${PEERS:-on}
STORE_TOKENS=${STORE_TOKENS:-1000}
LOAD_TOKENS=${LOAD_TOKENS:-100000}
BCRYPT_COST=${BCRYPT_COST:-10}
BENCH_OUT=${BENCH_OUT:-}
CADDY_BIN=${CADDY_BIN:-}
# Relative paths are the caller's, as in build-caddy.sh: we changed directory.
case $BENCH_OUT in "" | /*) ;; *) BENCH_OUT=$caller_dir/$BENCH_OUT ;; esac
case $CADDY_BIN in "" | /*) ;; *) CADDY_BIN=$caller_dir/$CADDY_BIN ;; esac
PROFILE=${PROFILE:-}
export BENCH_HTTP_PORT=${BENCH_HTTP_PORT:-9180}
export BENCH_ADMIN_PORT=${BENCH_ADMIN_PORT:-2119}
export BENCH_CONF=$repo_root/bench/caddy

base_url=http://127.0.0.1:$BENCH_HTTP_PORT/
admin_url=http://127.0.0.1:$BENCH_ADMIN_PORT

log() {
	echo "bench-load: $*" >&2
}

die() {
	log "$*"
	exit 1
}

case $PEERS in
on | off) ;;
*) die "PEERS=$PEERS: want on or off" ;;
esac
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive number"

# name|Caddyfile in bench/caddy|credentials (see set_credentials)|expected status
all_configs=(
	"baseline|baseline|none|200"
	"noop|noop|none|200"
	"file|file|bearer-file|200"
	"sqlite|sqlite|bearer-sqlite|200"
	"postgres|postgres|bearer-postgres|200"
	"flood-garbage|flood|lines-garbage|401"
	"flood-unknown|flood|lines-unknown|401"
	"flood-badsum|flood|lines-badsum|401"
	"ban|ban|lines-unknown|429"
)
if [ "$PEERS" = on ]; then
	all_configs+=(
		"basic-ok|basicauth|basic-ok|200"
		"basic-fail|basicauth|lines-basic|401"
		"security-ok|security|apikey-ok|200"
		"security-wrong|security|lines-apikey|401"
	)
fi

configs=()
if [ -n "${CONFIGS:-}" ]; then
	# baseline always runs: every other config is measured against it.
	configs=("${all_configs[0]}")
	for want in $CONFIGS; do
		[ "$want" = baseline ] && continue
		found=false
		for c in "${all_configs[@]}"; do
			if [ "${c%%|*}" = "$want" ]; then
				configs+=("$c")
				found=true
			fi
		done
		[ "$found" = true ] || die "CONFIGS: unknown config $want"
	done
else
	configs=("${all_configs[@]}")
fi

# Tools. taskset is in util-linux, which every Debian has.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
command -v taskset >/dev/null 2>&1 || die "taskset not found (util-linux)"

# Caddy on CPU 0, wrk on CPU 1: neither steals the other's core, and
# Caddy's CPU time is its own work alone. Go sets GOMAXPROCS from the
# affinity mask, so Caddy runs with GOMAXPROCS=1.
if [ "$(nproc --all)" -ge 2 ]; then
	pin_caddy=(taskset -c 0)
	pin_wrk=(taskset -c 1)
else
	log "only one CPU: running unpinned; the numbers will mix Caddy's and wrk's work"
	pin_caddy=()
	pin_wrk=()
fi

clk_tck=$(getconf CLK_TCK)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/apitoken-bench.XXXXXX")
export BENCH_TMP=$tmp
caddy_pid=
pg_dir=

cleanup() {
	local status=$?
	stop_caddy
	if [ -n "$pg_dir" ]; then
		scripts/pg-test-cluster.sh stop "$pg_dir" || true
	fi
	rm -rf "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for port in "$BENCH_HTTP_PORT" "$BENCH_ADMIN_PORT"; do
	! port_in_use "$port" || die "port $port on 127.0.0.1 is in use; set BENCH_HTTP_PORT/BENCH_ADMIN_PORT"
done

# --- Build -------------------------------------------------------------

if [ -n "$CADDY_BIN" ]; then
	caddy=$CADDY_BIN
else
	caddy=$tmp/caddy
	xcaddy_config=$repo_root/bench/xcaddy-bench.json
	[ "$PEERS" = on ] || xcaddy_config=$repo_root/xcaddy.json
	log "building Caddy from ${xcaddy_config#"$repo_root"/}"
	go -C internal/xcaddybuild run . -config "$xcaddy_config" -output "$caddy" >"$tmp/build.log" 2>&1 ||
		{ tail -n 30 "$tmp/build.log" >&2; die "building Caddy failed"; }
fi
log "building bench/gentokens"
go build -o "$tmp/gentokens" ./bench/gentokens
gentokens=$tmp/gentokens

# --- Stores and credentials --------------------------------------------

# A realm of our own in the SQL stores: an APITOKEN_TEST_PG_DSN database
# may hold other realms.
export BENCH_SQL_REALM=bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')

if [ -n "${APITOKEN_TEST_PG_DSN:-}" ]; then
	export BENCH_PG_DSN=$APITOKEN_TEST_PG_DSN
elif [[ " ${configs[*]} " == *"|postgres|"* ]]; then
	pg_out=$(scripts/pg-test-cluster.sh start)
	pg_dir=$(sed -n 's/^PG_DIR=//p' <<<"$pg_out")
	BENCH_PG_DSN=$(sed -n 's/^PG_DSN=//p' <<<"$pg_out")
	export BENCH_PG_DSN
fi

log "making stores of $STORE_TOKENS tokens and the credential lists"
secret_file=$("$gentokens" store -type file -path "$tmp/tokens.json" -n "$STORE_TOKENS")
secret_sqlite=$("$gentokens" store -type sqlite -path "$tmp/tokens.db" -realm "$BENCH_SQL_REALM" -n "$STORE_TOKENS")
secret_postgres=
if [ -n "${BENCH_PG_DSN:-}" ]; then
	secret_postgres=$("$gentokens" store -type postgres -dsn "$BENCH_PG_DSN" -realm "$BENCH_SQL_REALM" -n "$STORE_TOKENS")
fi
# 100,000 distinct credentials per list; bench.lua cycles through one from
# a random start, so a flood repeats a credential only after 100,000
# requests.
for kind in garbage unknown badsum basic; do
	"$gentokens" headers -kind "$kind" -n 100000 >"$tmp/lines-$kind"
done

if [ "$PEERS" = on ]; then
	basic_password=$("$gentokens" apikey)
	BENCH_BCRYPT_HASH=$("$caddy" hash-password --algorithm bcrypt --bcrypt-cost "$BCRYPT_COST" --plaintext "$basic_password")
	export BENCH_BCRYPT_HASH
	basic_header="Basic $(printf 'bench:%s' "$basic_password" | base64 -w0)"

	mkdir -p "$tmp/security"
	BENCH_SECURITY_KEY=$("$gentokens" apikey)
	BENCH_SECURITY_KEY_ID=${BENCH_SECURITY_KEY:0:24}
	BENCH_SECURITY_PASSWORD=$("$gentokens" apikey)
	BENCH_SECURITY_JWT_SECRET=$("$gentokens" apikey)
	export BENCH_SECURITY_KEY BENCH_SECURITY_KEY_ID BENCH_SECURITY_PASSWORD BENCH_SECURITY_JWT_SECRET
	"$gentokens" headers -kind apikey -key "$BENCH_SECURITY_KEY" -n 100000 >"$tmp/lines-apikey"
fi

# set_credentials sets what wrk sends for a credentials kind: wrk_args
# (static -H headers) and, for floods, BENCH_LINES/BENCH_HEADER, the list
# bench.lua cycles through.
set_credentials() {
	wrk_args=()
	BENCH_LINES=
	BENCH_HEADER=Authorization
	case $1 in
	none) ;;
	bearer-file) wrk_args=(-H "Authorization: Bearer $secret_file") ;;
	bearer-sqlite) wrk_args=(-H "Authorization: Bearer $secret_sqlite") ;;
	bearer-postgres) wrk_args=(-H "Authorization: Bearer $secret_postgres") ;;
	basic-ok) wrk_args=(-H "Authorization: $basic_header") ;;
	apikey-ok) wrk_args=(-H "X-Api-Key: $BENCH_SECURITY_KEY" -H "X-Auth-Realm: local") ;;
	lines-apikey)
		wrk_args=(-H "X-Auth-Realm: local")
		BENCH_LINES=$tmp/lines-apikey
		BENCH_HEADER=X-Api-Key
		;;
	lines-*) BENCH_LINES=$tmp/lines-${1#lines-} ;;
	*) die "unknown credentials $1" ;;
	esac
	export BENCH_LINES BENCH_HEADER
}

# --- Caddy -------------------------------------------------------------

# start_caddy starts Caddy pinned to its CPU with the Caddyfile $1, its
# log in $tmp/caddy.log, and sets caddy_pid. It does not wait.
start_caddy() {
	# Appending, so that truncating the log between runs works.
	: >"$tmp/caddy.log"
	"${pin_caddy[@]}" "$caddy" run --adapter caddyfile --config "$1" >>"$tmp/caddy.log" 2>&1 &
	caddy_pid=$!
}

stop_caddy() {
	if [ -n "$caddy_pid" ]; then
		kill "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
		caddy_pid=
	fi
}

wait_admin() {
	local i
	for i in $(seq 200); do
		curl -s -o /dev/null "$admin_url/config/" && return 0
		kill -0 "$caddy_pid" 2>/dev/null || { tail -n 20 "$tmp/caddy.log" >&2; die "Caddy exited"; }
		sleep 0.05
	done
	die "Caddy's admin API did not come up"
}

# load_config replaces the running config with bench/caddy/$1.caddyfile.
load_config() {
	local code
	code=$(curl -s -o "$tmp/load.out" -w '%{http_code}' -X POST \
		-H 'Content-Type: text/caddyfile' --data-binary "@$BENCH_CONF/$1.caddyfile" "$admin_url/load")
	[ "$code" = 200 ] || { cat "$tmp/load.out" >&2; tail -n 20 "$tmp/caddy.log" >&2; die "loading $1.caddyfile: HTTP $code"; }
}

# cpu_ticks prints Caddy's user+system CPU time in clock ticks. The
# command name in /proc/<pid>/stat is in parentheses and may hold spaces,
# so the fields are counted after its closing one.
cpu_ticks() {
	local stat fields
	stat=$(<"/proc/$caddy_pid/stat")
	read -ra fields <<<"${stat##*") "}"
	# Fields 14 (utime) and 15 (stime) of proc(5), counted from field 3.
	echo $((fields[11] + fields[12]))
}

vm_rss_kb() {
	awk '/^VmRSS:/ { print $2 }' "/proc/$caddy_pid/status"
}

# wait_idle waits (up to 30 s) until Caddy uses no CPU for a fifth of a
# second. Requests that wrk gave up on keep running in Caddy: after the
# bcrypt configs, 32 abandoned bcrypt compares would otherwise be billed
# to the next config.
wait_idle() {
	local i a b
	for i in $(seq 150); do
		a=$(cpu_ticks)
		sleep 0.2
		b=$(cpu_ticks)
		[ $((b - a)) -gt 1 ] || return 0
	done
	log "Caddy still busy after 30 s; measuring anyway"
}

# run_wrk runs wrk for $1 and prints bench.lua's BENCH line.
run_wrk() {
	"${pin_wrk[@]}" wrk -t1 -c"$CONNECTIONS" -d"$1" --timeout 10s \
		-s "$repo_root/bench/wrk/bench.lua" "${wrk_args[@]}" "$base_url" >"$tmp/wrk.out" 2>&1 ||
		{ cat "$tmp/wrk.out" >&2; die "wrk failed"; }
	grep '^BENCH ' "$tmp/wrk.out" || { cat "$tmp/wrk.out" >&2; die "no result from wrk"; }
}

# field prints the value of key $2 in a BENCH line $1.
field() {
	local f
	for f in $1; do
		[ "${f%%=*}" = "$2" ] && { echo "${f#*=}"; return; }
	done
	echo 0
}

# --- Throughput rounds -------------------------------------------------

results=$tmp/results.tsv
: >"$results"
# Other work on the machine shows in every number: the report gives it.
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

start_caddy "$BENCH_CONF/baseline.caddyfile"
wait_admin
log "Caddy $("$caddy" version | cut -d' ' -f1), pid $caddy_pid; ${#configs[@]} configs x $ROUNDS rounds of $DURATION"

# measure runs config $2 (an entry of configs) and appends its row to the
# results, under the pair key $1.
measure() {
	local pair=$1 name caddyfile creds expect before line after requests duration_us p99_us errors statuses rps cpu_us
	IFS='|' read -r name caddyfile creds expect <<<"$2"
	set_credentials "$creds"
	wait_idle
	load_config "$caddyfile"
	run_wrk "$WARMUP" >/dev/null
	: >"$tmp/caddy.log" # floods log a line per failure; keep one run's worth
	before=$(cpu_ticks)
	line=$(run_wrk "$DURATION")
	after=$(cpu_ticks)
	requests=$(field "$line" requests)
	duration_us=$(field "$line" duration_us)
	p99_us=$(field "$line" p99_us)
	errors=$(field "$line" errors)
	statuses=$(field "$line" statuses)
	rps=$(awk -v n="$requests" -v us="$duration_us" 'BEGIN { printf "%.1f", n / (us / 1e6) }')
	# No request done (bcrypt under a short DURATION): CPU per request
	# is undefined; -1 shows as such in the report.
	cpu_us=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.2f", n ? t * 1e6 / hz / n : -1 }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$name" "$rps" "$p99_us" "$cpu_us" "$expect" "$statuses" "$errors" >>"$results"
	log "pair $pair $name: $rps req/s, p99 ${p99_us} µs, $cpu_us CPU µs/req, statuses $statuses, errors $errors"
}

# Each config runs right after a baseline run of its own, and is compared
# with it: on a shared machine the load of the moment changes within a
# round, and a baseline minutes away would measure another machine.
for round in $(seq "$ROUNDS"); do
	if [ ${#configs[@]} -eq 1 ]; then
		measure "$round-0" "${configs[0]}"
	fi
	for i in $(seq 1 $((${#configs[@]} - 1))); do
		measure "$round-$i" "${configs[0]}"
		measure "$round-$i" "${configs[$i]}"
	done
done

# --- CPU profiles ------------------------------------------------------

profiles=$tmp/profiles.md
: >"$profiles"
for want in $PROFILE; do
	for c in "${configs[@]}"; do
		IFS='|' read -r name caddyfile creds expect <<<"$c"
		[ "$name" = "$want" ] || continue
		set_credentials "$creds"
		wait_idle
		load_config "$caddyfile"
		run_wrk "$WARMUP" >/dev/null
		log "profiling $name for 5 s"
		curl -s -o "$tmp/profile-$name.pb.gz" "$admin_url/debug/pprof/profile?seconds=5" &
		profile_pid=$!
		run_wrk 7s >/dev/null
		wait "$profile_pid"
		{
			echo
			echo "CPU profile of Caddy under \`$name\` (5 s, \`go tool pprof -top\`, first 25 lines):"
			echo
			echo '```'
			go tool pprof -top -nodecount=25 "$tmp/profile-$name.pb.gz" 2>/dev/null | sed -n '1,32p'
			echo '```'
			echo
			echo "The plugin's, logging's and metrics' cumulative shares, against the whole connection's (\`-top -cum\`):"
			echo
			echo '```'
			go tool pprof -top -cum -nodecount=400 "$tmp/profile-$name.pb.gz" 2>/dev/null |
				grep -E 'caddy-apitoken|go\.uber\.org/zap|prometheus|net/http\.\(\*conn\)\.serve$' | head -n 25 || true
			echo '```'
		} >>"$profiles"
	done
done
stop_caddy

# --- Start-up and memory with LOAD_TOKENS tokens -----------------------

log "making a file store of $LOAD_TOKENS tokens"
secret_load=$("$gentokens" store -type file -path "$tmp/load.json" -n "$LOAD_TOKENS")

# measure_start starts Caddy with the store $1 and sets start_ms to the
# milliseconds from the start until a request with the Bearer token $2 gets
# status $3, rss_kb to Caddy's resident memory after a short load and a
# forced GC, and heap_kb to the live Go heap right after that GC.
measure_start() {
	local store=$1 token=$2 want=$3 t0 t1 code=
	export BENCH_LOAD_STORE=$store
	wrk_args=(-H "Authorization: Bearer $token")
	export BENCH_LINES=
	t0=$(date +%s%N)
	start_caddy "$BENCH_CONF/load.caddyfile"
	while [ "$code" != "$want" ]; do
		kill -0 "$caddy_pid" 2>/dev/null || { tail -n 20 "$tmp/caddy.log" >&2; die "Caddy exited"; }
		[ $(($(date +%s%N) - t0)) -lt 60000000000 ] || die "no $want from Caddy within 60 s"
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Authorization: Bearer $token" "$base_url" || true)
	done
	t1=$(date +%s%N)
	# A steady state: some traffic; a pause past the store's batched
	# last-use write (every 5 s, it rewrites the whole file) and the
	# seconds after it in which the store rereads a new file; then a
	# collection (pprof's heap profile with gc=1 runs one) and a pause for
	# the runtime to give freed memory back. Go keeps up to about twice its
	# live heap (GOGC=100), so the live heap is reported as well.
	run_wrk 2s >/dev/null
	sleep 10
	curl -s -o /dev/null "$admin_url/debug/pprof/heap?gc=1"
	heap_kb=$(($(curl -s "$admin_url/debug/vars" | grep -o '"HeapAlloc":[0-9]*' | cut -d: -f2) / 1024))
	sleep 5
	start_ms=$(((t1 - t0) / 1000000))
	rss_kb=$(vm_rss_kb)
	stop_caddy
}

# A missing file is an empty store: Caddy's own start-up and memory.
measure_start "$tmp/empty.json" "$secret_load" 401
empty_ms=$start_ms empty_kb=$rss_kb empty_heap_kb=$heap_kb
measure_start "$tmp/load.json" "$secret_load" 200
load_ms=$start_ms load_kb=$rss_kb load_heap_kb=$heap_kb
# The store's own share, without Caddy: tokenstore.OpenFile on the same
# file, on Caddy's CPU.
read -r open_ms open_heap < <("${pin_caddy[@]}" "$gentokens" open -path "$tmp/load.json")
log "empty store: first answer after $empty_ms ms, RSS $empty_kb kB, heap $empty_heap_kb kB;" \
	"$LOAD_TOKENS tokens: first 200 after $load_ms ms, RSS $load_kb kB, heap $load_heap_kb kB"

# --- Report ------------------------------------------------------------

report=$tmp/report.md
{
	echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc --all) CPUs, Linux $(uname -r);" \
		"$(go version | cut -d' ' -f3); Caddy $("$caddy" version | cut -d' ' -f1); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)."
	echo "Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS" \
		"STORE_TOKENS=$STORE_TOKENS BCRYPT_COST=$BCRYPT_COST; Caddy pinned to CPU 0 (GOMAXPROCS=1), wrk (1 thread) to CPU 1."
	echo
	echo "| Config | Expected | Statuses seen (all rounds) | req/s (median) | vs baseline | p99 latency | CPU µs/req | extra CPU µs/req |"
	echo "|---|---|---|---:|---:|---:|---:|---:|"
	awk -F'\t' -v order="$(printf '%s\n' "${configs[@]}" | cut -d'|' -f1 | tr '\n' ' ')" '
	# median of the space-separated numbers in s
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) {
			t = a[i]
			for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]
			a[j + 1] = t
		}
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function latency(us) {
		return us >= 1000 ? sprintf("%.2f ms", us / 1000) : sprintf("%d µs", us)
	}
	{
		round = $1; name = $2
		rps[name] = rps[name] " " $3
		p99[name] = p99[name] " " $4
		cpu[name] = cpu[name] " " $5
		expect[name] = $6
		if (name == "baseline") { brps[round] = $3; bcpu[round] = $5 }
		rows[NR] = $0
		n = split($7, st, ",")
		for (i = 1; i <= n; i++) {
			split(st[i], kv, ":")
			if (!((name, kv[1]) in seen)) codes[name] = codes[name] " " kv[1]
			seen[name, kv[1]] += kv[2]
			total[name] += kv[2]
		}
		errs[name] += $8
	}
	END {
		for (r = 1; r <= NR; r++) {
			split(rows[r], f, "\t")
			ratio[f[2]] = ratio[f[2]] " " f[3] / brps[f[1]]
			extra[f[2]] = extra[f[2]] " " f[5] - bcpu[f[1]]
		}
		n = split(order, names, " ")
		for (i = 1; i <= n; i++) {
			name = names[i]
			m = split(codes[name], cs, " ")
			seenstr = ""
			for (j = 1; j <= m; j++) {
				share = 100 * seen[name, cs[j]] / total[name]
				seenstr = seenstr (j > 1 ? ", " : "") sprintf("%s: %d (%.4g%%)", cs[j], seen[name, cs[j]], share)
			}
			if (errs[name] > 0) seenstr = seenstr sprintf(", socket errors/timeouts: %d", errs[name])
			if (total[name] == 0) seenstr = "none (no request completed)" seenstr
			ok = total[name] == 0 || seen[name, expect[name]] / total[name] >= 0.99
			c = median(cpu[name])
			printf "| %s | %s | %s%s | %.0f | %.1f%% | %s | %s | %s |\n", name, expect[name], seenstr,
				ok ? "" : " **WRONG PATH**", median(rps[name]), 100 * median(ratio[name]),
				latency(median(p99[name])), c < 0 ? "—" : sprintf("%.2f", c),
				name == "baseline" || c < 0 ? "—" : sprintf("%+.2f", median(extra[name]))
		}
	}' "$results"
	echo
	echo "Ratios and extra CPU are medians over the rounds of each run against the baseline run just before it."
	echo
	echo "Start-up and memory, file store (Caddy pinned to CPU 0):"
	echo
	echo "| Store | from \`caddy run\` to the first answer | VmRSS after load and a GC | live Go heap after the GC |"
	echo "|---|---:|---:|---:|"
	echo "| empty (missing file) | $empty_ms ms (401) | $((empty_kb / 1024)) MB | $((empty_heap_kb / 1024)) MB |"
	echo "| $LOAD_TOKENS tokens | $load_ms ms (first 200) | $((load_kb / 1024)) MB (+$(((load_kb - empty_kb) / 1024)) MB) |" \
		"$((load_heap_kb / 1024)) MB (+$(((load_heap_kb - empty_heap_kb) / 1024)) MB) |"
	echo "| $LOAD_TOKENS tokens, \`tokenstore.OpenFile\` alone (bench/gentokens open) | $open_ms ms | | +$((open_heap / 1048576)) MB |"
	cat "$profiles"
} >"$report"

# Targets (BENCHMARKS.md): judged on the medians above.
targets=$tmp/targets.md
awk -F'\t' '
	{ if ($2 == "baseline") { brps[$1] = $3; bcpu[$1] = $5 } rows[NR] = $0 }
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		for (r = 1; r <= NR; r++) {
			split(rows[r], f, "\t")
			ratio[f[2]] = ratio[f[2]] " " f[3] / brps[f[1]]
			extra[f[2]] = extra[f[2]] " " f[5] - bcpu[f[1]]
		}
		for (name in ratio) {
			if (name == "file" || name == "sqlite" || name == "postgres") {
				x = median(extra[name]); q = median(ratio[name])
				printf "| %s: extra CPU per success ≤ 1.5 µs | %+.2f µs | %s |\n", name, x, (x <= 1.5 ? "met" : "**not met**")
				printf "| %s: success req/s ≥ 95%% of baseline | %.1f%% | %s |\n", name, 100 * q, (q >= 0.95 ? "met" : "**not met**")
			}
			if (name ~ /^flood-/ || name == "ban") {
				q = median(ratio[name])
				printf "| %s: random-token flood req/s ≥ 90%% of baseline | %.1f%% | %s |\n", name, 100 * q, (q >= 0.90 ? "met" : "**not met**")
			}
		}
	}' "$results" | sort >"$targets"
{
	echo
	echo "| Target | Measured | |"
	echo "|---|---:|---|"
	cat "$targets"
	echo "| $LOAD_TOKENS tokens: \`caddy run\` to first success ≤ 2 s | $load_ms ms | $([ "$load_ms" -le 2000 ] && echo met || echo '**not met**') |"
	added_mb=$(((load_kb - empty_kb) / 1024))
	echo "| $LOAD_TOKENS tokens: RSS added ≤ 64 MB | $added_mb MB | $([ "$added_mb" -le 64 ] && echo met || echo '**not met**') |"
} >>"$report"

echo
cat "$report"
if [ -n "$BENCH_OUT" ]; then
	cp "$report" "$BENCH_OUT"
	log "report written to $BENCH_OUT"
fi
# A run that measured the wrong path is no result.
! grep -q 'WRONG PATH' "$report" || die "some configs did not answer as expected; see the Statuses column"
