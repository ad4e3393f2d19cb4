#!/usr/bin/env bash
# prepost-freeze.sh: freeze an application for its backup, and thaw it; guarded, so that
# nothing stays frozen or locked past --max-seconds even if the thaw never comes.
#
# One file for every Linux pre- and post-script of prepost-backup (README, "Script kit"):
#   pre:  prepost-freeze.sh freeze fs MOUNT... [--max-seconds N] [--force-root]
#   pre:  prepost-freeze.sh freeze mysql [--max-seconds N] [--lock-wait-seconds N]
#                                        [--defaults-file F] [--socket S] [--user U]
#   pre:  prepost-freeze.sh freeze postgres [--max-seconds N] [--pgdata DIR] [--host H]
#                                           [--port P] [--user U] [--os-user U] [--force-root]
#   post: prepost-freeze.sh thaw
set -euo pipefail

readonly DEFAULT_MAX_SECONDS=300 # prepost-backup's MaxFreezeSeconds default
readonly MAX_MAX_SECONDS=86400
STATE_DIR=${PREPOST_FREEZE_STATE_DIR:-/run/prepost-freeze}
FSFREEZE=${PREPOST_FSFREEZE:-fsfreeze}
# MariaDB 11 ships its client as `mariadb` only (the `mysql` name is a separate package).
MYSQL=${PREPOST_MYSQL:-$(command -v mysql || command -v mariadb || echo mysql)}
PSQL=${PREPOST_PSQL:-psql}

usage() {
	cat <<'EOF'
Usage:
  prepost-freeze.sh freeze fs MOUNT... [--max-seconds N] [--force-root]
  prepost-freeze.sh freeze mysql [--max-seconds N] [--lock-wait-seconds N]
                                 [--defaults-file FILE] [--socket PATH] [--user NAME]
  prepost-freeze.sh freeze postgres [--max-seconds N] [--pgdata DIR] [--host HOST]
                                    [--port PORT] [--user NAME] [--os-user NAME] [--force-root]
  prepost-freeze.sh thaw
  prepost-freeze.sh status

freeze fs        flush, then fsfreeze each MOUNT (a mount point). The root file system is
                 refused unless --force-root: freezing it blocks the SSM agent and every
                 log writer, so the post-script may never be delivered (the guard still
                 thaws it).
freeze mysql     FLUSH TABLES WITH READ LOCK (MySQL and MariaDB), held by a client session
                 that stays alive after this script returns; waits at most
                 --lock-wait-seconds (default 30) for the lock.
freeze postgres  CHECKPOINT, then fsfreeze the file systems of the data directory, its
                 WAL and its tablespaces (asked of the server, or --pgdata).
thaw             release whatever a freeze took, and stop its guard; with nothing frozen,
                 says so and succeeds.
status           what is frozen or locked now.

Every freeze starts a guard first: a detached process that thaws after --max-seconds
(default 300, as prepost-backup's MaxFreezeSeconds; 1 to 86400) if no thaw came. A
freeze that fails half-way releases what it took and exits 1. Exit codes: 0 done, 1
failed (the reason on stderr), 2 bad arguments.
State: $PREPOST_FREEZE_STATE_DIR (default /run/prepost-freeze, a tmpfs).
EOF
}

say() { printf 'prepost-freeze: %s\n' "$*"; }
fail() {
	printf 'prepost-freeze: error: %s\n' "$1" >&2
	exit "${2:-1}"
}
usage_error() {
	printf 'prepost-freeze: %s (see prepost-freeze.sh --help)\n' "$1" >&2
	exit 2
}

# -- state: one freeze at a time, serialised with the guard by a lock ----------------------

lock_state() {
	mkdir -p "$STATE_DIR"
	chmod 700 "$STATE_DIR"
	exec 9>"$STATE_DIR/lock"
	flock 9
}

frozen() { [[ -s "$STATE_DIR/mounts" || -s "$STATE_DIR/mysql.pid" ]]; }

# The mount point of the file system holding $1 (the top one, where mounts are stacked).
mount_of() { findmnt -n -o TARGET --target "$1" | head -n 1; }

# -- the guard ---------------------------------------------------------------------------

start_guard() {
	local max=$1 self="$STATE_DIR/prepost-freeze.sh"
	# The guard runs a copy on the state's tmpfs: SSM deletes the downloaded script, and
	# the copy is not on a file system this script freezes.
	cp -- "${BASH_SOURCE[0]}" "$self"
	chmod 700 "$self"
	# 9>&-: the guard must not hold the state's lock (fd 9) for as long as it waits.
	setsid "$self" _guard "$max" </dev/null >>"$STATE_DIR/guard.log" 2>&1 9>&- &
	echo "$!" >"$STATE_DIR/guard.pid"
	date -u +%Y-%m-%dT%H:%M:%SZ >"$STATE_DIR/since"
	echo "$max" >"$STATE_DIR/max-seconds"
}

stop_guard() {
	local pid
	pid=$(cat "$STATE_DIR/guard.pid" 2>/dev/null || true)
	if [[ -n "$pid" && "$pid" != "$$" ]]; then
		kill -- "-$pid" 2>/dev/null || true # its session: the guard and its sleep
	fi
	rm -f "$STATE_DIR/guard.pid"
}

guard() {
	local max=$1
	sleep "$max"
	say "guard: no thaw within $max s: thawing now"
	PREPOST_FREEZE_BY_GUARD=1 exec "$0" thaw
}

# -- releasing -----------------------------------------------------------------------------

release_all() {
	local released=0 mount pid
	if [[ -s "$STATE_DIR/mounts" ]]; then
		# The last frozen first.
		while read -r mount; do
			[[ -n "$mount" ]] || continue
			if "$FSFREEZE" -u "$mount" 2>/dev/null; then
				say "thawed $mount"
			else
				say "$mount was not frozen (thawed already)"
			fi
			released=1
		done < <(tac "$STATE_DIR/mounts")
	fi
	rm -f "$STATE_DIR/mounts"
	if [[ -s "$STATE_DIR/mysql.pid" ]]; then
		pid=$(cat "$STATE_DIR/mysql.pid")
		# The session holding the lock ends with its client: the server releases it. (An
		# aborted freeze ends it too, before it held anything: hence "its lock, if any".)
		if kill -- "-$pid" 2>/dev/null; then
			say "ended the MySQL lock session: the server releases its read lock, if any"
		else
			say "the MySQL lock session had ended already"
		fi
		released=1
	fi
	rm -f "$STATE_DIR/mysql.pid" "$STATE_DIR/mysql.out"
	return $((1 - released))
}

thaw() {
	lock_state
	if [[ -z "${PREPOST_FREEZE_BY_GUARD:-}" ]]; then
		stop_guard
	else
		rm -f "$STATE_DIR/guard.pid"
	fi
	if release_all; then
		say "thawed${PREPOST_FREEZE_BY_GUARD:+ by the guard}"
	else
		say "nothing to thaw: no freeze is in place (thawed already, or never frozen)"
	fi
	rm -f "$STATE_DIR/since" "$STATE_DIR/max-seconds"
}

status() {
	if [[ -d "$STATE_DIR" ]] && frozen; then
		say "frozen since $(cat "$STATE_DIR/since" 2>/dev/null || echo '?'), guard at $(cat "$STATE_DIR/max-seconds" 2>/dev/null || echo '?') s"
		[[ -s "$STATE_DIR/mounts" ]] && say "file systems: $(paste -sd' ' "$STATE_DIR/mounts")"
		[[ -s "$STATE_DIR/mysql.pid" ]] && say "MySQL read lock held by session process group $(cat "$STATE_DIR/mysql.pid")"
		return 0
	fi
	say "nothing frozen"
}

# -- freezing ------------------------------------------------------------------------------

# A failure after the guard started: release what was taken, stop the guard, exit 1.
abort_freeze() {
	say "freeze failed: releasing what it took" >&2
	release_all || true
	stop_guard
	rm -f "$STATE_DIR/since" "$STATE_DIR/max-seconds"
	fail "$1"
}

check_mount() {
	local mount=$1 force_root=$2 target
	[[ -d "$mount" ]] || usage_error "$mount is not a directory"
	target=$(mount_of "$mount")
	if [[ "$target" != "$(cd "$mount" && pwd -P)" ]]; then
		usage_error "$mount is not a mount point: its file system is mounted at $target; give that"
	fi
	if [[ "$target" == / && "$force_root" != 1 ]]; then
		usage_error "refusing to freeze / (the root file system): the SSM agent, its logs and every process writing there would block, and the thaw might never be delivered; give --force-root to do it anyway (the guard thaws it after --max-seconds)"
	fi
	if [[ "$(mount_of "$STATE_DIR")" == "$target" ]]; then
		usage_error "refusing to freeze $target: it holds this script's state ($STATE_DIR); set PREPOST_FREEZE_STATE_DIR to a tmpfs"
	fi
}

freeze_mounts() {
	local mount
	for mount in "$@"; do
		sync -f "$mount" || true
		# Noted before it is frozen: killed during the freeze, the guard still thaws it.
		echo "$mount" >>"$STATE_DIR/mounts"
		if ! "$FSFREEZE" -f "$mount"; then
			# Not frozen by this script (e.g. frozen by another already): not to be thawed.
			sed -i '$d' "$STATE_DIR/mounts"
			abort_freeze "fsfreeze -f $mount failed"
		fi
		say "froze $mount"
	done
}

freeze_fs() {
	local max=$1 force_root=$2
	shift 2
	(($# > 0)) || usage_error "freeze fs needs at least one mount point"
	local mount mounts=()
	for mount in "$@"; do
		check_mount "$mount" "$force_root"
		mounts+=("$(mount_of "$mount")")
	done
	start_guard "$max"
	freeze_mounts "${mounts[@]}"
	say "frozen: ${mounts[*]}; the guard thaws them in $max s unless prepost-freeze.sh thaw comes first"
}

freeze_mysql() {
	local max=$1 wait=$2
	shift 2
	local client=("$MYSQL" "$@" --batch --skip-column-names --unbuffered) # --defaults-file first
	local out="$STATE_DIR/mysql.out" waited=0
	start_guard "$max"
	: >"$out"
	# The session that holds the lock: the client itself (exec), reading statements from a
	# pipe that stays open for --max-seconds, so the lock lasts until the thaw ends the
	# session, or until the pipe closes (a second guard, inside the session itself). Its
	# pid is the client's, so a client that exits (no server, lock wait timeout) is seen
	# at once, not after --max-seconds. 9>&-: it must not hold the state's lock (fd 9),
	# which the thaw waits for.
	# shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
	setsid bash -c '
		exec "${@:3}" < <(printf "%s\n" "SET SESSION lock_wait_timeout = $2;" \
			"FLUSH TABLES WITH READ LOCK;" "SELECT '"'"'prepost-locked'"'"';"; sleep "$1")' \
		_ "$max" "$wait" "${client[@]}" >"$out" 2>&1 </dev/null 9>&- &
	echo "$!" >"$STATE_DIR/mysql.pid"
	while ! grep -qx 'prepost-locked' "$out"; do
		if ! kill -0 "$(cat "$STATE_DIR/mysql.pid")" 2>/dev/null; then
			abort_freeze "the MySQL session ended before it held the lock: $(tr '\n' ' ' <"$out")"
		fi
		if ((waited >= (wait + 5) * 10)); then
			abort_freeze "no read lock after $((wait + 5)) s (long-running statements?)"
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	say "MySQL read lock held by a session that stays open; the guard ends it in $max s unless prepost-freeze.sh thaw comes first"
}

postgres_query() {
	local os_user=$1
	shift
	if [[ -n "$os_user" && "$(id -u)" == 0 ]]; then
		runuser -u "$os_user" -- "$PSQL" -X -A -t -v ON_ERROR_STOP=1 "$@"
	else
		"$PSQL" -X -A -t -v ON_ERROR_STOP=1 "$@"
	fi
}

freeze_postgres() {
	local max=$1 force_root=$2 pgdata=$3 os_user=$4
	shift 4
	local psql_args=("$@") dirs=() dir mounts=() mount
	if [[ -z "$pgdata" ]]; then
		pgdata=$(postgres_query "$os_user" "${psql_args[@]}" -c 'SHOW data_directory') ||
			fail "cannot ask PostgreSQL for its data directory (give --pgdata, or --host/--port/--user)"
	fi
	[[ -d "$pgdata" ]] || usage_error "$pgdata (the data directory) is not a directory here"
	dirs+=("$pgdata")
	[[ -e "$pgdata/pg_wal" ]] && dirs+=("$(readlink -f "$pgdata/pg_wal")")
	for dir in "$pgdata"/pg_tblspc/*; do
		[[ -e "$dir" ]] && dirs+=("$(readlink -f "$dir")")
	done
	for dir in "${dirs[@]}"; do
		mount=$(mount_of "$dir")
		[[ " ${mounts[*]} " == *" $mount "* ]] || mounts+=("$mount")
	done
	for mount in "${mounts[@]}"; do
		check_mount "$mount" "$force_root"
	done
	postgres_query "$os_user" "${psql_args[@]}" -c 'CHECKPOINT' >/dev/null ||
		fail "CHECKPOINT failed: nothing was frozen"
	say "checkpoint done"
	start_guard "$max"
	freeze_mounts "${mounts[@]}"
	say "PostgreSQL frozen (${mounts[*]}); the guard thaws in $max s unless prepost-freeze.sh thaw comes first"
}

freeze() {
	(($# > 0)) || usage_error "freeze what: fs, mysql or postgres?"
	local what=$1
	shift
	local max=$DEFAULT_MAX_SECONDS force_root=0 wait="" pgdata="" os_user=postgres
	local positional=() client=()
	while (($# > 0)); do
		case $1 in
		--max-seconds | --lock-wait-seconds | --defaults-file | --socket | --user | --pgdata | --host | --port | --os-user)
			(($# > 1)) || usage_error "$1 needs a value"
			case $1 in
			--max-seconds) max=$2 ;;
			--lock-wait-seconds) wait=$2 ;;
			--pgdata) pgdata=$2 ;;
			--os-user) os_user=$2 ;;
			--defaults-file) client=("--defaults-file=$2" "${client[@]}") ;; # must come first
			--socket | --host | --port | --user)
				if [[ $what == postgres ]]; then client+=("$1" "$2"); else client+=("$1=$2"); fi
				;;
			esac
			shift 2
			;;
		--force-root) force_root=1 && shift ;;
		-*) usage_error "unknown option $1" ;;
		*) positional+=("$1") && shift ;;
		esac
	done
	if ! [[ "$max" =~ ^[0-9]{1,5}$ ]] || ((max < 1 || max > MAX_MAX_SECONDS)); then
		usage_error "--max-seconds takes 1 to $MAX_MAX_SECONDS, not '$max'"
	fi
	if [[ -z "$wait" ]]; then
		wait=$((max > 30 ? 30 : max / 2))
	elif ! [[ "$wait" =~ ^[0-9]{1,5}$ ]] || ((wait < 1 || wait >= max)); then
		usage_error "--lock-wait-seconds takes 1 to less than --max-seconds, not '$wait'"
	fi
	[[ $what == fs || ${#positional[@]} == 0 ]] || usage_error "unexpected argument ${positional[0]}"
	lock_state
	if frozen; then
		say "already frozen since $(cat "$STATE_DIR/since" 2>/dev/null || echo '?'): nothing more to do (its guard still runs)"
		return 0
	fi
	rm -f "$STATE_DIR/mounts"
	case $what in
	fs) freeze_fs "$max" "$force_root" "${positional[@]}" ;;
	mysql) freeze_mysql "$max" "$wait" "${client[@]}" ;;
	postgres) freeze_postgres "$max" "$force_root" "$pgdata" "$os_user" "${client[@]}" ;;
	*) usage_error "freeze what: fs, mysql or postgres, not '$what'" ;;
	esac
}

main() {
	(($# > 0)) || usage_error "freeze or thaw?"
	case $1 in
	-h | --help) usage ;;
	freeze) shift && freeze "$@" ;;
	thaw)
		(($# == 1)) || usage_error "thaw takes no arguments"
		thaw
		;;
	status) status ;;
	_guard) guard "$2" ;;
	*) usage_error "unknown command '$1'" ;;
	esac
}

main "$@"
