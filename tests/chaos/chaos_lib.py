"""
chaos_lib: what every fault scenario of tests/chaos checks, on either backend.

The contract (README, "Guarantees under faults") is checked the same way in
every scenario:
  - every job ends exactly once, in complete/ or failed/ (Kafka: on the
    complete or failed topic, read with kcat; duplicates there are counted and
    must stay within the scenario's bound);
  - no job runs more than max_attempts times, and all runs together exceed
    the number of jobs by at most the jobs in flight at each fault (the
    handler records every run; RunLog reads the records);
  - nothing is left running: no handler whose pid was recorded, no process
    that carries the instance's marker or descends from its supervisor,
    besides the live workers;
  - stats tell the truth: counters never go down (StatsWatcher samples them
    during the run), completed + failed equals the jobs, and a fault shows in
    stats (and health) while it lasts and clears afterwards.

Every wait polls with a deadline; every failure says what was seen.
"""

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from harness import MARK_VAR, HarnessError, proc_alive, proc_environ, wait_until

# The spool of the full-disk scenario lives on a tmpfs this large: room for a few hundred job
# files and their outcomes (one 4 KiB page each), small enough to fill in a blink.
SMALL_DISK_BYTES = 16 * 1024 * 1024

# The handler of every scenario: POSIX sh, so that a few hundred runs cost little CPU on a
# loaded machine. Each run leaves RUN_DIR/<id>@<pid>@<attempt>@<worker>.start, and .end when it
# got to the end (a run without .end was killed). The job's fields say how to behave:
#   "kill_worker":true   kill -9 its parent (the worker), then wait to be killed itself
#   "hold":"PATH"        wait until PATH exists (at most 120 s)
#   "sleep":SECONDS      sleep that long
HANDLER = r"""#!/bin/sh
# chaos handler: records each run, then does what the job says.
job=$(cat)
run="$CHAOS_RUN_DIR/$DROVER_JOB_ID@$$@${DROVER_ATTEMPT:-0}@${DROVER_WORKER:-x}"
: > "$run.start"
case "$job" in
*'"kill_worker":true'*) kill -9 "$PPID"; sleep 60; exit 1 ;;
esac
case "$job" in
*'"hold":"'*) h=${job#*\"hold\":\"}; h=${h%%\"*}; n=0
  while [ ! -e "$h" ] && [ "$n" -lt 600 ]; do sleep 0.2; n=$((n + 1)); done ;;
esac
case "$job" in
*'"sleep":'*) t=${job#*\"sleep\":}; t=${t%%[,\}]*}; sleep "$t" ;;
esac
: > "$run.end"
printf '{"done":"%s","attempt":"%s"}\n' "$DROVER_JOB_ID" "${DROVER_ATTEMPT:-0}"
"""


def write_handler(workdir, name="runs"):
    """(handler path, RunLog of the run directory `name`); one handler file serves every instance."""
    path = Path(workdir) / "chaos_handler.sh"
    if not path.exists():
        path.write_text(HANDLER)
        path.chmod(0o755)
    runs = Path(workdir) / name
    runs.mkdir(exist_ok=True)
    return path, RunLog(runs)


def handler_jobs_config(handler, runlog, **jobs):
    """The [jobs] section that runs the chaos handler and tells it where to record."""
    section = {"handler": str(handler), "env.CHAOS_RUN_DIR": str(runlog.dir)}
    section.update(jobs)
    return section


def job_json(job_id, **fields):
    return json.dumps(dict(fields, id=job_id), separators=(",", ":"))


class RunLog:
    """The runs the chaos handler recorded."""

    def __init__(self, directory):
        self.dir = Path(directory)

    def runs(self):
        """[{id, pid, attempt, worker, ended}] of every run started so far."""
        names = os.listdir(self.dir)
        ended = {n[:-4] for n in names if n.endswith(".end")}
        out = []
        for n in names:
            if not n.endswith(".start"):
                continue
            base = n[:-6]
            job_id, pid, attempt, worker = base.rsplit("@", 3)
            out.append({"id": job_id, "pid": int(pid), "attempt": attempt, "worker": worker,
                        "ended": base in ended})
        return out

    def counts(self):
        return Counter(r["id"] for r in self.runs())

    def of(self, job_id):
        return [r for r in self.runs() if r["id"] == job_id]


# ---- stats -------------------------------------------------------------------------

COUNTERS = ("started", "completed", "failed", "retried")


class StatsWatcher:
    """Samples `droverctl stats` in a thread while a scenario runs.

    Checks as it goes that no counter of one supervisor (same pid) ever goes down,
    and keeps every worker fault it saw with the time it was seen.
    """

    def __init__(self, d, period=0.3):
        self.d = d
        self.period = period
        self.samples = []        # (monotonic time, supervisor pid, jobs dict, restarts total)
        self.faults = []         # (monotonic time, slot, text)
        self.decreases = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self):
        while not self._stop.is_set():
            try:
                if self.d.alive():
                    self.sample(self.d.stats())
            except (HarnessError, OSError, ValueError, KeyError):
                pass  # drover killed or restarting: the scenario knows, the watcher waits
            except Exception:  # noqa: BLE001 (a subprocess timeout must not end the watcher)
                pass
            self._stop.wait(self.period)

    def sample(self, s):
        now = time.monotonic()
        jobs = s["jobs"]
        restarts = sum(w.get("restarts", 0) for w in s["workers"])
        if self.samples and self.samples[-1][1] == s["pid"]:
            _, _, prev, prev_restarts = self.samples[-1]
            for key in COUNTERS:
                if jobs.get(key, 0) < prev.get(key, 0):
                    self.decreases.append("%s went from %d to %d" % (key, prev[key], jobs[key]))
            if restarts < prev_restarts:
                self.decreases.append("worker restarts went from %d to %d" % (prev_restarts, restarts))
        self.samples.append((now, s["pid"], dict(jobs), restarts))
        for w in s["workers"]:
            if w.get("fault"):
                self.faults.append((now, w["slot"], w["fault"]))
        return s

    def assert_monotonic(self):
        assert self.samples, "stats were never sampled"
        assert not self.decreases, "stats counters went down: %s" % self.decreases[:10]


def pool_faults(s):
    """[(slot, fault)] of every worker that shows one (and a pool-wide fault, if stats has one)."""
    out = [(w["slot"], w["fault"]) for w in s["workers"] if w.get("fault")]
    if s.get("fault"):
        out.append(("pool", s["fault"]))
    return out


def assert_counters(s, completed, failed, slack=0, what=""):
    """completed and failed of stats equal the outcomes; slack allows re-deliveries counted again."""
    jobs = s["jobs"]
    ok = (completed <= jobs["completed"] <= completed + slack and failed <= jobs["failed"] <= failed + slack
          and jobs["completed"] + jobs["failed"] <= completed + failed + slack)
    assert ok, ("stats count %d completed + %d failed, the outcomes are %d + %d (slack %d for re-deliveries)%s"
                % (jobs["completed"], jobs["failed"], completed, failed, slack, what))


# ---- runs --------------------------------------------------------------------------

def assert_runs_bounded(runlog, ids, per_job, extra_bound, what):
    """No job of ids ran more than per_job times; all together ran at most len(ids) + extra_bound times."""
    counts = runlog.counts()
    over = {i: counts[i] for i in ids if counts[i] > per_job}
    assert not over, "%s: jobs ran more than %d times: %s" % (what, per_job, dict(list(over.items())[:10]))
    total = sum(counts[i] for i in ids)
    extra = total - len(ids)
    assert extra <= extra_bound, ("%s: %d runs for %d jobs, %d re-runs > bound %d"
                                  % (what, total, len(ids), extra, extra_bound))
    return extra


def worker_lost_collateral(runlog, failed, innocent_ids, max_attempts):
    """{id: "worker_lost"} of innocent jobs that failed because each of their attempts was in flight
    when its worker died (a job that kills its worker took them down every time): the contract
    allows exactly that. In flight includes a handler that ended but whose outcome was not yet
    recorded when the worker died. A job with more runs than max_attempts does not qualify."""
    out = {}
    for i in innocent_ids:
        if i in failed and all(doc["error"]["reason"] == "worker_lost" for doc in failed[i]):
            if len(runlog.of(i)) <= max_attempts:
                out[i] = "worker_lost"
    return out


def late_worker_lost(complete, failed):
    """Ids with a complete outcome and, besides, a later worker_lost failure: an attempt completed,
    but its worker died before the job left the queue, and the redelivery (and any attempts after
    it, each dying with its worker) used up max_attempts (README "Guarantees under faults": the
    complete outcome is the job's). Kafka only: its source cannot tell that an outcome event of
    the delivery is already on the topic; the spool can, and never adds one."""
    out = set()
    for i in set(complete) & set(failed):
        docs = complete[i] if isinstance(complete[i], list) else []
        lost = [f for f in failed[i] if f["error"]["reason"] == "worker_lost"]
        if lost and len(lost) == len(failed[i]) and (not docs or any(
                (c.get("attempts") or 0) <= (f.get("attempts") or 0) for c in docs for f in lost)):
            out.add(i)
    return out


def fail_when_runs_exceed(runlog, limits):
    """A check for wait predicates: raises at once when a job ran more often than its limit."""
    counts = runlog.counts()
    for job_id, limit in limits.items():
        if counts[job_id] > limit:
            raise HarnessError("job %s ran %d times (limit %d): runs %s"
                               % (job_id, counts[job_id], limit, runlog.of(job_id)[:8]))


# ---- processes ---------------------------------------------------------------------

def ours(pid, mark):
    return proc_alive(pid) and proc_environ(pid).get(MARK_VAR) == mark


def live_handlers(runlog, mark):
    """Recorded handler pids still alive and carrying the instance's marker (pid reuse excluded)."""
    return sorted(r["pid"] for r in runlog.runs() if ours(r["pid"], mark))


def runs_settled(runs, mark):
    """True when every run ended or its process is gone (killed before its end record)."""
    return all(r["ended"] or not ours(r["pid"], mark) for r in runs)


def assert_nothing_left(d, runlog, timeout=15):
    """While d runs: once its jobs are done, no handler of it lives and its only processes are its workers."""
    def clean():
        workers = {w["pid"] for w in d.stats()["workers"] if w.get("pid")}
        extra = {p: c for p, c in d.descendants().items() if p not in workers}
        handlers = live_handlers(runlog, d.mark)
        return None if extra or handlers else True

    def detail():
        workers = {w["pid"] for w in d.stats()["workers"] if w.get("pid")}
        return "handlers alive: %r; processes besides the workers %r: %r" % (
            live_handlers(runlog, d.mark), sorted(workers),
            {p: c for p, c in d.descendants().items() if p not in workers})
    wait_until(clean, timeout, "no process of drover %s besides its workers" % d.mark, interval=0.1,
               on_timeout=detail)


def stop_and_assert_gone(d, runlog, timeout=15):
    """Stops d by TERM (graceful, exit 0) and checks that nothing of it is left."""
    code = d.stop()
    assert code == 0, "drover exited with %r on SIGTERM\n%s" % (code, d.diagnostics())
    wait_until(lambda: not d.descendants() and not live_handlers(runlog, d.mark), timeout,
               "every process of drover %s to be gone after it stopped" % d.mark,
               on_timeout=lambda: "left: %r, handlers %r" % (d.descendants(), live_handlers(runlog, d.mark)))


def kill9(pid):
    os.kill(pid, signal.SIGKILL)


# ---- spool outcomes ----------------------------------------------------------------

def spool_outcomes(d):
    """({id: [doc, ...]} of complete/, {id: [doc, ...]} of failed/), keyed by each document's id."""
    def by_id(kind):
        out = {}
        for doc in d.outcomes(kind).values():
            out.setdefault(doc.get("id"), []).append(doc)
        return out
    return by_id("complete"), by_id("failed")


def wait_spool_outcomes(d, ids, timeout, runlog=None, limits=None):
    """Waits until every id has an outcome document; fails early when a job runs past its limit."""
    ids = set(ids)
    seen = {}

    def done():
        if runlog is not None and limits:
            fail_when_runs_exceed(runlog, limits)
        complete, failed = spool_outcomes(d)
        seen["missing"] = sorted(ids - set(complete) - set(failed))
        return (complete, failed) if not seen["missing"] else None

    def detail():
        missing = seen.get("missing", [])
        counts = runlog.counts() if runlog is not None else {}
        return "missing %d: %s (runs so far: %s)\n%s" % (
            len(missing), missing[:8], {i: counts.get(i, 0) for i in missing[:8]}, d.diagnostics(25))
    wait_until(_alive_check(d, done), timeout, "outcomes of %d jobs" % len(ids), interval=0.1, on_timeout=detail)
    # An outcome can exist while its job runs again (a re-delivery): count nothing before the
    # queue is empty and nothing is in flight.
    d.wait_until(lambda: not d.spool_files("incoming") and not d.spool_files("processing")
                 and d.stats()["jobs"]["in_flight"] == 0, timeout, "the queue to drain")
    return spool_outcomes(d)


def _alive_check(d, pred):
    def checked():
        if d.proc is not None and d.proc.poll() is not None:
            raise HarnessError("drover exited with %s\n%s" % (d.proc.returncode, d.diagnostics()))
        return pred()
    return checked


def assert_exactly_once_spool(d, ids, expect_failed=None):
    """Every id has exactly one outcome document, in complete/ unless expect_failed says {id: reason}.
    No worker_lost beside a complete outcome is tolerated here: the spool finds the outcome a dead
    worker recorded (source_ops.finish_recorded), unlike Kafka (assert_exactly_once_kafka)."""
    expect_failed = expect_failed or {}
    complete, failed = spool_outcomes(d)
    both = sorted(set(complete) & set(failed))
    assert not both, "jobs with both a complete and a failed document: %s" % both[:10]
    doubles = {i: len(v) for i, v in list(complete.items()) + list(failed.items()) if len(v) > 1}
    assert not doubles, "jobs with more than one outcome document: %s" % doubles
    missing = sorted(set(ids) - set(complete) - set(failed))
    assert not missing, "jobs without an outcome: %s" % missing[:10]
    wrong = {i: failed[i][0]["error"] for i in failed if i in ids and i not in expect_failed}
    assert not wrong, "jobs that should have completed failed: %s" % dict(list(wrong.items())[:5])
    for i, reason in expect_failed.items():
        assert i in failed, "%s should have failed (%s), it completed: %s" % (i, reason, complete.get(i))
        assert failed[i][0]["error"]["reason"] == reason, (i, failed[i][0]["error"])
    return complete, failed


# ---- Kafka outcomes ----------------------------------------------------------------

def kafka_outcomes(bootstrap, complete_topic, failed_topic):
    """(Counter of ids on the complete topic, {id: [failed doc, ...]}), every message kept."""
    import kafka_harness as kh
    complete = Counter(i for i, _ in kh.outcome_docs(bootstrap, complete_topic))
    failed = {}
    for i, doc in kh.outcome_docs(bootstrap, failed_topic):
        failed.setdefault(i, []).append(doc)
    return complete, failed


def wait_kafka_outcomes(bootstrap, ids, timeout, d, complete_topic, failed_topic, runlog=None, limits=None,
                        mock=None, requests_topic=None, group=None):
    """Waits until every id has an outcome event; with mock, also until the group's work is settled."""
    ids = set(ids)
    seen = {}

    def done():
        if runlog is not None and limits:
            fail_when_runs_exceed(runlog, limits)
        complete, failed = kafka_outcomes(bootstrap, complete_topic, failed_topic)
        seen["missing"] = sorted(ids - set(complete) - set(failed))
        return (complete, failed) if not seen["missing"] else None

    def detail():
        missing = seen.get("missing", [])
        counts = runlog.counts() if runlog is not None else {}
        return "missing %d: %s (runs so far: %s)\n%s" % (
            len(missing), missing[:8], {i: counts.get(i, 0) for i in missing[:8]}, d.diagnostics(25))
    wait_until(_alive_check(d, done), timeout, "outcomes of %d jobs on %s/%s" % (
        len(ids), complete_topic, failed_topic), interval=0.5, on_timeout=detail)
    if mock is not None:
        # An outcome can be on the topic while its job runs again (a re-delivery): count nothing
        # before every offset is committed and nothing is in flight.
        wait_committed_to_end(mock, d, requests_topic, group, timeout)
        d.wait_until(lambda: d.stats()["jobs"]["in_flight"] == 0, timeout, "no job in flight", interval=0.2)
    return kafka_outcomes(bootstrap, complete_topic, failed_topic)


def wait_committed_to_end(mock, d, topic, group, timeout):
    """Waits until the group's committed offset of every partition of topic is its high watermark."""
    def reached():
        c, h = mock.committed(topic, group), mock.high_watermarks(topic)
        return c if all(hw == 0 or c.get(p, -1) == hw for p, hw in h.items()) else None  # 0: never used
    return wait_until(_alive_check(d, reached), timeout, "%s committed to the end of %s" % (group, topic),
                      interval=0.3, on_timeout=lambda: "committed %s, end %s\n%s" % (
                          mock.committed(topic, group), mock.high_watermarks(topic), d.diagnostics(20)))


def assert_exactly_once_kafka(complete, failed, ids, dup_bound, expect_failed=None):
    """Every id on exactly one of the topics; duplicates on them at most dup_bound. Returns the duplicates."""
    expect_failed = expect_failed or {}
    ids = set(ids)
    late = late_worker_lost(complete, failed)
    failed = {i: v for i, v in failed.items() if i not in late}
    both = sorted((set(complete) & set(failed)) & ids)
    assert not both, "jobs on both the complete and the failed topic: %s" % both[:10]
    missing = sorted(ids - set(complete) - set(failed))
    assert not missing, "jobs without an outcome event: %s" % missing[:10]
    wrong = {i: failed[i][0]["error"] for i in failed if i in ids and i not in expect_failed}
    assert not wrong, "jobs that should have completed failed: %s" % dict(list(wrong.items())[:5])
    for i, reason in expect_failed.items():
        if i in late:
            continue
        assert i in failed, "%s should have failed (%s), it completed %d time(s)" % (i, reason, complete.get(i, 0))
        reasons = {doc["error"]["reason"] for doc in failed[i]}
        assert reasons == {reason}, (i, [doc["error"] for doc in failed[i]])
    duplicates = sum(c - 1 for i, c in complete.items() if i in ids) + \
        sum(len(v) - 1 for i, v in failed.items() if i in ids)
    assert duplicates <= dup_bound, "%d duplicate outcome events > bound %d" % (duplicates, dup_bound)
    return duplicates
