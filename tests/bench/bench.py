#!/usr/bin/python3
"""bench: drover side by side with what it should match (`make bench`; issue 7).

References, run on the same machine in paired rounds (A B A B ...; each ratio
is the median of the per-pair ratios):
  - spawn_ceiling (tests/bench/spawn_ceiling.c): P processes x K jobs in
    flight, each job pipe2 x2 + posix_spawn(/bin/cat) + a 200 B write + read
    to EOF + waitpid, jobs from memory. The ceiling of spawning.
  - peer_pool.py: a Python pool on the same Kafka mock cluster
    (multiprocessing, one confluent_kafka consumer per process, K threads of
    subprocess.run, async commit per job).

Figures, per configuration (P workers x K max_concurrent, handler /bin/cat):
  jobs/s on a backlog; CPU ms per job of the whole process tree (wait4's
  rusage of drover started in the foreground and stopped with TERM: the
  supervisor reaps its workers, workers reap handlers); enqueue -> outcome
  p50/p99 at open-loop rates of 300 and 1000 jobs/s; wake-ups per second of
  each idle process (context switches of all its threads); VmRSS per process
  idle and busy; restart time after kill -9 of a worker. The 1-minute load
  average is recorded beside every figure, and each row shows issue 7's
  target and whether it is met. Speed is never asserted: the exit status
  says only whether every figure was produced.

Persistent handlers (issue 9), on the spool, rows of their own:
  - a Python echo handler (echo_handler.py, lib/python's drover_handler) in
    persistent mode against the same function in exec mode (one python3 per
    job) and against prefork_pool.py (a multiprocessing.Pool of W x K
    processes calling it in-process, fed one job at a time over their pipes),
    at the same workers x max_concurrent, in paired rounds;
  - a Node handler (timer_handler.js) holding 20 jobs in one process, each
    awaiting a 100 ms timer: jobs/s of one worker with max_concurrent 20;
  - one persistent Python handler process over many jobs (100k at full
    scale): its RSS and its worker's after a warm-up and at the end, and
    drover's own CPU per job (supervisor + worker, from /proc, the handler's
    CPU left out);
  - what those figures are made of: the same persistent echo handler (W x K
    processes) with the spool on a tmpfs the bench mounts in its work directory
    (no device behind the fsyncs), and on the Kafka mock cluster (outcomes
    acknowledged by the broker, nothing fsynced), each paired with the prefork
    pool; the tmpfs rounds also beside the same rounds with the spool on the
    build tree's disk, so that the device's share shows in one run. These
    rounds start drover, wait until every handler process is ready, then
    enqueue (spool: rename from a staging directory on the same file system)
    or produce the backlog: jobs/s from the first to the last outcome,
    and drover's CPU per job (supervisor + workers, utime + stime from /proc
    over that window; the handlers' beside it), start-up left out on both sides
    as the prefork pool leaves out its own. The tmpfs needs root (make bench
    runs as root); a mount that fails stops the bench.

Environment: BENCH_SCALE=tiny|full (default full; tiny is what `make test`
runs), BENCH_JOBS (backlog size), BENCH_PAIRS, BENCH_KAFKA=2x4,3x4 (Kafka
configurations; "" skips Kafka), BENCH_WARM=2x4 (the persistent-handler
configuration; "" skips those rows, and the Kafka one also when BENCH_KAFKA is ""), BENCH_RSS_JOBS (jobs of the
RSS run), BENCH_ONLY (a comma list of row groups to run, default all: spool, kafka, persistent, persistent-node,
persistent-rss, persistent-tmpfs, persistent-kafka; e.g. BENCH_ONLY=persistent-tmpfs,persistent-kafka),
BENCH_JSON (default BUILD/bench.json), BENCH_KEEP=1 keeps the work directory (not the tmpfs rounds', which go
with the tmpfs). DROVER_BUILD names the build tree.

Everything runs in a directory under the build tree (a disk, not tmpfs, so
that fsyncs cost what they cost), but for the tmpfs rounds. Every process is started here and stopped
by pid; every wait polls with a deadline. The helpers the test suites share
(waiting, /proc, the control socket, the INI file, the environment that
configures drover, the mock cluster) come from tests/integration's harness
and kafka_harness.
"""
import ctypes
import json
import math
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
from harness import PYTHON, children_of, clean_env, control_exchange, render_ini, wait_until  # noqa: E402
from harness import HarnessError as BenchError  # noqa: E402

BUILD = str(harness.BUILD)
CEILING = os.path.join(BUILD, "bench", "spawn_ceiling")
PEER_POOL = os.path.join(ROOT, "tests", "bench", "peer_pool.py")
PREFORK_POOL = os.path.join(ROOT, "tests", "bench", "prefork_pool.py")
ECHO_HANDLER = "%s %s" % (PYTHON, os.path.join(ROOT, "tests", "bench", "echo_handler.py"))
NODE = "/usr/bin/node"
TIMER_HANDLER = "%s %s" % (NODE, os.path.join(ROOT, "tests", "bench", "timer_handler.js"))
NODE_IN_FLIGHT = 20
MOCK_BROKER = os.path.join(BUILD, "support", "mock_broker")
HANDLER = "/bin/cat"
JOB_BYTES = 200
RESTART_DELAY_MS = 100
KAFKA_PARTITIONS = 12
STATUS_TOPIC, FAILED_TOPIC = "bench.status", "bench.failed"
RATES = (300, 1000)

SCALES = {
    # Enough to produce every figure, fast enough for make test.
    "tiny": {"spool_jobs": 150, "kafka_jobs": 200, "pairs": 1, "latency_s": 0.6, "idle_s": 1.0,
             "round_cap_s": 20, "drain_cap_s": 10, "warm_jobs": 150, "node_jobs": 100, "rss_jobs": 400,
             "rss_warmup": 100, "tmpfs_jobs": 400, "warm_kafka_jobs": 300},
    # At most about 7 minutes on the 2-core machine (2.5 of them the persistent-handler rows). A pool
    # slower than the backlog or the offered rate allows is measured for round_cap_s (backlog) or
    # drain_cap_s (after the open loop) at most, so a slow drover cannot stretch the run. tmpfs_jobs stays
    # below inotify's queue (fs.inotify.max_queued_events, 16384 by default), as the whole backlog is renamed
    # in at once; warm_kafka_jobs keeps the mock's partitions below the 5 MiB it holds.
    "full": {"spool_jobs": 3000, "kafka_jobs": 3000, "pairs": 3, "latency_s": 3.0, "idle_s": 5.0,
             "round_cap_s": 10, "drain_cap_s": 6, "warm_jobs": 3000, "node_jobs": 1500, "rss_jobs": 100000,
             "rss_warmup": 2000, "tmpfs_jobs": 15000, "warm_kafka_jobs": 15000},
}

# Issue 7's targets. Each returns (text, met) from the row's value and ratio.
MIB = 1024


def at_least(limit):
    return "ratio >= %.2f" % limit, lambda value, ratio: ratio is not None and ratio >= limit


def at_most_ratio(limit):
    return "ratio <= %.2f" % limit, lambda value, ratio: ratio is not None and ratio <= limit


def at_least_value(limit, unit):
    return ">= %g %s" % (limit, unit), lambda value, ratio: value is not None and value >= limit


def at_most(limit, unit):
    return "<= %g %s" % (limit, unit), lambda value, ratio: value is not None and value <= limit


# ---- small tools -----------------------------------------------------------------

def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def job_json(job_id):
    """A job of exactly JOB_BYTES bytes, newline included."""
    head = '{"id":"%s","prompt":"' % job_id
    return head + "x" * (JOB_BYTES - len(head) - 3) + '"}\n'


def rss_kb(pid):
    return harness.proc_status_kb(pid, "VmRSS")


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of pid, or None."""
    total = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        st = proc_status_path("/proc/%d/task/%s/status" % (pid, tid))
        total += st.get("voluntary_ctxt_switches", 0) + st.get("nonvoluntary_ctxt_switches", 0)
    return total


def proc_status_path(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.endswith("ctxt_switches"):
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


class Tree:
    """A child started in its own session whose whole tree's CPU comes from wait4 when it ends."""

    def __init__(self, argv, workdir, name, env=None, stdout=None):
        self.name = name
        self.log = os.path.join(workdir, name + ".out")
        out = open(self.log, "wb")
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or out, stderr=out,
                                     env=env, start_new_session=True)
        out.close()
        self.status = None
        self.rusage = None

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        if self.status is not None:
            return False
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, usage)
        return False

    def _reaped(self, status, usage):
        self.status, self.rusage = status, usage
        # Popen must not wait for a pid we reaped ourselves.
        self.proc.returncode = os.waitstatus_to_exitcode(status)

    def finish(self, sig=None, timeout=30):
        """Sends sig (if any), reaps with a deadline (then KILLs the group); returns the tree's CPU seconds."""
        if self.status is None and sig is not None:
            os.kill(self.pid, sig)
        try:
            wait_until(lambda: not self.running(), timeout, "%s (pid %d) to exit" % (self.name, self.pid))
        except BenchError:
            os.killpg(self.pid, signal.SIGKILL)
            _, status, usage = os.wait4(self.pid, 0)
            self._reaped(status, usage)
            raise
        return self.rusage.ru_utime + self.rusage.ru_stime

    def kill(self):
        """Failure path: the whole session started here, by its id."""
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            _, status, usage = os.wait4(self.pid, 0)
            self._reaped(status, usage)

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return ""


class RssSampler:
    """Largest VmRSS seen per role (supervisor, worker) of a drover tree while it works."""

    def __init__(self, root_pid):
        self.root = root_pid
        self.peak = {"supervisor": 0, "worker": 0}

    def sample(self):
        self.peak["supervisor"] = max(self.peak["supervisor"], rss_kb(self.root) or 0)
        for pid in children_of(self.root):
            self.peak["worker"] = max(self.peak["worker"], rss_kb(pid) or 0)


# ---- drover ------------------------------------------------------------------------

class Drover:
    """One drover in the foreground, as a child of the bench, on its own directory."""

    def __init__(self, workdir, workers, max_concurrent, backend="spool", extra=None):
        os.makedirs(workdir)
        self.dir = workdir
        self.sock = os.path.join(workdir, "drover.sock")
        self.spool = os.path.join(workdir, "spool")
        self.ini = os.path.join(workdir, "drover.ini")
        cfg = {
            "supervisor": {"workers": workers, "control_socket": self.sock,
                           "pid_file": os.path.join(workdir, "drover.pid"),
                           "log_file": os.path.join(workdir, "drover.log"), "log_level": "warn",
                           "shutdown_timeout_ms": 5000, "restart_delay_ms": RESTART_DELAY_MS,
                           "restart_delay_max_ms": 5000},
            "jobs": {"handler": HANDLER, "max_concurrent": max_concurrent, "timeout_ms": 30000,
                     "kill_grace_ms": 1000, "max_attempts": 3, "retry_delay_ms": 100},
            "queue": {"backend": backend},
            "spool": {"dir": self.spool},
        }
        for section, keys in (extra or {}).items():
            cfg.setdefault(section, {}).update(keys)
        with open(self.ini, "w") as f:
            f.write(render_ini(cfg))
        for sub in ("tmp", "incoming", "processing", "complete", "failed"):
            os.makedirs(os.path.join(self.spool, sub))
        self.tree = None

    def start(self):
        self.tree = Tree([os.path.join(BUILD, "drover"), "-c", self.ini], self.dir, "drover", env=clean_env())
        return self

    def check_alive(self):
        if not self.tree.running():
            raise BenchError("drover exited (status %s): %s" % (self.tree.status, self.tree.tail()))

    def command(self, line, timeout=5.0):
        """One control-socket exchange; None when it fails."""
        try:
            return control_exchange(self.sock, line.encode() + b"\n", timeout).decode()
        except OSError:
            return None

    def stats(self):
        self.check_alive()
        answer = self.command("stats")
        try:
            return json.loads(answer) if answer else None
        except ValueError:
            return None

    def wait_running(self, workers, timeout=20):
        def ok():
            s = self.stats()
            if not s:
                return None
            running = [w for w in s.get("workers", []) if w.get("state") == "running" and w.get("pid")]
            return s if len(running) == workers else None
        return wait_until(ok, timeout, "%d running workers" % workers)

    def worker_pids(self):
        return {w["slot"]: w["pid"] for w in self.stats()["workers"] if w.get("pid")}

    def stop(self):
        """TERM, then the whole tree's CPU seconds."""
        return self.tree.finish(signal.SIGTERM, timeout=30)


# ---- the spool ---------------------------------------------------------------------

def count_outcomes(spool):
    n = 0
    for sub in ("complete", "failed"):
        with os.scandir(os.path.join(spool, sub)) as it:
            n += sum(1 for e in it if e.name.endswith(".json"))
    return n


def fill_backlog(spool, prefix, n):
    """n jobs straight into incoming/ before drover starts (no fsync: the enqueue is not what is measured)."""
    write_jobs(os.path.join(spool, "incoming"), prefix, n)


def write_jobs(directory, prefix, n):
    for i in range(n):
        job_id = "%s-%06d" % (prefix, i)
        with open(os.path.join(directory, job_id + ".json"), "w") as f:
            f.write(job_json(job_id))


def spool_drover_round(ctx, workers, k, n, tag, extra=None):
    d = Drover(ctx.path(tag), workers, k, extra=extra)
    fill_backlog(d.spool, tag, n)
    load = load1()
    d.start()
    sampler = RssSampler(d.tree.pid)
    cap = time.monotonic() + ctx.scale["round_cap_s"]
    try:
        done = 0
        while done < n and time.monotonic() < cap:
            d.check_alive()
            sampler.sample()
            time.sleep(0.1)
            done = count_outcomes(d.spool)
        first = None
        if done >= n:
            mtimes = [e.stat().st_mtime_ns for e in os.scandir(os.path.join(d.spool, "complete"))]
            first, end = min(mtimes), max(mtimes)
        else:  # capped: the rate so far; the CPU is divided by every outcome written by the stop
            end = time.time_ns()
        cpu = d.stop()
        failed = os.listdir(os.path.join(d.spool, "failed"))
        if failed:
            raise BenchError("%s: %d jobs failed, e.g. %s" % (tag, len(failed), failed[:3]))
        finished = count_outcomes(d.spool)
    except BaseException:
        d.tree.kill()
        raise
    # Steady: first to last outcome, without drover's and the handlers' start.
    steady = (done - 1) / ((end - first) / 1e9) if first is not None and end > first else None
    return {"jobs_per_s": done / ((end - d.tree.started_ns) / 1e9), "jobs_per_s_steady": steady,
            "cpu_ms_per_job": cpu * 1000 / finished,
            "jobs": n, "finished": finished, "capped": done < n, "load1": load, "rss_busy_kb": dict(sampler.peak)}


def ceiling_round(ctx, workers, k, n, tag):
    load = load1()
    t = Tree([CEILING, "-p", str(workers), "-k", str(k), "-n", str(n), "-s", str(JOB_BYTES), HANDLER],
             ctx.workdir, tag)
    try:
        cpu = t.finish(timeout=n / 20 + 60)
    except BaseException:
        t.kill()
        raise
    if t.proc.returncode != 0:
        raise BenchError("spawn_ceiling failed (%s): %s" % (t.proc.returncode, t.tail()))
    result = json.loads(t.tail().strip().splitlines()[-1])
    return {"jobs_per_s": n / (result["elapsed_ns"] / 1e9), "cpu_ms_per_job": cpu * 1000 / n, "load1": load}


class Inotify:
    """Arrival times (time_ns) of files renamed into a directory, read by a thread."""
    IN_MOVED_TO, IN_CLOSE_WRITE, IN_CLOEXEC, IN_NONBLOCK = 0x80, 0x8, 0o2000000, 0o4000

    def __init__(self, directory):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(self.IN_CLOEXEC | self.IN_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, directory.encode(), self.IN_MOVED_TO | self.IN_CLOSE_WRITE) < 0:
            raise BenchError("inotify on %s: %s" % (directory, os.strerror(ctypes.get_errno())))
        self.seen = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            now = time.time_ns()
            at = 0
            while at + 16 <= len(data):
                _, _, _, length = struct.unpack_from("iIII", data, at)
                name = data[at + 16:at + 16 + length].split(b"\0", 1)[0].decode()
                self.seen.setdefault(name, now)
                at += 16 + length

    def close(self):
        self.stopping = True
        self.thread.join(5)
        os.close(self.fd)


def open_loop_spool(d, rate, seconds, drain_cap, tag, sampler):
    """Enqueues rate jobs/s for seconds (write in tmp/, rename into incoming/); returns (latencies in ms,
    offered rate, unfinished). A job without an outcome drain_cap seconds after the last enqueue counts
    with its wait so far (a lower bound), and is taken out of incoming/ so that the next figure starts clean."""
    n = max(20, int(rate * seconds))
    watch = Inotify(os.path.join(d.spool, "complete"))
    enqueued = {}
    try:
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            job_id = "%s-%06d" % (tag, i)
            tmp = os.path.join(d.spool, "tmp", job_id + ".json")
            with open(tmp, "w") as f:
                f.write(job_json(job_id))
            os.rename(tmp, os.path.join(d.spool, "incoming", job_id + ".json"))
            enqueued[job_id + ".json"] = time.time_ns()
            if i % 50 == 0:
                sampler.sample()
        achieved = n / (time.monotonic() - t0)

        cap = time.monotonic() + drain_cap
        while time.monotonic() < cap and not all(name in watch.seen for name in enqueued):
            d.check_alive()
            time.sleep(0.05)
        now = time.time_ns()
    finally:
        watch.close()
    unfinished = [name for name in enqueued if name not in watch.seen]
    for name in unfinished:
        try:
            os.unlink(os.path.join(d.spool, "incoming", name))
        except FileNotFoundError:
            pass  # claimed meanwhile: it finishes on its own
    return [(watch.seen.get(name, now) - t) / 1e6 for name, t in enqueued.items()], achieved, len(unfinished)


def measure_idle(pids, seconds):
    """{name: wake-ups per second} of each process over seconds (context switches of all its threads)."""
    before = {name: context_switches(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {name: context_switches(pid) for name, pid in pids.items()}
    return {name: (after[name] - before[name]) / elapsed for name in pids
            if before[name] is not None and after[name] is not None}


def restart_times(d, workers):
    """ms from kill -9 of each slot's worker until stats shows a new pid running there; also (in
    respawn) until the new pid first shows, in any state, which tells the restart delay from the start-up."""
    def worker_in(slot, not_pid, states):
        stats = d.stats()
        for w in (stats or {}).get("workers", []):
            if w.get("slot") == slot and w.get("pid") not in (0, None, not_pid) and w.get("state") in states:
                return w
        return None
    times, respawn = [], []
    for slot in range(workers):
        victim = wait_until(lambda: worker_in(slot, -1, ("running",)), 30, "slot %d running" % slot)
        os.kill(victim["pid"], signal.SIGKILL)
        started = time.monotonic()
        seen = []

        def running():
            w = worker_in(slot, victim["pid"], ("starting", "running"))
            if w and not seen:
                seen.append((time.monotonic() - started) * 1000)
            return w and w["state"] == "running"
        wait_until(running, 30, "a new worker running in slot %d" % slot, interval=0.002)
        times.append((time.monotonic() - started) * 1000)
        respawn.append(seen[0])
    return times, respawn


def process_roles(d, workers):
    pids = {"supervisor": d.tree.pid}
    pids.update({"worker %d" % slot: pid for slot, pid in d.worker_pids().items()})
    if len(pids) != workers + 1:
        raise BenchError("expected %d workers, stats shows %s" % (workers, pids))
    return pids


def spool_service(ctx, workers, k, tag):
    """One long-lived drover: idle wake-ups and RSS, open-loop latency, restart after kill -9."""
    d = Drover(ctx.path(tag), workers, k)
    d.start()
    out = {}
    try:
        d.wait_running(workers)
        time.sleep(0.5)  # let start-up settle before calling it idle
        pids = process_roles(d, workers)
        out["idle_load1"] = load1()
        out["wakeups"] = measure_idle(pids, ctx.scale["idle_s"])
        out["rss_idle_kb"] = {name: rss_kb(pid) for name, pid in pids.items()}
        sampler = RssSampler(d.tree.pid)
        for rate in RATES:
            load = load1()
            lat, achieved, unfinished = open_loop_spool(d, rate, ctx.scale["latency_s"], ctx.scale["drain_cap_s"],
                                                        "%s-r%d" % (tag, rate), sampler)
            out["latency_%d" % rate] = {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                                        "jobs": len(lat), "unfinished": unfinished, "offered_per_s": achieved,
                                        "load1": load}
        out["rss_busy_kb"] = dict(sampler.peak)
        out["restart_load1"] = load1()
        out["restart_ms"], out["respawn_ms"] = restart_times(d, workers)
        d.stop()
    except BaseException:
        d.tree.kill()
        raise
    return out


def bench_spool(ctx, workers, k):
    name = "spool %dx%d" % (workers, k)
    n = ctx.spool_jobs
    rounds = []
    for r in range(ctx.pairs):
        ctx.say("%s: pair %d/%d, %d jobs" % (name, r + 1, ctx.pairs, n))
        ceiling = ceiling_round(ctx, workers, k, n, "ceil-s%dx%d-%d" % (workers, k, r))
        drover = spool_drover_round(ctx, workers, k, n, "spool%dx%d-%d" % (workers, k, r))
        rounds.append({"ceiling": ceiling, "drover": drover})
    ctx.say("%s: idle, latency, restart" % name)
    service = spool_service(ctx, workers, k, "svc-spool%dx%d" % (workers, k))
    for role in ("supervisor", "worker"):  # busy: the backlog rounds and the open-loop runs
        service["rss_busy_kb"][role] = max([service["rss_busy_kb"][role]] +
                                           [r["drover"]["rss_busy_kb"][role] for r in rounds])
    ctx.results[name] = {"backend": "spool", "workers": workers, "max_concurrent": k, "jobs": n,
                         "rounds": rounds, "service": service}
    paired_rows(ctx, name, rounds, "ceiling", "spawn ceiling",
                jobs_target=at_least(0.90), cpu_target=at_most_ratio(1.15))
    service_rows(ctx, name, service, workers, backend="spool")


# ---- Kafka ---------------------------------------------------------------------------

class KafkaSide:
    """The bench's own clients on the mock: topics, the backlog producer, the outcome reader."""

    def __init__(self, mock):
        from confluent_kafka import Producer
        self.mock = mock
        self.producer = Producer({"bootstrap.servers": mock.bootstrap, "linger.ms": 0,
                                  "log.connection.close": False})

    def topics(self, tag):
        req, done = "bench.%s.requests" % tag, "bench.%s.complete" % tag
        self.mock.command("create %s %d" % (req, KAFKA_PARTITIONS))
        self.mock.command("create %s 3" % done)
        return req, done

    def produce(self, topic, job_id, partition):
        """Produces one job; returns its timestamp in ms (set here, so it is the enqueue time)."""
        ts = time.time_ns() // 1000000
        while True:
            try:
                self.producer.produce(topic, key=job_id.encode(), value=job_json(job_id).encode(),
                                      partition=partition, timestamp=ts)
                break
            except BufferError:
                self.producer.poll(0.01)
        self.producer.poll(0)
        return ts

    def flush(self):
        if self.producer.flush(30) != 0:
            raise BenchError("the bench's producer could not deliver its jobs")

    def backlog(self, topic, prefix, n):
        ids = ["%s-%06d" % (prefix, i) for i in range(n)]
        for i, job_id in enumerate(ids):
            self.produce(topic, job_id, i % KAFKA_PARTITIONS)
        self.flush()
        return ids

    def outcomes(self, topic, ids, timeout, alive=None, partial=False):
        """{id: outcome timestamp ms} once every id has one on topic; after timeout, what is there
        when partial, else BenchError."""
        from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
        c = Consumer({"bootstrap.servers": self.mock.bootstrap, "group.id": "bench-reader",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 50})
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
        wanted, seen = set(ids), {}
        deadline = time.monotonic() + timeout
        try:
            while not wanted <= seen.keys():
                if time.monotonic() > deadline:
                    if partial:
                        break
                    raise BenchError("%d of %d outcomes on %s after %.0f s"
                                     % (len(wanted & seen.keys()), len(wanted), topic, timeout))
                if alive:
                    alive()
                for m in c.consume(1000, 0.2):
                    if m.error() is None and m.key() is not None:
                        seen.setdefault(m.key().decode(), m.timestamp()[1])
        finally:
            c.close()
        return {i: seen[i] for i in wanted if i in seen}

    def count(self, topic):
        """Messages on topic (3 partitions): the sum of the high watermarks."""
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": self.mock.bootstrap, "group.id": "bench-reader"})
        try:
            return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3))
        finally:
            c.close()


def kafka_drover(ctx, workers, k, req, done, group, tag, fetch_wait=True, jobs=None):
    # The mock waits fetch.wait.max.ms on every empty fetch: lowered for the busy figures, left at
    # librdkafka's default (with its default heartbeat) for the idle ones.
    lib = {"session.timeout.ms": 6000}
    if fetch_wait:
        lib.update({"fetch.wait.max.ms": 5, "heartbeat.interval.ms": 500})
    return Drover(ctx.path(tag), workers, k, backend="kafka", extra={
        "kafka": {"brokers": ctx.mock.bootstrap, "group_id": group, "static_membership": "false",
                  "requests_topic": req, "complete_topic": done, "status_topic": STATUS_TOPIC,
                  "failed_topic": FAILED_TOPIC},
        "librdkafka": lib, "jobs": jobs or {}})


def peer_pool(ctx, workers, k, req, done, group, tag):
    args = [PYTHON, PEER_POOL, "--bootstrap", ctx.mock.bootstrap, "--topic", req, "--complete", done,
            "--group", group, "--processes", str(workers), "--threads", str(k), "--fetch-wait-ms", "5"]
    return Tree(args, ctx.workdir, tag, stdout=subprocess.PIPE)


class PeerAssignments:
    """Reads peer_pool's "assigned PID N" lines in a thread; total() is the partitions held."""

    def __init__(self, tree):
        self.held = {}
        self.thread = threading.Thread(target=self._run, args=(tree.proc.stdout,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        for line in stream:
            parts = line.decode(errors="replace").split()
            if len(parts) == 3 and parts[0] == "assigned":
                self.held[parts[1]] = int(parts[2])

    def stable(self, processes):
        """Every process holds partitions and together they hold all: no rebalance is still to come."""
        held = list(self.held.values())
        return len(held) == processes and all(held) and sum(held) == KAFKA_PARTITIONS


def group_stable(d, workers):
    """Every worker of d holds partitions and together they hold all of them."""
    s = d.stats()
    if not s:
        return False
    held = [len((w.get("kafka") or {}).get("partitions", [])) for w in s["workers"] if w.get("pid")]
    return len(held) == workers and all(held) and sum(held) == KAFKA_PARTITIONS


class KafkaPool:
    """drover or the peer pool on one requests topic, in its own group; tree is the process to reap."""

    def __init__(self, ctx, system, workers, k, req, done, tag):
        self.system, self.workers = system, workers
        if system == "drover":
            self.drover = kafka_drover(ctx, workers, k, req, done, "g-" + tag, tag).start()
            self.tree = self.drover.tree
        else:
            self.tree = peer_pool(ctx, workers, k, req, done, "g-" + tag, tag)
            self.assigned = PeerAssignments(self.tree)

    def alive(self):
        if self.system == "drover":
            self.drover.check_alive()
        elif not self.tree.running():
            raise BenchError("peer_pool exited: %s" % self.tree.tail())

    def wait_stable(self):
        """Until every member holds partitions and together all of them, so no rebalance is measured."""
        def stable():
            self.alive()
            if self.system == "drover":
                return group_stable(self.drover, self.workers)
            return self.assigned.stable(self.workers)
        wait_until(stable, 90, "%s group to hold all %d partitions" % (self.system, KAFKA_PARTITIONS), interval=0.1)


def kafka_throughput(ctx, system, workers, k, n, tag):
    """A backlog produced at once into a stable group; jobs/s from the first to the last outcome."""
    req, done = ctx.kafka.topics(tag)
    load = load1()
    pool = KafkaPool(ctx, system, workers, k, req, done, tag)
    sampler = RssSampler(pool.tree.pid)

    def check():
        pool.alive()
        sampler.sample()
    try:
        pool.wait_stable()
        ids = ctx.kafka.backlog(req, tag, n)
        stamps = ctx.kafka.outcomes(done, ids, ctx.scale["round_cap_s"], alive=check, partial=True)
        cpu = pool.tree.finish(signal.SIGTERM, timeout=30)
        finished = ctx.kafka.count(done)  # by the stop, duplicates included: they cost CPU too
    except BaseException:
        pool.tree.kill()
        raise
    if len(stamps) < 2 or not finished:
        raise BenchError("%s: %d outcomes within %.0f s" % (tag, len(stamps), ctx.scale["round_cap_s"]))
    first, last = min(stamps.values()), max(stamps.values())
    return {"jobs_per_s": (len(stamps) - 1) / max(0.001, (last - first) / 1000.0),
            "cpu_ms_per_job": cpu * 1000 / finished, "jobs": n, "finished": finished, "capped": len(stamps) < n,
            "load1": load, "rss_busy_kb": dict(sampler.peak)}


def open_loop_kafka(ctx, req, done, rate, seconds, tag, alive):
    """Produces rate jobs/s for seconds; returns (latencies in ms, offered rate, unfinished). A job
    without an outcome drain_cap_s after the last produce counts with its wait so far (a lower bound)."""
    n = max(20, int(rate * seconds))
    sent = {}
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        job_id = "%s-%06d" % (tag, i)
        sent[job_id] = ctx.kafka.produce(req, job_id, i % KAFKA_PARTITIONS)
    achieved = n / (time.monotonic() - t0)
    ctx.kafka.flush()
    stamps = ctx.kafka.outcomes(done, sent, ctx.scale["drain_cap_s"], alive=alive, partial=True)
    now = time.time_ns() // 1000000
    return [float(stamps.get(i, now) - sent[i]) for i in sent], achieved, len(sent) - len(stamps)


def kafka_latency(ctx, system, workers, k, tag):
    """Open-loop latency at each rate on one long-lived pool that holds every partition."""
    req, done = ctx.kafka.topics(tag)
    pool = KafkaPool(ctx, system, workers, k, req, done, tag)
    out = {}
    try:
        pool.wait_stable()
        # One job per partition first, so that neither the bench's producer (topic metadata) nor the
        # pool (first fetch of each partition) is measured warming up.
        warm = {}
        for p in range(KAFKA_PARTITIONS):
            warm["%s-warm-%d" % (tag, p)] = ctx.kafka.produce(req, "%s-warm-%d" % (tag, p), p)
        ctx.kafka.flush()
        ctx.kafka.outcomes(done, warm, 60, alive=pool.alive)
        for rate in RATES:
            load = load1()
            lat, achieved, unfinished = open_loop_kafka(ctx, req, done, rate, ctx.scale["latency_s"],
                                                        "%s-r%d" % (tag, rate), pool.alive)
            out["latency_%d" % rate] = {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                                        "jobs": len(lat), "unfinished": unfinished, "offered_per_s": achieved,
                                        "load1": load}
        pool.tree.finish(signal.SIGTERM, timeout=30)
    except BaseException:
        pool.tree.kill()
        raise
    return out


def kafka_idle(ctx, workers, k, tag):
    """Idle wake-ups and RSS with librdkafka's own fetch wait (not the mock's 5 ms), then restart after kill -9."""
    req, done = ctx.kafka.topics(tag)
    d = kafka_drover(ctx, workers, k, req, done, "g-" + tag, tag, fetch_wait=False).start()
    out = {}
    try:
        def joined():
            return group_stable(d, workers)
        wait_until(joined, 60, "%s to hold all partitions" % tag, interval=0.1)
        time.sleep(0.5)
        pids = process_roles(d, workers)
        out["idle_load1"] = load1()
        out["wakeups"] = measure_idle(pids, ctx.scale["idle_s"])
        out["rss_idle_kb"] = {name: rss_kb(pid) for name, pid in pids.items()}
        out["restart_load1"] = load1()
        out["restart_ms"], out["respawn_ms"] = restart_times(d, workers)
        d.stop()
    except BaseException:
        d.tree.kill()
        raise
    return out


def bench_kafka(ctx, workers, k):
    name = "kafka %dx%d" % (workers, k)
    n = ctx.kafka_jobs
    rounds = []
    for r in range(ctx.pairs):
        ctx.say("%s: round %d/%d, %d jobs" % (name, r + 1, ctx.pairs, n))
        rnd = {}
        # Alternate which pool goes first, so that drift does not favour one.
        order = ("peer", "drover") if r % 2 else ("drover", "peer")
        for system in order:
            rnd[system] = kafka_throughput(ctx, system, workers, k, n, "k%dx%d-%s-%d" % (workers, k, system, r))
        rnd["ceiling"] = ceiling_round(ctx, workers, k, n, "ceil-k%dx%d-%d" % (workers, k, r))
        rounds.append(rnd)
    ctx.say("%s: latency (drover, peer pool), idle, restart" % name)
    service = kafka_latency(ctx, "drover", workers, k, "lat%dx%d-drover" % (workers, k))
    peer = kafka_latency(ctx, "peer", workers, k, "lat%dx%d-peer" % (workers, k))
    service.update(kafka_idle(ctx, workers, k, "idle%dx%d" % (workers, k)))
    busy = {"supervisor": max(r["drover"]["rss_busy_kb"]["supervisor"] for r in rounds),
            "worker": max(r["drover"]["rss_busy_kb"]["worker"] for r in rounds)}
    service["rss_busy_kb"] = busy
    ctx.results[name] = {"backend": "kafka", "workers": workers, "max_concurrent": k, "jobs": n,
                         "rounds": rounds, "service": service, "peer_latency": peer}
    paired_rows(ctx, name, rounds, "ceiling", "spawn ceiling", jobs_target=at_least(0.85), cpu_target=None)
    paired_rows(ctx, name, rounds, "peer", "python pool", jobs_target=at_least(1.30), cpu_target=None)
    service_rows(ctx, name, service, workers, backend="kafka", peer=peer)


# ---- persistent handlers (issue 9) ---------------------------------------------------

def persistent(handler, concurrency):
    return {"jobs": {"handler": handler, "handler_mode": "persistent", "handler_concurrency": concurrency}}


def prefork_round(ctx, processes, n, tag):
    load = load1()
    t = Tree([PYTHON, PREFORK_POOL, "-p", str(processes), "-n", str(n), "-s", str(JOB_BYTES)], ctx.workdir, tag)
    try:
        cpu = t.finish(timeout=n / 20 + 60)
    except BaseException:
        t.kill()
        raise
    if t.proc.returncode != 0:
        raise BenchError("prefork_pool failed (%s): %s" % (t.proc.returncode, t.tail()))
    result = json.loads(t.tail().strip().splitlines()[-1])
    return {"jobs_per_s": n / (result["elapsed_ns"] / 1e9), "cpu_ms_per_job": cpu * 1000 / n, "load1": load}


def bench_warm(ctx, workers, k):
    """Python echo: persistent vs exec mode vs a prefork pool, same workers x max_concurrent."""
    name = "persistent %dx%d" % (workers, k)
    n = ctx.warm_jobs
    rounds = []
    for i in range(ctx.pairs):
        tag = "warm%dx%d-%d" % (workers, k, i)
        ctx.say("%s: round %d/%d, %d jobs each: persistent, exec, prefork pool" % (name, i + 1, ctx.pairs, n))
        rounds.append({"drover": spool_drover_round(ctx, workers, k, n, tag + "p", persistent(ECHO_HANDLER, 1)),
                       "exec": spool_drover_round(ctx, workers, k, n, tag + "e", {"jobs": {"handler": ECHO_HANDLER}}),
                       "prefork": prefork_round(ctx, workers * k, n, tag + "f")})
    ctx.results[name] = {"backend": "persistent", "workers": workers, "max_concurrent": k, "jobs": n,
                         "rounds": rounds}
    paired_rows(ctx, name, rounds, "exec", "exec mode", jobs_target=at_least(10), cpu_target=None)
    paired_rows(ctx, name, rounds, "prefork", "prefork pool", jobs_target=at_least(1.0), cpu_target=None)


def bench_node(ctx):
    """One worker, one Node process holding 20 jobs that each await a 100 ms timer."""
    name = "persistent node 1x%d" % NODE_IN_FLIGHT
    n = ctx.node_jobs
    ctx.say("%s: %d jobs" % (name, n))
    r = spool_drover_round(ctx, 1, NODE_IN_FLIGHT, n, "node", persistent(TIMER_HANDLER, NODE_IN_FLIGHT))
    ctx.results[name] = {"backend": "persistent-node", "workers": 1, "max_concurrent": NODE_IN_FLIGHT, "jobs": n,
                         "round": r}
    note = "each job awaits 100 ms; first to last outcome"
    if r["capped"] or r["jobs_per_s_steady"] is None:
        note += ", stopped at %.0f s: from drover's start" % ctx.scale["round_cap_s"]
    else:
        note += "; %.0f/s from drover's start" % r["jobs_per_s"]
    ctx.row(name, "jobs/s per worker, 20 in flight in one process", r["jobs_per_s_steady"] or r["jobs_per_s"],
            target=at_least_value(0.9 * NODE_IN_FLIGHT / 0.1, "jobs/s"), unit="jobs/s", load=r["load1"], note=note)


def cpu_seconds(pid):
    """utime + stime of pid (all its threads) from /proc; 0 when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handler_pids(d):
    s = d.stats()
    return [h["pid"] for w in (s or {}).get("workers", []) for h in w.get("handlers", []) if h.get("pid")]


def outcomes_from_stats(d):
    s = d.stats()
    return sum(w.get("completed", 0) + w.get("failed", 0) for w in (s or {}).get("workers", []))


def rss_run(ctx, n, warmup):
    """One worker, one persistent Python process (4 jobs at once) over n jobs."""
    d = Drover(ctx.path("rss"), 1, 4, extra=persistent(ECHO_HANDLER, 4))
    fill_backlog(d.spool, "rss", n)
    load = load1()
    d.start()
    try:
        handler = wait_until(lambda: handler_pids(d), 30, "the handler process")[0]
        worker = d.worker_pids()[0]
        wait_until(lambda: outcomes_from_stats(d) >= warmup, 60, "%d outcomes" % warmup, interval=0.2)
        start = {"handler": rss_kb(handler), "worker": rss_kb(worker)}
        wait_until(lambda: outcomes_from_stats(d) >= n, n / 50 + 60, "%d outcomes" % n, interval=0.5)
        end = {"handler": rss_kb(handler), "worker": rss_kb(worker)}
        if handler_pids(d) != [handler] or d.worker_pids()[0] != worker:
            raise BenchError("the handler or the worker was replaced during the RSS run")
        drover_cpu = {"supervisor": cpu_seconds(d.tree.pid), "worker": cpu_seconds(worker),
                      "handler": cpu_seconds(handler)}
        d.stop()
        failed = os.listdir(os.path.join(d.spool, "failed"))
        if failed:
            raise BenchError("rss: %d jobs failed, e.g. %s" % (len(failed), failed[:3]))
    except BaseException:
        d.tree.kill()
        raise
    return {"jobs": n, "warmup": warmup, "rss_start_kb": start, "rss_end_kb": end,
            "drover_cpu_ms_per_job": (drover_cpu["supervisor"] + drover_cpu["worker"]) * 1000 / n,
            "cpu_ms_per_job": {role: sec * 1000 / n for role, sec in drover_cpu.items()}, "load1": load}


def bench_rss(ctx):
    name = "persistent rss 1x4"
    n, warmup = ctx.rss_jobs, min(ctx.scale["rss_warmup"], ctx.rss_jobs // 2)
    ctx.say("%s: one handler process over %d jobs" % (name, n))
    r = rss_run(ctx, n, warmup)
    ctx.results[name] = {"backend": "persistent-rss", "workers": 1, "max_concurrent": 4, "jobs": n, "run": r}
    for role in ("handler", "worker"):
        start, end = r["rss_start_kb"][role] / MIB, r["rss_end_kb"][role] / MIB
        ctx.row(name, "RSS %s process after warm-up" % role, start, unit="MiB", load=r["load1"],
                note="after %d jobs" % warmup)
        ctx.row(name, "RSS %s process at the end" % role, end, start, end / start, at_most_ratio(1.10), "MiB",
                r["load1"], note="after %d jobs; reference: after warm-up" % n)
    ctx.row(name, "drover CPU per job (supervisor + worker)", r["drover_cpu_ms_per_job"],
            target=at_most(0.1, "ms"), unit="ms", load=r["load1"],
            note="supervisor %.3f, worker %.3f; the handler's %.3f not counted" % tuple(
                r["cpu_ms_per_job"][role] for role in ("supervisor", "worker", "handler")))


# ---- what the persistent figures are made of: no device, or Kafka ---------------------

TMPFS_SIZE = "512m"  # a limit, not an allocation: each round's files are removed after it


class TmpfsMount:
    """A tmpfs mounted on a directory of the work directory for the with block; umounted by path after it."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        os.makedirs(self.path)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % TMPFS_SIZE, "bench-tmpfs",
                            self.path], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError("cannot mount a tmpfs on %s (make bench runs as root; BENCH_ONLY without "
                             "persistent-tmpfs skips these rows): %s" % (self.path, (r.stderr or r.stdout).strip()))
        return self.path

    def __exit__(self, *exc):
        r = subprocess.run(["umount", self.path], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            print("bench: umount %s: %s" % (self.path, r.stderr.strip()), file=sys.stderr)
        return False


def drover_pids(d):
    """{role: sorted pids} of a running drover: the supervisor, its workers, their handler processes."""
    workers = [w for w in (d.stats() or {}).get("workers", []) if w.get("pid")]
    return {"supervisor": [d.tree.pid], "workers": sorted(w["pid"] for w in workers),
            "handlers": sorted(h["pid"] for w in workers for h in w.get("handlers", []) if h.get("pid"))}


def wait_handlers_ready(d, workers, processes, timeout=60):
    """Until every worker runs and shows `processes` handler processes, all ready."""
    def ready():
        running = [w for w in (d.stats() or {}).get("workers", []) if w.get("pid") and w.get("state") == "running"]
        handlers = [h for w in running for h in w.get("handlers", [])]
        return (len(running) == workers and len(handlers) == workers * processes
                and all(h.get("state") == "ready" for h in handlers))
    wait_until(ready, timeout, "%d workers with %d ready handler processes each" % (workers, processes),
               interval=0.1)


class CpuWindow:
    """drover's CPU by role (utime + stime from /proc) between open and close, over the same processes."""

    def __init__(self, d):
        self.d = d
        self.pids = drover_pids(d)
        self.before = self._cpu()

    def _cpu(self):
        return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.pids.items()}

    def close(self, jobs):
        """CPU ms per job by role, and drover's own (supervisor + workers)."""
        after = self._cpu()
        if drover_pids(self.d) != self.pids:
            raise BenchError("a worker or a handler process was replaced during the round: %s -> %s"
                             % (self.pids, drover_pids(self.d)))
        per_job = {role: (after[role] - self.before[role]) * 1000 / jobs for role in after}
        per_job["drover"] = per_job["supervisor"] + per_job["workers"]
        return per_job


def ready_spool_round(ctx, root, workers, k, n, tag):
    """Persistent echo, W x K processes, the spool under root (the tmpfs, or the work directory on disk); the
    backlog renamed in once every handler is ready."""
    d = Drover(os.path.join(root, tag), workers, k, extra=persistent(ECHO_HANDLER, 1))
    staging = os.path.join(d.dir, "backlog")
    os.makedirs(staging)
    write_jobs(staging, tag, n)
    d.start()
    try:
        wait_handlers_ready(d, workers, k)
        load = load1()
        window = CpuWindow(d)
        for name in sorted(os.listdir(staging)):
            os.rename(os.path.join(staging, name), os.path.join(d.spool, "incoming", name))
        cap = time.monotonic() + ctx.scale["round_cap_s"]
        # The counters in stats, not the directory: a scan of complete/ ten times a second would take
        # the bench's share of the CPU from drover.
        while outcomes_from_stats(d) < n and time.monotonic() < cap:
            d.check_alive()
            time.sleep(0.1)
        if outcomes_from_stats(d) >= n:
            wait_until(lambda: count_outcomes(d.spool) >= n, 10, "%d outcome files" % n)
        done = count_outcomes(d.spool)
        capped = done < n
        cpu = window.close(max(done, 1))
        mtimes = [e.stat().st_mtime_ns for e in os.scandir(os.path.join(d.spool, "complete"))]
        d.stop()
        failed = os.listdir(os.path.join(d.spool, "failed"))
    except BaseException:
        d.tree.kill()
        raise
    if failed:
        raise BenchError("%s: %d jobs failed, e.g. %s" % (tag, len(failed), failed[:3]))
    if len(mtimes) < 2 or max(mtimes) <= min(mtimes):
        raise BenchError("%s: %d outcomes within %.0f s" % (tag, len(mtimes), ctx.scale["round_cap_s"]))
    shutil.rmtree(d.dir)  # the tmpfs holds the next round's files (on disk too: BENCH_KEEP does not keep these)
    return {"jobs_per_s": (len(mtimes) - 1) / ((max(mtimes) - min(mtimes)) / 1e9), "drover_cpu_ms_per_job": cpu,
            "jobs": n, "finished": done, "capped": capped, "load1": load}


def kafka_warm_round(ctx, workers, k, n, tag):
    """Persistent echo, W x K processes, on Kafka; the backlog produced once the group is stable and every
    handler ready."""
    req, done = ctx.kafka.topics(tag)
    d = kafka_drover(ctx, workers, k, req, done, "g-" + tag, tag, jobs=persistent(ECHO_HANDLER, 1)["jobs"]).start()
    try:
        def stable():
            d.check_alive()
            return group_stable(d, workers)
        wait_until(stable, 90, "%s to hold all %d partitions" % (tag, KAFKA_PARTITIONS), interval=0.1)
        wait_handlers_ready(d, workers, k)
        load = load1()
        window = CpuWindow(d)
        ids = ctx.kafka.backlog(req, tag, n)
        stamps = ctx.kafka.outcomes(done, ids, ctx.scale["round_cap_s"], alive=d.check_alive, partial=True)
        cpu = window.close(max(len(stamps), 1))
        d.stop()
    except BaseException:
        d.tree.kill()
        raise
    if len(stamps) < 2:
        raise BenchError("%s: %d outcomes within %.0f s" % (tag, len(stamps), ctx.scale["round_cap_s"]))
    first, last = min(stamps.values()), max(stamps.values())
    return {"jobs_per_s": (len(stamps) - 1) / max(0.001, (last - first) / 1000.0), "drover_cpu_ms_per_job": cpu,
            "jobs": n, "finished": len(stamps), "capped": len(stamps) < n, "load1": load}


def split_rows(ctx, name, rounds):
    """jobs/s against the prefork pool (paired) and drover's CPU per job, each with the rounds' median load;
    with the same rounds on disk (tmpfs only), drover against itself there."""
    loads = [r["drover"]["load1"] for r in rounds]
    capped = sum(1 for r in rounds for side in ("drover", "disk") if side in r and r[side]["capped"])
    note = "%d round(s) stopped at %.0f s; " % (capped, ctx.scale["round_cap_s"]) if capped else ""
    ratios = [r["drover"]["jobs_per_s"] / r["prefork"]["jobs_per_s"] for r in rounds if r["prefork"]["jobs_per_s"]]
    ctx.row(name, "jobs/s vs prefork pool", median([r["drover"]["jobs_per_s"] for r in rounds]),
            median([r["prefork"]["jobs_per_s"] for r in rounds]), median(ratios), at_least(1.0), "jobs/s",
            median(loads), note + "first to last outcome, handlers ready before the backlog")
    cpu = {role: median([r["drover"]["drover_cpu_ms_per_job"][role] for r in rounds])
           for role in ("drover", "supervisor", "workers", "handlers")}
    ctx.row(name, "drover CPU per job (supervisor + workers)", cpu["drover"], target=at_most(0.1, "ms"), unit="ms",
            load=median(loads), note="supervisor %.3f, workers %.3f; the handlers' %.3f not counted"
            % (cpu["supervisor"], cpu["workers"], cpu["handlers"]))
    if "disk" in rounds[0]:
        disk_rows(ctx, name, rounds, median(loads), note)


def disk_rows(ctx, name, rounds, load, note):
    """The tmpfs rounds against the same rounds with the spool on the build tree's disk: what the device costs."""
    jobs = [(r["drover"]["jobs_per_s"], r["disk"]["jobs_per_s"]) for r in rounds]
    ctx.row(name, "jobs/s vs the same on disk", median([t for t, _ in jobs]), median([d for _, d in jobs]),
            median([t / d for t, d in jobs if d]), unit="jobs/s", load=load,
            note=note + "the disk's rounds: %d jobs each" % rounds[0]["disk"]["jobs"])
    cpu = [(r["drover"]["drover_cpu_ms_per_job"]["drover"], r["disk"]["drover_cpu_ms_per_job"]["drover"])
           for r in rounds]
    ctx.row(name, "drover CPU per job vs the same on disk", median([t for t, _ in cpu]), median([d for _, d in cpu]),
            median([t / d for t, d in cpu if d]), unit="ms", load=load,
            note="on disk: workers %.3f, handlers %.3f" % tuple(
                median([r["disk"]["drover_cpu_ms_per_job"][role] for r in rounds]) for role in ("workers", "handlers")))


def bench_tmpfs(ctx, workers, k):
    """The persistent 2x4 row again with no device behind the spool's fsyncs, beside the same rounds on disk."""
    name = "persistent %dx%d, spool on tmpfs" % (workers, k)
    n = ctx.tmpfs_jobs
    rounds = []
    with TmpfsMount(ctx.path("tmpfs%dx%d" % (workers, k))) as root:
        for i in range(ctx.pairs):
            tag = "tmpfs%dx%d-%d" % (workers, k, i)
            ctx.say("%s: round %d/%d: persistent on disk (%d jobs), on tmpfs, prefork pool (%d jobs each)"
                    % (name, i + 1, ctx.pairs, ctx.warm_jobs, n))
            rounds.append({"disk": ready_spool_round(ctx, ctx.workdir, workers, k, ctx.warm_jobs, tag + "d"),
                           "drover": ready_spool_round(ctx, root, workers, k, n, tag + "p"),
                           "prefork": prefork_round(ctx, workers * k, n, tag + "f")})
    ctx.results[name] = {"backend": "persistent-tmpfs", "workers": workers, "max_concurrent": k, "jobs": n,
                         "tmpfs_size": TMPFS_SIZE, "rounds": rounds}
    split_rows(ctx, name, rounds)


def bench_warm_kafka(ctx, workers, k):
    """The persistent 2x4 row on Kafka: outcomes acknowledged by the broker, nothing fsynced."""
    name = "persistent kafka %dx%d" % (workers, k)
    n = ctx.warm_kafka_jobs
    rounds = []
    for i in range(ctx.pairs):
        tag = "wk%dx%d-%d" % (workers, k, i)
        ctx.say("%s: round %d/%d, %d jobs each: persistent on Kafka, prefork pool" % (name, i + 1, ctx.pairs, n))
        rounds.append({"drover": kafka_warm_round(ctx, workers, k, n, tag + "p"),
                       "prefork": prefork_round(ctx, workers * k, n, tag + "f")})
    ctx.results[name] = {"backend": "persistent-kafka", "workers": workers, "max_concurrent": k, "jobs": n,
                         "rounds": rounds}
    split_rows(ctx, name, rounds)


# ---- the table -------------------------------------------------------------------------

class Context:
    def __init__(self, scale_name, workdir):
        self.scale_name = scale_name
        self.scale = dict(SCALES[scale_name])
        jobs = os.environ.get("BENCH_JOBS")
        self.spool_jobs = int(jobs) if jobs else self.scale["spool_jobs"]
        self.kafka_jobs = int(jobs) if jobs else self.scale["kafka_jobs"]
        self.warm_jobs = int(jobs) if jobs else self.scale["warm_jobs"]
        self.node_jobs = int(jobs) if jobs else self.scale["node_jobs"]
        self.tmpfs_jobs = int(jobs) if jobs else self.scale["tmpfs_jobs"]
        self.warm_kafka_jobs = int(jobs) if jobs else self.scale["warm_kafka_jobs"]
        self.rss_jobs = int(os.environ.get("BENCH_RSS_JOBS") or self.scale["rss_jobs"])
        self.pairs = int(os.environ.get("BENCH_PAIRS") or self.scale["pairs"])
        self.workdir = workdir
        self.results = {}
        self.rows = []
        self.mock = None
        self.kafka = None
        self.t0 = time.monotonic()

    def path(self, tag):
        return os.path.join(self.workdir, tag)

    def say(self, text):
        print("[%5.1f s, load %.2f] %s" % (time.monotonic() - self.t0, load1(), text), flush=True)

    def row(self, config, figure, drover, reference=None, ratio=None, target=None, unit="", load=None, note=""):
        text, check = target if target else ("", None)
        met = None if check is None else bool(check(drover, ratio))
        self.rows.append({"config": config, "figure": figure, "unit": unit, "drover": drover,
                          "reference": reference, "ratio": ratio, "target": text, "met": met, "load1": load,
                          "note": note})


def paired_rows(ctx, name, rounds, ref_key, ref_name, jobs_target, cpu_target):
    loads = [r["drover"]["load1"] for r in rounds]
    capped = sum(1 for r in rounds for side in ("drover", ref_key) if r[side].get("capped"))
    note = "%d round(s) stopped at %.0f s" % (capped, ctx.scale["round_cap_s"]) if capped else ""
    for figure, key, unit, target in (("jobs/s vs %s" % ref_name, "jobs_per_s", "jobs/s", jobs_target),
                                      ("CPU per job vs %s" % ref_name, "cpu_ms_per_job", "ms", cpu_target)):
        ratios = [r["drover"][key] / r[ref_key][key] for r in rounds if r[ref_key][key]]
        ctx.row(name, figure, median([r["drover"][key] for r in rounds]), median([r[ref_key][key] for r in rounds]),
                median(ratios), target, unit, median(loads), note)


def service_rows(ctx, name, s, workers, backend, peer=None):
    for rate in RATES:
        lat = s["latency_%d" % rate]
        for p in ("p50", "p99"):
            ref = peer["latency_%d" % rate]["%s_ms" % p] if peer else None
            ratio = lat["%s_ms" % p] / ref if ref else None
            if p == "p99":
                target = at_most_ratio(0.80) if peer else at_most(10, "ms")
            else:
                target = None
            note = "offered %.0f/s" % lat["offered_per_s"]
            if lat["unfinished"]:
                note += ", %d unfinished: a lower bound" % lat["unfinished"]
            ctx.row(name, "latency %s at %d/s" % (p, rate), lat["%s_ms" % p], ref, ratio, target, "ms",
                    lat["load1"], note)
    worker_names = sorted(n for n in s["wakeups"] if n.startswith("worker"))
    ctx.row(name, "idle wake-ups/s, supervisor", s["wakeups"].get("supervisor"), unit="/s", load=s["idle_load1"])
    ctx.row(name, "idle wake-ups/s, worst worker", max(s["wakeups"][n] for n in worker_names),
            target=at_most(1, "/s"), unit="/s", load=s["idle_load1"])
    idle_limit, busy_limit = (3, None) if backend == "spool" else (6, 12)
    idle, busy = s["rss_idle_kb"], s["rss_busy_kb"]
    ctx.row(name, "RSS supervisor idle", idle["supervisor"] / MIB, target=at_most(6, "MiB"), unit="MiB",
            load=s["idle_load1"])
    ctx.row(name, "RSS supervisor busy", busy["supervisor"] / MIB, target=at_most(6, "MiB"), unit="MiB")
    ctx.row(name, "RSS worker idle (largest)", max(idle[n] for n in worker_names) / MIB,
            target=at_most(idle_limit, "MiB"), unit="MiB", load=s["idle_load1"])
    ctx.row(name, "RSS worker busy (largest)", busy["worker"] / MIB,
            target=at_most(busy_limit, "MiB") if busy_limit else None, unit="MiB")
    ctx.row(name, "restart after kill -9, slowest slot", max(s["restart_ms"]),
            target=at_most(150 + RESTART_DELAY_MS, "ms"), unit="ms", load=s["restart_load1"],
            note="new pid shown after %.0f ms" % max(s["respawn_ms"]))


def fmt(value, unit=""):
    if value is None:
        return "-"
    if isinstance(value, float):
        return ("%.2f" if abs(value) < 10 else "%.0f") % value
    return str(value)


def print_table(rows):
    head = ("config", "figure", "drover", "reference", "ratio", "target (issues 7, 9)", "met", "load1")
    lines = [head]
    for r in rows:
        met = "" if r["met"] is None else ("met" if r["met"] else "NOT MET")
        figure = "%s [%s]" % (r["figure"], r["unit"]) if r["unit"] else r["figure"]
        if r.get("note"):
            figure += " (%s)" % r["note"]
        lines.append((r["config"], figure,
                      fmt(r["drover"]), fmt(r["reference"]), fmt(r["ratio"]), r["target"], met, fmt(r["load1"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(out))


def parse_configs(text):
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        p, _, k = item.partition("x")
        out.append((int(p), int(k)))
    return out


# Row groups BENCH_ONLY can name: the results' backends.
GROUPS = ("spool", "kafka", "persistent", "persistent-node", "persistent-rss", "persistent-tmpfs", "persistent-kafka")


def selected_groups(spool_configs, kafka_configs, warm_configs, only):
    """The row groups this run produces: those its configurations ask for, narrowed to BENCH_ONLY's."""
    groups = []
    if spool_configs:
        groups.append("spool")
    if kafka_configs:
        groups.append("kafka")
    if warm_configs:
        groups += ["persistent", "persistent-node", "persistent-rss", "persistent-tmpfs"]
        if kafka_configs:
            groups.append("persistent-kafka")
    return [g for g in groups if not only or g in only]


def check_built(groups):
    missing = [p for p in (os.path.join(BUILD, "drover"), CEILING) if not os.access(p, os.X_OK)]
    if "persistent-node" in groups and not os.access(NODE, os.X_OK):
        missing.append(NODE)
    if {"kafka", "persistent-kafka"} & set(groups) and not os.access(MOCK_BROKER, os.X_OK):
        missing.append(MOCK_BROKER)
    return missing


def run_groups(ctx, groups, spool_configs, kafka_configs, warm_configs):
    for workers, k in spool_configs if "spool" in groups else ():
        bench_spool(ctx, workers, k)
    for workers, k in warm_configs if "persistent" in groups else ():
        bench_warm(ctx, workers, k)
    if "persistent-node" in groups:
        bench_node(ctx)
    if "persistent-rss" in groups:
        bench_rss(ctx)
    for workers, k in warm_configs if "persistent-tmpfs" in groups else ():
        bench_tmpfs(ctx, workers, k)
    if {"kafka", "persistent-kafka"} & set(groups):
        import kafka_harness  # reads drover's option table: after check_built
        ctx.mock = kafka_harness.MockBroker(ctx.workdir, [(STATUS_TOPIC, 3), (FAILED_TOPIC, 3)])
        ctx.kafka = KafkaSide(ctx.mock)
    for workers, k in kafka_configs if "kafka" in groups else ():
        bench_kafka(ctx, workers, k)
    for workers, k in warm_configs if "persistent-kafka" in groups else ():
        bench_warm_kafka(ctx, workers, k)


def main():
    scale = os.environ.get("BENCH_SCALE", "full")
    if scale not in SCALES:
        print("bench: BENCH_SCALE must be one of %s" % ", ".join(SCALES), file=sys.stderr)
        return 2
    spool_configs = parse_configs(os.environ.get("BENCH_SPOOL", "2x4,3x4"))
    kafka_configs = parse_configs(os.environ.get("BENCH_KAFKA", "2x4"))
    warm_configs = parse_configs(os.environ.get("BENCH_WARM", "2x4"))
    only = [g.strip() for g in os.environ.get("BENCH_ONLY", "").split(",") if g.strip()]
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        print("bench: BENCH_ONLY: unknown %s (allowed: %s)" % (", ".join(unknown), ", ".join(GROUPS)),
              file=sys.stderr)
        return 2
    groups = selected_groups(spool_configs, kafka_configs, warm_configs, only)
    missing = check_built(groups)
    if missing:
        print("bench: not built: %s (make bench builds them)" % ", ".join(missing), file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="bench-", dir=BUILD)
    ctx = Context(scale, workdir)
    meta = {"scale": scale, "spool_jobs": ctx.spool_jobs, "kafka_jobs": ctx.kafka_jobs, "pairs": ctx.pairs,
            "handler": HANDLER, "job_bytes": JOB_BYTES, "warm_jobs": ctx.warm_jobs, "node_jobs": ctx.node_jobs,
            "rss_jobs": ctx.rss_jobs, "tmpfs_jobs": ctx.tmpfs_jobs, "warm_kafka_jobs": ctx.warm_kafka_jobs,
            "persistent_handlers": [ECHO_HANDLER, TIMER_HANDLER], "spool_configs": spool_configs,
            "kafka_configs": kafka_configs, "warm_configs": warm_configs, "only": only, "groups": groups,
            "cpus": os.cpu_count(),
            "load1_at_start": load1(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build": BUILD}
    try:
        run_groups(ctx, groups, spool_configs, kafka_configs, warm_configs)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print("bench: %s (files kept in %s)" % (e, workdir), file=sys.stderr)
        return 1
    finally:
        if ctx.kafka:
            ctx.kafka.producer.flush(5)
            ctx.kafka.producer = None  # its threads end before the mock goes, which would be logged
        if ctx.mock:
            ctx.mock.stop()
    meta["seconds"] = time.monotonic() - ctx.t0
    report = {"meta": meta, "rows": ctx.rows, "results": ctx.results}
    path = os.environ.get("BENCH_JSON") or os.path.join(BUILD, "bench.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.rename(path + ".tmp", path)
    print()
    print_table(ctx.rows)
    print("\n%s scale, %d pair(s), %.0f s%s; JSON: %s" % (scale, ctx.pairs, meta["seconds"],
          " (over the 7-minute budget: lower BENCH_JOBS, BENCH_PAIRS or BENCH_RSS_JOBS)"
          if meta["seconds"] > 420 else "", path))
    if os.environ.get("BENCH_KEEP"):
        print("files kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
