"""
Jobs cannot stall, loop or touch one another (issue 8 items 1-3): a job whose
id cannot be passed to a handler fails alone; a job that kills its worker
stops at max_attempts; what an attempt leaves behind outside its process group
is found among the worker's own children by the attempt's token, never by the
job id, so another instance's job or a second copy of the same id is never
touched, and a helper of a running attempt lives until that attempt ends.

The handler is tests/handlers/orphaner.py; records it leaves say which
processes ran and when.
"""

import json
import os
import signal

import pytest

from harness import PYTHON, REPO, proc_alive, proc_stat, read_records, wait_until

ORPHANER = REPO / "tests" / "handlers" / "orphaner.py"
HANDLER = "%s %s" % (PYTHON, ORPHANER)


def records(d, kind, tag=None):
    """The orphaner's start or end records, oldest first (optionally of one tag)."""
    return read_records(d.records, kind, "tag", tag)


def wait_records(d, kind, tag, n=1, timeout=20):
    return d.wait_until(lambda: len(records(d, kind, tag)) >= n and records(d, kind, tag), timeout,
                        "%d %s record(s) of %s" % (n, kind, tag))


def read_pid(path, d, timeout=20):
    def pid():
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None
    return d.wait_until(pid, timeout, "a pid in %s" % path)


def faults(d):
    return [w.get("fault") for w in d.stats()["workers"] if w.get("fault")]


# ---- issue 8 item 2: a job that cannot be exec'd fails alone ----------------------------

@pytest.mark.asan
def test_an_id_too_long_for_a_handler_environment_fails_that_job_alone(drover):
    d = drover(config={"supervisor": {"workers": 2}, "jobs": {"handler": HANDLER}})
    workers = {w["slot"]: w["pid"] for w in d.wait_workers(2)["workers"]}
    huge = "h" * (200 * 1024)
    # Dropped by hand (droverctl refuses such an id): 200 KiB cannot be passed in DROVER_JOB_ID.
    d.enqueue_raw("huge-id.json", json.dumps({"id": huge, "record_dir": str(d.records)}))
    # And one that would forge log lines.
    d.enqueue_raw("newline-id.json", json.dumps({"id": "forged\nline", "record_dir": str(d.records)}))
    innocents = ["innocent-%d" % i for i in range(6)]
    d.submit([{"id": i} for i in innocents])

    # The spool fails them under their file names' ids, which are safe to show and log.
    def settled():
        docs = {doc.get("id"): doc for doc in d.failed().values()}
        ready = "huge-id" in docs and "newline-id" in docs and set(innocents) <= set(d.complete())
        return docs if ready else None
    docs = d.wait_until(settled, 20, "the bad-id jobs to fail and the innocent jobs to complete")
    err = docs["huge-id"]["error"]
    assert err["reason"] == "invalid_job", err
    assert "1024" in (err.get("message") or ""), err
    err = docs["newline-id"]["error"]
    assert err["reason"] == "invalid_job" and "control character" in (err.get("message") or ""), err
    assert sorted(r["tag"] for r in records(d, "start")) == innocents, "a handler ran for a bad id"
    d.wait_queue_empty()
    assert faults(d) == [], "a job's own exec problem must not be a pool fault"
    assert d.worker_pids() == workers, "the workers must carry on"
    assert "cannot be started" not in d.log_text()


# ---- issue 8 item 1: a job that kills its worker stops at max_attempts ---------------

def test_a_job_that_kills_its_worker_runs_max_attempts_times_then_fails(drover):
    d = drover(config={"supervisor": {"workers": 2},
                       "jobs": {"handler": HANDLER, "max_attempts": 3, "max_concurrent": 1}})
    d.wait_workers(2)
    d.submit([{"id": "assassin", "kill_worker": True}])
    bystanders = ["bystander-%d" % i for i in range(6)]
    d.submit([{"id": i} for i in bystanders])
    done, failed = d.wait_outcomes(["assassin"] + bystanders, 60)
    assert set(bystanders) <= set(done), "innocent jobs must complete: failed %r" % sorted(failed)
    doc = failed.get("assassin")
    assert doc is not None, "the job that kills its worker must fail, not complete"
    assert doc["error"]["reason"] == "worker_lost", doc["error"]
    assert "max_attempts is 3" in doc["error"]["message"], doc["error"]
    assert doc["attempts"] == 3, doc
    d.wait_queue_empty()
    starts = records(d, "start", "assassin")
    assert [r["attempt"] for r in starts] == ["1", "2", "3"], starts


# ---- issue 8 item 3: the sweep never touches another job's processes ---------------------

def test_two_instances_running_the_same_id_leave_each_other_alone(drover):
    config = {"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER}}
    a = drover(config=config, name="a")
    b = drover(config=config, name="b")
    hold = b.tmp / "release"
    b.submit([{"id": "dup-1", "hold_file": str(hold)}])
    b_handler = wait_records(b, "start", "dup-1")[0]["pid"]
    a.submit([{"id": "dup-1"}])
    done, failed = a.wait_outcomes(["dup-1"], 20)
    assert "dup-1" in done, failed
    # A's attempt ended (and was swept) before its outcome was written: B's handler must still run.
    assert proc_alive(b_handler), "instance a's end of dup-1 killed instance b's handler of dup-1"
    hold.touch()
    done, failed = b.wait_outcomes(["dup-1"], 20)
    assert failed == {} and done["dup-1"]["attempts"] == 1, (done, failed)
    assert len(records(b, "start", "dup-1")) == 1, "b's copy of dup-1 had to run again"


def test_the_same_id_twice_in_one_worker_both_complete(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER, "max_concurrent": 2}})
    hold = d.tmp / "release"
    d.enqueue_raw("first.json", json.dumps({"id": "twin", "tag": "first", "hold_file": str(hold),
                                            "record_dir": str(d.records)}))
    first = wait_records(d, "start", "first")[0]["pid"]
    # A client resubmits the id (an idempotency key) while the first copy runs.
    d.enqueue_raw("second.json", json.dumps({"id": "twin", "tag": "second", "record_dir": str(d.records)}))
    wait_records(d, "end", "second")
    d.wait_until(lambda: "twin" in d.complete(), 20, "the second copy's outcome")
    assert proc_alive(first), "the end of the second copy killed the first copy's handler"
    hold.touch()
    wait_records(d, "end", "first")
    d.wait_queue_empty(10)
    assert d.failed() == {}, d.failed()
    assert list(d.complete()) == ["twin"]
    assert len(records(d, "start", "first")) == 1 and len(records(d, "start", "second")) == 1, \
        "a copy ran twice: %r" % records(d, "start")


@pytest.mark.asan
def test_a_helper_orphaned_by_a_running_attempt_lives_until_that_attempt_ends(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER, "max_concurrent": 2}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    hold, helper_file = d.tmp / "release", d.tmp / "helper.pid"
    d.submit([{"id": "parent", "helper": str(helper_file), "hold_file": str(hold)}])
    helper = read_pid(helper_file, d)
    # Double-forked and setsid: out of the job's group, and orphaned to the worker (a child subreaper).
    d.wait_until(lambda: (proc_stat(helper) or (None, 0, 0))[1] == worker, 10,
                 "the helper %d to become a child of the worker %d" % (helper, worker))
    assert proc_stat(helper)[2] != wait_records(d, "start", "parent")[0]["pgid"]
    # Other attempts end meanwhile, each one sweeping the worker's children.
    short = ["short-%d" % i for i in range(4)]
    d.submit([{"id": i} for i in short])
    d.wait_outcomes(short, 30)
    assert proc_alive(helper), "the helper of a running attempt was killed when another attempt ended"
    hold.touch()
    done, failed = d.wait_outcomes(["parent"], 20)
    assert "parent" in done, failed
    wait_until(lambda: proc_stat(helper) is None, 5,
               "the helper %d of the ended attempt to be killed and reaped" % helper)


def test_a_helper_that_dropped_its_token_outlives_the_attempt_and_is_reaped(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    helper_file = d.tmp / "helper.pid"
    d.submit([{"id": "daemonizer", "helper": str(helper_file), "helper_detached": True, "helper_ms": 2000,
               "sleep_ms": 300}])
    helper = read_pid(helper_file, d)
    done, failed = d.wait_outcomes(["daemonizer"], 20)
    assert "daemonizer" in done, failed
    # Detached for good (no token): not the job's any more, so not killed; but it is the worker's child.
    assert proc_alive(helper), "a process without the attempt's token was killed"
    assert proc_stat(helper)[1] == worker, proc_stat(helper)
    d.submit([{"id": "after"}])
    d.wait_outcomes(["after"], 20)
    wait_until(lambda: proc_stat(helper) is None, 10, "the helper %d to exit and be reaped (no zombie)" % helper)


@pytest.mark.asan
def test_a_killed_worker_leaves_no_escaped_process_of_its_jobs(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    hold, helper_file = d.tmp / "release", d.tmp / "helper.pid"
    d.submit([{"id": "stranded", "helper": str(helper_file), "hold_file": str(hold)}])
    helper = read_pid(helper_file, d)
    d.wait_until(lambda: (proc_stat(helper) or (None, 0, 0))[1] == worker, 10,
                 "the helper %d to become a child of the worker %d" % (helper, worker))
    handler = wait_records(d, "start", "stranded")[0]["pid"]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not proc_alive(handler) and not proc_alive(helper), 5,
               "the dead worker's handler %d and its escaped helper %d to be gone" % (handler, helper))
    hold.touch()
    done, failed = d.wait_outcomes(["stranded"], 30)
    assert "stranded" in done and done["stranded"]["attempts"] == 2, (done, failed)


# ---- the final sweep at supervisor exit ---------------------------------------------

def pids_with_token(token):
    """Every process whose environment carries this attempt token (a /proc search: the test's own check)."""
    needle = ("DROVER_ATTEMPT_TOKEN=%s" % token).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def test_an_escapee_orphaned_after_the_last_worker_died_does_not_outlive_the_supervisor(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": HANDLER}})
    d.wait_workers(1)
    escapee_file = d.tmp / "escapee.pid"
    d.submit([{"id": "late", "late_escapee": str(escapee_file)}])
    escapee = read_pid(escapee_file, d)
    try:
        token = wait_records(d, "start", "late")[0]["token"]
        d.wait_outcomes(["late"], 20)
        # The escapee's keeper has no token, so no sweep touched it; the escapee is not a child of drover's.
        d.wait_until(lambda: escapee in pids_with_token(token), 10, "the escapee %d to carry the token" % escapee)
        assert proc_alive(escapee), "the escapee died before the stop"
        assert d.stop() == 0, d.diagnostics()
        left = pids_with_token(token)
        assert left == [], "processes with the attempt token %s outlived the supervisor: %s" % (token, left)
    finally:
        if proc_alive(escapee):
            os.kill(escapee, signal.SIGKILL)
