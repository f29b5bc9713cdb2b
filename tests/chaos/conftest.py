"""
conftest of the fault suite (make chaos): the integration tests' fixtures,
reused rather than copied (the mock Kafka cluster among them), plus a small tmpfs.

tests/integration/conftest.py is loaded under its own module name, so that
both directories can be collected in one pytest run without the two
conftest modules shadowing each other; its fixtures (workdir, drover: stop
by TERM, then KILL by pid, fail on leftovers or sanitizer reports) and its
report hook are re-exported here.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(INTEGRATION))
sys.path.insert(0, os.path.dirname(__file__))

_spec = importlib.util.spec_from_file_location("integration_conftest", INTEGRATION / "conftest.py")
integration_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integration_conftest)

# Re-exported: pytest finds fixtures and hooks by name in this module.
workdir = integration_conftest.workdir
drover = integration_conftest.drover
mock = integration_conftest.mock
pytest_runtest_makereport = integration_conftest.pytest_runtest_makereport

import chaos_lib  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slowest scenarios (run alone with -m slow, skip with -m 'not slow')")
    config.addinivalue_line("markers", "spool: scenario on the spool backend")
    config.addinivalue_line("markers", "kafka: scenario on the Kafka backend (mock cluster)")


@pytest.fixture
def chaos_handler(workdir):
    """(handler path, RunLog) for the test's own run directory."""
    return chaos_lib.write_handler(workdir)


@pytest.fixture
def small_disk(workdir):
    """A tmpfs of chaos_lib.SMALL_DISK_BYTES mounted at workdir/disk, unmounted at teardown.

    Request it before `drover` so that drover (and everything it started) is stopped
    before the unmount. Mounting needs root (CI runs as root): without it the test
    fails, it is not skipped.
    """
    mnt = Path(workdir) / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % chaos_lib.SMALL_DISK_BYTES,
                        "chaos-disk", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("cannot mount a tmpfs at %s (needs root): %s" % (mnt, r.stderr.strip()))
    yield mnt
    r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        # Still busy: detach it so that no mount outlives the test, and say so.
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        pytest.fail("umount %s failed (%s): something still used the small disk" % (mnt, r.stderr.strip()))
