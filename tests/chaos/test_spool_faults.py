"""
test_spool_faults: a few hundred jobs through drover on the spool under one
fault per scenario (kill -9 of workers, of the supervisor, a job that kills
its worker, a job that cannot be exec'd, two instances with the same ids, a
full disk), each checked against the contract of README "Guarantees under
faults" with chaos_lib's checks.
"""

import errno
import os
import time

import pytest

import chaos_lib as cl
from harness import proc_alive, wait_until

pytestmark = pytest.mark.spool

JOBS = 300
WORKERS = 3
MAX_CONCURRENT = 4
# What a worker has in flight from the queue's side: its running jobs, and finished ones whose outcome
# waits for the group commit (the worker starts the next job meanwhile): README "Guarantees under faults".
IN_FLIGHT_PER_WORKER = 2 * MAX_CONCURRENT
MAX_ATTEMPTS = 3


def spool_config(handler, runlog, workers=WORKERS, max_concurrent=MAX_CONCURRENT, supervisor=None, **jobs):
    return {
        "supervisor": dict({"workers": workers, "log_level": "info", "restart_delay_ms": 100,
                            "restart_delay_max_ms": 1000}, **(supervisor or {})),
        "jobs": cl.handler_jobs_config(handler, runlog, max_concurrent=max_concurrent, max_attempts=MAX_ATTEMPTS,
                                       retry_delay_ms=50, timeout_ms=60000, **jobs),
    }


def batch(prefix, n=JOBS, **fields):
    ids = ["%s-%03d" % (prefix, i) for i in range(n)]
    return ids, [cl.job_json(i, **fields) for i in ids]


def count_complete(d):
    return len(d.spool_files("complete"))


def busy_worker(d):
    """A running worker with jobs in flight, or None."""
    busy = [w for w in d.stats()["workers"] if w.get("pid") and w.get("state") == "running" and w["in_flight"] > 0]
    return busy[0] if busy else None


def assert_healthy(d):
    rc, out = d.ctl("health")
    assert rc == 0, "health should pass: rc %d, %s %s" % (rc, out, d.last_ctl_err)


def finish(d, runlog, watch, completed, failed=0, slack=0):
    """What every scenario checks once its jobs are done: completed and failed outcomes were settled."""
    d.wait_queue_empty(timeout=15)
    cl.assert_nothing_left(d, runlog)
    s = d.wait_workers(d.config["supervisor"]["workers"], timeout=20)
    assert not cl.pool_faults(s), "a fault is still shown after the run: %s" % cl.pool_faults(s)
    assert_healthy(d)
    watch.stop()
    watch.assert_monotonic()
    cl.assert_counters(d.stats(), completed, failed, slack=slack)
    cl.stop_and_assert_gone(d, runlog)


def test_spool_kill9_workers(drover, chaos_handler):
    handler, runlog = chaos_handler
    d = drover(config=spool_config(handler, runlog))
    d.wait_workers(WORKERS)
    ids, jobs = batch("kw", sleep=0.2)
    kills = []
    with cl.StatsWatcher(d) as watch:
        d.submit(jobs)
        # Four kills, spread over the batch by its progress (not by the clock): each one hits a
        # worker that has jobs in flight.
        for threshold in (30, 80, 130, 180):
            d.wait_until(lambda: count_complete(d) >= threshold, 60, "%d jobs complete" % threshold)
            victim = d.wait_until(lambda: busy_worker(d), 20, "a worker with jobs in flight")
            cl.kill9(victim["pid"])
            kills.append(victim)
        cl.wait_spool_outcomes(d, ids, 120, runlog, limits={i: MAX_ATTEMPTS for i in ids})
        cl.assert_exactly_once_spool(d, ids)
        # At-least-once: what a kill repeats is at most what its worker had in flight.
        bound = len(kills) * IN_FLIGHT_PER_WORKER
        cl.assert_runs_bounded(runlog, ids, MAX_ATTEMPTS, bound, "kill -9 of %d workers" % len(kills))
        restarts = sum(w["restarts"] for w in d.stats()["workers"])
        assert restarts == len(kills), "stats show %d restarts after %d kills" % (restarts, len(kills))
        finish(d, runlog, watch, len(ids), slack=bound)


def test_spool_kill9_supervisor_then_fresh_start(drover, chaos_handler):
    handler, runlog = chaos_handler
    d = drover(config=spool_config(handler, runlog, supervisor={"shutdown_timeout_ms": 3000}))
    d.wait_workers(WORKERS)
    ids, jobs = batch("ks", sleep=0.1)
    d.submit(jobs)
    d.wait_until(lambda: count_complete(d) >= 80, 60, "80 jobs complete")
    family = d.descendants()
    cl.kill9(d.pid)
    d.proc.wait(timeout=10)
    # Its workers notice the supervisor's death and stop; nothing of the old instance may stay.
    wait_until(lambda: not any(proc_alive(p) for p in family) and not d.descendants()
               and not cl.live_handlers(runlog, d.mark), 15,
               "the dead supervisor's workers and handlers to exit",
               on_timeout=lambda: "alive: %r" % {p: c for p, c in family.items() if proc_alive(p)})
    before = count_complete(d)
    d.start()
    d.wait_workers(WORKERS)
    with cl.StatsWatcher(d) as watch:
        cl.wait_spool_outcomes(d, ids, 120, runlog, limits={i: MAX_ATTEMPTS for i in ids})
        cl.assert_exactly_once_spool(d, ids)
        bound = WORKERS * IN_FLIGHT_PER_WORKER
        cl.assert_runs_bounded(runlog, ids, MAX_ATTEMPTS, bound, "kill -9 of the supervisor")
        d.wait_queue_empty(timeout=15)
        cl.assert_nothing_left(d, runlog)
        watch.stop()
        watch.assert_monotonic()
        # The new supervisor counts what it settled: the jobs left when it started.
        cl.assert_counters(d.stats(), len(ids) - before, 0, slack=bound)
    assert_healthy(d)
    cl.stop_and_assert_gone(d, runlog)


def test_spool_job_that_kills_its_worker(drover, chaos_handler):
    handler, runlog = chaos_handler
    d = drover(config=spool_config(handler, runlog))
    d.wait_workers(WORKERS)
    ids, jobs = batch("kj", sleep=0.05)
    killers = ["killer-1", "killer-2"]
    limits = {i: MAX_ATTEMPTS for i in ids + killers}
    with cl.StatsWatcher(d) as watch:
        d.submit(jobs[:100] + [cl.job_json(killers[0], kill_worker=True)] + jobs[100:200]
                 + [cl.job_json(killers[1], kill_worker=True)] + jobs[200:])
        cl.wait_spool_outcomes(d, ids + killers, 120, runlog, limits=limits)
        collateral = cl.worker_lost_collateral(runlog, cl.spool_outcomes(d)[1], ids, MAX_ATTEMPTS)
        print("innocent jobs that died with a killer %d times: %s" % (MAX_ATTEMPTS, sorted(collateral)))
        cl.assert_exactly_once_spool(d, ids + killers, expect_failed=dict(collateral, **{k: "worker_lost"
                                                                                        for k in killers}))
        killer_runs = sum(runlog.counts()[k] for k in killers)
        # Each killer run takes its worker's other jobs down with it.
        bound = killer_runs * (IN_FLIGHT_PER_WORKER - 1)
        cl.assert_runs_bounded(runlog, ids, MAX_ATTEMPTS, bound, "%d runs of jobs that kill their worker"
                               % killer_runs)
        d.wait_workers(WORKERS, timeout=20)
        restarts = sum(w["restarts"] for w in d.stats()["workers"])
        assert restarts == killer_runs, "stats show %d restarts, the killers ran %d times" % (restarts, killer_runs)
        finish(d, runlog, watch, len(ids) - len(collateral), failed=len(killers) + len(collateral), slack=bound)


def test_spool_exec_failing_job_fails_alone(drover, chaos_handler):
    handler, runlog = chaos_handler
    d = drover(config=spool_config(handler, runlog))
    d.wait_workers(WORKERS)
    ids, jobs = batch("ex", sleep=0.02)
    big_id = "bigid-" + "x" * (200 * 1024)   # too long for the handler's environment: exec fails (E2BIG)
    with cl.StatsWatcher(d) as watch:
        d.submit(jobs[:100])
        d.enqueue_raw("bigjob.json", cl.job_json(big_id))   # dropped by hand, like an outside producer
        d.submit(jobs[100:])
        cl.wait_spool_outcomes(d, ids, 90, runlog, limits={i: 1 for i in ids})

        batch_ids = set(ids)

        def big_failed():
            # Whatever id the document carries (the long one, or the file's name), it is the only
            # outcome of a job outside the batch.
            docs = [doc for doc in d.failed().values() if doc.get("id") not in batch_ids]
            return docs or None
        docs = d.wait_until(big_failed, 30, "the 200 KiB-id job to fail")
        assert len(docs) == 1 and docs[0]["error"]["reason"] == "invalid_job", [doc["error"] for doc in docs]
        assert docs[0].get("attempts") == 0, "no handler can have run it: %r" % docs[0].get("attempts")
        assert not any(r["id"].startswith("bigid-") for r in runlog.runs())
        complete, failed = cl.spool_outcomes(d)
        assert set(complete) == set(ids), "other documents in complete/: %s" % sorted(set(complete) - set(ids))[:5]
        assert len(failed) == 1, "other failures: %s" % [i[:40] for i in failed]
        cl.assert_runs_bounded(runlog, ids, 1, 0, "an exec-failing job")
        assert not watch.faults, "the job was taken for a pool fault: %s" % watch.faults[:3]
        assert sum(w["restarts"] for w in d.stats()["workers"]) == 0
        finish(d, runlog, watch, len(ids), failed=1)


def test_spool_two_instances_and_duplicate_ids(drover, workdir):
    handler, runs_a = cl.write_handler(workdir, "runs-a")
    _, runs_b = cl.write_handler(workdir, "runs-b")
    # One worker each: every job of either instance runs in slot 1, so a sweep that matched
    # the id and the slot alone would reach the other instance's copy.
    a = drover(config=spool_config(handler, runs_a, workers=1, max_concurrent=6), name="a")
    b = drover(config=spool_config(handler, runs_b, workers=1, max_concurrent=6), name="b")
    a.wait_workers(1)
    b.wait_workers(1)
    watch_a, watch_b = cl.StatsWatcher(a), cl.StatsWatcher(b)
    with watch_a, watch_b:
        # Same ids running in both at once; A's copies end first.
        held = ["held-%d" % i for i in range(6)]
        for d in (a, b):
            d.submit([cl.job_json(i, hold=str(d.tmp / "release")) for i in held])
        for d, runs in ((a, runs_a), (b, runs_b)):
            d.wait_until(lambda: len(runs.runs()) == 6, 30, "six held jobs running in %s" % d.mark)
        (a.tmp / "release").touch()
        cl.wait_spool_outcomes(a, held, 30, runs_a)
        (b.tmp / "release").touch()
        cl.wait_spool_outcomes(b, held, 30, runs_b)
        # A batch with the same ids in both.
        ids, jobs = batch("dup", sleep=0.03)
        a.submit(jobs)
        b.submit(jobs)
        # Inside A: the id resubmitted while its first copy runs.
        a.submit([cl.job_json("twin", hold=str(a.tmp / "twin-1"))])
        a.wait_until(lambda: len(runs_a.of("twin")) == 1, 30, "the first twin running")
        a.submit([cl.job_json("twin", hold=str(a.tmp / "twin-2"))])
        a.wait_until(lambda: len(runs_a.of("twin")) == 2, 30, "the second twin running")
        (a.tmp / "twin-1").touch()
        a.wait_until(lambda: any(r["ended"] for r in runs_a.of("twin")), 30, "the first twin to end")
        (a.tmp / "twin-2").touch()
        for d, runs, mine in ((a, runs_a, held + ids + ["twin"]), (b, runs_b, held + ids)):
            cl.wait_spool_outcomes(d, mine, 90, runs)
            d.wait_queue_empty(timeout=15)
            killed = [r for r in runs.runs() if not r["ended"]]
            assert not killed, "handlers of %s were killed: %s" % (d.mark, killed[:6])
            cl.assert_exactly_once_spool(d, mine)
            counts = runs.counts()
            expected = {i: (2 if i == "twin" else 1) for i in mine}
            wrong = {i: counts[i] for i in mine if counts[i] != expected[i]}
            assert not wrong, "%s: jobs that ran an unexpected number of times: %s" % (d.mark, wrong)
    # Both twins completed: A settled one outcome more than it has ids.
    for d, runs, watch, n in ((a, runs_a, watch_a, len(held) + len(ids) + 2), (b, runs_b, watch_b, len(held) + len(ids))):
        finish(d, runs, watch, n)


def fill(directory):
    """Writes directory/filler until the file system is full; returns its path."""
    path = os.path.join(directory, "filler")
    chunk = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 4096:
                    break
                chunk = chunk[:4096]   # top up the last pages
    finally:
        os.close(fd)
    return path


def test_spool_full_disk(small_disk, drover, chaos_handler):
    handler, runlog = chaos_handler
    workers = 2
    d = drover(config=spool_config(handler, runlog, workers=workers), start=False)
    d.spool = small_disk / "spool"
    d.write_config({"spool": {"dir": str(d.spool)}})
    d.start()
    d.wait_workers(workers)
    ids, jobs = batch("fd", hold=str(d.tmp / "release"))
    with cl.StatsWatcher(d) as watch:
        d.submit(jobs)
        d.wait_until(lambda: len(runlog.runs()) == workers * MAX_CONCURRENT, 30, "the workers full of held jobs")
        filler = fill(small_disk)
        (d.tmp / "release").touch()
        # While the disk is full (held here for 2 s once the fault shows), stats and health say so.
        d.wait_until(lambda: cl.pool_faults(d.stats()), 20, "a fault in stats while the spool's disk is full")
        rc, out = d.ctl("health")
        assert rc != 0, "health passes on a full disk: %s" % out
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            s = d.stats()
            docs = len(d.spool_files("complete")) + len(d.spool_files("failed"))
            counted = s["jobs"]["completed"] + s["jobs"]["failed"]
            assert counted <= docs, "stats count %d outcomes, %d are on disk" % (counted, docs)
            assert cl.pool_faults(s), "the fault vanished from stats while the disk is still full"
            time.sleep(0.2)
        os.unlink(filler)
        d.wait_until(lambda: not cl.pool_faults(d.stats()) and d.ctl("health")[0] == 0, 30,
                     "the fault to clear once space is free")
        cl.wait_spool_outcomes(d, ids, 90, runlog, limits={i: MAX_ATTEMPTS for i in ids})
        cl.assert_exactly_once_spool(d, ids)
        # What the fault may repeat: the jobs in flight when the disk filled, each up to max_attempts
        # times in all.
        bound = workers * MAX_CONCURRENT * (MAX_ATTEMPTS - 1)
        cl.assert_runs_bounded(runlog, ids, MAX_ATTEMPTS, bound, "a full disk")
        finish(d, runlog, watch, len(ids))


def test_fill_reaches_enospc(small_disk):
    # The scenario above is only honest if the filler really leaves no room.
    fill(small_disk)
    with pytest.raises(OSError) as e:
        with open(small_disk / "probe", "wb") as f:
            f.write(b"x" * 8192)
            f.flush()
            os.fsync(f.fileno())
    assert e.value.errno == errno.ENOSPC
    os.unlink(small_disk / "filler")
    try:
        os.unlink(small_disk / "probe")
    except FileNotFoundError:
        pass
