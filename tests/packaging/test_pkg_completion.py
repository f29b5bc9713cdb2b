"""
droverctl's bash completion (packaging/bash-completion/droverctl), sourced
into a plain bash (no bash-completion package needed) and called the way
bash calls it: COMP_WORDS and COMP_CWORD set, COMPREPLY read back.

- the commands it offers are droverctl's own (each one is accepted by
  droverctl: no "unknown command"), filtered by the prefix typed;
- options, the files after -c and -s, `topics create|list`, files or "-"
  after submit, nothing after a command's last argument;
- `make install` puts it where bash-completion looks for it; shellcheck is clean.
"""

import subprocess

import pytest

import pkghelpers as h

COMPLETION = h.PACKAGING / "bash-completion" / "droverctl"


def complete(words, cwd=None, script=COMPLETION):
    """What the completion offers for the command line words (the last one is being typed)."""
    program = r'''
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_droverctl
printf '%s\n' "${COMPREPLY[@]}"
'''
    env = h.clean_env({"PATH": "%s:/usr/bin:/bin" % h.BUILD})
    res = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", str(script)] + list(words),
                         capture_output=True, text=True, timeout=20, cwd=cwd, env=env)
    assert res.returncode == 0 and res.stderr == "", res
    return sorted(line for line in res.stdout.splitlines() if line)


def help_commands():
    out = subprocess.run([str(h.DROVERCTL), "--help"], capture_output=True, text=True, check=True).stdout
    out = out.split("\noptions:")[0]
    return sorted({line.split()[0] for line in out.splitlines() if line.startswith("  ") and line[2].isalpha()})


def test_offers_droverctl_commands_and_each_is_one():
    commands = complete(["droverctl", ""])
    assert commands == help_commands() and {"status", "stats", "submit", "topics", "scale"} <= set(commands)
    for command in commands:
        res = subprocess.run([str(h.DROVERCTL), "-s", "/nonexistent/drover.sock", command], capture_output=True,
                             text=True, timeout=20, env=h.clean_env())
        assert "unknown command" not in res.stderr, "the completion offers %s, droverctl refuses it" % command


@pytest.mark.parametrize("words,expected", [
    (["droverctl", "st"], ["stats", "status", "stop"]),
    (["droverctl", "-"], ["--help", "--version", "-V", "-c", "-h", "-s"]),
    (["droverctl", "-c", "x.ini", "-s", "x.sock", "pi"], ["ping"]),
    (["droverctl", "topics", ""], ["create", "list"]),
    (["droverctl", "-c", "x.ini", "topics", "l"], ["list"]),
    (["droverctl", "topics", "list", ""], []),
    (["droverctl", "scale", ""], []),
    (["droverctl", "frobnicate", ""], []),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] == "droverctl" else None)
def test_completes_commands_options_and_arguments(words, expected):
    assert complete(words) == expected


def test_completes_files_after_c_and_s_and_submit(tmp_path):
    (tmp_path / "drover.ini").write_text("")
    (tmp_path / "jobs.jsonl").write_text("")
    (tmp_path / "conf.d").mkdir()
    assert complete(["droverctl", "-c", "dr"], cwd=tmp_path) == ["drover.ini"]
    assert complete(["droverctl", "-c", ""], cwd=tmp_path) == ["conf.d", "drover.ini", "jobs.jsonl"]
    assert complete(["droverctl", "-s", "co"], cwd=tmp_path) == ["conf.d"]
    assert complete(["droverctl", "submit", "j"], cwd=tmp_path) == ["jobs.jsonl"]
    assert complete(["droverctl", "submit", ""], cwd=tmp_path) == ["-", "conf.d", "drover.ini", "jobs.jsonl"]


def test_make_install_puts_it_where_bash_completion_looks(staged_install):
    installed = staged_install / "usr/share/bash-completion/completions/droverctl"
    assert installed.read_bytes() == COMPLETION.read_bytes()
    assert complete(["droverctl", "he"], script=installed) == ["health"]
    res = subprocess.run(["bash", "--norc", "-c", 'source "$1" && complete -p droverctl', "bash", str(installed)],
                         capture_output=True, text=True, timeout=20)
    assert res.stdout.strip() == "complete -F _droverctl droverctl", res


def test_passes_shellcheck():
    res = subprocess.run(["shellcheck", "-s", "bash", "-S", "info", str(COMPLETION)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
