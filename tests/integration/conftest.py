"""
conftest: fixtures for the integration tests.

`drover` makes Drover instances (harness.py) in the test's `workdir` and, at
teardown, stops each one (TERM, then KILL by pid), kills whatever of it is
still alive by pid, and fails the test if anything had to be killed or a
sanitizer reported an error. `figures` records measurements that are printed
at the end of the run. The `asan` marker selects the tests `make test` runs a
second time against build-asan/.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402
import kafka_harness as kh  # noqa: E402

FIGURES = []


def pytest_configure(config):
    config.addinivalue_line("markers", "asan: also run against the ASan/UBSan build (make test, DROVER_BUILD=build-asan)")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("drover measurements (build: %s)" % harness.BUILD)
        for name, value, unit in FIGURES:
            terminalreporter.write_line("%-50s %10.3f %s" % (name, value, unit))


@pytest.fixture
def figures(request):
    # Carried in the report's user_properties, so that they reach the summary from xdist's workers too.
    def record(name, value, unit=""):
        request.node.user_properties.append(("figure", (name, float(value), unit)))
        print("figure: %s = %.3f %s" % (name, value, unit))
    return record


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        FIGURES.extend(tuple(value) for key, value in report.user_properties if key == "figure")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def workdir(request):
    """A fresh directory under /tmp for one test; removed when the test passed, kept (and named) when not
    or when POOLTEST_KEEP is set.

    Not pytest's tmp_path: its numbered directories are shared with every other
    pytest run on the machine and pruned by them while a test may still use one.
    """
    path = Path(tempfile.mkdtemp(prefix="drover-it-%s-" % request.node.name[5:30]))
    yield path
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed and not os.environ.get("POOLTEST_KEEP"):
        shutil.rmtree(path, ignore_errors=True)
    else:
        sys.stderr.write("\nkept %s for %s\n" % (path, request.node.nodeid))
        request.node.add_report_section("teardown", "workdir", "kept %s" % path)


@pytest.fixture
def drover(workdir):
    """drover(config={...}, env={...}, name="d", start=True) -> a started (unless start=False) Drover."""
    missing = [str(p) for p in (harness.DROVER, harness.DROVERCTL) if not p.exists()]
    if missing:
        pytest.fail("not built: %s (run make, or set DROVER_BUILD)" % ", ".join(missing))
    made = []

    def make(config=None, env=None, name=None, start=True):
        d = harness.Drover(workdir, config=config, env=env, name=name or "d%d" % len(made))
        made.append(d)
        if start:
            d.start()
        return d

    yield make

    problems = []
    for d in made:
        if d.proc is None:
            continue
        try:
            problems.extend(cleanup(d))
        except Exception as e:  # keep cleaning up the other instances
            problems.append("cleaning up drover %s: %r" % (d.mark, e))
    assert not problems, "\n".join(problems)


def cleanup(d):
    """Stops d and everything it started, by pid; returns what was wrong."""
    problems = []
    alive_before = d.alive()
    d.stop()
    if alive_before and d.exit_code is None:
        problems.append("drover %s did not stop on SIGTERM and was killed\n%s" % (d.mark, d.diagnostics(15)))
    left = d.kill_leftovers()
    if left:
        problems.append("processes of drover %s were still alive after it stopped and were killed: %s"
                        % (d.mark, left))
    reports = d.sanitizer_reports()
    if reports:
        problems.append("sanitizer reports in drover %s output:\n%s" % (d.mark, "\n".join(reports[:20])))
    return problems


@pytest.fixture
def mock(workdir):
    """mock(topics=None, brokers=1): a librdkafka mock cluster in its own process, stopped after the test."""
    made = []

    def make(topics=None, brokers=1):
        m = kh.MockBroker(workdir, topics or kh.default_topics(), brokers=brokers)
        made.append(m)
        return m
    yield make
    for m in made:
        m.stop()
