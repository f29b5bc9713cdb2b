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
    assert not failed, "jobs failed: %r" % failed
    return done


@pytest.mark.asan
def test_warm_start_before_the_first_job_and_many_jobs_per_process(drover):
    d = drover(config=warm_config(max_concurrent=2), env={"WARM_SETUP_MS": "1500"})
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
