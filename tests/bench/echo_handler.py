#!/usr/bin/python3
"""echo_handler: the Python function `make bench` runs three ways (issue 9's targets).

    echo(text) -> the result of one job: the job parsed, echoed back as JSON text

  - exec mode:        python3 echo_handler.py            (job on stdin, result on stdout, one per process)
  - persistent mode:  the same command, with DROVER_HANDLER_MODE=persistent set by drover:
                      serve() from lib/python's drover_handler, one process for many jobs
  - prefork_pool.py:  multiprocessing.Pool workers call echo() in-process
"""
import json
import os
import sys


def echo(job):
    return {"echo": job}


def main():
    if os.environ.get("DROVER_HANDLER_MODE") == "persistent":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib", "python"))
        from drover_handler import serve
        serve(lambda job, ctx: echo(job))
    else:
        sys.stdout.write(json.dumps(echo(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
