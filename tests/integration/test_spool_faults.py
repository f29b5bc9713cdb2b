"""
The spool under faults and hostile input, with the real programs: a full disk
(a small tmpfs the test mounts as the spool; tests run as root), a spool
directory that vanishes while drover runs, outcome files a dead writer left in
tmp/, and jobs whose ids or payloads break the rules at every entry (a file
dropped by hand, droverctl submit).
"""

import errno
import json
import os
import re
import signal
import subprocess
import time

import pytest

from harness import wait_until


def worker_faults(d):
    """{slot: fault text} of the workers that show one in stats."""
    return {w["slot"]: w["fault"] for w in d.stats()["workers"] if w.get("fault")}


def runs_of(d, job_id):
    return len(d.starts(job_id))


@pytest.fixture
def tmpfs(workdir):
    """tmpfs(size) -> a fresh tmpfs mounted under workdir; unmounted at teardown, after drover stopped."""
    mounted = []

    def mount(size):
        path = workdir / ("tmpfs%d" % len(mounted))
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail("cannot mount a tmpfs (these tests run as root): %s" % r.stderr.strip())
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if r.returncode != 0:  # still busy: detach it rather than leave it mounted
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Writes a filler file in path until the filesystem is full (down to the last byte); returns it."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno in (errno.ENOSPC, errno.EDQUOT), e
    return filler


def test_a_full_disk_shows_keeps_the_outcome_and_clears(tmpfs, drover, workdir):
    spool = tmpfs("1m")
    gate = workdir / "gate"
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"max_concurrent": 2}, "spool": {"dir": str(spool)}})
    d.wait_workers(1)
    assert d.submit([{"id": "held", "hold_file": str(gate)}]) == ["held"]
    d.wait_until(lambda: runs_of(d, "held") == 1, 20, "the held job to start")

    filler = fill(spool)
    # A submit now cannot be made durable: refused, and nothing half-written is left.
    rc, out = d.ctl("submit", "-", input='{"id":"late"}\n')
    assert rc != 0 and out == "", (rc, out)
    assert "No space left" in d.last_ctl_err, d.last_ctl_err
    # (A busy worker's spares, finished job files kept to hold later outcomes, may be in tmp/.)
    assert not [f for f in d.spool_files("tmp", spool) if not f.endswith(".spare")], d.spool_files("tmp", spool)
    assert not d.spool_files("incoming", spool)
    faults = d.wait_until(lambda: worker_faults(d), 15, "the full disk to show as a worker fault")
    assert "space" in faults[0], faults

    # The job finishes while the disk is full: its outcome cannot be written, so it stays claimed.
    gate.write_text("go")
    d.wait_until(lambda: d.ends("held"), 20, "the held handler to finish")
    faults = d.wait_until(lambda: worker_faults(d), 15, "the fault to show")
    assert not d.complete(spool) and len(d.spool_files("processing", spool)) == 1, faults

    # Space comes back: the kept outcome is written, the claim goes, the fault clears.
    os.unlink(filler)
    done, _ = d.wait_outcomes(["held"], 20, spool=spool)
    assert done["held"]["attempts"] == 1
    d.wait_until(lambda: not worker_faults(d), 15, "the fault to clear")
    d.wait_queue_empty(spool=spool)
    assert runs_of(d, "held") == 1, "the outcome was kept, not the job run again"
    assert d.submit([{"id": "after"}]) == ["after"]
    d.wait_outcomes(["after"], 20, spool=spool)
    # Nothing is left in tmp/: the worker, idle now, gives its spares up too.
    d.wait_until(lambda: not d.spool_files("tmp", spool), 15, "tmp/ to be empty")


def test_a_vanished_spool_directory_shows_and_clears(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    d.wait_workers(1)
    incoming, aside = d.spool / "incoming", d.spool / "incoming-aside"
    os.rename(incoming, aside)
    faults = d.wait_until(lambda: worker_faults(d), 15, "the missing incoming/ to show as a worker fault")
    assert "incoming" in faults[0], faults
    os.rename(aside, incoming)
    d.wait_until(lambda: not worker_faults(d), 15, "the fault to clear")
    assert d.submit([{"id": "back"}]) == ["back"]
    d.wait_outcomes(["back"], 20)


def test_outcome_files_of_dead_writers_leave_tmp_at_once(drover):
    d = drover(start=False)
    for sub in ("tmp", "incoming", "processing", "complete", "failed"):
        (d.spool / sub).mkdir(parents=True, exist_ok=True)
    # Left by a worker killed mid-write (no lock held any more): not an hour old.
    (d.spool / "tmp" / "1796290990888-4242-1.outcome").write_text('{"id":"x"}')
    # A producer's write in progress: not ours to judge before an hour.
    (d.spool / "tmp" / "job-being-written.json").write_text('{"id":"y"')
    d.start()
    d.wait_workers(2)
    d.wait_until(lambda: d.spool_files("tmp") == ["job-being-written.json"], 10,
                 "the dead writer's outcome file to be removed")

    # Again while running: a worker dies; its supervisor's reclaim sweeps tmp/ too.
    (d.spool / "tmp" / "1796290990999-4343-7.outcome").write_text('{"id":"z"}')
    pid = d.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    d.wait_until(lambda: d.spool_files("tmp") == ["job-being-written.json"], 10,
                 "the outcome file of the killed worker to be removed")
    d.wait_workers(2)


def test_dropped_jobs_with_bad_ids_fail_as_invalid_under_their_file_names(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    d.enqueue_raw("huge-id.json", json.dumps({"id": "h" * (200 * 1024)}))
    d.enqueue_raw("newline-id.json", json.dumps({"id": "a\nb"}))
    d.enqueue_raw("nul-id.json", '{"id":"a\\u0000b"}')
    d.enqueue_raw("fine.json", json.dumps({"id": "fine"}))
    done, failed = d.wait_outcomes(["huge-id", "newline-id", "nul-id", "fine"], 30)
    assert set(done) == {"fine"}, sorted(done)
    for name in ("huge-id", "newline-id", "nul-id"):
        doc = failed[name]
        assert doc["id"] == name and doc["error"]["reason"] == "invalid_job", doc
        assert runs_of(d, name) == 0
    assert len(d.starts()) == 1, "the handler saw only the valid job"
    assert not worker_faults(d)
    d.wait_queue_empty()


def test_submit_refuses_what_would_fail_as_invalid(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    cases = [("[1, 2]", "not a JSON object"), ("not json", "not a JSON object"),
             (json.dumps({"id": "tab\there"}), "control character"),
             (json.dumps({"id": "k" * 2000}), "1024")]
    for line, reason in cases:
        rc, out = d.ctl("submit", "-", input=line + "\n")
        assert rc == 1 and out == "" and reason in d.last_ctl_err, (line[:40], rc, out, d.last_ctl_err)
    assert not d.spool_files("incoming") and not d.spool_files("tmp")
    assert d.submit([{"id": "ok"}]) == ["ok"]
    d.wait_outcomes(["ok"], 20)


# ---- the hot path, by counts ---------------------------------------------------------

def tracer_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def test_the_hot_path_pays_one_fsync_per_job_and_shares_directory_fsyncs(drover, workdir):
    """strace -y on the workers over a batch: counts, never times (issue 7's guard, spool part)."""
    jobs = 300
    d = drover(config={"supervisor": {"workers": 2, "log_level": "info"},
                       "jobs": {"handler": "/bin/cat", "max_concurrent": 4}})
    pids = list(d.wait_workers(2) and d.worker_pids().values())
    out = workdir / "strace.out"
    cmd = ["strace", "-y", "-o", str(out), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,getdents64"]
    for pid in pids:
        cmd += ["-p", str(pid)]
    try:
        tracer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        pytest.fail("strace is needed for this count (apt-get install strace)")
    try:
        wait_until(lambda: all(tracer_of(p) == tracer.pid for p in pids), 10, "strace to attach to the workers")
        ids = d.submit([{"id": "hot-%03d" % i} for i in range(jobs)], record=False)
        d.wait_outcomes(ids, 120)
        d.wait_queue_empty()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
    spool = str(d.spool)
    counts = {"dir_fsync": 0, "file_fsync": 0, "rename or unlink": 0, "incoming_readdir": 0}
    for line in out.read_text().splitlines():
        line = re.sub(r"^\d+\s+", "", line)  # the pid prefix of a multi-process trace
        if line.startswith("<..."):
            continue  # the end of a call counted at its start ("<unfinished ...>")
        call = line.split("(", 1)[0]
        if call in ("fsync", "fdatasync"):
            path = line.split("<", 1)[1].split(">", 1)[0] if "<" in line else ""
            directory = any(path == "%s/%s" % (spool, sub) for sub in ("incoming", "processing", "complete", "failed"))
            counts["dir_fsync" if directory else "file_fsync"] += 1
        elif call.startswith(("rename", "unlink")):
            counts["rename or unlink"] += 1
        elif call == "getdents64" and "%s/incoming>" % spool in line:
            counts["incoming_readdir"] += 1
    per_job = {k: v / jobs for k, v in counts.items()}
    print("per job: %r" % per_job)
    # One fsync of the outcome file; directory fsyncs shared by outcomes that finish together (at most one per job).
    assert per_job["file_fsync"] <= 1.0, per_job
    assert per_job["dir_fsync"] <= 1.0, per_job
    # A claim is one rename (straight to its attempt name), an outcome one more, and the finished job
    # file leaves processing/ with one more (unlinked, or renamed into tmp/ as a spare).
    assert per_job["rename or unlink"] <= 3.0, per_job
    # Names come from inotify: incoming/ is not reread per job.
    assert per_job["incoming_readdir"] <= 0.2, per_job


def test_a_read_only_spool_shows_and_clears(tmpfs, drover):
    spool = tmpfs("4m")
    d = drover(config={"supervisor": {"workers": 1}, "spool": {"dir": str(spool)}})
    d.wait_workers(1)
    subprocess.run(["mount", "-o", "remount,ro", str(spool)], check=True)
    try:
        faults = d.wait_until(lambda: worker_faults(d), 15, "the read-only spool to show as a worker fault")
        assert "not writable" in faults[0], faults
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(spool)], check=True)
    d.wait_until(lambda: not worker_faults(d), 15, "the fault to clear")
    assert d.submit([{"id": "writable-again"}]) == ["writable-again"]
    d.wait_outcomes(["writable-again"], 20, spool=spool)


# ---- a worker that died after recording an outcome, before its job left processing/ -----

def _place_claimed_job(spool, name, attempts, job):
    """A job file as a worker that died leaves it: in processing/ with its attempt count in the name."""
    for sub in ("tmp", "incoming", "processing", "complete", "failed"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    (spool / "processing" / ("%s;a=%d" % (name, attempts))).write_text(json.dumps(job))


def test_a_recorded_outcome_stands_when_its_worker_died_before_the_job_left(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"max_attempts": 3}}, start=False)
    records = str(d.records)
    # Attempts used up, the last one's outcome recorded.
    _place_claimed_job(d.spool, "recorded.json", 3, {"id": "recorded-1", "record_dir": records})
    outcome = json.dumps({"id": "recorded-1", "result": "done", "attempts": 3, "duration_ms": 5})
    (d.spool / "complete" / "recorded-1.json").write_text(outcome)
    # Attempts left: a recorded outcome still means the job is done, complete or failed. Running
    # it again could end it in the other directory too.
    _place_claimed_job(d.spool, "early.json", 1, {"id": "early-1", "record_dir": records})
    early = json.dumps({"id": "early-1", "result": "done", "attempts": 1, "duration_ms": 5})
    (d.spool / "complete" / "early-1.json").write_text(early)
    _place_claimed_job(d.spool, "early-failed.json", 2, {"id": "early-failed-1", "record_dir": records})
    early_failed = json.dumps({"id": "early-failed-1", "attempts": 2, "error": {"reason": "exit_code"}})
    (d.spool / "failed" / "early-failed-1.json").write_text(early_failed)
    # An outcome older than the job file is an earlier job's with the same id: it does not count.
    _place_claimed_job(d.spool, "stale.json", 3, {"id": "stale-1", "record_dir": records})
    stale = d.spool / "complete" / "stale-1.json"
    stale.write_text(json.dumps({"id": "stale-1", "attempts": 3}))
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    _place_claimed_job(d.spool, "stale-early.json", 1, {"id": "stale-early-1", "record_dir": records})
    stale_early = d.spool / "complete" / "stale-early-1.json"
    stale_early.write_text(json.dumps({"id": "stale-early-1", "attempts": 1}))
    os.utime(stale_early, (hour_ago, hour_ago))
    _place_claimed_job(d.spool, "lost.json", 3, {"id": "lost-1", "record_dir": records})
    d.start()

    d.wait_until(lambda: {"lost-1", "stale-1"} <= set(d.failed()), 20, "the jobs without an outcome to fail")
    d.wait_queue_empty(20)
    for job_id, sub, text in (("recorded-1", "complete", outcome), ("early-1", "complete", early),
                              ("early-failed-1", "failed", early_failed)):
        assert (d.spool / sub / ("%s.json" % job_id)).read_text() == text, "the recorded outcome of %s must stand" % job_id
    assert not {"recorded-1", "early-1"} & set(d.failed()), d.failed()
    assert "early-failed-1" not in d.complete(), d.complete()["early-failed-1"]
    for job_id in ("lost-1", "stale-1"):
        err = d.failed()[job_id]["error"]
        assert err["reason"] == "worker_lost" and "max_attempts is 3" in err["message"], err
    assert [r["id"] for r in d.starts()] == ["stale-early-1"], "only the job with attempts left and no outcome of its own runs again"
    assert d.complete()["stale-early-1"]["attempts"] == 2, d.complete()["stale-early-1"]
    # Each outcome counted once: the dead workers never counted theirs (they count once the job file is gone).
    stats = d.stats()["jobs"]
    assert stats["failed"] == 3 and stats["completed"] == 3, stats
