"""
pkghelpers: what only the packaging tests need: where the packaging files
are, `make install` of the tested build, /proc details of PID namespaces,
and talking to a drover through droverctl. The helpers every suite shares
(waiting with a deadline, /proc, the environment names that configure
drover, the INI file) come from tests/integration/harness.py, which
conftest.py puts on sys.path.

Every process a test starts is killed by pid (kill_pid), never by name.
"""

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

# Re-exported for the tests, which know them as h.NAME.
from harness import (BUILD, DROVER, DROVERCTL, PYTHON, REPO, HarnessError, all_pids, children_of,  # noqa: F401
                     clean_env, options, print_options, proc_alive, proc_stat, render_ini, wait_until)

DEMO = BUILD / "handlers" / "demo"
HANDLER = Path(__file__).resolve().parent / "handler.py"
HANDLER_ARGV = "%s %s" % (PYTHON, HANDLER)
PACKAGING = REPO / "packaging"
INIT_SCRIPT = PACKAGING / "init.d" / "drover"
UNIT = PACKAGING / "systemd" / "drover.service"
ENTRYPOINT = PACKAGING / "docker" / "entrypoint.sh"

Timeout = HarnessError  # what wait_until raises when its deadline passes


def short_dir(prefix="drvpkg-"):
    """A directory with a short path: Unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def write_ini(path, sections):
    """Writes {section: {key: value}} as an INI file."""
    Path(path).write_text(render_ini(sections))


def make_install(destdir, prefix=None, target="install"):
    """Runs `make install` of the tested build; the programs are taken as built (-o: never remade here)."""
    cmd = ["make", "-s", "-C", str(REPO), "BUILD=%s" % BUILD]
    for program in (DROVER, DROVERCTL, DEMO):
        cmd += ["-o", str(program)]
    if prefix is not None:
        cmd.append("PREFIX=%s" % prefix)
    cmd += ["DESTDIR=%s" % (destdir or ""), target]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), res.returncode, res.stdout, res.stderr))
    return res


# ---- /proc ---------------------------------------------------------------------

def proc_exists(pid):
    """True while pid has a /proc entry: alive, or a zombie nobody reaped."""
    return proc_stat(pid) is not None


def proc_status_field(pid, field):
    try:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def proc_comm(pid):
    try:
        return Path("/proc/%d/comm" % pid).read_text().strip()
    except OSError:
        return None


def proc_exe(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None


def pid_namespace(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def pids_in_namespace(ns):
    return [p for p in all_pids() if pid_namespace(p) == ns]


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def read_pid_file(path):
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


# ---- droverctl ---------------------------------------------------------------------

def droverctl(args, config, env=None, ctl=None, timeout=20, check=True):
    cmd = [str(ctl or DROVERCTL), "-c", str(config)] + list(args)
    res = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), res.returncode, res.stdout, res.stderr))
    return res


def stats(config, env=None, ctl=None, sock=None):
    """The daemon's stats; with sock, even while the configuration file is broken."""
    args = (["-s", str(sock)] if sock else []) + ["stats"]
    return json.loads(droverctl(args, config, env=env, ctl=ctl).stdout)


def try_stats(config, env=None, ctl=None):
    res = droverctl(["stats"], config, env=env, ctl=ctl, check=False)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout)


def submit(jobs, config, env=None, ctl=None):
    """Submits JSON objects; returns the ids droverctl printed."""
    data = "".join(json.dumps(j) + "\n" for j in jobs)
    cmd = [str(ctl or DROVERCTL), "-c", str(config), "submit", "-"]
    res = subprocess.run(cmd, env=clean_env(env), input=data, capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise AssertionError("submit: exit %d\n%s%s" % (res.returncode, res.stdout, res.stderr))
    return res.stdout.split()


def completed(spool, job_id):
    path = Path(spool) / "complete" / ("%s.json" % job_id)
    if not path.exists():
        return None
    return json.loads(path.read_text())
