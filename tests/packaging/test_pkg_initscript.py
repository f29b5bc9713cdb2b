"""
The SysV init script, for real: packaging/init.d/drover driving the drover of
a `make install DESTDIR=...` tree, on temporary paths (the script is run as
shipped, except that it reads a test defaults file instead of
/etc/default/drover).

start, status 0, start again (no second instance), reload with a good file
(new generation, same pid), reload with a broken file (refused, nothing
signalled, old configuration still running), restart refused on a broken
file, stop waits for a running job to finish, status 3, and a stale pid file
naming another process is not taken for drover. upgrade re-executes the
daemonized drover in place (same pid, the running job finishes once) and
reports a refusal with its reason.
"""

import os
import signal
import subprocess
import time

import pytest

import pkghelpers as h


class InitScript:
    def __init__(self, tmp_path, staged_install):
        self.dir = h.short_dir()
        self.run = self.dir / "run"
        self.pid_file = self.run / "drover.pid"
        self.sock = self.run / "drover.sock"
        self.log = tmp_path / "log" / "drover.log"
        self.spool = tmp_path / "spool"
        self.ini = tmp_path / "drover.ini"
        self.settings = {
            "supervisor": {"workers": 2, "control_socket": self.sock, "pid_file": "/nonexistent/ignored.pid",
                           "shutdown_timeout_ms": 8000, "log_level": "debug"},
            "jobs": {"handler": h.HANDLER_ARGV, "max_concurrent": 2, "timeout_ms": 20000, "kill_grace_ms": 1000},
            "spool": {"dir": self.spool},
        }
        self.write_config()
        defaults = tmp_path / "default-drover"
        defaults.write_text("\n".join([
            "DAEMON=%s" % (staged_install / "usr/sbin/drover"),
            "DROVERCTL=%s" % (staged_install / "usr/bin/droverctl"),
            "CONFIG=%s" % self.ini,
            "PIDFILE=%s" % self.pid_file,
            "LOG_FILE=%s" % self.log,
            "RUN_USER=",
            "START_TIMEOUT=15",
        ]) + "\n")
        self.script = tmp_path / "init-drover"
        self.script.write_text(h.INIT_SCRIPT.read_text().replace("/etc/default/drover", str(defaults)))
        self.script.chmod(0o755)
        self.ctl = staged_install / "usr/bin/droverctl"

    def write_config(self, **changes):
        for section, keys in changes.items():
            self.settings[section].update(keys)
        h.write_ini(self.ini, self.settings)

    def __call__(self, action, timeout=60):
        # `service` runs scripts with a minimal environment; so does this.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        start = time.monotonic()
        res = subprocess.run([str(self.script), action], env=env, capture_output=True, text=True, timeout=timeout)
        res.elapsed = time.monotonic() - start
        return res

    def stats(self):
        return h.stats(self.ini, ctl=self.ctl, sock=self.sock)

    def pid(self):
        return h.read_pid_file(self.pid_file)


@pytest.fixture
def init(tmp_path, staged_install):
    script = InitScript(tmp_path, staged_install)
    yield script
    pid = script.pid()
    if pid and h.proc_comm(pid) == "drover":
        h.kill_pid(pid, signal.SIGQUIT)
        if not h.wait_until(lambda: not h.proc_alive(pid), 15, "drover %d to exit" % pid):
            h.kill_pid(pid)


def test_start_status_reload_stop(init):
    res = init("start")
    assert res.returncode == 0, res.stdout + res.stderr
    pid = init.pid()
    assert pid and h.proc_alive(pid), "start returned before the pid file named a live drover"
    assert os.getsid(pid) != os.getsid(0), "the daemon must run in a session of its own (-d)"
    assert init.stats()["pid"] == pid, "the control socket must answer once start has returned"
    assert init.log.exists() and "ready" in init.log.read_text(), "LOG_FILE must receive the daemon's log"

    res = init("status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is running" in res.stdout

    res = init("start")
    assert res.returncode == 0 and init.pid() == pid, "a second start must leave the running instance alone"

    # reload with a good configuration: a new generation, the same supervisor.
    init.write_config(supervisor={"workers": 3})
    res = init("reload")
    assert res.returncode == 0, res.stdout + res.stderr
    st = h.wait_until(lambda: (lambda s: s if s["config_generation"] == 2 else None)(init.stats()), 10,
                      "configuration generation 2")
    assert st["pid"] == pid and st["last_reload"] == "ok"
    h.wait_until(lambda: init.stats()["workers_alive"] == 3, 10, "3 workers after the reload")

    # reload with a broken configuration: refused before drover is signalled.
    good = init.ini.read_text()
    init.ini.write_text(good.replace("workers = 3", "workers = 0").replace("[jobs]", "[jobs]\nno_such_key = 1"))
    res = init("reload")
    assert res.returncode != 0, "reload of a broken file must fail"
    assert "workers" in res.stderr and "no_such_key" in res.stderr, "every error must be shown: " + res.stderr
    st = init.stats()
    assert st["pid"] == pid and st["config_generation"] == 2 and st["reloads"] == 1, \
        "drover must not have been signalled: %r" % {k: st[k] for k in ("pid", "config_generation", "reloads")}
    assert st["workers_alive"] == 3 and st["last_reload"] == "ok"

    res = init("restart")
    assert res.returncode != 0 and init.pid() == pid and h.proc_alive(pid), \
        "restart with a broken file must keep the running daemon"
    init.ini.write_text(good)

    # stop waits for a running job to finish.
    [job] = h.submit([{"id": "slow-1", "sleep_ms": 2500}], init.ini, ctl=init.ctl)
    h.wait_until(lambda: init.stats()["jobs"]["in_flight"] == 1, 10, "slow-1 to be running")
    res = init("stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert h.completed(init.spool, job), "stop returned before the running job had finished"
    assert not h.proc_exists(pid), "stop returned while drover was still there"
    assert not init.pid_file.exists()

    res = init("status")
    assert res.returncode == 3, res.stdout + res.stderr
    res = init("stop")
    assert res.returncode == 0, "stop of a stopped service is a success (LSB)"


def test_stale_pid_file_is_not_taken_for_drover(init):
    init.run.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        init.pid_file.write_text("%d\n" % sleeper.pid)
        res = init("status")
        assert res.returncode in (1, 3), "a pid file naming another program is not a running drover"
        res = init("stop")
        assert res.returncode == 0 and sleeper.poll() is None, "stop must never signal a stranger"
        res = init("reload")
        assert res.returncode == 7 and sleeper.poll() is None
        res = init("start")
        assert res.returncode == 0, res.stdout + res.stderr
        assert init.pid() != sleeper.pid and h.proc_comm(init.pid()) == "drover"
        res = init("stop")
        assert res.returncode == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_start_with_a_broken_configuration_fails_at_once(init):
    init.write_config(jobs={"max_concurrent": 0})
    res = init("start")
    assert res.returncode != 0
    assert "max_concurrent" in res.stderr
    assert res.elapsed < 10, "a broken configuration must fail at once, not after START_TIMEOUT"
    assert init("status").returncode == 3


def test_start_fails_fast_when_drover_dies_after_daemonizing(init):
    # A valid file whose spool cannot be created: drover -t passes, the daemon exits 69 after forking.
    init.write_config(spool={"dir": "/dev/null/spool"})
    res = init("start")
    assert res.returncode != 0
    assert "exited during start-up" in res.stderr, res.stdout + res.stderr
    assert res.elapsed < 10, "a daemon that died must be noticed at once, not after START_TIMEOUT"
    assert "spool" in init.log.read_text()
    assert init("status").returncode == 3 and not init.pid_file.exists()


def test_start_after_a_killed_drover_left_its_pid_file(init):
    assert init("start").returncode == 0
    pid = init.pid()
    os.kill(pid, signal.SIGKILL)
    h.wait_until(lambda: not h.proc_exists(pid), 10, "drover to die")
    assert init.pid_file.exists(), "kill -9 leaves the pid file behind"
    assert init("status").returncode == 1, "LSB: dead, but the pid file exists"
    h.wait_until(lambda: not h.proc_exists(pid) and not [p for p in h.all_pids()
                 if h.proc_stat(p) and h.proc_stat(p)[1] == pid], 10, "the orphaned workers to stop")
    res = init("start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert init.pid() != pid and h.proc_alive(init.pid())
    assert init("stop").returncode == 0


def test_upgrade_executes_the_binary_in_place(init):
    res = init("upgrade")
    assert res.returncode == 7 and "not running" in res.stderr, res.stdout + res.stderr
    assert init("start").returncode == 0
    pid = init.pid()
    workers = {w["pid"] for w in init.stats()["workers"]}

    # A configuration the binary rejects: refused with the reason, nothing changes.
    good = init.ini.read_text()
    init.ini.write_text(good.replace("[jobs]", "[jobs]\nno_such_key = 1"))
    res = init("upgrade")
    assert res.returncode == 1 and "no_such_key" in res.stderr and "refused it (exit 78)" in res.stderr, \
        res.stdout + res.stderr
    assert init.stats()["pid"] == pid and {w["pid"] for w in init.stats()["workers"]} == workers
    init.ini.write_text(good)

    # The daemonized drover (-d) re-executes itself: same pid, pid file and socket; a running job finishes once.
    [job] = h.submit([{"id": "across-1", "sleep_ms": 2500}], init.ini, ctl=init.ctl)
    h.wait_until(lambda: init.stats()["jobs"]["in_flight"] == 1, 10, "across-1 to be running")
    res = init("upgrade")
    assert res.returncode == 0, res.stdout + res.stderr
    h.wait_until(lambda: (lambda s: s["workers_alive"] == 2 and not {w["pid"] for w in s["workers"]} & workers)
                 (init.stats()), 30, "every worker replaced")
    assert init.pid() == pid and init.stats()["pid"] == pid and h.proc_alive(pid)
    assert "upgraded to drover" in init.log.read_text()
    done = h.wait_until(lambda: h.completed(init.spool, job), 20, "across-1 to complete")
    assert done["attempts"] == 1 and init.stats()["jobs"]["completed"] == 1, done
    assert init("stop").returncode == 0 and not h.proc_exists(pid)
