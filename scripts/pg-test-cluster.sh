#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the PostgreSQL store's tests, and
# stops it again.
#
# Usage:
#   scripts/pg-test-cluster.sh [start]        start a new cluster
#   scripts/pg-test-cluster.sh stop <dir>     stop it and remove <dir>
#
# start installs Debian's postgresql (apt-get, as root or through sudo) when
# no initdb/pg_ctl is installed under /usr/lib/postgresql/<version>/bin, then
# creates a cluster in a fresh temporary directory, starts it listening on
# 127.0.0.1 only, on a free port, with its unix socket in that directory, and
# creates the database apitoken_test. Its progress goes to standard error;
# standard output gets exactly two lines, the second one last:
#   PG_DIR=<dir>       what to pass to "stop"
#   PG_DSN=postgres://postgres:<password>@127.0.0.1:<port>/apitoken_test?sslmode=disable
#
# As root, the cluster belongs to and runs as the postgres user (initdb refuses
# to run as root); as anyone else it runs as that user. Its superuser is named
# postgres either way. Every start makes a new cluster: running it twice gives
# two. Nothing outlives the caller but the cluster's processes, which "stop"
# ends; if start fails half way it stops and removes what it made.
#
# Authentication: scram-sha-256 with a random password over TCP, not trust.
# Trust on 127.0.0.1 would let every local user of a shared machine connect
# as the cluster's superuser, and a superuser can run programs as the OS user
# that owns the cluster (COPY ... TO PROGRAM), which for a developer running
# this as himself is his own account. The password costs nothing: it travels
# in the DSN. The unix socket, in a directory only the owner (and root) can
# enter, uses trust; only this script uses it.
set -euo pipefail

marker=.apitoken-pg-test-cluster

log() {
	echo "pg-test-cluster: $*" >&2
}

die() {
	log "$*"
	exit 1
}

# as_root and apt_install.
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# pg_bindir prints the bin directory of the newest PostgreSQL server
# installed the Debian way, or nothing.
pg_bindir() {
	local dir best=
	for dir in /usr/lib/postgresql/*/bin; do
		if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
			best+="$dir"$'\n'
		fi
	done
	[ -n "$best" ] || return 0
	printf '%s' "$best" | sort -V | tail -n 1
}

install_postgresql() {
	command -v apt-get >/dev/null 2>&1 ||
		die "no PostgreSQL server under /usr/lib/postgresql and no apt-get; install PostgreSQL yourself"
	log "installing Debian's postgresql"
	apt_install postgresql
	# Where services may start (no policy-rc.d forbidding it), the package
	# creates and starts a "main" cluster on port 5432. We did not ask for a
	# server that outlives the tests: stop the ones the install started.
	if command -v pg_lsclusters >/dev/null 2>&1; then
		local ver name port status rest
		while read -r ver name port status rest; do
			if [ "$status" = online ]; then
				log "stopping the cluster $ver/$name that the install started"
				as_root pg_ctlcluster "$ver" "$name" stop >&2 || true
			fi
		done < <(pg_lsclusters --no-header 2>/dev/null || true)
	fi
}

# port_in_use reports whether something accepts TCP connections on
# 127.0.0.1:$1.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# as_owner runs a command as the cluster's owner.
as_owner() {
	if [ "$owner" = "$(id -un)" ]; then
		"$@"
	elif command -v runuser >/dev/null 2>&1; then
		runuser -u "$owner" -- "$@"
	else
		su -s /bin/sh -c '"$0" "$@"' "$owner" "$@"
	fi
}

# stop_cluster stops the cluster in $1 (if running) and removes $1. It only
# touches a directory that this script made.
stop_cluster() {
	local dir=$1
	[ -d "$dir" ] || return 0
	[ -e "$dir/$marker" ] || die "$dir was not made by this script; not touching it"
	if [ -f "$dir/data/postmaster.pid" ]; then
		local ver owner
		ver=$(cat "$dir/data/PG_VERSION")
		owner=$(stat -c %U "$dir/data")
		as_owner "/usr/lib/postgresql/$ver/bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 ||
			log "pg_ctl stop failed; see $dir/postgres.log"
	fi
	rm -rf "$dir"
}

start_cluster() {
	local bindir
	bindir=$(pg_bindir)
	if [ -z "$bindir" ]; then
		install_postgresql
		bindir=$(pg_bindir)
		[ -n "$bindir" ] || die "installed postgresql, yet no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
	fi
	log "using $bindir ($("$bindir/postgres" --version))"

	if [ "$(id -u)" -eq 0 ]; then
		owner=postgres
		id -u "$owner" >/dev/null 2>&1 || die "there is no postgres user (Debian's postgresql package makes it)"
	else
		owner=$(id -un)
	fi

	# The cluster's owner must be able to reach the directory: as root with
	# a TMPDIR that only root can enter, fall back to /tmp.
	dir=$(mktemp -d "${TMPDIR:-/tmp}/apitoken-pg.XXXXXX")
	touch "$dir/$marker"
	if [ "$owner" != "$(id -un)" ]; then
		chown -R "$owner:" "$dir"
		if ! as_owner test -w "$dir"; then
			rm -rf "$dir"
			dir=$(mktemp -d /tmp/apitoken-pg.XXXXXX)
			touch "$dir/$marker"
			chown -R "$owner:" "$dir"
		fi
	fi
	chmod 700 "$dir"
	# From here on, a failure stops and removes what was made.
	trap 'stop_cluster "$dir"' EXIT

	local password
	password=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
	(umask 077 && printf '%s\n' "$password" >"$dir/pwfile")
	[ "$owner" = "$(id -un)" ] || chown "$owner:" "$dir/pwfile"

	as_owner "$bindir/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
		--auth-local=trust --auth-host=scram-sha-256 \
		-E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
	rm -f "$dir/pwfile"

	# Speed over durability: the cluster dies with the test run.
	cat >>"$dir/data/postgresql.conf" <<EOF

# scripts/pg-test-cluster.sh: a throwaway cluster for tests.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF

	# A port that nothing listens on now; another process may still take
	# it before the server binds it, so a failed start tries another.
	local try port started=false
	for try in 1 2 3 4 5 6 7 8 9 10; do
		port=$((20000 + RANDOM % 40000))
		port_in_use "$port" && continue
		if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
			-o "-p $port" -w -t 60 start >&2; then
			started=true
			break
		fi
		log "start on port $port failed; trying another port"
		tail -n 5 "$dir/postgres.log" >&2 || true
	done
	[ "$started" = true ] || die "could not start PostgreSQL; see the log above"

	as_owner "$bindir/createdb" -h "$dir" -p "$port" -U postgres apitoken_test >&2

	trap - EXIT
	log "cluster up: data in $dir/data, 127.0.0.1:$port, log $dir/postgres.log"
	echo "PG_DIR=$dir"
	echo "PG_DSN=postgres://postgres:$password@127.0.0.1:$port/apitoken_test?sslmode=disable"
}

case "${1:-start}" in
start)
	[ $# -le 1 ] || die "usage: $0 [start] | stop <dir>"
	start_cluster
	;;
stop)
	[ $# -eq 2 ] || die "usage: $0 stop <dir>"
	stop_cluster "$2"
	;;
*)
	die "usage: $0 [start] | stop <dir>"
	;;
esac
