#!/bin/sh
# drover's container entrypoint.
#
#   drover-entrypoint [DROVER OPTIONS]   check the configuration, then exec drover
#   drover-entrypoint COMMAND [ARGS]     run COMMAND instead (droverctl, sh, ...)
#
# The configuration is the file given with -c (default /etc/drover/drover.ini,
# where a ConfigMap or bind mount usually puts it). When there is none, a
# minimal one is written and drover's own environment overrides do the rest:
# PROCESSING_WORKER_INSTANCES, MAX_CONCURRENT_GENERATIONS,
# GENERATION_TIMEOUT_MS, USE_KAFKA, KAFKA_BROKERS, KAFKA_* and
# DROVER_<SECTION>_<KEY> for every key (they win over the file and survive
# reloads). drover then replaces this shell (exec) and runs in the foreground
# as PID 1: it receives docker's or the kubelet's SIGTERM itself, drains,
# and reaps every orphan, so no init such as tini is needed.
set -eu

EX_CONFIG=78

case "${1:-}" in
'' | -*) ;;
*) exec "$@" ;;
esac

config=/etc/drover/drover.ini
expect_config=
for arg in "$@"; do
	if [ -n "$expect_config" ]; then
		config=$arg
		expect_config=
		continue
	fi
	case "$arg" in
	-c) expect_config=1 ;;
	-c?*) config=${arg#-c} ;;
	esac
done

write_minimal_config() {
	mkdir -p "$(dirname "$config")" && cat >"$config" <<'EOF'
; Written by drover's container entrypoint because no configuration was
; mounted. Everything else comes from the built-in defaults and the
; environment: PROCESSING_WORKER_INSTANCES, MAX_CONCURRENT_GENERATIONS,
; GENERATION_TIMEOUT_MS, USE_KAFKA, KAFKA_BROKERS, KAFKA_* and
; DROVER_<SECTION>_<KEY> (see drover.ini(5)).
[supervisor]
log_file = -
EOF
}

if [ ! -e "$config" ]; then
	if ! write_minimal_config; then
		echo "drover-entrypoint: no configuration at $config and cannot write one there;" \
			"mount a drover.ini or make $(dirname "$config") writable" >&2
		exit $EX_CONFIG
	fi
	echo "drover-entrypoint: no configuration mounted; wrote a minimal $config (environment configures the rest)" >&2
fi

# Refuse to start on a broken configuration, with every error in the log.
drover -t -c "$config" "$@" >&2

exec drover -c "$config" "$@"
