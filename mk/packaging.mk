# mk/packaging.mk: the Debian package and the packaging tests.
#
#   make deb            debian-build/drover_$(VERSION)_<arch>.deb (dpkg-buildpackage -us -uc -b)
#   make deb-lintian    lintian on what `make deb` built
#   make package-test   tests/packaging: init script, readiness, PID 1, install, the .deb
#
# dpkg-buildpackage wants debian/ at the top of the source; it lives in
# packaging/debian, so the package is built in a copy of the tree under
# debian-build/ (build trees, .git and ./var left out), never in the checkout.

DEB_STAGE := debian-build
DEB_SRC   := $(DEB_STAGE)/drover-$(VERSION)
DEB_ARCH   = $(shell dpkg --print-architecture)
DEB_FILE   = $(DEB_STAGE)/drover_$(VERSION)_$(DEB_ARCH).deb

.PHONY: deb deb-lintian package-test

deb:
	$(call install_missing,$(DEB_BUILD) $(DEB_PACKAGE))
	rm -rf $(DEB_STAGE)
	mkdir -p $(DEB_SRC)
	tar -c --exclude=./.git --exclude=./build --exclude='./build-*' --exclude=./$(DEB_STAGE) \
	    --exclude=./var --exclude=__pycache__ -f - . | tar -x -C $(DEB_SRC)
	cp -R packaging/debian $(DEB_SRC)/debian
	cd $(DEB_SRC) && dpkg-buildpackage -us -uc -b -J
	@echo "built $(DEB_FILE)"

deb-lintian:
	lintian --info --display-info --pedantic $(DEB_STAGE)/drover_$(VERSION)_$(DEB_ARCH).changes

# Needs root: it starts daemons, enters PID namespaces and installs the package
# (the .deb test runs last and purges what it installed).
package-test:
	$(call install_missing,$(DEB_BUILD) $(DEB_PACKAGE))
	$(MAKE) $(BUILD)/drover $(BUILD)/droverctl $(BUILD)/handlers/demo
	DROVER_BUILD=$(CURDIR)/$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider tests/packaging $(PYTEST_ARGS)
