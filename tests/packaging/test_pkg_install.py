"""
`make install`: every file lands where the README's operations section says,
with the right modes; the reference configuration is valid as installed; a
plain install never overwrites an edited configuration; uninstall keeps it.
"""

import json
import os
import stat
import subprocess
from pathlib import Path

import pkghelpers as h

PY_VERSION = subprocess.run([h.PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                   capture_output=True, text=True, check=True).stdout.strip()


def python_dir(prefix):
    """Where Debian's python3 looks: the packaged dist-packages for /usr, the versioned local one else."""
    if prefix == "/usr":
        return "/usr/lib/python3/dist-packages"
    return "%s/lib/python%s/dist-packages" % (prefix, PY_VERSION)


# The README's operations section ("Installing from source") lists these.
def expected_files(prefix, etc):
    return {
        "%s/drover_handler/__init__.py" % python_dir(prefix): 0o644,
        "%s/share/nodejs/drover-handler/index.js" % prefix: 0o644,
        "%s/share/nodejs/drover-handler/package.json" % prefix: 0o644,
        "%s/sbin/drover" % prefix: 0o755,
        "%s/bin/droverctl" % prefix: 0o755,
        "%s/lib/drover/handlers/demo" % prefix: 0o755,
        "%s/drover/drover.ini" % etc: 0o644,
        "%s/share/man/man8/drover.8" % prefix: 0o644,
        "%s/share/man/man8/droverctl.8" % prefix: 0o644,
        "%s/share/man/man5/drover.ini.5" % prefix: 0o644,
        "%s/share/drover/monitoring/drover-dashboard.json" % prefix: 0o644,
        "%s/share/drover/monitoring/drover-alerts.yml" % prefix: 0o644,
        "%s/share/drover/monitoring/drover-alerts.test.yml" % prefix: 0o644,
        "%s/share/bash-completion/completions/droverctl" % prefix: 0o644,
    }


def installed_files(root):
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            found["/" + str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_install_usr_local_layout(tmp_path):
    h.make_install(tmp_path)  # PREFIX defaults to /usr/local
    assert installed_files(tmp_path) == expected_files("/usr/local", "/usr/local/etc")
    ini = (tmp_path / "usr/local/etc/drover/drover.ini").read_text()
    assert "handler = /usr/local/lib/drover/handlers/demo --size 256" in ini, \
        "the installed configuration must name the installed demo handler"
    assert "/usr/lib/drover/handlers/" not in ini


def test_install_usr_layout_is_the_packaged_one(staged_install):
    assert installed_files(staged_install) == expected_files("/usr", "/etc")
    assert (staged_install / "etc/drover/drover.ini").read_bytes() == (h.REPO / "conf/drover.ini").read_bytes()
    for program in ("usr/sbin/drover", "usr/bin/droverctl", "usr/lib/drover/handlers/demo"):
        assert os.access(staged_install / program, os.X_OK)


def test_installed_reference_configuration_is_valid(staged_install):
    """drover -t on the installed drover.ini (its handler path pointed into the staging root)."""
    env = h.clean_env({"DROVER_JOBS_HANDLER": "%s/usr/lib/drover/handlers/demo --size 256" % staged_install})
    ini = staged_install / "etc/drover/drover.ini"
    res = subprocess.run([str(staged_install / "usr/sbin/drover"), "-t", "-c", str(ini)], env=env,
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "drover: configuration %s is ok" % ini in res.stdout
    version = subprocess.run([str(staged_install / "usr/sbin/drover"), "-V"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("drover ")


def test_plain_install_keeps_an_edited_configuration_and_uninstall_keeps_it(tmp_path):
    prefix = tmp_path / "prefix"
    h.make_install("", prefix=str(prefix))
    ini = prefix / "etc/drover/drover.ini"
    assert ini.exists()
    ini.write_text(ini.read_text() + "\n; edited by the operator\n")
    edited = ini.read_text()

    res = h.make_install("", prefix=str(prefix))
    assert ini.read_text() == edited, "a second `make install` overwrote the edited configuration"
    assert "keeping the existing" in res.stdout

    h.make_install("", prefix=str(prefix), target="uninstall")
    left = installed_files(prefix)
    assert left == {"/etc/drover/drover.ini": 0o644}, left


def test_man_pages_render_without_warnings(staged_install):
    for page in ("usr/share/man/man8/drover.8", "usr/share/man/man8/droverctl.8",
                 "usr/share/man/man5/drover.ini.5"):
        path = staged_install / page
        res = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True,
                             text=True, env=dict(os.environ, LC_ALL="C.UTF-8"))
        assert res.returncode == 0 and res.stderr == "", "%s: %s" % (page, res.stderr)
        whatis = subprocess.run(["lexgrog", str(path)], capture_output=True, text=True)
        assert whatis.returncode == 0, "%s: no parseable NAME section: %s" % (page, whatis.stdout)


def library_checks(root, prefix):
    """The libraries sit in a folder the real python3 and node search, and load from there."""
    py_dir = python_dir(prefix)
    py_path = json.loads(subprocess.run([h.PYTHON, "-c", "import json, sys; print(json.dumps(sys.path))"],
                                        capture_output=True, text=True, check=True, env=h.clean_env()).stdout)
    assert py_dir in py_path, "%s is not in %s's sys.path %s" % (py_dir, h.PYTHON, py_path)
    res = subprocess.run([h.PYTHON, "-B", "-c", "import drover_handler as d; print(d.__file__, d.PROTOCOL)"],
                         capture_output=True, text=True, env=h.clean_env({"PYTHONPATH": str(root) + py_dir}))
    assert res.returncode == 0 and res.stdout.split() == [str(root) + py_dir + "/drover_handler/__init__.py", "1"], \
        res.stdout + res.stderr

    node_paths = json.loads(subprocess.run(["/usr/bin/node", "-e", "console.log(JSON.stringify(require('module').globalPaths))"],
                                           capture_output=True, text=True, check=True, env=h.clean_env()).stdout)
    searched = [d for d in ("%s/share/nodejs" % prefix, "%s/lib/node" % prefix) if d in node_paths]
    if prefix == "/usr":
        assert searched, "node searches %s: neither /usr/share/nodejs nor /usr/lib/node" % node_paths
    link = root / ("%s/lib/node/drover-handler" % prefix).lstrip("/")
    assert link.is_symlink() and os.readlink(link) == "../../share/nodejs/drover-handler"
    for d in ("%s/share/nodejs" % prefix, "%s/lib/node" % prefix):
        res = subprocess.run(["/usr/bin/node", "-e", "const d = require('drover-handler'); console.log(require.resolve('drover-handler'), d.PROTOCOL, typeof d.serve)"],
                             capture_output=True, text=True, env=h.clean_env({"NODE_PATH": str(root) + d}))
        assert res.returncode == 0 and res.stdout.split()[1:] == ["1", "function"], res.stdout + res.stderr


def test_handler_libraries_are_where_python3_and_node_look(staged_install, tmp_path):
    library_checks(staged_install, "/usr")
    h.make_install(tmp_path)
    library_checks(tmp_path, "/usr/local")
