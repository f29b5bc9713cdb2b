# bench.mk: `make bench` (not part of make test): jobs/s through the spool pool
# with a trivial handler, and the restart time of a worker after kill -9.
# BENCH_JOBS=N sets the batch size (default 1000); tests/bench/bench.py.

.PHONY: bench
bench: all
	DROVER_BUILD=$(CURDIR)/$(BUILD) $(if $(BENCH_JOBS),BENCH_JOBS=$(BENCH_JOBS)) $(PYTHON) tests/bench/bench.py
