"""
kafka_harness: what the Kafka integration tests need besides harness.py: a
mock Kafka cluster in its own process (build/support/mock_broker, librdkafka's
rdkafka_mock), kcat as the independent client that produces jobs and reads the
outcome topics, a fast shell handler, and the checks every scenario repeats
(every id has an outcome, committed offsets never run ahead of outcomes).

Every wait has a deadline; every process started here is killed by pid.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

from harness import BUILD, HarnessError, option_default, wait_until

MOCK_BROKER = BUILD / "support" / "mock_broker"
KCAT = shutil.which("kcat") or "/usr/bin/kcat"

# The topics drover uses when the configuration names none: its defaults, from --print-options.
REQUESTS = option_default("kafka", "requests_topic")
STATUS = option_default("kafka", "status_topic")
COMPLETE = option_default("kafka", "complete_topic")
FAILED = option_default("kafka", "failed_topic")
GROUP = "drover-test"

# Small timeouts so that rebalances take seconds (the mock waits session.timeout.ms per rebalance).
TEST_LIBRDKAFKA = {
    "session.timeout.ms": 4000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 5,
    "statistics.interval.ms": 1000,
    "auto.commit.interval.ms": 200,
}

FAST_HANDLER = r"""#!/bin/sh
# Test handler: records each run, sleeps "sleep" seconds if the job says so, prints a result.
job=$(cat)
: > "$KRUN_DIR/$DROVER_JOB_ID.$$"
case "$job" in
*'"sleep":'*) t=${job#*\"sleep\":}; t=${t%%[,\}]*}; sleep "$t" ;;
esac
printf '{"done":"%s","attempt":%s}\n' "$DROVER_JOB_ID" "$DROVER_ATTEMPT"
"""


class MockBroker:
    """mock_broker TOPIC:PARTITIONS... in its own process, driven over its stdin (also the bench's)."""

    def __init__(self, workdir, topics, brokers=1):
        if not MOCK_BROKER.exists():
            raise HarnessError("not built: %s" % MOCK_BROKER)
        self.stderr_path = Path(workdir) / "mock_broker.stderr"
        self._stderr = open(self.stderr_path, "ab")
        args = [str(MOCK_BROKER), "-n", str(brokers)] + ["%s:%d" % t for t in topics]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True)
        self._buf = b""
        self.bootstrap = self._read_line(10)
        if ":" not in self.bootstrap:
            raise HarnessError("mock_broker printed %r instead of its address" % self.bootstrap)

    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError("mock_broker did not answer within %.0fs" % timeout)
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise HarnessError("mock_broker exited (%s): %s" % (self.proc.poll(), self.stderr()))
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def command(self, line, timeout=15):
        """Sends one command; returns the text after "ok", raises on "error"."""
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if not answer.startswith("ok"):
            raise HarnessError("mock_broker %r: %s" % (line, answer))
        return answer[2:].strip()

    def down(self, broker="all"):
        self.command("down %s" % broker)

    def up(self, broker="all"):
        self.command("up %s" % broker)

    def committed(self, topic=REQUESTS, group=GROUP):
        """{partition: committed offset} (-1001 = nothing committed)."""
        return {int(p): int(o) for p, o in (kv.split("=") for kv in self.command("committed %s %s" % (group, topic)).split())}

    def high_watermarks(self, topic=REQUESTS):
        out = {}
        for kv in self.command("watermarks %s" % topic).split():
            p, lohi = kv.split("=")
            out[int(p)] = int(lohi.split(":")[1])
        return out

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._stderr.close()


def default_topics(requests_partitions=6):
    return [(REQUESTS, requests_partitions), (STATUS, 3), (COMPLETE, 3), (FAILED, 3)]


# ---- kcat: the independent client ------------------------------------------------

def kcat_produce_lines(bootstrap, topic, records, timeout=60):
    """Produces (key, value) text records with kcat (key and value must not hold a tab or newline)."""
    data = "".join("%s\t%s\n" % (k, v) for k, v in records)
    r = subprocess.run([KCAT, "-b", bootstrap, "-P", "-t", topic, "-K", "\t", "-X", "linger.ms=5"],
                       input=data.encode(), capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError("kcat produce failed: %s" % r.stderr.decode(errors="replace"))


def kcat_produce_file(bootstrap, topic, path, key=None, timeout=30):
    """Produces the whole file as one message (binary and large payloads)."""
    args = [KCAT, "-b", bootstrap, "-P", "-t", topic, "-X", "message.max.bytes=4000000"]
    if key is not None:
        args += ["-k", key]
    r = subprocess.run(args + [str(path)], capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError("kcat produce failed: %s" % r.stderr.decode(errors="replace"))


def kcat_consume(bootstrap, topic, timeout=30):
    """Every message of topic now: list of dicts with key, payload, partition, offset."""
    r = subprocess.run([KCAT, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-J",
                        "-X", "fetch.wait.max.ms=5", "-X", "fetch.max.bytes=8000000"],
                       capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError("kcat consume of %s failed: %s" % (topic, r.stderr.decode(errors="replace")))
    out = []
    for line in r.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


def outcome_docs(bootstrap, topic):
    """[(id, document)] from an outcome topic, in topic order per partition."""
    docs = []
    for m in kcat_consume(bootstrap, topic):
        doc = json.loads(m["payload"])
        if doc.get("id") != m.get("key"):
            raise HarnessError("outcome keyed %r carries id %r" % (m.get("key"), doc.get("id")))
        docs.append((doc["id"], doc))
    return docs


def wait_outcomes(bootstrap, ids, timeout, drover=None):
    """Waits until every id is on the complete or failed topic; returns (complete ids Counter, failed docs)."""
    ids = set(ids)
    state = {}

    def done():
        complete = Counter(i for i, _ in outcome_docs(bootstrap, COMPLETE))
        failed = dict(outcome_docs(bootstrap, FAILED))
        state["missing"] = ids - set(complete) - set(failed)
        return (complete, failed) if not state["missing"] else None

    def detail():
        missing = sorted(state.get("missing", ()))
        text = "missing %d: %s" % (len(missing), missing[:10])
        return text + ("\n" + drover.diagnostics() if drover else "")
    return wait_until(done, timeout, "outcomes of %d jobs" % len(ids), interval=0.3, on_timeout=detail)


def request_offsets(bootstrap, topic=REQUESTS):
    """{partition: [(offset, key)]} of the requests topic."""
    out = defaultdict(list)
    for m in kcat_consume(bootstrap, topic):
        out[m["partition"]].append((m["offset"], m.get("key")))
    return out


def assert_no_commit_ahead(mock, bootstrap, requests=None):
    """Every offset below a partition's committed offset has an outcome event (read after the commit)."""
    committed = mock.committed()
    finished = {i for i, _ in outcome_docs(bootstrap, COMPLETE)} | {i for i, _ in outcome_docs(bootstrap, FAILED)}
    requests = requests or request_offsets(bootstrap)
    for p, c in committed.items():
        for offset, key in requests.get(p, []):
            if 0 <= offset < c and key not in finished:
                raise HarnessError("partition %d committed at %d but job %s (offset %d) has no outcome"
                                   % (p, c, key, offset))
    return committed


def wait_committed_to_end(mock, timeout, drover=None):
    """Waits until the group's committed offset of every partition is its high watermark."""
    def reached():
        c, h = mock.committed(), mock.high_watermarks()
        return c if all(c.get(p, -1) == hw for p, hw in h.items()) else None
    return wait_until(reached, timeout, "committed offsets at the end of every partition", interval=0.3,
                      on_timeout=lambda: "committed %s, end %s%s" % (
                          mock.committed(), mock.high_watermarks(),
                          ("\n" + drover.diagnostics()) if drover else ""))


def status_states(bootstrap):
    """{id: [state, ...]} from the status topic, in order."""
    states = defaultdict(list)
    for i, doc in outcome_docs(bootstrap, STATUS):
        states[i].append(doc["state"])
    return states


# ---- drover with the Kafka backend -----------------------------------------------

def write_fast_handler(workdir):
    path = Path(workdir) / "fast_handler.sh"
    path.write_text(FAST_HANDLER)
    path.chmod(0o755)
    runs = Path(workdir) / "runs"
    runs.mkdir(exist_ok=True)
    return path, runs


def run_counts(runs_dir):
    """{id: number of handler runs} from the fast handler's records."""
    return Counter(name.rsplit(".", 1)[0] for name in os.listdir(runs_dir))


def kafka_config(bootstrap, workers=3, max_concurrent=4, handler=None, runs_dir=None, librdkafka=None,
                 kafka=None, jobs=None, supervisor=None):
    cfg = {
        "supervisor": {"workers": workers, "log_level": "info", "shutdown_timeout_ms": 5000},
        "jobs": {"max_concurrent": max_concurrent, "timeout_ms": 60000, "retry_delay_ms": 50},
        "queue": {"backend": "kafka"},
        "kafka": {"brokers": bootstrap, "group_id": GROUP, "static_membership": False},
        "librdkafka": dict(TEST_LIBRDKAFKA),
    }
    if handler is not None:
        cfg["jobs"]["handler"] = str(handler)
    if runs_dir is not None:
        cfg["jobs"]["env.KRUN_DIR"] = str(runs_dir)
    for section, extra in (("librdkafka", librdkafka), ("kafka", kafka), ("jobs", jobs), ("supervisor", supervisor)):
        cfg[section].update(extra or {})
    return cfg


def kafka_partitions(stats):
    """{slot: [partition, ...]} of the running workers, from stats."""
    out = {}
    for w in stats["workers"]:
        if w.get("pid"):
            out[w["slot"]] = sorted(p["partition"] for p in (w.get("kafka") or {}).get("partitions", []))
    return out


def wait_group_stable(d, workers, partitions=6, timeout=40):
    """Waits until `workers` workers together hold every partition once, each at least one."""
    def stable():
        parts = kafka_partitions(d.stats())
        held = sorted(p for ps in parts.values() for p in ps)
        ok = len(parts) == workers and all(parts.values()) and held == list(range(partitions))
        return parts if ok else None
    return d.wait_until(stable, timeout, "%d workers sharing %d partitions" % (workers, partitions), interval=0.2)


def rebalance_lines(d):
    return [l for l in d.log_text().splitlines() if "kafka: assigned" in l or "kafka: revoking" in l
            or "kafka: lost" in l]


def make_jobs(n, prefix="j", **fields):
    """[(id, json)] with ids prefix-00000..."""
    out = []
    for i in range(n):
        job_id = "%s-%05d" % (prefix, i)
        out.append((job_id, json.dumps(dict(fields, id=job_id), separators=(",", ":"))))
    return out
