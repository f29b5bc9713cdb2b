"""
Static checks of the packaging files, each against the thing it must agree
with:

- drover.ini(5) documents every key of drover's option table with the same
  default and environment names (the table as `drover --print-options` prints it);
- the systemd unit passes `systemd-analyze verify` without a warning, and its
  stop timeout covers the reference configuration's drain;
- the Dockerfile's runtime stage installs the package of every library the
  programs link, its build stage the package's Build-Depends, and its
  entrypoint path is the one it copies the script to;
- the shell scripts pass shellcheck.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pkghelpers as h

@pytest.fixture(scope="module")
def option_reference():
    """(section, key, default, env names) of every key, from `drover --print-options`."""
    options = [(o.section, o.key, o.default, o.env) for o in h.options()]
    assert len(options) > 30, h.print_options()
    return options


def man_sections(text):
    """{".SH title": body} of a man page."""
    parts = re.split(r"^\.SH (.*)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def unescape(roff):
    return roff.replace("\\-", "-").replace('"', "")


def test_ini_man_page_documents_every_option(option_reference):
    sections = man_sections((h.PACKAGING / "man" / "drover.ini.5").read_text())
    problems = []
    for section, key, default, env_names in option_reference:
        if section == "topic:NAME" or key in ("NAME", "env.NAME"):
            body = sections.get("[%s]" % section, "")
            if key == "env.NAME":
                ok = ".BI env. NAME" in body
            elif key == "NAME":
                ok = ".IB name" in body
            else:
                ok = '.BR %s " = %s"' % (key, default) in body
            if not ok:
                problems.append("[%s] %s = %s" % (section, key, default))
            continue
        body = sections.get("[%s]" % section)
        if body is None:
            problems.append("no section [%s]" % section)
            continue
        entries = re.split(r"^\.TP\n", body, flags=re.M)
        want = " ".join((".BR %s = %s" % (key, default)).split())
        entry = next((e for e in entries if " ".join(unescape(e.split("\n", 1)[0]).split()) == want), None)
        if entry is None:
            problems.append("[%s] %s = %s: missing or another default" % (section, key, default))
            continue
        for name in env_names:
            if not re.search(r"(?<![A-Z0-9_])%s(?![A-Z0-9_])" % name, entry):
                problems.append("[%s] %s: environment name %s not mentioned" % (section, key, name))
    assert not problems, "drover.ini(5) is out of sync with the option table:\n" + "\n".join(problems)


def test_ini_man_page_lists_no_removed_option(option_reference):
    known = {(s, k) for s, k, _d, _e in option_reference}
    sections = man_sections((h.PACKAGING / "man" / "drover.ini.5").read_text())
    stale = []
    for title, body in sections.items():
        m = re.match(r"^\[([a-z]+)\]$", title)
        if not m:
            continue
        for key in re.findall(r'^\.BR ([a-z_]+) " =', body, flags=re.M):
            if (m.group(1), key) not in known:
                stale.append("[%s] %s" % (m.group(1), key))
    assert not stale, "documented but not an option: %s" % stale


def test_drover_man_page_lists_the_options_of_usage():
    page = (h.PACKAGING / "man" / "drover.8").read_text()
    usage = subprocess.run([str(h.DROVER), "-h"], capture_output=True, text=True).stderr
    flags = re.findall(r"\[-([a-zA-Z])", usage)
    assert flags, "drover -h printed no usage: %r" % usage
    for flag in flags:
        assert re.search(r"^\.BI? \\-%s\b" % flag, page, flags=re.M), "drover(8) lacks -%s" % flag


def unit_settings():
    settings = {}
    for line in h.UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_passes_systemd_analyze_verify(tmp_path, staged_install):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (make deps installs it)")
    # verify checks that ExecStart exists and the man pages of Documentation=:
    # point both at the staged install of this build.
    unit = tmp_path / "drover.service"
    unit.write_text(h.UNIT.read_text().replace("/usr/sbin/drover", str(staged_install / "usr/sbin/drover")))
    env = h.clean_env({"MANPATH": str(staged_install / "usr/share/man")})
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_unit_semantics():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["KillMode"] == ["mixed"], "only the supervisor gets TERM, so workers drain"
    assert "78" in s["RestartPreventExitStatus"][0].split()
    assert s["ExecReload"][0].endswith("-t -c /etc/drover/drover.ini"), "a broken file must fail the reload"
    assert "-HUP $MAINPID" in s["ExecReload"][1]
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "RuntimeDirectory", "StateDirectory"):
        assert key in s, key
    ini = (h.REPO / "conf" / "drover.ini").read_text()
    drain_ms = int(re.search(r"^shutdown_timeout_ms = (\d+)", ini, flags=re.M).group(1))
    grace_ms = int(re.search(r"^kill_grace_ms = (\d+)", ini, flags=re.M).group(1))
    assert int(s["TimeoutStopSec"][0]) * 1000 > drain_ms + grace_ms, "TimeoutStopSec must cover the drain"


def dockerfile_stages():
    text = (h.PACKAGING / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    return ["FROM " + s for s in stages]


def apt_installed(stage):
    names = set()
    for m in re.finditer(r"apt-get install ([^&]*)", stage):
        names.update(w for w in m.group(1).split() if not w.startswith("-"))
    return names


def test_dockerfile_installs_what_the_programs_link():
    build, runtime = dockerfile_stages()
    assert build.startswith("FROM debian:bookworm-slim AS build") and runtime.startswith("FROM debian:bookworm-slim")
    needed = set()
    for program in (h.DROVER, h.DROVERCTL, h.DEMO):
        dyn = subprocess.run(["readelf", "-d", str(program)], capture_output=True, text=True, check=True).stdout
        needed.update(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    paths = []
    for lib in sorted(needed):
        m = re.search(r"^\s*%s \(.*\) => (\S+)$" % re.escape(lib), cache, flags=re.M)
        assert m, "%s is not in the linker cache" % lib
        paths.append(str(Path(m.group(1)).resolve()))
    owners = subprocess.run(["dpkg", "-S"] + paths, capture_output=True, text=True).stdout
    packages = {line.split(":")[0] for line in owners.splitlines() if ":" in line}
    assert len(packages) >= 4, owners
    packages.discard("libc6")  # in every Debian image
    missing = packages - apt_installed(runtime)
    assert not missing, "the runtime stage must install %s" % sorted(missing)

    control = (h.PACKAGING / "debian" / "control").read_text()
    build_depends = re.search(r"^Build-Depends:(.*?)^\S", control, flags=re.M | re.S).group(1)
    wanted = {d.strip().split()[0] for d in build_depends.replace("\n", " ").split(",") if d.strip()}
    wanted = {w for w in wanted if not w.startswith("debhelper") and "|" not in w and w != "pkgconf"}
    assert wanted - {"pkg-config"} <= apt_installed(build), "the build stage must install the Build-Depends"


def test_dockerfile_runs_the_entrypoint_as_drover():
    _build, runtime = dockerfile_stages()
    copy = re.search(r"^COPY (?:--chmod=0755 )?packaging/docker/entrypoint.sh (\S+)$", runtime, flags=re.M)
    assert copy, "the runtime stage copies the entrypoint"
    assert re.search(r'^ENTRYPOINT \["%s"\]$' % re.escape(copy.group(1)), runtime, flags=re.M)
    uid = re.search(r"useradd --system --uid (\d+) --gid drover .* drover ", runtime)
    gid = re.search(r"groupadd --system --gid (\d+) drover ", runtime)
    assert uid and gid, "the image's drover user has a fixed uid and gid"
    assert re.search(r"^USER %s:%s$" % (uid.group(1), gid.group(1)), runtime, flags=re.M), \
        "runs as drover, by number (Kubernetes runAsNonRoot)"
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, flags=re.M)
    assert re.search(r'^HEALTHCHECK .*CMD \["droverctl", "(ping|health)"\]$', runtime, flags=re.M)
    assert "tini" not in runtime, "drover is PID 1 itself"


def test_dockerfile_serves_http_on_the_port_it_exposes():
    _build, runtime = dockerfile_stages()
    env = re.search(r"^ENV DROVER_SUPERVISOR_HTTP_LISTEN=0\.0\.0\.0:(\d+)$", runtime, flags=re.M)
    assert env, "the image turns the HTTP endpoint on for every address"
    assert re.search(r"^EXPOSE %s$" % env.group(1), runtime, flags=re.M), "and exposes its port"


@pytest.mark.parametrize("script", [h.INIT_SCRIPT, h.ENTRYPOINT, h.PACKAGING / "debian" / "postinst",
                                    h.PACKAGING / "debian" / "postrm"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (make deps installs it)")
    res = subprocess.run(["shellcheck", "-s", "sh", "-S", "info", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
