#!/usr/bin/python3
"""
warmhandler: a persistent handler for the integration tests that speaks the
raw frame protocol (README "Persistent handlers") with nothing but the
standard library, so the tests do not depend on the handler libraries.

Each job runs in its own thread. Set-up comes from the environment:
  WARM_SETUP_MS    sleep this long before saying ready
  WARM_TAG         put into every result (tells two handler configurations apart)
  POOLTEST_RECORD_DIR  where records go (see below)

Job fields:
  sleep_ms         work this long (in small steps, watching for a cancel)
  hold_file        with hold_attempt (default 1): on that attempt, work until this path exists
  ignore_cancel    never answer a cancel
  crash_once       path: if it does not exist, create it and exit the process (status 3) mid-job
  garbage_once     path: if it does not exist, create it and write a line that is not JSON
  error            answer an error frame with this text; retry from "retry" (default true)
  error_times      with error: only the first N attempts (counted by attempt number) fail
  grow_mb          keep this many MB allocated for the life of the process
  grow_once        path: with grow_mb, only if it does not exist (creates it): the first attempt grows
  escapee          path: fork a child that leaves the process group (setsid), writes its pid there and
                   sleeps as /bin/sleep with an empty environment (no DROVER_ATTEMPT_TOKEN)
  progress         list of numbers sent as progress frames first
  stderr           write this line to stderr
  grandchild       path: fork a child in the process group that writes its pid there and sleeps
  quick_after_first  on attempts after the first, answer a result at once (ignoring the rest)
  result_bytes     the result is a string of this many 'x'
  stray_once       path: if it does not exist, create it and send a progress frame for an id nobody sent
  double_answer    answer the job twice

Records in the record directory: proc__<pid>.json (started, ready, exited
times), <id>__<attempt>__<pid>.start.json / .end.json, and
<id>__<attempt>.cancel.json when a cancel arrives.
"""

import json
import os
import sys
import threading
import time

RECORD_DIR = os.environ.get("POOLTEST_RECORD_DIR")
PID = os.getpid()
TAG = os.environ.get("WARM_TAG", "")
out_lock = threading.Lock()
jobs = {}          # id -> threading.Event (cancel)
jobs_lock = threading.Lock()
threads = []
ballast = []
proc_record = {"pid": PID, "started": time.time(), "argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items()
                                                           if k.startswith("DROVER_")}}


def record(name, data):
    if not RECORD_DIR:
        return
    path = os.path.join(RECORD_DIR, name)
    tmp = "%s.tmp.%d.%d" % (path, PID, threading.get_ident())
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def send(frame):
    send_raw(json.dumps(frame) + "\n")


def send_raw(text):
    with out_lock:
        sys.stdout.buffer.write(text.encode())
        sys.stdout.buffer.flush()


def once(path):
    """True the first time for path (creates it)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def work(job, attempt, cancel):
    """Returns False when cancelled."""
    deadline = time.time() + job.get("sleep_ms", 0) / 1000.0
    hold = job.get("hold_file") if attempt == job.get("hold_attempt", 1) else None
    hold_until = time.time() + 60
    while True:
        if cancel.is_set() and not job.get("ignore_cancel"):
            return False
        if hold:
            if os.path.exists(hold) or time.time() > hold_until:
                hold = None
        elif time.time() >= deadline:
            return True
        time.sleep(0.01)


def run_job(frame, cancel):
    job, jid, attempt = frame["job"], frame["id"], frame["attempt"]
    base = "%s__%d__%d" % (jid, attempt, PID)
    record(base + ".start.json", {"id": jid, "attempt": attempt, "pid": PID, "t": time.time(),
                                  "deadline_ms": frame["deadline_ms"], "timeout_ms": frame["timeout_ms"]})
    if job.get("quick_after_first") and attempt > 1:
        with jobs_lock:
            jobs.pop(jid, None)
        send({"type": "result", "id": jid, "result": {"pid": PID, "id": jid, "attempt": attempt, "tag": TAG}})
        return
    if job.get("stderr"):
        sys.stderr.write(job["stderr"] + "\n")
        sys.stderr.flush()
    if job.get("grow_mb") and (not job.get("grow_once") or once(job["grow_once"])):
        ballast.append(bytearray(os.urandom(16)) * (job["grow_mb"] * 65536))
    if job.get("escapee"):
        child = os.fork()
        if child == 0:
            os.setsid()
            with open(job["escapee"], "w") as f:
                f.write(str(os.getpid()))
            os.execve("/bin/sleep", ["sleep", "60"], {})
    if job.get("grandchild"):
        child = os.fork()
        if child == 0:
            with open(job["grandchild"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
    for p in job.get("progress", []):
        send({"type": "progress", "id": jid, "progress": p, "message": "step %s" % p})
    if job.get("crash_once") and once(job["crash_once"]):
        time.sleep(0.2)
        os._exit(3)
    if job.get("stray_once") and once(job["stray_once"]):
        send({"type": "progress", "id": "no-such-job", "progress": 0.5})
        return
    if job.get("garbage_once") and once(job["garbage_once"]):
        send_raw("this is not a frame\n")
        return
    finished = work(job, attempt, cancel)
    record(base + ".end.json", {"id": jid, "attempt": attempt, "pid": PID, "t": time.time(), "finished": finished})
    with jobs_lock:
        jobs.pop(jid, None)
    if not finished:
        send({"type": "cancelled", "id": jid})
    elif "error" in job and attempt <= job.get("error_times", 1000):
        send({"type": "error", "id": jid, "error": job["error"], "retry": job.get("retry", True)})
    elif job.get("result_bytes"):
        send({"type": "result", "id": jid, "result": "x" * job["result_bytes"]})
    else:
        send({"type": "result", "id": jid, "result": {"pid": PID, "id": jid, "attempt": attempt, "tag": TAG}})
        if job.get("double_answer"):
            send({"type": "result", "id": jid, "result": "again"})


def on_cancel(frame):
    record("%s__%d.cancel.json" % (frame["id"], 0), {"id": frame["id"], "reason": frame["reason"], "pid": PID,
                                                     "t": time.time()})
    with jobs_lock:
        ev = jobs.get(frame["id"])
    if ev is not None:
        ev.set()


def main():
    time.sleep(int(os.environ.get("WARM_SETUP_MS", "0")) / 1000.0)
    proc_record["ready"] = time.time()
    record("proc__%d.json" % PID, proc_record)
    send({"type": "ready"})
    for line in sys.stdin.buffer:
        frame = json.loads(line)
        if frame["type"] == "job":
            ev = threading.Event()
            with jobs_lock:
                jobs[frame["id"]] = ev
            t = threading.Thread(target=run_job, args=(frame, ev), daemon=True)
            t.start()
            threads.append(t)
        elif frame["type"] == "cancel":
            on_cancel(frame)
    for t in threads:
        t.join()
    proc_record["exited"] = time.time()
    record("proc__%d.json" % PID, proc_record)
    sys.exit(0)


if __name__ == "__main__":
    main()
