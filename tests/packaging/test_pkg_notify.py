"""
systemd readiness (Type=notify) without systemd: a test datagram socket as
NOTIFY_SOCKET.

- notify.c on its own (a small driver program): path and abstract ("@")
  addresses, a no-op without NOTIFY_SOCKET, the variable removed from the
  environment, a malformed address refused without harm.
- the real drover: READY=1 (with MAINPID) arrives only once the control
  socket answers ping and every worker is forked; HUP gives RELOADING=1 then
  READY=1, also for a refused reload; TERM gives STOPPING=1; handlers never
  see NOTIFY_SOCKET.
"""

import json
import os
import signal
import socket
import subprocess
import uuid

import pytest

import pkghelpers as h

DRIVER_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include "shared/log.h"
#include "supervisor/notify.h"

int main(void)
{
	log_init("notify-test", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
	char err[160];
	int rc = notify_init(err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "%s\n", err); /* the caller logs: drover's main does the same */
	printf("init=%d env=%s\n", rc, getenv("NOTIFY_SOCKET") ? getenv("NOTIFY_SOCKET") : "(unset)");
	fflush(stdout);
	notify_status("1 worker\nSTOPPING=1");
	notify_reloading();
	notify_ready("2 workers, 0 jobs in flight");
	notify_stopping();
	return 0;
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = tmp_path_factory.mktemp("notify")
    src = d / "driver.c"
    src.write_text(DRIVER_SOURCE)
    exe = d / "driver"
    cmd = ["cc", "-D_GNU_SOURCE", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
           "-I%s" % h.REPO,
           str(src), str(h.REPO / "supervisor" / "notify.c"), str(h.BUILD / "libdrover.a"),
           "-lrdkafka", "-lev", "-ljansson", "-linih", "-lm", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return exe


class Receiver:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages = []

    def poll(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n") if line))

    def wait_for(self, key, value, timeout, start=0, interval=0.05):
        def found():
            for i, msg in enumerate(self.poll()[start:], start):
                if msg.get(key) == value:
                    return i + 1
            return None
        return h.wait_until(found, timeout, "%s=%s from the daemon (got %r)" % (key, value, self.messages),
                            interval=interval) - 1

    def close(self):
        self.sock.close()


def run_driver(driver, notify_socket):
    env = h.clean_env()
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    return subprocess.run([str(driver)], env=env, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_protocol(driver, abstract):
    d = h.short_dir()
    if abstract:
        name = "drover-test-%s" % uuid.uuid4().hex
        recv, env_value = Receiver("\0" + name), "@" + name
    else:
        path = str(d / "notify.sock")
        recv, env_value = Receiver(path), path
    try:
        res = run_driver(driver, env_value)
        assert res.returncode == 0, res.stderr
        assert "init=0 env=(unset)" in res.stdout, "NOTIFY_SOCKET must be removed from the environment"
        msgs = h.wait_until(lambda: len(recv.poll()) >= 4 and recv.messages, 5, "four notifications")
        assert msgs[0] == {"STATUS": "1 worker STOPPING=1"}, "a newline in a status must not start an assignment"
        assert msgs[1]["RELOADING"] == "1" and int(msgs[1]["MONOTONIC_USEC"]) > 0
        assert msgs[2] == {"READY": "1", "MAINPID": str(msgs[2]["MAINPID"]), "STATUS": "2 workers, 0 jobs in flight"}
        assert int(msgs[2]["MAINPID"]) > 1
        assert msgs[3] == {"STOPPING": "1"}
    finally:
        recv.close()


def test_notify_is_a_no_op_without_notify_socket(driver):
    res = run_driver(driver, None)
    assert res.returncode == 0 and "init=0 env=(unset)" in res.stdout
    assert res.stderr == ""


def test_notify_refuses_a_malformed_address(driver):
    res = run_driver(driver, "relative/path")
    assert res.returncode == 0
    assert "init=-1 env=(unset)" in res.stdout
    assert "not a socket path" in res.stderr


def test_notify_survives_a_manager_that_is_gone(driver):
    d = h.short_dir()
    res = run_driver(driver, str(d / "nobody-listens.sock"))
    assert res.returncode == 0 and "init=0" in res.stdout
    assert res.stderr.count("warn: notify service manager") == 1, "one warning, not one per message: " + res.stderr


# ---- the real drover --------------------------------------------------------------

@pytest.fixture
def notified_drover(tmp_path):
    d = h.short_dir()
    recv = Receiver(str(d / "notify.sock"))
    ini = tmp_path / "drover.ini"
    spool = tmp_path / "spool"
    h.write_ini(ini, {
        "supervisor": {"workers": 3, "control_socket": d / "drover.sock", "pid_file": d / "drover.pid",
                       "shutdown_timeout_ms": 5000, "log_level": "debug"},
        "jobs": {"handler": h.HANDLER_ARGV, "timeout_ms": 10000, "kill_grace_ms": 500},
        "spool": {"dir": spool},
    })
    log = open(tmp_path / "drover.log", "w")
    proc = subprocess.Popen([str(h.DROVER), "-c", str(ini)], env=h.clean_env({"NOTIFY_SOCKET": str(d / "notify.sock")}),
                            stdout=log, stderr=subprocess.STDOUT)
    yield proc, recv, ini, spool, tmp_path
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            h.kill_pid(proc.pid)
            proc.wait(5)
    log.close()
    recv.close()


def test_ready_only_after_the_control_socket_answers(notified_drover):
    proc, recv, ini, spool, tmp = notified_drover

    # Before READY=1 nothing but STATUS may arrive. The moment it arrives the
    # daemon is frozen (SIGSTOP) and looked at: its control socket must accept
    # connections and all workers must be forked; then it must answer ping.
    ready = recv.wait_for("READY", "1", 15, interval=0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        sock_path = [l.split("=", 1)[1].strip() for l in ini.read_text().splitlines()
                     if l.startswith("control_socket ")][0]
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(sock_path)
        finally:
            probe.close()
        workers = [p for p in h.children_of(proc.pid) if h.proc_comm(p) != "python3"]
        assert len(workers) == 3, "READY=1 before every worker was forked: %r" % workers
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    ping = h.droverctl(["ping"], ini, check=False)
    assert ping.returncode == 0 and ping.stdout.strip() == "pong", "READY=1 came before the control socket answered"
    st = h.stats(ini)
    assert st["workers_alive"] == 3 and all(w["pid"] for w in st["workers"]), st
    assert all("READY" not in m and "STOPPING" not in m for m in recv.messages[:ready])
    assert recv.messages[ready]["MAINPID"] == str(proc.pid)

    # Handlers must not inherit NOTIFY_SOCKET (nor could workers speak for the supervisor).
    dump = tmp / "env.json"
    [job_id] = h.submit([{"id": "env-1", "env_dump": str(dump)}], ini)
    h.wait_until(lambda: h.completed(spool, job_id), 15, "job env-1 to complete")
    env = json.loads(dump.read_text())
    assert "NOTIFY_SOCKET" not in env and env.get("DROVER_JOB_ID") == "env-1"

    # A reload: RELOADING=1, then READY=1 again.
    os.kill(proc.pid, signal.SIGHUP)
    reloading = recv.wait_for("RELOADING", "1", 10, start=ready + 1)
    recv.wait_for("READY", "1", 10, start=reloading + 1)
    h.wait_until(lambda: h.stats(ini)["config_generation"] == 2, 10, "generation 2")

    # A refused reload still ends the reloading state with READY=1.
    good = ini.read_text()
    ini.write_text(good.replace("workers = 3", "workers = 0"))
    os.kill(proc.pid, signal.SIGHUP)
    reloading = recv.wait_for("RELOADING", "1", 10, start=reloading + 1)
    again = recv.wait_for("READY", "1", 10, start=reloading + 1)
    ini.write_text(good)
    assert h.stats(ini)["config_generation"] == 2  # droverctl reads the socket from the (good) file
    assert "refused" in recv.messages[again].get("STATUS", "")

    # Stop: STOPPING=1, then a clean exit.
    proc.send_signal(signal.SIGTERM)
    recv.wait_for("STOPPING", "1", 10, start=again + 1)
    assert proc.wait(15) == 0


def test_status_line_reports_workers_and_jobs(notified_drover):
    proc, recv, ini, spool, tmp = notified_drover
    recv.wait_for("READY", "1", 15)
    status = h.wait_until(lambda: [m["STATUS"] for m in recv.poll() if "STATUS" in m], 5, "a STATUS line")
    assert any("3 workers" in s for s in status), status
