"""
The container entrypoint (packaging/docker/entrypoint.sh) without a container
engine: run under `unshare --pid --fork --mount-proc`, so that drover is PID 1
of a fresh PID namespace, exactly as in a container, configured from the
environment only.

- jobs complete; the entrypoint wrote a minimal configuration and exec'd drover
  (no shell left as PID 1);
- an orphan that no worker started (as from `docker exec`: what a job leaves
  behind goes to its worker, a child subreaper) is re-parented to PID 1, reaped
  when it exits (no zombie), and not mistaken for a worker (same workers, no
  restart);
- TERM lets the running job finish, drover exits 0, nothing is left in the
  namespace;
- a broken environment is refused before drover starts (exit 78), a mounted
  configuration is never overwritten, and a command runs instead of drover.
"""

import json
import os
import signal
import subprocess

import pytest

import pkghelpers as h


class Container:
    def __init__(self, tmp_path, env=None):
        self.dir = h.short_dir()
        self.sock = self.dir / "drover.sock"
        self.spool = tmp_path / "spool"
        self.config = tmp_path / "etc" / "drover.ini"
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.log_path = tmp_path / "container.log"
        self.env = {
            "PATH": "%s:/usr/sbin:/usr/bin:/sbin:/bin" % h.BUILD,
            "PROCESSING_WORKER_INSTANCES": "2",
            "MAX_CONCURRENT_GENERATIONS": "3",
            "DROVER_SUPERVISOR_CONTROL_SOCKET": str(self.sock),
            "DROVER_SUPERVISOR_PID_FILE": str(self.dir / "drover.pid"),
            "DROVER_SUPERVISOR_SHUTDOWN_TIMEOUT_MS": "10000",
            "DROVER_SUPERVISOR_LOG_LEVEL": "debug",
            "DROVER_SPOOL_DIR": str(self.spool),
            "DROVER_JOBS_HANDLER": h.HANDLER_ARGV,
            "DROVER_JOBS_KILL_GRACE_MS": "1000",
        }
        self.env.update(env or {})
        self.proc = None
        self.init_pid = None  # drover, PID 1 inside; its pid as seen from here
        self.namespace = None

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", str(h.ENTRYPOINT), "-c", str(self.config)],
            env=h.clean_env(self.env), stdout=self.log, stderr=subprocess.STDOUT)

        def drover_is_pid1():
            for child in h.children_of(self.proc.pid):
                if h.proc_comm(child) == "drover":
                    return child
            return None
        self.init_pid = h.wait_until(drover_is_pid1, 15, "drover to replace the entrypoint shell")
        assert h.proc_status_field(self.init_pid, "NSpid") == [str(self.init_pid), "1"], "drover is not PID 1"
        self.namespace = h.pid_namespace(self.init_pid)
        h.wait_until(lambda: self.ctl(["ping"], check=False).returncode == 0, 15, "the control socket")
        return self

    def ctl(self, args, check=True):
        return h.droverctl(args, self.config, env=self.env, check=check)

    def stats(self):
        return json.loads(self.ctl(["stats"]).stdout)

    def submit(self, jobs):
        return h.submit(jobs, self.config, env=self.env)

    def host_pid_of(self, ns_pid):
        for pid in h.pids_in_namespace(self.namespace):
            nspid = h.proc_status_field(pid, "NSpid")
            if nspid and nspid[-1] == str(ns_pid):
                return pid
        return None

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            h.kill_pid(self.proc.pid)  # --kill-child takes drover and the namespace with it
            self.proc.wait(10)
        if self.proc is not None:
            self.log.close()


@pytest.fixture
def container(tmp_path):
    c = Container(tmp_path)
    yield c
    c.stop()


def test_pid1_runs_jobs_and_reaps_orphans_without_mistaking_them_for_workers(container):
    c = container.start()
    assert c.config.exists() and "[supervisor]" in c.config.read_text(), "the entrypoint writes a minimal config"
    assert "wrote a minimal" in c.log_text()

    ids = c.submit([{"id": "job-%d" % i} for i in range(6)])
    h.wait_until(lambda: all(h.completed(c.spool, i) for i in ids), 30, "6 jobs to complete")
    before = c.stats()
    assert before["workers_alive"] == 2 and before["workers_desired"] == 2, "PROCESSING_WORKER_INSTANCES=2"
    workers = sorted((w["slot"], w["pid"], w["restarts"]) for w in before["workers"])

    marker = c.marks / "orphan.json"
    # Entered like `docker exec`: its parent exits at once, leaving the child to the namespace's init.
    subprocess.run(["nsenter", "-t", str(c.init_pid), "-p", "--", h.PYTHON, str(h.HANDLER), "--orphan-of",
                    str(marker), "1500"], check=True, timeout=20, env=h.clean_env(c.env))
    seen = json.loads(h.wait_until(lambda: marker.exists() and marker.read_text(), 10, "the orphan's report"))
    assert seen["ppid"] == 1, "the orphan should be re-parented to PID 1 (drover), got ppid %r" % seen["ppid"]
    host_pid = h.wait_until(lambda: c.host_pid_of(seen["pid"]), 5, "the orphan's pid on the host")
    assert h.proc_stat(host_pid)[1] == c.init_pid

    # It lives 1.5 s, then must be reaped: a zombie keeps its /proc entry.
    h.wait_until(lambda: not h.proc_exists(host_pid), 10, "the orphan (pid %d) to be reaped" % host_pid)
    h.wait_until(lambda: not [p for p in h.children_of(c.init_pid) if h.proc_stat(p) and h.proc_stat(p)[0] == "Z"],
                 5, "no zombie child of PID 1")

    after = c.stats()
    assert after["workers_alive"] == 2
    assert sorted((w["slot"], w["pid"], w["restarts"]) for w in after["workers"]) == workers, \
        "the orphan's exit must not count as a worker's"
    for line in c.log_text().splitlines():
        assert not ("worker" in line and "(pid %d)" % seen["pid"] in line), "orphan taken for a worker: " + line


def test_term_drains_and_leaves_nothing_in_the_namespace(container):
    c = container.start()
    [job] = c.submit([{"id": "slow-1", "sleep_ms": 2000}])
    h.wait_until(lambda: c.stats()["jobs"]["in_flight"] == 1, 15, "slow-1 to run")
    inside = h.pids_in_namespace(c.namespace)
    assert len(inside) >= 4, "drover, 2 workers and a handler: %r" % inside

    os.kill(c.init_pid, signal.SIGTERM)
    assert c.proc.wait(20) == 0, "drover as PID 1 must exit 0 after a graceful stop\n" + c.log_text()
    assert h.completed(c.spool, job), "the running job must finish during the drain"
    assert not list((c.spool / "incoming").iterdir()) and not list((c.spool / "processing").iterdir())
    assert h.pids_in_namespace(c.namespace) == []
    assert all(not h.proc_exists(p) for p in inside)
    assert "graceful stop" in c.log_text()


def run_entrypoint(args, env, timeout=20):
    return subprocess.run([str(h.ENTRYPOINT)] + args, env=h.clean_env(env), capture_output=True, text=True,
                          timeout=timeout)


def test_broken_environment_is_refused_before_drover_starts(tmp_path):
    c = Container(tmp_path, env={"PROCESSING_WORKER_INSTANCES": "0", "DROVER_JOBS_NO_SUCH_KEY": "1"})
    res = run_entrypoint(["-c", str(c.config)], c.env)
    assert res.returncode == 78, res.stdout + res.stderr
    assert "PROCESSING_WORKER_INSTANCES" in res.stderr and "DROVER_JOBS_NO_SUCH_KEY" in res.stderr, res.stderr
    assert not c.sock.exists()


def test_mounted_configuration_is_used_and_never_overwritten(tmp_path):
    c = Container(tmp_path)
    c.config.parent.mkdir(parents=True)
    mounted = "[supervisor]\nworkers = 1\n\n[jobs]\nmax_attempts = 2\n"
    c.config.write_text(mounted)
    res = run_entrypoint(["-c", str(c.config), "-t"], c.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "configuration %s is ok" % c.config in res.stdout + res.stderr
    assert "wrote a minimal" not in res.stderr
    assert c.config.read_text() == mounted


def test_a_command_runs_instead_of_drover(tmp_path):
    res = run_entrypoint(["sh", "-c", "echo hello from $0", "ctr"], {"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "hello from ctr"
