#!/usr/bin/python3
"""
orphaner: the handler of the process-isolation tests (test_isolation.py).

The job's fields say what to do; what it did is left as JSON records in
record_dir, one per start and per clean end: `<tag>__<pid>.start.json` and
`<tag>__<pid>.end.json` with pid, pgid, ppid, attempt and attempt token.

  tag          the name in records (default: the job's id, cut to 60 characters)
  record_dir   where records go (required for records)
  helper       path: start a helper that leaves the job's process group (setsid)
               and is orphaned at once (double fork), so it becomes a child of
               the worker while the attempt still runs; it writes its pid to the
               path and sleeps helper_ms (default 60000); with helper_detached it
               re-executes itself without DROVER_ATTEMPT_TOKEN first (a daemon
               that detached from the job for good)
  late_escapee path: start a keeper without DROVER_ATTEMPT_TOKEN (so no sweep
               kills it) that leaves the job's group and is orphaned to the
               worker; its child, the escapee, has the token, a session of its
               own, writes its pid to path and sleeps 60 s. The keeper exits
               50 ms after the worker is gone, so the escapee is orphaned only
               after the worker's last sweep
  sleep_ms     sleep this long before exiting 0
  hold_file    wait until this path exists (at most 30 s), then exit 0
  kill_worker  kill -9 the parent (the worker), then sleep until killed
"""

import json
import os
import signal
import sys
import time


def atomic_write(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(data)
    os.rename(tmp, path)


def record(job, kind):
    record_dir = job.get("record_dir")
    if not record_dir:
        return
    tag = job.get("tag") or str(job.get("id", "?"))[:60]
    doc = {
        "tag": tag,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "ppid": os.getppid(),
        "attempt": os.environ.get("DROVER_ATTEMPT"),
        "token": os.environ.get("DROVER_ATTEMPT_TOKEN"),
        "t": time.time(),
    }
    atomic_write(os.path.join(record_dir, "%s__%d.%s.json" % (tag, os.getpid(), kind)), json.dumps(doc))


def start_helper(path, sleep_ms, detached):
    """Double fork: the middle process exits at once, so the helper is orphaned while we run on."""
    middle = os.fork()
    if middle != 0:
        os.waitpid(middle, 0)
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    if detached:
        env = {k: v for k, v in os.environ.items() if k != "DROVER_ATTEMPT_TOKEN"}
        try:
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--helper", path, str(sleep_ms)],
                      env)
        finally:
            os._exit(1)
    run_helper(path, sleep_ms)


def run_helper(path, sleep_ms):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    atomic_write(path, str(os.getpid()))
    deadline = time.monotonic() + sleep_ms / 1000.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(0)


def start_late_escapee(path):
    """Double fork into a token-less keeper (re-executed without the token) whose child has it."""
    middle = os.fork()
    if middle != 0:
        os.waitpid(middle, 0)
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    env = {k: v for k, v in os.environ.items() if k != "DROVER_ATTEMPT_TOKEN"}
    env["ORPHANER_TOKEN"] = os.environ.get("DROVER_ATTEMPT_TOKEN", "")
    env["ORPHANER_WORKER"] = str(WORKER_PID)
    try:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--keeper", path], env)
    finally:
        os._exit(1)


def run_keeper(path):
    """The token-less keeper: starts the escapee, then outlives the worker by 50 ms."""
    worker = int(os.environ.pop("ORPHANER_WORKER"))
    token = os.environ.pop("ORPHANER_TOKEN")
    if os.fork() == 0:
        os.setsid()  # out of the keeper's group too: killing the keeper's group would not reach it
        env = dict(os.environ, DROVER_ATTEMPT_TOKEN=token)
        try:
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--helper", path, "60000"], env)
        finally:
            os._exit(1)
    deadline = time.monotonic() + 60
    while os.getppid() == worker and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    os._exit(0)


WORKER_PID = os.getppid()  # the handler's parent: the worker (exec mode)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--helper":
        return run_helper(sys.argv[2], int(sys.argv[3]))
    if len(sys.argv) == 3 and sys.argv[1] == "--keeper":
        return run_keeper(sys.argv[2])
    job = json.loads(sys.stdin.buffer.read())
    record(job, "start")
    if job.get("kill_worker"):
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
        return 1
    if job.get("helper"):
        start_helper(job["helper"], job.get("helper_ms", 60000), job.get("helper_detached", False))
    if job.get("late_escapee"):
        start_late_escapee(job["late_escapee"])
    if job.get("hold_file"):
        deadline = time.monotonic() + 30
        while not os.path.exists(job["hold_file"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    if job.get("sleep_ms"):
        time.sleep(job["sleep_ms"] / 1000.0)
    record(job, "end")
    sys.stdout.write(json.dumps({"pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
