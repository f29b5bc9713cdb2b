"""
conftest: fixtures of the packaging tests (run by `make package-test`, as
root: they start daemons, enter PID namespaces and install the package).
DROVER_BUILD names the build tree to test (default: build/).
"""

import os
import sys
from pathlib import Path

import pytest

# pkghelpers here; harness, the helpers every suite shares, in tests/integration.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pkghelpers as h  # noqa: E402


def pytest_collection_modifyitems(session, config, items):
    # The .deb test installs and purges a system package: it runs last, after
    # everything that uses the build tree.
    items.sort(key=lambda item: 1 if "test_pkg_zz_deb" in item.nodeid else 0)


@pytest.fixture(scope="session", autouse=True)
def built_programs():
    missing = [str(p) for p in (h.DROVER, h.DROVERCTL, h.DEMO) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail("not built: %s (run `make package-test`, or set DROVER_BUILD)" % ", ".join(missing))
    if os.geteuid() != 0:
        pytest.fail("the packaging tests need root (namespaces, init script, dpkg)")


@pytest.fixture(scope="session")
def staged_install(tmp_path_factory):
    """`make install PREFIX=/usr DESTDIR=...` of the tested build: the packaged layout."""
    root = tmp_path_factory.mktemp("stage")
    h.make_install(root, prefix="/usr")
    return root
