"""
test_http: the HTTP endpoint ([supervisor] http_listen: GET /metrics, /healthz,
/stats) and the saturation and backlog figures it serves, against the real
drover, with curl as the client and promtool as the judge of the metrics text.

Every drover listens on port 0 of the loopback address (the kernel picks a free
port; stats.http.listen tells which), so tests never collide on a fixed port.
Every wait polls with a deadline.
"""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from harness import DROVER, HarnessError, clean_env, wait_until
from test_ops_faults import NOBODY, give_to_nobody

CURL_MAX_S = 5


def http_config(extra=None, **supervisor):
    cfg = {"supervisor": dict({"workers": 2, "http_listen": "127.0.0.1:0"}, **supervisor)}
    for section, keys in (extra or {}).items():
        cfg.setdefault(section, {}).update(keys)
    return cfg


def address(d):
    http = d.stats()["http"]
    assert http is not None, "stats.http is null although http_listen is set"
    return http["listen"]


def curl(addr, path, *args, timeout=CURL_MAX_S):
    """curl -s; returns (exit code, HTTP status or None, headers text, body text)."""
    url = "http://%s%s" % (addr, path)
    cmd = ["curl", "-sS", "-g", "--max-time", str(timeout), "-D", "-", "-o", "-", "--noproxy", "*"] + list(args) + [url]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout + 5, env=clean_env())
    if r.returncode != 0:
        return r.returncode, None, "", r.stderr.decode(errors="replace")
    head, _, body = r.stdout.decode(errors="replace").partition("\r\n\r\n")
    status = int(head.split()[1]) if head.startswith("HTTP/") else None
    return 0, status, head, body


def get_ok(addr, path):
    rc, status, head, body = curl(addr, path)
    assert rc == 0 and status == 200, (path, rc, status, head, body)
    return body


def promtool_check(text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, "promtool check metrics: %s%s\n%s" % (r.stdout, r.stderr, text)


def samples(text):
    """{series: value} of a Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def metric(d, series):
    rc, out = d.ctl("metrics")
    assert rc == 0, d.last_ctl_err
    return samples(out).get(series)


# ---- the endpoint ---------------------------------------------------------------

def _maps_microhttpd(pid):
    with open("/proc/%d/maps" % pid) as f:
        return any("libmicrohttpd" in line for line in f)


def test_the_library_is_loaded_only_when_http_listen_is_set(drover):
    # libmicrohttpd's constructor initialises GnuTLS (p11-kit, nettle, gmp...): about 2 MiB in
    # the supervisor and more in each worker, paid by a pool that serves no HTTP if it were linked.
    plain = drover(config={"supervisor": {"workers": 1}})
    plain.wait_workers(1)
    assert not _maps_microhttpd(plain.pid), "the supervisor mapped libmicrohttpd without http_listen"
    assert not any(_maps_microhttpd(p) for p in plain.worker_pids().values())
    served = drover(config=http_config())
    served.wait_workers(2)
    assert _maps_microhttpd(served.pid), "http_listen is set, yet libmicrohttpd is not mapped: wrong check?"
    assert get_ok(address(served), "/healthz").startswith("ok")


@pytest.mark.asan
def test_metrics_stats_and_healthz_over_http(drover):
    d = drover(config=http_config({"kafka": {"sasl_password": "hunter2-http-secret"}}))
    d.wait_workers(2)
    addr = address(d)
    assert addr.startswith("127.0.0.1:") and not addr.endswith(":0"), addr

    # /metrics: promtool accepts it, and it is the socket's text (an idle pool: nothing moves).
    def same_as_socket():
        before = d.ctl("metrics")[1]
        over_http = get_ok(addr, "/metrics")
        after = d.ctl("metrics")[1]
        return over_http if over_http in (before, after) else None
    text = d.wait_until(same_as_socket, 10, "/metrics to equal the socket's metrics")
    promtool_check(text)
    rc, status, head, body = curl(addr, "/metrics")
    assert "content-type: text/plain; version=0.0.4" in head.lower(), head

    stats = json.loads(get_ok(addr, "/stats"))
    assert stats["pid"] == d.pid and stats["http"]["listen"] == addr, stats
    assert len(stats["workers"]) == 2 and "saturation" in stats and "backlog" in stats, stats.keys()
    assert get_ok(addr, "/healthz") == "ok\n"

    for path in ("/stats", "/metrics", "/healthz"):
        assert "hunter2-http-secret" not in get_ok(addr, path), path

    # HEAD: the headers without a body (raw, since curl -I would print the headers twice).
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), answer
    assert body == b"", answer
    # Anything else: 404 for a path, 405 (with Allow) for a method.
    rc, status, head, body = curl(addr, "/nope")
    assert status == 404 and "/metrics" in body, (status, body)
    for method in ("POST", "PUT", "DELETE"):
        rc, status, head, body = curl(addr, "/metrics", "-X", method)
        assert status == 405 and "allow: get, head" in head.lower(), (method, status, head)
    # A request larger than the per-connection memory bound is refused, and drover answers on.
    rc, status, head, body = curl(addr, "/metrics", "-H", "X-Big: " + "a" * 40000)
    assert status == 431, (status, head)
    assert get_ok(addr, "/healthz") == "ok\n"


def test_healthz_is_503_while_the_pool_cannot_progress_and_200_again_after(drover, workdir):
    bindir = workdir / "bin"
    bindir.mkdir()
    exe = bindir / "handler"
    exe.write_text("#!/usr/bin/python3\nimport sys\nsys.stdin.read()\nprint('{}')\n")
    exe.chmod(0o755)
    d = drover(config=http_config({"jobs": {"handler": str(exe)}}))
    d.wait_workers(2)
    addr = address(d)
    assert get_ok(addr, "/healthz") == "ok\n"

    exe.chmod(0o644)  # exec fails with EACCES, even for root: every worker that tries enters a pool fault
    for i in range(4):
        d.enqueue_raw("h-%d.json" % i, json.dumps({"id": "h-%d" % i}))

    def unhealthy():
        rc, status, head, body = curl(addr, "/healthz")
        return (status, body) if status == 503 else None
    status, body = d.wait_until(unhealthy, 20, "/healthz to answer 503")
    assert "no worker can make progress" in body and "handler" in body, body
    assert d.ctl("health")[0] == 1 and "no worker can make progress" in d.last_ctl_err

    exe.chmod(0o755)
    d.wait_outcomes(["h-%d" % i for i in range(4)], 30)
    d.wait_until(lambda: curl(addr, "/healthz")[1] == 200, 15, "/healthz to answer 200 again")


def test_per_ip_connection_limit_and_silent_clients_cost_nothing_else(drover):
    d = drover(config=http_config())
    d.wait_workers(2)
    addr = address(d)
    limit = d.stats()["http"]["per_ip_max"]
    host, port = addr.rsplit(":", 1)
    silent = []
    try:
        for _ in range(limit):
            s = socket.create_connection((host, int(port)), timeout=5)
            silent.append(s)
        # Once drover has accepted them all, this address gets no more: refused at once, no answer.
        d.wait_until(lambda: curl(addr, "/healthz", timeout=2)[1] is None, 10,
                     "a connection over the per-address limit to be refused")
        # Silent HTTP clients hold up neither the control socket nor the pool.
        rc, out = d.ctl("status")
        assert rc == 0 and "running" in out, (rc, out, d.last_ctl_err)
        ids = d.submit([{"id": "during-silence"}])
        d.wait_outcomes(ids, 15)
    finally:
        for s in silent:
            s.close()
    d.wait_until(lambda: curl(addr, "/healthz")[1] == 200, 10, "/healthz to answer once the silent clients left")


def test_a_silent_connection_is_closed_after_the_timeout(drover):
    d = drover(config=http_config())
    d.wait_workers(2)
    addr = address(d)
    timeout_s = d.stats()["http"]["timeout_s"]
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout_s + 10)
    try:
        s.sendall(b"GET /metr")  # half a request line, then nothing
        assert d.ctl("ping")[0] == 0
        started = time.monotonic()
        assert s.recv(4096) == b"", "the server answered a request it never got whole"
        assert time.monotonic() - started < timeout_s + 10
    finally:
        s.close()


def test_ipv6_loopback(drover):
    d = drover(config=http_config(http_listen="[::1]:0"))
    d.wait_workers(2)
    addr = address(d)
    assert addr.startswith("[::1]:"), addr
    assert get_ok(addr, "/healthz") == "ok\n"


def test_bad_or_busy_address_stops_the_start(drover, workdir):
    d = drover(config=http_config(http_listen="localhost:9464"), start=False)
    r = subprocess.run([str(DROVER), "-t", "-c", str(d.ini)], capture_output=True, text=True, timeout=10,
                       env=clean_env())
    assert r.returncode == 78, r
    assert "%s:" % d.ini in r.stderr and "[supervisor] http_listen: \"localhost:9464\": not a numeric IPv4" \
        in r.stderr, r.stderr

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        d.write_config({"supervisor": {"http_listen": "127.0.0.1:%d" % busy.getsockname()[1]}})
        d.start(wait=False)
        assert d.wait_exit(10) == 69, d.diagnostics()
        assert "http_listen" in d.log_text() and "Address already in use" in d.log_text(), d.diagnostics()
    finally:
        busy.close()


def test_reload_keeps_the_listener_and_says_a_restart_is_needed(drover):
    d = drover(config=http_config())
    d.wait_workers(2)
    addr = address(d)
    d.write_config({"supervisor": {"http_listen": "127.0.0.1:1"}})
    assert d.ctl("reload")[0] == 0, d.last_ctl_err
    changes = d.stats()["last_reload_changes"]
    assert {"key": "[supervisor] http_listen", "result": "needs restart"} in changes, changes
    assert address(d) == addr and get_ok(addr, "/healthz") == "ok\n"


def free_low_port():
    for port in range(900, 1000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise HarnessError("no free port in 900..999")


def test_a_low_port_is_bound_before_the_privilege_drop(drover):
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it checks binding a port below 1024, then dropping to nobody)")
    port = free_low_port()
    d = drover(config=http_config(user="nobody", http_listen="127.0.0.1:%d" % port, workers=1), start=False)
    give_to_nobody(d)
    d.start()
    d.wait_workers(1)
    assert "running as user nobody" in d.log_text()
    with open("/proc/%d/status" % d.pid) as f:
        uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
    assert all(int(u) == NOBODY.pw_uid for u in uids), uids
    assert get_ok("127.0.0.1:%d" % port, "/healthz") == "ok\n"


# ---- saturation, backlog and the stall check ---------------------------------------

def test_a_busy_pool_with_a_backlog_is_healthy_and_shows_its_saturation(drover, workdir):
    release = workdir / "release"
    d = drover(config=http_config({"jobs": {"max_concurrent": 1}}, workers=1, stall_timeout_ms=1000))
    d.wait_workers(1)
    addr = address(d)
    d.submit([{"id": "busy", "hold_file": str(release)}])
    d.wait_until(lambda: d.stats()["jobs"]["in_flight"] == 1, 10, "the first job to run")
    for i in range(3):
        d.enqueue_raw("wait-%d.json" % i, json.dumps({"id": "wait-%d" % i, "record_dir": str(d.records)}))
    old = time.time() - 120
    os.utime(d.spool / "incoming" / "wait-1.json", (old, old))

    def backlog_seen():
        b = d.stats()["backlog"]
        return b if b["waiting"] == 3 and b["oldest_age_ms"] >= 120000 else None
    backlog = d.wait_until(backlog_seen, 10, "3 waiting jobs, the oldest 120 s old")
    assert backlog["oldest_age_ms"] < 130000, backlog
    # Well past stall_timeout_ms with jobs waiting and nothing started: but no slot is free, so no stall.
    sat = d.wait_until(lambda: (lambda s: s if s["at_capacity_seconds"] >= 2.5 else None)(d.stats()["saturation"]),
                       15, "2.5 s at capacity")
    assert sat["job_slots"] == 1 and sat["busy"] == 1 and not sat["stalled"], sat
    assert d.ctl("health")[0] == 0, d.last_ctl_err
    assert get_ok(addr, "/healthz") == "ok\n"
    text = get_ok(addr, "/metrics")
    promtool_check(text)
    m = samples(text)
    assert m["drover_jobs_waiting"] == 3 and m["drover_oldest_waiting_job_age_seconds"] >= 120, m
    assert m["drover_job_slots"] == 1 and m["drover_job_slots_busy"] == 1 and m["drover_pool_stalled"] == 0, m
    assert m["drover_worker_at_capacity_seconds_total"] >= 2.5, m

    release.write_text("go")
    d.wait_outcomes(["busy"] + ["wait-%d" % i for i in range(3)], 20)
    d.wait_until(lambda: d.stats()["backlog"]["waiting"] == 0, 10, "the backlog to be counted empty")
    assert samples(get_ok(addr, "/metrics"))["drover_oldest_waiting_job_age_seconds"] == 0


def test_a_stalled_pool_fails_health_until_its_job_can_be_taken(drover, workdir):
    import fcntl
    d = drover(config=http_config(workers=1, stall_timeout_ms=1500))
    d.wait_workers(1)
    addr = address(d)
    # A job file locked by someone else: the worker sees it waiting but can never claim it.
    tmp = d.spool / "tmp" / "locked.json"
    tmp.write_text(json.dumps({"id": "locked", "record_dir": str(d.records)}))
    holder = open(tmp, "rb")
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.rename(tmp, d.spool / "incoming" / "locked.json")

        def unhealthy():
            rc, status, head, body = curl(addr, "/healthz")
            return body if status == 503 else None
        body = d.wait_until(unhealthy, 20, "/healthz to report the stall")
        assert "pool stalled: 1 job(s) waiting" in body and "stall_timeout_ms 1500" in body, body
        rc, _ = d.ctl("health")
        assert rc == 1 and "pool stalled" in d.last_ctl_err, (rc, d.last_ctl_err)
        assert metric(d, "drover_pool_stalled") == 1
        assert d.stats()["saturation"]["stalled"] is True
    finally:
        holder.close()
    d.wait_outcomes(["locked"], 15)
    d.wait_until(lambda: curl(addr, "/healthz")[1] == 200, 10, "/healthz to answer 200 once the job ran")
    assert metric(d, "drover_pool_stalled") == 0


def test_no_running_worker_fails_health(drover):
    d = drover(config=http_config(workers=1, restart_delay_ms=5000, restart_delay_max_ms=5000),
               env={"DROVER_FAULT_CRASH_SLOT": "0"}, start=False)
    d.start(wait=False)
    d.wait_ready()
    d.wait_until(lambda: d.stats()["workers"][0]["state"] == "backoff", 10, "the worker to crash into back-off")
    rc, status, head, body = curl(address(d), "/healthz")
    assert status == 503 and "no worker can make progress" in body, (status, body)


def test_slow_jobs_are_logged_at_warn_and_counted(drover, workdir):
    release = workdir / "release"
    d = drover(config=http_config({"jobs": {"slow_job_ms": 300}}, workers=1, log_level="warn"))
    d.wait_workers(1)
    d.submit([{"id": "slowpoke", "hold_file": str(release)}, {"id": "quick"}])
    d.wait_outcomes(["quick"], 10)
    d.wait_until(lambda: "job=slowpoke attempt=1 handler=" in d.log_text() and "has run longer than slow_job_ms (300 ms)" in d.log_text(), 10,
                 "the slow-job warning")
    assert "job quick" not in d.log_text()
    d.wait_until(lambda: metric(d, "drover_jobs_slow") == 1, 5, "one slow job running")
    assert metric(d, "drover_jobs_slow_total") == 1
    sat = d.stats()["saturation"]
    assert sat["slow_running"] == 1 and sat["slow_total"] == 1, sat
    release.write_text("go")
    d.wait_outcomes(["slowpoke"], 10)
    d.wait_until(lambda: metric(d, "drover_jobs_slow") == 0, 5, "no slow job running")
    assert metric(d, "drover_jobs_slow_total") == 1
    assert d.log_text().count("has run longer than slow_job_ms") == 1, "one warning per attempt"


def test_faults_are_counted_by_cause(drover, workdir):
    bindir = workdir / "bin"
    bindir.mkdir()
    exe = bindir / "handler"
    exe.write_text("#!/usr/bin/python3\nimport sys\nsys.stdin.read()\nprint('{}')\n")
    exe.chmod(0o644)
    d = drover(config=http_config({"jobs": {"handler": str(exe)}}), start=False)
    exe.chmod(0o755)
    d.start()
    d.wait_workers(2)
    exe.chmod(0o644)
    for i in range(4):
        d.enqueue_raw("f-%d.json" % i, json.dumps({"id": "f-%d" % i}))
    d.wait_until(lambda: metric(d, 'drover_faults{cause="handler"}') == 2, 20, "two handler faults")
    assert metric(d, 'drover_faults{cause="queue"}') == 0
    assert d.stats()["saturation"]["faults"] == {"handler": 2, "queue": 0}
    exe.chmod(0o755)
    d.wait_outcomes(["f-%d" % i for i in range(4)], 30)
    d.wait_until(lambda: metric(d, 'drover_faults{cause="handler"}') == 0, 15, "the faults to clear")


def test_kafka_backlog_is_the_lag_and_a_full_pool_stays_healthy(mock, drover, workdir):
    import kafka_harness as kh
    release = workdir / "release"
    m = mock(topics=kh.default_topics(requests_partitions=1))
    cfg = kh.kafka_config(m.bootstrap, workers=1, max_concurrent=1,
                          supervisor={"http_listen": "127.0.0.1:0", "stall_timeout_ms": 1000})
    d = drover(config=cfg)
    kh.wait_group_stable(d, 1, partitions=1)
    addr = address(d)
    # librdkafka knows a partition's lag once the group has committed an offset there.
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, kh.make_jobs(1, prefix="first"))
    kh.wait_outcomes(m.bootstrap, ["first-00000"], 30, drover=d)
    jobs = kh.make_jobs(6, prefix="k", hold_file=str(release))
    kh.kcat_produce_lines(m.bootstrap, kh.REQUESTS, jobs)

    def lag_seen():
        b = d.stats()["backlog"]
        return b if (b["waiting"] or 0) >= 5 else None
    backlog = d.wait_until(lag_seen, 30, "the lag to show as waiting jobs")
    assert backlog["oldest_age_ms"] is None and backlog["counted_age_ms"] is None, backlog
    d.wait_until(lambda: d.stats()["saturation"]["at_capacity_seconds"] >= 2, 15, "2 s at capacity")
    assert get_ok(addr, "/healthz") == "ok\n"
    text = get_ok(addr, "/metrics")
    promtool_check(text)
    m_ = samples(text)
    assert m_["drover_jobs_waiting"] >= 5 and m_["drover_pool_stalled"] == 0, m_
    assert "drover_oldest_waiting_job_age_seconds" not in m_, "the oldest age is spool only"
    release.write_text("go")
    kh.wait_outcomes(m.bootstrap, [i for i, _ in jobs], 60, drover=d)
