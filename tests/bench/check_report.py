#!/usr/bin/python3
"""check_report: `make test`'s check of a bench run (make bench-tiny): every figure was produced
and the JSON is well formed. Never a speed check: the figures' values are not judged.

  check_report.py BENCH_JSON        exit 0, or 1 with what is missing
"""
import json
import math
import sys

# The rows every configuration must have (bench.py's paired_rows and service_rows).
COMMON = ["latency p50 at 300/s", "latency p99 at 300/s", "latency p50 at 1000/s", "latency p99 at 1000/s",
          "idle wake-ups/s, supervisor", "idle wake-ups/s, worst worker", "RSS supervisor idle",
          "RSS supervisor busy", "RSS worker idle (largest)", "RSS worker busy (largest)",
          "restart after kill -9, slowest slot"]
PAIRED = {"spool": ["spawn ceiling"], "kafka": ["spawn ceiling", "python pool"],
          "persistent": ["exec mode", "prefork pool"]}
# Persistent handlers (issue 9): the rows each of their configurations must have besides PAIRED's.
OWN = {
    "spool": COMMON, "kafka": COMMON, "persistent": [],
    "persistent-node": ["jobs/s per worker, 20 in flight in one process"],
    "persistent-rss": ["RSS handler process after warm-up", "RSS handler process at the end",
                       "RSS worker process after warm-up", "RSS worker process at the end",
                       "drover CPU per job (supervisor + worker)"],
    # The persistent rows again with no device behind the fsyncs, and on Kafka (bench.py's split_rows).
    "persistent-tmpfs": ["jobs/s vs prefork pool", "drover CPU per job (supervisor + workers)",
                         "jobs/s vs the same on disk", "drover CPU per job vs the same on disk"],
    "persistent-kafka": ["jobs/s vs prefork pool", "drover CPU per job (supervisor + workers)"],
}
GROUPS = ("spool", "kafka", "persistent", "persistent-node", "persistent-rss", "persistent-tmpfs", "persistent-kafka")


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def expected_groups(meta):
    """The row groups the run's configurations ask for (as bench.py's selected_groups), narrowed to BENCH_ONLY's;
    derived here from the configurations, not taken from the run's own list. (groups, problems)"""
    missing = [key for key in ("spool_configs", "kafka_configs", "warm_configs", "only") if key not in meta]
    if missing:
        return [], ["meta has no %s" % ", ".join(missing)]
    groups = []
    if meta["spool_configs"]:
        groups.append("spool")
    if meta["kafka_configs"]:
        groups.append("kafka")
    if meta["warm_configs"]:
        groups += ["persistent", "persistent-node", "persistent-rss", "persistent-tmpfs"]
        if meta["kafka_configs"]:
            groups.append("persistent-kafka")
    only = meta["only"] or []
    return [g for g in groups if not only or g in only], ["unknown group %r in meta.only" % g
                                                           for g in only if g not in GROUPS]


def problems_of(report):
    results, rows = report.get("results"), report.get("rows")
    if not isinstance(results, dict) or not results or not isinstance(rows, list):
        return ["no results or rows"]
    wanted_groups, problems = expected_groups(report.get("meta", {}))
    backends = {res.get("backend") for res in results.values()}
    for backend in wanted_groups:
        if backend not in backends:
            problems.append("no %s results although its rows were asked for" % backend)
    for name, res in results.items():
        mine = [r for r in rows if r.get("config") == name]
        if res.get("backend") not in OWN:
            problems.append("%s: unknown backend %r" % (name, res.get("backend")))
            continue
        wanted = list(OWN[res["backend"]])
        for ref in PAIRED.get(res["backend"], []):
            wanted += ["jobs/s vs " + ref, "CPU per job vs " + ref]
        for figure in wanted:
            found = [r for r in mine if r["figure"] == figure]
            if len(found) != 1:
                problems.append("%s: %d rows for %r" % (name, len(found), figure))
                continue
            row = found[0]
            if not number(row["drover"]):
                problems.append("%s: %s has no value (%r)" % (name, figure, row["drover"]))
            paired = figure.startswith(("jobs/s vs", "CPU per job vs")) or figure.endswith(("at the end", "on disk"))
            if paired or (res["backend"] == "kafka" and figure.startswith("latency")):
                if not number(row["reference"]) or not number(row["ratio"]):
                    problems.append("%s: %s has no reference or ratio" % (name, figure))
            if row["target"] and not isinstance(row["met"], bool):
                problems.append("%s: %s has a target but no verdict" % (name, figure))
        if res["backend"] in ("spool", "kafka"):
            restarts = res.get("service", {}).get("restart_ms", [])
            if len(restarts) != res["workers"] or not all(number(t) for t in restarts):
                problems.append("%s: restart times %r for %d workers" % (name, restarts, res["workers"]))
        if "rounds" in res or res["backend"] in PAIRED:
            if len(res.get("rounds", [])) != report["meta"]["pairs"]:
                problems.append("%s: %d rounds, %d pairs asked" % (name, len(res.get("rounds", [])),
                                                                   report["meta"]["pairs"]))
    return problems


def main(path):
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print("check_report: %s: %s" % (path, e), file=sys.stderr)
        return 1
    problems = problems_of(report)
    for p in problems:
        print("check_report: %s" % p, file=sys.stderr)
    if not problems:
        print("check_report: %s: %d configurations, %d rows, every figure present"
              % (path, len(report["results"]), len(report["rows"])))
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: check_report.py BENCH_JSON", file=sys.stderr)
        sys.exit(64)
    sys.exit(main(sys.argv[1]))
