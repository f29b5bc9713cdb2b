# mk/install.mk: `make install` and `make uninstall` (PREFIX, DESTDIR).
#
#   make install                      -> /usr/local/{sbin,bin,lib/drover,etc/drover,share/man}
#   make install PREFIX=/usr          -> /usr/..., configuration in /etc/drover
#   make install DESTDIR=/tmp/stage   -> the same under a staging root (packages)
#
# droverctl's bash completion goes to $(PREFIX)/share/bash-completion/completions,
# where bash-completion looks (XDG_DATA_DIRS: /usr/local/share, /usr/share).
# The handler libraries go where each ecosystem looks (README "Handler libraries"):
# drover_handler in Debian python3's dist-packages (/usr/lib/python3/dist-packages
# with PREFIX=/usr, $(PREFIX)/lib/python3.X/dist-packages otherwise, which is what
# Debian's python3 reads for /usr/local); drover-handler in $(PREFIX)/share/nodejs
# (Debian's nodejs reads /usr/share/nodejs) with a link in $(PREFIX)/lib/node, the
# folder an upstream node installed in PREFIX reads (nodesource's /usr/bin/node: /usr/lib/node).
#
# The configuration is a reference file meant to be edited, so a plain
# `make install` never overwrites an existing one; a staged install (DESTDIR)
# always writes it. Its handler path is rewritten when the handlers do not
# live in /usr/lib/drover. The service files (init script, systemd unit,
# logrotate) come with the Debian package (`make deb`), whose paths they name.

SBINDIR    ?= $(PREFIX)/sbin
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
MANDIR     ?= $(PREFIX)/share/man
DATADIR    ?= $(PREFIX)/share
MONITORING := packaging/monitoring/drover-dashboard.json packaging/monitoring/drover-alerts.yml \
              packaging/monitoring/drover-alerts.test.yml
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
HANDLERDIR := $(LIBDIR)/drover/handlers
PYTHON_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYTHONDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(PYTHON_VERSION)/dist-packages)
NODEDIR    ?= $(PREFIX)/share/nodejs
NODE_LINKDIR ?= $(PREFIX)/lib/node
PY_LIB     := lib/python/drover_handler/__init__.py
NODE_LIB   := lib/node/drover-handler/index.js lib/node/drover-handler/package.json
CONF_DEST  := $(DESTDIR)$(SYSCONFDIR)/drover/drover.ini

MAN8 := packaging/man/drover.8 packaging/man/droverctl.8
MAN5 := packaging/man/drover.ini.5

.PHONY: install install-programs install-config install-man install-monitoring install-completion install-libs uninstall

install: install-programs install-config install-man install-monitoring install-completion install-libs

install-programs: $(BUILD)/drover $(BUILD)/droverctl $(BUILD)/handlers/demo
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(HANDLERDIR)
	install -m 0755 $(BUILD)/drover $(DESTDIR)$(SBINDIR)/drover
	install -m 0755 $(BUILD)/droverctl $(DESTDIR)$(BINDIR)/droverctl
	install -m 0755 $(BUILD)/handlers/demo $(DESTDIR)$(HANDLERDIR)/demo

install-config: conf/drover.ini
	@if [ -z "$(DESTDIR)" ] && [ -e "$(CONF_DEST)" ]; then \
	  echo "install: keeping the existing $(CONF_DEST) (reference: conf/drover.ini)"; \
	else \
	  echo "install -m 0644 conf/drover.ini $(CONF_DEST)"; \
	  install -d $(dir $(CONF_DEST)) && \
	  sed 's|/usr/lib/drover/handlers/|$(HANDLERDIR)/|g' conf/drover.ini > $(CONF_DEST).tmp && \
	  chmod 0644 $(CONF_DEST).tmp && mv $(CONF_DEST).tmp $(CONF_DEST); \
	fi

install-man: $(MAN8) $(MAN5)
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5
	install -m 0644 $(MAN8) $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/

# The Grafana dashboard and Prometheus alert rules, for operators to copy into their monitoring.
install-monitoring: $(MONITORING)
	install -d $(DESTDIR)$(DATADIR)/drover/monitoring
	install -m 0644 $(MONITORING) $(DESTDIR)$(DATADIR)/drover/monitoring/

install-completion: packaging/bash-completion/droverctl
	install -d $(DESTDIR)$(BASHCOMPDIR)
	install -m 0644 packaging/bash-completion/droverctl $(DESTDIR)$(BASHCOMPDIR)/droverctl

install-libs: $(PY_LIB) $(NODE_LIB)
	install -d $(DESTDIR)$(PYTHONDIR)/drover_handler $(DESTDIR)$(NODEDIR)/drover-handler $(DESTDIR)$(NODE_LINKDIR)
	install -m 0644 $(PY_LIB) $(DESTDIR)$(PYTHONDIR)/drover_handler/
	install -m 0644 $(NODE_LIB) $(DESTDIR)$(NODEDIR)/drover-handler/
	ln -sfnr $(DESTDIR)$(NODEDIR)/drover-handler $(DESTDIR)$(NODE_LINKDIR)/drover-handler

# Leaves the configuration: it may hold local changes.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/drover $(DESTDIR)$(BINDIR)/droverctl $(DESTDIR)$(HANDLERDIR)/demo
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(MAN8))) $(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(MAN5)))
	rm -rf $(DESTDIR)$(PYTHONDIR)/drover_handler $(DESTDIR)$(NODEDIR)/drover-handler
	rm -f $(DESTDIR)$(NODE_LINKDIR)/drover-handler
	rm -f $(addprefix $(DESTDIR)$(DATADIR)/drover/monitoring/,$(notdir $(MONITORING)))
	-rmdir $(DESTDIR)$(DATADIR)/drover/monitoring $(DESTDIR)$(DATADIR)/drover 2>/dev/null
	rm -f $(DESTDIR)$(BASHCOMPDIR)/droverctl
	-rmdir $(DESTDIR)$(HANDLERDIR) $(DESTDIR)$(LIBDIR)/drover 2>/dev/null
