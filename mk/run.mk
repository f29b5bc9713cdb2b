# run.mk: `make run`, the demo. Installs what is missing of the build set
# (deps-build), builds (all, in a fresh make that finds the new libraries),
# then mk/demo-run.sh starts drover on a spool under ./var/ (conf/run.ini),
# submits a batch of demo image jobs, shows progress, prints a summary and
# stops drover gracefully. DEMO_JOBS=N changes the batch size; DEMO_MODE=persistent
# runs the demo as long-lived handler processes (handler_mode = persistent).

.PHONY: run
run: deps-build
	$(MAKE) all
	BUILD=$(BUILD) PYTHON=$(PYTHON) bash mk/demo-run.sh
