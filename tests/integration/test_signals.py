"""
Signals and reloads (README: Operations, signals): HUP scaling and a broken reload,
`drover -t`, replacement of workers one at a time, TERM draining, the
shutdown timeout, a second TERM, QUIT, TTIN/TTOU and `scale N`, USR1 log
reopening.
"""

import json
import os
import signal
import subprocess
import time

from harness import DROVER, clean_env, pgid_alive, proc_alive, wait_until


def slots(stats):
    return {w["slot"]: w for w in stats["workers"]}


def running_pids(stats):
    return {w["slot"]: w["pid"] for w in stats["workers"] if w["state"] == "running" and w.get("pid")}


def line_of(text, needle):
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(needle):
            return n
    raise AssertionError("%r not in config" % needle)


def test_hup_scales_and_broken_reload_keeps_old_config(drover):
    d = drover(config={"supervisor": {"workers": 2}})
    before = running_pids(d.wait_workers(2))
    assert d.stats()["config_generation"] == 1

    d.write_config({"supervisor": {"workers": 4}})
    d.signal(signal.SIGHUP)
    stats = d.wait_workers(4)
    pids = running_pids(stats)
    assert {s: pids.get(s) for s in before} == before, \
        "a reload that only changes `workers` must keep the existing workers: %r -> %r" % (before, pids)
    assert stats["last_reload"] == "ok" and stats["reloads"] == 1 and stats["config_generation"] == 2, \
        {k: stats[k] for k in ("last_reload", "reloads", "config_generation")}
    assert stats["workers_desired"] == 4

    good = d.render_config()
    broken = good.replace("workers = 4", "workers = lots").replace("[jobs]\n", "[jobs]\nno_such_key = 1\n")
    d.write_config(text=broken)
    bad_workers, bad_key = line_of(broken, "workers = lots"), line_of(broken, "no_such_key")
    d.signal(signal.SIGHUP)
    stats = d.wait_until(lambda: (lambda s: s if s["last_reload"] not in ("ok", "") else None)(d.stats()), 10,
                         "last_reload to report the broken file")
    report = stats["last_reload"]
    for line in (bad_workers, bad_key):
        assert "%s:%d" % (d.ini, line) in report, "last_reload should name %s:%d: %r" % (d.ini, line, report)
    assert stats["config_generation"] == 2 and stats["reloads"] == 1, stats
    assert running_pids(stats) == pids, "a broken reload must not touch the workers"
    assert stats["workers_alive"] == 4

    r = subprocess.run([str(DROVER), "-t", "-c", str(d.ini)], capture_output=True, text=True, timeout=10,
                       env=clean_env())
    out = r.stdout + r.stderr
    assert r.returncode == 78, "drover -t on a broken file must exit 78, got %d: %s" % (r.returncode, out)
    for line, key in ((bad_workers, "workers"), (bad_key, "no_such_key")):
        assert "%s:%d:" % (d.ini, line) in out and key in out, "drover -t must print every error: %s" % out

    d.write_config(text=good.replace("workers = 4", "workers = 3"))
    r = subprocess.run([str(DROVER), "-t", "-c", str(d.ini)], capture_output=True, text=True, timeout=10,
                       env=clean_env())
    assert r.returncode == 0 and "drover: configuration %s is ok" % d.ini in r.stdout + r.stderr, r
    rc, out = d.ctl("reload")
    assert rc == 0 and out.strip() == "ok", (rc, out, d.last_ctl_err)
    stats = d.wait_workers(3)
    assert stats["last_reload"] == "ok" and stats["config_generation"] == 3, stats


def test_reload_replaces_workers_one_at_a_time_draining(drover):
    d = drover(config={"supervisor": {"workers": 2}, "jobs": {"max_concurrent": 2}})
    old = running_pids(d.wait_workers(2))
    hold = d.tmp / "release"
    d.submit([{"id": "long-1", "hold_file": str(hold)}])
    d.wait_until(lambda: len(d.starts()) == 1, 30, "the long job to start")

    d.write_config({"jobs": {"timeout_ms": 9000}})  # a worker-visible change: workers are replaced
    d.signal(signal.SIGHUP)
    seen_draining = 0
    replaced = None
    deadline = time.monotonic() + 20
    released = False
    while time.monotonic() < deadline:
        stats = d.stats()
        states = [w["state"] for w in stats["workers"]]
        draining = states.count("draining")
        assert draining <= 1, "workers must be replaced one at a time: %r" % states
        seen_draining = max(seen_draining, draining)
        pids = running_pids(stats)
        if not released and (draining or any(p not in old.values() for p in pids.values())):
            hold.touch()  # let the draining worker's job finish
            released = True
        if len(pids) == 2 and not set(pids.values()) & set(old.values()) and stats["config_generation"] == 2:
            replaced = stats
            break
        time.sleep(0.02)
    assert replaced, "both workers should have been replaced after the reload (old %r, now %r)" % (old, pids)
    done, failed = d.wait_outcomes(["long-1"], 10)
    assert "long-1" in done and done["long-1"]["attempts"] == 1, \
        "the running job must finish in its draining worker, not be killed and rerun: %r" % ((done, failed),)


def test_term_lets_running_jobs_finish_and_takes_no_new(drover, figures):
    d = drover(config={"supervisor": {"workers": 2, "shutdown_timeout_ms": 8000}, "jobs": {"max_concurrent": 2}})
    d.wait_workers(2)
    hold = d.tmp / "release"
    running = ["long-%d" % i for i in range(4)]
    waiting = ["later-%d" % i for i in range(3)]
    d.submit([{"id": i, "hold_file": str(hold), "sleep_ms": 500} for i in running])
    d.wait_until(lambda: len(d.starts()) == 4, 30, "four long jobs to start")
    d.submit([{"id": i} for i in waiting])  # every slot is busy: these wait in incoming/
    family = d.descendants()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    wait_stopping(d)
    hold.touch()  # the running jobs may finish now, 0.5 s later
    rc = d.wait_exit(12)
    figures("TERM with held jobs running: exit after", time.monotonic() - t0, "s")
    assert rc == 0, "graceful stop must exit 0, got %r" % rc
    assert time.monotonic() - t0 < 8, "exit took longer than shutdown_timeout_ms"
    done = d.complete()
    assert sorted(done) == running, "running jobs must finish on TERM: complete=%r" % sorted(done)
    assert all(doc["attempts"] == 1 for doc in done.values()), done
    assert d.failed() == {}
    assert len(d.spool_files("incoming")) == 3, "jobs not started must stay in incoming/: %r" % (
        d.spool_files("incoming"),)
    assert sorted(r["id"] for r in d.starts()) == running, "no new job may start after TERM"
    assert d.spool_files("processing") == []
    wait_until(lambda: not any(proc_alive(p) for p in family), 3, "workers and handlers to be gone")
    assert not d.sock.exists(), "the control socket should be removed on a clean stop"
    assert not d.pid_file.exists(), "the pid file should be removed on a clean stop"


def test_shutdown_timeout_returns_unfinished_jobs_to_incoming(drover, figures):
    d = drover(config={"supervisor": {"workers": 1, "shutdown_timeout_ms": 600}, "jobs": {"max_concurrent": 3}})
    hold = d.tmp / "release"
    ids = ["stuck-%d" % i for i in range(3)]
    d.submit([{"id": i, "hold_file": str(hold)} for i in ids])
    d.wait_until(lambda: len(d.starts()) == 3, 30, "three held jobs to start")
    groups = [r["pgid"] for r in d.starts()]
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    rc = d.wait_exit(10)
    took = time.monotonic() - t0
    figures("TERM, shutdown_timeout_ms 600, stuck jobs: exit after", took, "s")
    assert rc == 0, rc
    assert took < 0.6 + 0.5 + 2.0, "exit took %.1fs with shutdown_timeout_ms 600 (+kill_grace_ms 500)" % took
    assert d.failed() == {} and d.complete() == {}, "unfinished jobs are neither failed nor complete"
    assert len(d.spool_files("incoming")) == 3, "unfinished jobs must be back in incoming/: %r / processing %r" % (
        d.spool_files("incoming"), d.spool_files("processing"))
    assert d.spool_files("processing") == []
    assert not any(pgid_alive(g) for g in groups), "handlers must not outlive drover"

    hold.touch()
    d.start()
    done, failed = d.wait_outcomes(ids, 15)
    assert failed == {} and sorted(done) == ids
    assert all(doc["attempts"] == 2 for doc in done.values()), \
        "an interrupted job runs again as its next attempt: %r" % {k: v["attempts"] for k, v in done.items()}


def wait_stopping(d):
    """Waits until drover shows it is stopping: workers draining, or the socket no longer answers."""
    def stopping():
        try:
            rc, out = d.ctl("stats", timeout=3)
        except subprocess.TimeoutExpired:
            return True
        if rc != 0 or not d.alive():
            return True
        return '"draining"' in out or '"stopped"' in out
    d.wait_until(stopping, 5, "drover to start stopping after TERM")


def test_second_term_stops_at_once(drover):
    d = drover(config={"supervisor": {"workers": 1, "shutdown_timeout_ms": 30000}})
    hold = d.tmp / "release"
    d.submit([{"id": "a", "hold_file": str(hold)}, {"id": "b", "hold_file": str(hold)}])
    d.wait_until(lambda: len(d.starts()) == 2, 30, "two held jobs to start")
    d.signal(signal.SIGTERM)
    wait_stopping(d)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    rc = d.wait_exit(5)
    assert rc == 0 and time.monotonic() - t0 < 3, "a second TERM must stop at once (rc %r)" % rc
    assert d.failed() == {} and d.complete() == {}
    assert len(d.spool_files("incoming")) == 2, "killed jobs go back to incoming/: %r" % (d.spool_files("incoming"),)


def test_quit_is_a_fast_stop(drover):
    d = drover(config={"supervisor": {"workers": 1, "shutdown_timeout_ms": 30000}})
    hold = d.tmp / "release"
    d.submit([{"id": "q1", "hold_file": str(hold)}, {"id": "q2", "hold_file": str(hold)}])
    d.wait_until(lambda: len(d.starts()) == 2, 30, "two held jobs to start")
    groups = [r["pgid"] for r in d.starts()]
    t0 = time.monotonic()
    d.signal(signal.SIGQUIT)
    rc = d.wait_exit(5)
    assert rc == 0, rc
    assert time.monotonic() - t0 < 3, "QUIT took %.1fs" % (time.monotonic() - t0)
    assert not any(pgid_alive(g) for g in groups)
    assert d.failed() == {} and d.complete() == {}
    assert len(d.spool_files("incoming")) == 2, "jobs killed by QUIT are redelivered: %r" % d.spool_files("incoming")


def test_ttin_ttou_and_scale(drover):
    d = drover(config={"supervisor": {"workers": 2}})
    d.wait_workers(2)
    d.signal(signal.SIGTTIN)
    d.wait_workers(3)
    d.signal(signal.SIGTTIN)
    four = running_pids(d.wait_workers(4))
    d.signal(signal.SIGTTOU)
    three = running_pids(d.wait_workers(3))
    assert set(three.items()) <= set(four.items()), "TTOU must stop one worker, not replace others"
    assert d.stats()["workers_desired"] == 3

    rc, out = d.ctl("scale", "1")
    assert rc == 0 and out.strip() == "ok", (rc, out)
    one = running_pids(d.wait_workers(1))
    assert set(one.items()) <= set(three.items())
    rc, out = d.ctl("scale", "5")
    assert rc == 0 and out.strip() == "ok", (rc, out)
    stats = d.wait_workers(5)
    assert stats["workers_desired"] == 5
    d.submit([{"id": "after-scale-%d" % i} for i in range(5)])
    done, failed = d.wait_outcomes(["after-scale-%d" % i for i in range(5)], 15)
    assert failed == {}

    rc, out = d.ctl("scale", "0")
    assert rc in (1, 64), "scale 0 is out of range 1..256: %r" % ((rc, out, d.last_ctl_err),)
    rc, out = d.ctl("scale", "many")
    assert rc != 0, "scale many must be refused: %r" % ((rc, out),)
    assert d.raw_command("scale 0").startswith("error:"), "the socket answers error: for a bad scale"
    assert d.stats()["workers_desired"] == 5


def test_usr1_reopens_log_file(drover):
    d = drover(config={"supervisor": {"workers": 1, "log_level": "debug"}})
    d.wait_workers(1)
    d.submit([{"id": "before-rotate"}])
    d.wait_outcomes(["before-rotate"], 10)
    rotated = d.log_file.with_name("drover.log.1")
    os.rename(d.log_file, rotated)
    d.signal(signal.SIGUSR1)
    flip = [2]

    def reopened():
        if d.log_file.exists() and d.log_file.stat().st_size > 0:
            return True
        d.ctl("scale", str(flip[0]))  # something that logs
        flip[0] = 3 - flip[0]
        return False
    d.wait_until(reopened, 10, "drover to write to a new %s after SIGUSR1" % d.log_file, interval=0.1)

    d.submit([{"id": "after-rotate-1"}])
    d.wait_outcomes(["after-rotate-1"], 10)
    old_size = rotated.stat().st_size
    d.submit([{"id": "after-rotate-2"}])
    d.wait_outcomes(["after-rotate-2"], 10)
    d.ctl("scale", "2")
    d.wait_workers(2)
    assert rotated.stat().st_size == old_size, \
        "a process still writes to the rotated log after SIGUSR1 (workers must reopen too): %r" % (
            rotated.read_text()[-500:])
    assert d.log_file.stat().st_size > 0


def test_reload_of_log_settings_reaches_the_workers(drover):
    """log_file/log_level/log_format are supervisor *and* worker settings (their scope in the option
    table): after a reload the workers' lines go to the new file, in the new format and level."""
    d = drover(config={"supervisor": {"workers": 2, "log_level": "info", "log_format": "text"}})
    old = running_pids(d.wait_workers(2))
    new_log = d.tmp / "new.log"
    d.write_config({"supervisor": {"log_file": str(new_log), "log_format": "json", "log_level": "debug"}})
    rc, out = d.ctl("reload")
    assert rc == 0 and out.strip() == "ok", (rc, out, d.last_ctl_err)

    def replaced():
        s = d.stats()
        pids = running_pids(s)
        return s if len(pids) == 2 and not set(pids.values()) & set(old.values()) else None
    stats = d.wait_until(replaced, 30, "both workers replaced after a change of the log settings")
    changes = {c["key"]: c["result"] for c in stats["last_reload_changes"]}
    assert changes == {"[supervisor] log_file": "workers replaced", "[supervisor] log_level": "workers replaced",
                       "[supervisor] log_format": "workers replaced"}, stats["last_reload_changes"]

    ids = d.submit([{"id": "logged-%d" % i} for i in range(4)])
    d.wait_outcomes(ids, 20)

    def worker_lines():
        lines = []
        for line in new_log.read_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                raise AssertionError("a line of %s is not JSON: %r" % (new_log, line))
            if doc.get("proc", "").startswith("worker") and "completed" in doc.get("msg", ""):
                lines.append(doc)
        return lines
    lines = d.wait_until(lambda: len(worker_lines()) >= 4 and worker_lines(), 10,
                         "the workers' completion lines in the new log file, as JSON")
    assert {doc["pid"] for doc in lines} <= set(running_pids(d.stats()).values()), lines
    assert any(json.loads(l).get("level") == "debug" and json.loads(l)["proc"].startswith("worker")
               for l in new_log.read_text().splitlines()), "workers must log at the new level (debug)"
    assert "logged-" not in d.log_file.read_text(), "no worker may keep writing to the old log file"


def test_reload_reports_restart_only_and_rejected_keys(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    before = running_pids(d.wait_workers(1))
    d.write_config({"supervisor": {"pid_file": str(d.tmp / "other.pid"), "heartbeat_timeout_ms": 50000}})
    rc, out = d.ctl("reload")
    assert rc == 0, (rc, out)
    stats = d.stats()
    changes = {c["key"]: c["result"] for c in stats["last_reload_changes"]}
    assert changes == {"[supervisor] pid_file": "needs restart",
                       "[supervisor] heartbeat_timeout_ms": "applied"}, changes
    assert running_pids(stats) == before, "neither key replaces workers"
    d.write_config({"jobs": {"timeout_ms": "soon"}})
    rc, out = d.ctl("reload")
    assert rc != 0
    changes = {c["key"]: c["result"] for c in d.stats()["last_reload_changes"]}
    assert changes == {"[jobs] timeout_ms": "rejected"}, changes


def test_a_bad_notify_socket_is_logged_once_with_its_reason(drover):
    """notify_init reports the reason and main logs it: one line, not two (README: Operations)."""
    d = drover(env={"NOTIFY_SOCKET": "not-a-socket-path"})  # started: ready, so start-up logging is over
    lines = [l for l in d.log_text().splitlines() if "NOTIFY_SOCKET" in l or "notification" in l]
    assert len(lines) == 1, lines
    assert "systemd notification is off: NOTIFY_SOCKET \"not-a-socket-path\" is not a socket path" in lines[0]
    d.stop()
