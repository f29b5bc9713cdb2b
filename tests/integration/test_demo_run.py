"""
test_demo_run: `make run`'s script (mk/demo-run.sh) end to end in a work
directory of its own (DEMO_VAR): drover on a spool, a batch of demo image
jobs, a summary, a clean stop; with DEMO_MODE=persistent the demo runs as
long-lived handler processes and the summary names them.
"""

import os
import re
import subprocess

import harness

SCRIPT = harness.REPO / "mk" / "demo-run.sh"
TIMEOUT = 120  # the script bounds its own batch (DEMO_DEADLINE_S) and stop


def run_script(workdir, mode, jobs=4):
    env = harness.clean_env({"BUILD": str(harness.BUILD), "DEMO_VAR": str(workdir / "var"), "DEMO_JOBS": str(jobs),
                             "DEMO_MODE": mode, "DEMO_DEADLINE_S": "60", "TERM": "dumb"})
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=TIMEOUT,
                         stdin=subprocess.DEVNULL)
    return res.returncode, res.stdout + res.stderr


def test_persistent_mode_runs_the_batch_on_long_lived_handlers(workdir):
    rc, out = run_script(workdir, "persistent")
    assert rc == 0, out
    assert "3 workers x 4 jobs at once, persistent handlers" in out, out
    assert "completed 4/4, failed 0" in out, out
    served = re.search(r"handlers: (\d+) long-lived demo processes served (\d+) jobs", out)
    assert served and served.groups() == ("3", "4"), out  # one process per worker, every job served by one
    assert len(os.listdir(workdir / "var" / "images")) == 4


def test_exec_mode_stays_the_default(workdir):
    rc, out = run_script(workdir, "exec", jobs=2)
    assert rc == 0, out
    assert "exec handlers" in out and "completed 2/2, failed 0" in out, out
    assert "long-lived" not in out


def test_an_unknown_mode_is_refused(workdir):
    rc, out = run_script(workdir, "lukewarm")
    assert rc == 1 and "DEMO_MODE=lukewarm: exec or persistent" in out, out
