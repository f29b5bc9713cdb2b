# chaos.mk: `make chaos`, the fault suite of tests/chaos (run by .ci/run after
# make test): a few hundred jobs on the spool and on the Kafka mock under one
# fault per scenario (kill -9 of workers and of the supervisor, a job that
# kills its worker, a job that cannot be exec'd, two instances with the same
# ids, a full disk, all brokers down), each checked against README
# "Guarantees under faults". The full-disk scenario mounts a tmpfs: root.
# CHAOS_ARGS passes pytest options: CHAOS_ARGS="-m slow" runs the slowest
# scenarios alone, CHAOS_ARGS="-m 'not slow'" the others, -k NAME one of them.

.PHONY: chaos
chaos: all test-support
	DROVER_BUILD=$(CURDIR)/$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider --durations=0 tests/chaos $(CHAOS_ARGS)
