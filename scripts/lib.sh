# Shell helpers shared by the scripts in this folder; source it, don't run it.
# Messages go to standard error, so that a script's standard output stays
# its own (pg-test-cluster.sh prints the DSN there).

# as_root runs a command as root: directly when we are root, else with sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		echo "$(basename "$0"): need root or sudo to run: $*" >&2
		exit 1
	fi
}

# apt_install installs Debian packages without questions or recommends,
# running apt-get update once per script run.
apt_install() {
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "$(basename "$0"): apt-get not found; install these yourself: $*" >&2
		exit 1
	fi
	if [ "${apt_updated:-false}" = false ]; then
		as_root apt-get update >&2
		apt_updated=true
	fi
	# env, because sudo drops DEBIAN_FRONTEND from the environment.
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
}
