#!/usr/bin/python3
"""prefork_pool: the Celery-style reference of `make bench`'s persistent-handler rows (issue 9).

N processes of a multiprocessing.Pool, each fed one job at a time over its
pipe (imap_unordered, chunksize 1, as Celery's prefork pool sends each task),
each running echo_handler.echo() in-process on the job's JSON text and sending
the result's JSON text back. No queue and no durability: jobs come from memory.

  prefork_pool.py -p PROCESSES -n JOBS -s JOB_BYTES   -> {"elapsed_ns": ..., "jobs": ...} on stdout
"""
import argparse
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_handler import echo  # noqa: E402


def run_job(text):
    return json.dumps(echo(json.loads(text)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-p", type=int, required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("-s", type=int, default=200)
    args = p.parse_args()
    head = '{"id":"pool-%06d","prompt":"'
    jobs = [(head % i) + "x" * (args.s - len(head % i) - 3) + '"}' for i in range(args.n)]
    with multiprocessing.Pool(args.p) as pool:
        pool.map(run_job, jobs[:args.p], chunksize=1)  # every process started and warm
        start = time.monotonic_ns()
        done = sum(1 for _ in pool.imap_unordered(run_job, jobs, chunksize=1))
        elapsed = time.monotonic_ns() - start
    print(json.dumps({"elapsed_ns": elapsed, "jobs": done}))


if __name__ == "__main__":
    main()
