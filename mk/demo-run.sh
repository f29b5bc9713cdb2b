#!/bin/bash
# demo-run.sh: the body of `make run` (mk/run.mk), run after deps and build.
#
# Starts drover on the spool under ./var/ (conf/run.ini, paths made absolute
# into var/run.ini), waits for `droverctl ping`, submits a batch of demo image
# jobs, shows live progress until every job has an outcome, prints a summary
# and stops drover with TERM. drover runs in its own session, so a Ctrl-C hits
# only this script, whose trap then stops drover gracefully as well.
#
# Environment: BUILD (build tree, default build), PYTHON, DEMO_JOBS (batch size,
# default 12), DEMO_DEADLINE_S (time allowed for the batch, default 180),
# DEMO_VAR (the working directory, default ./var),
# DEMO_MODE=persistent (one long-lived demo process per worker renders its
# max_concurrent jobs side by side: handler_mode = persistent; default exec).
# Exit status: 0 when every job completed and drover stopped cleanly, else 1
# (130/143 when interrupted).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
BUILD_DIR=${BUILD:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
JOBS=${DEMO_JOBS:-12}
MODE=${DEMO_MODE:-exec}
case $MODE in exec | persistent) ;; *) printf 'make run: DEMO_MODE=%s: exec or persistent\n' "$MODE" >&2; exit 1 ;; esac
BATCH_DEADLINE_S=${DEMO_DEADLINE_S:-180}
START_DEADLINE_S=15
STOP_DEADLINE_S=20 # conf/run.ini's shutdown_timeout_ms (10 s) plus a margin

VAR=${DEMO_VAR:-$ROOT/var}
case $VAR in /*) ;; *) VAR=$ROOT/$VAR ;; esac
CONF=$VAR/run.ini
LOG=$VAR/log/drover.log
SPOOL=$VAR/spool
IMAGES=$VAR/images
PIDFILE=$VAR/drover.pid
SOCK=$VAR/drover.sock
DROVER=$BUILD_DIR/drover
CTL=$BUILD_DIR/droverctl
DEMO=$BUILD_DIR/handlers/demo
# Debian's python3 (as the Makefile's PYTHON), only to read JSON: quick to start.
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3

DROVER_PID=
SOCK_DIR=

say() { printf '%s\n' "$*"; }
die() { printf 'make run: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# A zombie still answers kill -0, so look at the process state instead.
alive() {
	local state
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
	state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}

show_log_tail() {
	[ -s "$LOG" ] || return 0
	say "---- last lines of $LOG"
	tail -n 20 "$LOG" >&2 || true
}

# ---- configuration ---------------------------------------------------------

check_paths() {
	local exe
	for exe in "$DROVER" "$CTL" "$DEMO"; do
		[ -x "$exe" ] || die "$exe is missing: build first (make BUILD=${BUILD:-build} all)"
	done
	case $ROOT in *\"* | *\\*) die "the checkout path $ROOT contains a quote or backslash: move it" ;; esac
	# sun_path holds 108 bytes; a deep checkout puts the socket in /tmp instead.
	if [ ${#SOCK} -gt 100 ]; then
		SOCK_DIR=$(mktemp -d /tmp/drover-run.XXXXXX)
		SOCK=$SOCK_DIR/drover.sock
	fi
}

# conf/run.ini with every var/... and build/... word made absolute.
write_config() {
	mkdir -p "$VAR/log" "$IMAGES" "$SPOOL"
	awk -v var="$VAR" -v build="$BUILD_DIR" -v sock="$SOCK" -v mode="$MODE" '
		function absolute(word) {
			if (word ~ /^var\//) return var substr(word, 4)
			if (word ~ /^build\//) return build substr(word, 6)
			return word
		}
		/^[ \t]*[;#[]/ || !/=/ { print; next }
		{
			eq = index($0, "=")
			key = substr($0, 1, eq - 1); value = substr($0, eq + 1)
			gsub(/^[ \t]+|[ \t]+$/, "", key); gsub(/^[ \t]+|[ \t]+$/, "", value)
			if (key == "control_socket") { print key " = " sock; next }
			# persistent: each worker keeps one demo process holding all its jobs at once.
			if (key == "max_concurrent" && mode == "persistent")
				print "handler_mode = persistent\nhandler_concurrency = " value
			n = split(value, words, /[ \t]+/); out = ""
			for (i = 1; i <= n; i++) {
				word = absolute(words[i])
				if (key == "handler" && word ~ /[ \t]/) word = "\"" word "\""
				out = out (i > 1 ? " " : "") word
			}
			print key " = " out
		}' "$ROOT/conf/run.ini" >"$CONF.tmp"
	mv "$CONF.tmp" "$CONF"
	"$DROVER" -t -c "$CONF" || die "drover -t rejected $CONF (generated from conf/run.ini)"
}

# The value of key in the generated config (first occurrence).
setting() {
	awk -v key="$1" 'index($0, "=") {
		k = substr($0, 1, index($0, "=") - 1); v = substr($0, index($0, "=") + 1)
		gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
		if (k == key) { print v; exit }
	}' "$CONF"
}

# ---- starting and stopping drover ------------------------------------------

refuse_running_instance() {
	local pid
	pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
	if [ -n "$pid" ] && alive "$pid" && "$CTL" -s "$SOCK" ping >/dev/null 2>&1; then
		die "drover from an earlier run is still running (pid $pid): stop it with $CTL -s $SOCK stop"
	fi
}

start_drover() {
	local starter=()
	command -v setsid >/dev/null && starter=(setsid)
	: >>"$LOG"
	"${starter[@]}" "$DROVER" -c "$CONF" </dev/null >>"$LOG" 2>&1 &
	DROVER_PID=$!
	say "drover started: pid $DROVER_PID, config $CONF, log $LOG"
}

wait_for_ping() {
	local deadline=$(($(now_ms) + START_DEADLINE_S * 1000))
	until "$CTL" -s "$SOCK" ping >/dev/null 2>&1; do
		if ! alive "$DROVER_PID"; then
			local rc=0
			wait "$DROVER_PID" || rc=$?
			DROVER_PID=
			show_log_tail
			die "drover exited with status $rc before answering ping"
		fi
		[ "$(now_ms)" -lt "$deadline" ] || { show_log_tail; die "no answer to ping within ${START_DEADLINE_S} s"; }
		sleep 0.1
	done
}

# TERM, then wait for the exit with a deadline; KILL as the last resort. Sets STOP_STATUS.
STOP_STATUS=0
stop_drover() {
	[ -n "$DROVER_PID" ] || return 0
	local pid=$DROVER_PID started deadline
	DROVER_PID=
	started=$(now_ms)
	deadline=$((started + STOP_DEADLINE_S * 1000))
	if alive "$pid"; then
		say "stopping drover (TERM to pid $pid) ..."
		kill -TERM "$pid" 2>/dev/null || true
		while alive "$pid" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.1; done
		if alive "$pid"; then
			say "drover did not stop within ${STOP_DEADLINE_S} s: KILL" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	STOP_STATUS=0
	wait "$pid" 2>/dev/null || STOP_STATUS=$?
	say "drover stopped: exit status $STOP_STATUS after $(($(now_ms) - started)) ms"
}

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "$rc" -ge 128 ] && [ -n "$DROVER_PID" ]; then
		say "interrupted: running jobs may finish while drover drains; the others stay in $SPOOL/incoming/"
	fi
	stop_drover
	[ -z "$SOCK_DIR" ] || rm -rf "$SOCK_DIR"
	exit "$rc"
}

# ---- the batch -------------------------------------------------------------

PROMPTS=(
	"a lighthouse made of stained glass at dusk"
	"a red fox reading a newspaper in the snow"
	"an octopus playing four keyboards at once"
	"a teapot-shaped space station over Saturn"
	"a cathedral carved into a glacier"
	"a cat astronaut planting tulips on the moon"
	"a steam locomotive crossing a bridge of clouds"
	"a library where the books are tiny islands"
	"a robot painting sunflowers in Arles"
	"a koi pond reflecting a neon city"
	"a hot-air balloon shaped like a whale"
	"a desert made of blue sand under two suns"
)
IDS=()

submit_batch() {
	local stamp batch i prompt id
	stamp=$(date +%Y%m%d-%H%M%S)
	batch=$VAR/batch-$stamp.jsonl
	: >"$batch"
	for ((i = 0; i < JOBS; i++)); do
		prompt=${PROMPTS[i % ${#PROMPTS[@]}]}
		((i < ${#PROMPTS[@]})) || prompt="$prompt, take $((i / ${#PROMPTS[@]} + 1))"
		id=$(printf 'demo-%s-%02d' "$stamp" $((i + 1)))
		IDS+=("$id")
		printf '{"id":"%s","prompt":"%s"}\n' "$id" "$prompt" >>"$batch"
	done
	"$CTL" -c "$CONF" -s "$SOCK" submit "$batch" >/dev/null || die "droverctl submit $batch failed"
	say "submitted $JOBS jobs (${IDS[0]} .. ${IDS[JOBS - 1]}) from $batch"
}

COMPLETED=0
FAILED=0
count_outcomes() {
	local id
	COMPLETED=0 FAILED=0
	for id in "${IDS[@]}"; do
		if [ -e "$SPOOL/complete/$id.json" ]; then
			COMPLETED=$((COMPLETED + 1))
		elif [ -e "$SPOOL/failed/$id.json" ]; then
			FAILED=$((FAILED + 1))
		fi
	done
}

running_jobs() {
	"$CTL" -s "$SOCK" stats 2>/dev/null |
		"$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["jobs"]["in_flight"])' 2>/dev/null || echo "?"
}

# Terminal rows that text takes, long lines wrapping at the terminal's width.
rows_of() {
	local cols rows=0 text_line
	cols=$(tput cols 2>/dev/null || echo 80)
	((cols > 0)) || cols=80
	while IFS= read -r text_line; do
		rows=$((rows + (${#text_line} > 0 ? (${#text_line} + cols - 1) / cols : 1)))
	done <<<"$1"
	echo "$rows"
}

# On a terminal: the status table redrawn in place each second; else a line per change.
watch_batch() {
	local started deadline line last="" drawn=0 block="" live=false
	started=$(now_ms)
	deadline=$((started + BATCH_DEADLINE_S * 1000))
	[ -t 1 ] && [ "${TERM:-dumb}" != dumb ] && live=true
	while :; do
		! $live || block=$("$CTL" -s "$SOCK" status 2>&1 || true)
		count_outcomes
		line="completed $COMPLETED/$JOBS, failed $FAILED, running $(running_jobs), $((($(now_ms) - started) / 1000)) s"
		if $live; then
			((drawn == 0)) || printf '\033[%dA\033[J' "$drawn"
			printf '%s\n%s\n' "$block" "$line"
			drawn=$(rows_of "$block
$line")
		elif [ "${line%,*}" != "${last%,*}" ]; then
			say "$line"
		fi
		last=$line
		((COMPLETED + FAILED < JOBS)) || break
		alive "$DROVER_PID" || { show_log_tail; die "drover died while the batch ran"; }
		[ "$(now_ms)" -lt "$deadline" ] || { show_log_tail; die "the batch did not finish within ${BATCH_DEADLINE_S} s"; }
		sleep 1
	done
	BATCH_MS=$(($(now_ms) - started))
}

failure_reasons() {
	local id
	for id in "${IDS[@]}"; do
		[ -e "$SPOOL/failed/$id.json" ] || continue
		"$PYTHON" - "$SPOOL/failed/$id.json" <<-'EOF' 2>/dev/null || say "  $id: see $SPOOL/failed/$id.json"
			import json, sys
			doc = json.load(open(sys.argv[1]))
			err = doc.get("error", {})
			tail = (err.get("stderr_tail") or "").strip().splitlines()
			what = [str(err.get("reason"))]
			if err.get("exit_code") not in (None, -1):
			    what.append("exit %s" % err["exit_code"])
			if err.get("signal"):
			    what.append("signal %s" % err["signal"])
			print("  %s: %s, after %s attempt(s)%s" % (doc.get("id"), ", ".join(what), doc.get("attempts"),
			      ": " + tail[-1] if tail else ""))
		EOF
	done
}

# Persistent mode: which long-lived demo processes served the batch (from the last stats).
handler_summary() {
	[ "$MODE" = persistent ] || return 0
	"$PYTHON" - "$VAR/last-stats.json" <<-'EOF' 2>/dev/null || true
		import json, sys
		stats = json.load(open(sys.argv[1]))
		procs = [(h["pid"], h["jobs"]) for w in stats.get("workers", []) for h in w.get("handlers", [])]
		print("   handlers: %d long-lived demo processes served %d jobs (%s)"
		      % (len(procs), sum(j for _, j in procs), ", ".join("pid %d: %d" % p for p in procs)))
	EOF
}

summary() {
	local images
	images=$(find "$IMAGES" -maxdepth 1 -name 'demo-*.ppm' -newer "$CONF" | wc -l)
	say ""
	say "== demo batch: completed $COMPLETED/$JOBS, failed $FAILED, in $((BATCH_MS / 1000)).$(((BATCH_MS % 1000) / 100)) s"
	say "   images:   $IMAGES/ ($images new PPM files, e.g. ${IDS[0]}.ppm)"
	say "   outcomes: $SPOOL/complete/<id>.json, $SPOOL/failed/<id>.json"
	say "   log:      $LOG"
	handler_summary
	((FAILED == 0)) || { say "   failed jobs:"; failure_reasons; }
	say ""
}

main() {
	check_paths
	trap on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	write_config
	refuse_running_instance
	say "drover demo: $JOBS jobs, $(setting workers) workers x $(setting max_concurrent) jobs at once, $MODE handlers, spool $SPOOL"
	start_drover
	wait_for_ping
	submit_batch
	watch_batch
	"$CTL" -s "$SOCK" stats >"$VAR/last-stats.json" 2>/dev/null || true
	summary
	stop_drover
	((COMPLETED == JOBS)) || exit 1
	((STOP_STATUS == 0)) || die "drover exited with status $STOP_STATUS"
	say "make run: ok (stats at the end: $VAR/last-stats.json)"
}

main "$@"
