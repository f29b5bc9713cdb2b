"""
Persistent handlers (handler_mode = persistent, README "Persistent handlers"):
real drover, real python3 handler processes speaking the raw frame protocol
(tests/handlers/warmhandler.py). Each test reads what the handler did from the
records it leaves (process start/ready/exit, job start/end, cancels) and what
drover did from the spool's outcome documents, stats and its log.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import PYTHON, REPO, pgid_alive, process_gone, proc_alive, wait_until

WARM_HANDLER = REPO / "tests" / "handlers" / "warmhandler.py"


def warm_config(workers=1, max_concurrent=2, **jobs):
    cfg = {"supervisor": {"workers": workers},
           "jobs": dict({"handler": "%s %s" % (PYTHON, WARM_HANDLER), "handler_mode": "persistent",
                         "max_concurrent": max_concurrent}, **{k: v for k, v in jobs.items()})}
    return cfg


def procs(d):
    """{pid: record} of every handler process that said ready."""
    out = {}
    for p in d.records.glob("proc__*.json"):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        out[rec["pid"]] = rec
    return out


def job_records(d, kind, job_id=None):
    recs = []
    for p in d.records.glob("*.%s.json" % kind):
        if p.name.startswith("proc__"):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if job_id is None or rec["id"] == job_id:
            recs.append(rec)
    return sorted(recs, key=lambda r: r["t"])


def worker_stats(d, slot=0):
    return [w for w in d.stats()["workers"] if w["slot"] == slot][0]


def all_complete(d, ids, timeout=30):
    done, failed = d.wait_outcomes(ids, timeout)
    failed = {i: failed[i] for i in ids if i in failed}
    assert not failed, "jobs failed: %r" % failed
    return done


@pytest.mark.asan
def test_warm_start_before_the_first_job_and_many_jobs_per_process(drover):
    d = drover(config=warm_config(max_concurrent=2), env={"WARM_SETUP_MS": "1500"})
    d.wait_until(lambda: worker_stats(d)["ready"], 20, "the worker to be ready", interval=0.05)
    seen_ready = time.time()
    assert procs(d) and min(r["ready"] for r in procs(d).values()) <= seen_ready, \
        "the worker showed ready before any handler process was"
    ids = d.submit([{"id": "w%d" % i, "sleep_ms": 50} for i in range(10)])
    done = all_complete(d, ids)
    ready = {pid: rec["ready"] for pid, rec in procs(d).items()}
    assert len(ready) == 2, "max_concurrent 2 / handler_concurrency 1 = 2 processes: %r" % ready
    starts = job_records(d, "start")
    assert min(r["t"] for r in starts) > min(ready.values()), "a job started before any process was ready"
    for r in starts:
        assert r["t"] >= ready[r["pid"]], "job %s reached process %d before its ready" % (r["id"], r["pid"])
    pids = {doc["result"]["pid"] for doc in done.values()}
    assert pids <= set(ready), "results came from processes that never said ready: %r" % pids
    assert all(doc["attempts"] == 1 for doc in done.values())
    w = worker_stats(d)
    assert sorted(h["pid"] for h in w["handlers"]) == sorted(ready), w["handlers"]
    assert sum(h["jobs"] for h in w["handlers"]) == 10, w["handlers"]
    assert all(h["state"] == "ready" for h in w["handlers"]), w["handlers"]
    assert w["handler_restarts"] == 0 and w["handler_protocol_errors"] == 0, w
    env = next(iter(procs(d).values()))["env"]
    assert env["DROVER_HANDLER_MODE"] == "persistent" and env["DROVER_PROTOCOL"] == "1", env
    assert env["DROVER_HANDLER_CONCURRENCY"] == "1" and env["DROVER_WORKER"] == "0", env
    assert "DROVER_ATTEMPT_TOKEN" in env and "DROVER_JOB_ID" not in env, env
    d.wait_queue_empty()


def test_concurrency_inside_one_process(drover):
    d = drover(config=warm_config(max_concurrent=4, handler_concurrency=4))
    hold = d.state / "release"
    ids = d.submit([{"id": "c%d" % i, "hold_file": str(hold)} for i in range(4)])
    d.wait_until(lambda: len(job_records(d, "start")) == 4, 20, "4 jobs running at once")
    hold.write_text("go")
    done = all_complete(d, ids)
    starts, ends = job_records(d, "start"), job_records(d, "end")
    assert len({r["pid"] for r in starts}) == 1, "one process holds the four jobs: %r" % starts
    assert max(r["t"] for r in starts) < min(r["t"] for r in ends), "the four jobs overlap in time"
    assert len({doc["result"]["pid"] for doc in done.values()}) == 1
    assert len(procs(d)) == 1, "ceil(4 / 4) = one process"


def test_timeout_cancel_honoured_keeps_the_process(drover):
    d = drover(config=warm_config(max_concurrent=1, timeout_ms=1000, max_attempts=1))
    d.submit([{"id": "slow", "sleep_ms": 20000}])
    done, failed = d.wait_outcomes(["slow"], 20)
    err = failed["slow"]["error"]
    assert err["reason"] == "timeout", err
    cancels = [json.loads(p.read_text()) for p in d.records.glob("slow__*.cancel.json")]
    assert [c["reason"] for c in cancels] == ["timeout"], cancels
    ends = job_records(d, "end", "slow")
    assert ends and ends[0]["finished"] is False, "the handler stopped the job on the cancel: %r" % ends
    d.submit([{"id": "next"}])
    done = all_complete(d, ["next"])
    assert done["next"]["result"]["pid"] == cancels[0]["pid"], "the same process serves the next job"
    w = worker_stats(d)
    assert w["handler_restarts"] == 0 and len(w["handlers"]) == 1, w
    assert d.stats()["jobs"]["timed_out"] == 1


def test_timeout_cancel_ignored_kills_the_process_and_retries_its_siblings(drover):
    # kill_grace_ms is the window in which the siblings must reach the process: wide, for a loaded machine.
    d = drover(config=warm_config(max_concurrent=4, handler_concurrency=4, timeout_ms=4000, kill_grace_ms=3000,
                                  max_attempts=2))
    grandchild = d.state / "grandchild.pid"
    d.submit([{"id": "stubborn", "sleep_ms": 60000, "ignore_cancel": True, "grandchild": str(grandchild),
               "quick_after_first": True}])
    d.wait_until(lambda: list(d.records.glob("stubborn__*.cancel.json")), 20, "the cancel of the stubborn job")
    first_pid = job_records(d, "start", "stubborn")[0]["pid"]
    gc_pid = int(grandchild.read_text())
    # Siblings arrive while the cancel goes unanswered; on attempt 1 they wait for a file that never comes.
    sib = ["sib%d" % i for i in range(3)]
    d.submit([{"id": i, "hold_file": str(d.state / "never")} for i in sib])
    d.wait_until(lambda: len(job_records(d, "start")) >= 4, 20, "the siblings running in the same process")
    done, failed = d.wait_outcomes(sib + ["stubborn"], 40)
    assert done["stubborn"]["attempts"] == 2, "attempt 1 timed out, attempt 2 was quick: %r" % done["stubborn"]
    for i in sib:
        assert i in done, "sibling %s should complete on its retry: %r" % (i, failed.get(i))
        assert done[i]["attempts"] == 2, done[i]
        assert done[i]["result"]["pid"] != first_pid, "the retry ran in the replacement process"
    log = d.log_text()
    assert "job stubborn did not answer its cancel within 3000 ms" in log, log[-3000:]
    for i in sib:
        assert "job=%s attempt=1 attempt 1 failed (handler process %d was killed by drover" % (i, first_pid) in log
    wait_until(lambda: process_gone(first_pid) and process_gone(gc_pid), 10,
               "the killed process and its grandchild to be gone")
    assert not pgid_alive(first_pid)
    w = worker_stats(d)
    assert w["handler_restarts"] == 1, w
    assert first_pid not in [h["pid"] for h in w["handlers"]]


def test_crash_mid_job_retries_and_restarts_with_back_off(drover):
    d = drover(config=warm_config(max_concurrent=1))
    d.submit([{"id": "crashy", "crash_once": str(d.state / "crashed")}])
    done = all_complete(d, ["crashy"])
    assert done["crashy"]["attempts"] == 2, done["crashy"]
    starts = job_records(d, "start", "crashy")
    assert len(starts) == 2 and starts[0]["pid"] != starts[1]["pid"], starts
    crashed_at = (d.state / "crashed").stat().st_mtime + 0.2  # it exits 0.2 s after making the file
    second = procs(d)[starts[1]["pid"]]
    assert second["started"] - crashed_at >= 0.9, "restarted after the 1 s back-off, not at once"
    w = worker_stats(d)
    assert w["handler_restarts"] == 1 and not w["fault"], w
    assert "ended (exit 3) holding 1 job(s)" in d.log_text()


def test_garbage_on_stdout_kills_restarts_and_retries(drover):
    d = drover(config=warm_config(max_concurrent=1))
    d.submit([{"id": "noisy", "garbage_once": str(d.state / "said-garbage")}])
    done = all_complete(d, ["noisy"])
    assert done["noisy"]["attempts"] == 2
    starts = job_records(d, "start", "noisy")
    assert starts[0]["pid"] != starts[1]["pid"]
    log = d.log_text()
    assert "protocol violation: not JSON" in log, log[-2000:]
    w = worker_stats(d)
    assert w["handler_protocol_errors"] == 1 and w["handler_restarts"] == 1, w
    rc, metrics = d.ctl("metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'drover_handler_processes_total{event="protocol_error"} 1' in metrics, metrics
    assert 'drover_handler_processes_total{event="restarted"} 1' in metrics, metrics
    wait_until(lambda: process_gone(starts[0]["pid"]), 10, "the process that wrote garbage to be gone")


def test_error_frames_retry_or_fail_at_once(drover):
    d = drover(config=warm_config(max_concurrent=2, max_attempts=3))
    d.submit([{"id": "permanent", "error": "bad input", "retry": False},
              {"id": "transient", "error": "try again", "error_times": 1},
              {"id": "hopeless", "error": "never works"}])
    done, failed = d.wait_outcomes(["permanent", "transient", "hopeless"], 30)
    p = failed["permanent"]
    assert p["attempts"] == 1 and p["error"]["reason"] == "handler_error", p
    assert p["error"]["message"] == "bad input", p
    assert done["transient"]["attempts"] == 2, done["transient"]
    h = failed["hopeless"]
    assert h["attempts"] == 3 and h["error"]["reason"] == "handler_error", h
    pids = {r["pid"] for r in job_records(d, "start")}
    assert len(pids) <= 2, "error frames do not cost a process: %r" % pids
    assert worker_stats(d)["handler_restarts"] == 0


def test_recycling_by_count(drover):
    d = drover(config=warm_config(max_concurrent=1, handler_max_jobs=3))
    ids = ["r%d" % i for i in range(7)]
    for i in ids:  # one at a time, so the order of processes is the order of jobs
        d.submit([{"id": i}])
        all_complete(d, [i])
    done = d.complete()
    pids = [done[i]["result"]["pid"] for i in ids]
    assert pids[0] == pids[1] == pids[2] and pids[3] == pids[4] == pids[5], pids
    assert len(set(pids)) == 3, "a new process after each 3 jobs: %r" % pids
    assert all(done[i]["attempts"] == 1 for i in ids)
    exited = wait_until(lambda: [r for r in procs(d).values() if r.get("exited")], 10, "a recycled process to exit")
    assert {r["pid"] for r in exited} <= {pids[0], pids[3]}, "recycled processes exited by themselves on EOF"
    w = worker_stats(d)
    assert w["handler_recycles"] == 2 and w["handler_restarts"] == 0, w


def test_recycling_by_memory(drover):
    d = drover(config=warm_config(max_concurrent=1, handler_max_rss_mb=60))
    ids = ["m%d" % i for i in range(6)]
    for i in ids:
        d.submit([{"id": i, "grow_mb": 25, "sleep_ms": 300}])
        all_complete(d, [i])
    done = d.complete()
    pids = [done[i]["result"]["pid"] for i in ids]
    assert len(set(pids)) >= 2, "a process above handler_max_rss_mb is replaced: %r" % pids
    assert all(doc["attempts"] == 1 for doc in done.values())
    assert "above handler_max_rss_mb 60" in d.log_text()
    assert worker_stats(d)["handler_recycles"] >= 1


def test_progress_and_stderr_of_a_job(drover):
    d = drover(config=warm_config(max_concurrent=1))
    hold = d.state / "release"
    d.submit([{"id": "talky", "progress": [0.25, 0.5], "stderr": "marker-from-handler", "hold_file": str(hold)}])

    def progress():
        jobs = worker_stats(d)["jobs"]
        return jobs and jobs[0]["progress"] == 0.5
    d.wait_until(progress, 20, "progress 0.5 in stats")
    hold.write_text("go")
    all_complete(d, ["talky"])
    pid = job_records(d, "start", "talky")[0]["pid"]
    assert "job=talky handler=%d handler process %d: marker-from-handler" % (pid, pid) in d.log_text()


def test_handler_that_never_gets_ready_is_a_worker_fault(drover):
    d = drover(config=warm_config(max_concurrent=1, handler="/bin/false"))

    def fault():
        w = worker_stats(d)
        return w if w["fault"] else None
    w = d.wait_until(fault, 30, "the crash loop to show as the worker's fault")
    assert w["fault_cause"] == "handler" and "in a row" in w["fault"], w
    assert w["handler_restarts"] >= 3, w


def test_reload_with_a_new_handler_fails_no_job(drover):
    d = drover(config=warm_config(workers=2, max_concurrent=2), env={"WARM_TAG": "old"})
    first = ["a%d" % i for i in range(6)]
    d.submit([{"id": i, "sleep_ms": 400} for i in first])
    d.wait_until(lambda: job_records(d, "start"), 20, "jobs running")
    d.write_config({"jobs": {"handler": "%s %s --new" % (PYTHON, WARM_HANDLER), "env.WARM_TAG": "new",
                             "env.WARM_SETUP_MS": "1000"}})
    d.signal(signal.SIGHUP)
    second = ["b%d" % i for i in range(6)]
    d.submit([{"id": i, "sleep_ms": 100} for i in second])
    done = all_complete(d, first + second, timeout=60)

    def new_pids():
        return {pid for pid, r in procs(d).items() if r["argv"] == ["--new"]}

    def replaced():
        hs = [h["pid"] for w in d.stats()["workers"] for h in w.get("handlers", [])]
        return len(hs) == 4 and set(hs) <= new_pids()
    d.wait_until(replaced, 30, "every worker's handler processes to be new ones")
    d.submit([{"id": "after"}])
    after = all_complete(d, ["after"])["after"]
    assert after["result"]["tag"] == "new" and after["result"]["pid"] in new_pids(), after
    assert all(doc["attempts"] == 1 for doc in done.values()), "nothing failed or retried during the reload"
    # One worker at a time, the next only once the new one has a ready handler process.
    new = [procs(d)[pid] for pid in new_pids()]
    by_slot = {}
    for r in sorted(new, key=lambda r: r["started"]):
        by_slot.setdefault(r["env"]["DROVER_WORKER"], r)
    first, second = sorted(by_slot.values(), key=lambda r: r["started"])
    assert second["started"] >= first["ready"], "worker %s was replaced before worker %s's handler was ready" % (
        second["env"]["DROVER_WORKER"], first["env"]["DROVER_WORKER"])


def test_term_drain_finishes_jobs_in_flight_then_ends_the_processes(drover):
    d = drover(config=warm_config(max_concurrent=2))
    ids = ["t1", "t2"]
    d.submit([{"id": i, "sleep_ms": 1500} for i in ids])
    d.wait_until(lambda: len(job_records(d, "start")) == 2, 20, "both jobs running")
    pids = {r["pid"] for r in job_records(d, "start")}
    d.signal(signal.SIGTERM)
    assert d.wait_exit(20) == 0
    done = d.complete()
    assert set(ids) <= set(done), "jobs in flight finish during the drain: %r" % sorted(done)
    recs = procs(d)
    for pid in pids:
        assert recs[pid].get("exited"), "process %d got EOF on stdin and exited by itself" % pid
        assert process_gone(pid)


def test_kafka_offsets_only_after_outcomes(mock, drover, workdir):
    import kafka_harness as kh
    m = mock()
    hold = Path(workdir) / "release"
    cfg = kh.kafka_config(m.bootstrap, workers=2, max_concurrent=4,
                          jobs={"handler": "%s %s" % (PYTHON, WARM_HANDLER), "handler_mode": "persistent",
                                "handler_concurrency": 4})
    d = drover(config=cfg)
    kh.wait_group_stable(d, 2)
    jobs = kh.make_jobs(60, sleep_ms=20)
    held_id = "held-1"
    jobs.insert(10, (held_id, json.dumps({"id": held_id, "hold_file": str(hold)})))
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, jobs)
    others = [i for i, _ in jobs if i != held_id]
    complete, failed = kh.wait_outcomes(m.bootstrap, others, 60, drover=d)
    assert not failed and set(others) <= set(complete)
    # The held job's partition cannot be committed past it while it runs.
    requests = kh.request_offsets(m.bootstrap)
    part, offset = next((p, o) for p, recs in requests.items() for o, k in recs if k == held_id)
    # Every other partition gets committed to its end: commits do happen, and only behind outcomes.
    def others_committed():
        c, h = m.committed(), m.high_watermarks()
        return all(c.get(p, -1) == hw for p, hw in h.items() if p != part)
    d.wait_until(others_committed, 30, "the other partitions committed to their end", interval=0.3)
    kh.assert_no_commit_ahead(m, m.bootstrap, requests)
    assert m.committed().get(part, -1) <= offset, "committed past a job still running"
    hold.write_text("go")
    complete, failed = kh.wait_outcomes(m.bootstrap, [i for i, _ in jobs], 60, drover=d)
    assert not failed
    kh.wait_committed_to_end(m, 30, drover=d)
    kh.assert_no_commit_ahead(m, m.bootstrap)
    pids = {doc["result"]["pid"] for _, doc in kh.outcome_docs(m.bootstrap, kh.COMPLETE)}
    assert len(pids) <= 2, "61 jobs served by the two workers' warm processes: %r" % pids


def test_worker_killed_takes_its_handler_processes_with_it(drover):
    d = drover(config=warm_config(max_concurrent=2))
    grandchild = d.state / "gc.pid"
    d.submit([{"id": "orphan-maker", "grandchild": str(grandchild), "hold_file": str(d.state / "never"),
               "quick_after_first": True}])
    d.wait_until(lambda: grandchild.exists() and grandchild.read_text(), 20, "the job's grandchild")
    handler_pids = {h["pid"] for h in worker_stats(d)["handlers"]}
    gc_pid = int(grandchild.read_text())
    worker = worker_stats(d)["pid"]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: all(process_gone(p) for p in handler_pids | {gc_pid}), 10,
               "the dead worker's handler processes (busy and idle) and the grandchild to be gone")
    done = all_complete(d, ["orphan-maker"])
    assert done["orphan-maker"]["result"]["pid"] not in handler_pids, "retried in the new worker's processes"


def readme_example(lang):
    """The code block of `lang` under README's "### Example handlers"."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Example handlers", 1)[1]
    return section.split("```%s\n" % lang, 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("lang,interpreter", [("python", PYTHON), ("js", "/usr/bin/node")])
def test_the_readme_example_handlers_work(drover, workdir, lang, interpreter):
    if not os.path.exists(interpreter):
        pytest.fail("%s is needed for the README's %s example" % (interpreter, lang))
    script = Path(workdir) / ("example." + lang)
    script.write_text(readme_example(lang))
    d = drover(config=warm_config(max_concurrent=2, handler="%s %s" % (interpreter, script)))
    jobs = [{"id": "ex%d" % i, "n": i} for i in range(4)]
    done = all_complete(d, d.submit(jobs, record=False))
    for job in jobs:
        assert done[job["id"]]["result"] == {"echo": job}, done[job["id"]]
    assert worker_stats(d)["handler_restarts"] == 0


def test_result_limits_and_other_violations(drover):
    d = drover(config=warm_config(max_concurrent=1, max_result_bytes=1000, max_attempts=2))
    d.submit([{"id": "big", "result_bytes": 2000}])
    done, failed = d.wait_outcomes(["big"], 20)
    assert failed["big"]["error"]["reason"] == "result_too_large" and failed["big"]["attempts"] == 2, failed["big"]
    assert worker_stats(d)["handler_protocol_errors"] == 0, "a result over max_result_bytes is no violation"

    d.submit([{"id": "huge", "result_bytes": 70000}])  # beyond max_result_bytes + 65536: the frame itself
    done, failed = d.wait_outcomes(["huge"], 20)
    assert failed["huge"]["error"]["reason"] == "handler_lost", failed["huge"]
    assert "a frame longer than 66536 bytes" in d.log_text()

    d.submit([{"id": "stray", "stray_once": str(d.state / "stray")}, {"id": "twice", "double_answer": True}])
    done = all_complete(d, ["stray", "twice"])
    assert done["stray"]["attempts"] == 2, done["stray"]
    assert done["twice"]["attempts"] == 1 and done["twice"]["result"]["id"] == "twice", done["twice"]
    log = d.log_text()
    assert "a frame for an id it does not hold: \"no-such-job\"" in log
    assert "a frame for an id it does not hold: \"twice\"" in log, "an answer for a finished id is a violation"
    assert worker_stats(d)["handler_protocol_errors"] == 4  # huge (2 attempts), stray, twice


def test_quit_kills_the_processes_and_gives_their_jobs_back(drover):
    d = drover(config=warm_config(max_concurrent=2))
    d.submit([{"id": "q%d" % i, "hold_file": str(d.state / "never")} for i in range(2)])
    d.wait_until(lambda: len(job_records(d, "start")) == 2, 20, "both jobs running")
    pids = {h["pid"] for h in worker_stats(d)["handlers"]}
    d.signal(signal.SIGQUIT)
    assert d.wait_exit(20) == 0
    wait_until(lambda: all(process_gone(p) for p in pids), 10, "the handler processes to be gone")
    assert not d.complete() and not d.failed(), "killed jobs are no outcome"
    assert len(d.spool_files("incoming")) == 2, \
        "both jobs are back in the queue: %r %r" % (d.spool_files("incoming"), d.spool_files("processing"))


def test_a_process_not_ready_in_time_is_killed_and_restarted(drover):
    d = drover(config=warm_config(max_concurrent=1, handler_start_timeout_ms=300), env={"WARM_SETUP_MS": "5000"})
    d.wait_until(lambda: worker_stats(d)["handler_restarts"] >= 1, 20, "a restart after the start timeout")
    assert "did not say ready within 300 ms" in d.log_text()
    assert not procs(d), "no process ever said ready"


def test_kafka_revoke_cancels_running_jobs_and_they_run_again(mock, drover, workdir):
    import kafka_harness as kh
    m = mock()
    hold = Path(workdir) / "release"
    cfg = kh.kafka_config(m.bootstrap, workers=1, max_concurrent=6, supervisor={"shutdown_timeout_ms": 1500},
                          jobs={"handler": "%s %s" % (PYTHON, WARM_HANDLER), "handler_mode": "persistent",
                                "handler_concurrency": 6})
    a = drover(config=cfg, name="a")
    kh.wait_group_stable(a, 1)
    jobs = kh.make_jobs(6, prefix="rv", hold_file=str(hold))
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, jobs)
    a.wait_until(lambda: len(job_records(a, "start")) == 6, 30, "the six jobs running in a")
    b = drover(config=cfg, name="b")
    b.wait_until(lambda: any(kh.kafka_partitions(b.stats()).values()), 60, "supervisor b to get partitions")
    cancels = a.wait_until(lambda: [json.loads(p.read_text()) for p in a.records.glob("*.cancel.json")], 30,
                           "the revoked jobs' cancels")
    assert {c["reason"] for c in cancels} == {"cancelled"}, cancels
    a.wait_until(lambda: len(job_records(a, "end")) >= len(cancels), 20, "the handler to stop the cancelled jobs")
    hold.write_text("go")
    complete, failed = kh.wait_outcomes(m.bootstrap, [i for i, _ in jobs], 60, drover=a)
    assert not failed, failed
    assert worker_stats(a)["handler_restarts"] == 0, "a cancelled job costs no process"

    def committed_to_end():  # partitions without a message have nothing to commit
        c, h = m.committed(), m.high_watermarks()
        return all(c.get(p, -1) == hw for p, hw in h.items() if hw > 0)
    a.wait_until(committed_to_end, 30, "committed offsets at the end of every partition with jobs", interval=0.3)
    kh.assert_no_commit_ahead(m, m.bootstrap)


def test_droverctl_cancel_sends_a_cancel_frame_and_the_process_serves_on(drover):
    # droverctl cancel of a job in a handler process: a cancel frame (reason "cancelled"), the
    # handler answers it, the job fails as cancelled without a retry, and the process lives on.
    d = drover(config=warm_config(max_concurrent=1, max_attempts=3))
    d.submit([{"id": "longish", "sleep_ms": 60000}])
    d.wait_until(lambda: job_records(d, "start", "longish"), 20, "longish to start")
    pid = job_records(d, "start", "longish")[0]["pid"]
    rc, out = d.ctl("cancel", "longish")
    assert rc == 0 and out.startswith("ok: cancelling longish"), (rc, out, d.last_ctl_err)
    _, failed = d.wait_outcomes(["longish"], 20)
    assert failed["longish"]["error"]["reason"] == "cancelled", failed["longish"]
    assert failed["longish"]["attempts"] == 1, failed["longish"]
    assert job_records(d, "cancel", "longish"), "the handler got a cancel frame"
    d.submit([{"id": "after"}])
    done = all_complete(d, ["after"])
    assert job_records(d, "start", "after")[0]["pid"] == pid, "the process that answered the cancel serves on"
    assert len(job_records(d, "start", "longish")) == 1, "no retry"
    assert done["after"]["attempts"] == 1
