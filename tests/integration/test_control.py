"""
test_control: the control socket and droverctl (README: Operations)
against the real drover.

A small fixture of its own (`daemon`) starts build/drover (or $DROVER_BUILD)
in the foreground on a temporary config whose handler is /bin/cat or
/bin/sleep, waits for `ping` with a deadline while checking the process is
alive, and at teardown TERMs, then KILLs it by pid. Every wait polls with a
deadline; nothing sleeps and hopes.
"""

import json
import os
import resource
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import DROVER, DROVERCTL, SANITIZER_PATTERNS, ask_as, clean_env, fd_count, render_ini, wait_until
from harness import control_exchange as ask  # raw bytes in, every byte of the answer out

NOBODY = 65534

STATS_KEYS = {"version", "pid", "uptime_ms", "backend", "config_file", "config_generation", "reloads",
              "last_reload", "workers_desired", "workers_alive", "jobs", "workers"}
JOBS_KEYS = {"started", "completed", "failed", "timed_out", "retried", "in_flight"}
WORKER_KEYS = {"slot", "pid", "state", "uptime_ms", "restarts", "last_exit", "in_flight", "completed", "failed",
               "timed_out", "heartbeat_age_ms", "jobs"}
JOB_KEYS = {"id", "attempt", "age_ms", "progress"}
STATES = {"starting", "running", "draining", "backoff", "stopped"}


# ---- helpers ---------------------------------------------------------------------

def droverctl(*args, input=None, env=None, user=None, timeout=30):
    return subprocess.run([str(DROVERCTL), *map(str, args)], input=input, capture_output=True, text=True,
                          env=clean_env(env), timeout=timeout, user=user)


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


# ---- the daemon fixture -------------------------------------------------------------

class Daemon:
    def __init__(self, base, name, handler, workers, mode, extra):
        # A short directory: sun_path holds 107 bytes and tmp_path can be long.
        self.run_dir = Path(tempfile.mkdtemp(prefix="drc-"))
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.run_dir / "drover.sock"
        self.pid_file = self.run_dir / "drover.pid"
        self.spool = self.dir / "spool"
        self.log = self.dir / "drover.log"
        self.ini = self.dir / "drover.ini"
        self.proc = None
        self.write_config(handler, workers, mode, extra)

    def write_config(self, handler, workers, mode, extra):
        sections = {
            "supervisor": {"workers": workers, "control_socket": self.sock, "control_socket_mode": mode,
                           "pid_file": self.pid_file, "log_level": "debug", "shutdown_timeout_ms": 2000},
            "jobs": {"handler": handler, "max_concurrent": 2, "timeout_ms": 60000, "kill_grace_ms": 200},
            "queue": {"backend": "spool"},
            "spool": {"dir": self.spool},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        self.ini.write_text(render_ini(sections))

    def spawn(self, ini=None):
        """Starts a drover process on ini (default: ours) with stdout/stderr to our log."""
        with open(self.log, "ab") as log:
            return subprocess.Popen([str(DROVER), "-c", str(ini or self.ini)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, env=clean_env(), start_new_session=True)

    def start(self):
        self.proc = self.spawn()
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("drover exited with %s during start-up:\n%s"
                                     % (self.proc.returncode, self.log_text()[-3000:]))
            try:
                if ask(self.sock, b"ping\n", timeout=1) == b"pong\n":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("drover did not answer ping within 15 s:\n" + self.log_text()[-3000:])
            time.sleep(0.02)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self):
        answer = ask(self.sock, b"stats\n")
        assert answer.endswith(b"\n"), answer[-200:]
        return json.loads(answer)

    def wait_alive_workers(self, n, timeout=15):
        return wait_until(lambda: (lambda s: s if s["workers_alive"] == n and
                                   all(w["state"] == "running" for w in s["workers"]) else None)(self.stats()),
                          timeout, "%d running workers" % n)

    def ctl(self, *args, **kw):
        return droverctl("-c", self.ini, "-s", self.sock, *args, **kw)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        try:
            return self._stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _exited(self):
        """True once drover has exited, without reaping it (waitid WNOWAIT)."""
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True  # already reaped

    def _stop(self):
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            if not self._exited():
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    wait_until(self._exited, 10, "drover to exit on SIGTERM")
                except AssertionError:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    wait_until(self._exited, 10, "drover to exit on SIGKILL")
            # Its process group is our session: kill whatever of it is left while the unreaped
            # leader still reserves the group id, then reap.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def sanitizer_reports(self):
        return [line for line in self.log_text().splitlines() if any(p in line for p in SANITIZER_PATTERNS)]


@pytest.fixture
def daemon(tmp_path):
    """daemon(handler="/bin/cat", workers=2, mode="0660", extra={section: {key: value}}, start=True)."""
    missing = [str(p) for p in (DROVER, DROVERCTL) if not p.exists()]
    if missing:
        pytest.fail("not built: %s (run make, or set DROVER_BUILD)" % ", ".join(missing))
    made = []

    def make(handler="/bin/cat", workers=2, mode="0660", extra=None, start=True, name=None):
        d = Daemon(tmp_path, name or "d%d" % len(made), handler, workers, mode, extra)
        made.append(d)
        return d.start() if start else d

    yield make
    reports = []
    for d in made:
        d.stop()
        reports += d.sanitizer_reports()
    assert not reports, "sanitizer reports:\n" + "\n".join(reports[:20])


# ---- protocol ----------------------------------------------------------------------

def test_commands_answer_per_spec(daemon):
    d = daemon()
    assert ask(d.sock, b"ping\n") == b"pong\n"
    assert ask(d.sock, b"ping", half_close=True) == b"pong\n", "an unterminated line at EOF is still a command"
    assert ask(d.sock, b"reload\n") == b"ok\n"
    wait_until(lambda: d.stats()["config_generation"] == 2, 10, "config generation 2 after reload")
    assert d.stats()["last_reload"] == "ok"
    assert ask(d.sock, b"scale 3\n") == b"ok\n"
    d.wait_alive_workers(3)
    for bad in (b"scale 0\n", b"scale 257\n", b"scale x\n", b"scale\n", b"scale 2 2\n", b"ping now\n",
                b"\n", b"frobnicate\n"):
        answer = ask(d.sock, bad)
        assert answer.startswith(b"error: ") and answer.endswith(b"\n") and answer.count(b"\n") == 1, (bad, answer)
    assert d.stats()["workers_desired"] == 3, "a refused scale changed nothing"


@pytest.mark.asan
def test_garbage_and_long_lines_leave_the_daemon_responsive(daemon):
    d = daemon()
    garbage = [b"\x00\x01\x02\xff\xfe\n", bytes(range(256)) + b"\n", os.urandom(3000) + b"\n", b"\r\n\r\n",
               b"stats \x00 x\n", "ping \u00e9\n".encode()]
    for data in garbage:
        answer = ask(d.sock, data)
        assert answer.startswith(b"error: "), (data[:40], answer)
    # 4096 bytes is the cap, newline included.
    assert ask(d.sock, b" " * 4090 + b"ping\n") == b"pong\n"
    assert ask(d.sock, b"x" * 4200 + b"\n").startswith(b"error: line too long")
    # Answered, then closed only once the client is done sending: no reset that would swallow the answer.
    for _ in range(3):
        answer = ask(d.sock, b"y" * (1 << 20) + b"\n")
        assert answer == b"error: line too long (at most 4096 bytes)\n", answer[:100]
    assert d.alive()
    t0 = time.monotonic()
    assert ask(d.sock, b"ping\n") == b"pong\n"
    assert time.monotonic() - t0 < 1.0


def read_to_clean_eof(s):
    """Everything until EOF; a reset (the daemon closed with our input unread) fails the test."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            raise AssertionError("connection reset after %r instead of a clean end of the answer" % out[:80])
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("size", [4200, 64 * 1024, 1 << 20])
def test_an_over_long_line_gets_its_answer_and_a_clean_close(daemon, size):
    d = daemon()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(d.sock))
        s.sendall(b"z" * size + b"\n")  # a client that sends all of it before reading (nc -U, most scripts)
        assert read_to_clean_eof(s) == b"error: line too long (at most 4096 bytes)\n"
    finally:
        s.close()
    assert ask(d.sock, b"ping\n") == b"pong\n"


def test_500_connections_and_a_silent_client(daemon):
    raise_nofile(2048)
    d = daemon()
    d.wait_alive_workers(2)
    baseline = fd_count(d.pid)

    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(d.sock))
    silent_since = time.monotonic()

    # 500 clients connect at once, all before any sends its line.
    clients = []
    for _ in range(500):
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        s.connect(str(d.sock))  # Unix sockets connect at once, or raise when the backlog is full
        clients.append(s)
    t0 = time.monotonic()
    assert ask(d.sock, b"ping\n", timeout=3) == b"pong\n", "ping with 501 clients connected"
    assert time.monotonic() - t0 < 2.0

    sel = selectors.DefaultSelector()
    for s in clients:
        s.send(b"ping\n")
        sel.register(s, selectors.EVENT_READ, bytearray())
    answers = 0
    deadline = time.monotonic() + 20
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            chunk = key.fileobj.recv(64)
            key.data.extend(chunk)
            if not chunk:
                answers += bytes(key.data) == b"pong\n"
                sel.unregister(key.fileobj)
                key.fileobj.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    assert answers == 500

    # The silent client is dropped after the idle timeout: it sees EOF, not an answer.
    silent.settimeout(15)
    assert silent.recv(64) == b""
    assert time.monotonic() - silent_since < 12
    silent.close()

    # At most the baseline: the baseline itself may include the closing fd of the fixture's
    # last stats request (the client sees EOF at shutdown(), a moment before close()).
    wait_until(lambda: fd_count(d.pid) <= baseline, 10, "drover's fd count back to %d" % baseline)
    assert ask(d.sock, b"ping\n") == b"pong\n"


# ---- creating the socket -------------------------------------------------------------

def test_socket_mode_and_stale_socket_replaced(daemon):
    d = daemon(mode="0660", start=False)
    # A socket file left by a crashed instance: nobody listens on it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.sock))
    stale.close()
    d.start()  # answering ping proves a listener replaced the stale file (bind would fail on it)
    st = os.stat(d.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert d.ctl("ping").stdout == "pong\n"


def test_socket_mode_0600(daemon):
    d = daemon(mode="0600")
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o600


def test_path_that_is_not_a_socket_is_never_clobbered(daemon):
    d = daemon(start=False)
    d.sock.write_text("precious\n")
    proc = d.spawn()
    assert proc.wait(timeout=15) == 69
    assert d.sock.read_text() == "precious\n"


def test_second_instance_exits_69_and_the_first_keeps_running(daemon):
    d = daemon()
    ino = os.stat(d.sock).st_ino
    first_pid = d.pid

    # Same config: same socket and pid file.
    assert d.spawn().wait(timeout=15) == 69
    # Same socket, another pid file: the live socket alone must stop it.
    other = d.dir / "other.ini"
    other.write_text(d.ini.read_text().replace(str(d.pid_file), str(d.run_dir / "other.pid")))
    assert d.spawn(other).wait(timeout=15) == 69
    # Same pid file, another socket: the pid file lock must stop it.
    third = d.dir / "third.ini"
    third.write_text(d.ini.read_text().replace(str(d.sock), str(d.run_dir / "third.sock")))
    assert d.spawn(third).wait(timeout=15) == 69
    assert not (d.run_dir / "third.sock").exists()

    assert d.alive()
    assert ask(d.sock, b"ping\n") == b"pong\n"
    assert os.stat(d.sock).st_ino == ino
    assert d.stats()["pid"] == first_pid
    assert int(d.pid_file.read_text().strip()) == first_pid


def test_peer_credentials_refuse_other_users(daemon):
    # 0666 lets anyone connect at the file system level, so only the SO_PEERCRED check can refuse.
    d = daemon(mode="0666")
    os.chmod(d.run_dir, 0o755)
    # The daemon answers and closes at once, so the send may already find the socket closed.
    script = ("import socket,sys\n"
              "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
              "try: s.sendall(b'stop\\n')\n"
              "except OSError: pass\n"
              "sys.stdout.write(s.recv(100).decode())\n")
    out = subprocess.run([sys.executable, "-c", script, str(d.sock)], capture_output=True, text=True,
                         user=NOBODY, group=NOBODY, extra_groups=[], timeout=10)
    assert out.stdout == "error: permission denied\n", out
    assert d.alive() and ask(d.sock, b"ping\n") == b"pong\n", "a refused stop did not stop"
    out = droverctl_as_nobody(d, "-s", d.sock, "stop")
    assert out.returncode == 1 and "permission denied" in out.stderr, out
    assert d.alive()

    # Root, the daemon's own user, passes.
    assert d.ctl("ping").returncode == 0


def test_socket_group_comes_from_the_peers_real_groups_and_only_reads(daemon):
    import grp
    import pwd
    group = grp.getgrnam("ssl-cert")            # an existing group: drover resolves [supervisor] group by name
    member = pwd.getpwnam(group.gr_mem[0])       # a member of it in /etc/group
    # 0666: the file system lets anyone connect, so the answers below come from the credential check alone.
    d = daemon(mode="0666", extra={"supervisor": {"group": group.gr_name}})
    os.chmod(d.run_dir, 0o755)
    assert os.stat(d.sock).st_gid == group.gr_gid

    # nobody, with the group added at run time only (--group-add, supplementalGroups): may read.
    assert ask_as(d, "ping", NOBODY, NOBODY, [group.gr_gid]) == "pong\n"
    assert json.loads(ask_as(d, "stats", NOBODY, NOBODY, [group.gr_gid]))["pid"] == d.pid
    assert ask_as(d, "metrics", NOBODY, NOBODY, [group.gr_gid]).startswith("# HELP")
    # ... but not write.
    for command in ("stop", "reload", "scale 1"):
        answer = ask_as(d, command, NOBODY, NOBODY, [group.gr_gid])
        assert answer.startswith("error: permission denied"), (command, answer)
    assert d.alive() and d.stats()["workers_desired"] == 2

    # A member in /etc/group whose process dropped the group: refused.
    answer = ask_as(d, "ping", member.pw_uid, member.pw_gid, [])
    assert answer == "error: permission denied\n", answer
    assert d.alive()


def droverctl_as_nobody(d, *args):
    """droverctl run as nobody (a copy in the daemon's run dir, which nobody can reach)."""
    os.chmod(d.run_dir, 0o755)
    copy = d.run_dir / "droverctl"
    if not copy.exists():
        shutil.copy(DROVERCTL, copy)
        os.chmod(copy, 0o755)
    return subprocess.run([str(copy), *map(str, args)], capture_output=True, text=True, user=NOBODY, group=NOBODY,
                          extra_groups=[], timeout=10, env=clean_env())


def test_socket_mode_keeps_other_users_out(daemon):
    d = daemon(mode="0660")
    out = droverctl_as_nobody(d, "-s", d.sock, "ping")
    assert out.returncode == 69, out
    assert "ermission denied" in out.stderr


# ---- stats and metrics ----------------------------------------------------------------

def submit(d, lines):
    out = droverctl("-c", d.ini, "submit", "-", input="".join(line + "\n" for line in lines))
    assert out.returncode == 0, out
    return out.stdout.split()


@pytest.mark.asan
def test_stats_has_every_spec_key_and_running_jobs(daemon):
    d = daemon(handler="/bin/sleep 30")
    d.wait_alive_workers(2)
    ids = submit(d, ['{"id":"sleepy-1"}', '{"id":"sleepy-2"}', '{"id":"sleepy-3"}'])
    assert ids == ["sleepy-1", "sleepy-2", "sleepy-3"]
    running = lambda s: sorted(j["id"] for w in s["workers"] for j in w["jobs"])  # noqa: E731
    # A job shows in the slot's list a moment before its handler has started (and is counted).
    stats = wait_until(lambda: (lambda s: s if running(s) == ids and s["jobs"]["started"] >= 3 else None)(d.stats()),
                       15, "3 running jobs, counted as started")

    assert STATS_KEYS <= stats.keys(), STATS_KEYS - stats.keys()
    assert JOBS_KEYS <= stats["jobs"].keys()
    assert stats["pid"] == d.pid and stats["backend"] == "spool"
    assert stats["config_file"] == str(d.ini)
    assert stats["config_generation"] == 1 and stats["reloads"] == 0
    assert stats["workers_desired"] == 2 and stats["workers_alive"] == 2
    assert stats["jobs"]["in_flight"] == 3 and stats["jobs"]["started"] >= 3
    assert len(stats["workers"]) == 2
    for w in stats["workers"]:
        assert WORKER_KEYS <= w.keys(), WORKER_KEYS - w.keys()
        assert w["state"] in STATES and w["pid"] > 0
        assert 0 <= w["heartbeat_age_ms"] < 5000
        assert w["in_flight"] == len(w["jobs"]) <= 2
        for job in w["jobs"]:
            assert JOB_KEYS <= job.keys()
            assert job["attempt"] == 1 and job["age_ms"] >= 0
    assert "kafka" not in stats["workers"][0]

    pretty = d.ctl("stats")
    assert pretty.returncode == 0 and json.loads(pretty.stdout)["pid"] == d.pid
    assert "\n  " in pretty.stdout, "droverctl stats pretty-prints"

    status = d.ctl("status")
    assert status.returncode == 0, status
    lines = status.stdout.splitlines()
    assert str(d.pid) in lines[0] and "spool" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["SLOT", "PID", "STATE"])
    for word in ("UPTIME", "DONE", "FAILED", "RESTARTS"):
        assert word in lines[header]
    # A row per worker; each running job on its own line under it ("> id attempt age [bar] message").
    rows = [line for line in lines[header + 1:] if line.strip() and not line.lstrip().startswith(">")]
    assert len(rows) == 2, status.stdout
    pids = {str(w["pid"]) for w in stats["workers"]}
    assert {row.split()[1] for row in rows} == pids
    assert all(row.split()[2] == "running" for row in rows)
    for job_id in ids:
        assert "> " + job_id + " " in status.stdout, status.stdout


def metric_value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no %s in metrics:\n%s" % (series, text))


def test_metrics_are_valid_prometheus(daemon, tmp_path):
    d = daemon()
    d.wait_alive_workers(2)
    assert submit(d, ['{"id":"m-1"}', '{"id":"m-2","x":1}']) == ["m-1", "m-2"]
    wait_until(lambda: d.stats()["jobs"]["completed"] == 2, 15, "2 completed jobs")
    assert (d.spool / "complete" / "m-1.json").exists()

    out = d.ctl("metrics")
    assert out.returncode == 0
    text = out.stdout
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: make deps"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    assert metric_value(text, "drover_up") == 1
    assert metric_value(text, 'drover_workers{state="running"}') == 2
    for state in STATES - {"running"}:
        assert metric_value(text, 'drover_workers{state="%s"}' % state) == 0
    assert metric_value(text, "drover_worker_restarts_total") == 0
    assert metric_value(text, 'drover_jobs_total{outcome="completed"}') == 2
    for outcome in ("failed", "timed_out", "retried"):
        assert metric_value(text, 'drover_jobs_total{outcome="%s"}' % outcome) == 0
    assert metric_value(text, "drover_jobs_in_flight") == 0
    assert metric_value(text, 'drover_job_duration_seconds_bucket{le="+Inf"}') == 2
    assert metric_value(text, "drover_job_duration_seconds_count") == 2
    assert metric_value(text, "drover_reloads_total") == 0
    assert "# TYPE drover_job_duration_seconds histogram" in text
    assert "drover_kafka_consumer_lag" not in text, "no partitions on the spool"
    buckets = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("drover_job_duration_seconds_bucket")]
    assert buckets == sorted(buckets), "buckets are cumulative"


# ---- droverctl -------------------------------------------------------------------------

def test_droverctl_exit_codes_without_a_daemon(tmp_path):
    missing = tmp_path / "none.sock"
    assert droverctl().returncode == 64
    assert droverctl("-s", missing, "frobnicate").returncode == 64
    assert droverctl("-s", missing, "scale").returncode == 64
    assert droverctl("-s", missing, "scale", "many").returncode == 64
    assert droverctl("-s", missing, "scale", "0").returncode == 64
    assert droverctl("-s", missing, "ping", "extra").returncode == 64
    assert droverctl("-s", missing, "topics", "delete").returncode == 64
    assert droverctl("-x").returncode == 64
    out = droverctl("-s", missing, "ping")
    assert out.returncode == 69 and "cannot reach" in out.stderr
    # A stale socket: nobody listens.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(missing))
    stale.close()
    for command in ("status", "stats", "metrics", "reload", "stop"):
        assert droverctl("-s", missing, command).returncode == 69, command
    # No -s and a config that does not exist: a failed command, not a usage error.
    out = droverctl("-c", tmp_path / "absent.ini", "ping")
    assert out.returncode == 1 and out.stderr


def test_droverctl_commands_and_exit_codes_with_a_daemon(daemon):
    d = daemon()
    assert d.ctl("ping").stdout == "pong\n"
    # Without -s the socket comes from the config file.
    assert droverctl("-c", d.ini, "ping").stdout == "pong\n"
    out = d.ctl("reload")
    assert (out.returncode, out.stdout) == (0, "ok\n")
    out = d.ctl("scale", "3")
    assert (out.returncode, out.stdout) == (0, "ok\n")
    d.wait_alive_workers(3)
    health = droverctl("-c", d.ini, "health")
    assert health.returncode == 0, health
    topics = droverctl("-c", d.ini, "topics", "list")
    assert topics.returncode == 1 and "kafka" in topics.stderr
    assert d.ctl("metrics").stdout.startswith("# HELP")

    # A reload of a broken file: the command fails (exit 1) and the daemon keeps running.
    good = d.ini.read_text()
    d.ini.write_text(good + "[jobs]\nmax_concurrent = lots\n")
    out = d.ctl("reload")
    assert out.returncode == 1 and out.stderr.startswith("droverctl: error: ")
    assert d.alive() and d.stats()["config_generation"] >= 2
    d.ini.write_text(good)

    out = d.ctl("stop")
    assert (out.returncode, out.stdout) == (0, "ok\n")
    assert d.proc.wait(timeout=15) == 0
    assert not d.sock.exists(), "a clean stop removes its socket"


def test_droverctl_submit_is_durable_and_prints_ids(tmp_path):
    # The spool side of droverctl needs no daemon.
    spool = tmp_path / "spool"
    for sub in ("tmp", "incoming", "processing", "complete", "failed"):
        (spool / sub).mkdir(parents=True)
    ini = tmp_path / "drover.ini"
    ini.write_text("[supervisor]\ncontrol_socket = %s\n[jobs]\nhandler = /bin/cat\n[spool]\ndir = %s\n"
                   % (tmp_path / "s.sock", spool))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id":"a-1","n":1}\n\n   \n{"id":"a-2"}\r\nnot json at all\n')
    out = droverctl("-c", ini, "submit", jobs)
    # A line that is not a JSON object is refused, with the reason, as the Kafka path does.
    assert out.returncode == 1 and "line 5" in out.stderr and "not a JSON object" in out.stderr, out
    ids = out.stdout.split()
    assert ids == ["a-1", "a-2"]
    incoming = sorted(p.name for p in (spool / "incoming").iterdir())
    assert len(incoming) == 2 and not list((spool / "tmp").iterdir())
    payloads = {(spool / "incoming" / name).read_bytes() for name in incoming}
    assert payloads == {b'{"id":"a-1","n":1}', b'{"id":"a-2"}'}
    assert droverctl("-c", ini, "health").returncode == 0

    out = droverctl("-c", ini, "submit", "-", input='{"id":"b-1"}\n')
    assert (out.returncode, out.stdout) == (0, "b-1\n")
    assert droverctl("-c", ini, "submit", tmp_path / "absent.jsonl").returncode == 1

    broken = tmp_path / "broken.ini"
    broken.write_text(ini.read_text().replace(str(spool), str(tmp_path / "nowhere")))
    out = droverctl("-c", broken, "submit", "-", input='{"id":"c-1"}\n')
    assert out.returncode in (1, 69) and out.stdout == "", out
    out = droverctl("-c", broken, "health")
    assert out.returncode in (1, 69) and out.returncode != 0
