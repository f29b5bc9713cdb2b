"""
test_kafka_faults: a few hundred jobs through drover on the Kafka mock
cluster (tests/support/mock_broker.c) under one fault per scenario: kill -9
of workers, of the supervisor (then a fresh start in the same group), a job
that kills its worker, a job that cannot be exec'd, two instances in two
groups with the same ids, all brokers down and back. kcat reads the outcome
topics; the bounds are those of README "Guarantees under faults".
"""

import json
import re
import subprocess
import time

import pytest

import chaos_lib as cl
import kafka_harness as kh
from harness import DROVER, proc_alive, wait_until

pytestmark = pytest.mark.kafka

JOBS = 300
WORKERS = 3
MAX_CONCURRENT = 4
MAX_ATTEMPTS = 3
PARTITIONS = 6
# The per-partition window (README "Guarantees under faults"): how many offsets past the oldest
# unfinished one a worker may take. A fault repeats at most the window and that oldest offset.
WINDOW = 2 * MAX_CONCURRENT
UNCOMMITTED_PER_PARTITION = WINDOW + 1
COMMIT_INTERVAL_S = 0.1  # auto.commit.interval.ms of kafka_cfg
JOB_S = 0.1              # the brokers-down scenario's job duration


def window_option():
    """The [kafka] key that bounds a partition's uncommitted window, when this drover has one.

    Set to WINDOW so the suite checks the bound it configures, whatever the key's default. A drover
    without the key has no window: the bound is checked all the same.
    """
    out = subprocess.run([str(DROVER), "--print-options"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"^\[kafka\] (\w*uncommitted\w*) =", out, re.M)
    return {found.group(1): WINDOW} if found else {}


def kafka_cfg(bootstrap, handler, runlog, workers=WORKERS, max_concurrent=MAX_CONCURRENT, kafka=None,
              supervisor=None):
    return kh.kafka_config(bootstrap, workers=workers, max_concurrent=max_concurrent, handler=handler,
                           jobs={"env.CHAOS_RUN_DIR": str(runlog.dir), "max_attempts": MAX_ATTEMPTS},
                           librdkafka={"session.timeout.ms": 3000, "auto.commit.interval.ms": 100},
                           supervisor=dict({"restart_delay_ms": 100, "restart_delay_max_ms": 1000},
                                           **(supervisor or {})),
                           kafka=dict(window_option(), **(kafka or {})))


def settle(m, d, ids, runlog, timeout=180, limits=None, topics=(kh.REQUESTS, kh.COMPLETE, kh.FAILED),
           group=kh.GROUP):
    """Every id's outcome on the topics, then the group's work settled; (complete Counter, failed docs)."""
    requests, complete, failed = topics
    return cl.wait_kafka_outcomes(m.bootstrap, ids, timeout, d, complete, failed, runlog, limits=limits, mock=m,
                                  requests_topic=requests, group=group)


def produce(m, jobs, topic=kh.REQUESTS):
    kh.kcat_produce_lines(m.bootstrap, topic, jobs)


def batch(prefix, n=JOBS, **fields):
    return [("%s-%03d" % (prefix, i), cl.job_json("%s-%03d" % (prefix, i), **fields)) for i in range(n)]


def completed(d):
    return d.stats()["jobs"]["completed"]


def fault_bound(in_flight, partitions):
    """What one fault may repeat: the jobs running, and the uncommitted window of each partition touched."""
    return in_flight + partitions * UNCOMMITTED_PER_PARTITION


def finish(d, m, runlog, watch, completed_n, failed_n=0, slack=0, keyed=True):
    """What every scenario checks once its jobs are done (keyed: every request's key is its job id)."""
    cl.wait_committed_to_end(m, d, kh.REQUESTS, kh.GROUP, 60)
    if keyed:
        kh.assert_no_commit_ahead(m, m.bootstrap)
    cl.assert_nothing_left(d, runlog)
    d.wait_until(lambda: not cl.pool_faults(d.stats()), 30, "no fault shown after the run")
    rc, out = d.ctl("health", timeout=30)
    assert rc == 0, "health should pass: rc %d %s %s" % (rc, out, d.last_ctl_err)
    watch.stop()
    watch.assert_monotonic()
    cl.assert_counters(d.stats(), completed_n, failed_n, slack=slack)
    cl.stop_and_assert_gone(d, runlog, timeout=30)


def running_job(d, job_id):
    """The worker (stats entry) running job_id, or None."""
    for w in d.stats()["workers"]:
        if w.get("pid") and any(j.get("id") == job_id for j in (w.get("jobs") or [])):
            return w
    return None


def held_partitions(w):
    return len((w.get("kafka") or {}).get("partitions", []))


def produce_to_partition(m, jobs, partition, topic=kh.REQUESTS):
    """kcat produce of (key, value) records into one partition (keys stay the job ids)."""
    data = "".join("%s\t%s\n" % (k, v) for k, v in jobs)
    r = subprocess.run([kh.KCAT, "-b", m.bootstrap, "-P", "-t", topic, "-p", str(partition), "-K", "\t"],
                       input=data.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, "kcat produce failed: %s" % r.stderr.decode(errors="replace")


def stall_one_partition(m, d, runlog, prefix, behind=60):
    """A held job at the head of partition 0, then `behind` quick jobs in the same partition; returns (ids, release path, the stats entry of the worker that runs the held job)
    once that partition is stalled: the held job runs, and of the jobs behind it as many have
    finished as will (all of them, or at least the window when drover bounds it).

    Their offsets cannot be committed past the held job, so a fault now repeats the uncommitted
    window of this partition: the case that makes the bound visible.
    """
    release = d.tmp / ("release-" + prefix)
    head = "%s-head" % prefix
    ids = [head] + ["%s-%02d" % (prefix, i) for i in range(behind)]
    produce_to_partition(m, [(head, cl.job_json(head, hold=str(release)))] +
                         [(i, cl.job_json(i, sleep=0.02)) for i in ids[1:]], 0)
    d.wait_until(lambda: running_job(d, head), 60, "the held job at the partition's head to start")
    seen = {"finished": -1, "since": time.monotonic()}

    def stalled():
        # Stalled: some jobs behind the held one finished, only the held one is in flight, and no
        # job of the partition finished for 1 s (all of them ran, or the window is full).
        finished = sum(1 for r in runlog.runs() if r["id"] in ids[1:] and r["ended"])
        now = time.monotonic()
        if finished != seen["finished"]:
            seen.update(finished=finished, since=now)
            return None
        w = running_job(d, head)
        return w if finished > 0 and w and w["in_flight"] == 1 and now - seen["since"] >= 1.0 else None
    victim = d.wait_until(stalled, 60, "the partition behind the held job to stall", interval=0.1)
    return ids, release, victim


@pytest.mark.slow
def test_kafka_kill9_workers(mock, drover, chaos_handler):
    handler, runlog = chaos_handler
    m = mock()
    d = drover(config=kafka_cfg(m.bootstrap, handler, runlog))
    kh.wait_group_stable(d, WORKERS)
    bound, kills = 0, 0
    with cl.StatsWatcher(d) as watch:
        # First kill: the worker whose partition is stalled behind a held job.
        hol_ids, release, victim = stall_one_partition(m, d, runlog, "hol")
        cl.kill9(victim["pid"])
        kills += 1
        first = fault_bound(MAX_CONCURRENT, held_partitions(victim))
        bound += first
        release.touch()
        kh.wait_group_stable(d, WORKERS, timeout=60)
        settle(m, d, hol_ids, runlog, 120)
        cl.assert_runs_bounded(runlog, hol_ids, 2, first, "kill -9 of the worker stalled behind a held job")
        # Then a batch, and two kills of busy workers while it runs.
        jobs = batch("kw", sleep=0.1)
        ids = hol_ids + [i for i, _ in jobs]
        produce(m, jobs)
        base = completed(d)
        for threshold in (80, 160):
            d.wait_until(lambda: completed(d) - base >= threshold, 90, "%d jobs of the batch complete" % threshold)
            victim = d.wait_until(
                lambda: next((w for w in d.stats()["workers"] if w.get("pid") and w["in_flight"] > 0), None),
                30, "a worker with jobs in flight")
            cl.kill9(victim["pid"])
            kills += 1
            bound += fault_bound(MAX_CONCURRENT, held_partitions(victim))
            kh.wait_group_stable(d, WORKERS, timeout=60)
        complete, failed = settle(m, d, ids, runlog, 180, limits={i: 1 + kills for i in ids})
        duplicates = cl.assert_exactly_once_kafka(complete, failed, ids, bound)
        cl.assert_runs_bounded(runlog, ids, 1 + kills, bound, "kill -9 of %d workers" % kills)
        restarts = sum(w["restarts"] for w in d.stats()["workers"])
        assert restarts == kills, "stats show %d restarts after %d kills" % (restarts, kills)
        print("kafka kill -9 x%d: %d duplicate outcomes, %d re-runs (bound %d)"
              % (kills, duplicates, sum(runlog.counts().values()) - len(ids), bound))
        finish(d, m, runlog, watch, len(ids), slack=bound)


def test_kafka_kill9_supervisor_then_fresh_start(mock, drover, chaos_handler):
    handler, runlog = chaos_handler
    m = mock()
    d = drover(config=kafka_cfg(m.bootstrap, handler, runlog))
    kh.wait_group_stable(d, WORKERS)
    jobs = batch("ks", sleep=0.1)
    produce(m, jobs)
    d.wait_until(lambda: completed(d) >= 80, 90, "80 jobs complete")
    # One partition stalled behind a held job when the supervisor dies (its workers stop and
    # kill the held job after shutdown_timeout_ms).
    hol_ids, release, _ = stall_one_partition(m, d, runlog, "hol", behind=100)
    ids = [i for i, _ in jobs] + hol_ids
    family = d.descendants()
    cl.kill9(d.pid)
    d.proc.wait(timeout=10)
    wait_until(lambda: not any(proc_alive(p) for p in family) and not d.descendants()
               and not cl.live_handlers(runlog, d.mark), 30,
               "the dead supervisor's workers and handlers to exit",
               on_timeout=lambda: "alive: %r" % {p: c for p, c in family.items() if proc_alive(p)})
    release.touch()
    runs_before = {(r["id"], r["pid"]) for r in runlog.runs()}
    d.start()
    kh.wait_group_stable(d, WORKERS, timeout=60)
    bound = fault_bound(WORKERS * MAX_CONCURRENT, PARTITIONS)
    with cl.StatsWatcher(d) as watch:
        complete, failed = settle(m, d, ids, runlog, 180, limits={i: 2 for i in ids})
        duplicates = cl.assert_exactly_once_kafka(complete, failed, ids, bound)
        extra = cl.assert_runs_bounded(runlog, ids, 2, bound, "kill -9 of the supervisor")
        print("kafka kill -9 supervisor: %d duplicate outcomes, %d re-runs (bound %d)" % (duplicates, extra, bound))
        # Every run of the new supervisor's life completed, and it counts exactly those.
        runs_after = [r for r in runlog.runs() if (r["id"], r["pid"]) not in runs_before]
        finish(d, m, runlog, watch, len(runs_after))


@pytest.mark.slow
def test_kafka_job_that_kills_its_worker(mock, drover, chaos_handler):
    handler, runlog = chaos_handler
    m = mock()
    d = drover(config=kafka_cfg(m.bootstrap, handler, runlog))
    kh.wait_group_stable(d, WORKERS)
    jobs = batch("kj", sleep=0.05)
    killer = ("killer-1", cl.job_json("killer-1", kill_worker=True))
    ids = [i for i, _ in jobs]
    with cl.StatsWatcher(d) as watch:
        produce(m, jobs[:100] + [killer] + jobs[100:])
        # Each killer run can repeat its worker's jobs in flight and the uncommitted window of
        # its partitions (at most all of them); an innocent job is hit at most once per killer run.
        per_run = fault_bound(MAX_CONCURRENT - 1, PARTITIONS)
        limits = dict({i: 1 + MAX_ATTEMPTS for i in ids}, **{killer[0]: MAX_ATTEMPTS})
        complete, failed = settle(m, d, ids + [killer[0]], runlog, 180, limits=limits)
        killer_runs = runlog.counts()[killer[0]]
        bound = killer_runs * per_run
        collateral = cl.worker_lost_collateral(runlog, failed, ids, MAX_ATTEMPTS)
        print("innocent jobs that died with the killer %d times: %s" % (MAX_ATTEMPTS, sorted(collateral)))
        cl.assert_exactly_once_kafka(complete, failed, ids + [killer[0]], bound,
                                     expect_failed=dict(collateral, **{killer[0]: "worker_lost"}))
        cl.assert_runs_bounded(runlog, ids, 1 + MAX_ATTEMPTS, bound, "%d runs of a job that kills its worker"
                               % killer_runs)
        kh.wait_group_stable(d, WORKERS, timeout=60)
        restarts = sum(w["restarts"] for w in d.stats()["workers"])
        assert restarts == killer_runs, "stats show %d restarts, the killer ran %d times" % (restarts, killer_runs)
        finish(d, m, runlog, watch, len(ids) - len(collateral), failed_n=1 + len(collateral), slack=bound)


def test_kafka_exec_failing_job_fails_alone(mock, drover, chaos_handler, workdir):
    handler, runlog = chaos_handler
    m = mock()
    d = drover(config=kafka_cfg(m.bootstrap, handler, runlog))
    kh.wait_group_stable(d, WORKERS)
    jobs = batch("ex", sleep=0.02)
    ids = [i for i, _ in jobs]
    big = workdir / "big.json"
    big.write_text(cl.job_json("bigid-" + "x" * (200 * 1024)))   # exec fails (E2BIG) with this id
    with cl.StatsWatcher(d) as watch:
        produce(m, jobs[:100])
        kh.kcat_produce_file(m.bootstrap, kh.REQUESTS, big)
        produce(m, jobs[100:])
        complete, failed = settle(m, d, ids, runlog, 120, limits={i: 1 for i in ids})
        cl.assert_exactly_once_kafka(complete, failed, ids, 0)

        batch_ids = set(ids)

        def big_failed():
            # Whatever id the event carries (the long one, or <topic>-<partition>-<offset>), it is
            # the only outcome of a job outside the batch.
            docs = [json.loads(msg["payload"]) for msg in kh.kcat_consume(m.bootstrap, kh.FAILED)]
            docs = [doc for doc in docs if doc.get("id") not in batch_ids]
            return docs or None
        docs = d.wait_until(big_failed, 60, "the 200 KiB-id job on the failed topic", interval=0.5)
        assert len(docs) == 1 and docs[0]["error"]["reason"] == "invalid_job", [doc["error"] for doc in docs]
        assert not any(r["id"].startswith("bigid-") for r in runlog.runs())
        cl.assert_runs_bounded(runlog, ids, 1, 0, "an exec-failing job")
        assert not watch.faults, "the job was taken for a pool fault: %s" % watch.faults[:3]
        assert sum(w["restarts"] for w in d.stats()["workers"]) == 0
        # The long-id job has no key: the committed offsets passed it, which settle() waited for.
        finish(d, m, runlog, watch, len(ids), failed_n=1, keyed=False)


B_TOPICS = {"requests_topic": "b.requests", "status_topic": "b.status", "complete_topic": "b.complete",
            "failed_topic": "b.failed"}


def test_kafka_two_groups_and_duplicate_ids(mock, drover, workdir):
    handler, runs_a = cl.write_handler(workdir, "runs-a")
    _, runs_b = cl.write_handler(workdir, "runs-b")
    m = mock(topics=kh.default_topics(PARTITIONS) + [("b.requests", PARTITIONS), ("b.status", 3),
                                                     ("b.complete", 3), ("b.failed", 3)])
    # One worker each, so the same id always runs in the same slot of both instances.
    a = drover(config=kafka_cfg(m.bootstrap, handler, runs_a, workers=1, max_concurrent=6), name="a")
    b = drover(config=kafka_cfg(m.bootstrap, handler, runs_b, workers=1, max_concurrent=6,
                                kafka=dict(B_TOPICS, group_id="drover-test-b")), name="b")
    kh.wait_group_stable(a, 1)
    kh.wait_group_stable(b, 1)
    topics = {a: (kh.REQUESTS, kh.COMPLETE, kh.FAILED), b: ("b.requests", "b.complete", "b.failed")}
    groups = {a: kh.GROUP, b: "drover-test-b"}
    watch_a, watch_b = cl.StatsWatcher(a), cl.StatsWatcher(b)
    with watch_a, watch_b:
        held = ["held-%d" % i for i in range(6)]
        for d in (a, b):
            produce(m, [(i, cl.job_json(i, hold=str(d.tmp / "release"))) for i in held], topics[d][0])
        for d, runs in ((a, runs_a), (b, runs_b)):
            d.wait_until(lambda: len(runs.runs()) == 6, 60, "six held jobs running in %s" % d.mark)
        (a.tmp / "release").touch()
        settle(m, a, held, runs_a, 60)
        (b.tmp / "release").touch()
        jobs = batch("dup", sleep=0.03)
        for d in (a, b):
            produce(m, jobs, topics[d][0])
        # Inside A: the id again while its first copy runs (same key: same partition, run side by side).
        produce(m, [("twin", cl.job_json("twin", hold=str(a.tmp / "twin-1")))])
        a.wait_until(lambda: len(runs_a.of("twin")) == 1, 60, "the first twin running")
        produce(m, [("twin", cl.job_json("twin", hold=str(a.tmp / "twin-2")))])
        a.wait_until(lambda: len(runs_a.of("twin")) == 2, 60, "the second twin running")
        (a.tmp / "twin-1").touch()
        a.wait_until(lambda: any(r["ended"] for r in runs_a.of("twin")), 30, "the first twin to end")
        (a.tmp / "twin-2").touch()
        ids = held + [i for i, _ in jobs]
        a.wait_until(lambda: len(runs_a.of("twin")) >= 2 and cl.runs_settled(runs_a.of("twin"), a.mark), 60,
                     "both twins to end")
        for d, runs, mine in ((a, runs_a, ids + ["twin"]), (b, runs_b, ids)):
            complete, failed = settle(m, d, mine, runs, 120, topics=topics[d], group=groups[d])
            killed = [r for r in runs.runs() if not r["ended"]]
            assert not killed, "handlers of %s were killed: %s" % (d.mark, killed[:6])
            counts = runs.counts()
            expected = {i: (2 if i == "twin" else 1) for i in mine}
            wrong = {i: counts[i] for i in mine if counts[i] != expected[i]}
            assert not wrong, "%s: jobs that ran an unexpected number of times: %s" % (d.mark, wrong)
            # Two twins completed: the id is twice on A's complete topic, and nothing else is.
            cl.assert_exactly_once_kafka(complete, failed, mine, 1 if d is a else 0)
            if d is a:
                assert complete["twin"] == 2, complete["twin"]
    # Both twins completed: A settled one outcome more than it has ids (twin is one of them).
    for d, runs, watch, n in ((a, runs_a, watch_a, len(ids) + 2), (b, runs_b, watch_b, len(ids))):
        d.wait_until(lambda: not cl.pool_faults(d.stats()), 30, "no fault shown after the run")
        cl.assert_nothing_left(d, runs)
        watch.stop()
        watch.assert_monotonic()
        cl.assert_counters(d.stats(), n, 0)
        cl.stop_and_assert_gone(d, runs, timeout=30)


@pytest.mark.slow
def test_kafka_brokers_down_then_up(mock, drover, chaos_handler):
    handler, runlog = chaos_handler
    m = mock()
    workers = 2
    d = drover(config=kafka_cfg(m.bootstrap, handler, runlog, workers=workers))
    kh.wait_group_stable(d, workers)
    jobs = batch("bd", sleep=JOB_S)
    ids = [i for i, _ in jobs]
    with cl.StatsWatcher(d) as watch:
        produce(m, jobs)
        d.wait_until(lambda: completed(d) >= 60, 90, "60 jobs complete")
        pids = d.worker_pids()
        m.down()
        d.wait_until(lambda: cl.pool_faults(d.stats()), 30, "the outage in stats")
        rc, out = d.ctl("health", timeout=30)
        assert rc != 0, "health passes while every broker is down: %s %s" % (out, d.last_ctl_err)
        # The brokers stay down 3 s more: long enough for every worker to be cut off mid-batch.
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            assert cl.pool_faults(d.stats()), "the fault vanished from stats while every broker is down"
            time.sleep(0.3)
        assert d.worker_pids() == pids, "a worker died while the brokers were down"
        m.up()
        # Re-runs: the jobs in flight and every partition's window (the outage can expel the
        # workers from the group). Duplicate events besides: an outcome whose acknowledgement was
        # lost is produced again, at most the window of each partition.
        # Plus, as README "Guarantees" says, the finished work of one auto.commit.interval.ms not yet
        # committed when the outage struck: the pool finishes workers x max_concurrent jobs per 0.1 s.
        commit_interval_work = workers * MAX_CONCURRENT * round(COMMIT_INTERVAL_S / JOB_S)
        bound = fault_bound(workers * MAX_CONCURRENT, PARTITIONS) + commit_interval_work
        dup_bound = bound + PARTITIONS * UNCOMMITTED_PER_PARTITION
        complete, failed = settle(m, d, ids, runlog, 180, limits={i: 2 for i in ids})
        duplicates = cl.assert_exactly_once_kafka(complete, failed, ids, dup_bound)
        extra = cl.assert_runs_bounded(runlog, ids, 2, bound, "all brokers down for 3 s")
        print("kafka brokers down: %d duplicate outcomes (bound %d), %d re-runs (bound %d)"
              % (duplicates, dup_bound, extra, bound))
        finish(d, m, runlog, watch, len(ids), slack=bound)
