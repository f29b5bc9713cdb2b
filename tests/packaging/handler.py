#!/usr/bin/python3
"""
handler: the job handler of the packaging tests. drover runs it as
`/usr/bin/python3 handler.py` with the job JSON on stdin; the job's fields
say what to do:

  sleep_ms   take this long (a job that is still running when a test stops drover)
  env_dump   write the handler's environment as JSON to this path

It prints {"ok": true, "pid": N} and exits 0.

`handler.py --orphan-of PATH LIFETIME_MS` is not a handler: it forks a child and
exits, so the child is orphaned (in a container: a process started by `docker
exec` whose parent went away); once re-parented the child writes {"pid", "ppid"}
(as seen in its own PID namespace) to PATH, lives LIFETIME_MS and exits.
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
    """Forks a child that outlives us and returns; the child never returns."""
    parent = os.getpid()
    if os.fork() != 0:
        return 0
    try:
        os.setsid()
        detach_to_devnull()
        run_orphan(path, lifetime_ms, parent)
    finally:
        os._exit(0)


def run_orphan(path, lifetime_ms, parent):
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    atomic_write(path, json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))
    time.sleep(lifetime_ms / 1000.0)
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--orphan-of":
        return spawn_orphan(sys.argv[2], int(sys.argv[3]))
    job = json.loads(sys.stdin.read())
    if job.get("env_dump"):
        atomic_write(job["env_dump"], json.dumps(dict(os.environ)))
    if job.get("sleep_ms"):
        time.sleep(int(job["sleep_ms"]) / 1000.0)
    sys.stdout.write(json.dumps({"ok": True, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
