#!/usr/bin/python3
"""
handler: the job handler of the packaging tests. drover runs it as
`/usr/bin/python3 handler.py` with the job JSON on stdin; the job's fields
say what to do:

  sleep_ms   take this long (a job that is still running when a test stops drover)
  env_dump   write the handler's environment as JSON to this path
  orphan     path: fork a child that leaves the job's session and process group
             (setsid) and re-executes itself without the job's DROVER_JOB_ID mark
             (a daemon that detached from the job for good, which drover cannot
             attribute to the job), outlives the handler, and once re-parented writes
             {"pid", "ppid"} (as seen in its own PID namespace) to this path;
             it then lives orphan_ms (default 500) and exits
  orphan_ms  see orphan

It prints {"ok": true, "pid": N} and exits 0.
"""

import json
import os
import sys
import time


def atomic_write(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def detach_to_devnull():
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2, 3):
        try:
            os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


def spawn_orphan(path, lifetime_ms):
    """Forks a child that outlives this handler; the child never returns."""
    parent = os.getpid()
    if os.fork() != 0:
        return
    try:
        os.setsid()
        detach_to_devnull()
        env = {k: v for k, v in os.environ.items() if k != "DROVER_JOB_ID"}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--orphan", path, str(lifetime_ms),
                                   str(parent)], env)
    finally:
        os._exit(1)


def run_orphan(path, lifetime_ms, parent):
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    atomic_write(path, json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))
    time.sleep(lifetime_ms / 1000.0)
    return 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--orphan":
        return run_orphan(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    job = json.loads(sys.stdin.read())
    if job.get("env_dump"):
        atomic_write(job["env_dump"], json.dumps(dict(os.environ)))
    if job.get("orphan"):
        spawn_orphan(job["orphan"], int(job.get("orphan_ms", 500)))
    if job.get("sleep_ms"):
        time.sleep(int(job["sleep_ms"]) / 1000.0)
    sys.stdout.write(json.dumps({"ok": True, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
