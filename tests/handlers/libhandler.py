#!/usr/bin/python3
"""libhandler.py sync|async: a persistent handler written with lib/python's drover_handler.

tests/integration/test_handler_libs.py runs it under a real drover. The job says what to
do: {"do": "echo"} returns the job and the pid, "slow" runs until drover cancels it,
"permanent" raises PermanentError, "fail" raises ValueError.
"""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib", "python"))
from drover_handler import PermanentError, serve  # noqa: E402


def common(job, ctx):
    if job["do"] == "permanent":
        raise PermanentError("bad input")
    if job["do"] == "fail":
        raise ValueError("try again")
    return {"echo": job, "pid": os.getpid(), "attempt": ctx.attempt}


def handle_sync(job, ctx):
    if job["do"] == "slow":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ctx.progress(0.5, "working")  # raises Cancelled once drover cancels
            time.sleep(0.02)
    return common(job, ctx)


async def handle_async(job, ctx):
    if job["do"] == "slow":
        ctx.progress(0.5, "working")
        await asyncio.sleep(60)  # CancelledError once drover cancels
    return common(job, ctx)


serve(handle_async if sys.argv[1:] == ["async"] else handle_sync)
