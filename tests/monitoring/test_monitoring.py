"""
test_monitoring: the Grafana dashboard and the Prometheus alert rules of
packaging/monitoring/ against drover itself.

- the dashboard is valid JSON with the panels an operator needs; every PromQL
  expression in it parses (promtool check rules on a recording rule per
  expression, Grafana's variables replaced);
- the alert rules pass promtool check rules and their own promtool test rules;
- both use only metrics drover serves (the names printed by supervisor/stats.c).
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "packaging" / "monitoring"
DASHBOARD = MONITORING / "drover-dashboard.json"
RULES = MONITORING / "drover-alerts.yml"
RULE_TESTS = MONITORING / "drover-alerts.test.yml"


def served_metrics():
    names = set(re.findall(r'"(drover_[a-z_]+)', (REPO / "supervisor" / "stats.c").read_text()))
    assert len(names) > 20, names
    return names


def used_metrics(expr):
    return set(re.findall(r"\b(drover_[a-z_]+)", expr))


def promtool(*args, cwd=None):
    r = subprocess.run(["promtool"] + list(args), capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, "promtool %s:\n%s%s" % (" ".join(args), r.stdout, r.stderr)
    return r.stdout


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs():
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def test_dashboard_is_valid_json_with_the_panels_operators_need():
    d = dashboard()
    titles = {p["title"] for p in d["panels"]}
    for wanted in ("Throughput", "Failures by outcome", "Job duration (quantiles)", "Job duration (histogram)",
                   "Backlog", "Oldest waiting job", "Saturation", "Faults and stalls", "Workers and restarts"):
        assert wanted in titles, titles
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert d["uid"] and d["title"] == "drover"
    for p in d["panels"]:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_dashboard_expression_parses(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:expr_%d" % i,
         "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".+")}
        for i, (_title, expr) in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path))


def test_dashboard_uses_only_metrics_drover_serves():
    served = served_metrics()
    for title, expr in dashboard_exprs():
        unknown = used_metrics(expr) - served
        assert not unknown, "%s: %s not served by drover" % (title, sorted(unknown))


def test_alert_rules_pass_promtool_and_their_tests():
    promtool("check", "rules", str(RULES))
    promtool("test", "rules", RULE_TESTS.name, cwd=MONITORING)


def test_alert_rules_cover_the_failures_that_matter_and_use_served_metrics():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    for wanted in ("DroverPoolStalled", "DroverCrashLoop", "DroverBacklogGrowing", "DroverKafkaLagGrowing",
                   "DroverJobsFailing", "DroverSlowJobs"):
        assert wanted in alerts, sorted(alerts)
    served = served_metrics()
    for name, expr in alerts.items():
        unknown = used_metrics(expr) - served
        assert not unknown, "%s: %s not served by drover" % (name, sorted(unknown))
