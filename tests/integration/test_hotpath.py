"""
test_hotpath: the guard of drover's per-job hot path (issue 7, item 4).

A 500-job batch of /bin/cat runs through drover on the spool with the whole
drover started under `strace -f -y` (only the system calls below are stopped
for: --seccomp-bpf). The test counts, per job, what drover's own processes
(supervisor, workers, and a handler's child before its exec) do, and fails
when the hot path grows past the thresholds below. Counts, never times: the
result does not depend on the machine's speed or load. What the handler does
after its exec is its own business and is not counted.
"""

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import harness
from conftest import cleanup

JOBS = 500

# Spool durability needs the outcome file fsynced and its rename made durable; outcomes that finish
# together can share one fsync of complete/, and a claim rename needs none (a lost claim only runs the
# job again, which at-least-once allows). So on average one directory fsync per job at most.
MAX_DIR_FSYNCS_PER_JOB = 1.0
# Reading /proc/PID/environ of other processes (the escaped-process sweep) costs what the host runs,
# not what drover runs: thousands of opens per job on a busy host. None at all on the hot path.
MAX_ENVIRON_OPENS = 0
# At most one look under /proc per job (e.g. one per-attempt file of the job's own process), never a
# scan of /proc, which is one open per process on the host.
MAX_PROC_OPENS_PER_JOB = 1.0
# A fork (or a clone without CLONE_VM) copies the worker's page tables: 8 threads and 10 MiB with
# Kafka. Handlers are started sharing the worker's memory (posix_spawn, clone(CLONE_VM|CLONE_VFORK)).
# Only the supervisor forks, once per worker start; a worker forks nothing.
MAX_WORKER_FULL_FORKS_PER_JOB = 0.0

TRACED = "fsync,fdatasync,syncfs,open,openat,openat2,creat,fork,vfork,clone,clone3,execve,execveat"
STRACE = shutil.which("strace") or "/usr/bin/strace"
HANDLER = "/bin/cat"

# "1234 openat(AT_FDCWD</x>, "/proc/1/environ", O_RDONLY <unfinished ...>" or "1234 <... openat resumed>) = 3"
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
FD_PATH = re.compile(r"^\s*-?\d+<(.*?)>")
EXITED = re.compile(r"^(\d+)\s+\+\+\+ (?:exited|killed)")


class TracedDrover(harness.Drover):
    """drover started under strace -f; signals go to drover itself (strace blocks them with -o)."""

    def start(self, wait=True, timeout=60):
        self.trace = self.tmp / "strace.out"
        self._stderr = open(self.stderr_file, "ab")
        argv = [STRACE, "-f", "--seccomp-bpf", "-y", "-q", "-o", str(self.trace), "-e", "trace=" + TRACED,
                str(harness.DROVER), "-c", str(self.ini)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
                                     env=self.drover_env(), start_new_session=True)
        self.wait_ready(timeout)
        self.drover_pid = self.stats()["pid"]
        return self

    def signal(self, sig):
        os.kill(self.drover_pid, sig)


@pytest.fixture
def traced(workdir):
    made = []

    def make(config):
        d = TracedDrover(workdir, config=config, name="traced")
        made.append(d)
        return d.start()
    yield make
    problems = []
    for d in made:
        problems.extend(cleanup(d))
    assert not problems, "\n".join(problems)


def open_path(args):
    """The path an open/openat call names, joined to its directory fd's path (-y) when relative."""
    if args.startswith('"'):  # open("path", ...)
        return args[1:args.index('"', 1)]
    dirfd, _, rest = args.partition(", ")
    name = rest[1:rest.index('"', 1)] if rest.startswith('"') else ""
    if name.startswith("/"):
        return name
    m = re.match(r"^-?\w+<(.*?)>", dirfd)
    return (m.group(1) + "/" + name) if m else name


def count_trace(path, drover_pid):
    """Per-category counts of drover's own processes' calls (a handler's calls after its exec excluded)."""
    counts = Counter()
    handlers = set()          # pids that became a handler (execve succeeded)
    pending_exec = set()      # pids with an execve in flight
    for line in Path(path).read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            gone = EXITED.match(line)
            if gone:  # the pid may be reused by a process of drover's
                handlers.discard(int(gone.group(1)))
            continue
        pid = int(m.group(1))
        if m.group(2):  # a resumed call: only its result matters (execve, clone)
            call, args = m.group(2), m.group(3)
        else:
            call, args = m.group(4), m.group(5)
        result = RESULT.search(args)
        if call in ("execve", "execveat"):
            if m.group(4):
                pending_exec.add(pid)
            if result and pid in pending_exec:
                pending_exec.discard(pid)
                if result.group(1) == "0" and pid != drover_pid:
                    handlers.add(pid)
                    counts["handler execs"] += 1
            continue
        if pid in handlers:
            continue
        if call in ("clone", "clone3", "fork", "vfork"):
            if not m.group(4):
                continue
            full = call == "fork" or (call in ("clone", "clone3") and "CLONE_VM" not in args)
            if full:
                counts["full forks, supervisor" if pid == drover_pid else "full forks, workers"] += 1
            continue
        if not m.group(4):
            continue
        if call in ("fsync", "fdatasync", "syncfs"):
            fd = FD_PATH.match(args)
            target = fd.group(1) if fd else ""
            # syncfs flushes the whole file system: at least as costly as a directory fsync.
            is_dir = call == "syncfs" or os.path.isdir(target)
            counts["directory fsyncs" if is_dir else "file fsyncs"] += 1
        elif call in ("open", "openat", "openat2", "creat"):
            target = open_path(args)
            if target.startswith("/proc/") or target == "/proc":
                counts["opens under /proc"] += 1
                if target.endswith("/environ"):
                    counts["opens of /proc/*/environ"] += 1
    return counts


def test_hot_path_system_calls_per_job(traced, figures):
    if not os.access(STRACE, os.X_OK):
        pytest.fail("strace is missing (make deps installs it)")
    d = traced({"supervisor": {"workers": 2, "log_level": "warn"},
                "jobs": {"handler": HANDLER, "max_concurrent": 4, "env.POOLTEST_RECORD_DIR": None}})
    d.wait_workers(2, timeout=30)
    ids = ["hot-%04d" % i for i in range(JOBS)]
    lines = "".join('{"id":"%s","prompt":"%s"}\n' % (i, "x" * 150) for i in ids)
    rc, out = d.ctl("submit", "-", input=lines, timeout=120)
    assert rc == 0, (out, d.last_ctl_err)
    complete, failed = d.wait_outcomes(ids, timeout=300)
    assert not failed and len(complete) == JOBS, "failed: %s" % sorted(failed)[:5]
    d.wait_queue_empty(timeout=30)
    drover_pid = d.drover_pid
    assert d.stop(timeout=60) == 0, d.diagnostics()

    counts = count_trace(d.trace, drover_pid)
    # The trace must have seen the work, or every count below would pass for nothing.
    assert counts["handler execs"] >= JOBS, counts
    assert counts["file fsyncs"] >= JOBS, "outcome fsyncs not seen, so fd paths were not parsed: %s" % counts
    categories = ("directory fsyncs", "file fsyncs", "opens under /proc", "opens of /proc/*/environ",
                  "full forks, supervisor", "full forks, workers", "handler execs")
    per_job = {k: counts[k] / JOBS for k in categories}
    for k in categories:
        figures("hot path: %s per job" % k, per_job[k])
    report = ", ".join("%s %.2f/job (%d)" % (k, per_job[k], counts[k]) for k in categories)

    problems = []
    if per_job["directory fsyncs"] > MAX_DIR_FSYNCS_PER_JOB:
        problems.append("directory fsyncs %.2f/job > %.2f" % (per_job["directory fsyncs"], MAX_DIR_FSYNCS_PER_JOB))
    if counts["opens of /proc/*/environ"] > MAX_ENVIRON_OPENS:
        problems.append("%d opens of /proc/*/environ > %d" % (counts["opens of /proc/*/environ"], MAX_ENVIRON_OPENS))
    if per_job["opens under /proc"] > MAX_PROC_OPENS_PER_JOB:
        problems.append("opens under /proc %.2f/job > %.2f" % (per_job["opens under /proc"], MAX_PROC_OPENS_PER_JOB))
    if per_job["full forks, workers"] > MAX_WORKER_FULL_FORKS_PER_JOB:
        problems.append("forks/clones without CLONE_VM in workers %.2f/job > %.2f"
                        % (per_job["full forks, workers"], MAX_WORKER_FULL_FORKS_PER_JOB))
    assert not problems, "hot path grew: %s\n(all counts: %s)" % ("; ".join(problems), report)


def test_count_trace_tells_drover_from_its_handlers(workdir):
    """The counting itself, on a hand-written trace: what is drover's, what is a handler's, what is a fork."""
    a_dir, a_file = workdir / "complete", workdir / "job.json"
    a_dir.mkdir()
    a_file.write_text("{}")
    trace = workdir / "strace.out"
    trace.write_text("\n".join([
        '100 execve("/build/drover", ["drover", "-c", "x.ini"], 0x7ffd /* 20 vars */) = 0',
        # the supervisor forks a worker
        '100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 101',
        # the worker spawns a handler sharing its memory; the child looks under /proc before its exec
        '101 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88 <unfinished ...>',
        '102 openat(AT_FDCWD</w>, "/proc/self/fd", O_RDONLY|O_DIRECTORY) = 3</proc/102/fd>',
        '102 execve("/bin/cat", ["/bin/cat"], 0x7ffd /* 20 vars */ <unfinished ...>',
        '101 <... clone3 resumed>) = 102',
        '102 <... execve resumed>) = 0',
        # the handler's own calls are not drover's
        '102 openat(AT_FDCWD</w>, "/proc/meminfo", O_RDONLY) = 3</proc/meminfo>',
        '102 fsync(1<%s>) = 0' % a_dir,
        # a thread is no fork
        '101 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM) = 103',
        # the sweep reading an environment through a directory fd
        '101 openat(5</proc>, "7/environ", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)',
        '101 fsync(7<%s> <unfinished ...>' % a_dir,
        '101 <... fsync resumed>) = 0',
        '101 fdatasync(8<%s>) = 0' % a_file,
        '102 +++ exited with 0 +++',
        # a worker fork whose child gets the handler's old pid: that child is drover's again
        '101 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 102',
        '102 openat(AT_FDCWD</w>, "/proc/1/stat", O_RDONLY) = 3</proc/1/stat>',
    ]) + "\n")
    counts = count_trace(trace, 100)
    assert counts == {"full forks, supervisor": 1, "full forks, workers": 1, "handler execs": 1,
                      "opens under /proc": 3, "opens of /proc/*/environ": 1,
                      "directory fsyncs": 1, "file fsyncs": 1}, counts


ECHO_PERSISTENT = r'''
import json, sys
sys.stdout.write('{"type":"ready"}\n')
sys.stdout.flush()
for line in sys.stdin:
    frame = json.loads(line)
    if frame["type"] == "job":
        sys.stdout.write(json.dumps({"type": "result", "id": frame["id"], "result": frame["job"]}) + "\n")
        sys.stdout.flush()
'''


def test_persistent_hot_path_has_no_exec_per_job(traced, workdir, figures):
    """handler_mode = persistent: one exec per handler process, none per job; the rest of the guard holds."""
    if not os.access(STRACE, os.X_OK):
        pytest.fail("strace is missing (make deps installs it)")
    script = Path(workdir) / "echo_persistent.py"
    script.write_text(ECHO_PERSISTENT)
    d = traced({"supervisor": {"workers": 2, "log_level": "warn"},
                "jobs": {"handler": "%s %s" % (harness.PYTHON, script), "max_concurrent": 4,
                         "handler_mode": "persistent", "handler_concurrency": 4, "env.POOLTEST_RECORD_DIR": None}})
    d.wait_workers(2, timeout=30)
    ids = ["warm-%04d" % i for i in range(JOBS)]
    lines = "".join('{"id":"%s","prompt":"%s"}\n' % (i, "x" * 150) for i in ids)
    rc, out = d.ctl("submit", "-", input=lines, timeout=120)
    assert rc == 0, (out, d.last_ctl_err)
    complete, failed = d.wait_outcomes(ids, timeout=300)
    assert not failed and len(complete) == JOBS, "failed: %s" % sorted(failed)[:5]
    drover_pid = d.drover_pid
    assert d.stop(timeout=60) == 0, d.diagnostics()

    counts = count_trace(d.trace, drover_pid)
    assert counts["file fsyncs"] >= JOBS, "outcome fsyncs not seen, so fd paths were not parsed: %s" % counts
    figures("hot path, persistent: handler execs per job", counts["handler execs"] / JOBS)
    assert 2 <= counts["handler execs"] <= 4, "one exec per handler process (2 workers x 1), not per job: %s" % counts
    assert counts["full forks, workers"] == 0, counts
    assert counts["opens of /proc/*/environ"] == 0, counts
    assert counts["directory fsyncs"] / JOBS <= MAX_DIR_FSYNCS_PER_JOB, counts
    assert counts["opens under /proc"] / JOBS <= MAX_PROC_OPENS_PER_JOB, counts
