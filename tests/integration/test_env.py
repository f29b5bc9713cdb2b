"""
Environment: overrides beat the file (and survive reloads), DROVER_SPOOL_DIR,
env.NAME with {slot}, the handler's DROVER_* variables, and drover's secrets
kept away from handlers and logs (README: Configuration, The handler protocol).
"""

import json
import re
import signal
import subprocess
import time

from harness import DROVER, clean_env, options


def test_env_overrides_beat_the_file_and_survive_reload(drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"timeout_ms": 60000, "kill_grace_ms": 200, "max_attempts": 1}},
               env={"PROCESSING_WORKER_INSTANCES": "3", "GENERATION_TIMEOUT_MS": "500"})
    d.wait_workers(3)
    d.submit([{"id": "slow", "sleep_ms": 20000}])
    done, failed = d.wait_outcomes(["slow"], 10)
    assert failed.get("slow", {}).get("error", {}).get("reason") == "timeout", \
        "GENERATION_TIMEOUT_MS=500 must beat timeout_ms = 60000: %r" % ((done, failed),)

    d.write_config({"supervisor": {"workers": 2}})
    d.signal(signal.SIGHUP)
    d.wait_until(lambda: d.stats()["reloads"] == 1, 10, "the reload to be applied")
    time_limit = time.monotonic() + 1.0
    while time.monotonic() < time_limit:  # the pool must stay at 3 the whole time, not only eventually
        stats = d.stats()
        assert stats["workers_desired"] == 3, "PROCESSING_WORKER_INSTANCES must stay in force across reloads"
        time.sleep(0.05)
    d.wait_workers(3)


def test_bad_env_override_is_a_config_error():
    r = subprocess.run([str(DROVER), "-t", "-c", "/dev/null"], capture_output=True, text=True, timeout=10,
                       env=clean_env({"PROCESSING_WORKER_INSTANCES": "0", "DROVER_JOBS_MAX_ATTEMPTS": "x"}))
    out = r.stdout + r.stderr
    assert r.returncode == 78, (r.returncode, out)
    assert "PROCESSING_WORKER_INSTANCES" in out and "DROVER_JOBS_MAX_ATTEMPTS" in out, \
        "every error, each naming its variable: %s" % out


def out_of_range_value(allowed):
    """A value the option's "allowed" text rules out, or None when any text is allowed."""
    if re.match(r"^-?\d+\.\.", allowed):
        return "x"
    if re.match(r"^[\w-]+(, [\w-]+)+$", allowed):
        return "no-such-value"
    return None


def test_every_env_name_drover_lists_is_read():
    """Each name --print-options gives for a checked option reaches that option: a bad value
    through it is a configuration error that names it."""
    checked = 0
    for option in options():
        bad = out_of_range_value(option.allowed)
        for name in option.env if bad is not None else []:
            r = subprocess.run([str(DROVER), "-t", "-c", "/dev/null"], capture_output=True, text=True, timeout=10,
                               env=clean_env({name: bad}))
            out = r.stdout + r.stderr
            assert r.returncode == 78 and name in out, ("[%s] %s" % (option.section, option.key), name, r.returncode, out)
            checked += 1
    assert checked >= 20, "only %d names checked: has --print-options changed its format?" % checked


def test_drover_spool_dir_overrides_spool_dir(drover, workdir):
    other = workdir / "elsewhere"
    d = drover(config={"supervisor": {"workers": 1}}, env={"DROVER_SPOOL_DIR": str(other)})
    d.wait_until(lambda: (other / "incoming").is_dir(), 5, "drover to prepare the spool in DROVER_SPOOL_DIR")
    d.enqueue_raw("outside.json", json.dumps({"id": "outside", "record_dir": str(d.records)}), spool=other)
    d.submit([{"id": "via-ctl"}])  # droverctl gets the same environment
    done, failed = d.wait_outcomes(["outside", "via-ctl"], 10, spool=other)
    assert sorted(done) == ["outside", "via-ctl"] and failed == {}
    assert not (d.spool / "complete").exists() or d.spool_files("complete") == [], \
        "the file's spool dir must not be used when DROVER_SPOOL_DIR is set"
    rc, out = d.ctl("health")
    assert rc == 0, (rc, out, d.last_ctl_err)


def test_handler_environment(drover):
    secret_a, secret_b = "hunter2-sasl-plain", "hunter2-sasl-drover"
    timeout = 7000
    d = drover(config={"supervisor": {"workers": 3},
                       "jobs": {"max_concurrent": 1, "timeout_ms": timeout,
                                "env.CUDA_VISIBLE_DEVICES": "{slot}", "env.POOLTEST_LABEL": "gpu-{slot}-x"}},
               env={"KAFKA_SASL_PASSWORD": secret_a, "DROVER_KAFKA_SASL_PASSWORD": secret_b,
                    "POOLTEST_PLAIN": "visible"})
    d.wait_workers(3)
    hold = d.tmp / "release"
    ids = ["env-%d" % i for i in range(3)]
    d.submit([{"id": i, "hold_file": str(hold), "env_dump": str(d.tmp / (i + ".{attempt}.env"))} for i in ids])

    def placed():
        where = {j["id"]: w["slot"] for w in d.stats()["workers"] for j in w.get("jobs", [])}
        return where if len(where) == 3 and len(d.starts()) == 3 else None
    where = d.wait_until(placed, 15, "each of three workers to run one held job")
    assert sorted(where.values()) == sorted(w["slot"] for w in d.stats()["workers"]), where
    hold.touch()
    d.submit([{"id": "retry-env", "fail_times": 1, "state_dir": str(d.state),
               "env_dump": str(d.tmp / "retry-env.{attempt}.env")}])
    done, failed = d.wait_outcomes(ids + ["retry-env"], 15)
    assert failed == {}, failed

    for job_id in ids:
        env = json.loads((d.tmp / (job_id + ".1.env")).read_text())
        start = d.starts(job_id)[0]
        slot = str(where[job_id])
        assert env.get("DROVER_WORKER") == slot, (job_id, env.get("DROVER_WORKER"), slot)
        assert env.get("CUDA_VISIBLE_DEVICES") == slot, \
            "env.CUDA_VISIBLE_DEVICES = {slot} should be %s in worker %s's handler: %r" % (
                slot, slot, env.get("CUDA_VISIBLE_DEVICES"))
        assert env.get("POOLTEST_LABEL") == "gpu-%s-x" % slot, env.get("POOLTEST_LABEL")
        assert env.get("DROVER_JOB_ID") == job_id and env.get("DROVER_ATTEMPT") == "1", env
        assert env.get("DROVER_TIMEOUT_MS") == str(timeout), env.get("DROVER_TIMEOUT_MS")
        deadline = int(env.get("DROVER_DEADLINE_MS", "0"))
        assert abs(deadline - (start["t"] * 1000 + timeout)) < 2000, \
            "DROVER_DEADLINE_MS %d should be about start + timeout_ms (%d)" % (deadline, start["t"] * 1000 + timeout)
        assert env.get("POOLTEST_PLAIN") == "visible", "the supervisor's environment must reach the handler"
        assert "KAFKA_SASL_PASSWORD" not in env and "DROVER_KAFKA_SASL_PASSWORD" not in env, \
            "drover's secrets must not reach handlers: %r" % sorted(k for k in env if "SASL" in k)
        leaked = [k for k, v in env.items() if "hunter2" in v]
        assert not leaked, "a secret value reached the handler in %r" % leaked

    retry2 = json.loads((d.tmp / "retry-env.2.env").read_text())
    assert retry2.get("DROVER_ATTEMPT") == "2" and retry2.get("DROVER_JOB_ID") == "retry-env", retry2
    assert "hunter2" not in d.log_text(), "a secret appears in drover's log"
