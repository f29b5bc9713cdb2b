# drover: a pre-forking job-worker supervisor.
#
#   make            build build/drover, build/droverctl and the demo handler
#   make run        install what is missing, build, run a demo batch on the spool
#   make test       install what is missing, build, run every test (also under ASan/UBSan)
#   make test-libs  the Python and Node handler libraries' tests (lib/, tests/lib)
#   make lint       cppcheck and clang-tidy
#   make install    PREFIX=/usr/local DESTDIR=   (mk/install.mk)
#   make bench      drover side by side with the spawn ceiling and a Python pool (mk/bench.mk)
#
# Sources are found by wildcard so that a new module needs no Makefile edit:
# shared/*.c, queue/*.c and worker/*.c form a library linked into both programs
# and the unit tests; supervisor/*.c is drover's own; ctl/*.c is droverctl's own.
# Layers (check-layers): shared <- queue <- worker <- supervisor; ctl uses shared
# and queue only. Includes are path-qualified: #include "queue/spool.h".

VERSION   := 0.1.0
PREFIX    ?= /usr/local
DESTDIR   ?=
BUILD     ?= build
CC        ?= cc
PYTHON    ?= /usr/bin/python3

PKGS      := rdkafka libev jansson inih
CPPFLAGS  += -D_GNU_SOURCE -DDROVER_VERSION='"$(VERSION)"' -I.
CFLAGS    ?= -O2 -g
# Kept apart from CFLAGS so that a CFLAGS given on the command line (the sanitizer tree,
# debian/rules) keeps the warnings.
WARNINGS  := -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter -fno-strict-aliasing
LDLIBS    += -lrdkafka -lev -ljansson -linih -lm

LIB_SRC   := $(sort $(wildcard shared/*.c queue/*.c worker/*.c))
SUP_SRC   := $(sort $(wildcard supervisor/*.c))
CTL_SRC   := $(sort $(wildcard ctl/*.c))
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))
SUPPORT_SRC := $(sort $(wildcard tests/support/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
SUP_OBJ   := $(SUP_SRC:%.c=$(BUILD)/%.o)
CTL_OBJ   := $(CTL_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
SUPPORT_BIN := $(SUPPORT_SRC:tests/support/%.c=$(BUILD)/support/%)

PROGRAMS  := $(BUILD)/drover $(BUILD)/droverctl $(BUILD)/handlers/demo

# Debian packages the build, the tests and the demo need; installed only when missing.
DEB_BUILD := build-essential pkg-config librdkafka-dev libev-dev libjansson-dev libinih-dev
DEB_TEST  := libcriterion-dev kcat python3 python3-pytest procps util-linux cppcheck clang-tidy \
             prometheus debhelper dpkg-dev fakeroot lintian systemd shellcheck \
             init-system-helpers logrotate groff-base python3-confluent-kafka strace nodejs
DEPS_STAMP := $(BUILD)/.deps

.PHONY: all deps test unit integration test-libs lint clean asan check-layers
all: check-layers $(PROGRAMS) $(SUPPORT_BIN)

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

deps: $(DEPS_STAMP)
$(DEPS_STAMP):
	@missing=""; for p in $(DEB_BUILD) $(DEB_TEST); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or install:$$missing" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) -MMD -MP -c -o $@ $<

$(BUILD)/libdrover.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/drover: $(SUP_OBJ) $(BUILD)/libdrover.a
	$(CC) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/droverctl: $(CTL_OBJ) $(BUILD)/libdrover.a
	$(CC) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/handlers/%: handlers/%.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $< -lm

$(BUILD)/support/%: tests/support/%.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libdrover.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARNINGS) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

-include $(LIB_OBJ:.o=.d) $(SUP_OBJ:.o=.d) $(CTL_OBJ:.o=.d)

# ---- tests -------------------------------------------------------------
# The sanitizer tree is the same sources built in build-asan/ (redis' SANITIZER switch).
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t --jobs 2; done

asan: | $(DEPS_STAMP)
	$(MAKE) BUILD=build-asan CFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" all $(UNIT_SRC:tests/unit/%.c=build-asan/tests/%)

# Integration tests start the real programs; DROVER_BUILD picks the tree to test.
integration: all
	DROVER_BUILD=$(CURDIR)/$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# The handler libraries (lib/python, lib/node) driven over pipes by the real python3 and node.
test-libs: | $(DEPS_STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/lib $(PYTEST_ARGS)

test: deps all unit asan
	$(MAKE) test-libs
	@set -e; for t in $(UNIT_SRC:tests/unit/%.c=build-asan/tests/%); do echo "== (asan) $$t"; $(SAN_ENV) $$t --jobs 2; done
	$(MAKE) integration
	$(SAN_ENV) DROVER_BUILD=$(CURDIR)/build-asan $(PYTHON) -m pytest -q -p no:cacheprovider -m asan tests/integration
	$(MAKE) bench-tiny

lint: deps
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --suppress=missingIncludeSystem --inline-suppr $(CPPFLAGS) shared queue worker supervisor ctl handlers
	@# One file per run: clang-tidy 14 reports false va_list findings when it analyses several at once.
	@set -e; for f in $(LIB_SRC) $(SUP_SRC) $(CTL_SRC) $(wildcard handlers/*.c); do \
	  echo "clang-tidy $$f"; clang-tidy --quiet $$f -- $(CPPFLAGS) -std=gnu11; done

clean:
	rm -rf build build-asan

# Fragments owned by other parts of the tree (run, bench, packaging) add their targets here.
-include $(sort $(wildcard mk/*.mk))
