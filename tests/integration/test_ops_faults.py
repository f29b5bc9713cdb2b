"""
Operator-facing faults (issue 8 items 5, 9, 10, 12, 13): secrets that must not
leak through /proc, faults and counters that tell the truth, the control
socket's credentials, and the small findings (init script, SIGUSR2, droverctl
without a readable config, long lines, forged log lines, odd config files,
files left behind after a privilege drop, pool-fault back-off).

Tests that need an unprivileged drover start it through setpriv as `nobody`
(the tests run as root) on directories handed to that user.
"""

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from harness import DROVER, DROVERCTL, PYTHON, clean_env, wait_until

NOBODY = pwd.getpwnam("nobody")


def give_to_nobody(d):
    """Makes the instance's directories usable by nobody (and the path to them traversable)."""
    for p in list(d.tmp.parents)[:3]:
        if str(p) not in ("/", "/tmp"):
            os.chmod(p, os.stat(p).st_mode | 0o755)
    for root in {d.tmp, d.run_dir}:
        os.chmod(root, 0o755)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chown(dirpath, NOBODY.pw_uid, NOBODY.pw_gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), NOBODY.pw_uid, NOBODY.pw_gid)


def start_as_nobody(d, timeout=15):
    """Drover.start, but through setpriv as nobody (no supplementary groups)."""
    give_to_nobody(d)
    d._stderr = open(d.stderr_file, "ab")
    cmd = ["setpriv", "--reuid=%d" % NOBODY.pw_uid, "--regid=%d" % NOBODY.pw_gid, "--clear-groups",
           str(DROVER), "-c", str(d.ini)]
    d.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=d._stderr, stderr=d._stderr,
                              env=d.drover_env(), start_new_session=True)
    d.wait_ready(timeout)
    return d


def write_script(path, text):
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


# ---- secrets (item 5) ---------------------------------------------------------

PEEK = r'''
import json, os, sys
def peek(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            data = f.read()
    except OSError as e:
        return "unreadable: %s" % e.strerror
    return "leaked" if b"hunter2-secret" in data else "clean"
worker = os.getppid()
with open("/proc/%d/stat" % worker) as f:
    supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
print(json.dumps({"worker": peek(worker), "supervisor": peek(supervisor), "uid": os.getuid(),
                  "own_env": "leaked" if any("hunter2" in v for v in os.environ.values()) else "clean"}))
'''


def test_a_handler_of_the_same_uid_cannot_read_the_secret(drover):
    d = drover(config={"supervisor": {"workers": 1}}, env={"KAFKA_SASL_PASSWORD": "hunter2-secret"}, start=False)
    peek = write_script(d.tmp / "peek.py", PEEK)
    d.write_config({"jobs": {"handler": "%s %s" % (PYTHON, peek)}})
    start_as_nobody(d)
    ids = d.submit([{"id": "peek"}], record=False)
    complete, failed = d.wait_outcomes(ids, 20)
    assert "peek" in complete, failed
    seen = complete["peek"]["result"]
    assert seen["uid"] == NOBODY.pw_uid, seen
    assert seen["own_env"] == "clean", seen
    for who in ("worker", "supervisor"):
        assert seen[who] != "leaked", "the handler read the secret from the %s's /proc/PID/environ: %r" % (who, seen)
    # The secret still reaches the config across a reload (environment overrides stay in force).
    rc, out = d.ctl("reload")
    assert rc == 0 and out.strip() == "ok", (rc, out, d.last_ctl_err)
    with open("/proc/%d/environ" % d.pid, "rb") as f:
        assert b"hunter2-secret" not in f.read(), "the supervisor's environment still carries the secret"
