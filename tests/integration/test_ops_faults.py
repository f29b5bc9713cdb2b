"""
Operator-facing faults (issue 8 items 5, 9, 10, 12, 13): secrets that must not
leak through /proc, faults and counters that tell the truth, the control
socket's credentials, and the small findings (init script, SIGUSR2, droverctl
without a readable config, long lines, forged log lines, odd config files,
files left behind after a privilege drop, pool-fault back-off).

Tests that need an unprivileged drover start it through setpriv as `nobody`
(the tests run as root) on directories handed to that user.
"""

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from harness import DROVER, DROVERCTL, PYTHON, clean_env, wait_until

NOBODY = pwd.getpwnam("nobody")


def give_to_nobody(d):
    """Makes the instance's directories usable by nobody (and the path to them traversable)."""
    for p in list(d.tmp.parents)[:3]:
        if str(p) not in ("/", "/tmp"):
            os.chmod(p, os.stat(p).st_mode | 0o755)
    for root in {d.tmp, d.run_dir}:
        os.chmod(root, 0o755)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chown(dirpath, NOBODY.pw_uid, NOBODY.pw_gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), NOBODY.pw_uid, NOBODY.pw_gid)


def start_as_nobody(d, timeout=15):
    """Drover.start, but through setpriv as nobody (no supplementary groups)."""
    give_to_nobody(d)
    d._stderr = open(d.stderr_file, "ab")
    cmd = ["setpriv", "--reuid=%d" % NOBODY.pw_uid, "--regid=%d" % NOBODY.pw_gid, "--clear-groups",
           str(DROVER), "-c", str(d.ini)]
    d.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=d._stderr, stderr=d._stderr,
                              env=d.drover_env(), start_new_session=True)
    d.wait_ready(timeout)
    return d


def write_script(path, text):
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


# ---- secrets (item 5) ---------------------------------------------------------

PEEK = r'''
import json, os, sys
def peek(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            data = f.read()
    except OSError as e:
        return "unreadable: %s" % e.strerror
    return "leaked" if b"hunter2-secret" in data else "clean"
worker = os.getppid()
with open("/proc/%d/stat" % worker) as f:
    supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
print(json.dumps({"worker": peek(worker), "supervisor": peek(supervisor), "uid": os.getuid(),
                  "own_env": "leaked" if any("hunter2" in v for v in os.environ.values()) else "clean"}))
'''


def test_a_handler_of_the_same_uid_cannot_read_the_secret(drover):
    d = drover(config={"supervisor": {"workers": 1}}, env={"KAFKA_SASL_PASSWORD": "hunter2-secret"}, start=False)
    peek = write_script(d.tmp / "peek.py", PEEK)
    d.write_config({"jobs": {"handler": "%s %s" % (PYTHON, peek)}})
    start_as_nobody(d)
    ids = d.submit([{"id": "peek"}], record=False)
    complete, failed = d.wait_outcomes(ids, 20)
    assert "peek" in complete, failed
    seen = complete["peek"]["result"]
    assert seen["uid"] == NOBODY.pw_uid, seen
    assert seen["own_env"] == "clean", seen
    for who in ("worker", "supervisor"):
        assert seen[who] != "leaked", "the handler read the secret from the %s's /proc/PID/environ: %r" % (who, seen)
    # The secret still reaches the config across a reload (environment overrides stay in force).
    rc, out = d.ctl("reload")
    assert rc == 0 and out.strip() == "ok", (rc, out, d.last_ctl_err)
    with open("/proc/%d/environ" % d.pid, "rb") as f:
        assert b"hunter2-secret" not in f.read(), "the supervisor's environment still carries the secret"


# ---- faults are visible (item 9) ------------------------------------------------

def metric_lines(d):
    rc, out = d.ctl("metrics")
    assert rc == 0, (rc, d.last_ctl_err)
    return out.splitlines()


def test_a_pool_in_fault_shows_in_stats_metrics_and_health(drover, workdir):
    bindir = workdir / "bin"
    bindir.mkdir()
    exe = bindir / "handler"
    exe.write_text("#!/usr/bin/python3\nimport sys\nsys.stdin.read()\nprint('{}')\n")
    exe.chmod(0o755)
    d = drover(config={"supervisor": {"workers": 2}, "jobs": {"handler": str(exe)}})
    d.wait_workers(2)
    rc, _ = d.ctl("ping")
    assert rc == 0
    exe.chmod(0o644)  # exec fails with EACCES, even for root: a pool fault in every worker that tries
    for i in range(4):
        d.enqueue_raw("stuck-%d.json" % i, json.dumps({"id": "stuck-%d" % i}))

    def all_in_fault():
        s = d.stats()
        return s if all(w.get("fault") for w in s["workers"]) and len(s["workers"]) == 2 else None
    stats = d.wait_until(all_in_fault, 20, "both workers to show the pool fault")
    assert all(w["fault_cause"] == "handler" for w in stats["workers"]), stats["workers"]
    lines = metric_lines(d)
    for slot in (0, 1):
        assert 'drover_worker_fault{slot="%d",cause="handler"} 1' % slot in lines, lines
    assert 'drover_workers{state="fault"} 2' in lines and 'drover_workers{state="running"} 0' in lines, \
        [l for l in lines if l.startswith("drover_workers")]
    rc, out = d.ctl("health")
    assert rc == 1 and "no worker can make progress" in d.last_ctl_err and "handler" in d.last_ctl_err, \
        (rc, out, d.last_ctl_err)
    # ping is liveness: the supervisor answers; restarting it would not mend a handler.
    assert d.ctl("ping")[0] == 0, d.last_ctl_err

    exe.chmod(0o755)
    d.wait_outcomes(["stuck-%d" % i for i in range(4)], 30)
    d.wait_until(lambda: not any(w.get("fault") for w in d.stats()["workers"]), 10, "the faults to clear")
    jobs = d.wait_until(lambda: (lambda j: j if j["completed"] == 4 else None)(d.stats()["jobs"]), 5,
                        "the 4 completions to be counted")
    assert jobs["started"] == 4, "handlers that could not be started are no starts: %r" % jobs
    lines = metric_lines(d)
    assert not [l for l in lines if l.startswith("drover_worker_fault{")], lines
    assert 'drover_workers{state="fault"} 0' in lines
    assert d.ctl("ping")[0] == 0 and d.ctl("health")[0] == 0, d.last_ctl_err


def test_health_fails_when_the_spool_takes_no_write(drover):
    d = drover(config={"supervisor": {"workers": 1}}, start=False)
    start_as_nobody(d)
    rc, out = d.ctl("health")
    assert rc == 0, (rc, out, d.last_ctl_err)
    os.chmod(d.spool / "tmp", 0o555)  # drover runs as nobody: no write in tmp/ (droverctl itself is root)
    try:
        rc, out = d.ctl("health")
        assert rc == 1 and "not writable" in d.last_ctl_err, (rc, out, d.last_ctl_err)
    finally:
        os.chmod(d.spool / "tmp", 0o755)
    rc, out = d.ctl("health")
    assert rc == 0, (rc, out, d.last_ctl_err)


# ---- droverctl and a broken file on disk (item 13) --------------------------------

def droverctl(*args, input=None):
    return subprocess.run([str(DROVERCTL)] + [str(a) for a in args], input=input, capture_output=True, text=True,
                          timeout=30, env=clean_env())


def test_droverctl_reaches_the_daemon_while_its_config_file_is_broken(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    d.wait_workers(1)
    d.write_config(text=d.render_config().replace("[jobs]\n", "[jobs]\nno_such_key = 1\n"))
    out = droverctl("-c", d.ini, "ping")
    assert (out.returncode, out.stdout) == (0, "pong\n"), out
    assert "error" in out.stderr and str(d.sock) in out.stderr, "droverctl says which socket it used: %r" % out.stderr
    out = droverctl("-c", d.ini, "stats")
    assert out.returncode == 0 and json.loads(out.stdout)["workers_alive"] == 1, out
    out = droverctl("-c", d.ini, "submit", "-", input='{"id":"x"}\n')
    assert out.returncode == 78 and "no_such_key" in out.stderr, out
    out = droverctl("-c", d.ini, "health")
    assert out.returncode == 0 and "not checked" in out.stderr, out


# ---- counters tell the truth (item 10) ----------------------------------------------

def metric(d, name):
    for line in metric_lines(d):
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in metrics" % name)


def test_outcomes_are_counted_only_once_durable(drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"retry_delay_ms": 10}}, start=False)
    start_as_nobody(d)
    d.wait_workers(1)
    for sub in ("complete", "failed"):
        os.chmod(d.spool / sub, 0o555)  # drover (nobody) cannot record an outcome; the jobs stay queued
    try:
        ids = d.submit([{"id": "ok-%d" % i} for i in range(2)] + [{"id": "bad", "exit": 64}])
        # The spool keeps an outcome it cannot write and retries it, showing the fault meanwhile.
        d.wait_until(lambda: any("cannot write the outcome" in (w.get("fault") or "") for w in d.stats()["workers"]),
                     30, "the worker to show that it cannot record an outcome")
        d.wait_until(lambda: d.log_text().count("cannot write the outcome") >= 1, 10, "the failed write in the log")
        jobs = d.stats()["jobs"]
        assert jobs["completed"] == 0 and jobs["failed"] == 0, \
            "an outcome that is not durable must not be counted: %r" % jobs
    finally:
        for sub in ("complete", "failed"):
            os.chmod(d.spool / sub, 0o755)
    d.wait_outcomes(ids, 30)
    jobs = d.wait_until(lambda: (lambda j: j if j["completed"] + j["failed"] >= 3 else None)(d.stats()["jobs"]),
                        10, "the durable outcomes to be counted")
    assert (jobs["completed"], jobs["failed"]) == (2, 1), jobs


def test_restarts_total_never_goes_down_after_scale(drover):
    d = drover(config={"supervisor": {"workers": 2, "restart_delay_ms": 10}})
    pids = d.wait_workers(2)
    victim = [w["pid"] for w in pids["workers"] if w["slot"] == 1][0]
    os.kill(victim, signal.SIGKILL)
    d.wait_until(lambda: metric(d, "drover_worker_restarts_total") >= 1, 10, "the restart to be counted")
    d.wait_workers(2)
    assert d.ctl("scale 1")[0] == 0
    d.wait_until(lambda: d.stats()["workers_alive"] == 1, 15, "slot 1 to drain away")
    assert d.ctl("scale 2")[0] == 0
    d.wait_workers(2)
    assert metric(d, "drover_worker_restarts_total") >= 1, "a counter never goes down"


# ---- low findings (item 13) -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_init_script_configtest_fails_on_a_broken_config(workdir):
    ini = workdir / "drover.ini"
    ini.write_text("[supervisor]\nworkers = lots\n")
    defaults = workdir / "default-drover"
    defaults.write_text("DAEMON=%s\nCONFIG=%s\nRUN_USER=\n" % (DROVER, ini))
    script = workdir / "init-drover"
    script.write_text((REPO / "packaging/init.d/drover").read_text().replace("/etc/default/drover", str(defaults)))
    script.chmod(0o755)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    r = subprocess.run([str(script), "configtest"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "workers" in r.stdout + r.stderr, r
    ini.write_text("[supervisor]\nworkers = 2\n[jobs]\nhandler = /bin/cat\n")
    r = subprocess.run([str(script), "configtest"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "is ok" in r.stdout, r


def test_sigusr2_upgrades_in_place_instead_of_killing(drover):
    """USR2 (what gunicorn and php-fpm users send) no longer kills drover: it re-executes the binary in place
    (test_upgrade.py covers the upgrade itself)."""
    d = drover(config={"supervisor": {"workers": 1}})
    before = d.wait_workers(1)["workers"][0]["pid"]
    d.signal(signal.SIGUSR2)
    d.wait_until(lambda: "upgraded to drover" in d.log_text(), 10, "the supervisor to re-execute itself")
    d.wait_until(lambda: (lambda w: w["state"] == "running" and w["pid"] not in (0, before))
                 (d.stats()["workers"][0]), 20, "the worker replaced by one of the new image")
    assert d.alive() and d.stats()["pid"] == d.pid


def test_pool_fault_back_off_doubles(drover, workdir):
    exe = workdir / "handler"
    exe.write_text("#!/bin/sh\ncat\n")
    exe.chmod(0o755)
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"handler": str(exe)}})
    d.wait_workers(1)
    exe.chmod(0o644)
    d.enqueue_raw("waiting.json", json.dumps({"id": "waiting"}))
    d.wait_until(lambda: "retrying in 4 s" in d.log_text(), 20,
                 "the pool-fault retry delay to double (1 s, 2 s, 4 s)")
    delays = [line.rsplit("retrying in ", 1)[1] for line in d.log_text().splitlines() if "taking no jobs" in line]
    assert delays[:3] == ["1 s", "2 s", "4 s"], delays
    exe.chmod(0o755)
    d.wait_outcomes(["waiting"], 20)


def test_submit_through_a_socket_goes_to_that_daemons_spool(drover, workdir):
    a = drover(config={"supervisor": {"workers": 1}}, name="a")
    b = drover(config={"supervisor": {"workers": 1}}, name="b")
    out = droverctl("-c", a.ini, "-s", b.sock, "submit", "-", input=json.dumps({"id": "for-b"}) + "\n")
    assert out.returncode == 0 and out.stdout.split() == ["for-b"], out
    out = droverctl("-s", b.sock, "submit", "-", input=json.dumps({"id": "for-b-too"}) + "\n")
    assert out.returncode == 0, "no config needed: the daemon tells its spool: %r" % (out,)
    done, failed = b.wait_outcomes(["for-b", "for-b-too"], 20)
    assert set(done) == {"for-b", "for-b-too"}, (done, failed)
    assert a.complete() == {} and a.spool_files("incoming") == [], "nothing may land in the -c file's spool"
    out = droverctl("-s", workdir / "nobody-here.sock", "submit", "-", input='{"id":"lost"}\n')
    assert out.returncode == 69 and "cannot learn the queue" in out.stderr, out


def test_pid_file_and_socket_are_removed_at_stop_after_a_privilege_drop(drover):
    d = drover(config={"supervisor": {"workers": 1, "user": "nobody"}}, start=False)
    run = d.tmp / "fresh-run"  # does not exist yet: drover creates it, for the user it drops to
    d.sock, d.pid_file = run / "drover.sock", run / "drover.pid"
    d.write_config({"supervisor": {"control_socket": str(d.sock), "pid_file": str(d.pid_file)}})
    give_to_nobody(d)
    d.start()
    d.wait_workers(1)
    assert "running as user nobody" in d.log_text()
    assert d.pid_file.exists() and d.sock.exists()
    assert d.stop() == 0, d.diagnostics()
    assert not d.pid_file.exists(), "the pid file was left behind"
    assert not d.sock.exists(), "the control socket was left behind"
    assert "cannot remove" not in d.log_text()
