# bench.mk: `make bench`: drover side by side with the spawn ceiling
# (tests/bench/spawn_ceiling.c) and, on the Kafka mock cluster, with a Python
# peer pool (tests/bench/peer_pool.py); persistent handlers against exec mode
# and a prefork pool (tests/bench/prefork_pool.py), a Node handler with 20 jobs
# in flight, handler RSS and drover's CPU per job; table on stdout, JSON in
# $(BUILD)/bench.json. At most about 7 minutes (2.5 for the persistent-handler
# rows); not timed in make test, which runs `make bench-tiny`
# (BENCH_SCALE=tiny) only to keep the tool working.
# Knobs: BENCH_SCALE=tiny|full, BENCH_JOBS, BENCH_PAIRS, BENCH_SPOOL=2x4,3x4,
# BENCH_KAFKA=2x4 ("" skips Kafka), BENCH_WARM=2x4 ("" skips the persistent-
# handler rows), BENCH_ONLY (row groups, e.g. persistent-tmpfs,persistent-kafka),
# BENCH_RSS_JOBS, BENCH_JSON; see tests/bench/bench.py.

BENCH_BIN := $(BUILD)/bench/spawn_ceiling
BENCH_ENV  = DROVER_BUILD=$(CURDIR)/$(BUILD) \
             $(foreach v,BENCH_SCALE BENCH_JOBS BENCH_PAIRS BENCH_SPOOL BENCH_KAFKA BENCH_WARM BENCH_ONLY BENCH_RSS_JOBS BENCH_JSON BENCH_KEEP,$(if $(filter undefined,$(origin $(v))),,$(v)="$($(v))"))

.PHONY: bench bench-tiny
bench: all test-support $(BENCH_BIN)
	$(BENCH_ENV) $(PYTHON) tests/bench/bench.py

# The tiny run checks only that every figure is produced and the JSON is well formed.
bench-tiny: all test-support $(BENCH_BIN)
	$(BENCH_ENV) BENCH_SCALE=tiny BENCH_JSON=$(CURDIR)/$(BUILD)/bench-tiny.json $(PYTHON) tests/bench/bench.py
	$(PYTHON) tests/bench/check_report.py $(CURDIR)/$(BUILD)/bench-tiny.json

$(BUILD)/bench/%: tests/bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $<

# make lint covers the bench's C too.
.PHONY: lint-bench
lint: lint-bench
lint-bench: deps-test
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --suppress=missingIncludeSystem --inline-suppr $(CPPFLAGS) tests/bench
	@set -e; for f in $(wildcard tests/bench/*.c); do \
	  echo "clang-tidy $$f"; clang-tidy --quiet $$f -- $(CPPFLAGS) -std=gnu11; done
