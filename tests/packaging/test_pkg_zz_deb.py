"""
The Debian package, on this machine (it runs last: it installs, starts,
stops and purges a system package, and restores the system on failure):

  make deb -> lintian -> dpkg -i (README and examples in /usr/share/doc/drover,
  bash completion) -> service drover start -> droverctl submit
  -> the demo handler's job completes -> logrotate + USR1 -> service drover
  reload -> dpkg -i again (an upgrade: drover re-executes in place, same pid)
  -> service drover stop -> dpkg -r keeps configuration and spool -> dpkg --purge
  leaves nothing behind (the drover user stays, as Debian policy says).

DROVER_DEB=/path/to/drover_*.deb skips the build and tests that file.
"""

import json
import os
import pwd
import grp
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

import pkghelpers as h


STAGE = h.REPO / "debian-build"
SCAN_ROOTS = ("/etc", "/usr", "/var", "/run", "/opt", "/srv")
SCAN_SKIP = ("/var/lib/dpkg", "/var/cache", "/var/lib/apt", "/var/log/apt", "/var/tmp", "/var/lib/man-db")
# Explained lintian tags (none so far); anything else fails the test.
LINTIAN_EXPLAINED = {}


def run(cmd, timeout=120, check=True, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=env if env is not None else h.clean_env())
    if check and res.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), res.returncode, res.stdout, res.stderr))
    return res


def service(action, timeout=120):
    return run(["service", "drover", action], timeout=timeout, check=False)


def installed():
    res = run(["dpkg-query", "-W", "-f=${Status}", "drover"], check=False)
    return res.returncode == 0 and "installed" in res.stdout.split()


def system_drovers():
    """Processes running the packaged binary: they can only be this test's."""
    return [p for p in h.all_pids() if (h.proc_exe(p) or "").startswith("/usr/sbin/drover")]


def drover_paths():
    """Every path under the scanned roots with "drover" in its name."""
    found = set()
    for root in SCAN_ROOTS:
        for dirpath, dirs, files in os.walk(root):
            if dirpath.startswith(SCAN_SKIP):
                dirs[:] = []
                continue
            for name in dirs + files:
                if "drover" in name:
                    found.add(os.path.join(dirpath, name))
    return found


def owned_by(uid):
    res = run(["find", "/", "-xdev", "(", "-path", "/proc", "-o", "-path", "/tmp", "-o", "-path", "/var/tmp", ")",
               "-prune", "-o", "-uid", str(uid), "-print"], timeout=300, check=False)
    return [line for line in res.stdout.splitlines() if line]


def stop_and_purge():
    for pid in system_drovers():
        h.kill_pid(pid, signal.SIGQUIT)
    try:
        h.wait_until(lambda: not system_drovers(), 20, "the packaged drover to exit")
    except h.Timeout:
        for pid in system_drovers():
            h.kill_pid(pid)
    if installed() or run(["dpkg-query", "-W", "drover"], check=False).returncode == 0:
        run(["dpkg", "--purge", "drover"], timeout=300, check=False)


@pytest.fixture(scope="module")
def deb():
    if os.environ.get("DROVER_DEB"):
        path = Path(os.environ["DROVER_DEB"])
        return path, path.with_name(path.name.replace(".deb", ".changes"))
    res = subprocess.run(["make", "-C", str(h.REPO), "deb"], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    debs = sorted(STAGE.glob("drover_*_%s.deb" % arch))
    assert len(debs) == 1, debs
    return debs[0], debs[0].with_name(debs[0].name.replace(".deb", ".changes"))


@pytest.fixture(scope="module")
def clean_system():
    if shutil.which("service") is None:
        pytest.fail("no service(8) (init-system-helpers)")
    if not installed() and (os.path.exists("/usr/sbin/drover") or os.path.exists("/etc/drover")):
        pytest.fail("/usr/sbin/drover or /etc/drover exists but not from the package: will not touch it")
    stop_and_purge()  # a previous run that died half-way
    yield
    stop_and_purge()


def test_lintian(deb):
    if shutil.which("lintian") is None:
        pytest.fail("lintian is not installed (make deps installs it)")
    _deb, changes = deb
    res = run(["lintian", "--info", "--display-info", "--pedantic", "--tag-display-limit", "0", str(changes)],
              timeout=900, check=False)
    report = res.stdout + res.stderr
    (STAGE / "lintian.txt").write_text(report)
    print(report)
    tags = [line for line in report.splitlines() if line[:2] in ("E:", "W:", "I:", "P:", "X:")]
    unexplained = [t for t in tags if t.split()[2] not in LINTIAN_EXPLAINED]
    assert not unexplained, "lintian tags without an explanation:\n" + "\n".join(unexplained)


def test_install_run_remove_purge(deb, clean_system):
    path, _changes = deb
    before = drover_paths()

    res = run(["dpkg", "-i", str(path)], timeout=300)
    assert installed(), res.stdout + res.stderr

    # postinst: the system user and the directories it writes.
    user = pwd.getpwnam("drover")
    assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/drover" and user.pw_shell == "/usr/sbin/nologin"
    for d, owner, group, mode in (("/var/lib/drover/spool", "drover", "drover", 0o750),
                                  ("/var/log/drover", "drover", "adm", 0o2750)):
        st = os.stat(d)
        assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)) \
            == (owner, group, mode), d  # /var/log/drover is setgid: new log files get group adm
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "drover"]).stdout
    for conffile in ("/etc/drover/drover.ini", "/etc/default/drover", "/etc/init.d/drover", "/etc/logrotate.d/drover"):
        assert conffile in conffiles, conffile

    # documentation, examples and the shell completion.
    doc = Path("/usr/share/doc/drover")
    assert (doc / "README.md").exists() or (doc / "README.md.gz").exists(), sorted(os.listdir(doc))
    for example in ("drover.ini", "run.ini", "handlers/demo.c"):
        assert (doc / "examples" / example).exists(), "examples/%s: %s" % (example, sorted(os.listdir(doc)))
    completion = Path("/usr/share/bash-completion/completions/droverctl")
    assert completion.read_bytes() == (h.PACKAGING / "bash-completion" / "droverctl").read_bytes()

    assert shutil.which("systemd-analyze"), "systemd-analyze is not installed (make deps installs it)"
    res = run(["systemd-analyze", "verify", "/lib/systemd/system/drover.service"], check=False)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr

    # the handler libraries load with no path given, from where the package put them.
    res = run([h.PYTHON, "-c", "import drover_handler; print(drover_handler.__file__)"])
    assert res.stdout.strip() == "/usr/lib/python3/dist-packages/drover_handler/__init__.py", res.stdout
    res = run(["/usr/bin/node", "-e", "console.log(require('fs').realpathSync(require.resolve('drover-handler')))"])
    assert res.stdout.strip() == "/usr/share/nodejs/drover-handler/index.js", res.stdout

    # the service, through the init script.
    res = service("start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert service("status").returncode == 0
    pid = h.read_pid_file("/run/drover/drover.pid")
    assert pid and system_drovers() and pid in system_drovers()
    assert h.proc_status_field(pid, "Uid")[0] == str(user.pw_uid), "drover must run as the drover user"
    # the init script starts drover as drover; the log file it creates in the setgid
    # /var/log/drover has the owner, group and mode logrotate's `create 0640 drover adm` gives.
    st = os.stat("/var/log/drover/drover.log")
    assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)) \
        == ("drover", "adm", 0o640), "/var/log/drover/drover.log"

    ctl = ["/usr/bin/droverctl"]
    st = json.loads(run(ctl + ["stats"]).stdout)
    assert st["pid"] == pid and st["workers_alive"] == st["workers_desired"] == 3

    # a job through the demo handler, submitted the way the README says.
    job = {"id": "deb-test-1", "prompt": "a red fox in the snow"}
    res = subprocess.run(ctl + ["submit", "-"], input=json.dumps(job) + "\n", capture_output=True, text=True,
                         timeout=30, env=h.clean_env())
    assert res.returncode == 0 and res.stdout.split() == ["deb-test-1"], res.stdout + res.stderr
    done = Path("/var/lib/drover/spool/complete/deb-test-1.json")
    h.wait_until(done.exists, 60, "the demo job to complete")
    result = json.loads(done.read_text())["result"]
    assert os.path.exists(result["image"]) and result["width"] == 256, result

    # logrotate renames the log, USR1 makes drover write a new one.
    log = Path("/var/log/drover/drover.log")
    assert "ready" in log.read_text()
    assert shutil.which("logrotate"), "logrotate is not installed (make deps installs it)"
    state = h.short_dir() / "logrotate.state"
    res = run(["logrotate", "-f", "-s", str(state), "/etc/logrotate.d/drover"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert Path("/var/log/drover/drover.log.1").exists()
    run(ctl + ["scale", "2"])
    h.wait_until(lambda: log.exists() and "scaling to 2" in log.read_text(), 15,
                 "drover to log into the new file after USR1")
    assert "scaling to 2" not in Path("/var/log/drover/drover.log.1").read_text()

    # reload through the service.
    res = service("reload")
    assert res.returncode == 0, res.stdout + res.stderr
    h.wait_until(lambda: json.loads(run(ctl + ["stats"]).stdout)["config_generation"] == 2, 15, "generation 2")

    # a package upgrade (the same package again) while running: postinst has drover re-execute the new
    # binary in place instead of a stop and start: the same pid, every worker replaced.
    workers = {w["pid"] for w in json.loads(run(ctl + ["stats"]).stdout)["workers"]}
    res = run(["dpkg", "-i", str(path)], timeout=300)
    assert "re-executes the new binary" in res.stdout, res.stdout + res.stderr
    st = h.wait_until(lambda: (lambda s: s if s["workers_alive"] == 3
                               and not {w["pid"] for w in s["workers"]} & workers else None)
                      (json.loads(run(ctl + ["stats"]).stdout)), 60, "every worker replaced after the upgrade")
    assert st["pid"] == pid and h.read_pid_file("/run/drover/drover.pid") == pid
    assert "upgraded to drover" in log.read_text()

    res = service("stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert service("status").returncode == 3
    assert not system_drovers() and not os.path.exists("/run/drover/drover.pid")

    # remove keeps the configuration and the spool; purge takes everything.
    run(["dpkg", "-r", "drover"], timeout=300)
    assert not os.path.exists("/usr/sbin/drover") and not os.path.exists("/usr/bin/droverctl")
    assert os.path.exists("/etc/drover/drover.ini") and done.exists()

    run(["dpkg", "--purge", "drover"], timeout=300)
    assert run(["dpkg-query", "-W", "drover"], check=False).returncode != 0
    left = sorted(drover_paths() - before)
    assert not left, "left behind after purge: %s" % left
    owned = owned_by(user.pw_uid)
    assert not owned, "files of the drover user left behind: %s" % owned[:20]
