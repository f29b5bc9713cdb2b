#!/usr/bin/python3
"""bench: drover's throughput and restart figures (`make bench`, not part of `make test`).

1. Throughput: BENCH_JOBS (default 1000) jobs through the spool pool (3 workers x
   max_concurrent 4) with a trivial handler (/bin/cat: the job comes back as the
   result). Timed from the start of `droverctl submit` until every job has its
   outcome file in complete/; the durable enqueue alone is timed too.
2. Restart: kill -9 of a worker, until `stats` shows a new pid in that slot in
   state running, once per slot (a slot killed again within 10 s counts as
   crash-looping and backs off longer). restart_delay_ms (100, with +-20%
   jitter) is part of the figure.

It starts its own drover on a temporary directory and kills only that
drover's processes, by pid. DROVER_BUILD names the build tree (default build/).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("DROVER_BUILD") or os.path.join(ROOT, "build")
JOBS = int(os.environ.get("BENCH_JOBS", "1000"))
WORKERS = 3
MAX_CONCURRENT = 4
RESTART_DELAY_MS = 100
HANDLER = "/bin/cat"

CONFIG = """\
[supervisor]
workers = {workers}
control_socket = {dir}/drover.sock
pid_file = {dir}/drover.pid
log_file = {dir}/drover.log
log_level = warn
shutdown_timeout_ms = 5000
restart_delay_ms = {restart_delay}
restart_delay_max_ms = 5000

[jobs]
handler = {handler}
max_concurrent = {max_concurrent}
timeout_ms = 10000
kill_grace_ms = 1000
max_attempts = 3
retry_delay_ms = 100

[queue]
backend = spool

[spool]
dir = {dir}/spool
"""


class BenchError(Exception):
    pass


def wait_until(what, predicate, timeout, interval=0.01):
    """Polls predicate until it returns a true value; BenchError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class Drover:
    """One drover process on a temporary directory, stopped by pid."""

    def __init__(self, workdir):
        self.dir = workdir
        self.sock = os.path.join(workdir, "drover.sock")
        self.spool = os.path.join(workdir, "spool")
        self.config = os.path.join(workdir, "drover.ini")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(dir=workdir, workers=WORKERS, max_concurrent=MAX_CONCURRENT,
                                  restart_delay=RESTART_DELAY_MS, handler=HANDLER))
        self.proc = None

    def start(self):
        out = open(os.path.join(self.dir, "drover.out"), "wb")
        self.proc = subprocess.Popen([os.path.join(BUILD, "drover"), "-c", self.config],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait_until("drover to answer ping", self.ping, 15)

    def command(self, line, timeout=5.0):
        """One control-socket exchange (spec section 7); None when it fails."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.sock)
                s.sendall(line.encode() + b"\n")
                chunks = []
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                return b"".join(chunks).decode()
        except OSError:
            return None

    def ping(self):
        if self.proc.poll() is not None:
            raise BenchError("drover exited with status %d; see %s" % (self.proc.returncode, self.dir))
        answer = self.command("ping")
        return answer is not None and answer.strip() == "pong"

    def stats(self):
        answer = self.command("stats")
        if answer is None:
            return None
        try:
            return json.loads(answer)
        except ValueError:
            return None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def count_files(directory):
    try:
        with os.scandir(directory) as it:
            return sum(1 for entry in it if entry.name.endswith(".json"))
    except FileNotFoundError:
        return 0


def bench_throughput(drover):
    batch = os.path.join(drover.dir, "batch.jsonl")
    with open(batch, "w") as f:
        for i in range(JOBS):
            f.write(json.dumps({"id": "bench-%06d" % i, "prompt": "job %d" % i}) + "\n")
    complete = os.path.join(drover.spool, "complete")
    failed = os.path.join(drover.spool, "failed")
    started = time.monotonic()
    subprocess.run([os.path.join(BUILD, "droverctl"), "-c", drover.config, "-s", drover.sock, "submit", batch],
                   check=True, stdout=subprocess.DEVNULL, timeout=JOBS / 10 + 60)
    submitted = time.monotonic()

    def all_out():
        if drover.proc.poll() is not None:
            raise BenchError("drover exited with status %d" % drover.proc.returncode)
        return count_files(complete) + count_files(failed) >= JOBS

    wait_until("%d outcomes" % JOBS, all_out, JOBS / 10 + 60, interval=0.005)
    finished = time.monotonic()
    done, lost = count_files(complete), count_files(failed)
    if done != JOBS:
        raise BenchError("%d of %d jobs completed, %d failed" % (done, JOBS, lost))
    print("throughput: %d jobs, %d workers x %d, handler %s" % (JOBS, WORKERS, MAX_CONCURRENT, HANDLER))
    print("  durable enqueue (droverctl submit): %.2f s, %.0f jobs/s" %
          (submitted - started, JOBS / (submitted - started)))
    print("  submit to last outcome:             %.2f s, %.0f jobs/s" %
          (finished - started, JOBS / (finished - started)))


def slot_of(stats, slot):
    for worker in stats.get("workers", []):
        if worker.get("slot") == slot:
            return worker
    return None


def bench_restart(drover):
    def worker_in(slot, not_pid, states):
        stats = drover.stats()
        worker = stats and slot_of(stats, slot)
        if worker and worker.get("pid") not in (0, None, not_pid) and worker.get("state") in states:
            return worker
        return None

    respawned, running = [], []
    for slot in range(WORKERS):
        victim = wait_until("slot %d running" % slot, lambda: worker_in(slot, -1, ("running",)), 15)
        os.kill(victim["pid"], signal.SIGKILL)
        started = time.monotonic()
        wait_until("a new worker in slot %d" % slot, lambda: worker_in(slot, victim["pid"], ("starting", "running")),
                   30, interval=0.002)
        respawned.append((time.monotonic() - started) * 1000)
        replacement = wait_until("slot %d running again" % slot, lambda: worker_in(slot, victim["pid"], ("running",)),
                                 30, interval=0.002)
        running.append((time.monotonic() - started) * 1000)
        if replacement.get("restarts", 0) < 1:
            raise BenchError("slot %d: restarts is %r after a kill -9" % (slot, replacement.get("restarts")))
    print("restart after kill -9 of a worker (restart_delay_ms %d, +-20%% jitter), one per slot:" % RESTART_DELAY_MS)
    print("  new pid in stats:   %s ms" % ", ".join("%.0f" % t for t in respawned))
    print("  state running:      %s ms" % ", ".join("%.0f" % t for t in running))


def main():
    for program in ("drover", "droverctl"):
        if not os.access(os.path.join(BUILD, program), os.X_OK):
            print("bench: %s/%s is missing: run make first" % (BUILD, program), file=sys.stderr)
            return 2
    workdir = tempfile.mkdtemp(prefix="drover-bench-")
    drover = Drover(workdir)
    try:
        drover.start()
        bench_throughput(drover)
        bench_restart(drover)
    except (BenchError, subprocess.SubprocessError) as e:
        print("bench: %s (files kept in %s)" % (e, workdir), file=sys.stderr)
        drover.stop()
        return 1
    drover.stop()
    if os.environ.get("BENCH_KEEP"):
        print("files kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
