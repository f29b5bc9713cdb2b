"""
Binary upgrade (README "Upgrading"): SIGUSR2 or `droverctl upgrade` execs the
binary on disk with the same pid, hands over the control socket, pid file,
scoreboard and running workers, and replaces the workers one at a time, each
draining first. A binary that cannot run or refuses the configuration leaves
the running image in place and says why.

Each test runs its own copy of drover (workdir/bin/drover) and replaces that
copy as a package upgrade does (a new file renamed over the path). The second
version is the same tree built with another VERSION (build-upgrade-v2/ next
to the tested build, made once by the module fixture).
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from harness import BUILD, DROVER, REPO, ask_as, proc_environ, proc_stat

V2_VERSION = "0.1.0+upgrade-test"
NOBODY = 65534


@pytest.fixture(scope="module")
def v2_binary():
    """drover built with VERSION=V2_VERSION (make is incremental: only the first run compiles)."""
    out = BUILD.parent / (BUILD.name + "-upgrade-v2")
    r = subprocess.run(["make", "-C", str(REPO), "BUILD=%s" % out, "VERSION=%s" % V2_VERSION, str(out / "drover")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(out / "drover"), "-V"], capture_output=True, text=True, timeout=10)
    assert r.stdout.strip() == "drover %s" % V2_VERSION, r
    return out / "drover"


def install(source, path, mode=0o755):
    """Puts source at path as dpkg does: a new file renamed over the old (the running one stays intact)."""
    tmp = path.with_name(path.name + ".new")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def start_copy(drover, workdir, config=None, env=None, prepare=None):
    """A drover running from its own copy of the binary, which the test may replace."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    binary = bindir / "drover"
    install(DROVER, binary)
    d = drover(config=config, env=env, start=False)
    d.binary = binary
    if prepare is not None:
        prepare(d)
    d.start()
    return d, binary


def zombies_of(pid):
    """Children of pid that exited and were not reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[0] == "Z" and st[1] == pid:
                found.append(int(entry))
    return found


def running(stats):
    return {w["slot"]: w["pid"] for w in stats["workers"] if w["state"] == "running" and w.get("pid")}


def test_usr2_during_long_jobs_replaces_every_worker_and_loses_no_job(drover, workdir, v2_binary, figures):
    d, binary = start_copy(drover, workdir, {"supervisor": {"workers": 2, "shutdown_timeout_ms": 20000},
                                             "jobs": {"max_concurrent": 4}})
    old = running(d.wait_workers(2))
    old_version = d.stats()["version"]
    ids = d.submit([{"id": "job-%02d" % i, "sleep_ms": 3000} for i in range(20)])
    d.wait_until(lambda: len(d.starts()) >= 8, 20, "8 jobs running")

    install(v2_binary, binary)
    d.signal(signal.SIGUSR2)

    # The control socket answers throughout: every stats call below must succeed (d.stats raises).
    polls = []

    def upgraded():
        s = d.stats()
        polls.append(s["version"])
        now = running(s)
        done = s["version"] == V2_VERSION and len(now) == 2 and not set(now.values()) & set(old.values())
        return s if done else None
    stats = d.wait_until(upgraded, 90, "the new version with every worker replaced", interval=0.1)
    assert old_version in polls or polls[0] == V2_VERSION, polls
    figures("upgrade: stats polls answered while workers were replaced (none may fail)", len(polls))
    assert stats["pid"] == d.pid and d.alive(), "the supervisor keeps its pid"

    complete, failed = d.wait_outcomes(ids, 90)
    assert not failed, failed
    for job_id in ids:
        starts = d.starts(job_id)
        assert len(starts) == 1, "job %s ran %d times: %r" % (job_id, len(starts), starts)
        assert starts[0]["attempt"] == "1", starts[0]
        assert complete[job_id]["attempts"] == 1, complete[job_id]
    stats = d.stats()
    assert stats["jobs_lost"] == 0 and stats["jobs"]["completed"] == 20, stats["jobs"]
    rc, metrics = d.ctl("metrics")
    assert rc == 0 and 'drover_build_info{version="%s"} 1' % V2_VERSION in metrics
    assert zombies_of(d.pid) == []
    log = d.log_text()
    assert "upgraded to drover %s" % V2_VERSION in log and "adopting 2 worker(s)" in log, d.diagnostics()


def test_upgrade_command_keeps_pid_file_and_socket_and_answers_ok(drover, workdir, v2_binary):
    d, binary = start_copy(drover, workdir)
    old = running(d.wait_workers(2))
    pid_file = d.pid_file.read_text()
    install(v2_binary, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
    stats = d.wait_until(lambda: (lambda s: s if s["version"] == V2_VERSION and len(running(s)) == 2
                                  and not set(running(s).values()) & set(old.values()) else None)(d.stats()),
                         60, "the upgraded supervisor with new workers", interval=0.1)
    assert stats["pid"] == d.pid
    assert d.pid_file.read_text() == pid_file
    # The lock moved with the open file: a second instance on the same pid file is refused.
    second = subprocess.run([str(DROVER), "-c", str(d.ini)], capture_output=True, text=True, timeout=15,
                            env=d.drover_env())
    assert second.returncode == 69 and "pid file %s is held by a running drover (pid %d)" % (d.pid_file, d.pid) \
        in d.log_text(), (second, d.diagnostics())
    assert d.stop() == 0


def assert_unchanged(d, workers, version):
    assert d.alive(), d.diagnostics()
    stats = d.stats()
    assert stats["pid"] == d.pid and stats["version"] == version
    assert running(stats) == workers, "a refused upgrade must not touch the workers"


@pytest.mark.asan  # its last upgrade execs the tested build itself, so the adopting side runs under ASan too
def test_refused_upgrade_leaves_the_running_image_and_says_why(drover, workdir):
    d, binary = start_copy(drover, workdir)
    workers = running(d.wait_workers(2))
    version = d.stats()["version"]

    install(DROVER, binary, mode=0o644)
    rc, _ = d.ctl("upgrade")
    assert rc == 1 and "cannot execute %s: Permission denied" % binary in d.last_ctl_err, d.last_ctl_err
    assert_unchanged(d, workers, version)

    refuses = workdir / "refuses"
    refuses.write_text("#!/bin/sh\necho 'drover: test refuses the configuration' >&2\nexit 78\n")
    install(refuses, binary)
    rc, _ = d.ctl("upgrade")
    assert rc == 1 and "refused it (exit 78): drover: test refuses the configuration" in d.last_ctl_err, \
        d.last_ctl_err
    assert_unchanged(d, workers, version)

    os.unlink(binary)
    d.signal(signal.SIGUSR2)
    d.wait_until(lambda: "cannot execute %s: No such file or directory" % binary in d.log_text(), 10,
                 "the log to say why USR2 did nothing")
    assert_unchanged(d, workers, version)
    assert "upgrade refused; this image keeps running" in d.log_text()

    # A binary that works again: the next upgrade goes through.
    install(DROVER, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), d.last_ctl_err
    d.wait_until(lambda: (lambda s: len(running(s)) == 2 and not set(running(s).values()) & set(workers.values()))
                 (d.stats()), 60, "the workers replaced", interval=0.1)


def test_upgrade_needs_write_access(drover, workdir, v2_binary):
    import grp
    group = grp.getgrnam("ssl-cert")
    d, binary = start_copy(drover, workdir, {"supervisor": {"group": group.gr_name, "control_socket_mode": "0666"}})
    for path in (workdir, d.tmp, d.run_dir):  # nobody reaches the socket; only the credential check refuses
        os.chmod(path, 0o755)
    workers = running(d.wait_workers(2))
    install(v2_binary, binary)

    def ask_as_reader(command):
        return ask_as(d, command, NOBODY, NOBODY, [group.gr_gid])
    assert ask_as_reader("ping") == "pong\n"
    assert ask_as_reader("upgrade").startswith("error: permission denied: upgrade needs root"), \
        ask_as_reader("upgrade")
    assert_unchanged(d, workers, d.stats()["version"])
    assert "upgrade:" not in d.log_text()


def test_worker_that_dies_around_the_exec_is_reaped_and_restarted(drover, workdir, v2_binary):
    d, binary = start_copy(drover, workdir)
    workers = running(d.wait_workers(2))
    install(v2_binary, binary)
    # Its exit lands before, during or after the exec: whichever image sees it must reap it.
    os.kill(workers[0], signal.SIGKILL)
    d.signal(signal.SIGUSR2)
    stats = d.wait_until(lambda: (lambda s: s if s["version"] == V2_VERSION and len(running(s)) == 2
                                  and not set(running(s).values()) & set(workers.values()) else None)(d.stats()),
                         60, "two new workers under the new version", interval=0.1)
    assert stats["pid"] == d.pid
    d.wait_until(lambda: zombies_of(d.pid) == [], 5, "no zombie left")


def test_config_check_refuses_a_running_drover_of_another_scoreboard_layout(drover):
    """The old image runs `NEW -t` with its layout: a binary whose scoreboard differs cannot adopt the workers."""
    d = drover(start=False)
    ok = subprocess.run([str(DROVER), "-t", "-c", str(d.ini)], capture_output=True, text=True, timeout=15,
                        env=d.drover_env())
    assert ok.returncode == 0, ok
    other = subprocess.run([str(DROVER), "-t", "-c", str(d.ini)], capture_output=True, text=True, timeout=15,
                           env=dict(d.drover_env(), DROVER_UPGRADE_LAYOUT="1"))
    assert other.returncode == 78, other
    assert "scoreboard layout" in other.stderr and "differs from the running drover's (1)" in other.stderr, other


def test_secrets_taken_from_the_environment_reach_the_new_binary(drover, workdir, v2_binary):
    """Start-up hides secret variables from /proc; the new image must still get them, and hide them again."""
    secret = "s3cret-upgrade-%d" % os.getpid()
    # Without the password, sasl_plaintext is a configuration error: the new binary's -t and start-up need it.
    d, binary = start_copy(drover, workdir, {"kafka": {"security_protocol": "sasl_plaintext", "sasl_username": "u"}},
                           env={"DROVER_KAFKA_SASL_PASSWORD": secret})
    workers = running(d.wait_workers(2))
    assert secret not in proc_environ(d.pid).get("DROVER_KAFKA_SASL_PASSWORD", "")
    install(v2_binary, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
    d.wait_until(lambda: (lambda s: s["version"] == V2_VERSION and len(running(s)) == 2
                          and not set(running(s).values()) & set(workers.values()))(d.stats()),
                 60, "the new version with new workers", interval=0.1)
    for pid in [d.pid] + list(running(d.stats()).values()):
        environ = open("/proc/%d/environ" % pid, "rb").read()
        assert secret.encode() not in environ, "the secret is readable in /proc/%d/environ" % pid


def give_to_nobody(d):
    """The instance's directories for nobody, and the path to them (and to the binary's copy) traversable."""
    for p in list(d.tmp.parents)[:3]:
        if str(p) not in ("/", "/tmp"):
            os.chmod(p, os.stat(p).st_mode | 0o755)
    for root in {d.tmp, d.run_dir}:
        os.chmod(root, 0o755)
        for dirpath, _dirnames, filenames in os.walk(root):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)


def test_after_a_privilege_drop_the_new_image_runs_as_the_same_user(drover, workdir, v2_binary):
    d, binary = start_copy(drover, workdir, {"supervisor": {"user": "nobody"}}, prepare=give_to_nobody)
    workers = running(d.wait_workers(2))
    assert "running as user nobody" in d.log_text()
    install(v2_binary, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
    d.wait_until(lambda: (lambda s: s["version"] == V2_VERSION and len(running(s)) == 2
                          and not set(running(s).values()) & set(workers.values()))(d.stats()),
                 60, "the new version with new workers", interval=0.1)
    for pid in [d.pid] + list(running(d.stats()).values()):
        uids = [line for line in open("/proc/%d/status" % pid) if line.startswith("Uid:")][0].split()[1:]
        assert uids == [str(NOBODY)] * 4, (pid, uids)
    assert d.log_text().count("running as user nobody") == 1, "the new image must not drop privileges again"
    assert d.stop() == 0, d.diagnostics()
    assert not d.pid_file.exists() and not d.sock.exists(), "the new image removes what the old one created"


def test_upgrade_waits_for_connected_clients_and_a_stop_abandons_it(drover, workdir):
    import socket
    d, binary = start_copy(drover, workdir, {"supervisor": {"workers": 1, "shutdown_timeout_ms": 20000}})
    d.wait_workers(1)
    [job] = d.submit([{"id": "long", "sleep_ms": 3000}])
    d.wait_until(lambda: d.starts("long"), 10, "the long job to start")

    # A connected client that has not sent its command yet: the exec waits for it (its answer comes first).
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.settimeout(10)
    idle.connect(str(d.sock))
    try:
        rc, out = d.ctl("upgrade")
        assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
        d.signal(signal.SIGTERM)
        # The stop abandons the upgrade and the socket accepts again during the drain.
        rc, out = d.ctl("ping", timeout=4)
        assert (rc, out) == (0, "pong\n"), (rc, out, d.last_ctl_err)
        idle.sendall(b"ping\n")
        assert idle.recv(100) == b"pong\n"
    finally:
        idle.close()
    assert d.wait_exit(30) == 0, d.diagnostics()
    assert d.complete()["long"]["attempts"] == 1, "the drain finished the running job"
    log = d.log_text()
    assert "upgrade abandoned: stopping" in log and "upgraded to" not in log, d.diagnostics()


def test_kafka_pool_is_upgraded_and_keeps_consuming(mock, drover, workdir, v2_binary):
    """On Kafka the replacement goes on only once the new worker joined the group (the reload path)."""
    import kafka_harness as kh
    m = mock()
    d, binary = start_copy(drover, workdir, kh.kafka_config(m.bootstrap, workers=2))
    kh.wait_group_stable(d, 2)
    workers = running(d.stats())
    first = kh.make_jobs(8, prefix="before")
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, first)
    kh.wait_outcomes(m.bootstrap, [i for i, _ in first], 60, drover=d)

    install(v2_binary, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
    d.wait_until(lambda: (lambda s: s["version"] == V2_VERSION and len(running(s)) == 2
                          and not set(running(s).values()) & set(workers.values()))(d.stats()),
                 90, "the new version with new workers", interval=0.2)
    kh.wait_group_stable(d, 2, timeout=60)
    after = kh.make_jobs(8, prefix="after")
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, after)
    complete, failed = kh.wait_outcomes(m.bootstrap, [i for i, _ in first + after], 60, drover=d)
    assert not failed, failed
    assert d.stats()["pid"] == d.pid


def test_http_endpoint_keeps_its_socket_across_the_upgrade(drover, workdir, v2_binary):
    # The listening socket is handed over like the control socket: same address, no rebind (a port
    # below 1024 could not be bound again after the privilege drop), the new version on /metrics.
    from test_http import address, get_ok
    d, binary = start_copy(drover, workdir, {"supervisor": {"workers": 2, "http_listen": "127.0.0.1:0"}})
    old = running(d.wait_workers(2))
    addr = address(d)
    assert 'drover_build_info{version="%s"} 1' % V2_VERSION not in get_ok(addr, "/metrics")
    install(v2_binary, binary)
    rc, out = d.ctl("upgrade")
    assert (rc, out) == (0, "ok\n"), (rc, out, d.last_ctl_err)
    d.wait_until(lambda: (lambda s: s if s["version"] == V2_VERSION and len(running(s)) == 2
                          and not set(running(s).values()) & set(old.values()) else None)(d.stats()),
                 60, "the upgraded supervisor with new workers", interval=0.1)
    assert address(d) == addr
    assert 'drover_build_info{version="%s"} 1' % V2_VERSION in get_ok(addr, "/metrics")
    assert get_ok(addr, "/healthz").strip() == "ok"
    assert "the HTTP endpoint is off" not in d.log_text(), d.diagnostics()
    assert d.stop() == 0
