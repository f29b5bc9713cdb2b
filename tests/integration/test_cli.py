"""
What an operator sees of drover's processes from the outside:

- `--help` and `--version` of drover and droverctl (help on stdout, exit 0);
  a usage error is one line with a hint and exit 64, never the whole help;
- process titles: `drover: supervisor`, `drover: worker N (spool|kafka)` in
  /proc/PID/cmdline (what ps shows), and the workers' comm `drover-wN`
  while the supervisor's stays `drover` (start-stop-daemon --name);
- the first log file, created as root before the privilege drop, belongs to
  the user drover runs as and its directory's group, mode 0640: what
  logrotate's `create 0640 drover adm` line gives the next one.
"""

import grp
import os
import pwd
import stat
import subprocess

import pytest

import harness
import kafka_harness as kh

VERSION = "0.1.0"
EX_USAGE = 64


def run(program, *args):
    return subprocess.run([str(program)] + list(args), capture_output=True, text=True, timeout=20,
                          env=harness.clean_env())


@pytest.mark.parametrize("program", [harness.DROVER, harness.DROVERCTL], ids=["drover", "droverctl"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_goes_to_stdout_and_exits_0(program, flag):
    res = run(program, flag)
    assert res.returncode == 0 and res.stderr == "", res
    assert res.stdout.startswith("usage: %s " % program.name), res.stdout
    assert "--version" in res.stdout and "--help" in res.stdout


@pytest.mark.parametrize("program", [harness.DROVER, harness.DROVERCTL], ids=["drover", "droverctl"])
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(program, flag):
    res = run(program, flag)
    assert (res.returncode, res.stdout, res.stderr) == (0, "%s %s\n" % (program.name, VERSION), "")


USAGE_ERRORS = [
    (harness.DROVER, ["-x"], "drover: unknown option -x; try 'drover --help'"),
    (harness.DROVER, ["--frobnicate"], "drover: unknown option --frobnicate; try 'drover --help'"),
    (harness.DROVER, ["-c"], "drover: missing argument for option -c; try 'drover --help'"),
    (harness.DROVER, ["-t", "extra"], "drover: unexpected argument extra; try 'drover --help'"),
    (harness.DROVERCTL, ["-x"], "droverctl: unknown option -x; try 'droverctl --help'"),
    (harness.DROVERCTL, ["--frobnicate"], "droverctl: unknown option --frobnicate; try 'droverctl --help'"),
    (harness.DROVERCTL, ["-s"], "droverctl: missing argument for option -s; try 'droverctl --help'"),
    (harness.DROVERCTL, [], "droverctl: no command given; try 'droverctl --help'"),
    (harness.DROVERCTL, ["frobnicate"], "droverctl: unknown command frobnicate; try 'droverctl --help'"),
    (harness.DROVERCTL, ["scale", "many"], "droverctl: invalid argument for scale; try 'droverctl --help'"),
    (harness.DROVERCTL, ["ping", "extra"], "droverctl: wrong number of arguments for ping; try 'droverctl --help'"),
]


@pytest.mark.parametrize("program,args,line", USAGE_ERRORS,
                         ids=["%s %s" % (p.name, " ".join(a) or "(none)") for p, a, _l in USAGE_ERRORS])
def test_usage_error_is_one_line_and_a_hint(program, args, line):
    res = run(program, *args)
    assert (res.returncode, res.stdout, res.stderr) == (EX_USAGE, "", line + "\n"), res


def cmdline(pid):
    """The title as ps shows it, and whether only NUL padding follows it in the argv block."""
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        raw = f.read()
    title, _, rest = raw.partition(b"\0")
    return title.decode(), rest.strip(b"\0") == b""


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


def assert_titles(d, backend, workers):
    assert cmdline(d.pid) == ("drover: supervisor", True)
    assert comm(d.pid) == "drover", "start-stop-daemon --name drover and pidof look for the supervisor's comm"
    pids = d.wait_until(lambda: (lambda p: p if len(p) == workers else None)(d.worker_pids()), 15,
                        "%d worker pids" % workers)
    for slot, pid in pids.items():
        assert cmdline(pid) == ("drover: worker %d (%s)" % (slot, backend), True), pid
        assert comm(pid) == "drover-w%d" % slot


def test_process_titles_spool(drover):
    d = drover(config={"supervisor": {"workers": 3}})
    d.wait_workers(3)
    assert_titles(d, "spool", 3)
    # A worker started later (after a crash) sets its own title too.
    victim = d.worker_pids()[1]
    os.kill(victim, 9)
    d.wait_until(lambda: d.worker_pids().get(1) not in (None, victim), 15, "worker 1 to be replaced")
    d.wait_workers(3)
    assert_titles(d, "spool", 3)


def test_process_titles_kafka(mock, drover):
    m = mock()
    d = drover(config=kh.kafka_config(m.bootstrap, workers=2))
    assert_titles(d, "kafka", 2)


def test_short_command_line_title_spills_into_the_environment_and_ends_there(drover):
    """With argv shorter than the title (drover started by a short name), the title also covers the
    environment string that follows argv, and ends there: the rest of the environment is left as it was."""
    d = drover(start=False)
    (d.tmp / "drover").symlink_to(harness.DROVER)
    (d.tmp / "i").symlink_to(d.ini)
    argv = ["./drover", "-c", "i"]
    assert len("\0".join(argv)) + 1 < len("drover: supervisor")
    env = {"AAA_PAD": "x" * 40}  # the first environment string, right after argv
    env.update(d.drover_env())
    proc = subprocess.Popen(argv, cwd=str(d.tmp), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    d.proc = proc  # the fixture stops it and kills what is left, by pid
    d.wait_ready()
    assert_titles(d, "spool", 2)
    for pid in [proc.pid] + list(d.worker_pids().values()):
        environ = harness.proc_environ(pid)
        assert "AAA_PAD" not in environ and environ.get(harness.MARK_VAR) == d.mark, environ


def test_first_log_file_belongs_to_the_user_like_logrotate_creates_it(drover, workdir):
    """drover starts as root with [supervisor] user = nobody and a log directory of group adm, like
    /var/log/drover of the package (drover:adm 0750): the log file it creates is nobody:adm 0640."""
    if os.geteuid() != 0:
        pytest.fail("needs root: drover must create its log file before dropping privileges")
    nobody = pwd.getpwnam("nobody")
    adm = grp.getgrnam("adm")
    os.chmod(workdir, 0o755)
    d = drover(start=False, config={"supervisor": {"user": "nobody"}})
    logs = d.tmp / "logs"
    logs.mkdir()
    os.chown(logs, 0, adm.gr_gid)
    os.chmod(logs, 0o750)
    log = logs / "drover.log"
    d.log_file = log
    d.write_config({"supervisor": {"log_file": str(log)}})
    for path in (d.tmp, d.run_dir, d.records, d.state):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(d.ini, 0o644)
    d.start()
    [job] = d.submit([{"id": "log-owner-1"}])
    done, failed = d.wait_outcomes([job], 15)
    assert job in done and not failed
    st = os.stat(log)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, adm.gr_gid, 0o640), \
        "log file %s: uid %d gid %d mode %o" % (log, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    assert "running as user nobody" in log.read_text()


def test_an_existing_log_file_keeps_its_owner(drover, workdir):
    """Only a file drover creates is given away: an operator's own file stays as it is."""
    nobody = pwd.getpwnam("nobody")
    os.chmod(workdir, 0o755)
    d = drover(start=False, config={"supervisor": {"user": "nobody"}})
    d.log_file.write_text("")
    os.chmod(d.log_file, 0o666)
    for path in (d.tmp, d.run_dir, d.records, d.state):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(d.ini, 0o644)
    d.start()
    st = os.stat(d.log_file)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666)
