"""
Job-correlated logs (issue 10 item 5): with log_format = json every line about
a job carries job_id, attempt, worker, pid (and handler_pid) as fields; the
handler's stderr lines carry the job's id; failures, timeouts and retries are
warnings, so log_level = warn still shows them.
"""

import json
import os
import signal

import pytest


def json_lines(d):
    """Every line of the log file as a JSON object; a line that does not parse fails the test."""
    docs = []
    for line in d.log_file.read_text(errors="replace").splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            raise AssertionError("a log line is not JSON: %r" % line)
    return docs


def job_lines(d, job_id):
    return [doc for doc in json_lines(d) if doc.get("job_id") == job_id]


@pytest.mark.asan
def test_json_lines_of_a_retried_job_carry_its_fields(drover):
    d = drover(config={"supervisor": {"workers": 1, "log_format": "json", "log_level": "debug"}})
    job_id = "flaky \"one\" \\"  # quotes, backslash and spaces (control characters: see test_log.c)
    d.submit([{"id": job_id, "fail_times": 1, "state_dir": str(d.state), "stderr": "stderr-marker\n"}])
    # The spool names the outcome file after a safe form of the id: find it by its document.
    done = d.wait_until(lambda: list(d.complete().values()) or None, 20, "the job's outcome")
    assert [doc["id"] for doc in done] == [job_id], done
    d.wait_until(lambda: any("completed" in doc["msg"] for doc in job_lines(d, job_id)), 10,
                 "the completion line of the job, with its id as a field")
    lines = job_lines(d, job_id)
    starts = {rec["attempt"]: rec["pid"] for rec in d.starts(job_id)}
    assert set(starts) == {"1", "2"}, starts
    retry = [doc for doc in lines if "retrying in" in doc["msg"]]
    assert len(retry) == 1 and retry[0]["level"] == "warn" and retry[0]["attempt"] == 1, lines
    assert retry[0]["handler_pid"] == starts["1"], (retry, starts)
    for doc in lines:
        assert isinstance(doc["worker"], int) and doc["worker"] >= 0, doc
        assert isinstance(doc["pid"], int) and doc["proc"] == "worker %d" % doc["worker"], doc
        assert doc["attempt"] in (1, 2), doc
    stderr_lines = [doc for doc in lines if doc["msg"].startswith("stderr:")]
    assert {doc["attempt"] for doc in stderr_lines if "stderr-marker" in doc["msg"]} == {1, 2}, stderr_lines
    assert {doc["handler_pid"] for doc in stderr_lines if "stderr-marker" in doc["msg"]} == \
        {starts["1"], starts["2"]}, (stderr_lines, starts)
    done_line = [doc for doc in lines if "completed" in doc["msg"]]
    assert done_line[0]["attempt"] == 2 and done_line[0]["handler_pid"] == starts["2"], done_line


def test_failures_retries_and_timeouts_are_warnings(drover):
    d = drover(config={"supervisor": {"workers": 1, "log_format": "json", "log_level": "warn"},
                       "jobs": {"max_attempts": 2, "timeout_ms": 300, "kill_grace_ms": 100}})
    ids = d.submit([{"id": "doomed", "exit": 3}, {"id": "slow", "sleep_ms": 5000}])
    done, failed = d.wait_outcomes(ids, 30)
    assert set(failed) == {"doomed", "slow"}, (done, failed)

    def have(job_id, text, attempt):
        return any(text in doc["msg"] and doc.get("attempt") == attempt and doc["level"] == "warn"
                   for doc in job_lines(d, job_id))
    d.wait_until(lambda: have("doomed", "failed after 2 attempt(s): exit_code", 2) and
                 have("slow", "failed after 2 attempt(s): timeout", 2), 10,
                 "the final failure lines at warn")
    assert have("doomed", "retrying in", 1), job_lines(d, "doomed")
    assert have("slow", "retrying in", 1), job_lines(d, "slow")
    assert have("slow", "timed out", 1) and have("slow", "timed out", 2), job_lines(d, "slow")
    assert not [doc for doc in json_lines(d) if doc["level"] in ("info", "debug")], "log_level = warn"


def test_text_lines_carry_the_job_prefix(drover):
    d = drover(config={"supervisor": {"workers": 1, "log_format": "text", "log_level": "debug"}})
    ids = d.submit([{"id": "plain-1", "stderr": "hello from the handler\n"}])
    d.wait_outcomes(ids, 20)
    d.wait_until(lambda: "job=plain-1 attempt=1 handler=" in d.log_text() and
                 " completed in " in d.log_text(), 10, "the job prefix on the text lines")
    lines = [l for l in d.log_text().splitlines() if "job=plain-1 attempt=1 " in l]
    assert any("stderr: hello from the handler" in l for l in lines), lines
    assert any("completed in" in l for l in lines), lines


def test_supervisor_lines_about_a_dead_workers_job_carry_its_fields(drover):
    d = drover(config={"supervisor": {"workers": 1, "log_format": "json", "log_level": "info"}})
    worker = d.wait_workers(1)["workers"][0]["pid"]
    hold = d.tmp / "never"
    d.submit([{"id": "held-1", "hold_file": str(hold)}])
    d.wait_until(lambda: d.starts("held-1"), 15, "the handler to start")
    handler = d.starts("held-1")[0]["pid"]
    os.kill(worker, signal.SIGKILL)
    d.wait_until(lambda: [doc for doc in job_lines(d, "held-1") if doc["proc"] == "supervisor"], 15,
                 "the supervisor's line about the dead worker's job")
    line = [doc for doc in job_lines(d, "held-1") if doc["proc"] == "supervisor"][0]
    assert line["attempt"] == 1 and line["handler_pid"] == handler and line["level"] == "warn", line
    assert "worker" not in line, "the supervisor is no worker: %r" % line
    hold.write_text("")
    d.wait_outcomes(["held-1"], 30)
