"""
test_jobctl: per-job control and the live view (README: Operations,
"Per-job control") against the real drover and droverctl: jobs, cancel,
retry, pause/resume on the spool and on Kafka (the mock cluster), the
socket's permission rules for them, and `droverctl status` rendered into a
pseudo-terminal of a given width, once and with --watch.

Every wait polls for its condition with a deadline. "Nothing started while
paused" is proven by events, not by time: every worker's heartbeat, which
rereads the requests and tries to take a job, has ticked twice while the job
waited in incoming/.
"""

import fcntl
import grp
import json
import os
import pty
import pwd
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

import kafka_harness as kh
from harness import DROVERCTL, ask_as, clean_env, pgid_alive, wait_until

NOBODY = 65534


# ---- helpers ---------------------------------------------------------------------------

def jobs(d):
    rc, out = d.ctl("jobs", "--json")
    assert rc == 0, (rc, out, d.last_ctl_err)
    return json.loads(out)


def running_job(d, job_id):
    for job in jobs(d)["running"]:
        if job["id"] == job_id:
            return job
    return None


def held(d, job_id, **extra):
    """A job that runs until its hold file appears (never, unless the test creates it)."""
    job = {"id": job_id, "hold_file": str(d.tmp / ("%s.go" % job_id)), "hold_max_ms": 60000}
    job.update(extra)
    return job


def release(d, job_id):
    (d.tmp / ("%s.go" % job_id)).write_text("go")


def heartbeat_ticks(d, ticks=2, timeout=15):
    """Waits until every live worker's heartbeat (which also rereads the requests and tries to take a job)
    has ticked `ticks` more times."""
    seen = {}

    def ticked():
        for w in d.stats()["workers"]:
            if not w.get("pid") or w.get("heartbeat_age_ms") is None:
                continue
            key = w["pid"]
            last_age, count = seen.get(key, (None, -1))
            if last_age is None or w["heartbeat_age_ms"] < last_age:
                count += 1
            seen[key] = (w["heartbeat_age_ms"], count)
        return seen and all(count >= ticks for _, count in seen.values())
    d.wait_until(ticked, timeout, "%d heartbeat ticks of every worker" % ticks, interval=0.05)


def run_in_pty(args, columns, rows=50, timeout=20, until=None, interrupt=False):
    """Runs droverctl ARGS with its stdout on a pseudo-terminal of the given size; returns (rc, text).
    until(text): stop reading once true; interrupt: then send SIGINT and collect the rest."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # "\n" as written, so line lengths are what droverctl printed
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    env = clean_env({"COLUMNS": "999"})  # the tty's size must win over $COLUMNS
    proc = subprocess.Popen([str(DROVERCTL), *map(str, args)], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            text = b"".join(chunks).decode(errors="replace")
            if interrupt and not interrupted and until is not None and until(text):
                proc.send_signal(signal.SIGINT)
                interrupted = True
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


# ---- cancel ------------------------------------------------------------------------------

@pytest.mark.asan
def test_cancel_running_spool_job_fails_it_as_cancelled_without_retry_or_orphan(drover):
    d = drover(config={"jobs": {"max_attempts": 3}})
    # It ignores TERM, so the cancel has to go on to KILL after kill_grace_ms, as a timeout does.
    d.submit([held(d, "c1", ignore_term=True, progress=[{"progress": 0.25, "message": "warming up"}])])
    job = d.wait_until(lambda: running_job(d, "c1"), 15, "c1 to run")
    start = d.wait_until(lambda: d.starts("c1"), 10, "c1's start record")[0]
    assert job["attempt"] == 1

    rc, out = d.ctl("cancel", "c1")
    assert rc == 0 and out.startswith("ok: cancelling c1"), (rc, out, d.last_ctl_err)
    _, failed = d.wait_outcomes(["c1"], 15)
    doc = failed["c1"]
    assert doc["error"]["reason"] == "cancelled", doc
    assert doc["attempts"] == 1, doc
    d.wait_until(lambda: not pgid_alive(start["pgid"]), 10, "the cancelled job's process group to be gone")
    # No retry: the outcome is final, the handler started once, nothing of it is queued or claimed.
    d.wait_queue_empty()
    assert len(d.starts("c1")) == 1
    stats = d.stats()
    assert stats["jobs"]["failed"] == 1 and stats["jobs"]["retried"] == 0, stats["jobs"]


@pytest.mark.asan
def test_cancel_queued_spool_job_and_unknown_id(drover):
    d = drover()
    rc, out = d.ctl("pause")
    assert rc == 0 and out == "ok: intake paused\n", (out, d.last_ctl_err)
    d.submit([{"id": "q1"}])
    rc, out = d.ctl("cancel", "q1")
    assert rc == 0 and "was waiting" in out, (out, d.last_ctl_err)
    doc = d.failed()["q1"]
    assert doc["error"]["reason"] == "cancelled" and doc["attempts"] == 0, doc
    assert d.spool_files("incoming") == []

    rc, out = d.ctl("cancel", "no-such-job")
    assert rc == 1 and "no job no-such-job is running or waiting" in d.last_ctl_err, (rc, d.last_ctl_err)
    rc, _ = d.ctl("retry", "no-such-job")
    assert rc == 1 and "no failed job no-such-job" in d.last_ctl_err, d.last_ctl_err

    # After resume a later job runs and q1 never does.
    assert d.ctl("resume")[0] == 0
    d.submit([{"id": "after"}])
    d.wait_outcomes(["after"], 15)
    assert d.starts("q1") == []


# ---- retry ---------------------------------------------------------------------------------

@pytest.mark.asan
def test_retry_failed_spool_job_runs_again_with_attempts_reset(drover):
    d = drover(config={"jobs": {"max_attempts": 2}})
    d.submit([{"id": "r1", "fail_times": 2, "state_dir": str(d.state)}])
    _, failed = d.wait_outcomes(["r1"], 20)
    assert failed["r1"]["attempts"] == 2

    rc, out = d.ctl("retry", "r1")
    assert rc == 0 and out == "ok: r1 is queued again\n", (out, d.last_ctl_err)
    complete = d.wait_until(lambda: d.complete().get("r1"), 20, "r1 to complete after the retry")
    assert complete["attempts"] == 1, complete  # the count started again
    assert "r1" not in d.failed()
    assert len(d.starts("r1")) == 3


def test_retry_keeps_the_id_of_a_job_named_by_its_file(drover):
    d = drover(config={"jobs": {"max_attempts": 1}})
    d.enqueue_raw("byname.json", json.dumps({"exit": 1, "record_dir": str(d.records)}))
    d.wait_outcomes(["byname"], 15)
    assert d.ctl("retry", "byname")[0] == 0, d.last_ctl_err
    d.wait_until(lambda: len(d.starts("byname")) == 2, 15, "byname to run again under its id")


# ---- pause / resume ------------------------------------------------------------------------

def test_pause_keeps_jobs_waiting_through_a_worker_restart_and_a_reload_then_resume_runs_them(drover):
    d = drover(config={"supervisor": {"workers": 2}})
    d.submit([held(d, "long")])
    d.wait_until(lambda: running_job(d, "long"), 15, "long to run")

    assert d.ctl("pause") == (0, "ok: intake paused\n")
    d.submit([{"id": "p1"}])
    heartbeat_ticks(d)
    assert d.starts("p1") == [] and len(d.spool_files("incoming")) == 1
    stats = d.stats()
    assert stats["paused"] is True
    rc, metrics = d.ctl("metrics")
    assert "drover_intake_paused 1" in metrics
    rc, status = d.ctl("status")
    assert rc == 0 and "INTAKE PAUSED" in status, status

    # The running job goes on and finishes while paused.
    release(d, "long")
    d.wait_outcomes(["long"], 15)

    # A worker killed and restarted starts paused; a reload does not resume.
    victim = [w["pid"] for w in stats["workers"] if w["pid"]][0]
    os.kill(victim, signal.SIGKILL)
    d.wait_until(lambda: victim not in d.worker_pids().values() and len(d.wait_workers(2)["workers"]) >= 2,
                 15, "the killed worker to be replaced")
    assert d.ctl("reload")[0] == 0
    heartbeat_ticks(d)
    assert d.starts("p1") == [] and d.stats()["paused"] is True

    assert d.ctl("resume") == (0, "ok: intake resumed\n")
    d.wait_outcomes(["p1"], 15)
    assert d.stats()["paused"] is False


# ---- jobs ----------------------------------------------------------------------------------

@pytest.mark.asan
def test_jobs_json_lists_running_queued_and_failed(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"max_concurrent": 1}})
    d.submit([{"id": "bad", "exit": 65}])
    d.wait_outcomes(["bad"], 15)
    d.submit([held(d, "run1", progress=[{"progress": 0.5, "message": "half way"}])])
    d.wait_until(lambda: (running_job(d, "run1") or {}).get("message") == "half way", 15,
                 "run1's progress message")
    d.submit([{"id": "w1"}, {"id": "w2"}])  # max_concurrent 1: both wait

    listing = jobs(d)
    run = running_job(d, "run1")
    assert run["worker"] == 0 and run["attempt"] == 1 and run["progress"] == 0.5, run
    assert listing["queued"]["count"] == 2
    assert [j["id"] for j in listing["queued"]["jobs"]] == ["w1", "w2"]
    assert listing["failed"]["count"] == 1
    failed = listing["failed"]["jobs"][0]
    assert failed["id"] == "bad" and failed["reason"] == "exit_code" and failed["attempts"] == 1, failed
    assert listing["paused"] is False

    rc, table = d.ctl("jobs")
    assert rc == 0 and "run1" in table and "half way" in table and "QUEUED 2" in table and "FAILED 1" in table
    release(d, "run1")
    d.wait_outcomes(["run1", "w1", "w2"], 20)


# ---- permissions ---------------------------------------------------------------------------

def test_a_group_member_may_list_jobs_but_not_cancel_retry_or_pause(drover):
    group = grp.getgrnam("ssl-cert")
    d = drover(config={"supervisor": {"group": group.gr_name, "control_socket_mode": "0666"}})
    # nobody must reach the socket through its directories: only the credential check may refuse.
    for directory in (d.sock.parent, d.tmp, d.tmp.parent):
        os.chmod(directory, 0o755)
    d.submit([held(d, "mine")])
    d.wait_until(lambda: running_job(d, "mine"), 15, "mine to run")

    listing = json.loads(ask_as(d, "jobs", NOBODY, NOBODY, [group.gr_gid]))
    assert [j["id"] for j in listing["running"]] == ["mine"]
    for command in ("cancel mine", "retry mine", "pause", "resume"):
        answer = ask_as(d, command, NOBODY, NOBODY, [group.gr_gid])
        assert answer.startswith("error: permission denied"), (command, answer)
    assert running_job(d, "mine") is not None and d.stats()["paused"] is False
    release(d, "mine")
    d.wait_outcomes(["mine"], 15)


# ---- the live view -------------------------------------------------------------------------

@pytest.mark.parametrize("columns", [80, 200])
def test_status_fits_the_terminal_and_shows_progress_bars_and_messages(drover, columns):
    d = drover(config={"supervisor": {"workers": 1}})
    long_id = "a-rather-long-job-identifier-" + "x" * 60
    message = "rendering frame 12 of 48 with a message long enough to be cut " + "m" * 150
    d.submit([held(d, long_id, progress=[{"progress": 0.5, "message": message}])])
    d.wait_until(lambda: (running_job(d, long_id) or {}).get("message"), 15, "the progress message")
    d.submit([])  # nothing: only to be sure the spool exists for the queued count

    rc, text = run_in_pty(["-s", d.sock, "status"], columns)
    assert rc == 0, text
    lines = text.split("\n")
    assert max(len(line) for line in lines) <= columns, [line for line in lines if len(line) > columns]
    job_lines = [line for line in lines if line.lstrip().startswith("> ")]
    assert len(job_lines) == 1, text
    assert "[" in job_lines[0] and "#" in job_lines[0] and "50%" in job_lines[0], job_lines
    assert "rendering frame 12" in job_lines[0]
    assert "0 queued" in text and "faulted" in text
    if columns == 200:
        assert len(job_lines[0]) > 150  # the wider screen is used, not a fixed 80
    release(d, long_id)
    d.wait_outcomes([long_id], 15)


def test_status_watch_redraws_until_sigint_and_restores_the_terminal(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    clear = "\033[H\033[2J"
    rc, text = run_in_pty(["-s", d.sock, "status", "--watch", "-n", "0.2"], 100,
                          until=lambda t: t.count(clear) >= 3, interrupt=True)
    assert rc == 0, text
    assert text.count(clear) >= 3
    assert text.count("SLOT") >= 3  # each redraw is a whole frame
    assert text.startswith("\033[?1049h") and text.endswith("\033[?25h\033[?1049l"), repr(text[-40:])


def test_top_is_status_watch(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    clear = "\033[H\033[2J"
    rc, text = run_in_pty(["-s", d.sock, "top", "-n", "0.2"], 80, until=lambda t: t.count(clear) >= 2,
                          interrupt=True)
    assert rc == 0 and text.count(clear) >= 2 and "SLOT" in text, text


def test_status_json_has_the_queue_counts(drover):
    d = drover()
    d.ctl("pause")
    d.submit([{"id": "j1"}, {"id": "j2"}])
    rc, out = d.ctl("status", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["paused"] is True and doc["queued"]["count"] == 2 and doc["failed_jobs"]["count"] == 0
    d.ctl("resume")
    d.wait_outcomes(["j1", "j2"], 15)


# ---- Kafka ---------------------------------------------------------------------------------

def kafka_drover(drover, mock, **jobs_cfg):
    broker = mock()
    cfg = kh.kafka_config(broker.bootstrap, workers=1, jobs=jobs_cfg)
    cfg["jobs"].pop("handler", None)  # the harness's test handler (holds, records, fails on request)
    return drover(config=cfg), broker


def produce(broker, *jobs_):
    kh.kcat_produce_lines(broker.bootstrap, kh.REQUESTS, [(j["id"], json.dumps(j)) for j in jobs_])


def test_kafka_cancel_of_a_running_job_produces_a_cancelled_failure(drover, mock):
    d, broker = kafka_drover(drover, mock, max_attempts=3)
    produce(broker, held(d, "k1", ignore_term=True, record_dir=str(d.records)))
    d.wait_until(lambda: running_job(d, "k1"), 60, "k1 to run on Kafka")
    start = d.wait_until(lambda: d.starts("k1"), 10, "k1's start record")[0]
    listing = jobs(d)
    assert "partitions" in listing["queued"], listing  # Kafka: lag per partition
    rc, out = d.ctl("cancel", "k1")
    assert rc == 0 and out.startswith("ok: cancelling k1"), (out, d.last_ctl_err)
    _, failed = kh.wait_outcomes(broker.bootstrap, ["k1"], 30, d)
    assert failed["k1"]["error"]["reason"] == "cancelled" and failed["k1"]["attempts"] == 1, failed["k1"]
    d.wait_until(lambda: not pgid_alive(start["pgid"]), 10, "k1's process group to be gone")
    assert len(d.starts("k1")) == 1
    # jobs lists the failures this supervisor's workers saw, also once the worker that saw it is gone.
    seen = d.wait_until(lambda: jobs(d)["failed"]["jobs"], 10, "k1 among the recent failures")
    assert [(f["id"], f["reason"], f["attempts"]) for f in seen] == [("k1", "cancelled", 1)], seen
    victim = d.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    d.wait_until(lambda: d.worker_pids().get(0) not in (None, victim), 30, "worker 0 to be replaced")
    assert [f["id"] for f in jobs(d)["failed"]["jobs"]] == ["k1"]
    # A waiting Kafka job cannot be cancelled: a clear error, exit 1.
    rc, _ = d.ctl("cancel", "not-running")
    assert rc == 1 and "no job not-running is running" in d.last_ctl_err


@pytest.mark.asan
def test_kafka_retry_reproduces_the_failed_job_to_the_requests_topic(drover, mock):
    d, broker = kafka_drover(drover, mock, max_attempts=1)
    produce(broker, {"id": "kr", "fail_times": 1, "state_dir": str(d.state), "record_dir": str(d.records)})
    _, failed = kh.wait_outcomes(broker.bootstrap, ["kr"], 60, d)
    assert failed["kr"]["attempts"] == 1
    before = [m for m in kh.kcat_consume(broker.bootstrap, kh.REQUESTS) if m["key"] == "kr"]
    assert len(before) == 1

    rc, out = d.ctl("retry", "kr")
    assert rc == 0 and out == "ok: kr is queued again\n", (out, d.last_ctl_err)
    again = [m for m in kh.kcat_consume(broker.bootstrap, kh.REQUESTS) if m["key"] == "kr"]
    assert len(again) == 2 and json.loads(again[-1]["payload"])["id"] == "kr"
    complete, _ = kh.wait_outcomes(broker.bootstrap, ["kr"], 60, d)
    d.wait_until(lambda: kh.Counter(i for i, _ in kh.outcome_docs(broker.bootstrap, kh.COMPLETE))["kr"] == 1,
                 60, "kr to complete after the retry")
    assert len(d.starts("kr")) == 2
    rc, _ = d.ctl("retry", "never-failed")
    assert rc == 1 and "no failed job never-failed" in d.last_ctl_err
