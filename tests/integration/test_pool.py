"""
The pool as a whole: throughput and the concurrency bound, a worker killed
with SIGKILL, the supervisor killed with SIGKILL, a slot that crashes on
start-up (README: Operations, The spool, Guarantees under faults; issue 2's pool scenarios), a worker that
refuses its configuration (EX_CONFIG: its slot fails, no restart loop).
"""

import collections
import datetime
import json
import os
import signal
import time

import pytest

import kafka_harness as kh
from harness import pgid_alive, proc_alive, wait_until


def handler_processes(d):
    """Live test-handler processes of this drover (exec'd, not zombies)."""
    return [pid for pid, cmd in d.descendants().items() if "testhandler.py" in cmd]


def test_200_jobs_three_workers_max_concurrent_4(drover, figures):
    d = drover(config={"supervisor": {"workers": 3}, "jobs": {"max_concurrent": 4}})
    d.wait_workers(3)
    conc = d.tmp / "concurrency"
    conc.mkdir()
    ids = ["job-%03d" % i for i in range(200)]
    t0, t0_wall = time.monotonic(), time.time()
    printed = d.submit([{"id": i, "sleep_ms": 150, "concurrency_dir": str(conc)} for i in ids])
    t_submitted = time.monotonic()
    assert printed == ids, "droverctl submit should print each id, in order"

    # While it runs, sample what drover reports and what /proc shows: neither may exceed the bound.
    most_in_flight, most_processes = 0, 0
    deadline = time.monotonic() + 120
    while len(d.complete()) + len(d.failed()) < 200:
        assert time.monotonic() < deadline, "200 jobs not done in 120s: %d complete, %d failed\n%s" % (
            len(d.complete()), len(d.failed()), d.diagnostics())
        assert d.alive(), "drover died\n" + d.diagnostics()
        stats = d.stats()
        for w in stats["workers"]:
            assert w["in_flight"] <= 4, "worker %s runs %d jobs, max_concurrent is 4" % (w["slot"], w["in_flight"])
        most_in_flight = max(most_in_flight, stats["jobs"]["in_flight"])
        procs = handler_processes(d)
        most_processes = max(most_processes, len(procs))
        assert len(procs) <= 12, "%d handler processes at once; 3 workers x max_concurrent 4 allow 12" % len(procs)
        time.sleep(0.2)
    t1 = time.monotonic()
    done, failed = d.complete(), d.failed()
    figures("200 jobs: submit (droverctl, durable)", t_submitted - t0, "s")
    figures("200 jobs: submit to all complete", t1 - t0, "s")
    last_finish = max(datetime.datetime.fromisoformat(doc["finished_at"].replace("Z", "+00:00")).timestamp()
                      for doc in done.values())
    figures("200 jobs: throughput (python handler, 150 ms, 3x4)", 200 / (last_finish - t0_wall), "jobs/s")

    assert failed == {}, "no job may fail: %r" % list(failed.items())[:3]
    assert sorted(done) == ids
    assert all(doc["attempts"] == 1 for doc in done.values())
    d.wait_queue_empty()
    runs = collections.Counter(r["id"] for r in d.starts())
    twice = {k: v for k, v in runs.items() if v != 1}
    assert not twice and len(runs) == 200, "each job must run exactly once: %r" % twice

    counter = json.loads((conc / "counter.json").read_text())
    figures("200 jobs: most handlers inside their job at once", counter["max"], "")
    figures("200 jobs: most handler processes seen at once", most_processes, "")
    figures("200 jobs: most jobs in flight (stats)", most_in_flight, "")
    assert counter["max"] <= 12, "%d handlers ran at once; 3 workers x max_concurrent 4 allow 12" % counter["max"]
    assert counter["current"] == 0 and counter["starts"] == 200 == counter["ends"], counter
    assert most_in_flight >= 10, "with 200 jobs queued the pool never ran more than %d at once (12 allowed)" % (
        most_in_flight)

    stats = d.stats()
    assert stats["jobs"]["completed"] == 200 and stats["jobs"]["failed"] == 0, stats["jobs"]
    assert stats["jobs"]["in_flight"] == 0, stats["jobs"]
    per_worker = {w["slot"]: w["completed"] for w in stats["workers"]}
    assert sum(per_worker.values()) == 200, per_worker
    assert all(n > 0 for n in per_worker.values()), "every worker should have taken jobs: %r" % per_worker


def test_throughput_with_a_trivial_handler(drover, figures):
    """drover's own overhead: /bin/cat echoes the job as its result, no Python start-up in the way."""
    d = drover(config={"supervisor": {"workers": 3}, "jobs": {"max_concurrent": 4, "handler": "/bin/cat"}})
    d.wait_workers(3)
    jobs = [{"id": "cat-%03d" % i, "n": i} for i in range(200)]
    t0 = time.time()
    d.submit(jobs, record=False)
    done, failed = d.wait_outcomes([j["id"] for j in jobs], 60)
    assert failed == {}, list(failed.values())[:2]
    assert all(done[j["id"]]["result"] == j for j in jobs), "result must be the handler's stdout as JSON"
    last = max(datetime.datetime.fromisoformat(doc["finished_at"].replace("Z", "+00:00")).timestamp()
               for doc in done.values())
    figures("200 jobs: throughput (/bin/cat handler, 3x4)", 200 / (last - t0), "jobs/s")


def running_jobs_by_slot(stats):
    return {w["slot"]: sorted(j["id"] for j in w.get("jobs", [])) for w in stats["workers"]}


@pytest.mark.asan
def test_kill_9_worker_restarts_slot_and_reruns_its_jobs(drover, figures):
    d = drover(config={"supervisor": {"workers": 2}, "jobs": {"max_concurrent": 2}})
    d.wait_workers(2)
    hold = d.tmp / "release"
    ids = ["held-%d" % i for i in range(4)]
    d.submit([{"id": i, "hold_file": str(hold)} for i in ids])
    d.wait_until(lambda: len(d.starts()) == 4, 30, "four handlers started")
    stats = d.wait_until(lambda: (lambda s: s if s["jobs"]["in_flight"] == 4 and
                                  sum(len(v) for v in running_jobs_by_slot(s).values()) == 4 else None)(d.stats()),
                         10, "four jobs in flight in stats")
    victim = stats["workers"][0]
    survivor = stats["workers"][1]
    victim_jobs = running_jobs_by_slot(stats)[victim["slot"]]
    survivor_jobs = running_jobs_by_slot(stats)[survivor["slot"]]
    assert len(victim_jobs) == 2 and len(survivor_jobs) == 2, running_jobs_by_slot(stats)
    victim_groups = [d.starts(j)[0]["pgid"] for j in victim_jobs]
    survivor_pids = [d.starts(j)[0]["pid"] for j in survivor_jobs]

    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()

    def replaced():
        for w in d.stats()["workers"]:
            if w["slot"] == victim["slot"] and w.get("pid") and w["pid"] != victim["pid"] \
                    and w["state"] == "running":
                return w
        return None
    new = d.wait_until(replaced, 10, "a new worker in slot %s" % victim["slot"], interval=0.01)
    figures("kill -9 worker: new worker running", time.monotonic() - t0, "s")
    assert new["restarts"] == 1, new
    assert "9" in str(new.get("last_exit")), "last_exit should say signal 9: %r" % new.get("last_exit")
    d.wait_until(lambda: not any(pgid_alive(g) for g in victim_groups), 5,
                 "the killed worker's handler groups %r to be gone" % victim_groups)
    assert all(proc_alive(p) for p in survivor_pids), "the other worker's handlers must keep running"
    other = [w for w in d.stats()["workers"] if w["slot"] == survivor["slot"]][0]
    assert other["pid"] == survivor["pid"] and other["restarts"] == 0, other

    hold.touch()
    done, failed = d.wait_outcomes(ids, 20)
    assert failed == {}, failed
    for j in victim_jobs:
        assert done[j]["attempts"] == 2, "%s was interrupted by the kill and should run again: %r" % (j, done[j])
        assert len(d.starts(j)) == 2
    for j in survivor_jobs:
        assert done[j]["attempts"] == 1, done[j]
    d.wait_queue_empty()


def test_kill_9_supervisor_workers_exit_and_new_drover_finishes(drover, figures):
    # Graceful or not, an orphaned worker must be gone within shutdown_timeout_ms (+ kill_grace_ms).
    d = drover(config={"supervisor": {"workers": 2, "shutdown_timeout_ms": 1000}, "jobs": {"max_concurrent": 2}})
    d.wait_workers(2)
    hold = d.tmp / "release"
    ids = ["orphan-%d" % i for i in range(6)]
    d.submit([{"id": i, "hold_file": str(hold)} for i in ids])
    d.wait_until(lambda: len(d.starts()) == 4, 30, "four handlers started")
    running = sorted(r["id"] for r in d.starts())
    family = d.descendants()
    assert len(family) >= 6, "expected 2 workers and 4 handlers, found %r" % family

    os.kill(d.pid, signal.SIGKILL)
    t0 = time.monotonic()
    d.proc.wait(timeout=5)
    wait_until(lambda: not any(proc_alive(p) for p in family) and not d.descendants(), 5,
               "workers and handlers to exit after the supervisor died",
               on_timeout=lambda: "still alive: %r" % {p: c for p, c in family.items() if proc_alive(p)})
    figures("kill -9 supervisor: all workers and handlers gone", time.monotonic() - t0, "s")
    assert d.complete() == {} and d.failed() == {}, "no job may finish or fail while held"

    hold.touch()
    d.start()  # same config: stale socket and pid file must not stop it
    done, failed = d.wait_outcomes(ids, 30)
    assert failed == {}, failed
    assert sorted(done) == ids
    for j in running:
        assert done[j]["attempts"] == 2, "%s was running at the kill and should run again: %r" % (j, done[j])
    d.wait_queue_empty()


def test_worker_crashing_on_startup_backs_off_and_pool_keeps_working(drover, figures):
    d = drover(config={"supervisor": {"workers": 3, "restart_delay_ms": 100, "restart_delay_max_ms": 5000}},
               env={"DROVER_FAULT_CRASH_SLOT": "1"})
    healthy = d.wait_until(lambda: (lambda s: s if sum(1 for w in s["workers"] if w["state"] == "running") == 2
                                    else None)(d.stats()), 10, "two healthy workers")
    good_slots = {w["slot"]: w["pid"] for w in healthy["workers"] if w["state"] == "running"}
    assert 1 not in good_slots, "slot 1 is the one told to crash: %r" % healthy["workers"]
    d.submit([{"id": "meanwhile-%d" % i, "sleep_ms": 50} for i in range(10)])

    increments = []   # monotonic time at which slot 1's restart count went up
    states = set()
    last = None
    deadline = time.monotonic() + 12
    while len(increments) < 5 and time.monotonic() < deadline:
        slot = [w for w in d.stats()["workers"] if w["slot"] == 1]
        assert slot, "slot 1 vanished from stats"
        states.add(slot[0]["state"])
        restarts = slot[0]["restarts"]
        if last is not None and restarts > last:
            increments.append(time.monotonic())
        last = restarts
        time.sleep(0.01)
    assert "backoff" in states, "slot 1 never showed state backoff (saw %r)" % states
    assert len(increments) >= 4, "slot 1 restarted only %d times in 12s" % len(increments)
    gaps = [b - a for a, b in zip(increments, increments[1:])]
    figures("crash loop: first restart gap", gaps[0], "s")
    figures("crash loop: last restart gap", gaps[-1], "s")
    assert gaps[-1] > 1.5 * gaps[0], "restart delays should grow (doubling): gaps %r" % gaps

    done, failed = d.wait_outcomes(["meanwhile-%d" % i for i in range(10)], 20)
    assert failed == {} and len(done) == 10
    now = {w["slot"]: (w["pid"], w["restarts"]) for w in d.stats()["workers"] if w["slot"] in good_slots}
    assert now == {s: (p, 0) for s, p in good_slots.items()}, "healthy workers must be untouched: %r" % now


def test_silent_worker_is_killed_after_heartbeat_timeout(drover, figures):
    d = drover(config={"supervisor": {"workers": 2, "heartbeat_timeout_ms": 2500}})
    before = d.wait_workers(2)
    victim = before["workers"][0]
    other = before["workers"][1]
    os.kill(victim["pid"], signal.SIGSTOP)  # its event loop goes silent; SIGKILL still works on it
    t0 = time.monotonic()

    def replaced():
        for w in d.stats()["workers"]:
            if w["slot"] == victim["slot"] and w.get("pid") and w["pid"] != victim["pid"] \
                    and w["state"] == "running":
                return w
        return None
    new = d.wait_until(replaced, 10, "the stopped worker to be replaced")
    took = time.monotonic() - t0
    figures("SIGSTOPped worker replaced after (heartbeat_timeout_ms 2500)", took, "s")
    assert took >= 1.5, "replaced after %.1fs, long before heartbeat_timeout_ms" % took
    assert "heartbeat" in str(new.get("last_exit")), new
    assert new["restarts"] == 1
    wait_until(lambda: not proc_alive(victim["pid"]), 3, "the silent worker %d to be killed" % victim["pid"])
    assert [w["pid"] for w in d.stats()["workers"] if w["slot"] == other["slot"]] == [other["pid"]]


def test_worker_refusing_its_configuration_is_not_restarted_until_scale_or_reload(mock, drover, tmp_path):
    # drover -t, start-up and reload check what librdkafka refuses, so a worker meets a refused
    # configuration only when something changed after the check: here the CA file the check read is
    # gone when crashed workers start again. The worker exits EX_CONFIG (78) and its slot fails
    # instead of crash-looping (README "Worker slots").
    ca = tmp_path / "ca.pem"
    with open("/etc/ssl/certs/ca-certificates.crt", "rb") as src:
        ca.write_bytes(src.read())
    tls = {"security.protocol": "ssl", "ssl.ca.location": str(ca)}
    cfg = kh.kafka_config(mock().bootstrap, workers=2, librdkafka=tls,
                          supervisor={"restart_delay_ms": 50, "restart_delay_max_ms": 100})
    d = drover(config=cfg)
    # Each worker opened its queue (its handles read the CA file then) before the file goes.
    d.wait_until(lambda: all("worker %d: started (kafka queue" % slot in d.log_text() for slot in (0, 1)), 20,
                 "both workers to open their queue")

    def spawns(slot):
        return d.log_text().count("worker %d started, pid" % slot)

    def all_failed():
        s = d.stats()
        return s if [w["state"] for w in s["workers"]] == ["failed", "failed"] else None
    ca.unlink()
    for pid in d.worker_pids().values():
        os.kill(pid, signal.SIGKILL)
    stats = d.wait_until(all_failed, 15, "both slots failed")
    for w in stats["workers"]:
        assert w["restarts"] == 1 and not w["pid"], w
        assert w["last_exit"] == "exit 78: configuration refused", w
        assert w["fault_cause"] == "config" and "78" in w["fault"], w
    rc, out = d.ctl("health")
    assert rc != 0 and "configuration refused" in out + d.last_ctl_err, (rc, out, d.last_ctl_err)
    rc, out = d.ctl("metrics")
    assert 'drover_workers{state="failed"} 2' in out, out

    # A restart would come within 100 ms (restart_delay_max_ms): 20 times that passes without one.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        s = d.stats()
        assert [w["state"] for w in s["workers"]] == ["failed", "failed"], s["workers"]
        assert (spawns(0), spawns(1)) == (2, 2), d.log_text()[-3000:]
        time.sleep(0.1)

    # scale starts a failed slot again (and it fails again: the file is still gone).
    rc, out = d.ctl("scale", "2")
    assert rc == 0, (out, d.last_ctl_err)
    d.wait_until(lambda: (spawns(0), spawns(1)) == (3, 3), 10, "both slots started again by scale")
    d.wait_until(all_failed, 15, "both slots failed again")

    # A reload the check refuses keeps the running configuration (and starts nothing).
    rc, out = d.ctl("reload")
    assert rc != 0 and "ssl.ca.location" in out + d.last_ctl_err, (rc, out, d.last_ctl_err)
    assert (spawns(0), spawns(1)) == (3, 3), d.log_text()[-3000:]

    # A reload with a configuration the workers accept brings them up.
    for key in tls:
        d.config["librdkafka"].pop(key)
    d.write_config()
    d.signal(signal.SIGHUP)
    d.wait_workers(2, timeout=20)
    assert (spawns(0), spawns(1)) == (4, 4), d.log_text()[-3000:]
