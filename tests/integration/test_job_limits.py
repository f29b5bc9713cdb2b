"""
Per-handler resource limits (issue 10 item 6): [jobs] rlimit_nofile, rlimit_as,
rlimit_core, rlimit_cpu and nice are set in the handler before exec, so the
handler sees them; a handler past rlimit_cpu dies of SIGXCPU (SIGKILL a
second later) and its failure names the signal.
"""

import json
import re

import pytest


def limit_row(text, name):
    """(soft, hard) of one row of /proc/self/limits, as the strings the kernel prints."""
    for line in text.splitlines():
        if line.startswith(name):
            fields = re.split(r"\s{2,}", line.strip())
            return fields[1], fields[2]
    raise AssertionError("no %r row in %r" % (name, text))


@pytest.mark.asan
def test_handler_sees_its_limits(drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"rlimit_nofile": 256, "rlimit_as": "3G", "rlimit_core": 0,
                                "rlimit_cpu": 30, "nice": 7}})
    dump = d.tmp / "limits.json"
    d.submit([{"id": "limits", "limits_dump": str(dump)}])
    done, failed = d.wait_outcomes(["limits"], 20)
    assert "limits" in done, failed
    seen = json.loads(dump.read_text())
    text = seen["limits"]
    assert limit_row(text, "Max open files") == ("256", "256"), text
    assert limit_row(text, "Max address space") == (str(3 << 30), str(3 << 30)), text
    assert limit_row(text, "Max core file size") == ("0", "0"), text
    # A second between soft and hard: SIGXCPU first, the kernel's SIGKILL after.
    assert limit_row(text, "Max cpu time") == ("30", "31"), text
    assert seen["nice"] == 7, seen


def test_unset_limits_are_inherited(drover):
    d = drover(config={"supervisor": {"workers": 1}})
    dump = d.tmp / "limits.json"
    d.submit([{"id": "plain", "limits_dump": str(dump)}])
    done, failed = d.wait_outcomes(["plain"], 20)
    assert "plain" in done, failed
    seen = json.loads(dump.read_text())
    assert limit_row(seen["limits"], "Max cpu time") == ("unlimited", "unlimited"), seen["limits"]
    assert seen["nice"] == 0, seen


def test_cpu_burner_fails_with_the_signal(drover):
    d = drover(config={"supervisor": {"workers": 1},
                       "jobs": {"rlimit_cpu": 1, "max_attempts": 1, "timeout_ms": 60000}})
    d.submit([{"id": "burner", "burn_cpu": True}])
    done, failed = d.wait_outcomes(["burner"], 60)
    doc = failed["burner"]
    err = doc["error"]
    assert err["reason"] == "signal", doc
    assert err["signal"] in (24, 9), doc  # SIGXCPU at the soft limit; SIGKILL at the hard one
    assert "SIGXCPU" in err["message"] or "SIGKILL" in err["message"], doc
