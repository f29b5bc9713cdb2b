#!/usr/bin/python3
"""
testhandler: the one configurable handler of the integration tests.

drover runs it as `/usr/bin/python3 testhandler.py` with the job JSON on
stdin; the job's fields say how to behave, so one handler covers every
scenario (a test reads what it did from the files it leaves behind):

  sleep_ms         sleep this long before finishing
  hold_file        wait until this path exists (bounded by hold_max_ms, default 30000)
  exit             exit code (default 0)
  fail_times       fail the first N attempts (counted in state_dir/<id>.count,
                   independently of drover's own attempt numbering), exit fail_exit (default 1)
  ignore_term      ignore SIGTERM
  grandchild       path: fork a child in the same process group that writes its pid
                   there and sleeps grandchild_ms (default 30000); with
                   grandchild_ignore_term it ignores SIGTERM too. The child keeps the
                   inherited stdout/stderr open, so EOF on the pipes never comes early.
                   With grandchild_setsid the child leaves the job's process group
                   (setsid), escaping a kill of the group.
  big_output       write this many bytes of 'x' to stdout (and nothing else)
  stdout           write this text to stdout verbatim (instead of the result JSON)
  result           write this value as JSON to stdout
  stderr           write this text to stderr
  stderr_bytes     write this many bytes to stderr first (filler before `stderr`)
  progress         list of steps written as lines to fd 3 (numbers or objects)
  progress_gap_ms  pause between progress steps (default 0)
  concurrency_dir  lock-protected counter (fcntl.flock): +1 at start, max recorded, -1 at end
  env_dump         path ("{attempt}" expands): the environment as a JSON object
  record_dir       where to write a start record (also from env POOLTEST_RECORD_DIR)
  limits_dump      path: {"limits": text of /proc/self/limits, "nice": os.nice(0)} as JSON
  cgroup_dump      path: the text of /proc/self/cgroup
  burn_cpu         spin on the CPU until killed (rlimit_cpu tests)
  touch_mb         allocate and touch this many MiB, 1 MiB at a time (memory_max tests); then carry on
  pid_file         path: the handler's pid, written first
  escapee          path: fork a child that leaves the process group (setsid) and execs
                   /bin/sleep with an empty environment (no DROVER_ATTEMPT_TOKEN); its pid
                   is written there. Only a cgroup can find it.
  fork_bomb        path: fork children that sleep until forking fails or fork_cap (default 64)
                   are running; writes {"forked": N, "error": "..."} there, then exits 0 if
                   forking failed, else 1

Every run writes a start record `<id>__<pid>.start.json` (id, attempt, pid,
pgid, ppid, time) and, when it gets that far, `<id>__<pid>.end.json`; a message
that is not a JSON object is recorded under the id "?invalid" so that a test
can prove the handler never saw one.
"""

import fcntl
import json
import os
import signal
import sys
import time


def atomic_write(path, data):
    # No fsync: readers are tests on the same running kernel, and fsync costs jobs/s.
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(data)
    os.rename(tmp, path)


def safe_name(job_id):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)[:100] or "_"


def record(record_dir, job_id, kind, extra=None):
    if not record_dir:
        return
    doc = {
        "id": job_id,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "ppid": os.getppid(),
        "attempt": os.environ.get("DROVER_ATTEMPT"),
        "worker": os.environ.get("DROVER_WORKER"),
        "t": time.time(),
        "deadline_ms": os.environ.get("DROVER_DEADLINE_MS"),
    }
    if extra:
        doc.update(extra)
    name = "%s__%d.%s.json" % (safe_name(job_id), os.getpid(), kind)
    atomic_write(os.path.join(record_dir, name), json.dumps(doc))


class Counter:
    """A counter file shared by every handler of a test, under flock."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "counter.json")
        self.lock_path = os.path.join(directory, "counter.lock")

    def update(self, delta):
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = {"current": 0, "max": 0, "starts": 0, "ends": 0}
            state["current"] += delta
            state["max"] = max(state["max"], state["current"])
            state["starts" if delta > 0 else "ends"] += 1
            atomic_write(self.path, json.dumps(state))
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def count_attempt(state_dir, job_id):
    """Returns how many times this job has started, this run included."""
    path = os.path.join(state_dir, safe_name(job_id) + ".count")
    with open(path + ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path) as f:
                n = int(f.read() or "0")
        except (OSError, ValueError):
            n = 0
        n += 1
        atomic_write(path, str(n))
        return n


def write_progress(steps, gap_ms):
    try:
        os.fstat(3)
    except OSError:
        return
    for step in steps:
        line = (json.dumps(step) if isinstance(step, dict) else str(step)) + "\n"
        os.write(3, line.encode())
        if gap_ms:
            time.sleep(gap_ms / 1000.0)


def fork_recorded(pid_path, setsid):
    """Forks; in the parent, returns False only once the child has written its pid to pid_path, so
    that a handler that ends at once cannot have its child killed (by drover's end-of-attempt sweep)
    before the test can know its pid. In the child, returns True."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(ready_w)
        os.read(ready_r, 1)  # EOF too: a child that died early must not hang the handler
        os.close(ready_r)
        return False
    os.close(ready_r)
    if setsid:
        os.setsid()
    atomic_write(pid_path, str(os.getpid()))
    os.close(ready_w)
    return True


def spawn_grandchild(pid_path, sleep_ms, ignore_term, setsid=False):
    # The grandchild: same process group (unless setsid), stdout/stderr still inherited. SIGTERM is
    # ignored from before the handshake: drover may signal the group as soon as the handler ends.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if ignore_term else None
    if not fork_recorded(pid_path, setsid):
        if ignore_term:
            signal.signal(signal.SIGTERM, previous)
        return
    deadline = time.monotonic() + sleep_ms / 1000.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(0)


def spawn_escapee(pid_path):
    if not fork_recorded(pid_path, setsid=True):
        return
    os.execve("/bin/sleep", ["sleep", "300"], {})


def touch_memory(mib):
    """Every page written (not calloc'd zeros the kernel may never back), kept until the handler ends."""
    kept = []
    for _ in range(mib):
        kept.append(b"\x01" * (1 << 20))
    return kept


def fork_bomb(path, cap):
    """Forks sleepers until fork fails (pids_max) or cap; the children die with the attempt."""
    forked, error = 0, None
    while forked < cap:
        try:
            pid = os.fork()
        except OSError as e:
            error = str(e)
            break
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        forked += 1
    atomic_write(path, json.dumps({"forked": forked, "error": error}))
    return 0 if error else 1


def burn_cpu():
    x = 0
    while True:
        x += 1


def wait_for_file(path, max_ms):
    deadline = time.monotonic() + max_ms / 1000.0
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.stderr.write("testhandler: hold_file %s never appeared\n" % path)
            sys.exit(75)
        time.sleep(0.02)


def sleep_ms(ms):
    deadline = time.monotonic() + ms / 1000.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def write_stdout(data):
    try:
        view = memoryview(data)
        while view:
            n = os.write(1, view[:65536])
            view = view[n:]
    except BrokenPipeError:
        os._exit(3)


def main():
    raw = sys.stdin.buffer.read()
    env_record_dir = os.environ.get("POOLTEST_RECORD_DIR")
    try:
        job = json.loads(raw)
    except ValueError:
        job = None
    if not isinstance(job, dict):
        record(env_record_dir, "?invalid", "start", {"raw": raw.decode("utf-8", "replace")[:200]})
        sys.stderr.write("testhandler: not a JSON object\n")
        return 66
    if job.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before the start record: a test may rely on the order
    job_id = str(job.get("id", os.environ.get("DROVER_JOB_ID", "?")))
    record_dir = job.get("record_dir") or env_record_dir
    record(record_dir, job_id, "start")
    counter = Counter(job["concurrency_dir"]) if job.get("concurrency_dir") else None
    if counter:
        counter.update(+1)
    try:
        return run(job, job_id, record_dir)
    finally:
        if counter:
            counter.update(-1)


def run(job, job_id, record_dir):
    attempt = os.environ.get("DROVER_ATTEMPT", "0")
    if job.get("env_dump"):
        atomic_write(job["env_dump"].replace("{attempt}", attempt), json.dumps(dict(os.environ)))
    if job.get("limits_dump"):
        with open("/proc/self/limits") as f:
            atomic_write(job["limits_dump"], json.dumps({"limits": f.read(), "nice": os.nice(0)}))
    if job.get("cgroup_dump"):
        with open("/proc/self/cgroup") as f:
            atomic_write(job["cgroup_dump"], f.read())
    if job.get("escapee"):
        spawn_escapee(job["escapee"])
    if job.get("pid_file"):
        atomic_write(job["pid_file"], str(os.getpid()))
    if job.get("touch_mb"):
        touch_memory(int(job["touch_mb"]))
    if job.get("fork_bomb"):
        return fork_bomb(job["fork_bomb"], int(job.get("fork_cap", 64)))
    if job.get("burn_cpu"):
        burn_cpu()
    if job.get("grandchild"):
        spawn_grandchild(job["grandchild"], job.get("grandchild_ms", 30000), job.get("grandchild_ignore_term"),
                         job.get("grandchild_setsid", False))
    if job.get("progress"):
        write_progress(job["progress"], job.get("progress_gap_ms", 0))
    if job.get("hold_file"):
        wait_for_file(job["hold_file"], job.get("hold_max_ms", 30000))
    if job.get("sleep_ms"):
        sleep_ms(job["sleep_ms"])
    if job.get("stderr_bytes"):
        sys.stderr.write("e" * int(job["stderr_bytes"]))
    if job.get("stderr"):
        sys.stderr.write(job["stderr"])
    sys.stderr.flush()

    if job.get("fail_times") and job.get("state_dir"):
        n = count_attempt(job["state_dir"], job_id)
        if n <= int(job["fail_times"]):
            sys.stderr.write("testhandler: planned failure %d of %d\n" % (n, job["fail_times"]))
            record(record_dir, job_id, "end", {"exit": job.get("fail_exit", 1)})
            return int(job.get("fail_exit", 1))

    if "big_output" in job:
        write_stdout(b"x" * int(job["big_output"]))
    elif "stdout" in job:
        write_stdout(job["stdout"].encode())
    elif "result" in job:
        write_stdout(json.dumps(job["result"]).encode())
    else:
        result = {"ok": True, "id": job_id, "attempt": attempt, "worker": os.environ.get("DROVER_WORKER")}
        write_stdout(json.dumps(result).encode())
    code = int(job.get("exit", 0))
    record(record_dir, job_id, "end", {"exit": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
