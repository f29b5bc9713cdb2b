"""
One cgroup v2 per job attempt (issue 10 item 6): where drover is given a
writable cgroup v2 directory, each attempt's handler runs in its own child
cgroup; at the end cgroup.kill ends everything it started, even a descendant
that left the process group and cleared its environment (which neither the
group kill nor the orphan sweep can find). Controllers the hierarchy lacks are
reported once at start; without a usable cgroup drover says so once and falls
back to process groups.

The cgroup2 hierarchy is found from /proc/self/mountinfo like drover does (the
test machines mount it at /sys/fs/cgroup/unified, with cgroup.kill but no
memory or pids controller: those live on cgroup v1 there). Needs root.
"""

import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import PYTHON, REPO, proc_alive, wait_until


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - cgroup2 " in line:
                return Path(line.split()[4])
    return None


def remove_tree(path):
    """Removes the test's cgroup tree bottom-up, killing (by pid) what is still inside: only processes
    this test started can be there."""
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [path]:
        try:
            for pid in (sub / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
        try:
            wait_until(lambda: not (sub / "cgroup.procs").read_text().strip(), 5, "%s to empty" % sub)
            sub.rmdir()
        except (OSError, AssertionError):
            pass


@pytest.fixture
def cgroup_dir():
    """A fresh cgroup under the cgroup2 mount, removed afterwards."""
    mount = cgroup2_mount()
    if os.geteuid() != 0 or mount is None:
        pytest.skip("needs root and a cgroup2 mount")
    path = mount / ("drover-test-%s" % uuid.uuid4().hex[:12])
    path.mkdir()
    yield path
    remove_tree(path)


def instance_dirs(parent, pid=None):
    """drover's per-instance directories in parent ("drover.<supervisor pid>.<start time>"), of pid or any."""
    prefix = "drover.%d." % pid if pid is not None else "drover."
    return sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith(prefix))


def instance_dir(parent, pid):
    found = instance_dirs(parent, pid)
    assert len(found) == 1, (parent, pid, found)
    return found[0]


def start_ticks(pid):
    return int(Path("/proc/%d/stat" % pid).read_text().rpartition(")")[2].split()[19])


def job_cgroups(cgroup):
    """The attempts' cgroups under every drover instance directory of cgroup."""
    return sorted(p.name for inst in instance_dirs(cgroup) for p in inst.iterdir() if p.is_dir())


def child_dirs(path):
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def test_escapee_is_ended_by_cgroup_kill(cgroup_dir, drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"cgroup_root": str(cgroup_dir), "timeout_ms": 3000, "kill_grace_ms": 200,
                                "max_attempts": 1}})
    layout = "each job attempt runs in its own cgroup under %s/drover.%d.%d" % (cgroup_dir, d.pid, start_ticks(d.pid))
    d.wait_until(lambda: layout in d.log_text(), 10, "the cgroup layout in the log")
    pid_file = d.tmp / "escapee.pid"
    d.submit([{"id": "escaper", "escapee": str(pid_file), "sleep_ms": 30000}])
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    # It left the job's process group and has no DROVER_ATTEMPT_TOKEN: only its cgroup still knows it.
    assert os.getpgid(escapee) == escapee
    own = Path("/proc/%d/cgroup" % escapee).read_text()
    assert "/%s/drover.%d." % (cgroup_dir.name, d.pid) in own, own
    assert len(job_cgroups(cgroup_dir)) == 1, job_cgroups(cgroup_dir)

    done, failed = d.wait_outcomes(["escaper"], 30)
    assert failed["escaper"]["error"]["reason"] == "timeout", failed
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be killed with its cgroup" % escapee)
    d.wait_until(lambda: job_cgroups(cgroup_dir) == [], 10, "the attempt's cgroup to be removed")


def test_missing_controllers_are_reported_once_and_jobs_run(cgroup_dir, drover):
    offered = (cgroup_dir.parent / "cgroup.controllers").read_text().split()
    d = drover(config={"supervisor": {"workers": 2},
                       "jobs": {"cgroup_root": str(cgroup_dir), "pids_max": 16, "memory_max": "64M",
                                "max_attempts": 1}})
    out = d.tmp / "bomb.json"
    d.submit([{"id": "plain"}, {"id": "bomb", "fork_bomb": str(out)}])
    done, failed = d.wait_outcomes(["plain", "bomb"], 60)
    assert "plain" in done, failed
    log = d.log_text()
    for controller, key in (("memory", "memory_max"), ("pids", "pids_max")):
        warning = "[jobs] %s is set but the %s controller is not available" % (key, controller)
        if controller in offered:
            assert warning not in log, log[-2000:]
        elif controller == "memory" and v1_memory_dir() is not None:
            # The v1 memory controller takes over (see the memory_max tests below): said once, no warning.
            assert warning not in log, log[-2000:]
            assert log.count("memory_max is enforced by the cgroup v1 memory controller") == 1, log[-3000:]
        else:
            assert log.count(warning) == 1, log[-3000:]
    bomb = json.loads(out.read_text())
    if "pids" in offered:
        # pids.max = 16 counts the handler itself: the bomb's fork fails long before its cap.
        assert bomb["error"] and bomb["forked"] < 16, bomb
        assert "bomb" in done, failed
    else:
        assert bomb == {"forked": 64, "error": None}, bomb  # nothing limits it here: it stops at its cap
        assert failed["bomb"]["error"]["reason"] == "exit_code", failed
    d.wait_until(lambda: job_cgroups(cgroup_dir) == [], 15, "every attempt's cgroup to be removed")


def test_without_a_usable_cgroup_drover_falls_back_to_process_groups(drover):
    d = drover(config={"supervisor": {"workers": 2}, "jobs": {"cgroup_root": "/tmp"}})
    not_a_cgroup = "/tmp is not a cgroup v2 directory; jobs are contained by process groups only"
    ids = d.submit([{"id": "fallback-%d" % i} for i in range(3)])
    done, failed = d.wait_outcomes(ids, 30)
    assert set(done) == set(ids), failed
    assert d.log_text().count(not_a_cgroup) == 1, d.log_text()[-2000:]


def test_own_delegated_cgroup_keeps_drover_in_a_leaf(cgroup_dir, drover, monkeypatch):
    """drover started inside a writable cgroup (as under systemd's Delegate=yes) uses it: the supervisor
    and its workers move into <own>/supervisor, the jobs go under <own>/drover.<pid>.<start time>; when it
    stops, it moves back and leaves the cgroup as it found it (no child cgroup, no controller turned on)."""
    subtree_before = (cgroup_dir / "cgroup.subtree_control").read_text()
    real_popen = subprocess.Popen

    def popen_in_cgroup(*args, **kwargs):
        kwargs["preexec_fn"] = lambda: (cgroup_dir / "cgroup.procs").write_text("0")
        return real_popen(*args, **kwargs)
    monkeypatch.setattr(subprocess, "Popen", popen_in_cgroup)
    d = drover(config={"supervisor": {"workers": 2}}, start=False)
    d.start(wait=False)
    monkeypatch.undo()
    d.wait_ready()
    d.wait_until(lambda: "each job attempt runs in its own cgroup under %s/drover.%d." % (cgroup_dir, d.pid)
                 in d.log_text(), 10, "the cgroup layout in the log")
    assert (cgroup_dir / "cgroup.procs").read_text().split() == [], "no process may stay in a cgroup with children"
    leaf = set(int(p) for p in (cgroup_dir / "supervisor" / "cgroup.procs").read_text().split())
    workers = d.wait_workers(2)
    assert d.pid in leaf, (d.pid, leaf)
    assert {w["pid"] for w in workers["workers"]} <= leaf, (workers, leaf)
    record = d.tmp / "cgroup.txt"
    d.submit([{"id": "inside", "cgroup_dump": str(record)}])
    done, failed = d.wait_outcomes(["inside"], 20)
    assert "inside" in done, failed
    assert re.search(r"^0::/%s/drover\.%d\.\d+/%d\.\d+\.1$" % (re.escape(cgroup_dir.name), d.pid, d.pid),
                     record.read_text(), re.M), record.read_text()
    d.wait_until(lambda: job_cgroups(cgroup_dir) == [], 10, "the attempt's cgroup to be removed")
    assert d.stop() == 0
    assert child_dirs(cgroup_dir) == [], "drover left cgroups behind"
    assert (cgroup_dir / "cgroup.subtree_control").read_text() == subtree_before


def test_root_cgroup_is_not_taken_over(drover):
    with open("/proc/self/cgroup") as f:
        own = [line.strip() for line in f if line.startswith("0::")]
    if own != ["0::/"] or cgroup2_mount() is None:
        pytest.skip("the test runner is not in the root cgroup of a cgroup2 mount")
    d = drover(config={"supervisor": {"workers": 1}})
    ids = d.submit([{"id": "at-root"}])
    done, failed = d.wait_outcomes(ids, 20)
    assert "at-root" in done, failed
    note = "drover runs in the root cgroup of %s, which is not delegated; jobs are contained by process groups" \
        % cgroup2_mount()
    assert d.log_text().count(note) == 1, d.log_text()[-2000:]


def test_escapee_of_a_killed_worker_is_ended(cgroup_dir, drover):
    """kill -9 of a worker: its handler dies with it (PDEATHSIG), and the supervisor ends the cgroups of
    the worker's attempts, so an escapee with a cleared environment does not outlive it either."""
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"cgroup_root": str(cgroup_dir)}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    pid_file = d.tmp / "escapee.pid"
    d.submit([{"id": "orphaned", "escapee": str(pid_file), "sleep_ms": 30000}])
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    attempt = Path("/proc/%d/cgroup" % escapee).read_text().strip().rsplit("/", 1)[1]
    assert attempt in job_cgroups(cgroup_dir)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be ended with its cgroup" % escapee)
    d.wait_until(lambda: "left by a worker that is gone" in d.log_text(), 10, "the supervisor's note")
    d.wait_until(lambda: [w["pid"] for w in d.stats()["workers"] if w.get("pid")] not in ([], [worker]), 15,
                 "the replacement worker")
    d.wait_until(lambda: attempt not in job_cgroups(cgroup_dir), 10, "the dead worker's attempt cgroup to go")


def test_stop_leaves_no_drover_cgroup_behind(cgroup_dir, drover):
    """TERM with a job running and an escapee in its cgroup: everything drover made under cgroup_root goes,
    children first, and the controllers it turned on there are off again."""
    subtree_before = (cgroup_dir / "cgroup.subtree_control").read_text()
    d = drover(config={"supervisor": {"workers": 2, "shutdown_timeout_ms": 500},
                       "jobs": {"cgroup_root": str(cgroup_dir), "kill_grace_ms": 100}})
    ids = d.submit([{"id": "quick-%d" % i} for i in range(4)])
    done, failed = d.wait_outcomes(ids, 30)
    assert set(done) == set(ids), failed
    pid_file = d.tmp / "escapee.pid"
    d.submit([{"id": "running", "escapee": str(pid_file), "sleep_ms": 30000}])
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    assert len(instance_dirs(cgroup_dir, d.pid)) == 1
    assert d.stop() == 0
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be ended" % escapee)
    assert child_dirs(cgroup_dir) == [], "drover left cgroups behind"
    assert (cgroup_dir / "cgroup.subtree_control").read_text() == subtree_before


def test_stale_instance_of_a_killed_supervisor_is_swept_at_start(cgroup_dir, drover):
    """kill -9 of the supervisor leaves its instance directory (and an escapee in it); the next start ends
    and removes it. Only a dead instance's directory is touched: one named after a live process with its
    start time (another instance) and any other name are left alone; a live pid with another start time
    (the pid was reused) is dead."""
    me = os.getpid()
    live, other = cgroup_dir / ("drover.%d.%d" % (me, start_ticks(me))), cgroup_dir / "not-drovers"
    reused = cgroup_dir / ("drover.%d.%d" % (me, start_ticks(me) + 1))
    for path in (live, other, reused):
        path.mkdir()
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"cgroup_root": str(cgroup_dir)}})
    first = d.pid
    old = instance_dir(cgroup_dir, first)
    pid_file = d.tmp / "escapee.pid"
    d.submit([{"id": "stranded", "escapee": str(pid_file), "sleep_ms": 60000}], record=False)
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    d.signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    assert old.exists() and proc_alive(escapee), "nothing can clean up after kill -9 of the supervisor"
    d.start()
    assert d.pid != first
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be ended by the sweep" % escapee)
    d.wait_until(lambda: not old.exists() and not reused.exists(), 10, "the dead instances' cgroups removed")
    assert live.exists() and other.exists(), "a live instance's cgroup or another name was touched"
    assert d.log_text().count("left by a drover instance that is gone") == 2, d.log_text()[-2000:]
    assert len(instance_dirs(cgroup_dir, d.pid)) == 1


# ---- memory_max on the cgroup v1 memory controller ---------------------------------------------------------
# Where the cgroup2 hierarchy has no memory controller (this machine: cgroup2 at /sys/fs/cgroup/unified, memory
# on v1 at /sys/fs/cgroup/memory), each attempt gets <own memory cgroup>/drover.<pid>.<start>/<attempt token>.

MIB = 1 << 20


def v1_memory_dir():
    """The test runner's own cgroup v1 memory cgroup, found as drover finds it (drover inherits it); None
    when there is no v1 memory hierarchy."""
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields = tail.split()
            if fields and fields[0] == "cgroup" and "memory" in fields[2].split(","):
                root, mount = head.split()[3], head.split()[4]
                break
    if mount is None:
        return None
    with open("/proc/self/cgroup") as f:
        own = next((line.strip().split(":", 2)[2] for line in f if "memory" in line.split(":")[1].split(",")), None)
    if own is None:
        return None
    if root != "/" and own.startswith(root):
        own = own[len(root):]
    return Path(mount + (own if own != "/" else ""))


def v2_has_memory():
    mount = cgroup2_mount()
    return mount is not None and "memory" in (mount / "cgroup.controllers").read_text().split()


@pytest.fixture
def memcg_v1():
    """drover's own v1 memory cgroup (its instance directories go there); skips where v1 is not what would
    enforce memory_max."""
    own = v1_memory_dir()
    if os.geteuid() != 0 or own is None or not os.access(own / "cgroup.procs", os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 memory cgroup")
    if v2_has_memory():
        pytest.skip("the cgroup2 hierarchy has the memory controller: v2 enforces memory_max here")
    return own


def v1_memory_line(dump):
    return next(line.split(":", 2)[2] for line in dump.splitlines() if "memory" in line.split(":")[1].split(","))


def test_handler_over_memory_max_is_killed_with_reason_memory_limit(memcg_v1, drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"memory_max": "64M", "max_attempts": 2, "retry_delay_ms": 100}})
    d.wait_until(lambda: "memory_max is enforced by the cgroup v1 memory controller under %s/drover.%d.%d"
                 % (memcg_v1, d.pid, start_ticks(d.pid)) in d.log_text(), 10,
                 "which hierarchy enforces memory_max, in the log")
    dump, pid_file = d.tmp / "cgroup.txt", d.tmp / "hog.pid"
    d.submit([{"id": "hog", "touch_mb": 256, "cgroup_dump": str(dump), "pid_file": str(pid_file),
               "sleep_ms": 30000}])
    done, failed = d.wait_outcomes(["hog"], 60)
    assert "hog" in failed, done
    assert failed["hog"]["attempts"] == 2, failed["hog"]  # retried like any failure
    assert "attempt 1 failed (handler went over memory_max" in d.log_text(), d.log_text()[-2000:]
    error = failed["hog"]["error"]
    assert error["reason"] == "memory_limit", failed["hog"]
    assert "memory_max (%d bytes)" % (64 * MIB) in error["message"], error
    peak = failed["hog"]["peak_memory_bytes"]
    assert 32 * MIB < peak <= 64 * MIB, failed["hog"]
    assert "peak %d bytes" % peak in error["message"], error
    # The last attempt ran in its own v1 memory cgroup, named after its attempt token; the handler and the
    # cgroups of both attempts are gone.
    cgroup = v1_memory_line(dump.read_text())
    assert re.search(r"/drover\.%d\.\d+/%d\.\d+\.2$" % (d.pid, d.pid), cgroup), cgroup
    wait_until(lambda: not proc_alive(int(pid_file.read_text())), 10, "the handler to be gone")
    d.wait_until(lambda: child_dirs(instance_dir(memcg_v1, d.pid)) == [], 10,
                 "the attempts' memory cgroups to be removed")


def test_handler_under_memory_max_completes_with_its_peak(memcg_v1, drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"memory_max": "256M", "max_attempts": 1}})
    d.submit([{"id": "modest", "touch_mb": 16}])
    done, failed = d.wait_outcomes(["modest"], 30)
    assert "modest" in done, failed
    peak = done["modest"]["peak_memory_bytes"]
    assert 16 * MIB < peak <= 256 * MIB, done["modest"]
    assert child_dirs(instance_dir(memcg_v1, d.pid)) == [], "a memory cgroup is left"


def test_without_memory_max_no_v1_memory_cgroup_is_made(memcg_v1, drover):
    d = drover(config={"supervisor": {"workers": 1}})
    dump = d.tmp / "cgroup.txt"
    d.submit([{"id": "unbounded", "cgroup_dump": str(dump)}])
    done, failed = d.wait_outcomes(["unbounded"], 20)
    assert "unbounded" in done, failed
    assert "/drover." not in v1_memory_line(dump.read_text()), dump.read_text()
    assert "peak_memory_bytes" not in done["unbounded"], done["unbounded"]
    assert "memory_max is enforced" not in d.log_text()


def test_stale_memory_cgroups_are_swept_at_start_and_none_left_at_stop(memcg_v1, drover):
    """Only an instance directory whose supervisor is gone (no process with its pid and start time) is
    touched: the processes in it are killed, its children removed, then it; a live one's is left alone.
    A stop removes the instance's own."""
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()  # its pid is not running now (reaped): a supervisor that died
    me = os.getpid()
    stale, live = memcg_v1 / ("drover.%d.1" % gone.pid), memcg_v1 / ("drover.%d.%d" % (me, start_ticks(me)))
    empty, busy = stale / ("%d.1.1" % gone.pid), stale / ("%d.1.2" % gone.pid)
    for path in (stale, empty, busy, live):
        path.mkdir()
    sleeper = subprocess.Popen(["/bin/sleep", "300"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        d = drover(config={"supervisor": {"workers": 1}, "jobs": {"memory_max": "64M"}})
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        d.wait_until(lambda: not stale.exists(), 10, "the dead instance's cgroups removed")
        assert live.exists(), "a live instance's cgroup was touched"
        assert d.log_text().count("left by a drover instance that is gone") == 1, d.log_text()[-2000:]
        ids = d.submit([{"id": "bounded-%d" % i, "touch_mb": 4} for i in range(3)])
        done, failed = d.wait_outcomes(ids, 30)
        assert set(done) == set(ids), failed
        ours = instance_dir(memcg_v1, d.pid)
        assert d.stop() == 0
        assert not ours.exists(), "the instance's memory cgroup is left behind"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for path in (empty, busy, stale, live):
            if path.exists():
                path.rmdir()


def test_memory_cgroup_of_a_killed_worker_is_ended(memcg_v1, drover):
    """kill -9 of a worker: the supervisor ends its attempts' v1 memory cgroups too, and with them an escapee
    with a cleared environment (here, without a usable cgroup v2, only that memory cgroup knows it)."""
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"memory_max": "128M"}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    pid_file, dump = d.tmp / "escapee.pid", d.tmp / "cgroup.txt"
    d.submit([{"id": "orphaned", "escapee": str(pid_file), "cgroup_dump": str(dump), "sleep_ms": 30000}])
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    cgroup = instance_dir(memcg_v1, d.pid) / v1_memory_line(dump.read_text()).rsplit("/", 1)[1]
    assert str(escapee) in (cgroup / "cgroup.procs").read_text().split()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be ended with its memory cgroup" % escapee)
    d.wait_until(lambda: not cgroup.exists(), 10, "the attempt's memory cgroup to be removed")
    assert "memcg: ending %s, left by a worker that is gone" % cgroup in d.log_text()


# ---- persistent handler processes: a cgroup per process ------------------------------------------------------

WARM_HANDLER = REPO / "tests" / "handlers" / "warmhandler.py"


def warm_jobs(**jobs):
    return dict({"handler": "%s %s" % (PYTHON, WARM_HANDLER), "handler_mode": "persistent", "max_concurrent": 1},
                **jobs)


def handler_pids(d):
    return [h["pid"] for w in d.stats()["workers"] for h in w.get("handlers", []) if h.get("pid")]


def cgroup_lines(pid):
    """{"0": v2 path, "memory": v1 memory path} of pid."""
    out = {}
    for line in Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        num, controllers, path = line.split(":", 2)
        out["0" if num == "0" else controllers] = path
    return out


def token_of(pid):
    env = Path("/proc/%d/environ" % pid).read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"DROVER_ATTEMPT_TOKEN="))


def test_persistent_process_runs_in_a_cgroup_of_its_own_with_the_limits(cgroup_dir, drover):
    """The cgroup is the process's (named after its token), not a job's: memory_max bounds the process (on
    v2's memory.max where the hierarchy has it, else the v1 memory controller here)."""
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": warm_jobs(cgroup_root=str(cgroup_dir), memory_max="96M", max_concurrent=2,
                                         handler_concurrency=2)})
    d.wait_until(lambda: len(handler_pids(d)) == 1, 20, "the persistent process")
    pid = handler_pids(d)[0]
    token = token_of(pid)
    lines = cgroup_lines(pid)
    v2 = instance_dir(cgroup_dir, d.pid) / token
    assert lines["0"].endswith("/%s/%s/%s" % (cgroup_dir.name, v2.parent.name, token)), lines
    if v2_has_memory():
        assert (v2 / "memory.max").read_text().strip() == str(96 * MIB)
    else:
        own = v1_memory_dir()
        assert own is not None and lines["memory"].endswith("/drover.%d.%d/%s" % (d.pid, start_ticks(d.pid), token))
        v1 = instance_dir(own, d.pid) / token
        assert int((v1 / "memory.limit_in_bytes").read_text()) == 96 * MIB
    ids = d.submit([{"id": "served-%d" % i, "sleep_ms": 20} for i in range(4)])
    done, failed = d.wait_outcomes(ids, 30)
    assert set(done) == set(ids), failed
    assert all("peak_memory_bytes" not in done[i] for i in ids), "a shared process has no per-job peak"
    assert d.stop() == 0
    assert not v2.exists() and child_dirs(cgroup_dir) == []


def test_persistent_process_over_memory_max_fails_its_job_with_memory_limit(memcg_v1, drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": warm_jobs(memory_max="64M", max_attempts=2, retry_delay_ms=100)})
    d.wait_until(lambda: len(handler_pids(d)) == 1, 20, "the persistent process")
    first = handler_pids(d)[0]
    d.submit([{"id": "greedy", "grow_mb": 256, "grow_once": str(d.tmp / "grown")}])
    done, failed = d.wait_outcomes(["greedy"], 60)
    assert "greedy" in done, failed  # retried; the next process served it
    assert done["greedy"]["attempts"] == 2, done["greedy"]
    assert done["greedy"]["result"]["pid"] != first
    log = d.log_text()
    assert "handler process %d: the OOM killer acted in its cgroup (memory_max = %d bytes" % (first, 64 * MIB) \
        in log, log[-3000:]
    assert "attempt 1 failed (handler went over memory_max (%d bytes)" % (64 * MIB) in log, log[-3000:]
    assert "handler process %d was killed by the OOM killer over memory_max" % first in log, log[-3000:]
    w = [w for w in d.stats()["workers"] if w["slot"] == 0][0]
    assert w["handler_restarts"] == 1, w


def test_persistent_process_over_memory_max_fails_with_memory_limit_when_out_of_attempts(memcg_v1, drover):
    d = drover(config={"supervisor": {"workers": 1}, "jobs": warm_jobs(memory_max="64M", max_attempts=1)})
    d.submit([{"id": "greedy", "grow_mb": 256}])
    done, failed = d.wait_outcomes(["greedy"], 60)
    error = failed["greedy"]["error"]
    assert error["reason"] == "memory_limit", failed["greedy"]
    assert "memory_max (%d bytes)" % (64 * MIB) in error["message"], error
    assert "peak_memory_bytes" not in failed["greedy"], failed["greedy"]


def test_escapee_of_a_persistent_process_is_ended_when_the_process_is_replaced(cgroup_dir, drover):
    """A descendant that left the process group and cleared its environment: neither the group kill nor the
    token sweep finds it; the process's cgroup.kill does, when the process is recycled (handler_max_jobs)."""
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": warm_jobs(cgroup_root=str(cgroup_dir), handler_max_jobs=2)})
    d.wait_until(lambda: len(handler_pids(d)) == 1, 20, "the persistent process")
    first = handler_pids(d)[0]
    pid_file = d.tmp / "escapee.pid"
    d.submit([{"id": "leaver", "escapee": str(pid_file)}])
    done, failed = d.wait_outcomes(["leaver"], 30)
    assert "leaver" in done, failed
    d.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the escapee's pid")
    escapee = int(pid_file.read_text())
    assert os.getpgid(escapee) == escapee and proc_alive(first)
    assert cgroup_lines(escapee)["0"] == cgroup_lines(first)["0"], "the escapee is in the process's cgroup"
    d.submit([{"id": "last-of-first"}])  # its second job: then it is recycled
    done, failed = d.wait_outcomes(["last-of-first"], 30)
    assert "last-of-first" in done, failed
    wait_until(lambda: not proc_alive(first), 15, "the recycled process to exit")
    wait_until(lambda: not proc_alive(escapee), 10, "the escapee (pid %d) to be ended with its cgroup" % escapee)
    d.wait_until(lambda: len(handler_pids(d)) == 1 and handler_pids(d)[0] != first, 20, "the replacement")


def test_upgrade_keeps_the_instance_directory_and_a_stop_still_clears_it(cgroup_dir, drover):
    """USR2 re-executes the supervisor with its pid and start time: the same instance directory goes on
    (the new image does not sweep it as a dead instance's), and the stop after it still removes it."""
    d = drover(config={"supervisor": {"workers": 1}, "jobs": {"cgroup_root": str(cgroup_dir)}})
    ours = instance_dir(cgroup_dir, d.pid)
    old_worker = d.wait_workers(1)["workers"][0]["pid"]
    d.signal(signal.SIGUSR2)
    d.wait_until(lambda: "upgraded to drover" in d.log_text(), 30, "the re-executed supervisor")
    d.wait_until(lambda: [w.get("pid") for w in d.stats()["workers"]] not in ([old_worker], [None], []), 60,
                 "the worker replaced")
    ids = d.submit([{"id": "after-upgrade-%d" % i} for i in range(3)])
    done, failed = d.wait_outcomes(ids, 30)
    assert set(done) == set(ids), failed
    assert instance_dirs(cgroup_dir) == [ours]
    assert "left by a drover instance that is gone" not in d.log_text()
    assert d.stop() == 0
    assert child_dirs(cgroup_dir) == [], "drover left cgroups behind"


def test_cgroup_of_a_persistent_process_goes_with_its_killed_worker(cgroup_dir, drover):
    """kill -9 of the worker: the supervisor ends its processes' cgroups (named after their tokens, under the
    worker's prefix) like its attempts'; the replacement's process gets a new one."""
    d = drover(config={"supervisor": {"workers": 1}, "jobs": warm_jobs(cgroup_root=str(cgroup_dir))})
    d.wait_until(lambda: len(handler_pids(d)) == 1, 20, "the persistent process")
    first = handler_pids(d)[0]
    old = token_of(first)
    assert old in job_cgroups(cgroup_dir)
    os.kill(d.wait_workers(1)["workers"][0]["pid"], signal.SIGKILL)
    d.wait_until(lambda: handler_pids(d) not in ([], [first]), 30, "the replacement worker's process")
    d.wait_until(lambda: old not in job_cgroups(cgroup_dir), 10, "the dead worker's process cgroup to go")
    assert job_cgroups(cgroup_dir) == [token_of(handler_pids(d)[0])]
