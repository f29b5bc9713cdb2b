"""
harness: starts the real drover on a temporary config and spool, drives it
with droverctl and signals, and reads what it left on disk. It is the one home
of the helpers every suite shares (the integration and fault tests, the
packaging tests through pkghelpers, the bench): waiting with a deadline,
reading /proc, the control socket, the INI file, and the environment names
that configure drover, taken from `drover --print-options`.

Rules it keeps so that tests cannot hang or hurt anyone else's processes:
every wait polls with a deadline (wait_until) and fails with a message that
says what was awaited and what was last seen; every process drover starts
carries a per-instance marker in its environment (POOLTEST_MARK), which
is how descendants are found even after the supervisor died and they were
re-parented; teardown kills only those pids.
"""

import errno
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DROVER_BUILD") or (REPO / "build")).resolve()
DROVER = BUILD / "drover"
DROVERCTL = BUILD / "droverctl"
PYTHON = "/usr/bin/python3"
TEST_HANDLER = REPO / "tests" / "handlers" / "testhandler.py"

MARK_VAR = "POOLTEST_MARK"
SANITIZER_PATTERNS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")

# Not options, but they change what drover does: every DROVER_* name is drover's (an unknown
# DROVER_<SECTION>_ name is a configuration error), and NOTIFY_SOCKET makes it talk to systemd.
_OWN_ENV_PREFIX = "DROVER_"
_NOTIFY_ENV = "NOTIFY_SOCKET"


class HarnessError(AssertionError):
    pass


# ---- drover's option table ------------------------------------------------------

class Option:
    """One line of `drover --print-options`: [section] key = default ; ... (env: NAMES)."""

    _LINE = re.compile(r"^\[([^\]]+)\] ([a-z_.A-Z]+) = (.*?) ; (.*)$")
    _ENV = re.compile(r"env: ([A-Z0-9_ ]+)\)$")
    _ALLOWED = re.compile(r"\(allowed: (.*?)(?:; env: [A-Z0-9_ ]+)?\)$")

    def __init__(self, section, key, default, env, allowed):
        self.section, self.key, self.default, self.env, self.allowed = section, key, default, env, allowed

    @classmethod
    def parse(cls, line):
        m = cls._LINE.match(line)
        if not m:
            return None
        section, key, default, rest = m.groups()
        env = cls._ENV.search(rest)
        allowed = cls._ALLOWED.search(rest)
        return cls(section, key, default, env.group(1).split() if env else [], allowed.group(1) if allowed else "")


@functools.lru_cache(maxsize=None)
def print_options():
    """The text of `drover --print-options` of the tested build: the option table as drover has it."""
    if not DROVER.exists():
        raise HarnessError("not built: %s (run make, or set DROVER_BUILD)" % DROVER)
    r = subprocess.run([str(DROVER), "--print-options"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0 or not r.stdout:
        raise HarnessError("drover --print-options failed (%d): %s" % (r.returncode, r.stderr))
    return r.stdout


def options():
    """[Option] of every key of the table (placeholders such as env.NAME included)."""
    return [o for o in map(Option.parse, print_options().splitlines()) if o is not None]


def option_default(section, key):
    """The default of [section] key, as --print-options prints it."""
    for o in options():
        if (o.section, o.key) == (section, key):
            return o.default
    raise HarnessError("drover --print-options has no [%s] %s" % (section, key))


@functools.lru_cache(maxsize=None)
def config_env():
    """(names, prefixes) of the environment variables that configure drover: every name
    --print-options mentions (the env: lists and the legacy switches its descriptions name,
    such as USE_KAFKA); a name ending in _NAME (DROVER_LIBRDKAFKA_NAME) stands for a prefix."""
    mentioned = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", print_options()))
    prefixes = {n[:-len("NAME")] for n in mentioned if n.endswith("_NAME")}
    names = {n for n in mentioned if not n.endswith("_NAME")} | {_NOTIFY_ENV}
    return frozenset(names), tuple(sorted(prefixes | {_OWN_ENV_PREFIX}))


def is_config_env(name):
    names, prefixes = config_env()
    return name in names or name.startswith(prefixes)


def clean_env(extra=None):
    """The caller's environment without anything that configures drover, plus extra."""
    env = {k: v for k, v in os.environ.items() if not is_config_env(k)}
    env.update(extra or {})
    return env


def render_ini(cfg):
    """{section: {key: value}} as INI text (booleans as true/false)."""
    lines = []
    for section, keys in cfg.items():
        lines.append("[%s]" % section)
        for key, value in keys.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append("%s = %s" % (key, value))
        lines.append("")
    return "\n".join(lines)


def control_exchange(sock, data, timeout=5.0, half_close=False):
    """Sends raw bytes over the control socket; returns every byte the daemon writes before
    closing (b"" when it never answered). A daemon that answers and closes before reading all
    of a huge request is not an error."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)
    finally:
        s.close()


def wait_until(pred, timeout, what, interval=0.02, on_timeout=None):
    """Polls pred until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise HarnessError("timed out after %.1fs waiting for %s (last value: %r)%s"
                               % (timeout, what, last, ("\n" + detail) if detail else ""))
        time.sleep(interval)


# ---- /proc ------------------------------------------------------------------

def proc_stat(pid):
    """(state, ppid, pgid) of pid, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2])


def proc_alive(pid):
    """True when pid exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def proc_environ(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_status_kb(pid, field):
    """A kB (or count) field of /proc/PID/status (VmRSS, VmHWM, ...), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children_of(pid):
    """Direct children of every thread of pid ([] when it is gone)."""
    out = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def pgid_alive(pgid):
    """True when some live (non-zombie) process is in process group pgid."""
    for pid in all_pids():
        st = proc_stat(pid)
        if st and st[2] == pgid and st[0] not in ("Z", "X"):
            return True
    return False


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


# ---- the daemon ---------------------------------------------------------------

DEFAULTS = {
    "supervisor": {
        "workers": 2,
        "log_level": "debug",
        "shutdown_timeout_ms": 3000,
        "restart_delay_ms": 100,
        "restart_delay_max_ms": 2000,
        "heartbeat_timeout_ms": 5000,
    },
    "jobs": {
        "handler": "%s %s" % (PYTHON, TEST_HANDLER),
        "max_concurrent": 4,
        "timeout_ms": 10000,
        "kill_grace_ms": 500,
        "max_attempts": 3,
        "retry_delay_ms": 50,
        "no_retry_exit_codes": "64 65",
        "max_result_bytes": 65536,
    },
    "queue": {"backend": "spool"},
}


def _short_dir(tmp_path, name):
    """tmp_path/name, or a short directory under /tmp when a socket path would be too long."""
    p = Path(tmp_path) / name
    if len(str(p / "drover.sock")) < 100:
        p.mkdir(parents=True, exist_ok=True)
        return p
    return Path(tempfile.mkdtemp(prefix="drv-"))


def _apply(cfg, overrides):
    """Merges {section: {key: value}} into cfg; a value of None removes the key."""
    for section, keys in overrides.items():
        target = cfg.setdefault(section, {})
        for key, value in keys.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value


class Drover:
    """One drover instance on its own config, spool, socket, pid and log file."""

    def __init__(self, tmp_path, config=None, env=None, name="d"):
        self.tmp = Path(tmp_path) / name
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.run_dir = _short_dir(self.tmp, "run")
        self.sock = self.run_dir / "drover.sock"
        self.pid_file = self.run_dir / "drover.pid"
        self.log_file = self.tmp / "drover.log"
        self.stderr_file = self.tmp / "drover.stderr"
        self.spool = self.tmp / "spool"
        self.records = self.tmp / "records"
        self.state = self.tmp / "state"
        self.ini = self.tmp / "drover.ini"
        for d in (self.records, self.state):
            d.mkdir(exist_ok=True)
        self.mark = "%s-%s" % (name, uuid.uuid4().hex)
        self.env = dict(env or {})
        self.binary = DROVER  # a test of the binary upgrade runs a copy it can replace
        self.proc = None
        self._stderr = None
        self.exit_code = None
        self.config = self._merge(config or {})
        self.write_config()

    # -- configuration

    def _merge(self, overrides):
        cfg = {
            "supervisor": dict(DEFAULTS["supervisor"], control_socket=str(self.sock), pid_file=str(self.pid_file),
                               log_file=str(self.log_file)),
            "jobs": dict(DEFAULTS["jobs"], **{"env.POOLTEST_RECORD_DIR": str(self.records)}),
            "queue": dict(DEFAULTS["queue"]),
            "spool": {"dir": str(self.spool)},
        }
        _apply(cfg, overrides)
        return cfg

    def render_config(self, cfg=None):
        return render_ini(cfg or self.config)

    def write_config(self, overrides=None, text=None):
        """Rewrites the INI (merged overrides, or raw text); returns the text written."""
        _apply(self.config, overrides or {})
        if text is None:
            text = self.render_config()
        tmp = self.ini.with_suffix(".tmp")
        tmp.write_text(text)
        os.rename(tmp, self.ini)
        return text

    def drover_env(self):
        return clean_env(dict(self.env, **{MARK_VAR: self.mark}))

    def ctl_env(self):
        # droverctl sees the same config-affecting variables (DROVER_SPOOL_DIR...), never the marker.
        return clean_env(self.env)

    # -- life cycle

    def start(self, wait=True, timeout=15):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.exit_code = None
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = open(self.stderr_file, "ab")
        self.proc = subprocess.Popen([str(self.binary), "-c", str(self.ini)], stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr, env=self.drover_env(),
                                     start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=15):
        def ready():
            if not self.alive():
                raise HarnessError("drover exited with %s before answering ping\n%s"
                                   % (self.proc.returncode, self.diagnostics()))
            rc, out = self.ctl("ping", timeout=5)
            return rc == 0 and out.strip() == "pong"
        wait_until(ready, timeout, "drover to answer ping", interval=0.05, on_timeout=self.diagnostics)

    def wait_workers(self, n, timeout=15):
        """Waits until n workers are alive and running; returns stats."""
        def ok():
            s = self.stats()
            running = [w for w in s["workers"] if w.get("state") == "running" and w.get("pid")]
            return s if s.get("workers_alive") == n and len(running) == n else None
        return self.wait_until(ok, timeout, "%d running workers" % n)

    def wait_until(self, pred, timeout, what, interval=0.02):
        """wait_until that also fails at once, with the log, when drover died."""
        def checked():
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError("drover exited with %s while waiting for %s\n%s"
                                   % (self.proc.returncode, what, self.diagnostics()))
            return pred()
        return wait_until(checked, timeout, what, interval, on_timeout=self.diagnostics)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError("drover (pid %d) still running %.1fs after it was told to stop\n%s"
                               % (self.proc.pid, timeout, self.diagnostics()))
        return self.exit_code

    def stop(self, timeout=None):
        """TERM, wait with a deadline, then KILL by pid. Returns the exit code (None if killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if timeout is None:
                timeout = int(self.config["supervisor"].get("shutdown_timeout_ms", 3000)) / 1000.0 + 5
            self.descendants()  # remember who is there now, for the leftover check
            try:
                self.signal(signal.SIGTERM)
                self.exit_code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                self.exit_code = None
        else:
            self.exit_code = self.proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.exit_code

    # -- processes

    def descendants(self):
        """Live processes of this instance (drover excluded): env marker or ancestry."""
        found = {}
        pids = all_pids()
        parent = {}
        for pid in pids:
            st = proc_stat(pid)
            if st and st[0] not in ("Z", "X"):
                parent[pid] = st[1]
        root = self.proc.pid if self.proc else None
        for pid in parent:
            if pid == root:
                continue
            ours = proc_environ(pid).get(MARK_VAR) == self.mark
            if not ours and root is not None:
                p, hops = parent.get(pid), 0
                while p and hops < 64:
                    if p == root:
                        ours = True
                        break
                    p, hops = parent.get(p), hops + 1
            if ours:
                found[pid] = proc_cmdline(pid)
        return found

    def kill_leftovers(self, timeout=5):
        """After stop(): waits for descendants to go, kills what stays by pid, returns what had to be killed."""
        try:
            wait_until(lambda: not self.descendants(), timeout, "descendants to exit")
            return {}
        except HarnessError:
            pass
        left = self.descendants()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        wait_until(lambda: not self.descendants(), 5, "killed leftovers to vanish")
        return left

    def worker_pids(self):
        return {w["slot"]: w["pid"] for w in self.stats()["workers"] if w.get("pid")}

    # -- control

    def ctl(self, *args, input=None, timeout=15, env=None):
        """Runs droverctl -c INI -s SOCK ARGS...; returns (rc, stdout). stderr is in self.last_ctl_err."""
        if len(args) == 1:
            args = args[0].split()  # ctl("scale 3") as well as ctl("scale", "3")
        cmd = [str(DROVERCTL), "-c", str(self.ini), "-s", str(self.sock)] + list(args)
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                           env=env if env is not None else self.ctl_env())
        self.last_ctl_err = r.stderr
        return r.returncode, r.stdout

    def stats(self):
        rc, out = self.ctl("stats")
        if rc != 0:
            raise HarnessError("droverctl stats failed (%d): %s %s" % (rc, out, self.last_ctl_err))
        try:
            return json.loads(out)
        except ValueError as e:
            raise HarnessError("droverctl stats printed no JSON (%s): %r" % (e, out[:2000]))

    def raw_command(self, line, timeout=5):
        """Sends one line over the control socket without droverctl; returns the answer."""
        return control_exchange(self.sock, line.encode() + b"\n", timeout).decode(errors="replace")

    def submit(self, jobs, record=True):
        """Submits dicts (with record_dir added) or raw lines via `droverctl submit -`; returns the ids printed."""
        lines = []
        for job in jobs:
            if isinstance(job, dict):
                if record and "record_dir" not in job:
                    job = dict(job, record_dir=str(self.records))
                lines.append(json.dumps(job))
            else:
                lines.append(job)
        rc, out = self.ctl("submit", "-", input="\n".join(lines) + "\n", timeout=60)
        if rc != 0:
            raise HarnessError("droverctl submit failed (%d): %s %s" % (rc, out, self.last_ctl_err))
        return out.split()

    def enqueue_raw(self, name, payload, spool=None):
        """Enqueues like an outside producer (spec section 6): write in tmp/, fsync, rename into incoming/."""
        spool = Path(spool or self.spool)
        tmp = spool / "tmp" / name
        data = payload if isinstance(payload, bytes) else payload.encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, spool / "incoming" / name)
        dfd = os.open(spool / "incoming", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- outcomes on disk

    def spool_files(self, sub, spool=None):
        d = Path(spool or self.spool) / sub
        try:
            return sorted(n for n in os.listdir(d) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def outcomes(self, kind, spool=None):
        """{id: document} of complete/ or failed/ (the file name without .json is the id)."""
        out = {}
        d = Path(spool or self.spool) / kind
        for name in self.spool_files(kind, spool):
            if not name.endswith(".json"):
                continue
            try:
                out[name[:-5]] = json.loads((d / name).read_text())
            except ValueError as e:
                raise HarnessError("%s/%s is not JSON: %s" % (kind, name, e))
            except FileNotFoundError:
                continue
        return out

    def complete(self, spool=None):
        return self.outcomes("complete", spool)

    def failed(self, spool=None):
        return self.outcomes("failed", spool)

    def wait_outcomes(self, ids, timeout, spool=None):
        """Waits until every id has a complete/ or failed/ document; returns (complete, failed)."""
        ids = set(ids)

        def done():
            c, f = self.complete(spool), self.failed(spool)
            return (c, f) if ids <= set(c) | set(f) else None

        def missing():
            c, f = self.complete(spool), self.failed(spool)
            rest = sorted(ids - set(c) - set(f))
            return "missing %d: %s" % (len(rest), rest[:10])
        try:
            return self.wait_until(done, timeout, "outcomes of %d jobs" % len(ids), interval=0.05)
        except HarnessError as e:
            raise HarnessError("%s\n%s" % (missing(), e))

    def wait_queue_empty(self, timeout=5, spool=None):
        """Waits until incoming/ and processing/ are empty (a job leaves processing/ just after its outcome)."""
        self.wait_until(lambda: not self.spool_files("incoming", spool) and not self.spool_files("processing", spool),
                        timeout, "incoming/ and processing/ to be empty")

    def starts(self, job_id=None):
        """Start records the test handler wrote, oldest first."""
        return read_records(self.records, "start", "id", job_id)

    def ends(self, job_id=None):
        return read_records(self.records, "end", "id", job_id)

    # -- diagnostics

    def log_text(self):
        parts = []
        for p in (self.log_file, self.stderr_file):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def sanitizer_reports(self):
        text = ""
        for p in list(self.tmp.glob("drover.log*")) + [self.stderr_file]:
            try:
                text += p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return [line for line in text.splitlines() if any(s in line for s in SANITIZER_PATTERNS)]

    def diagnostics(self, lines=40):
        tail = self.log_text().splitlines()[-lines:]
        return "---- drover log/stderr (last %d lines) ----\n%s" % (len(tail), "\n".join(tail))


def read_records(directory, kind, key="id", value=None):
    """The records (*.KIND.json) a test handler wrote in directory, oldest first; with a value,
    only those whose key has it."""
    recs = []
    for p in Path(directory).glob("*.%s.json" % kind):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if value is None or rec.get(key) == value:
            recs.append(rec)
    return sorted(recs, key=lambda r: r["t"])


def read_json(path):
    with open(path) as f:
        return json.load(f)


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.ESRCH
    return not proc_alive(pid)


PEER = ("import socket,sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "try: s.sendall(sys.argv[2].encode() + b'\\n')\n"
        "except OSError: pass\n"
        "sys.stdout.write(s.recv(100000).decode())\n")


def ask_as(d, command, uid, gid, groups):
    """One control-socket command from a process with exactly these credentials (set at run time, as a container runtime does)."""
    out = subprocess.run([sys.executable, "-c", PEER, str(d.sock), command], capture_output=True, text=True,
                         user=uid, group=gid, extra_groups=groups, timeout=10)
    return out.stdout
