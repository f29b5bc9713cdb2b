"""The Python library drover_handler (lib/python), driven over pipes as drover drives it.

Each test starts /usr/bin/python3 tests/lib/handlers/behave.py (sync or async handler
function), sends job/cancel frames and checks the frames that come back.
"""
import os

import pytest

from handler_pipes import HANDLERS, PYTHON

MODES = ["sync", "async"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def behave(start, mode, env=None):
    handler = start([PYTHON, os.path.join(HANDLERS, "behave.py"), mode], env)
    assert handler.frame() == {"type": "ready"}, "ready must be the first frame"
    return handler


def test_ready_comes_first_and_after_setup(start, mode):
    h = behave(start, mode)
    assert "setup ran" in h.stderr or h.wait_stderr("setup ran") is None
    h.job("j1", {"do": "echo"})
    _, end = h.end_of("j1")
    assert end["result"]["setup"] is True


def test_result_carries_the_job_and_its_context(start, mode):
    h = behave(start, mode)
    job = {"do": "echo", "text": "caf\u00e9 \u2028 line\nbreak", "n": [1, 2.5, None]}
    h.send({"type": "job", "id": "j-1", "attempt": 3, "timeout_ms": 5000, "deadline_ms": 1700000000123, "job": job})
    _, end = h.end_of("j-1")
    assert end == {"type": "result", "id": "j-1", "result": {
        "echo": job, "id": "j-1", "attempt": 3, "deadline": 1700000000.123, "setup": True, "pid": h.proc.pid}}


def test_progress_frames_precede_the_result(start, mode):
    h = behave(start, mode)
    h.job("p", {"do": "progress"})
    progress, end = h.end_of("p")
    assert progress == [{"type": "progress", "id": "p", "progress": 0.5, "message": "halfway"},
                        {"type": "progress", "id": "p", "message": "text only"},
                        {"type": "progress", "id": "p", "progress": 1.0}]
    assert end == {"type": "result", "id": "p", "result": "done"}


def test_an_exception_is_a_retryable_error(start, mode):
    h = behave(start, mode)
    h.job("f", {"do": "fail"})
    _, end = h.end_of("f")
    assert end == {"type": "error", "id": "f", "error": "ValueError: boom", "retry": True}
    assert "Traceback" in h.stderr or h.wait_stderr("Traceback") is None


def test_text_that_utf8_cannot_carry_still_gives_frames(start, mode):
    h = behave(start, mode)
    h.job("s", {"do": "surrogate"})
    progress, end = h.end_of("s")
    assert progress == [{"type": "progress", "id": "s", "progress": 0.5, "message": "half ?"}]
    assert end == {"type": "error", "id": "s", "error": "ValueError: bad ? byte", "retry": True}


def test_permanent_error_is_not_retried(start, mode):
    h = behave(start, mode)
    h.job("p", {"do": "permanent"})
    _, end = h.end_of("p")
    assert end == {"type": "error", "id": "p", "error": "bad input", "retry": False}


def test_a_result_that_is_not_json_is_an_error(start, mode):
    h = behave(start, mode)
    h.job("nj", {"do": "not_json"})
    _, end = h.end_of("nj")
    assert end["type"] == "error" and end["retry"] is False and "not JSON" in end["error"], end
    h.job("next", {"do": "echo"})
    assert h.end_of("next")[1]["type"] == "result"


def test_cancel_stops_the_job_and_the_process_serves_on(start, mode):
    """sync: ctx.progress() raises Cancelled; async: the task gets CancelledError."""
    h = behave(start, mode)
    h.job("c", {"do": "until_cancel"})
    first = h.frame()
    assert first["type"] == "progress" and first["id"] == "c", first  # the job is running
    h.send({"type": "cancel", "id": "c", "reason": "timeout"})
    _, end = h.end_of("c")
    assert end == {"type": "cancelled", "id": "c"}
    h.job("after", {"do": "echo"})
    _, end = h.end_of("after")
    assert end["type"] == "result" and end["result"]["pid"] == h.proc.pid


def test_a_cancel_for_an_unknown_id_is_ignored(start, mode):
    h = behave(start, mode)
    h.send({"type": "cancel", "id": "nobody", "reason": "timeout"})
    h.job("e", {"do": "echo"})
    assert h.end_of("e")[1]["type"] == "result"


def test_jobs_overlap_up_to_the_concurrency(start, mode):
    """4 jobs each wait for all 4 to have started: they meet only if they run at once."""
    h = behave(start, mode, {"DROVER_HANDLER_CONCURRENCY": "4"})
    for i in range(4):
        h.job("m%d" % i, {"do": "meet", "n": 4})
    ends = h.ends(4)
    assert {k: v["result"] for k, v in ends.items()} == {"m%d" % i: {"met": True} for i in range(4)}


def test_sync_jobs_beyond_the_concurrency_wait_their_turn(start):
    """With 2 threads, 3 meeting jobs cannot all be running at once."""
    h = behave(start, "sync", {"DROVER_HANDLER_CONCURRENCY": "2"})
    for i in range(3):
        h.job("m%d" % i, {"do": "meet", "n": 3})
    ends = h.ends(3, timeout=30)
    met = [v["result"]["met"] for v in ends.values()]
    assert met.count(False) >= 1, met


def test_eof_finishes_the_jobs_held_then_exits_0(start, mode):
    h = behave(start, mode)
    h.job("s1", {"do": "sleep", "s": 0.3})
    h.job("s2", {"do": "echo"})
    h.close_stdin()
    ends = h.ends(2)
    assert ends["s1"]["result"] == "slept"
    h.stdout_closed()
    assert h.wait() == 0
    # serve() returned to the script, whose later prints still go to stderr, not to drover.
    h.wait_stderr("serve returned")


def test_stray_output_never_corrupts_frames(start, mode):
    """print(), a write to fd 1 and a child process all go to stderr; a child reads no frames."""
    h = behave(start, mode)
    h.job("pr", {"do": "print"})
    h.job("after", {"do": "echo"})
    ends = h.ends(2)  # frame() fails on any line that is not a JSON object
    assert ends["pr"] == {"type": "result", "id": "pr", "result": {"child_stdin": ""}}
    assert ends["after"]["type"] == "result"
    for text in ("printed text", "raw write to fd 1", "child output"):
        h.wait_stderr(text)


def test_unknown_frames_and_garbage_are_reported_and_ignored(start, mode):
    h = behave(start, mode)
    h.send({"type": "shutdown-now", "id": "x"})
    h.send_raw(b"this is not json\n[1, 2]\n\n")
    h.send({"type": "job", "job": {"do": "echo"}})  # no id
    h.job("ok", {"do": "echo"})
    assert h.end_of("ok")[1]["type"] == "result"
    h.wait_stderr("unknown type 'shutdown-now'")
    h.wait_stderr("not JSON")
    h.wait_stderr("without a string \"id\"")


def test_setup_failure_ends_the_process_before_ready(start, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("from drover_handler import serve\n"
                      "def setup():\n    raise RuntimeError('no model')\n"
                      "serve(lambda job, ctx: job, setup=setup)\n")
    h = start([PYTHON, str(script)])
    h.stdout_closed()
    assert h.wait() != 0
    assert "no model" in h.stderr


def test_progress_after_the_end_is_dropped(start, mode):
    """drover treats a frame for an id it no longer holds as a protocol violation."""
    h = behave(start, mode)
    h.job("k", {"do": "keep_ctx"})
    assert h.end_of("k")[1]["result"] == "kept"
    h.job("late", {"do": "late_progress"})
    progress, end = h.end_of("late")  # end_of fails on a frame of another id
    assert (progress, end["result"]) == ([], "tried")


def test_big_frames_of_jobs_running_at_once_arrive_whole(start, mode):
    """Frames far above the pipe's atomic size (4 KiB), written by 4 jobs at once."""
    h = behave(start, mode, {"DROVER_HANDLER_CONCURRENCY": "4"})
    ids = ["c%d" % i for i in range(4)]
    for job_id in ids:
        h.job(job_id, {"do": "chatty", "frames": 30, "size": 50000})
    counts = dict.fromkeys(ids, 0)
    ended = set()
    while len(ended) < len(ids):
        frame = h.frame()  # fails on a line that is not one JSON object
        if frame["type"] == "progress":
            assert frame["message"] == frame["id"] * 50000, "a frame mixed with another"
            counts[frame["id"]] += 1
        else:
            assert frame["result"] == "said it all", frame
            ended.add(frame["id"])
    assert counts == dict.fromkeys(ids, 30)
