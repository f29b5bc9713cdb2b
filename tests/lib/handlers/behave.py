"""behave.py sync|async: a drover_handler handler whose job says what to do ({"do": ...}).

tests/lib/test_python_lib.py drives it over pipes. The same behaviours exist as a sync
function (run in the library's thread pool) and as an async one (an asyncio task).
"""
import asyncio
import os
import subprocess
import sys
import threading
import time

from drover_handler import PermanentError, serve

STATE = {}
MET = threading.Condition()
ARRIVED = [0]
MEET_TIMEOUT_S = 10  # jobs that do not overlap give up and say so


def setup():
    print("setup ran")  # sys.stdout is stderr inside serve(): never a frame
    STATE["setup"] = True


def stray_output():
    """Writes to stdout the ways a user's code might; none of it may reach the frames."""
    print("printed text\n{\"type\":\"result\",\"id\":\"forged\"}")
    sys.stdout.flush()
    os.write(1, b"raw write to fd 1\n")
    subprocess.run(["echo", "child output"], check=True)
    # A child that reads stdin gets nothing: the frames are not its to take.
    return subprocess.run(["cat"], stdout=subprocess.PIPE, timeout=MEET_TIMEOUT_S, check=True).stdout.decode()


def common(job, ctx):
    """The behaviours that do not wait; None when job asks for another one."""
    do = job.get("do")
    if do == "echo":
        return {"echo": job, "id": ctx.id, "attempt": ctx.attempt, "deadline": ctx.deadline,
                "setup": STATE.get("setup", False), "pid": os.getpid()}
    if do == "progress":
        ctx.progress(0.5, "halfway")
        ctx.progress(message="text only")
        ctx.progress(2)
        return "done"
    if do == "fail":
        raise ValueError("boom")
    if do == "surrogate":  # text decoded with surrogateescape: not valid UTF-8 as it stands
        ctx.progress(0.5, b"half \xff".decode("utf-8", "surrogateescape"))
        raise ValueError(b"bad \xff byte".decode("utf-8", "surrogateescape"))
    if do == "permanent":
        raise PermanentError("bad input")
    if do == "not_json":
        return {"value": object()}
    if do == "print":
        return {"child_stdin": stray_output()}
    if do == "chatty":  # big frames from jobs running at once: each must reach drover whole
        for i in range(job["frames"]):
            ctx.progress(i / job["frames"], ctx.id * job["size"])
        return "said it all"
    if do == "keep_ctx":  # a context that outlives its job, as a leftover thread's would
        STATE["kept"] = ctx
        return "kept"
    if do == "late_progress":
        STATE["kept"].progress(0.9, "after the end")
        return "tried"
    return None


def handle_sync(job, ctx):
    do = job.get("do")
    if do == "until_cancel":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ctx.progress(0.1, "waiting")  # raises Cancelled once drover cancels
            time.sleep(0.02)
        return "never cancelled"
    if do == "meet":
        with MET:
            ARRIVED[0] += 1
            MET.notify_all()
            return {"met": MET.wait_for(lambda: ARRIVED[0] >= job["n"], timeout=MEET_TIMEOUT_S)}
    if do == "sleep":
        time.sleep(job["s"])
        return "slept"
    return common(job, ctx)


async def handle_async(job, ctx):
    do = job.get("do")
    if do == "until_cancel":
        ctx.progress(0.1, "waiting")
        await asyncio.sleep(30)  # CancelledError here once drover cancels
        return "never cancelled"
    if do == "meet":
        ARRIVED[0] += 1
        deadline = time.monotonic() + MEET_TIMEOUT_S
        while ARRIVED[0] < job["n"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"met": ARRIVED[0] >= job["n"]}
    if do == "sleep":
        await asyncio.sleep(job["s"])
        return "slept"
    return common(job, ctx)


if __name__ == "__main__":
    serve(handle_async if sys.argv[1:] == ["async"] else handle_sync, setup=setup)
    print("serve returned")
