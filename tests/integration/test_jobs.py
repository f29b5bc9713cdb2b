"""
Job outcomes on the spool (README: The handler protocol, The spool): retries, permanent
failures, no-retry exit codes, invalid messages, oversized results, timeouts
with process-group kill, progress in stats, a handler that cannot start.
"""

import datetime
import json

import pytest

from harness import TEST_HANDLER, pgid_alive, proc_alive, proc_status_kb, wait_until


def iso_to_unix(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def spawned_at(start_record, timeout_ms):
    """When drover started the attempt (Unix s): DROVER_DEADLINE_MS - timeout_ms, as the handler saw it.

    The handler's own start time is no good for timing: Python start-up on a loaded machine adds up to a second.
    """
    assert start_record.get("deadline_ms"), "the handler saw no DROVER_DEADLINE_MS: %r" % start_record
    return (int(start_record["deadline_ms"]) - timeout_ms) / 1000.0


def only(records, what):
    assert len(records) == 1, "expected exactly one %s, got %r" % (what, records)
    return records[0]


@pytest.mark.asan
def test_fails_twice_then_succeeds(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    ids = d.submit([{"id": "flaky", "fail_times": 2, "state_dir": str(d.state)}])
    assert ids == ["flaky"], "droverctl submit should print the job's id"
    done, failed = d.wait_outcomes(ids, 20)
    assert "flaky" not in failed, failed.get("flaky")
    doc = done["flaky"]
    assert doc["id"] == "flaky"
    assert doc["attempts"] == 3, doc
    assert doc["result"] == {"ok": True, "id": "flaky", "attempt": "3", "worker": doc["result"]["worker"]}, \
        "result must be the handler's stdout parsed as JSON: %r" % doc
    for key in ("duration_ms", "worker", "host", "finished_at"):
        assert key in doc, "complete document lacks %r: %r" % (key, doc)
    assert [r["attempt"] for r in d.starts("flaky")] == ["1", "2", "3"]
    jobs = d.stats()["jobs"]
    assert jobs["retried"] == 2 and jobs["completed"] == 1 and jobs["failed"] == 0, jobs
    d.wait_queue_empty()


def test_always_fails_after_max_attempts_with_growing_delay(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"retry_delay_ms": 300, "max_attempts": 3}})
    marker = "doomed-stderr-marker"
    job = {"id": "doomed", "exit": 3, "stderr_bytes": 6000, "stderr": marker + "\n", "record_dir": str(d.records)}
    d.submit([job])
    done, failed = d.wait_outcomes(["doomed"], 20)
    assert "doomed" not in done
    doc = failed["doomed"]
    assert doc["attempts"] == 3, doc
    err = doc["error"]
    assert err["reason"] == "exit_code" and err["exit_code"] == 3, err
    tail = err["stderr_tail"]
    assert tail.rstrip().endswith(marker), "stderr_tail must end with the handler's last stderr: %r" % tail[-200:]
    assert 4000 <= len(tail.encode()) <= 4096, "stderr tail should be the last 4 KiB, got %d bytes" % len(tail)
    assert doc["job"] == job, "failed document must carry the original message as JSON: %r" % doc["job"]
    for key in ("worker", "host", "failed_at"):
        assert key in doc, "failed document lacks %r" % key

    starts, ends = d.starts("doomed"), d.ends("doomed")
    assert [r["attempt"] for r in starts] == ["1", "2", "3"]
    timeout = int(d.config["jobs"]["timeout_ms"])
    gaps = [spawned_at(starts[i + 1], timeout) - ends[i]["t"] for i in range(2)]
    # retry_delay_ms before the 2nd attempt, doubled before the 3rd.
    assert gaps[0] >= 0.29 and gaps[1] >= 0.59, "retry delays %r should be >= 0.3s then >= 0.6s" % gaps
    assert gaps[0] < 1.3 and gaps[1] < 1.6, "retry delays %r far above retry_delay_ms 300 (then 600)" % gaps
    jobs = d.stats()["jobs"]
    assert jobs["failed"] == 1 and jobs["retried"] == 2, jobs


def test_no_retry_exit_code_fails_at_once(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    d.submit([{"id": "dataerr", "exit": 65}, {"id": "usage", "exit": 64}])
    done, failed = d.wait_outcomes(["dataerr", "usage"], 15)
    for job_id, code in (("dataerr", 65), ("usage", 64)):
        doc = failed.get(job_id)
        assert doc is not None, "%s should fail (done: %r)" % (job_id, done.get(job_id))
        assert doc["attempts"] == 1, doc
        assert doc["error"]["reason"] == "exit_code" and doc["error"]["exit_code"] == code, doc
        assert len(d.starts(job_id)) == 1, "a no-retry exit code must not be retried"


def test_invalid_json_never_reaches_handler(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"max_concurrent": 1}})
    d.enqueue_raw("garbage-1", "this is not json {")
    d.enqueue_raw("array-1", "[1, 2, 3]")
    d.enqueue_raw("string-1", '"just a string"')
    d.submit([{"id": "after-invalid"}])

    def invalid_docs():
        docs = [f for f in d.failed().values() if f.get("error", {}).get("reason") == "invalid_job"]
        return docs if len(docs) == 3 and "after-invalid" in d.complete() else None
    docs = d.wait_until(invalid_docs, 15, "three invalid_job failures and the valid job done")
    jobs = sorted(json.dumps(doc["job"]) for doc in docs)
    assert jobs == sorted(json.dumps(j) for j in ("this is not json {", [1, 2, 3], "just a string")), \
        "failed.job must be the original message (JSON when it parses, else a string): %r" % jobs
    ids = sorted(doc["id"] for doc in docs)
    assert all(doc["attempts"] <= 1 for doc in docs), docs
    assert ids == ["array-1", "garbage-1", "string-1"], "an id-less spool job's id is its file name: %r" % ids
    assert d.starts("?invalid") == [], "the handler was started for a message that is not a JSON object"
    assert [r["id"] for r in d.starts()] == ["after-invalid"]
    d.wait_queue_empty()


def test_result_too_large_and_worker_memory_bounded(drover):
    limit = 4096
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"max_result_bytes": limit, "max_attempts": 1, "max_concurrent": 1}})
    stats = d.wait_workers(1)
    worker = stats["workers"][0]["pid"]
    hwm_before = proc_status_kb(worker, "VmHWM")
    d.submit([{"id": "edge", "big_output": limit}])
    done, failed = d.wait_outcomes(["edge"], 15)
    assert "edge" in done, "exactly max_result_bytes of output must be accepted: %r" % failed.get("edge")
    assert done["edge"]["result"] == "x" * limit, "a non-JSON result is embedded as a string"

    d.submit([{"id": "huge", "big_output": 48 * 1024 * 1024}])
    done, failed = d.wait_outcomes(["huge"], 30)
    assert "huge" in failed, "48 MiB of stdout with max_result_bytes %d must fail" % limit
    assert failed["huge"]["error"]["reason"] == "result_too_large", failed["huge"]["error"]
    assert d.worker_pids().get(stats["workers"][0]["slot"]) == worker, "the worker died producing the failure"
    hwm_after = proc_status_kb(worker, "VmHWM")
    assert hwm_after - hwm_before < 16 * 1024, \
        "worker peak memory grew by %d KiB while a handler wrote 48 MiB: output is not capped" % (
            hwm_after - hwm_before)


@pytest.mark.asan
def test_timeouts_kill_the_whole_group(drover):
    # timeout_ms well above Python's start-up on a loaded 2-core machine, so that "steady" is not timed out.
    timeout, grace = 2500, 500
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"timeout_ms": timeout, "kill_grace_ms": grace, "max_attempts": 1}})
    gc_file = d.tmp / "grandchild.pid"
    d.submit([
        {"id": "sleeper", "sleep_ms": 20000},
        {"id": "stubborn", "sleep_ms": 20000, "ignore_term": True},
        {"id": "forker", "sleep_ms": 20000, "grandchild": str(gc_file), "grandchild_ignore_term": True},
        {"id": "steady"},
    ])
    done, failed = d.wait_outcomes(["sleeper", "stubborn", "forker", "steady"], 20)
    assert "steady" in done, "a job next to timed-out ones must complete: %r" % failed.get("steady")
    grandchild = int(gc_file.read_text())
    for job_id in ("sleeper", "stubborn", "forker"):
        doc = failed.get(job_id)
        assert doc is not None, "%s should have failed with timeout, got %r" % (job_id, done.get(job_id))
        assert doc["error"]["reason"] == "timeout", doc["error"]
        start = only(d.starts(job_id), "start of " + job_id)
        elapsed = iso_to_unix(doc["failed_at"]) - spawned_at(start, timeout)
        assert elapsed >= timeout / 1000.0 - 0.05, "%s failed after %.2fs, before timeout_ms" % (job_id, elapsed)
        assert elapsed <= (timeout + grace) / 1000.0 + 1.0, \
            "%s failed after %.2fs; timeout+grace is %.2fs" % (job_id, elapsed, (timeout + grace) / 1000.0)
        wait_until(lambda: not pgid_alive(start["pgid"]), 1.0,
                   "process group %d of %s to be gone" % (start["pgid"], job_id))
    stubborn = iso_to_unix(failed["stubborn"]["failed_at"]) - spawned_at(only(d.starts("stubborn"), "start"), timeout)
    assert stubborn >= (timeout + grace) / 1000.0 - 0.3, \
        "a SIGTERM-ignoring handler ended after %.2fs, before kill_grace_ms ran out" % stubborn
    assert not proc_alive(grandchild), "the grandchild %d (ignores SIGTERM) outlived its job" % grandchild
    jobs = d.stats()["jobs"]
    assert jobs["timed_out"] == 3 and jobs["failed"] == 3 and jobs["completed"] == 1, jobs


def test_a_grandchild_that_left_the_group_does_not_outlive_its_job(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"timeout_ms": 10000}})
    gc_file = d.tmp / "escaped.pid"
    d.submit([{"id": "escaper", "grandchild": str(gc_file), "grandchild_setsid": True,
               "grandchild_ignore_term": True, "grandchild_ms": 20000}])
    done, failed = d.wait_outcomes(["escaper"], 15)
    assert "escaper" in done, failed.get("escaper")
    escaped = int(gc_file.read_text())
    start = only(d.starts("escaper"), "start")
    assert escaped != start["pgid"]
    wait_until(lambda: not proc_alive(escaped), 5.0,
               "the grandchild %d, which left the job's process group with setsid, to be gone" % escaped)


def test_handler_exit_decides_not_eof_and_kills_leftovers(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"timeout_ms": 10000}})
    gc_file = d.tmp / "grandchild.pid"
    # The grandchild keeps stdout and stderr open and ignores SIGTERM.
    d.submit([{"id": "orphaner", "grandchild": str(gc_file), "grandchild_ignore_term": True,
               "grandchild_ms": 20000}])
    done, failed = d.wait_outcomes(["orphaner"], 15)
    assert "orphaner" in done, failed.get("orphaner")
    start = only(d.starts("orphaner"), "start")
    took = iso_to_unix(done["orphaner"]["finished_at"]) - spawned_at(start, 10000)
    # Waiting for EOF would have lasted until timeout_ms (10 s): the grandchild holds stdout for 20 s.
    assert took < 8, "completion took %.1fs: the outcome waited for EOF instead of the exit status" % took
    grandchild = int(gc_file.read_text())
    wait_until(lambda: not proc_alive(grandchild), 2.0, "the handler's leftover grandchild %d to be killed"
               % grandchild)


def test_progress_shows_in_stats(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    hold = d.tmp / "release"
    d.submit([{"id": "prog", "progress": [0.25, {"progress": 0.5, "message": "half"}], "hold_file": str(hold)}])

    def job_in_stats():
        for w in d.stats()["workers"]:
            for j in w.get("jobs", []):
                if j["id"] == "prog" and j.get("progress") is not None and abs(j["progress"] - 0.5) < 1e-6:
                    return w, j
        return None
    worker, job = d.wait_until(job_in_stats, 10, "job prog with progress 0.5 in stats")
    assert job["attempt"] == 1 and job["age_ms"] >= 0, job
    assert worker["in_flight"] == 1, worker
    hold.touch()
    d.wait_outcomes(["prog"], 10)
    d.wait_until(lambda: all(not w.get("jobs") for w in d.stats()["workers"]), 5, "no job left in stats")


def test_handler_that_cannot_start_is_a_pool_fault_not_a_job_failure(drover, workdir):
    # argv[0] itself must be missing for exec to fail, so the handler is an executable copy, not python + script.
    bindir = workdir / "bin"
    bindir.mkdir()
    exe = bindir / "handler"
    exe.write_text("#!/usr/bin/python3\n" + TEST_HANDLER.read_text())
    exe.chmod(0o755)
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": str(exe)}})
    d.wait_workers(1)
    hidden = bindir / "handler.away"
    exe.rename(hidden)
    # Enqueued by hand: droverctl validates the whole config, handler included, and refuses now.
    d.enqueue_raw("patient.json", json.dumps({"id": "patient", "record_dir": str(d.records)}))

    def fault_shown():
        w = d.stats()["workers"][0]
        return w if w.get("fault") else None
    worker = d.wait_until(fault_shown, 10, "the worker to show the pool fault in stats")
    assert "handler" in worker["fault"], worker
    assert d.failed() == {} and d.complete() == {}, "a handler that cannot start must not fail the job"
    assert d.stats()["jobs"]["failed"] == 0

    hidden.rename(exe)
    done, failed = d.wait_outcomes(["patient"], 15)
    assert "patient" in done, "after the fault clears the job must run: %r" % failed
    assert done["patient"]["attempts"] == 1, "the attempts that could not start do not count: %r" % done["patient"]
    d.wait_until(lambda: not d.stats()["workers"][0].get("fault"), 5, "the fault to clear in stats")
