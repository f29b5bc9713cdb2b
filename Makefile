# drover: a pre-forking job-worker supervisor.
#
#   make              build build/drover, build/droverctl and the demo handler (needs only the
#                     libraries: `make deps-build` installs them)
#   make run          install what is missing (build set), build, run a demo batch on the spool
#   make test         install what is missing (build and test sets), build, run every test
#                     (also under ASan/UBSan); `make check` is the same
#   make deps         install every missing Debian package (as root): deps-build, deps-test, deps-package
#   make test-libs    the Python and Node handler libraries' tests (lib/, tests/lib)
#   make lint         cppcheck and clang-tidy
#   make install      PREFIX=/usr/local DESTDIR=   (mk/install.mk)
#   make bench        drover side by side with the spawn ceiling and a Python pool (mk/bench.mk)
#   make package-test the Debian package and the service files (mk/packaging.mk)
#
# Sources are found by wildcard so that a new module needs no Makefile edit:
# shared/*.c, queue/*.c and worker/*.c form a library linked into both programs
# and the unit tests; supervisor/*.c but main.c form libsupervisor.a, linked
# into drover and the unit tests; ctl/*.c is droverctl's own.
# Layers (check-layers): shared <- queue <- worker <- supervisor; ctl uses shared
# and queue only. Includes are path-qualified: #include "queue/spool.h".
# Compiling depends on the sources and the libraries only: no rule installs
# packages as a side effect, so a non-root `make` works once the libraries are there.

VERSION   := 0.1.0
PREFIX    ?= /usr/local
DESTDIR   ?=
BUILD     ?= build
CC        ?= cc
PYTHON    ?= /usr/bin/python3

# Libraries found with pkg-config. Adding one is one word here: its Debian package
# (lib<name>-dev, "lib" not doubled) joins the build set by itself.
PKGS      := rdkafka jansson inih
# Compiled against, loaded at run time only when used (dlopen by soname): libmicrohttpd
# brings GnuTLS and its constructor, about 2 MiB a process, for the optional HTTP endpoint.
DLOPEN_PKGS := libmicrohttpd
# Debian's libev-dev ships no libev.pc: linked by name (package libev-dev).
NOPC_LIBS := ev
PKG_MISSING := $(if $(shell command -v pkg-config),$(shell for p in $(PKGS) $(DLOPEN_PKGS); do pkg-config --exists $$p || echo $$p; done),pkg-config)
PKG_CFLAGS  := $(if $(PKG_MISSING),,$(shell pkg-config --cflags $(PKGS) $(DLOPEN_PKGS)))
PKG_LIBS    := $(if $(PKG_MISSING),,$(shell pkg-config --libs $(PKGS)))
MHD_SONAME  := $(if $(PKG_MISSING),,$(shell objdump -p "$$(pkg-config --variable=libdir libmicrohttpd)/libmicrohttpd.so" 2>/dev/null | sed -n 's/^ *SONAME *//p'))
# Expanded in compile and link recipes only: `make deps` and `make clean` work without the libraries.
need_libs  = $(if $(PKG_MISSING),$(error not found by pkg-config: $(PKG_MISSING); `make deps-build` (as root) installs the build set))

CPPFLAGS  += -D_GNU_SOURCE -DDROVER_VERSION='"$(VERSION)"' -I. $(PKG_CFLAGS)
CFLAGS    ?= -O2 -g
# Kept apart from CFLAGS so that a CFLAGS given on the command line (the sanitizer tree,
# debian/rules) keeps the warnings.
WARNINGS  := -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2 -Wmissing-prototypes -Wno-unused-parameter -fno-strict-aliasing
# --as-needed: a program records only the libraries it uses.
LDLIBS    += -Wl,--as-needed $(PKG_LIBS) $(NOPC_LIBS:%=-l%) -lm

LIB_SRC   := $(sort $(wildcard shared/*.c queue/*.c worker/*.c))
SUP_SRC   := $(sort $(wildcard supervisor/*.c))
CTL_SRC   := $(sort $(wildcard ctl/*.c))
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))
SUPPORT_SRC := $(sort $(wildcard tests/support/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
SUP_OBJ   := $(SUP_SRC:%.c=$(BUILD)/%.o)
SUP_MAIN  := $(BUILD)/supervisor/main.o
CTL_OBJ   := $(CTL_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
SUPPORT_BIN := $(SUPPORT_SRC:tests/support/%.c=$(BUILD)/support/%)

PROGRAMS  := $(BUILD)/drover $(BUILD)/droverctl $(BUILD)/handlers/demo

# Debian packages, installed only when missing (deps-*). The build set is all that
# `make` needs; the test set adds what `make test`, `make lint` and `make bench` run;
# the packaging set what `make deb` and `make package-test` run.
DEB_BUILD   := build-essential pkg-config $(foreach lib,$(PKGS) $(DLOPEN_PKGS) $(NOPC_LIBS),lib$(lib:lib%=%)-dev)
DEB_TEST    := libcriterion-dev kcat python3 python3-pytest python3-pytest-xdist python3-confluent-kafka procps util-linux \
               strace prometheus cppcheck clang-tidy curl python3-yaml nodejs
DEB_PACKAGE := debhelper dpkg-dev fakeroot lintian systemd init-system-helpers logrotate groff-base shellcheck

.PHONY: all deps deps-build deps-test deps-package test check unit integration test-support test-libs lint clean asan \
        check-layers check-monitoring
all: check-layers $(PROGRAMS)

# What the integration tests, the fault suite and the bench start besides the programs (the Kafka mock).
test-support: $(SUPPORT_BIN)

# A lower layer never includes a higher one, and every project include names its folder.
LAYERS_ABOVE_shared     := queue worker supervisor ctl
LAYERS_ABOVE_queue      := worker supervisor ctl
LAYERS_ABOVE_worker     := supervisor ctl
LAYERS_ABOVE_supervisor := ctl
LAYERS_ABOVE_ctl        := worker supervisor
check-layers:
	@bad=0; for layer in shared queue worker supervisor ctl; do \
	  case $$layer in shared) above="$(LAYERS_ABOVE_shared)";; queue) above="$(LAYERS_ABOVE_queue)";; \
	    worker) above="$(LAYERS_ABOVE_worker)";; supervisor) above="$(LAYERS_ABOVE_supervisor)";; ctl) above="$(LAYERS_ABOVE_ctl)";; esac; \
	  for up in $$above; do \
	    if grep -Hn "#include \"$$up/" $$layer/*.[ch]; then echo "check-layers: $$layer/ must not include $$up/" >&2; bad=1; fi; \
	  done; \
	  if grep -Hn '#include "[^/"]*"' $$layer/*.[ch]; then echo "check-layers: name the folder in project includes" >&2; bad=1; fi; \
	done; exit $$bad

# Installs the missing packages of the sets named; as a non-root user it only names them.
# A target that needs two sets installs them in one call: two apt-get runs at once (make -j)
# would fight over dpkg's lock.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or install:$$missing" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install_missing,$(DEB_BUILD) $(DEB_TEST) $(DEB_PACKAGE))
deps-build:
	$(call install_missing,$(DEB_BUILD))
deps-test:
	$(call install_missing,$(DEB_TEST))
deps-package:
	$(call install_missing,$(DEB_PACKAGE))

$(BUILD)/%.o: %.c
	$(need_libs)@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) -MMD -MP -c -o $@ $<

# The soname the endpoint loads: that of the libmicrohttpd compiled against.
$(BUILD)/supervisor/http.o: CPPFLAGS += $(if $(MHD_SONAME),-DHTTP_LIBRARY='"$(MHD_SONAME)"')

$(BUILD)/libdrover.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/libsupervisor.a: $(filter-out $(SUP_MAIN),$(SUP_OBJ))
	ar rcs $@ $^

$(BUILD)/drover: $(SUP_MAIN) $(BUILD)/libsupervisor.a $(BUILD)/libdrover.a
	$(CC) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/droverctl: $(CTL_OBJ) $(BUILD)/libdrover.a
	$(CC) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/handlers/%: handlers/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $< -lm

$(BUILD)/support/%: tests/support/%.c
	$(need_libs)@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

# Every unit test may use the supervisor's modules; the archive order lets them use the library.
$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libsupervisor.a $(BUILD)/libdrover.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

-include $(LIB_OBJ:.o=.d) $(SUP_OBJ:.o=.d) $(CTL_OBJ:.o=.d)

# ---- tests -------------------------------------------------------------
# The sanitizer tree is the same sources built in build-asan/ (redis' SANITIZER switch).
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t --jobs 2; done

asan:
	$(MAKE) BUILD=build-asan CFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" all test-support \
	  $(UNIT_SRC:tests/unit/%.c=build-asan/tests/%)

# Integration tests start the real programs; DROVER_BUILD picks the tree to test. They
# mostly wait on processes, so two pytest workers share them, a whole file each (a file's
# module fixtures, like test_upgrade's second build, run once): PYTEST_PARALLEL= runs them in one.
PYTEST_PARALLEL ?= -n 2 --dist loadfile
integration: all test-support
	DROVER_BUILD=$(CURDIR)/$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) tests/integration $(PYTEST_ARGS)

# The handler libraries (lib/python, lib/node) driven over pipes by the real python3 and node.
test-libs:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/lib $(PYTEST_ARGS)

# The packages first, then a fresh make: pkg-config is asked when the Makefile is read.
test:
	$(call install_missing,$(DEB_BUILD) $(DEB_TEST))
	$(MAKE) all unit asan check-monitoring
	$(MAKE) test-libs
	@set -e; for t in $(UNIT_SRC:tests/unit/%.c=build-asan/tests/%); do echo "== (asan) $$t"; $(SAN_ENV) $$t --jobs 2; done
	$(MAKE) integration
	$(SAN_ENV) DROVER_BUILD=$(CURDIR)/build-asan $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) -m asan tests/integration
	$(MAKE) bench-tiny

check: test

# The dashboard and alert rules of packaging/monitoring/: promtool and a JSON check, against stats.c's metrics.
check-monitoring:
	promtool check rules packaging/monitoring/drover-alerts.yml
	cd packaging/monitoring && promtool test rules drover-alerts.test.yml
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/monitoring

lint: deps-test
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --suppress=missingIncludeSystem --inline-suppr $(CPPFLAGS) shared queue worker supervisor ctl handlers
	@# One file per run: clang-tidy 14 reports false va_list findings when it analyses several at once.
	@set -e; for f in $(LIB_SRC) $(SUP_SRC) $(CTL_SRC) $(wildcard handlers/*.c); do \
	  echo "clang-tidy $$f"; clang-tidy --quiet $$f -- $(CPPFLAGS) -std=gnu11; done

clean:
	rm -rf build build-asan

# Fragments owned by other parts of the tree (run, bench, packaging) add their targets here.
-include $(sort $(wildcard mk/*.mk))
