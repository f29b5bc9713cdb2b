"""
The handler libraries (lib/python's drover_handler, lib/node's drover-handler) under a real
drover in persistent mode: jobs complete on long-lived processes, a timeout's cancel is
honoured and the process serves on, error frames retry or fail at once. The libraries' own
tests (tests/lib) drive them over pipes; these check that drover and they agree.
"""

import pytest

from harness import PYTHON, REPO

NODE = "/usr/bin/node"
HANDLERS = {
    "python-sync": "%s %s sync" % (PYTHON, REPO / "tests" / "handlers" / "libhandler.py"),
    "python-async": "%s %s async" % (PYTHON, REPO / "tests" / "handlers" / "libhandler.py"),
    "node": "%s %s" % (NODE, REPO / "tests" / "handlers" / "libhandler.js"),
}


@pytest.fixture(params=sorted(HANDLERS))
def handler(request):
    return HANDLERS[request.param]


def config(handler, **jobs):
    return {"supervisor": {"workers": 1},
            "jobs": dict({"handler": handler, "handler_mode": "persistent", "max_concurrent": 2,
                          "handler_concurrency": 2}, **jobs)}


def test_jobs_complete_on_one_long_lived_process(drover, handler):
    d = drover(config=config(handler))
    ids = d.submit([{"id": "e%d" % i, "do": "echo"} for i in range(6)])
    done, failed = d.wait_outcomes(ids, 30)
    assert not failed, failed
    assert {doc["result"]["echo"]["id"] for doc in done.values()} == set(ids)
    assert len({doc["result"]["pid"] for doc in done.values()}) == 1, "one process served every job"
    assert all(doc["attempts"] == 1 for doc in done.values())


def test_a_timeout_cancel_is_honoured_and_the_process_serves_on(drover, handler):
    d = drover(config=config(handler, timeout_ms=1000, max_attempts=1))
    d.submit([{"id": "slow", "do": "slow"}])
    _, failed = d.wait_outcomes(["slow"], 30)
    assert failed["slow"]["error"]["reason"] == "timeout", failed["slow"]
    d.submit([{"id": "after", "do": "echo"}])
    done, _ = d.wait_outcomes(["after"], 30)
    w = d.stats()["workers"][0]
    assert w["handler_restarts"] == 0 and w["handler_protocol_errors"] == 0, w
    assert [h["pid"] for h in w["handlers"]] == [done["after"]["result"]["pid"]], w


def test_errors_retry_and_permanent_errors_do_not(drover, handler):
    d = drover(config=config(handler, max_attempts=2, retry_delay_ms=50))
    d.submit([{"id": "p", "do": "permanent"}, {"id": "f", "do": "fail"}])
    _, failed = d.wait_outcomes(["p", "f"], 30)
    assert failed["p"]["attempts"] == 1 and failed["p"]["error"]["reason"] == "handler_error", failed["p"]
    assert failed["p"]["error"]["message"] == "bad input", failed["p"]
    assert failed["f"]["attempts"] == 2 and "try again" in failed["f"]["error"]["message"], failed["f"]
    assert d.stats()["workers"][0]["handler_restarts"] == 0


def test_a_slow_persistent_job_is_logged_with_its_process_and_counted(drover):
    """slow_job_ms holds in persistent mode too: one warning per attempt, naming the handler process."""
    d = drover(config=config(HANDLERS["python-sync"], slow_job_ms=300, timeout_ms=1500, max_attempts=1))
    d.submit([{"id": "slowpoke", "do": "slow"}, {"id": "quick", "do": "echo"}])
    done, _ = d.wait_outcomes(["quick"], 30)
    pid = done["quick"]["result"]["pid"]
    d.wait_until(lambda: "job=slowpoke attempt=1 handler=%d has run longer than slow_job_ms (300 ms)" % pid
                 in d.log_text(), 10, "the slow-job warning")
    d.wait_outcomes(["slowpoke"], 30)
    assert d.stats()["saturation"]["slow_total"] == 1
    assert not [l for l in d.log_text().splitlines() if "job=quick " in l and "has run longer" in l]
    assert d.log_text().count("has run longer than slow_job_ms") == 1, "one warning per attempt"
